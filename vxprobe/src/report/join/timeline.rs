//! The plots' series: loss per hop, anomalies by kind, throughput per hop, over time.

use std::collections::BTreeMap;

use super::{super::model::*, *};
use crate::report::read::{HopId, Micros, Recording};

pub(super) fn timeline(
    recordings: &[Recording],
    included: &[Included],
    from: Micros,
    to: Micros,
    rows: &[AnomalyRow],
    flows: &[FlowReport],
) -> Timeline {
    let mut bin = recordings
        .iter()
        .map(Recording::interval_len)
        .max()
        .unwrap_or(1_000_000)
        .max(1);
    const MAX_BINS: i64 = 400;
    if (to - from) / bin > MAX_BINS {
        bin = (to - from) / MAX_BINS + 1;
    }
    let bins = usize::try_from(((to - from) + bin - 1) / bin)
        .unwrap_or(1)
        .max(1);
    let per_second = 1_000_000.0 / bin as f64;
    let mut hops = Vec::new();
    for (r, rec) in recordings.iter().enumerate() {
        for (hop, series) in &rec.hops {
            let points = || {
                series
                    .points
                    .iter()
                    .filter(|p| included[r].counts[p.interval])
                    .map(|p| (rec.intervals[p.interval], p))
            };
            let drops = rebin(
                points().map(|(i, p)| (i.start(), i.end, p.drops as f64)),
                from,
                bin,
                bins,
            );
            let bits = rebin(
                points().map(|(i, p)| (i.start(), i.end, p.bytes as f64 * 8.0)),
                from,
                bin,
                bins,
            );
            hops.push((
                format!("{} {} {}", rec.node, hop.ifname, hop.dir),
                drops.iter().map(|v| v * per_second).collect(),
                bits.iter().map(|v| v * per_second).collect(),
            ));
        }
    }
    // Wire loss per pair of nodes: underlay egress of one minus underlay ingress of the other,
    // over the flows located on that wire.
    let mut wire: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for flow in flows {
        for seg in flow
            .segments
            .iter()
            .filter(|s| s.location == Some(Where::Wire))
        {
            let series = |hop: &HopRef, sign: f64| -> Vec<f64> {
                let Some(r) = recordings.iter().position(|r| r.node == hop.node) else {
                    return vec![0.0; bins];
                };
                let rec = &recordings[r];
                let id = HopId {
                    ifname: hop.ifname.clone(),
                    dir: hop.dir.clone(),
                };
                let points = rec
                    .flows
                    .get(&flow.flow)
                    .into_iter()
                    .flat_map(|hops| hops.iter())
                    .filter(|((h, vni), _)| *h == id && (flow.vni.is_none() || *vni == flow.vni))
                    .flat_map(|(_, s)| s.points.iter())
                    .filter(|p| included[r].counts[p.interval])
                    .map(|p| {
                        let i = rec.intervals[p.interval];
                        let n = if flow.unit == "segments" {
                            p.segs
                        } else {
                            p.packets
                        };
                        (i.start(), i.end, sign * n as f64)
                    });
                rebin(points, from, bin, bins)
            };
            let (sent, received) = (series(&seg.from, 1.0), series(&seg.to, -1.0));
            let slot = wire
                .entry((seg.from.node.clone(), seg.to.node.clone()))
                .or_insert_with(|| vec![0.0; bins]);
            for (b, v) in slot.iter_mut().enumerate() {
                *v += sent[b] + received[b];
            }
        }
    }
    let wire = wire
        .into_iter()
        .map(|((a, b), v)| {
            (
                format!("wire {a} → {b}"),
                losses_over_time(&v)
                    .into_iter()
                    .map(|x| x * per_second)
                    .collect(),
            )
        })
        .collect();
    let mut anomalies: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for row in rows {
        if row.at < from || row.at > to {
            continue;
        }
        let b = (((row.at - from) / bin) as usize).min(bins - 1);
        anomalies
            .entry(row.kind.clone())
            .or_insert_with(|| vec![0.0; bins])[b] += row.count as f64 * per_second;
    }
    let mut notes: Vec<(Micros, String, String)> = recordings
        .iter()
        .flat_map(|r| {
            r.notes
                .iter()
                .map(|(t, text)| (*t, r.node.clone(), text.clone()))
        })
        .filter(|(t, _, _)| *t >= from - bin && *t <= to)
        .collect();
    notes.sort();
    Timeline {
        from,
        bin,
        bins,
        hops,
        wire,
        anomalies,
        notes,
    }
}
