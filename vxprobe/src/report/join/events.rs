//! Events seen by more than one recorder (nodes sharing a kernel): each group counted once,
//! from the recording that kept most of it.

use std::collections::{BTreeMap, BTreeSet};

use crate::report::read::{FlowId, Recording};

/// Who each event belongs to: `owner[recording][event]` is the node (or `shared`) to count it
/// for, `None` to leave it to another recording.
pub(super) struct Owners {
    pub(super) owner: Vec<Vec<Option<String>>>,
    pub(super) shared_netns: usize,
}

/// Kernel-wide hooks report every namespace of their kernel, so nodes sharing a kernel (a lab)
/// each record the others' events too. Events are grouped by namespace, kind, device, reason and
/// flow; each group is counted once, from the recording that has the most of it (a recorder
/// flooded by another workload's events may have missed some), the namespace's own node first
/// on a tie. An event in a node's namespace is that node's; one in a namespace several
/// recordings see and no node has is `shared`; any other is the recording node's (its pods).
pub(super) fn event_owners(recordings: &[Recording]) -> Owners {
    let node_of_netns: BTreeMap<u64, usize> = recordings
        .iter()
        .enumerate()
        .filter(|(_, r)| r.netns != 0)
        .map(|(i, r)| (r.netns, i))
        .collect();
    // (netns, kind, device, reason, flow)
    type Group = (
        Option<u64>,
        String,
        Option<String>,
        Option<String>,
        Option<FlowId>,
    );
    let key = |e: &crate::report::read::Event| -> Group {
        (
            e.netns,
            e.kind.clone(),
            e.ifname.clone(),
            e.reason.clone(),
            e.flow.clone(),
        )
    };
    let mut counts: BTreeMap<Group, BTreeMap<usize, u64>> = BTreeMap::new();
    let mut seen_in: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for (r, rec) in recordings.iter().enumerate() {
        for e in &rec.events {
            *counts.entry(key(e)).or_default().entry(r).or_default() += e.count;
            if let Some(ns) = e.netns {
                seen_in.entry(ns).or_default().insert(r);
            }
        }
    }
    let chosen: BTreeMap<Group, usize> = counts
        .into_iter()
        .map(|(k, by)| {
            let own = k.0.and_then(|ns| node_of_netns.get(&ns).copied());
            let best = by.values().copied().max().unwrap_or(0);
            let pick = own
                .filter(|o| by.get(o) == Some(&best))
                .or_else(|| by.iter().find(|(_, n)| **n == best).map(|(r, _)| *r))
                .unwrap_or(0);
            (k, pick)
        })
        .collect();
    let shared: BTreeSet<u64> = seen_in
        .iter()
        .filter(|(ns, rs)| rs.len() > 1 && !node_of_netns.contains_key(ns))
        .map(|(ns, _)| *ns)
        .collect();
    let owner = recordings
        .iter()
        .enumerate()
        .map(|(r, rec)| {
            rec.events
                .iter()
                .map(|e| {
                    if chosen.get(&key(e)) != Some(&r) {
                        return None;
                    }
                    Some(match e.netns {
                        Some(ns) if node_of_netns.contains_key(&ns) => {
                            recordings[node_of_netns[&ns]].node.clone()
                        }
                        Some(ns) if shared.contains(&ns) => "shared".to_owned(),
                        _ => rec.node.clone(),
                    })
                })
                .collect()
        })
        .collect();
    let crossed = seen_in.iter().filter(|(_, rs)| rs.len() > 1).count();
    Owners {
        owner,
        shared_netns: crossed,
    }
}
