//! The agent's metrics sink: what the pipeline hands over, as Prometheus counters and gauges.
//!
//! A thin formatter. Hop counters are the interval reports' deltas added up; a hop's drops by
//! reason are the interval model's breakdown (`HopReport::faults.reasons`, which adds up to
//! the `hop` line's `drops`); anomaly counters add up the `count` of each anomaly line
//! `record` would write; flow losses are the model's `IntervalReport::flow_faults`. Nothing is
//! charged or classified here. [`FAMILIES`] is the one list of what is exported.
//!
//! Label sets stay bounded: hops are the observed devices (a device that vanishes loses its
//! series once its last interval is counted), reasons are the kernel's drop reasons,
//! per-flow series exist only with `--flow-metrics K`, for at most K flows, and `pod` labels
//! only with `--pod-labels`, for at most [`MAX_POD_LABELS`] pods ([`pods`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use prometheus_client::registry::Registry;
use vxprobe_common::Direction;

use crate::{
    node::pods::Pod,
    observe::anomaly::{Anomaly, AnomalyKind},
    observe::packet::Flow,
    observe::pipeline::Sink,
    observe::report::{DeviceEvent, FlowReport, HopChange, IntervalEnd, IntervalReport, Meta},
};

mod families;
mod pods;
#[cfg(test)]
mod tests;

use families::{
    BuildLabels, DeviceLabels, DropLabels, EventLabel, Families, FlowHopLabels, FlowLabels,
    HookLabels, KindLabel, NodeLabels, ReasonLabel, SourceLabel, hop_labels,
};
pub use families::{FAMILIES, FamilyDoc, Kind};
pub use pods::{LivePods, MAX_POD_LABELS, OTHER_POD, POD_LABELED};
use pods::{PodLabel, PodLabels, Series};

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
        for faults in report.flow_faults.iter().filter(|f| f.total.drops > 0) {
            let f = self.flows.entry(faults.flow.clone()).or_default();
            f.drops += faults.total.drops;
            f.recent += faults.total.drops as f64;
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
                *f.packets.entry((r.hop.ifname.clone(), r.dir)).or_default() +=
                    r.counters.counters.packets;
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
    hops: BTreeMap<u32, (String, crate::node::devices::Role)>,
    /// Hops that vanished: their series go once their last interval is counted.
    retiring: Vec<(String, crate::node::devices::Role)>,
    /// Drop reasons seen per hop name, to remove a vanished hop's drop series.
    reasons_seen: HashMap<String, Vec<DropLabels>>,
    flow_losses: Option<FlowLosses>,
    flows_this_interval: u64,
    /// Unix time in milliseconds of the last interval closed, for `/healthz`.
    last_close: Arc<AtomicU64>,
    /// `--pod-labels`: the pods labeled and their series.
    pods: Option<PodLabels>,
    /// The pod label each hop's series carry now, by device name.
    hop_pods: HashMap<String, PodLabel>,
}

/// The label of a hop's or an event's pod: none without `--pod-labels`.
fn pod_label(pods: &mut Option<PodLabels>, pod: Option<&Arc<Pod>>) -> PodLabel {
    match pods {
        Some(pods) => pods.label(pod.map(|p| &p.id)),
        None => PodLabel(None),
    }
}

