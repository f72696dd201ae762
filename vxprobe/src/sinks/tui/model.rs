//! What the UI is fed: owned, typed messages. Nothing here refers into the pipeline, the kernel
//! maps or eBPF; the pipeline builds these values and sends them over a channel.

use std::time::{Duration, SystemTime};

use crossterm::event::KeyEvent;
pub use vxprobe_common::Direction;

pub use crate::node::features::Offload;
pub use crate::observe::judge::{OffloadHint, PathCounts as HopCounts, PathVerdict};
use crate::observe::{anomaly::Anomaly, judge};
pub use crate::{
    node::{devices::Role, pods::PodId},
    observe::anomaly::AnomalyKind,
    observe::packet::{Flow, Outer},
};

/// A hop: one device in one direction.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HopId {
    pub ifindex: u32,
    pub dir: Direction,
}

impl From<vxprobe_common::HopKey> for HopId {
    fn from(key: vxprobe_common::HopKey) -> Self {
        Self {
            ifindex: key.ifindex,
            dir: Direction::try_from(key.direction).unwrap_or(Direction::Ingress),
        }
    }
}

/// What one hop saw during one interval. The pipeline sends one per selected hop and interval,
/// zero counts included. Counts are for the interval, not totals. Fields the pipeline cannot
/// measure yet stay 0 or `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct HopSample {
    pub ifname: String,
    pub ifindex: u32,
    pub dir: Direction,
    pub role: Role,
    pub mtu: u32,
    /// The pod at the device's other end (a host-side veth), as the pod index names it.
    pub pod: Option<PodId>,
    /// `None`: not known (not read yet, or the device does not say).
    pub offload: Option<Offload>,
    /// Packets (skbs: a GSO super-packet counts once) and their bytes seen at the hop.
    pub packets: u64,
    pub bytes: u64,
    /// Packets freed at this hop, every kind included: `csum_errors` and `oversize` are parts
    /// of `drops`, not additions to it.
    pub drops: u64,
    /// The share of the hop's packets that died there, as `record` reports it
    /// ([`judge::hop_loss_pct`]).
    pub loss_pct: f64,
    pub csum_errors: u64,
    pub oversize: u64,
    /// IP fragments seen (not a loss).
    pub fragments: u64,
    /// TCP retransmissions seen (not a loss at this hop, a symptom of one somewhere).
    pub retransmits: u64,
    /// Segments the packets stand for (a GSO packet counts its `gso_segs`); 0: not measured.
    pub segs: u64,
    /// Bytes per segment, when the pipeline computes it; `None` makes the UI use
    /// `bytes / segs`, or `bytes / packets` when `segs` is 0.
    pub mean_segment: Option<u32>,
    /// The largest packet of the interval. The dependable half of the offload-off signature:
    /// with TX checksum/TSO off on a tunnel, its underlay's largest packet falls to the MTU
    /// while the pod still sends 64 KiB GSO packets (the mean is not: under load TCP sends
    /// mostly MSS-sized packets either way).
    pub max_len: Option<u32>,
    /// How long this interval was.
    pub interval: Duration,
}

impl HopSample {
    /// A hop with every count zero.
    pub fn new(
        ifname: impl Into<String>,
        ifindex: u32,
        dir: Direction,
        role: Role,
        mtu: u32,
        interval: Duration,
    ) -> Self {
        Self {
            ifname: ifname.into(),
            ifindex,
            dir,
            role,
            mtu,
            pod: None,
            offload: None,
            packets: 0,
            bytes: 0,
            drops: 0,
            loss_pct: 0.0,
            csum_errors: 0,
            oversize: 0,
            fragments: 0,
            retransmits: 0,
            segs: 0,
            mean_segment: None,
            max_len: None,
            interval,
        }
    }

    pub fn id(&self) -> HopId {
        HopId {
            ifindex: self.ifindex,
            dir: self.dir,
        }
    }
}

impl judge::HopView for HopSample {
    fn key(&self) -> vxprobe_common::HopKey {
        vxprobe_common::HopKey::new(self.ifindex, self.dir)
    }
    fn ifname(&self) -> &str {
        &self.ifname
    }
    fn role(&self) -> Role {
        self.role
    }
    fn mtu(&self) -> u32 {
        self.mtu
    }
    fn packets(&self) -> u64 {
        self.packets
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
    fn segs(&self) -> u64 {
        self.segs
    }
    fn max_len(&self) -> u64 {
        self.max_len.map_or(0, u64::from)
    }
    fn drops(&self) -> u64 {
        self.drops
    }
    fn loss_pct(&self) -> f64 {
        self.loss_pct
    }
}

/// One flow at one hop during an interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowHop {
    pub ifname: String,
    pub ifindex: u32,
    pub dir: Direction,
    pub role: Role,
    /// The pod at the device's other end, if any.
    pub pod: Option<PodId>,
    pub counts: HopCounts,
}

