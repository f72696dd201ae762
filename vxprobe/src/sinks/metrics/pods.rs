//! `agent --pod-labels`: a `pod` label (`namespace/name`) on the series of a pod's veth hops and
//! of what happened in a pod's network namespace, bounded: at most [`MAX_POD_LABELS`] pods are
//! labeled at a time (the rest share `pod="other"`), and every series of a pod the node no
//! longer has is dropped, which frees its place.
//!
//! Which pod a hop or an event belongs to was decided in [`crate::observe`]; this only keeps
//! the label sets bounded.

use std::collections::{HashMap, HashSet};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

use super::families::{DropLabels, Families, HopLabels, KindLabel, ReasonLabel};
use crate::node::pods::PodId;

/// Pods labeled at a time; beyond them, `pod="other"`.
pub const MAX_POD_LABELS: usize = 256;

/// What a label names once the pods labeled are [`MAX_POD_LABELS`].
pub const OTHER_POD: &str = "other";

/// The families that carry a `pod` label with `--pod-labels` (for series of a pod).
pub const POD_LABELED: &[&str] = &[
    "vxprobe_hop_packets_total",
    "vxprobe_hop_bytes_total",
    "vxprobe_hop_segments_total",
    "vxprobe_hop_drops_total",
    "vxprobe_hop_dropped_packets_total",
    "vxprobe_fragments_total",
    "vxprobe_hop_oversize_packets_total",
    "vxprobe_hop_max_packet_bytes",
    "vxprobe_anomalies_total",
    "vxprobe_drops_total",
    "vxprobe_checksum_errors_total",
];

/// A pod as a label: `pod="namespace/name"` (or `other`), or no label at all.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub(super) struct PodLabel(pub(super) Option<String>);

impl EncodeLabelSet for PodLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(pod) => [("pod", pod.as_str())].encode(encoder),
            None => Ok(()),
        }
    }
}

/// A series that names a pod, to drop once the pod is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Series {
    /// Every hop family's series of one hop and direction.
    Hop(HopLabels),
    HopDrops(DropLabels),
    Anomalies(KindLabel),
    Drops(ReasonLabel),
    ChecksumErrors(ReasonLabel),
}

impl Series {
    pub(super) fn remove(&self, f: &Families) {
        match self {
            Series::Hop(labels) => {
                f.hop_packets.remove(labels);
                f.hop_dropped.remove(labels);
                f.hop_bytes.remove(labels);
                f.hop_segments.remove(labels);
                f.fragments.remove(labels);
                f.hop_oversize.remove(labels);
                f.hop_max_packet.remove(labels);
            }
            Series::HopDrops(labels) => _ = f.hop_drops.remove(labels),
            Series::Anomalies(labels) => _ = f.anomalies.remove(labels),
            Series::Drops(labels) => _ = f.drops.remove(labels),
            Series::ChecksumErrors(labels) => _ = f.checksum_errors.remove(labels),
        }
    }
}

/// The pods the node has now (`namespace/name`): asked once an interval.
pub type LivePods = Box<dyn FnMut() -> HashSet<String> + Send>;

/// The pods labeled, each with its series.
pub(super) struct PodLabels {
    max: usize,
    labeled: HashMap<String, Vec<Series>>,
    live: LivePods,
}

impl PodLabels {
    pub(super) fn new(max: usize, live: LivePods) -> Self {
        Self {
            max,
            labeled: HashMap::new(),
            live,
        }
    }

    /// The label of `pod`: its own while fewer than `max` pods have one, else `other`.
    pub(super) fn label(&mut self, pod: Option<&PodId>) -> PodLabel {
        let Some(pod) = pod else {
            return PodLabel(None);
        };
        let name = pod.to_string();
        if self.labeled.contains_key(&name) {
            return PodLabel(Some(name));
        }
        if self.labeled.len() < self.max {
            self.labeled.insert(name.clone(), Vec::new());
            return PodLabel(Some(name));
        }
        PodLabel(Some(OTHER_POD.to_owned()))
    }

    /// A series was created under `label`: dropped with its pod.
    pub(super) fn created(&mut self, label: &PodLabel, series: Series) {
        if let Some(name) = &label.0
            && let Some(all) = self.labeled.get_mut(name)
            && !all.contains(&series)
        {
            all.push(series);
        }
    }

    /// Forgets the pods the node no longer has; returns their series, to remove.
    pub(super) fn forget_gone(&mut self) -> Vec<Series> {
        if self.labeled.is_empty() {
            return Vec::new();
        }
        let live = (self.live)();
        let gone: Vec<String> = self
            .labeled
            .keys()
            .filter(|name| !live.contains(*name))
            .cloned()
            .collect();
        gone.iter()
            .filter_map(|name| self.labeled.remove(name))
            .flatten()
            .collect()
    }

    pub(super) fn labeled(&self) -> usize {
        self.labeled.len()
    }
}
