//! The report's model: what `vxprobe report` finds, as the JSON, Markdown and HTML forms
//! write it (the JSON is this, serialized).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::read::{FlowId, Micros, OuterId};

/// Why recordings cannot be joined: each one line (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "{a} and {b} are both from node \"{node}\": give one recording per node (record --node NAME names them)"
    )]
    SameNode { node: String, a: String, b: String },
    #[error("the recordings do not overlap in time ({spans}): nothing to join")]
    NoOverlap { spans: String },
}

/// A hop as the report names it: node, device, direction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HopRef {
    pub node: String,
    pub ifname: String,
    pub dir: String,
}

impl std::fmt::Display for HopRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.node, self.ifname, self.dir)
    }
}

/// One hop of a flow's path, with what the flow did there over the window.
#[derive(Clone, Debug, Serialize)]
pub struct PathHop {
    #[serde(flatten)]
    pub at: HopRef,
    pub role: String,
    pub packets: u64,
    pub bytes: u64,
    pub segs: u64,
    /// Packets of this flow the kernel dropped there (drop, csum_error and size-drop events).
    pub drops: u64,
}

/// Where a segment's loss is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Where {
    /// At a hop: drops counted there explain it.
    Hop,
    /// Between two hops of one node, where nothing was counted as a drop.
    Between,
    /// On the wire: between one node's underlay egress and the next node's underlay ingress,
    /// where no node observes.
    Wire,
    /// Between two nodes whose hops in between were not recorded.
    Unobserved,
    /// Not a loss: no more than the window's edges explain (packets one node counted in the
    /// part of an interval the other did not record).
    Edge,
}

impl Where {
    pub fn describe(self) -> &'static str {
        match self {
            Where::Hop => "at the hop",
            Where::Between => "between the hops, nothing counted",
            Where::Wire => "on the wire",
            Where::Unobserved => "between nodes, hops not recorded",
            Where::Edge => "window edge, not a loss",
        }
    }
}

/// Two consecutive hops of a path and what went from one to the other.
#[derive(Clone, Debug, Serialize)]
pub struct Segment {
    pub from: HopRef,
    pub to: HopRef,
    pub sent: u64,
    pub received: u64,
    /// sent - received (0 when more arrived).
    pub lost: u64,
    /// received - sent, when more arrived than left (fragmentation, or the window's edges).
    #[serde(skip_serializing_if = "is_zero")]
    pub gained: u64,
    /// Drops of this flow counted inside the segment (after `from` at ingress, before `to`
    /// at egress).
    pub dropped: u64,
    #[serde(rename = "where")]
    pub location: Option<Where>,
    /// The hop the drops were counted at, when `where` is `hop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<HopRef>,
    /// Packets the window's edges may account for (two nodes' intervals never start together):
    /// a loss up to this is `edge`.
    #[serde(skip_serializing_if = "is_zero")]
    pub uncertainty: u64,
    /// Why the counts do not compare, when they do not (packets fragmented or reassembled
    /// between the hops): `lost` is then 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A drop of the flow that is not on its path: in a pod's namespace, on another device, or in
/// a namespace several recordings saw (nodes sharing a kernel, as in a lab).
#[derive(Clone, Debug, Serialize)]
pub struct OffPath {
    /// The node, or `shared` for a namespace several nodes' recordings saw.
    pub node: String,
    pub netns: Option<u64>,
    pub ifname: Option<String>,
    pub kind: String,
    pub reason: Option<String>,
    pub count: u64,
}

/// One flow across the nodes.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    pub flow: FlowId,
    pub vni: Option<u32>,
    pub outer: Option<OuterId>,
    /// `packets`, or `segments` where GSO packets were seen on the path (a GSO packet that is
    /// segmented between two hops is one packet before and many after; segments are what the
    /// wire carries).
    pub unit: &'static str,
    /// At the first hop of the path.
    pub sent: u64,
    /// At the last hop of the path.
    pub received: u64,
    /// Lost over every segment (edges excluded).
    pub lost: u64,
    pub loss_pct: f64,
    pub path: Vec<PathHop>,
    pub segments: Vec<Segment>,
    /// Anomaly events of this flow by kind, over the window.
    pub anomalies: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drops_off_path: Vec<OffPath>,
}

impl FlowReport {
    /// The segments that lost packets (edges excluded).
    pub fn losses(&self) -> impl Iterator<Item = &Segment> {
        self.segments
            .iter()
            .filter(|s| s.lost > 0 && s.location.is_some_and(|w| w != Where::Edge))
    }

