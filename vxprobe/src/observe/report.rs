//! The plain reports every sink formats: what a session watches ([`Meta`]), what each hop and
//! flow did over an interval ([`HopReport`], [`FlowReport`]), what the run added up to
//! ([`Summary`]). They hold no kernel handle; [`super::interval`] computes every figure in
//! them once.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use serde::{Serialize, Serializer};
use vxprobe_common::{Counters, Direction, EventKind, FlowCounters, HopKey};

use super::{
    anomaly::AnomalyKind,
    judge::{HopView, OffloadHint},
    packet::{Flow, Outer},
};
use crate::{
    kernel::{probes::HookChoice, tc_order::Ahead},
    node::{
        devices::{Hop, Role},
        pods::{Pod, Snapshot, Source},
    },
};

/// What this session watches, with which hooks: the `meta` line, the TUI's status line.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    /// The node's name (`--node`, default the hostname): `report` joins recordings by it.
    pub node: String,
    pub vxprobe_version: &'static str,
    pub kernel: String,
    pub netns: u64,
    pub tc_attach: &'static str,
    /// Capacity of the kernel's flow table (`--max-flows`).
    pub max_flows: u32,
    /// Slots per CPU of the flow cache in front of it (`--flow-cache`).
    pub flow_cache_slots: u32,
    pub hooks: Vec<HookChoice>,
    /// Signals observed with less than usual on this kernel, and what they lose
    /// ([`crate::kernel::btf_needs`]).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub degraded: BTreeMap<&'static str, Vec<String>>,
    pub hops: Vec<MetaHop>,
    /// Which source names the pods, and what it knew at start.
    pub pods: PodsMeta,
}

/// What `meta` says of the pod index ([`crate::node::pods`]): `source` is `cri`, `layout` or
/// `none`.
#[derive(Debug, Clone, Serialize)]
pub struct PodsMeta {
    pub source: Source,
    /// The runtime's name and version (CRI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Pod namespaces named at start.
    pub count: usize,
    /// Why a better source was passed over, or the index could not say in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PodsMeta {
    /// What the index's first snapshot says.
    pub fn of(snapshot: &Snapshot) -> Self {
        Self {
            source: snapshot.source(),
            runtime: snapshot.runtime().map(str::to_owned),
            count: snapshot.len(),
            error: snapshot.error().map(str::to_owned),
        }
    }
}

/// A pod as lines carry it: `"pod": {"namespace", "name", "uid"}`.
pub fn serialize_pod<S: Serializer>(pod: &Option<Arc<Pod>>, s: S) -> Result<S::Ok, S::Error> {
    pod.as_ref().map(|p| &p.id).serialize(s)
}

/// An observed device: what a hop line says of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetaHop {
    pub ifname: String,
    pub ifindex: u32,
    pub role: Role,
    pub mtu: u32,
    /// Programs and filters that run before vxprobe's on this device and can end processing
    /// there ([`crate::kernel::tc_order`]): what they pass, drop or redirect is not counted at
    /// the hop.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<Ahead>,
    /// The pod at the device's other end (a host-side veth), as the pod index knew it when
    /// the hop was read: `hop` and `flow` lines name it.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_pod"
    )]
    pub pod: Option<Arc<Pod>>,
}

impl MetaHop {
    /// A device with nothing known ahead of vxprobe's programs and no pod.
    pub fn new(ifname: &str, ifindex: u32, role: Role, mtu: u32) -> Self {
        Self {
            ifname: ifname.to_owned(),
            ifindex,
            role,
            mtu,
            ahead: Vec::new(),
            pod: None,
        }
    }

    /// A hop as lines name it, with the pod at its other end as `pods` knows it.
    pub fn of(hop: &Hop, pods: &Snapshot) -> Self {
        Self {
            pod: pods.pod_of_device(hop.device.ifindex).cloned(),
            ..Self::new(
                &hop.device.name,
                hop.device.ifindex,
                hop.role,
                hop.device.mtu,
            )
        }
    }
}

/// What happened to an observed (or selected) device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// It appeared and is observed from now on.
    Added,
    /// It vanished (or was renamed out of the selection): its lines stop.
    Removed,
    /// It should be observed and could not be attached (why); tried again at the device
    /// watcher's next resync.
    AttachFailed(String),
    /// Its MTU changed (from `was`): the kernel programs judge sizes by the new one.
    MtuChanged { was: u32 },
}

