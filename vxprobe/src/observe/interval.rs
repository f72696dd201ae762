//! The one interval model: every anomaly is charged to its hop and its flow once, here; the
//! hops' reports are completed here (faults, loss, mean segment, the worst hop, the
//! offload signature); the run's totals are kept here. Sinks receive the results.
//!
//! Charging rules:
//! - an anomaly counts at a hop when it names one of the observed devices (in vxprobe's
//!   namespace) and the direction the packet was going; a fault whose packet died adds to the
//!   hop's `drops`, by reason;
//! - it counts for a flow when it carries one (the inner 5-tuple of tunnel packets);
//! - a retransmit has no device: it counts at every hop its flow crossed in the interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vxprobe_common::{Counters, Direction, FlowCounters, FlowKey, HopKey};

use super::{
    anomaly::{Anomaly, AnomalyKind, flow_of, outer_of},
    distinct::DistinctCount,
    fold::Folding,
    judge,
    packet::Flow,
    report::{
        Faults, FlowFaults, FlowReport, HopReport, IntervalEnd, IntervalReport, LostEvents,
        MetaHop, Summary, mean_segment,
    },
};
use crate::node::features::Offload;

/// What the kernel counted at one hop over an interval, before the faults are added.
#[derive(Debug, Clone)]
pub struct HopCount {
    pub hop: MetaHop,
    pub dir: Direction,
    pub counters: Counters,
}

/// Distinct flows whose faults one interval keeps.
pub const FLOW_FAULTS_MAX: usize = 65_536;

/// The interval under way, and the run's totals.
#[derive(Debug, Default)]
pub struct Interval {
    /// vxprobe's namespace: where the TC hops are.
    netns: u64,
    /// Devices of vxprobe's namespace that are hops, with the hops that vanished in this
    /// interval (reported one last time).
    devices: BTreeSet<u32>,
    hop_faults: HashMap<HopKey, Faults>,
    /// Each flow's faults: all, and those at each of our hops.
    flow_faults: HashMap<Flow, (Faults, Vec<(HopKey, Faults)>)>,
    /// Flows that retransmitted in this interval: their retransmits, the hops they crossed.
    retransmitting: HashMap<Flow, (u64, Vec<HopKey>)>,
    offloads: HashMap<u32, Offload>,
    summary: Summary,
    flows_seen: DistinctCount,
    /// Which anomalies become lines of their own ([`super::fold`]).
    folding: Folding,
}

impl Interval {
    /// `netns`: vxprobe's own namespace; `offloads`: the devices' offload features, by
    /// ifindex, to name the cause of the offload signature.
    pub fn new(netns: u64, offloads: HashMap<u32, Offload>) -> Self {
        Self {
            netns,
            offloads,
            folding: Folding::new(super::fold::DEFAULT_EVENT_LINES),
            ..Self::default()
        }
    }

    /// Lines per (kind, hop, flow, reason) and interval (`--event-lines`; 0: no limit).
    pub fn with_event_lines(mut self, limit: u32) -> Self {
        self.folding = Folding::new(limit);
        self
    }

    /// Whether a charged anomaly becomes a line of its own (and evidence), or folds into its
    /// key's `count` line at the interval's end ([`Interval::take_folded`]).
    pub fn line(&mut self, anomaly: &Anomaly) -> bool {
        let line = self.folding.line(anomaly);
        if !line {
            self.summary.folded += 1;
        }
        line
    }

    /// The interval's folded lines (each with its `count`), to write before it closes.
    pub fn take_folded(&mut self) -> Vec<Anomaly> {
        self.folding.take()
    }

    /// A device is a hop (from now, or still for the rest of this interval).
    pub fn observe_device(&mut self, ifindex: u32) {
        self.devices.insert(ifindex);
    }

    /// Charges an anomaly to its hop and its flow, and counts it for the summary.
    pub fn charge(&mut self, anomaly: &Anomaly) {
        let n = u64::from(anomaly.count.unwrap_or(1));
        *self
            .summary
            .events
            .entry(anomaly.kind.as_str())
            .or_default() += 1;
        let dropped = anomaly.dropped.then(|| reason(anomaly));
        let hop = match (anomaly.ifindex, anomaly.hop_direction) {
            (Some(ifindex), Some(dir))
                if anomaly.netns == self.netns && self.devices.contains(&ifindex) =>
            {
                Some(HopKey::new(ifindex, dir))
            }
            _ => None,
        };
        if let Some(key) = hop {
            self.hop_faults
                .entry(key)
                .or_default()
                .add(anomaly.kind, n, dropped);
        }
        if let Some(flow) = &anomaly.flow {
            // A flood of faults from spoofed sources must not grow memory: beyond the bound,
            // new flows' faults count at their hops only.
            let known = self.flow_faults.contains_key(flow);
            if known || self.flow_faults.len() < FLOW_FAULTS_MAX {
                let (total, at) = self.flow_faults.entry(flow.clone()).or_default();
                total.add(anomaly.kind, n, dropped);
                if let Some(key) = hop {
                    let i = match at.iter().position(|(k, _)| *k == key) {
                        Some(i) => i,
                        None => {
                            at.push((key, Faults::default()));
                            at.len() - 1
                        }
                    };
                    at[i].1.add(anomaly.kind, n, dropped);
                }
            }
            if anomaly.kind == AnomalyKind::Retransmit
                && (known || self.retransmitting.len() < FLOW_FAULTS_MAX)
            {
                self.retransmitting.entry(flow.clone()).or_default().0 += n;
            }
        }
    }

