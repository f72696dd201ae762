//! The pipeline sink that feeds the UI: interval reports and anomalies become [`AppEvent`]s.
//! The per-hop and per-flow tallies of checksum failures, refused sends and retransmits come
//! from the anomalies of the interval; offload state is read once, at start.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use super::model::{
    AnomalySample, AppEvent, FlowHop, FlowSample, HopCounts, HopId, HopSample, Offload,
};
use crate::{
    observe::anomaly::{Anomaly, AnomalyKind},
    observe::packet::Flow,
    observe::pipeline::{Sink, Summary},
    observe::session::{FlowReport, IntervalEnd, IntervalReport, Meta},
};
use tokio::sync::mpsc::Sender;

/// Feeds the UI task. Sends never wait: when the UI lags, messages are dropped and counted
/// (the pipeline must keep draining the kernel).
pub struct TuiFeed {
    tx: Sender<AppEvent>,
    interval: std::time::Duration,
    offloads: HashMap<u32, Offload>,
    /// Faults of the current interval by hop.
    hop_faults: HashMap<HopId, HopCounts>,
    /// Faults of the current interval by flow (retransmits have no hop).
    flow_faults: HashMap<Flow, HopCounts>,
    pub dropped_messages: u64,
    /// The closing interval's hops, until its flows are in.
    report: Option<IntervalReport>,
    /// The closing interval's flows by (inner) 5-tuple, with the hops each crossed.
    flows: BTreeMap<Flow, (Option<crate::observe::packet::Outer>, Vec<FlowHop>)>,
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
            hop_faults: HashMap::new(),
            flow_faults: HashMap::new(),
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

fn tally(counts: &mut HopCounts, anomaly: &Anomaly) {
    let n = u64::from(anomaly.count.unwrap_or(1));
    if anomaly.dropped {
        counts.drops += n;
    }
    match anomaly.kind {
        AnomalyKind::CsumError => counts.csum_errors += n,
        AnomalyKind::Oversize => counts.oversize += n,
        AnomalyKind::Fragment => counts.fragments += n,
        AnomalyKind::Retransmit => counts.retransmits += n,
        AnomalyKind::Drop | AnomalyKind::FragNeeded => {}
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
        // Only our own devices are hops: an ifindex means nothing in another namespace.
        if let (Some(ifindex), Some(dir), true) = (
            anomaly.ifindex,
            anomaly.hop_direction,
            anomaly.netns == self.netns,
        ) {
            tally(
                self.hop_faults.entry(HopId { ifindex, dir }).or_default(),
                anomaly,
            );
        }
        if let Some(flow) = &anomaly.flow {
            tally(self.flow_faults.entry(flow.clone()).or_default(), anomaly);
        }
        let mut sample = AnomalySample::from_anomaly(anomaly, SystemTime::now());
        if anomaly.netns != self.netns
            && let Some(name) = &mut sample.ifname
        {
            name.push_str(&format!("@{}", anomaly.netns));
        }
        self.send(AppEvent::Anomaly(sample));
        Ok(())
    }

    fn interval(&mut self, report: &IntervalReport) -> anyhow::Result<()> {
        self.report = Some(report.clone());
        self.flows.clear();
        Ok(())
    }

    /// Flows by (inner) 5-tuple, with their hops; fragments come from the counters.
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
                counts: HopCounts {
                    packets: f.counters.packets,
                    bytes: f.counters.bytes,
                    fragments: f.counters.fragments,
                    oversize: f.counters.oversize,
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
        let hop_faults = std::mem::take(&mut self.hop_faults);
        let mut flow_faults = std::mem::take(&mut self.flow_faults);
        let flows = std::mem::take(&mut self.flows);
        // A flow's faults land on its first hop (drops with a device are charged to theirs).
        let mut retransmits_at: HashMap<HopId, u64> = HashMap::new();
        let flows: Vec<FlowSample> = flows
            .into_iter()
            .map(|(flow, (outer, hops))| {
                let mut sample = FlowSample::from_hops(flow.clone(), outer, hops);
                if let Some(faults) = flow_faults.remove(&flow) {
                    for hop in &sample.hops {
                        *retransmits_at.entry(hop.id()).or_default() += faults.retransmits;
                    }
                    if let Some(first) = sample.hops.first_mut() {
                        first.counts.drops += faults.drops;
                        first.counts.csum_errors += faults.csum_errors;
                        first.counts.retransmits += faults.retransmits;
                    }
                    sample.total.drops += faults.drops;
                    sample.total.csum_errors += faults.csum_errors;
                    sample.total.retransmits += faults.retransmits;
                }
                sample
            })
            .collect();

        let hops = report
            .hops
            .iter()
            .map(|h| {
                let id = HopId {
                    ifindex: h.hop.ifindex,
                    dir: h.dir,
                };
                let faults = hop_faults.get(&id).cloned().unwrap_or_default();
                let c = &h.counters;
                HopSample {
                    offload: self.offloads.get(&h.hop.ifindex).copied(),
                    packets: c.packets,
                    bytes: c.bytes,
                    drops: h.drops,
                    csum_errors: faults.csum_errors,
                    oversize: c.oversize.max(faults.oversize),
                    fragments: c.fragments,
                    retransmits: retransmits_at.get(&id).copied().unwrap_or(0),
                    segs: c.segs,
                    mean_segment: None,
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
        self.send(AppEvent::Interval { hops, flows, lost });
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
