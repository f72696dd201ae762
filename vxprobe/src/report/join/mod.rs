//! The join: recordings of several nodes made one incident. The nodes' clocks are aligned (the
//! skew measured from traffic both ends of the tunnel saw), counts are taken over the window
//! the recordings share, each flow's hops are put in path order across the nodes, and every
//! segment between two consecutive hops says what it lost and where: at a hop (drops counted
//! there), between two hops of one node (nothing counted), or on the wire between two nodes.

mod events;
mod flows;
mod timeline;

use std::collections::BTreeMap;

use events::*;
#[cfg(test)]
pub(super) use flows::losses_over_time_for_tests;
use flows::*;
use timeline::*;

pub use super::model::*;
use super::{
    evidence::Evidence,
    read::{FlowId, HopId, Micros, OuterId, Recording, format_ts},
    skew,
};

/// How far apart two nodes' clocks may be for the skew to be measured (beyond, it is assumed
/// 0 and said so).
pub const MAX_SKEW: Micros = 30_000_000;

/// Where a recording's included interval lies against the window.
pub(super) struct Included {
    /// Per interval: whether it counts.
    pub(super) counts: Vec<bool>,
    /// Per interval: the share of it outside the window (0 inside).
    pub(super) outside: Vec<f64>,
}

/// One hop's observation of a flow on one node over the window.
#[derive(Clone, Debug)]
pub(super) struct Obs {
    pub(super) node: usize,
    pub(super) hop: HopId,
    pub(super) role: String,
    pub(super) vni: Option<u32>,
    pub(super) outer: Option<OuterId>,
    pub(super) packets: u64,
    pub(super) bytes: u64,
    pub(super) segs: u64,
    pub(super) fragments: u64,
    /// Packets (and segments) the window's edges may hold (see [`Segment::uncertainty`]).
    pub(super) edge_packets: f64,
    pub(super) edge_segs: f64,
}

/// The position of a hop on a path through a node: where traffic comes in from a pod, goes
/// into the tunnel, leaves by the underlay; then, on the next node, arrives by the underlay,
/// leaves the tunnel and goes out to the pod. A pod veth's host side sees the pod's packets
/// at INGRESS (the pod sends into its end of the pair).
pub fn stage(role: &str, dir: &str) -> u8 {
    let ingress = dir == "ingress";
    match (role, ingress) {
        ("overlay", false) => 1,
        ("underlay" | "physical", false) => 2,
        ("underlay" | "physical", true) => 3,
        ("overlay", true) => 4,
        (_, true) => 0,
        (_, false) => 5,
    }
}

pub(super) fn is_underlay(role: &str) -> bool {
    matches!(role, "underlay" | "physical")
}