    /// The interval's hop reports, from what the kernel counted and what was charged.
    pub fn close(
        &mut self,
        ts: std::time::SystemTime,
        interval: std::time::Duration,
        counts: Vec<HopCount>,
        lost: LostEvents,
    ) -> IntervalReport {
        let mut faults = std::mem::take(&mut self.hop_faults);
        let hops: Vec<HopReport> = counts
            .into_iter()
            .map(|c| {
                let key = HopKey::new(c.hop.ifindex, c.dir);
                let faults = faults.remove(&key).unwrap_or_default();
                HopReport {
                    loss_pct: judge::hop_loss_pct(c.dir, c.counters.packets, faults.drops),
                    mean_segment: mean_segment(c.counters.bytes, c.counters.segs),
                    hop: c.hop,
                    dir: c.dir,
                    counters: c.counters,
                    faults,
                }
            })
            .collect();
        self.summary.lost += lost.iter().map(|(_, n)| n).sum::<u64>();
        let flow_faults = std::mem::take(&mut self.flow_faults)
            .into_iter()
            .map(|(flow, (total, at))| FlowFaults { flow, total, at })
            .collect();
        IntervalReport {
            flow_faults,
            ts,
            interval,
            worst_hop: judge::worst_hop(&hops),
            offload_hint: judge::offload_hint(&hops, |ifindex| {
                self.offloads.get(&ifindex).copied()
            }),
            hops,
            lost,
        }
    }

    /// A flow's counters at one hop as a report; `None` for keys that are no flow.
    pub fn flow_report(
        &mut self,
        hop: MetaHop,
        key: &FlowKey,
        counters: &FlowCounters,
        new_entry: bool,
    ) -> Option<FlowReport> {
        let dir = Direction::try_from(key.direction).ok()?;
        let flow = flow_of(key)?;
        // An entry handed out before is in the count already: at 10k flows re-inserting every
        // entry each interval was a tenth of record's CPU.
        if new_entry {
            self.flows_seen.insert(&(hop.ifindex, dir, &flow));
        }
        if let Some((_, crossed)) = self.retransmitting.get_mut(&flow) {
            crossed.push(HopKey::new(hop.ifindex, dir));
        }
        Some(FlowReport {
            mean_segment: mean_segment(counters.counters.bytes, counters.counters.segs),
            outer: outer_of(&counters.outer),
            hop,
            dir,
            flow,
            counters: *counters,
        })
    }

    /// The interval's end: retransmits per hop crossed, evictions. Vanished devices had their
    /// last report: they are hops no more.
    pub fn end(&mut self, evicted: u64, observed: impl Fn(u32) -> bool) -> IntervalEnd {
        self.summary.evicted += evicted;
        self.summary.intervals += 1;
        let mut hop_retransmits = BTreeMap::new();
        for (n, crossed) in std::mem::take(&mut self.retransmitting).into_values() {
            for key in crossed {
                *hop_retransmits.entry(key).or_default() += n;
            }
        }
        self.devices.retain(|&ifindex| observed(ifindex));
        IntervalEnd {
            evicted,
            hop_retransmits,
        }
    }

    /// The run's totals, once it is over.
    pub fn summary(&mut self, duration: std::time::Duration) -> Summary {
        let mut summary = std::mem::take(&mut self.summary);
        summary.duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        summary.flow_entries = self.flows_seen.count();
        summary
    }
}

