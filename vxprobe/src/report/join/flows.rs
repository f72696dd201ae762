//! One flow's path across the nodes, segment by segment, with its losses located.

use std::collections::{BTreeMap, BTreeSet};

use super::{super::model::*, *};
use crate::report::read::{FlowId, Micros};

/// The same 5-tuple in several VNIs (overlapping pod addresses in several tunnels) is several
/// flows. Hops without a tunnel header go with the VNI their node's underlay saw, when it saw
/// one.
pub(super) fn split_by_vni(observations: Vec<Obs>) -> BTreeMap<Option<u32>, Vec<Obs>> {
    let vnis: BTreeSet<u32> = observations.iter().filter_map(|o| o.vni).collect();
    let mut groups: BTreeMap<Option<u32>, Vec<Obs>> = BTreeMap::new();
    if vnis.len() <= 1 {
        groups.insert(vnis.first().copied(), observations);
        return groups;
    }
    let mut node_vnis: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    for o in &observations {
        if let Some(v) = o.vni {
            node_vnis.entry(o.node).or_default().insert(v);
        }
    }
    for o in observations {
        let vni = o.vni.or_else(|| {
            node_vnis
                .get(&o.node)
                .filter(|v| v.len() == 1)
                .and_then(|v| v.first().copied())
        });
        groups.entry(vni).or_default().push(o);
    }
    groups
}

/// The flow's path in order, its segments and where they lose.
pub(super) fn flow_report(
    flow: &FlowId,
    vni: Option<u32>,
    mut hops: Vec<Obs>,
    names: &[String],
    rows: &[AnomalyRow],
) -> FlowReport {
    // Nodes in the order the flow crosses them, each node's hops in stage order.
    let mut first_stage: BTreeMap<usize, u8> = BTreeMap::new();
    for o in &hops {
        let s = stage(&o.role, &o.hop.dir);
        first_stage
            .entry(o.node)
            .and_modify(|m| *m = (*m).min(s))
            .or_insert(s);
    }
    hops.sort_by(|a, b| {
        (
            first_stage[&a.node],
            a.node,
            stage(&a.role, &a.hop.dir),
            &a.hop,
        )
            .cmp(&(
                first_stage[&b.node],
                b.node,
                stage(&b.role, &b.hop.dir),
                &b.hop,
            ))
    });
    let gso = hops.iter().any(|o| o.segs != o.packets);
    type Count = fn(&Obs) -> u64;
    type Edge = fn(&Obs) -> f64;
    let (unit, count, edge): (&'static str, Count, Edge) = if gso {
        ("segments", |o| o.segs, |o| o.edge_segs)
    } else {
        ("packets", |o| o.packets, |o| o.edge_packets)
    };
    let hop_ref = |o: &Obs| HopRef {
        node: names[o.node].clone(),
        ifname: o.hop.ifname.clone(),
        dir: o.hop.dir.clone(),
    };
    let refs: Vec<HopRef> = hops.iter().map(hop_ref).collect();

    // This flow's anomalies, and its drops charged to the hops of its path.
    let mut anomalies: BTreeMap<String, u64> = BTreeMap::new();
    let mut drops = vec![0u64; hops.len()];
    // (node, netns, ifname, kind, reason)
    type OffKey = (String, Option<u64>, Option<String>, String, Option<String>);
    let mut off_path: BTreeMap<OffKey, u64> = BTreeMap::new();
    for row in rows {
        if row.flow.as_ref() != Some(flow) {
            continue;
        }
        *anomalies.entry(row.kind.clone()).or_default() += row.count;
        if !row.dropped {
            continue;
        }
        let on_path = row.ifname.as_ref().and_then(|ifname| {
            let candidates: Vec<usize> = (0..hops.len())
                .filter(|&i| refs[i].node == row.node && &refs[i].ifname == ifname)
                .filter(|&i| row.dir.as_ref().is_none_or(|d| *d == refs[i].dir))
                .collect();
            // A device the flow crossed both ways: the kernel's drop hooks do not say which;
            // take the ingress (a packet is usually dropped on its way in).
            candidates
                .iter()
                .copied()
                .find(|&i| refs[i].dir == "ingress")
                .or(candidates.first().copied())
        });
        match on_path {
            Some(i) => drops[i] += row.count,
            None => {
                *off_path
                    .entry((
                        row.node.clone(),
                        row.netns,
                        row.ifname.clone(),
                        row.kind.clone(),
                        row.reason.clone(),
                    ))
                    .or_default() += row.count;
            }
        }
    }

    let mut segments = Vec::new();
    for i in 1..hops.len() {
        let (a, b) = (&hops[i - 1], &hops[i]);
        let (sent, received) = (count(a), count(b));
        // A packet fragmented (or reassembled) between two hops of a node is one packet on
        // one side and several on the other: such counts do not compare. The wire between two
        // nodes fragments nothing: fragments there compare with fragments (a lost fragment is
        // a lost packet), unless only one end carries any (a router between the nodes split
        // the packets).
        let refragmented = if a.node == b.node {
            a.fragments != b.fragments
        } else {
            (a.fragments == 0) != (b.fragments == 0)
        };
        let lost = if refragmented {
            0
        } else {
            sent.saturating_sub(received)
        };
        // Drops after `a` (counted at its ingress) and before `b` (at its egress).
        let at_a = if a.hop.dir == "ingress" {
            drops[i - 1]
        } else {
            0
        };
        let at_b = if b.hop.dir == "egress" { drops[i] } else { 0 };
        let dropped = at_a + at_b;
        let cross = a.node != b.node;
        let uncertainty = if cross {
            (edge(a) + edge(b)).ceil() as u64
        } else {
            0
        };
        let location = if lost == 0 {
            None
        } else if cross && lost <= uncertainty {
            Some(Where::Edge)
        } else if cross
            && is_underlay(&a.role)
            && a.hop.dir == "egress"
            && is_underlay(&b.role)
            && b.hop.dir == "ingress"
        {
            Some(Where::Wire)
        } else if cross {
            Some(Where::Unobserved)
        } else if dropped > 0 {
            Some(Where::Hop)
        } else {
            Some(Where::Between)
        };
        let at = (location == Some(Where::Hop)).then(|| {
            if at_a >= at_b {
                refs[i - 1].clone()
            } else {
                refs[i].clone()
            }
        });
        segments.push(Segment {
            from: refs[i - 1].clone(),
            to: refs[i].clone(),
            sent,
            received,
            lost,
            gained: if refragmented {
                0
            } else {
                received.saturating_sub(sent)
            },
            dropped,
            location,
            at,
            uncertainty,
            note: refragmented.then_some(
                "fragmented or reassembled between these hops: packet counts do not compare",
            ),
        });
    }
    let outer = hops
        .iter()
        .filter(|o| is_underlay(&o.role) && o.hop.dir == "egress")
        .chain(hops.iter())
        .find_map(|o| o.outer.clone());
    let path: Vec<PathHop> = hops
        .iter()
        .zip(&refs)
        .zip(&drops)
        .map(|((o, at), d)| PathHop {
            at: at.clone(),
            role: o.role.clone(),
            packets: o.packets,
            bytes: o.bytes,
            segs: o.segs,
            drops: *d,
        })
        .collect();
    let sent = path
        .first()
        .map_or(0, |h| if gso { h.segs } else { h.packets });
    let received = path
        .last()
        .map_or(0, |h| if gso { h.segs } else { h.packets });
    let mut report = FlowReport {
        flow: flow.clone(),
        vni,
        outer,
        unit,
        sent,
        received,
        lost: 0,
        loss_pct: 0.0,
        path,
        segments,
        anomalies,
        drops_off_path: off_path
            .into_iter()
            .map(|((node, netns, ifname, kind, reason), count)| OffPath {
                node,
                netns,
                ifname,
                kind,
                reason,
                count,
            })
            .collect(),
    };
    report.lost = report.losses().map(|s| s.lost).sum();
    // Loss as the live pipeline defines it for a flow (what died of what was sent).
    report.loss_pct = crate::observe::judge::flow_loss_pct(sent, report.lost);
    report
}