impl FlowHop {
    pub fn id(&self) -> HopId {
        HopId {
            ifindex: self.ifindex,
            dir: self.dir,
        }
    }

    /// Where the hop comes on a packet's way through the node ([`judge::path_rank`]).
    pub fn path_rank(&self) -> u8 {
        judge::path_rank(self.role, self.dir)
    }
}

/// What one flow did during one interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSample {
    /// The inner flow of a tunnel packet, as [`crate::observe::packet::parse_ip`] reports it.
    pub flow: Flow,
    pub outer: Option<Outer>,
    /// The hops the flow crossed, in the order its packets crossed them.
    pub hops: Vec<FlowHop>,
    /// The flow's totals: `packets` and `bytes` as sent (counted once, at its first hop, not
    /// summed over hops); `drops` and the rest summed over every hop.
    pub total: HopCounts,
}

impl FlowSample {
    /// A sample from the flow's per-hop counts in any order: hops are put in path order
    /// ([`FlowHop::path_rank`]) and the totals computed as [`FlowSample::total`] says.
    pub fn from_hops(flow: Flow, outer: Option<Outer>, mut hops: Vec<FlowHop>) -> Self {
        hops.sort_by_key(|h| (h.path_rank(), h.ifindex));
        let counts: Vec<HopCounts> = hops.iter().map(|h| h.counts.clone()).collect();
        Self {
            flow,
            outer,
            total: judge::path_totals(&counts),
            hops,
        }
    }
}

/// What the events panel shows: the pipeline's anomaly kinds, as they are.
pub use crate::observe::anomaly::AnomalyKind as EventKind;

/// One anomaly for the events panel.
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalySample {
    pub ts: SystemTime,
    pub kind: EventKind,
    /// `None` for faults seen at the socket layer, with no device.
    pub ifname: Option<String>,
    pub dir: Option<Direction>,
    /// The kernel's drop reason, e.g. `TCP_CSUM`; empty when the kind has none.
    pub reason: String,
    /// The kernel function that freed the packet (or refused the send); may be empty.
    pub location: String,
    /// Packet length; 0 when unknown.
    pub len: u32,
    pub flow: Option<Flow>,
    /// The pod whose namespace it happened in, or at the device's other end.
    pub pod: Option<PodId>,
    /// Identical events this row stands for (folded by the pipeline, merged by the panel).
    pub count: u64,
}

impl AnomalySample {
    /// The pipeline's anomaly, as seen at `ts`.
    pub fn from_anomaly(anomaly: &Anomaly, ts: SystemTime) -> Self {
        Self {
            count: u64::from(anomaly.count.unwrap_or(1)),
            ts,
            kind: anomaly.kind,
            ifname: anomaly.ifname.clone(),
            dir: anomaly.hop_direction,
            reason: anomaly.reason.clone().unwrap_or_default(),
            location: anomaly
                .location
                .clone()
                .or_else(|| anomaly.func.map(str::to_owned))
                .unwrap_or_default(),
            len: anomaly.len.unwrap_or(0),
            flow: anomaly.flow.clone(),
            pod: anomaly.pod.as_ref().map(|p| p.id.clone()),
        }
    }

    /// Whether two samples are the same event (kind, hop, flow and reason), merged into one
    /// row.
    pub fn same_event(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.ifname == other.ifname
            && self.dir == other.dir
            && self.reason == other.reason
            && self.flow == other.flow
    }
}

/// Everything the UI reacts to: data from the pipeline and input from the terminal.
#[derive(Clone, Debug)]
pub enum AppEvent {
    /// One interval of every hop and of the flows seen in it; `lost`: events the kernel could
    /// not hand over (full ring buffer) during the interval; what the interval model decided:
    /// the hop losing most, the offload signature.
    Interval {
        hops: Vec<HopSample>,
        flows: Vec<FlowSample>,
        lost: u64,
        worst: Option<HopId>,
        hint: Option<OffloadHint>,
    },
    Anomaly(AnomalySample),
    /// Flow entries the kernel's full flow table evicted in an interval (sent when some were).
    Evicted(u64),
    Key(KeyEvent),
    Resize,
    /// What the pipeline observes with: hooks in use (e.g. `tc:tcx`, `tp_btf:kfree_skb`), and
    /// the interval length.
    Status {
        hooks: Vec<String>,
        interval: Duration,
    },
    /// A line for the status bar from whoever drives the session (the demo names the fault it
    /// is injecting); `None` clears it.
    Notice(Option<String>),
    /// The pipeline stopped sending (recording ended or failed); the screen stays for reading.
    FeedEnded,
    Quit,
}