/// Joins the recordings (one per node, the first the reference clock); `evidence[i]` is the
/// pcapng of recording i, if given.
pub fn join(
    mut recordings: Vec<Recording>,
    evidence: Vec<Option<Evidence>>,
) -> Result<Report, JoinError> {
    for (i, a) in recordings.iter().enumerate() {
        if let Some(b) = recordings[i + 1..].iter().find(|b| b.node == a.node) {
            return Err(JoinError::SameNode {
                node: a.node.clone(),
                a: a.file.clone(),
                b: b.file.clone(),
            });
        }
    }
    check_overlap(&recordings, &[])?;
    let mut assumptions = Vec::new();

    // Clocks: every node against the first.
    let mut offsets = vec![0; recordings.len()];
    let mut skews = Vec::new();
    for x in 1..recordings.len() {
        let measure = skew::measure(&recordings[0], &recordings[x], MAX_SKEW);
        let resolution = (recordings[0]
            .interval_len()
            .max(recordings[x].interval_len())
            / 2)
        .max(measure.as_ref().map_or(0, |m| m.resolution));
        let applied = measure
            .as_ref()
            .is_some_and(|m| m.offset.abs() > resolution);
        if applied {
            offsets[x] = measure.as_ref().map_or(0, |m| m.offset);
        }
        let (node, reference) = (&recordings[x].node, &recordings[0].node);
        assumptions.push(match &measure {
            Some(m) if applied => format!(
                "{node}'s clock runs {:+.0} ms from {reference}'s, measured from the tunnel traffic both saw ({} packets, correlation {:.2}); {node}'s times are shifted by it",
                m.offset as f64 / 1000.0,
                m.packets,
                m.correlation
            ),
            Some(m) => format!(
                "{node}'s and {reference}'s clocks agree within {:.0} ms (what counts per interval can tell): measured {:+.0} ms from {} packets of tunnel traffic, not applied",
                resolution as f64 / 1000.0,
                m.offset as f64 / 1000.0,
                m.packets
            ),
            None => format!(
                "the skew between {node}'s and {reference}'s clocks could not be measured (too little tunnel traffic between them, too steady, or in intervals too long for counts to tell): assumed 0"
            ),
        });
        skews.push(Skew {
            node: node.clone(),
            offset_ms: offsets[x] as f64 / 1000.0,
            measured_ms: measure.as_ref().map(|m| m.offset as f64 / 1000.0),
            resolution_ms: resolution as f64 / 1000.0,
            correlation: measure.as_ref().map(|m| m.correlation),
            packets: measure.as_ref().map_or(0, |m| m.packets),
            applied,
        });
    }
    // Everything on the reference clock from here on.
    for (rec, offset) in recordings.iter_mut().zip(&offsets) {
        shift(rec, *offset);
    }
    let (from, to) = check_overlap(&recordings, &offsets)?;
    let included: Vec<Included> = recordings
        .iter()
        .map(|rec| {
            let mut counts = Vec::with_capacity(rec.intervals.len());
            let mut outside = Vec::with_capacity(rec.intervals.len());
            for i in &rec.intervals {
                let (start, end) = (i.start(), i.end);
                let inside = start < to && end > from;
                counts.push(inside);
                let out = (from - start).max(0) + (end - to).max(0);
                outside.push(if inside {
                    out as f64 / i.len.max(1) as f64
                } else {
                    1.0
                });
            }
            Included { counts, outside }
        })
        .collect();
    assumptions.push(format!(
        "counts are taken over the window all recordings share, {} to {}: each recording's intervals that overlap it count whole",
        format_ts(from),
        format_ts(to)
    ));
    if recordings.len() > 1 {
        assumptions.push(
            "the wire between two nodes is where one node's underlay egress and the other's underlay ingress differ; its delay is taken as far below an interval".to_owned(),
        );
    }

    // Events: each counted once, by the node whose namespace it happened in.
    let owners = event_owners(&recordings);
    if owners.shared_netns > 0 {
        let nodes: Vec<&str> = recordings.iter().map(|r| r.node.as_str()).collect();
        assumptions.push(format!(
            "{} network namespace(s) appear in the recordings of several nodes ({}): they share a kernel (a lab, or nodes in one machine). Each event is counted once, from the recording that kept the most of its kind, device, reason and flow; events of a namespace no node has are `shared`",
            owners.shared_netns,
            nodes.join(", ")
        ));
    }
    let mut rows = Vec::new();
    for (r, rec) in recordings.iter().enumerate() {
        let (first, last) = window_of(rec, &included[r]);
        for (e, event) in rec.events.iter().enumerate() {
            let Some(owner) = &owners.owner[r][e] else {
                continue;
            };
            if event.ts < first || event.ts > last + rec.interval_len() {
                continue;
            }
            let evidence = evidence.get(r).and_then(Option::as_ref);
            rows.push(AnomalyRow {
                node: owner.clone(),
                ts: format_ts(event.ts),
                kind: event.kind.clone(),
                ifname: event.ifname.clone(),
                netns: event.netns,
                dir: event.dir.clone(),
                reason: event.reason.clone(),
                location: event.location.clone(),
                flow: event.flow.clone(),
                count: event.count,
                pcap: event.pcap_frame.and(evidence.map(|e| e.file.clone())),
                pcap_frame: event.pcap_frame,
                pcap_comment: event
                    .pcap_frame
                    .and_then(|f| evidence.and_then(|e| e.comment(f)))
                    .map(str::to_owned),
                at: event.ts,
                len: event.len,
                errno: event.errno,
                process: event.process.clone(),
                dropped: event.dropped,
            });
        }
    }
    rows.sort_by_key(|r| r.at);

    // Flows: every node's observations, matched by 5-tuple and VNI.
    let mut by_flow: BTreeMap<FlowId, Vec<Obs>> = BTreeMap::new();
    for (r, rec) in recordings.iter().enumerate() {
        let inc = &included[r];
        for (flow, hops) in &rec.flows {
            for ((hop, vni), series) in hops {
                let mut obs = Obs {
                    node: r,
                    hop: hop.clone(),
                    role: series.role.clone(),
                    vni: *vni,
                    outer: series.outer.clone(),
                    packets: 0,
                    bytes: 0,
                    segs: 0,
                    fragments: 0,
                    edge_packets: 0.0,
                    edge_segs: 0.0,
                };
                for p in &series.points {
                    if !inc.counts[p.interval] {
                        continue;
                    }
                    obs.packets += p.packets;
                    obs.bytes += p.bytes;
                    obs.segs += p.segs;
                    obs.fragments += p.fragments;
                    let outside = inc.outside[p.interval];
                    if outside > 0.0 && active_beyond(series, inc, p.interval) {
                        // The part outside, and up to half an interval more: where the edge
                        // lies on the other node's clock is known to the skew's resolution.
                        let share = (outside + 0.5).min(1.0);
                        obs.edge_packets += p.packets as f64 * share;
                        obs.edge_segs += p.segs as f64 * share;
                    }
                }
                if obs.packets > 0 || obs.segs > 0 {
                    by_flow.entry(flow.clone()).or_default().push(obs);
                }
            }
        }
    }
    let names: Vec<String> = recordings.iter().map(|r| r.node.clone()).collect();
    let mut flows = Vec::new();
    for (flow, observations) in by_flow {
        for (vni, group) in split_by_vni(observations) {
            flows.push(flow_report(&flow, vni, group, &names, &rows));
        }
    }
    flows.sort_by(|a, b| {
        b.lost
            .cmp(&a.lost)
            .then(b.loss_pct.total_cmp(&a.loss_pct))
            .then(b.sent.cmp(&a.sent))
            .then(a.flow.cmp(&b.flow))
    });

    let nodes = recordings
        .iter()
        .zip(&evidence)
        .zip(&offsets)
        .map(|((rec, ev), offset)| {
            let (start, end) = rec.span();
            NodeInfo {
                node: rec.node.clone(),
                recording: rec.file.clone(),
                named: rec.node_named,
                kernel: rec.kernel.clone(),
                vxprobe_version: rec.vxprobe_version.clone(),
                netns: rec.netns,
                from: format_ts(start),
                to: format_ts(end),
                intervals: rec.intervals.len(),
                interval_ms: u64::try_from(rec.interval_len() / 1000).unwrap_or(0),
                clock_offset_ms: *offset as f64 / 1000.0,
                complete: rec.summary,
                truncated: rec.truncated.clone(),
                lost_events: rec.lost_events,
                evicted: rec.evicted,
                pcap: ev.as_ref().map(|e| e.file.clone()),
                pcap_frames: ev.as_ref().map(|e| e.frames),
            }
        })
        .collect();
    let timeline = timeline(&recordings, &included, from, to, &rows, &flows);
    Ok(Report {
        vxprobe_version: env!("CARGO_PKG_VERSION"),
        nodes,
        window: Window {
            from: format_ts(from),
            to: format_ts(to),
            duration_ms: u64::try_from((to - from) / 1000).unwrap_or(0),
            reference: recordings[0].node.clone(),
            skew: skews,
            assumptions,
        },
        flows,
        findings: Vec::new(),
        anomalies: rows,
        timeline,
    })
}