impl DeviceEvent {
    pub const fn as_str(&self) -> &'static str {
        match self {
            DeviceEvent::Added => "added",
            DeviceEvent::Removed => "removed",
            DeviceEvent::AttachFailed(_) => "attach_failed",
            DeviceEvent::MtuChanged { .. } => "mtu_changed",
        }
    }
}

/// A change of an observed device, as the `device` lines and metrics tell it.
#[derive(Debug, Clone)]
pub struct HopChange {
    pub ts: SystemTime,
    pub event: DeviceEvent,
    /// The device as it is now (after the change).
    pub hop: MetaHop,
}

impl HopChange {
    pub fn new(event: DeviceEvent, hop: MetaHop) -> Self {
        Self {
            ts: SystemTime::now(),
            event,
            hop,
        }
    }

    pub fn added(hop: MetaHop) -> Self {
        Self::new(DeviceEvent::Added, hop)
    }

    pub fn removed(hop: MetaHop) -> Self {
        Self::new(DeviceEvent::Removed, hop)
    }

    pub fn attach_failed(hop: MetaHop, why: String) -> Self {
        Self::new(DeviceEvent::AttachFailed(why), hop)
    }
}

/// Something the run could not do and went on without (a `warning` line): map reads that
/// failed and were tried again, counters that could not be read in an interval.
#[derive(Debug, Clone)]
pub struct Warning {
    pub ts: SystemTime,
    pub text: String,
    /// How many times it happened in the interval.
    pub count: u64,
}

/// Anomalies charged to one hop, or one flow, over an interval: each anomaly once (a line
/// with `count` counts that many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Faults whose packet died (or whose send was refused): drops of every kind, checksum
    /// failures, size drops, refused sends.
    pub drops: u64,
    /// Anomalies by kind, dropped or not.
    events: [u64; AnomalyKind::ALL.len()],
    /// `drops` by the kernel's reason (`EMSGSIZE` for refused sends).
    pub reasons: BTreeMap<String, u64>,
}

impl Faults {
    /// Anomalies of `kind`.
    pub fn count(&self, kind: AnomalyKind) -> u64 {
        self.events[kind as usize]
    }

    pub(super) fn add(&mut self, kind: AnomalyKind, n: u64, dropped: Option<&str>) {
        self.events[kind as usize] += n;
        if let Some(reason) = dropped {
            self.drops += n;
            *self.reasons.entry(reason.to_owned()).or_default() += n;
        }
    }

    /// Adds `other` (saturating: totals kept for weeks must not wrap).
    pub fn merge(&mut self, other: &Faults) {
        self.drops = self.drops.saturating_add(other.drops);
        for (a, b) in self.events.iter_mut().zip(other.events) {
            *a = a.saturating_add(b);
        }
        for (reason, n) in &other.reasons {
            let total = self.reasons.entry(reason.clone()).or_default();
            *total = total.saturating_add(*n);
        }
    }

    /// Anomalies of every kind.
    pub fn events(&self) -> u64 {
        self.events.iter().sum()
    }
}

/// A flow's anomalies over an interval: all of them, and those at each of our hops (the rest
/// happened elsewhere: in a pod's namespace, at the socket, before any hop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowFaults {
    pub flow: Flow,
    pub total: Faults,
    pub at: Vec<(HopKey, Faults)>,
}

/// One hop over one interval: what its TC programs counted and the faults charged to it.
#[derive(Debug, Clone)]
pub struct HopReport {
    pub hop: MetaHop,
    pub dir: Direction,
    pub counters: Counters,
    pub faults: Faults,
    /// The share of the hop's packets that died there ([`super::judge::hop_loss_pct`]).
    pub loss_pct: f64,
    /// Bytes per segment: near the MTU where the device segments in software (offloads
    /// off), tens of KiB where GSO/TSO carry large packets through.
    pub mean_segment: u64,
}

impl HopReport {
    pub fn key(&self) -> HopKey {
        HopKey::new(self.hop.ifindex, self.dir)
    }

    /// Faults dropped here (the `hop` line's `drops`).
    pub fn drops(&self) -> u64 {
        self.faults.drops
    }

