//! The pipeline sink that feeds the UI: the interval model's reports and the anomalies become
//! [`AppEvent`]s. Every count and judgment comes from [`crate::observe`]; this only gathers an
//! interval's flows by flow (the UI shows a flow's path) and copies the rest.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::mpsc::Sender;

use super::model::{
    AnomalySample, AppEvent, FlowHop, FlowSample, HopCounts, HopId, HopSample, Offload,
};
use crate::observe::{
    anomaly::{Anomaly, AnomalyKind},
    packet::{Flow, Outer},
    pipeline::Sink,
    report::{Faults, FlowFaults, FlowReport, IntervalEnd, IntervalReport, Meta, Summary},
};

/// Feeds the UI task. Sends never wait: when the UI lags, messages are dropped and counted
/// (the pipeline must keep draining the kernel).
pub struct TuiFeed {
    tx: Sender<AppEvent>,
    interval: std::time::Duration,
    offloads: HashMap<u32, Offload>,
    pub dropped_messages: u64,
    /// The closing interval's hops, until its flows are in.
    report: Option<IntervalReport>,
    /// The closing interval's flows by (inner) 5-tuple, with the hops each crossed.
    flows: BTreeMap<Flow, (Option<Outer>, Vec<FlowHop>)>,
    /// Our namespace: devices elsewhere are shown with theirs, so a pod's eth0 is not read
    /// as the node's.
    netns: u64,
}

impl TuiFeed {
    pub fn new(
        tx: Sender<AppEvent>,
        interval: std::time::Duration,
        offloads: HashMap<u32, Offload>,
    ) -> Self {
        Self {
            tx,
            interval,
            offloads,
            dropped_messages: 0,
            report: None,
            flows: BTreeMap::new(),
            netns: 0,
        }
    }

    fn send(&mut self, event: AppEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped_messages += 1;
        }
    }
}

/// A flow's totals with all of its faults, wherever they happened: the model charged each once
/// to the flow (some happened beyond our hops, in a pod's namespace or at a socket).
fn with_flow_faults(total: &mut HopCounts, faults: &Faults) {
    total.drops = faults.drops;
    total.csum_errors = faults.count(AnomalyKind::CsumError);
    total.retransmits = faults.count(AnomalyKind::Retransmit);
    total.oversize = total.oversize.max(faults.count(AnomalyKind::Oversize));
}

/// A flow's or a hop's faults as the UI's counts.
fn fault_counts(faults: &Faults) -> HopCounts {
    HopCounts {
        drops: faults.drops,
        csum_errors: faults.count(AnomalyKind::CsumError),
        oversize: faults.count(AnomalyKind::Oversize),
        retransmits: faults.count(AnomalyKind::Retransmit),
        ..HopCounts::default()
    }
}

impl Sink for TuiFeed {
    fn meta(&mut self, meta: &Meta) -> anyhow::Result<()> {
        self.netns = meta.netns;
        let mut hooks = vec![format!("tc:{}", meta.tc_attach)];
        hooks.extend(meta.hooks.iter().map(|h| match &h.hook {
            Some(hook) => hook.clone(),
            None => format!("{}:none", h.signal),
        }));
        self.send(AppEvent::Status {
            hooks,
            interval: self.interval,
        });
        Ok(())
    }

    fn anomaly(&mut self, anomaly: &Anomaly) -> anyhow::Result<()> {
        let mut sample = AnomalySample::from_anomaly(anomaly, anomaly.ts);
        if anomaly.netns != self.netns
            && let Some(name) = &mut sample.ifname
        {
            // A pod's device by its pod, others by their namespace's inode.
            match &sample.pod {
                Some(pod) => name.push_str(&format!("@{pod}")),
                None => name.push_str(&format!("@{}", anomaly.netns)),
            }
        }
        self.send(AppEvent::Anomaly(sample));
        Ok(())
    }

    fn interval(&mut self, report: &IntervalReport) -> anyhow::Result<()> {
        self.report = Some(report.clone());
        self.flows.clear();
        Ok(())
    }

