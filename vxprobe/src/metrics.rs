//! The agent's metrics sink: what the pipeline hands over, as Prometheus counters and gauges.
//!
//! A thin formatter. Hop counters are the interval reports' deltas added up; a hop's drops by
//! reason are the report's own breakdown ([`HopReport::drop_reasons`], which adds up to the
//! `hop` line's `drops`); anomaly counters add up the `count` of each anomaly line `record`
//! would write; flow losses are the report's [`IntervalReport::flow_drops`]. Nothing is
//! charged or classified here. [`FAMILIES`] is the one list of what is exported.
//!
//! Label sets stay bounded: hops are the observed devices (a device that vanishes loses its
//! series once its last interval is counted), reasons are the kernel's drop reasons, and
//! per-flow series exist only with `--flow-metrics K`, for at most K flows.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};
use vxprobe_common::Direction;

use crate::{
    anomaly::{Anomaly, AnomalyKind},
    output::event_kind_name,
    packet::Flow,
    pipeline::Sink,
    session::{FlowReport, HopChange, IntervalEnd, IntervalReport, Meta},
};

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
fn registered_name(doc: &FamilyDoc) -> &'static str {
    match doc.kind {
        Kind::Counter => doc.name.strip_suffix("_total").unwrap_or(doc.name),
        Kind::Info => doc.name.strip_suffix("_info").unwrap_or(doc.name),
        Kind::Gauge => doc.name,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HopLabels {
    iface: String,
    direction: &'static str,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    iface: String,
    direction: &'static str,
    role: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    iface: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    proto: String,
    src: String,
    dst: String,
    sport: u16,
    dport: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowHopLabels {
    #[prometheus(flatten)]
    flow: FlowLabels,
    iface: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    signal: String,
    hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
    kernel: String,
    tc_attach: String,
}

type InfoSeries = Info<Vec<(String, String)>>;
type InfoFamily<S> = Family<S, InfoSeries, fn() -> InfoSeries>;

fn info_series() -> InfoSeries {
    Info::new(Vec::new())
}

/// The exposition the HTTP server encodes on each scrape; shared, read-only.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

impl Exposition {
    /// The registry in OpenMetrics text (`# EOF` last) or the Prometheus text format 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        // Writing into a String cannot fail; an encoder error would be a bug in a label set.
        if let Err(e) = encoded {
            out.push_str(&format!("# encoding failed: {e}\n"));
        }
        out
    }
}

/// The metric families, as handles the sink updates.
struct Families {
    hop_packets: Family<HopLabels, Counter>,
    hop_bytes: Family<HopLabels, Counter>,
    hop_segments: Family<HopLabels, Counter>,
    hop_drops: Family<DropLabels, Counter>,
    fragments: Family<HopLabels, Counter>,
    hop_oversize: Family<HopLabels, Counter>,
    hop_max_packet: Family<HopLabels, Gauge>,
    hop_mtu: Family<DeviceLabels, Gauge>,
    anomalies: Family<KindLabel, Counter>,
    drops: Family<ReasonLabel, Counter>,
    checksum_errors: Family<ReasonLabel, Counter>,
    oversize: Family<SourceLabel, Counter>,
    retransmits: Counter,
    events_lost: Family<KindLabel, Counter>,
    evicted: Counter,
    flow_table_capacity: Gauge,
    interval_flows: Gauge,
    observed_devices: Gauge,
    device_changes: Family<EventLabel, Counter>,
    intervals: Counter,
    interval_seconds: Gauge<f64, AtomicU64>,
    last_interval: Gauge<f64, AtomicU64>,
    flow_drops: Family<FlowLabels, Counter>,
    flow_packets: Family<FlowHopLabels, Counter>,
    build: InfoFamily<BuildLabels>,
    node: InfoFamily<NodeLabels>,
    hooks: InfoFamily<HookLabels>,
}

impl Families {
    fn new() -> Self {
        Self {
            hop_packets: Family::default(),
            hop_bytes: Family::default(),
            hop_segments: Family::default(),
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
    fn register(&self, registry: &mut Registry) {
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
fn hop_labels(ifname: &str, dir: Direction, role: crate::devices::Role) -> HopLabels {
    HopLabels {
        iface: ifname.to_owned(),
        direction: dir.as_str(),
        role: role.as_str(),
    }
}

/// Recent loss decays with this half-life when flows are ranked for `--flow-metrics`: a flow
/// that stopped losing packets gives its place to one that loses now.
const FLOW_RANK_HALF_LIFE: Duration = Duration::from_secs(300);

/// A flow with losses, kept for `--flow-metrics`.
#[derive(Debug, Default)]
struct TrackedFlow {
    drops: u64,
    /// Packets at each hop (iface, direction) since the flow's first loss.
    packets: BTreeMap<(String, Direction), u64>,
    /// Drops, decayed by [`FLOW_RANK_HALF_LIFE`]: the rank.
    recent: f64,
}

/// The flows with losses, bounded; the top K by recent loss are exported.
#[derive(Debug)]
struct FlowLosses {
    k: usize,
    flows: HashMap<Flow, TrackedFlow>,
}

impl FlowLosses {
    /// Flows kept beyond the K exported: room for a flow to climb into the top K.
    fn capacity(&self) -> usize {
        (self.k * 4).max(1024)
    }

    fn interval(&mut self, report: &IntervalReport) {
        let decay = 0.5f64.powf(report.interval.as_secs_f64() / FLOW_RANK_HALF_LIFE.as_secs_f64());
        for f in self.flows.values_mut() {
            f.recent *= decay;
        }
        for (flow, n) in &report.flow_drops {
            let f = self.flows.entry(flow.clone()).or_default();
            f.drops += n;
            f.recent += *n as f64;
        }
        if self.flows.len() > self.capacity() * 2 {
            let mut ranked: Vec<(Flow, f64)> = self
                .flows
                .iter()
                .map(|(k, f)| (k.clone(), f.recent))
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (flow, _) in ranked.drain(self.capacity()..) {
                self.flows.remove(&flow);
            }
        }
    }

    fn flows(&mut self, batch: &[FlowReport]) {
        for r in batch {
            if let Some(f) = self.flows.get_mut(&r.flow) {
                *f.packets.entry((r.hop.ifname.clone(), r.dir)).or_default() += r.counters.packets;
            }
        }
    }

    /// The top K, most recent loss first.
    fn top(&self) -> Vec<(&Flow, &TrackedFlow)> {
        let mut ranked: Vec<_> = self.flows.iter().collect();
        ranked.sort_by(|a, b| {
            b.1.recent
                .total_cmp(&a.1.recent)
                .then(b.1.drops.cmp(&a.1.drops))
        });
        ranked.truncate(self.k);
        ranked
    }
}

/// The pipeline sink behind `/metrics`.
pub struct MetricsSink {
    families: Families,
    node: String,
    /// Observed hops by ifindex: (name, role).
    hops: BTreeMap<u32, (String, crate::devices::Role)>,
    /// Hops that vanished: their series go once their last interval is counted.
    retiring: Vec<(String, crate::devices::Role)>,
    /// Drop reasons seen per hop name, to remove a vanished hop's drop series.
    reasons_seen: HashMap<String, Vec<DropLabels>>,
    flow_losses: Option<FlowLosses>,
    flows_this_interval: u64,
    /// Unix time in milliseconds of the last interval closed, for `/healthz`.
    last_close: Arc<AtomicU64>,
}

impl MetricsSink {
    /// A sink and the exposition it feeds. `flow_metrics`: export the top K flows by loss.
    /// `last_close`: where the sink notes each interval's close (Unix milliseconds).
    pub fn new(
        node: &str,
        flow_metrics: Option<u32>,
        last_close: Arc<AtomicU64>,
    ) -> (Self, Arc<Exposition>) {
        let families = Families::new();
        let mut registry = Registry::default();
        families.register(&mut registry);
        let sink = Self {
            families,
            node: node.to_owned(),
            hops: BTreeMap::new(),
            retiring: Vec::new(),
            reasons_seen: HashMap::new(),
            flow_losses: flow_metrics.map(|k| FlowLosses {
                k: k as usize,
                flows: HashMap::new(),
            }),
            flows_this_interval: 0,
            last_close,
        };
        (sink, Arc::new(Exposition { registry }))
    }

    fn set_devices(&self) {
        self.families
            .observed_devices
            .set(i64::try_from(self.hops.len()).unwrap_or(i64::MAX));
    }

    /// Removes every series of a hop that vanished (unless a device of that name is observed
    /// again).
    fn retire(&mut self, name: &str, role: crate::devices::Role) {
        if self.hops.values().any(|(n, _)| n == name) {
            return;
        }
        let f = &self.families;
        for dir in [Direction::Ingress, Direction::Egress] {
            let labels = hop_labels(name, dir, role);
            f.hop_packets.remove(&labels);
            f.hop_bytes.remove(&labels);
            f.hop_segments.remove(&labels);
            f.fragments.remove(&labels);
            f.hop_oversize.remove(&labels);
            f.hop_max_packet.remove(&labels);
        }
        f.hop_mtu.remove(&DeviceLabels {
            iface: name.to_owned(),
            role: role.as_str(),
        });
        for labels in self.reasons_seen.remove(name).unwrap_or_default() {
            f.hop_drops.remove(&labels);
        }
    }

    fn export_flows(&self) {
        let Some(losses) = &self.flow_losses else {
            return;
        };
        let f = &self.families;
        f.flow_drops.clear();
        f.flow_packets.clear();
        for (flow, tracked) in losses.top() {
            let labels = FlowLabels {
                proto: flow.proto_name(),
                src: flow.src.to_string(),
                dst: flow.dst.to_string(),
                sport: flow.sport,
                dport: flow.dport,
            };
            for ((iface, dir), packets) in &tracked.packets {
                f.flow_packets
                    .get_or_create(&FlowHopLabels {
                        flow: labels.clone(),
                        iface: iface.clone(),
                        direction: dir.as_str(),
                    })
                    .inc_by(*packets);
            }
            f.flow_drops.get_or_create(&labels).inc_by(tracked.drops);
        }
    }
}

/// Where an oversize anomaly comes from: a refused send, a drop, or a hop's MTU check.
fn oversize_source(anomaly: &Anomaly) -> &'static str {
    if anomaly.errno.is_some() {
        "send"
    } else if anomaly.dropped {
        "drop"
    } else {
        "hop"
    }
}

impl Sink for MetricsSink {
    fn meta(&mut self, meta: &Meta) -> anyhow::Result<()> {
        let f = &self.families;
        let _ = f.build.get_or_create(&BuildLabels {
            version: meta.vxprobe_version.to_owned(),
        });
        let _ = f.node.get_or_create(&NodeLabels {
            node: self.node.clone(),
            kernel: meta.kernel.clone(),
            tc_attach: meta.tc_attach.to_owned(),
        });
        for hook in &meta.hooks {
            let _ = f.hooks.get_or_create(&HookLabels {
                signal: hook.signal.to_owned(),
                hook: hook.hook.clone().unwrap_or_else(|| "none".to_owned()),
            });
        }
        f.flow_table_capacity.set(i64::from(meta.max_flows));
        for hop in &meta.hops {
            self.hops
                .insert(hop.ifindex, (hop.ifname.clone(), hop.role));
            f.hop_mtu
                .get_or_create(&DeviceLabels {
                    iface: hop.ifname.clone(),
                    role: hop.role.as_str(),
                })
                .set(i64::from(hop.mtu));
        }
        self.set_devices();
        Ok(())
    }

    fn anomaly(&mut self, anomaly: &Anomaly) -> anyhow::Result<()> {
        let f = &self.families;
        let n = u64::from(anomaly.count.unwrap_or(1));
        f.anomalies
            .get_or_create(&KindLabel {
                kind: anomaly.kind.as_str(),
            })
            .inc_by(n);
        let reason = || ReasonLabel {
            reason: anomaly.reason.clone().unwrap_or_default(),
        };
        match anomaly.kind {
            AnomalyKind::Drop => {
                f.drops.get_or_create(&reason()).inc_by(n);
            }
            AnomalyKind::CsumError => {
                f.checksum_errors.get_or_create(&reason()).inc_by(n);
            }
            AnomalyKind::Oversize => {
                f.oversize
                    .get_or_create(&SourceLabel {
                        source: oversize_source(anomaly),
                    })
                    .inc_by(n);
            }
            AnomalyKind::Retransmit => {
                f.retransmits.inc_by(n);
            }
            AnomalyKind::Fragment | AnomalyKind::FragNeeded => {}
        }
        Ok(())
    }

    fn interval(&mut self, report: &IntervalReport) -> anyhow::Result<()> {
        let f = &self.families;
        for h in &report.hops {
            let labels = hop_labels(&h.hop.ifname, h.dir, h.hop.role);
            let c = &h.counters;
            f.hop_packets.get_or_create(&labels).inc_by(c.packets);
            f.hop_bytes.get_or_create(&labels).inc_by(c.bytes);
            f.hop_segments.get_or_create(&labels).inc_by(c.segs);
            f.fragments.get_or_create(&labels).inc_by(c.fragments);
            f.hop_oversize.get_or_create(&labels).inc_by(c.oversize);
            f.hop_max_packet
                .get_or_create(&labels)
                .set(i64::from(c.max_len));
            for (reason, n) in &h.drop_reasons {
                let labels = DropLabels {
                    iface: labels.iface.clone(),
                    direction: labels.direction,
                    role: labels.role,
                    reason: reason.clone(),
                };
                if f.hop_drops.get(&labels).is_none() {
                    self.reasons_seen
                        .entry(labels.iface.clone())
                        .or_default()
                        .push(labels.clone());
                }
                f.hop_drops.get_or_create(&labels).inc_by(*n);
            }
        }
        for (kind, n) in &report.lost {
            f.events_lost
                .get_or_create(&KindLabel {
                    kind: event_kind_name(*kind),
                })
                .inc_by(*n);
        }
        f.intervals.inc();
        f.interval_seconds.set(report.interval.as_secs_f64());
        let closed = report
            .ts
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        f.last_interval.set(closed.as_secs_f64());
        self.last_close.store(
            u64::try_from(closed.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Some(losses) = &mut self.flow_losses {
            losses.interval(report);
        }
        self.flows_this_interval = 0;
        Ok(())
    }

    fn flows(&mut self, flows: &[FlowReport]) -> anyhow::Result<()> {
        self.flows_this_interval += flows.len() as u64;
        if let Some(losses) = &mut self.flow_losses {
            losses.flows(flows);
        }
        Ok(())
    }

    fn interval_end(&mut self, end: &IntervalEnd) -> anyhow::Result<()> {
        let f = &self.families;
        f.evicted.inc_by(end.evicted);
        f.interval_flows
            .set(i64::try_from(self.flows_this_interval).unwrap_or(i64::MAX));
        // The vanished hops had their last interval: their series go.
        for (name, role) in std::mem::take(&mut self.retiring) {
            self.retire(&name, role);
        }
        self.export_flows();
        Ok(())
    }

    fn device(&mut self, change: &HopChange) -> anyhow::Result<()> {
        let hop = &change.hop;
        let event = if change.added { "added" } else { "removed" };
        self.families
            .device_changes
            .get_or_create(&EventLabel { event })
            .inc();
        if change.added {
            self.hops
                .insert(hop.ifindex, (hop.ifname.clone(), hop.role));
            self.retiring.retain(|(name, _)| *name != hop.ifname);
            self.families
                .hop_mtu
                .get_or_create(&DeviceLabels {
                    iface: hop.ifname.clone(),
                    role: hop.role.as_str(),
                })
                .set(i64::from(hop.mtu));
        } else {
            self.hops.remove(&hop.ifindex);
            self.retiring.push((hop.ifname.clone(), hop.role));
        }
        self.set_devices();
        Ok(())
    }
}

/// Whether an `Accept` header prefers OpenMetrics to the Prometheus text format (Prometheus
/// asks for OpenMetrics first; curl and browsers get the plain text format).
pub fn prefers_openmetrics(accept: &str) -> bool {
    let mut openmetrics = None::<f32>;
    let mut text = None::<f32>;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let best = |slot: &mut Option<f32>| *slot = Some(slot.map_or(q, |s| s.max(q)));
        match media.as_str() {
            "application/openmetrics-text" => best(&mut openmetrics),
            "text/plain" => best(&mut text),
            _ => {}
        }
    }
    match (openmetrics, text) {
        (Some(om), Some(t)) => om > 0.0 && om >= t,
        (Some(om), None) => om > 0.0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use vxprobe_common::{EventKind, HopCounters};

    use super::*;
    use crate::{
        anomaly::tests_support::empty,
        devices::Role,
        session::{HopReport, MetaHop},
    };

    fn meta_hop(ifindex: u32, name: &str, role: Role) -> MetaHop {
        MetaHop {
            ifname: name.into(),
            ifindex,
            role,
            mtu: 1450,
        }
    }

    fn meta(hops: Vec<MetaHop>) -> Meta {
        Meta {
            vxprobe_version: "0.1.0",
            kernel: "6.18.0".into(),
            netns: 1,
            tc_attach: "tcx",
            max_flows: 4096,
            flow_cache_slots: 1024,
            hooks: vec![crate::probes::HookChoice {
                signal: "drop",
                hook: Some("tp_btf:kfree_skb".into()),
                unavailable: Vec::new(),
            }],
            hops,
        }
    }

    fn flow(sport: u16) -> Flow {
        Flow {
            proto: 17,
            src: IpAddr::V4(Ipv4Addr::new(198, 19, 1, 2)),
            dst: IpAddr::V4(Ipv4Addr::new(198, 19, 2, 2)),
            sport,
            dport: 7000,
        }
    }

    fn report(hops: &[MetaHop], packets: u64, reasons: &[(&str, u64)]) -> IntervalReport {
        IntervalReport {
            ts: SystemTime::now(),
            interval: Duration::from_secs(1),
            hops: hops
                .iter()
                .flat_map(|h| [Direction::Ingress, Direction::Egress].map(|d| (h, d)))
                .map(|(h, dir)| HopReport {
                    hop: h.clone(),
                    dir,
                    counters: HopCounters {
                        packets,
                        bytes: packets * 100,
                        segs: packets,
                        max_len: 1400,
                        ..Default::default()
                    },
                    drops: reasons.iter().map(|(_, n)| n).sum(),
                    drop_reasons: reasons.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
                })
                .collect(),
            lost: vec![(EventKind::Drop, 3)],
            flow_drops: vec![(flow(1), 5), (flow(2), 1)],
        }
    }

    fn sink(flow_metrics: Option<u32>) -> (MetricsSink, Arc<Exposition>) {
        MetricsSink::new("node-a", flow_metrics, Arc::new(AtomicU64::new(0)))
    }

    /// Sample lines (name and labels, value) of an exposition.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    /// Every family in the exposition is in [`FAMILIES`] with its type, and every one of
    /// [`FAMILIES`] shows once it has a series; both formats.
    #[test]
    fn the_exposition_is_the_list() {
        let hops = [meta_hop(4, "vxlan.calico", Role::Overlay)];
        let (mut sink, exposition) = sink(Some(10));
        sink.meta(&meta(hops.to_vec())).unwrap();
        let mut a = empty();
        for kind in [
            AnomalyKind::Drop,
            AnomalyKind::CsumError,
            AnomalyKind::Oversize,
            AnomalyKind::Retransmit,
        ] {
            a.kind = kind;
            sink.anomaly(&a).unwrap();
        }
        sink.device(&HopChange::added(meta_hop(9, "tap0", Role::Tap)))
            .unwrap();
        let r = report(&hops, 10, &[("NETFILTER_DROP", 2)]);
        sink.interval(&r).unwrap();
        sink.flows(&[FlowReport {
            hop: hops[0].clone(),
            dir: Direction::Egress,
            flow: flow(1),
            outer: None,
            counters: Default::default(),
        }])
        .unwrap();
        sink.interval_end(&IntervalEnd { evicted: 0 }).unwrap();
        for openmetrics in [true, false] {
            let text = exposition.encode(openmetrics);
            let mut typed: Vec<(String, String)> = Vec::new();
            for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
                let mut words = line.split_whitespace().skip(2);
                let (name, kind) = (words.next().unwrap(), words.next().unwrap());
                typed.push((name.to_owned(), kind.to_owned()));
            }
            for doc in FAMILIES {
                let (name, kind) = match (openmetrics, doc.kind) {
                    (true, Kind::Counter) => (registered_name(doc), "counter"),
                    (true, Kind::Info) => (registered_name(doc), "info"),
                    (false, Kind::Counter) => (doc.name, "counter"),
                    (false, Kind::Info) => (doc.name, "gauge"),
                    (_, Kind::Gauge) => (doc.name, "gauge"),
                };
                assert!(
                    typed.contains(&(name.to_owned(), kind.to_owned())),
                    "{} missing as {kind} from:\n{text}",
                    doc.name
                );
                assert!(
                    text.lines().any(|l| l.starts_with(doc.name)),
                    "{} has no sample:\n{text}",
                    doc.name
                );
            }
            assert_eq!(typed.len(), FAMILIES.len(), "{text}");
            assert_eq!(text.ends_with("# EOF\n"), openmetrics);
        }
    }

    /// Counters add up the intervals; drops by reason are the report's own figures.
    #[test]
    fn hop_counters_add_up_the_reports() {
        let hops = [meta_hop(5, "cali0", Role::Pod)];
        let (mut sink, exposition) = sink(None);
        sink.meta(&meta(hops.to_vec())).unwrap();
        for _ in 0..3 {
            sink.interval(&report(&hops, 7, &[("NETFILTER_DROP", 2), ("UDP_CSUM", 1)]))
                .unwrap();
            sink.interval_end(&IntervalEnd { evicted: 4 }).unwrap();
        }
        let s = samples(&exposition.encode(false));
        let at = r#"iface="cali0",direction="ingress",role="pod""#;
        assert_eq!(s[&format!("vxprobe_hop_packets_total{{{at}}}")], 21.0);
        assert_eq!(s[&format!("vxprobe_hop_bytes_total{{{at}}}")], 2100.0);
        assert_eq!(
            s[&format!("vxprobe_hop_drops_total{{{at},reason=\"NETFILTER_DROP\"}}")],
            6.0
        );
        assert_eq!(
            s[&format!("vxprobe_hop_drops_total{{{at},reason=\"UDP_CSUM\"}}")],
            3.0
        );
        assert_eq!(s[r#"vxprobe_events_lost_total{kind="drop"}"#], 9.0);
        assert_eq!(s["vxprobe_flow_entries_evicted_total"], 12.0);
        assert_eq!(s["vxprobe_intervals_total"], 3.0);
        assert_eq!(
            s[r#"vxprobe_hop_mtu_bytes{iface="cali0",role="pod"}"#],
            1450.0
        );
        assert_eq!(
            s[r#"vxprobe_node_info{node="node-a",kernel="6.18.0",tc_attach="tcx"}"#],
            1.0
        );
        assert!(
            !s.keys().any(|k| k.starts_with("vxprobe_flow_drops")),
            "off by default"
        );
    }

    /// A vanished device keeps its series until its last interval is counted, then loses
    /// every one of them.
    #[test]
    fn vanished_devices_drop_their_series() {
        let hops = vec![
            meta_hop(5, "cali0", Role::Pod),
            meta_hop(6, "cali1", Role::Pod),
        ];
        let (mut sink, exposition) = sink(None);
        sink.meta(&meta(hops.clone())).unwrap();
        sink.interval(&report(&hops, 1, &[("NETFILTER_DROP", 1)]))
            .unwrap();
        sink.interval_end(&IntervalEnd::default()).unwrap();
        sink.device(&HopChange::removed(hops[1].clone())).unwrap();
        // The closing interval still reports the gone hop.
        sink.interval(&report(&hops, 1, &[("NETFILTER_DROP", 1)]))
            .unwrap();
        let text = exposition.encode(false);
        assert!(text.contains(r#"iface="cali1""#), "{text}");
        sink.interval_end(&IntervalEnd::default()).unwrap();
        let text = exposition.encode(false);
        assert!(!text.contains("cali1"), "{text}");
        assert!(text.contains(r#"iface="cali0""#), "{text}");
        assert!(text.contains("vxprobe_observed_devices 1\n"), "{text}");
        assert!(
            text.contains(r#"vxprobe_device_changes_total{event="removed"} 1"#),
            "{text}"
        );
    }

    /// Anomaly counters add up `count`; oversize is split by where it comes from.
    #[test]
    fn anomalies_are_counted_by_kind_with_their_count() {
        let (mut sink, exposition) = sink(None);
        let mut retransmit = empty();
        retransmit.kind = AnomalyKind::Retransmit;
        retransmit.count = Some(3);
        let mut csum = empty();
        csum.kind = AnomalyKind::CsumError;
        csum.reason = Some("UDP_CSUM".into());
        let mut send = empty();
        send.kind = AnomalyKind::Oversize;
        send.errno = Some(90);
        send.dropped = true;
        let mut seen = empty();
        seen.kind = AnomalyKind::Oversize;
        for a in [&retransmit, &retransmit, &csum, &send, &seen] {
            sink.anomaly(a).unwrap();
        }
        let s = samples(&exposition.encode(false));
        assert_eq!(s["vxprobe_tcp_retransmits_total"], 6.0);
        assert_eq!(s[r#"vxprobe_anomalies_total{kind="retransmit"}"#], 6.0);
        assert_eq!(
            s[r#"vxprobe_checksum_errors_total{reason="UDP_CSUM"}"#],
            1.0
        );
        assert_eq!(s[r#"vxprobe_oversize_total{source="send"}"#], 1.0);
        assert_eq!(s[r#"vxprobe_oversize_total{source="hop"}"#], 1.0);
    }

    /// `--flow-metrics K`: exactly the K flows with the most loss, with their totals.
    #[test]
    fn flow_series_are_the_top_k_by_loss() {
        let hops = [meta_hop(5, "cali0", Role::Pod)];
        let (mut sink, exposition) = sink(Some(1));
        sink.meta(&meta(hops.to_vec())).unwrap();
        for _ in 0..2 {
            sink.interval(&report(&hops, 1, &[])).unwrap();
            sink.flows(&[1, 2, 3].map(|port| FlowReport {
                hop: hops[0].clone(),
                dir: Direction::Ingress,
                flow: flow(port),
                outer: None,
                counters: vxprobe_common::FlowCounters {
                    packets: 10,
                    ..Default::default()
                },
            }))
            .unwrap();
            sink.interval_end(&IntervalEnd::default()).unwrap();
        }
        let s = samples(&exposition.encode(false));
        let flow1 = r#"proto="udp",src="198.19.1.2",dst="198.19.2.2",sport="1",dport="7000""#;
        assert_eq!(s[&format!("vxprobe_flow_drops_total{{{flow1}}}")], 10.0);
        assert_eq!(
            s[&format!(
                "vxprobe_flow_packets_total{{{flow1},iface=\"cali0\",direction=\"ingress\"}}"
            )],
            20.0
        );
        assert_eq!(
            s.keys()
                .filter(|k| k.starts_with("vxprobe_flow_drops_total"))
                .count(),
            1,
            "K = 1"
        );
    }

    #[test]
    fn accept_headers_choose_the_format() {
        // What Prometheus 2.42 sends.
        assert!(prefers_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!prefers_openmetrics("*/*"));
        assert!(!prefers_openmetrics(""));
        assert!(!prefers_openmetrics(
            "text/plain;version=0.0.4,application/openmetrics-text;q=0.5"
        ));
        assert!(!prefers_openmetrics("application/openmetrics-text;q=0"));
    }
}