/// Values of intervals spread over bins of the window, each bin the share of each interval it
/// overlaps.
pub(super) fn rebin(
    values: impl Iterator<Item = (Micros, Micros, f64)>,
    from: Micros,
    bin: Micros,
    bins: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; bins];
    // An interval across the window's edge counts whole, inside the window (as the totals
    // count it).
    let to = from + bin * bins as Micros;
    for (start, end, value) in values {
        let (start, end) = (start.max(from), end.min(to));
        if end <= start {
            continue;
        }
        let len = (end - start).max(1);
        let first = ((start - from).max(0) / bin) as usize;
        let last = (((end - from).max(0) / bin) as usize).min(bins.saturating_sub(1));
        for (b, slot) in out.iter_mut().enumerate().take(last + 1).skip(first) {
            let bin_start = from + b as Micros * bin;
            let overlap = end.min(bin_start + bin) - start.max(bin_start);
            if overlap > 0 {
                *slot += value * overlap as f64 / len as f64;
            }
        }
    }
    out
}

/// Per-bin differences (sent - received) of two nodes whose intervals do not line up are noisy:
/// a bin takes from its neighbour what the other node counted a moment later (+x, then -x). What
/// was lost so far can only grow, and no more than the cumulative difference at any later time:
/// the highest non-decreasing curve under the cumulative difference (its running minimum from
/// the end), whose steps are the losses per bin and whose end is the window's total.
pub(super) fn losses_over_time(differences: &[f64]) -> Vec<f64> {
    let mut cumulative: Vec<f64> = differences
        .iter()
        .scan(0.0, |sum, d| {
            *sum += d;
            Some(*sum)
        })
        .collect();
    let mut floor = f64::INFINITY;
    for c in cumulative.iter_mut().rev() {
        floor = floor.min(*c);
        *c = floor.max(0.0);
    }
    let mut previous = 0.0;
    cumulative
        .into_iter()
        .map(|level| {
            let step = level - previous;
            previous = level;
            step
        })
        .collect()
}

#[cfg(test)]
pub(in crate::report) fn losses_over_time_for_tests(differences: &[f64]) -> Vec<f64> {
    losses_over_time(differences)
}