    /// "udp 198.19.1.2:40001 > 198.19.2.2:7000 (VNI 4096)"
    pub fn title(&self) -> String {
        match self.vni {
            Some(vni) => format!("{} (VNI {vni})", self.flow),
            None => self.flow.to_string(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    pub node: String,
    pub recording: String,
    /// `false`: the recording's meta line has no `node`; it is named after its file.
    pub named: bool,
    pub kernel: String,
    pub vxprobe_version: String,
    pub netns: u64,
    /// The recording's span on the reference clock.
    pub from: String,
    pub to: String,
    pub intervals: usize,
    pub interval_ms: u64,
    /// This node's clock minus the reference's, as applied.
    pub clock_offset_ms: f64,
    /// The recording ended with its summary line.
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<super::read::Truncation>,
    pub lost_events: u64,
    pub evicted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap_frames: Option<u64>,
}

/// How one node's clock was aligned on the reference's.
#[derive(Clone, Debug, Serialize)]
pub struct Skew {
    pub node: String,
    /// What was applied (0 unless measured beyond the resolution).
    pub offset_ms: f64,
    /// What the traffic says, if it could say.
    pub measured_ms: Option<f64>,
    /// Finer than this, counts per interval cannot tell: half the longer interval, or of the
    /// intervals that held the traffic, or the spread of offsets that match as well.
    pub resolution_ms: f64,
    /// How well the two nodes' underlay series match at the measured offset (Pearson, -1..1).
    pub correlation: Option<f64>,
    /// Packets the measure rests on (underlay egress of one node, ingress of the other).
    pub packets: u64,
    pub applied: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub from: String,
    pub to: String,
    pub duration_ms: u64,
    /// The node whose clock the report's times are on.
    pub reference: String,
    pub skew: Vec<Skew>,
    /// What the join assumed, in words.
    pub assumptions: Vec<String>,
}

/// An anomaly line of a recording, on the reference clock, with its evidence packet.
#[derive(Clone, Debug, Serialize)]
pub struct AnomalyRow {
    /// The node whose recording it is from, or `shared` (see [`OffPath`]).
    pub node: String,
    pub ts: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowId>,
    pub count: u64,
    /// The evidence file and the packet's frame number in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap_frame: Option<u64>,
    /// The packet's comment in the evidence file, when it was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap_comment: Option<String>,
    #[serde(skip)]
    pub at: Micros,
    #[serde(skip)]
    pub len: Option<u64>,
    #[serde(skip)]
    pub errno: Option<u64>,
    #[serde(skip)]
    pub process: Option<String>,
    #[serde(skip)]
    pub dropped: bool,
}

/// Series over time for the plots (not part of the JSON).
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub from: Micros,
    pub bin: Micros,
    pub bins: usize,
    /// Per hop (label, drops per second, bits per second).
    pub hops: Vec<(String, Vec<f64>, Vec<f64>)>,
    /// Per pair of nodes (label, packets lost per second between their underlays).
    pub wire: Vec<(String, Vec<f64>)>,
    /// Per anomaly kind, events per second.
    pub anomalies: BTreeMap<String, Vec<f64>>,
    /// (time, node, text)
    pub notes: Vec<(Micros, String, String)>,
}

/// The joined incident; its JSON form is the report's schema.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub vxprobe_version: &'static str,
    pub nodes: Vec<NodeInfo>,
    pub window: Window,
    /// Worst first.
    pub flows: Vec<FlowReport>,
    pub findings: Vec<Finding>,
    pub anomalies: Vec<AnomalyRow>,
    #[serde(skip)]
    pub timeline: Timeline,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Packets dropped, corrupted or delayed.
    Error,
    /// Traffic flows at a cost.
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable: `wire-loss`, `uncounted-loss`, `unobserved-loss`, `drops`, `csum-errors`,
    /// `size-drops`, `refused-sends`, `oversize`, `fragments`, `retransmits`, `frag-needed`,
    /// `events-lost`, `flows-evicted`, `recording-truncated`, `recording-unfinished`, and
    /// doctor's codes.
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    pub message: String,
    pub fix: String,
    /// `path`, `anomalies`, `recording` or `doctor`.
    pub source: &'static str,
    /// Packets or events behind it (0 for configuration findings).
    pub count: u64,
    pub evidence: serde_json::Value,
}