    /// Packets refused or seen above the MTU here: the TC programs' count of oversized
    /// packets, or the oversize anomalies charged here (refused sends and size drops, which
    /// TC never sees), whichever is more: the same packet is often both.
    pub fn oversize(&self) -> u64 {
        self.counters
            .oversize
            .max(self.faults.count(AnomalyKind::Oversize))
    }
}

impl HopView for HopReport {
    fn key(&self) -> HopKey {
        HopReport::key(self)
    }
    fn ifname(&self) -> &str {
        &self.hop.ifname
    }
    fn role(&self) -> Role {
        self.hop.role
    }
    fn mtu(&self) -> u32 {
        self.hop.mtu
    }
    fn packets(&self) -> u64 {
        self.counters.packets
    }
    fn bytes(&self) -> u64 {
        self.counters.bytes
    }
    fn segs(&self) -> u64 {
        self.counters.segs
    }
    fn max_len(&self) -> u64 {
        u64::from(self.counters.max_len)
    }
    fn drops(&self) -> u64 {
        HopReport::drops(self)
    }
    fn loss_pct(&self) -> f64 {
        self.loss_pct
    }
}

/// One flow at one hop over one interval.
#[derive(Debug, Clone)]
pub struct FlowReport {
    pub hop: MetaHop,
    pub dir: Direction,
    pub flow: Flow,
    pub outer: Option<Outer>,
    pub counters: FlowCounters,
    /// Bytes per segment, as for hops.
    pub mean_segment: u64,
}

/// What an interval produced besides the anomalies and the flows: the hops.
#[derive(Debug, Clone)]
pub struct IntervalReport {
    /// When the interval ended: every counter in it was read after this instant.
    pub ts: SystemTime,
    pub interval: std::time::Duration,
    /// Every selected hop in both directions, quiet ones included.
    pub hops: Vec<HopReport>,
    /// Events the kernel could not hand over (ring buffer full), per kind.
    pub lost: LostEvents,
    /// The hop that lost most in this interval ([`super::judge::worst_hop`]).
    pub worst_hop: Option<HopKey>,
    /// The signature of a tunnel's offloads being off, when the hops show it.
    pub offload_hint: Option<OffloadHint>,
    /// The interval's anomalies by flow (its inner 5-tuple), for flows that had any; at most
    /// [`super::interval::FLOW_FAULTS_MAX`] flows.
    pub flow_faults: Vec<FlowFaults>,
}

/// What the interval's end adds, once its flows are out.
#[derive(Debug, Clone, Default)]
pub struct IntervalEnd {
    /// Flow entries the kernel's full flow table evicted (least recently seen first) in this
    /// interval; their counts since the last read are missing from the flows (hops stay
    /// exact).
    pub evicted: u64,
    /// TCP retransmits of the flows that crossed each hop in this interval: a retransmit has
    /// no device, its flow's path has.
    pub hop_retransmits: BTreeMap<HopKey, u64>,
}

/// Totals over the whole run, for the last line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub duration_ms: u64,
    pub intervals: u64,
    /// Anomalies per kind (each kernel event once, whether it had a line of its own or was
    /// folded into a `count` line).
    pub events: BTreeMap<&'static str, u64>,
    /// Anomalies folded into `count` lines (`--event-lines`).
    pub folded: u64,
    /// Events the kernel could not hand over, all kinds.
    pub lost: u64,
    /// Flow entries evicted from the kernel's full flow table (`--max-flows`).
    pub evicted: u64,
    /// Distinct (hop, direction, flow) entries reported (estimated beyond 65,536).
    pub flow_entries: u64,
    /// Runs of vxprobe's programs the kernel skipped because one of them was already running
    /// on that CPU (`recursion_misses`, Linux 5.12+): events that could not even be counted.
    pub recursion_misses: u64,
    /// Packets written to the pcapng file, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_packets: Option<u64>,
    /// With `--max-output-size`: lines, and evidence packets, not written once it was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwritten_lines: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwritten_packets: Option<u64>,
}

/// Events the kernel could not hand over (ring buffer full) in an interval, per kind.
pub type LostEvents = Vec<(EventKind, u64)>;

/// bytes / segments, 0 when there were none.
pub fn mean_segment(bytes: u64, segs: u64) -> u64 {
    bytes.checked_div(segs).unwrap_or(0)
}