    /// Flows by (inner) 5-tuple, with their hops.
    fn flows(&mut self, batch: &[FlowReport]) -> anyhow::Result<()> {
        for f in batch {
            let entry = self.flows.entry(f.flow.clone()).or_default();
            if f.outer.is_some() {
                entry.0 = f.outer.clone();
            }
            entry.1.push(FlowHop {
                ifname: f.hop.ifname.clone(),
                ifindex: f.hop.ifindex,
                dir: f.dir,
                role: f.hop.role,
                pod: f.hop.pod.as_ref().map(|p| p.id.clone()),
                counts: HopCounts {
                    packets: f.counters.counters.packets,
                    bytes: f.counters.counters.bytes,
                    fragments: f.counters.counters.fragments,
                    oversize: f.counters.counters.oversize,
                    ..HopCounts::default()
                },
            });
        }
        Ok(())
    }

    fn interval_end(&mut self, end: &IntervalEnd) -> anyhow::Result<()> {
        let Some(report) = self.report.take() else {
            return Ok(());
        };
        let mut flow_faults: HashMap<&Flow, &FlowFaults> =
            report.flow_faults.iter().map(|f| (&f.flow, f)).collect();
        let mut flows: Vec<FlowSample> = std::mem::take(&mut self.flows)
            .into_iter()
            .map(|(flow, (outer, mut hops))| {
                let faults = flow_faults.remove(&flow);
                // Each fault at the hop the model charged it to.
                for (key, at) in faults.iter().flat_map(|f| &f.at) {
                    let id = HopId::from(*key);
                    if let Some(hop) = hops.iter_mut().find(|h| h.id() == id) {
                        hop.counts.add(&fault_counts(at));
                    }
                }
                let mut sample = FlowSample::from_hops(flow, outer, hops);
                if let Some(faults) = faults {
                    with_flow_faults(&mut sample.total, &faults.total);
                }
                sample
            })
            .collect();
        // Flows whose packets died before any of our hops counted them (refused sends, drops
        // in the sender's namespace): no hop, but their faults.
        flows.extend(flow_faults.into_values().map(|faults| {
            let mut sample = FlowSample::from_hops(faults.flow.clone(), None, Vec::new());
            with_flow_faults(&mut sample.total, &faults.total);
            sample
        }));
        let hops = report
            .hops
            .iter()
            .map(|h| {
                let c = &h.counters;
                HopSample {
                    pod: h.hop.pod.as_ref().map(|p| p.id.clone()),
                    offload: self.offloads.get(&h.hop.ifindex).copied(),
                    packets: c.packets,
                    bytes: c.bytes,
                    drops: h.drops(),
                    loss_pct: h.loss_pct,
                    csum_errors: h.faults.count(AnomalyKind::CsumError),
                    oversize: h.oversize(),
                    fragments: c.fragments,
                    retransmits: end.hop_retransmits.get(&h.key()).copied().unwrap_or(0),
                    segs: c.segs,
                    mean_segment: u32::try_from(h.mean_segment).ok(),
                    max_len: (c.max_len > 0).then_some(c.max_len),
                    ..HopSample::new(
                        h.hop.ifname.clone(),
                        h.hop.ifindex,
                        h.dir,
                        h.hop.role,
                        h.hop.mtu,
                        report.interval,
                    )
                }
            })
            .collect();
        let lost = report.lost.iter().map(|(_, n)| n).sum();
        self.send(AppEvent::Interval {
            hops,
            flows,
            lost,
            worst: report.worst_hop.map(HopId::from),
            hint: report.offload_hint,
        });
        if end.evicted > 0 {
            self.send(AppEvent::Evicted(end.evicted));
        }
        Ok(())
    }

    fn note(&mut self, text: &str) -> anyhow::Result<()> {
        self.send(AppEvent::Notice(Some(text.to_owned())));
        Ok(())
    }

    fn finish(&mut self, _summary: &mut Summary) -> anyhow::Result<()> {
        self.send(AppEvent::FeedEnded);
        Ok(())
    }
}
