//! The one loop every front end runs: kernel events as they arrive (batched wakeups), interval
//! reports every `--stats-interval`, until `stop` resolves. Sinks (JSON lines, pcapng, the
//! TUI) receive typed data; nothing here knows how it is shown.

use std::{collections::BTreeMap, future::Future, time::Duration};

use tokio::time::{Instant, MissedTickBehavior};

use crate::{
    anomaly::Anomaly,
    session::{FlowReport, IntervalPart, IntervalReport, Meta, Session},
};

/// Where pipeline output goes.
pub trait Sink {
    fn meta(&mut self, _meta: &Meta) -> anyhow::Result<()> {
        Ok(())
    }
    fn anomaly(&mut self, anomaly: &Anomaly) -> anyhow::Result<()>;
    /// An interval closes: first its hops ...
    fn interval(&mut self, report: &IntervalReport) -> anyhow::Result<()>;
    /// ... then the flows that moved, a batch at a time ...
    fn flows(&mut self, _flows: &[FlowReport]) -> anyhow::Result<()> {
        Ok(())
    }
    /// ... and it is complete.
    fn interval_end(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Last call; a sink may add what it knows to the summary for the sinks after it.
    fn finish(&mut self, _summary: &mut Summary) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Totals over the whole run, for the last line.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub duration_ms: u64,
    pub intervals: u64,
    /// Anomaly lines per kind.
    pub events: BTreeMap<&'static str, u64>,
    /// Events the kernel could not hand over, all kinds.
    pub lost: u64,
    /// Distinct (hop, direction, flow) entries reported.
    pub flow_entries: u64,
    /// Packets written to the pcapng file, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_packets: Option<u64>,
}

/// Runs until `stop` resolves, then closes a last (partial) interval so nothing counted is
/// left unreported, and hands every sink the summary.
/// `number_evidence`: give every anomaly with a packet its frame number in the evidence file
/// (`pcap_frame`), so a JSON line leads straight to its packet in Wireshark.
pub async fn run(
    session: &mut Session,
    sinks: &mut [&mut dyn Sink],
    stats_interval: Duration,
    number_evidence: bool,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut frames = number_evidence.then_some(0u64);
    let mut flows_seen = std::collections::HashSet::<u64>::new();
    for sink in sinks.iter_mut() {
        sink.meta(session.meta())?;
    }
    let mut ticker = tokio::time::interval_at(Instant::now() + stats_interval, stats_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut interval_start = Instant::now();
    tokio::pin!(stop);
    loop {
        let stopping = tokio::select! {
            ready = session.events_ready() => {
                ready?;
                drain(session, sinks, &mut summary, &mut frames)?;
                continue;
            }
            _ = ticker.tick() => false,
            () = &mut stop => true,
        };
        // Records submitted without a wakeup are picked up here, before the interval closes.
        drain(session, sinks, &mut summary, &mut frames)?;
        let now = Instant::now();
        session.close_interval(now - interval_start, |part| {
            match part {
                IntervalPart::Report(report) => {
                    summary.lost += report.lost.iter().map(|(_, n)| n).sum::<u64>();
                    for sink in sinks.iter_mut() {
                        sink.interval(report)?;
                    }
                }
                IntervalPart::Flows(flows) => {
                    for f in flows {
                        flows_seen.insert(entry_hash(f));
                    }
                    for sink in sinks.iter_mut() {
                        sink.flows(flows)?;
                    }
                }
            }
            Ok(())
        })?;
        for sink in sinks.iter_mut() {
            sink.interval_end()?;
        }
        interval_start = now;
        summary.intervals += 1;
        if stopping {
            break;
        }
    }
    summary.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    summary.flow_entries = flows_seen.len() as u64;
    for sink in sinks.iter_mut() {
        sink.finish(&mut summary)?;
    }
    Ok(summary)
}

/// A flow entry (hop, direction, flow) as 64 bits: the summary counts distinct entries over
/// the whole run, so it keeps 8 bytes of each, not the entry.
fn entry_hash(f: &FlowReport) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (f.hop.ifindex, f.dir, &f.flow).hash(&mut h);
    h.finish()
}

fn drain(
    session: &mut Session,
    sinks: &mut [&mut dyn Sink],
    summary: &mut Summary,
    frames: &mut Option<u64>,
) -> anyhow::Result<()> {
    session.drain(|mut anomaly| {
        *summary.events.entry(anomaly.kind.as_str()).or_default() += 1;
        if let Some(frame) = frames
            && anomaly.evidence.is_some()
        {
            *frame += 1;
            anomaly.pcap_frame = Some(*frame);
        }
        for sink in sinks.iter_mut() {
            sink.anomaly(&anomaly)?;
        }
        Ok(())
    })
}