/// The window every recording covers, on the clocks as shifted by `offsets` (empty: as
/// recorded); an error naming each span when there is none.
pub(super) fn check_overlap(
    recordings: &[Recording],
    offsets: &[Micros],
) -> Result<(Micros, Micros), JoinError> {
    let from = recordings.iter().map(|r| r.span().0).max().unwrap_or(0);
    let to = recordings.iter().map(|r| r.span().1).min().unwrap_or(0);
    if from < to {
        return Ok((from, to));
    }
    let spans = recordings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (a, b) = r.span();
            let offset = offsets.get(i).copied().unwrap_or(0);
            format!(
                "{} {} to {}",
                r.file,
                format_ts(a + offset),
                format_ts(b + offset)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(JoinError::NoOverlap { spans })
}

/// Moves a recording's times onto the reference clock (`offset`: its clock minus the
/// reference's).
pub(super) fn shift(rec: &mut Recording, offset: Micros) {
    if offset == 0 {
        return;
    }
    for i in &mut rec.intervals {
        i.end -= offset;
    }
    for e in &mut rec.events {
        e.ts -= offset;
    }
    for (ts, _) in &mut rec.notes {
        *ts -= offset;
    }
}

/// The span of a recording's included intervals.
pub(super) fn window_of(rec: &Recording, inc: &Included) -> (Micros, Micros) {
    let mut span = (Micros::MAX, Micros::MIN);
    for (i, interval) in rec.intervals.iter().enumerate() {
        if inc.counts[i] {
            span.0 = span.0.min(interval.start());
            span.1 = span.1.max(interval.end);
        }
    }
    span
}

/// Whether the flow moved at this hop in the interval beyond the window's edge next to
/// `interval` (so the part of `interval` outside the window likely held its packets too).
pub(super) fn active_beyond(
    series: &crate::report::read::FlowSeries,
    inc: &Included,
    interval: usize,
) -> bool {
    let beyond = if interval > 0 && !inc.counts[interval - 1] {
        Some(interval - 1)
    } else if interval + 1 < inc.counts.len() && !inc.counts[interval + 1] {
        Some(interval + 1)
    } else {
        None
    };
    beyond.is_some_and(|b| {
        series
            .points
            .iter()
            .any(|p| p.interval == b && p.packets > 0)
    })
}