/// The reason a dropped packet is counted under: the kernel's, or `EMSGSIZE` for a refused
/// send (which has none).
fn reason(anomaly: &Anomaly) -> &str {
    match (&anomaly.reason, anomaly.errno) {
        (Some(reason), _) => reason,
        (None, Some(_)) => "EMSGSIZE",
        (None, None) => "NOT_SPECIFIED",
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{node::devices::Role, observe::anomaly::tests_support::empty};

    const NETNS: u64 = 4026531840;

    fn hop(ifindex: u32) -> MetaHop {
        MetaHop::new(&format!("cali{ifindex}"), ifindex, Role::Pod, 1450)
    }

    fn count(ifindex: u32, dir: Direction, packets: u64) -> HopCount {
        HopCount {
            hop: hop(ifindex),
            dir,
            counters: Counters {
                packets,
                bytes: packets * 100,
                segs: packets,
                ..Default::default()
            },
        }
    }

    fn flow() -> Flow {
        Flow {
            proto: 17,
            src: "198.19.1.2".parse().unwrap(),
            dst: "198.19.2.2".parse().unwrap(),
            sport: 40000,
            dport: 5555,
        }
    }

    fn anomaly(kind: AnomalyKind, ifindex: Option<u32>, dropped: bool, reason: &str) -> Anomaly {
        let mut a = empty();
        a.kind = kind;
        a.netns = NETNS;
        a.ifindex = ifindex;
        a.hop_direction = ifindex.map(|_| Direction::Ingress);
        a.dropped = dropped;
        a.reason = Some(reason.to_owned());
        a.flow = Some(flow());
        a
    }

    #[test]
    fn each_anomaly_is_charged_once_to_its_hop_and_its_flow() {
        let mut interval = Interval::new(NETNS, HashMap::new());
        interval.observe_device(5);
        interval.charge(&anomaly(AnomalyKind::CsumError, Some(5), true, "UDP_CSUM"));
        interval.charge(&anomaly(AnomalyKind::Drop, Some(5), true, "NETFILTER_DROP"));
        interval.charge(&anomaly(AnomalyKind::Fragment, Some(5), false, ""));
        // Another namespace's device 5, and a device that is no hop: flows only.
        let mut elsewhere = anomaly(AnomalyKind::Drop, Some(5), true, "NO_SOCKET");
        elsewhere.netns = 1;
        interval.charge(&elsewhere);
        interval.charge(&anomaly(AnomalyKind::Drop, Some(9), true, "NO_SOCKET"));
        let report = interval.close(
            SystemTime::now(),
            Duration::from_secs(1),
            vec![
                count(5, Direction::Ingress, 20),
                count(5, Direction::Egress, 0),
            ],
            vec![],
        );
        let at = &report.hops[0];
        assert_eq!(at.drops(), 2);
        assert_eq!(at.faults.count(AnomalyKind::CsumError), 1);
        assert_eq!(at.faults.count(AnomalyKind::Fragment), 1);
        assert_eq!(at.faults.reasons["NETFILTER_DROP"], 1);
        assert_eq!(at.loss_pct, 10.0);
        assert_eq!(at.mean_segment, 100);
        assert_eq!(report.hops[1].drops(), 0);
        assert_eq!(report.worst_hop, Some(at.key()));
        let faults = &report.flow_faults[0];
        assert_eq!(faults.total.drops, 4, "every drop of the flow, wherever");
        // Where it happened at one of our hops: there, by hop (both were charged at 5).
        assert_eq!(faults.at.len(), 1);
        assert_eq!((faults.at[0].0, faults.at[0].1.drops), (at.key(), 2));
        interval.end(0, |_| true);
        let summary = interval.summary(Duration::from_secs(1));
        assert_eq!(summary.events["drop"], 3);
        assert_eq!(summary.intervals, 1);
    }

    #[test]
    fn retransmits_count_at_the_hops_their_flow_crossed() {
        let mut interval = Interval::new(NETNS, HashMap::new());
        interval.observe_device(5);
        let mut retransmit = anomaly(AnomalyKind::Retransmit, None, false, "");
        retransmit.count = Some(3);
        interval.charge(&retransmit);
        let key = |dir: Direction| FlowKey {
            ifindex: 5,
            direction: dir as u8,
            family: vxprobe_common::AF_INET,
            proto: 17,
            sport: 40000,
            dport: 5555,
            src: [198, 19, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [198, 19, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        let counters = FlowCounters {
            counters: vxprobe_common::Counters {
                packets: 4,
                bytes: 400,
                segs: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let report = interval
            .flow_report(hop(5), &key(Direction::Ingress), &counters, true)
            .unwrap();
        assert_eq!((report.flow, report.mean_segment), (flow(), 100));
        let end = interval.end(0, |_| true);
        assert_eq!(
            end.hop_retransmits.get(&HopKey::new(5, Direction::Ingress)),
            Some(&3)
        );
    }

    #[test]
    fn vanished_devices_are_hops_until_their_last_interval_ends() {
        let mut interval = Interval::new(NETNS, HashMap::new());
        interval.observe_device(5);
        interval.end(0, |ifindex| ifindex != 5);
        interval.charge(&anomaly(AnomalyKind::Drop, Some(5), true, "NO_SOCKET"));
        let report = interval.close(
            SystemTime::now(),
            Duration::from_secs(1),
            vec![count(5, Direction::Ingress, 1)],
            vec![],
        );
        assert_eq!(report.hops[0].drops(), 0);
    }
}
