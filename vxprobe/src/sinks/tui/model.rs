//! What the UI is fed: owned, typed messages. Nothing here refers into the pipeline, the kernel
//! maps or eBPF; the pipeline builds these values and sends them over a channel.

use std::time::{Duration, SystemTime};

use crossterm::event::KeyEvent;
pub use vxprobe_common::Direction;

pub use crate::node::features::Offload;
pub use crate::observe::judge::{OffloadHint, PathVerdict};
use crate::observe::{anomaly::Anomaly, judge};
pub use crate::{
    node::devices::Role,
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

/// The counts one flow has at one hop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HopCounts {
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
    pub csum_errors: u64,
    pub oversize: u64,
    pub fragments: u64,
    pub retransmits: u64,
}

impl HopCounts {
    /// Adds `other` (saturating: a bogus count from the feed must not bring the UI down).
    pub fn add(&mut self, other: &HopCounts) {
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.packets, other.packets);
        add(&mut self.bytes, other.bytes);
        add(&mut self.drops, other.drops);
        add(&mut self.csum_errors, other.csum_errors);
        add(&mut self.oversize, other.oversize);
        add(&mut self.fragments, other.fragments);
        add(&mut self.retransmits, other.retransmits);
    }

    /// Drops (checksum errors and oversize included), retransmits and fragments: what makes a
    /// flow worth looking at.
    pub fn trouble(&self) -> u64 {
        self.drops
            .saturating_add(self.retransmits)
            .saturating_add(self.fragments)
    }
}

/// One flow at one hop during an interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowHop {
    pub ifname: String,
    pub ifindex: u32,
    pub dir: Direction,
    pub role: Role,
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
        let mut total = HopCounts::default();
        for hop in &hops {
            total.add(&HopCounts {
                packets: 0,
                bytes: 0,
                ..hop.counts.clone()
            });
        }
        if let Some(first) = hops.first() {
            total.packets = first.counts.packets;
            total.bytes = first.counts.bytes;
        }
        Self {
            flow,
            outer,
            hops,
            total,
        }
    }
}

/// What the events panel can show: the pipeline's anomaly kinds, with their display names.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKindView {
    Drop,
    CsumError,
    Oversize,
    Fragment,
    Retransmit,
    FragNeeded,
}

impl EventKindView {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKindView::Drop => "drop",
            EventKindView::CsumError => "csum_error",
            EventKindView::Oversize => "oversize",
            EventKindView::Fragment => "fragment",
            EventKindView::Retransmit => "retransmit",
            EventKindView::FragNeeded => "frag_needed",
        }
    }
}

impl From<AnomalyKind> for EventKindView {
    fn from(kind: AnomalyKind) -> Self {
        match kind {
            AnomalyKind::Drop => EventKindView::Drop,
            AnomalyKind::CsumError => EventKindView::CsumError,
            AnomalyKind::Oversize => EventKindView::Oversize,
            AnomalyKind::Retransmit => EventKindView::Retransmit,
            AnomalyKind::Fragment => EventKindView::Fragment,
            AnomalyKind::FragNeeded => EventKindView::FragNeeded,
        }
    }
}

/// One anomaly for the events panel.
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalySample {
    pub ts: SystemTime,
    pub kind: EventKindView,
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
}

impl AnomalySample {
    /// The pipeline's anomaly, as seen at `ts`.
    pub fn from_anomaly(anomaly: &Anomaly, ts: SystemTime) -> Self {
        Self {
            ts,
            kind: anomaly.kind.into(),
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
        }
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