/// Remembers a series created under a pod's label, to drop with the pod.
fn created(pods: &mut Option<PodLabels>, label: &PodLabel, series: impl FnOnce() -> Series) {
    if let Some(pods) = pods
        && label.0.is_some()
    {
        pods.created(label, series());
    }
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
            pods: None,
            hop_pods: HashMap::new(),
        };
        (sink, Arc::new(Exposition { registry }))
    }

    /// `--pod-labels`: label the series of at most `max` pods at a time; `live` says which
    /// pods the node has (`namespace/name`), and the series of the others are dropped.
    pub fn label_pods(&mut self, max: usize, live: LivePods) {
        self.pods = Some(PodLabels::new(max, live));
    }

    /// Pods labeled now.
    pub fn labeled_pods(&self) -> usize {
        self.pods.as_ref().map_or(0, PodLabels::labeled)
    }

    fn set_devices(&self) {
        self.families
            .observed_devices
            .set(i64::try_from(self.hops.len()).unwrap_or(i64::MAX));
    }

    /// Removes every series of a hop that vanished (unless a device of that name is observed
    /// again).
    fn retire(&mut self, name: &str, role: crate::node::devices::Role) {
        if self.hops.values().any(|(n, _)| n == name) {
            return;
        }
        let pod = self.hop_pods.remove(name).unwrap_or_default();
        let f = &self.families;
        for dir in [Direction::Ingress, Direction::Egress] {
            let labels = hop_labels(name, dir, role, pod.clone());
            f.hop_packets.remove(&labels);
            f.hop_dropped.remove(&labels);
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

    /// A hop's series are now labeled `pod` (named, or renamed, by the pod index): its
    /// series under the old label go.
    fn relabel_hop(&mut self, name: &str, role: crate::node::devices::Role, pod: &PodLabel) {
        let old = match self.hop_pods.get(name) {
            Some(old) if old == pod => return,
            Some(old) => old.clone(),
            None => {
                self.hop_pods.insert(name.to_owned(), pod.clone());
                return;
            }
        };
        self.hop_pods.insert(name.to_owned(), pod.clone());
        for dir in [Direction::Ingress, Direction::Egress] {
            Series::Hop(hop_labels(name, dir, role, old.clone())).remove(&self.families);
        }
        if let Some(seen) = self.reasons_seen.get_mut(name) {
            seen.retain(|labels| {
                if labels.pod == old {
                    self.families.hop_drops.remove(labels);
                    false
                } else {
                    true
                }
            });
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
        let pod = pod_label(&mut self.pods, anomaly.pod.as_ref());
        let f = &self.families;
        let n = u64::from(anomaly.count.unwrap_or(1));
        let kind = KindLabel {
            kind: anomaly.kind.as_str(),
            pod: pod.clone(),
        };
        if f.anomalies.get(&kind).is_none() {
            created(&mut self.pods, &pod, || Series::Anomalies(kind.clone()));
        }
        f.anomalies.get_or_create(&kind).inc_by(n);
        let reason = ReasonLabel {
            reason: anomaly.reason.clone().unwrap_or_default(),
            pod: pod.clone(),
        };
        match anomaly.kind {
            AnomalyKind::Drop => {
                if f.drops.get(&reason).is_none() {
                    created(&mut self.pods, &pod, || Series::Drops(reason.clone()));
                }
                f.drops.get_or_create(&reason).inc_by(n);
            }
            AnomalyKind::CsumError => {
                if f.checksum_errors.get(&reason).is_none() {
                    created(&mut self.pods, &pod, || {
                        Series::ChecksumErrors(reason.clone())
                    });
                }
                f.checksum_errors.get_or_create(&reason).inc_by(n);
            }
            AnomalyKind::Oversize => {
                f.oversize
                    .get_or_create(&SourceLabel {
                        source: anomaly.oversize_source().as_str(),
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
        for h in &report.hops {
            let pod = pod_label(&mut self.pods, h.hop.pod.as_ref());
            self.relabel_hop(&h.hop.ifname, h.hop.role, &pod);
            let f = &self.families;
            let labels = hop_labels(&h.hop.ifname, h.dir, h.hop.role, pod.clone());
            if f.hop_packets.get(&labels).is_none() {
                created(&mut self.pods, &pod, || Series::Hop(labels.clone()));
            }
            let c = &h.counters;
            f.hop_packets.get_or_create(&labels).inc_by(c.packets);
            f.hop_dropped.get_or_create(&labels).inc_by(h.drops());
            f.hop_bytes.get_or_create(&labels).inc_by(c.bytes);
            f.hop_segments.get_or_create(&labels).inc_by(c.segs);
            f.fragments.get_or_create(&labels).inc_by(c.fragments);
            f.hop_oversize.get_or_create(&labels).inc_by(c.oversize);
            f.hop_max_packet
                .get_or_create(&labels)
                .set(i64::from(c.max_len));
            for (reason, n) in &h.faults.reasons {
                let labels = DropLabels {
                    iface: labels.iface.clone(),
                    direction: labels.direction,
                    role: labels.role,
                    reason: reason.clone(),
                    pod: pod.clone(),
                };
                if f.hop_drops.get(&labels).is_none() {
                    let seen = self.reasons_seen.entry(labels.iface.clone()).or_default();
                    if !seen.contains(&labels) {
                        seen.push(labels.clone());
                    }
                    created(&mut self.pods, &pod, || Series::HopDrops(labels.clone()));
                }
                f.hop_drops.get_or_create(&labels).inc_by(*n);
            }
        }
        let f = &self.families;
        for (kind, n) in &report.lost {
            f.events_lost
                .get_or_create(&KindLabel {
                    kind: kind.line_name(),
                    pod: PodLabel(None),
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
        // Pods the node no longer has lose their series (and their places).
        if let Some(pods) = &mut self.pods {
            for series in pods.forget_gone() {
                series.remove(&self.families);
            }
        }
        self.export_flows();
        Ok(())
    }

    fn device(&mut self, change: &HopChange) -> anyhow::Result<()> {
        let hop = &change.hop;
        let event = change.event.as_str();
        self.families
            .device_changes
            .get_or_create(&EventLabel { event })
            .inc();
        match change.event {
            // Never observed: no series of its own to start or retire.
            DeviceEvent::AttachFailed(_) => {}
            DeviceEvent::Added | DeviceEvent::MtuChanged { .. } => {
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
            }
            DeviceEvent::Removed => {
                self.hops.remove(&hop.ifindex);
                self.retiring.push((hop.ifname.clone(), hop.role));
            }
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
