//! What the agent exports: [`FAMILIES`], the one list of metric families (names, types,
//! labels, help), their label sets, and the handles the sink updates.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};
use vxprobe_common::Direction;

use super::pods::PodLabel;

/// What a family is, as Prometheus shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Info,
}

/// One exported metric family.
#[derive(Copy, Clone, Debug)]
pub struct FamilyDoc {
    /// The name samples carry (`_total` on counters, `_info` on info metrics).
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const HOP: &[&str] = &["iface", "direction", "role"];
const FLOW: &[&str] = &["proto", "src", "dst", "sport", "dport"];

macro_rules! family {
    ($name:literal, $kind:ident, $labels:expr, $help:literal) => {
        FamilyDoc {
            name: $name,
            kind: Kind::$kind,
            labels: $labels,
            help: $help,
        }
    };
}

/// Every family the agent exports: the README's table and the dashboard's check read this
/// list, and a test holds the exposition to it.
pub const FAMILIES: &[FamilyDoc] = &[
    family!(
        "vxprobe_hop_packets_total",
        Counter,
        HOP,
        "Packets seen at the hop (as the hop line's packets)"
    ),
    family!(
        "vxprobe_hop_bytes_total",
        Counter,
        HOP,
        "Bytes seen at the hop"
    ),
    family!(
        "vxprobe_hop_segments_total",
        Counter,
        HOP,
        "Segments the hop's packets stand for (GSO packets count their gso_segs)"
    ),
    family!(
        "vxprobe_hop_dropped_packets_total",
        Counter,
        HOP,
        "Faults dropped at the hop, every reason (as the hop line's drops); its series exists from the hop's first interval, so rate() sees its first drops"
    ),
    family!(
        "vxprobe_hop_drops_total",
        Counter,
        &["iface", "direction", "role", "reason"],
        "Faults dropped at the hop (as the hop line's drops), by kernel drop reason, or EMSGSIZE for refused sends"
    ),
    family!(
        "vxprobe_fragments_total",
        Counter,
        HOP,
        "IP fragments seen at the hop"
    ),
    family!(
        "vxprobe_hop_oversize_packets_total",
        Counter,
        HOP,
        "Non-GSO packets seen at the hop longer than its MTU allows"
    ),
    family!(
        "vxprobe_hop_max_packet_bytes",
        Gauge,
        HOP,
        "Largest packet seen at the hop in the last interval"
    ),
    family!(
        "vxprobe_hop_mtu_bytes",
        Gauge,
        &["iface", "role"],
        "MTU of the observed device"
    ),
    family!(
        "vxprobe_anomalies_total",
        Counter,
        &["kind"],
        "Anomalies by kind (drop, csum_error, oversize, fragment, retransmit, frag_needed), as record's lines count them"
    ),
    family!(
        "vxprobe_drops_total",
        Counter,
        &["reason"],
        "Packets the kernel dropped anywhere on the node that are not a more specific kind, by drop reason"
    ),
    family!(
        "vxprobe_checksum_errors_total",
        Counter,
        &["reason"],
        "Checksum failures anywhere on the node (UDP_CSUM, TCP_CSUM, HW_CSUM_FAULT...)"
    ),
    family!(
        "vxprobe_oversize_total",
        Counter,
        &["source"],
        "Packets refused for their size: source=send (EMSGSIZE), drop (the kernel dropped it), hop (longer than an observed device's MTU)"
    ),
    family!(
        "vxprobe_tcp_retransmits_total",
        Counter,
        &[],
        "TCP segments retransmitted anywhere on the node"
    ),
    family!(
        "vxprobe_events_lost_total",
        Counter,
        &["kind"],
        "Events the kernel could not hand over (ring buffer full), by kind"
    ),
    family!(
        "vxprobe_flow_entries_evicted_total",
        Counter,
        &[],
        "Flow entries the kernel's full flow table evicted (--max-flows); hop counters stay exact"
    ),
    family!(
        "vxprobe_flow_table_capacity",
        Gauge,
        &[],
        "Entries the kernel's flow table holds (--max-flows)"
    ),
    family!(
        "vxprobe_interval_flows",
        Gauge,
        &[],
        "Flow entries (flow, hop, direction) that moved in the last interval"
    ),
    family!(
        "vxprobe_observed_devices",
        Gauge,
        &[],
        "Devices observed now"
    ),
    family!(
        "vxprobe_device_changes_total",
        Counter,
        &["event"],
        "Devices that started (added) or stopped (removed) being observed"
    ),
    family!(
        "vxprobe_intervals_total",
        Counter,
        &[],
        "Intervals closed (--stats-interval)"
    ),
    family!(
        "vxprobe_interval_seconds",
        Gauge,
        &[],
        "Length of the last interval closed"
    ),
    family!(
        "vxprobe_last_interval_timestamp_seconds",
        Gauge,
        &[],
        "When the last interval closed (Unix time)"
    ),
    family!(
        "vxprobe_flow_drops_total",
        Counter,
        FLOW,
        "With --flow-metrics K: packets of the K flows with the most recent loss that died anywhere on the node"
    ),
    family!(
        "vxprobe_flow_packets_total",
        Counter,
        &[
            "proto",
            "src",
            "dst",
            "sport",
            "dport",
            "iface",
            "direction"
        ],
        "With --flow-metrics K: packets of those flows at each hop, since their first loss"
    ),
    family!(
        "vxprobe_build_info",
        Info,
        &["version"],
        "The vxprobe build"
    ),
    family!(
        "vxprobe_node_info",
        Info,
        &["node", "kernel", "tc_attach"],
        "The node the agent observes (--node), its kernel and how TC programs attach"
    ),
    family!(
        "vxprobe_hook_info",
        Info,
        &["signal", "hook"],
        "The kernel hook each signal uses (hook=none: not observed here)"
    ),
];

/// The registered name of a family: prometheus-client adds `_total` and `_info` itself.
pub(super) fn registered_name(doc: &FamilyDoc) -> &'static str {
    match doc.kind {
        Kind::Counter => doc.name.strip_suffix("_total").unwrap_or(doc.name),
        Kind::Info => doc.name.strip_suffix("_info").unwrap_or(doc.name),
        Kind::Gauge => doc.name,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HopLabels {
    pub(super) iface: String,
    pub(super) direction: &'static str,
    pub(super) role: &'static str,
    /// `--pod-labels`: the pod at the device's other end.
    #[prometheus(flatten)]
    pub(super) pod: PodLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DropLabels {
    pub(super) iface: String,
    pub(super) direction: &'static str,
    pub(super) role: &'static str,
    pub(super) reason: String,
    #[prometheus(flatten)]
    pub(super) pod: PodLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DeviceLabels {
    pub(super) iface: String,
    pub(super) role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabel {
    pub(super) reason: String,
    /// `--pod-labels`: the pod whose namespace it happened in.
    #[prometheus(flatten)]
    pub(super) pod: PodLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabel {
    pub(super) kind: &'static str,
    #[prometheus(flatten)]
    pub(super) pod: PodLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SourceLabel {
    pub(super) source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct EventLabel {
    pub(super) event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FlowLabels {
    pub(super) proto: String,
    pub(super) src: String,
    pub(super) dst: String,
    pub(super) sport: u16,
    pub(super) dport: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FlowHopLabels {
    #[prometheus(flatten)]
    pub(super) flow: FlowLabels,
    pub(super) iface: String,
    pub(super) direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HookLabels {
    pub(super) signal: String,
    pub(super) hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BuildLabels {
    pub(super) version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct NodeLabels {
    pub(super) node: String,
    pub(super) kernel: String,
    pub(super) tc_attach: String,
}

pub(super) type InfoSeries = Info<Vec<(String, String)>>;
pub(super) type InfoFamily<S> = Family<S, InfoSeries, fn() -> InfoSeries>;

fn info_series() -> InfoSeries {
    Info::new(Vec::new())
}

/// The metric families, as handles the sink updates.
pub(super) struct Families {
    pub(super) hop_packets: Family<HopLabels, Counter>,
    pub(super) hop_bytes: Family<HopLabels, Counter>,
    pub(super) hop_segments: Family<HopLabels, Counter>,
    pub(super) hop_dropped: Family<HopLabels, Counter>,
    pub(super) hop_drops: Family<DropLabels, Counter>,
    pub(super) fragments: Family<HopLabels, Counter>,
    pub(super) hop_oversize: Family<HopLabels, Counter>,
    pub(super) hop_max_packet: Family<HopLabels, Gauge>,
    pub(super) hop_mtu: Family<DeviceLabels, Gauge>,
    pub(super) anomalies: Family<KindLabel, Counter>,
    pub(super) drops: Family<ReasonLabel, Counter>,
    pub(super) checksum_errors: Family<ReasonLabel, Counter>,
    pub(super) oversize: Family<SourceLabel, Counter>,
    pub(super) retransmits: Counter,
    pub(super) events_lost: Family<KindLabel, Counter>,
    pub(super) evicted: Counter,
    pub(super) flow_table_capacity: Gauge,
    pub(super) interval_flows: Gauge,
    pub(super) observed_devices: Gauge,
    pub(super) device_changes: Family<EventLabel, Counter>,
    pub(super) intervals: Counter,
    pub(super) interval_seconds: Gauge<f64, AtomicU64>,
    pub(super) last_interval: Gauge<f64, AtomicU64>,
    pub(super) flow_drops: Family<FlowLabels, Counter>,
    pub(super) flow_packets: Family<FlowHopLabels, Counter>,
    pub(super) build: InfoFamily<BuildLabels>,
    pub(super) node: InfoFamily<NodeLabels>,
    pub(super) hooks: InfoFamily<HookLabels>,
}

impl Families {
    pub(super) fn new() -> Self {
        Self {
            hop_packets: Family::default(),
            hop_bytes: Family::default(),
            hop_segments: Family::default(),
            hop_dropped: Family::default(),
            hop_drops: Family::default(),
            fragments: Family::default(),
            hop_oversize: Family::default(),
            hop_max_packet: Family::default(),
            hop_mtu: Family::default(),
            anomalies: Family::default(),
            drops: Family::default(),
            checksum_errors: Family::default(),
            oversize: Family::default(),
            retransmits: Counter::default(),
            events_lost: Family::default(),
            evicted: Counter::default(),
            flow_table_capacity: Gauge::default(),
            interval_flows: Gauge::default(),
            observed_devices: Gauge::default(),
            device_changes: Family::default(),
            intervals: Counter::default(),
            interval_seconds: Gauge::default(),
            last_interval: Gauge::default(),
            flow_drops: Family::default(),
            flow_packets: Family::default(),
            build: Family::new_with_constructor(info_series),
            node: Family::new_with_constructor(info_series),
            hooks: Family::new_with_constructor(info_series),
        }
    }

    /// Registers every family under its [`FAMILIES`] entry, in that order.
    pub(super) fn register(&self, registry: &mut Registry) {
        for doc in FAMILIES {
            let (name, help) = (registered_name(doc), doc.help);
            match doc.name {
                "vxprobe_hop_packets_total" => {
                    registry.register(name, help, self.hop_packets.clone())
                }
                "vxprobe_hop_bytes_total" => registry.register(name, help, self.hop_bytes.clone()),
                "vxprobe_hop_segments_total" => {
                    registry.register(name, help, self.hop_segments.clone())
                }
                "vxprobe_hop_dropped_packets_total" => {
                    registry.register(name, help, self.hop_dropped.clone())
                }
                "vxprobe_hop_drops_total" => registry.register(name, help, self.hop_drops.clone()),
                "vxprobe_fragments_total" => registry.register(name, help, self.fragments.clone()),
                "vxprobe_hop_oversize_packets_total" => {
                    registry.register(name, help, self.hop_oversize.clone())
                }
                "vxprobe_hop_max_packet_bytes" => {
                    registry.register(name, help, self.hop_max_packet.clone())
                }
                "vxprobe_hop_mtu_bytes" => registry.register(name, help, self.hop_mtu.clone()),
                "vxprobe_anomalies_total" => registry.register(name, help, self.anomalies.clone()),
                "vxprobe_drops_total" => registry.register(name, help, self.drops.clone()),
                "vxprobe_checksum_errors_total" => {
                    registry.register(name, help, self.checksum_errors.clone())
                }
                "vxprobe_oversize_total" => registry.register(name, help, self.oversize.clone()),
                "vxprobe_tcp_retransmits_total" => {
                    registry.register(name, help, self.retransmits.clone())
                }
                "vxprobe_events_lost_total" => {
                    registry.register(name, help, self.events_lost.clone())
                }
                "vxprobe_flow_entries_evicted_total" => {
                    registry.register(name, help, self.evicted.clone())
                }
                "vxprobe_flow_table_capacity" => {
                    registry.register(name, help, self.flow_table_capacity.clone())
                }
                "vxprobe_interval_flows" => {
                    registry.register(name, help, self.interval_flows.clone())
                }
                "vxprobe_observed_devices" => {
                    registry.register(name, help, self.observed_devices.clone())
                }
                "vxprobe_device_changes_total" => {
                    registry.register(name, help, self.device_changes.clone())
                }
                "vxprobe_intervals_total" => registry.register(name, help, self.intervals.clone()),
                "vxprobe_interval_seconds" => {
                    registry.register(name, help, self.interval_seconds.clone())
                }
                "vxprobe_last_interval_timestamp_seconds" => {
                    registry.register(name, help, self.last_interval.clone())
                }
                "vxprobe_flow_drops_total" => {
                    registry.register(name, help, self.flow_drops.clone())
                }
                "vxprobe_flow_packets_total" => {
                    registry.register(name, help, self.flow_packets.clone())
                }
                "vxprobe_build_info" => registry.register(name, help, self.build.clone()),
                "vxprobe_node_info" => registry.register(name, help, self.node.clone()),
                "vxprobe_hook_info" => registry.register(name, help, self.hooks.clone()),
                other => unreachable!("{other} is listed in FAMILIES but not registered"),
            }
        }
    }
}

/// A hop's labels as every hop family has them.
pub(super) fn hop_labels(
    ifname: &str,
    dir: Direction,
    role: crate::node::devices::Role,
    pod: PodLabel,
) -> HopLabels {
    HopLabels {
        iface: ifname.to_owned(),
        direction: dir.as_str(),
        role: role.as_str(),
        pod,
    }
}
