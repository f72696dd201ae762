//! The one loop every front end runs: kernel events as they arrive (batched wakeups), interval
//! reports every `--stats-interval`, device changes as the watcher sees them, until `stop`
//! resolves. Sinks (JSON lines, pcapng, the TUI) receive typed data; nothing here knows how it
//! is shown.

use std::{collections::BTreeMap, future::Future, time::Duration};

use tokio::time::{Instant, MissedTickBehavior};

use crate::{
    node::watch::{DeviceChange, DeviceWatch},
    observe::anomaly::Anomaly,
    observe::distinct::DistinctCount,
    observe::session::{
        FlowReport, HopChange, IntervalEnd, IntervalPart, IntervalReport, Meta, Session,
    },
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
    fn interval_end(&mut self, _end: &IntervalEnd) -> anyhow::Result<()> {
        Ok(())
    }
    /// A device started or stopped being observed (device churn).
    fn device(&mut self, _change: &HopChange) -> anyhow::Result<()> {
        Ok(())
    }
    /// A remark from whoever drives the session (the demo names the fault it injects).
    fn note(&mut self, _text: &str) -> anyhow::Result<()> {
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
    /// Flow entries evicted from the kernel's full flow table (`--max-flows`).
    pub evicted: u64,
    /// Distinct (hop, direction, flow) entries reported (estimated beyond 65,536).
    pub flow_entries: u64,
    /// Packets written to the pcapng file, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_packets: Option<u64>,
}

/// Runs until `stop` resolves, then closes a last (partial) interval so nothing counted is
/// left unreported, and hands every sink the summary.
/// `number_evidence`: give every anomaly with a packet its frame number in the evidence file
/// (`pcap_frame`), so a JSON line leads straight to its packet in Wireshark.
/// `notes`: remarks to pass to the sinks as they come.
pub async fn run(
    session: &mut Session,
    sinks: &mut [&mut dyn Sink],
    stats_interval: Duration,
    number_evidence: bool,
    mut notes: Option<tokio::sync::mpsc::Receiver<String>>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut frames = number_evidence.then_some(0u64);
    let mut flows_seen = DistinctCount::default();
    for sink in sinks.iter_mut() {
        sink.meta(session.meta())?;
    }
    // Devices come and go while we run; without the watcher, the hops stay as they started.
    let mut watch = match DeviceWatch::spawn(session.patterns(), session.hops()) {
        Ok(watch) => Some(watch),
        Err(e) => {
            eprintln!("vxprobe: device changes are not followed: {e:#}");
            None
        }
    };
    let mut ticker = tokio::time::interval_at(Instant::now() + stats_interval, stats_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut interval_start = Instant::now();
    tokio::pin!(stop);
    loop {
        let stopping = tokio::select! {
            ready = session.events_ready() => {
                ready?;
                write_waiting_notes(&mut notes, sinks)?;
                drain(session, sinks, &mut summary, &mut frames)?;
                continue;
            }
            change = next_change(&mut watch) => {
                apply(session, sinks, change)?;
                continue;
            }
            Some(text) = next_note(&mut notes) => {
                for sink in sinks.iter_mut() {
                    sink.note(&text)?;
                }
                continue;
            }
            _ = ticker.tick() => false,
            () = &mut stop => true,
        };
        // Records submitted without a wakeup are picked up here, before the interval closes.
        write_waiting_notes(&mut notes, sinks)?;
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
                        flows_seen.insert(&(f.hop.ifindex, f.dir, &f.flow));
                    }
                    for sink in sinks.iter_mut() {
                        sink.flows(flows)?;
                    }
                }
                IntervalPart::End(end) => {
                    summary.evicted += end.evicted;
                    for sink in sinks.iter_mut() {
                        sink.interval_end(end)?;
                    }
                }
            }
            Ok(())
        })?;
        interval_start = now;
        summary.intervals += 1;
        if stopping {
            break;
        }
    }
    summary.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    summary.flow_entries = flows_seen.count();
    for sink in sinks.iter_mut() {
        sink.finish(&mut summary)?;
    }
    Ok(summary)
}

async fn next_note(notes: &mut Option<tokio::sync::mpsc::Receiver<String>>) -> Option<String> {
    match notes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes the notes already sent, before the events drained next: a note made before what it
/// announces (the demo's "fault: ..." before it injects the fault) precedes that fault's
/// events in the output, whichever branch of the loop wins.
fn write_waiting_notes(
    notes: &mut Option<tokio::sync::mpsc::Receiver<String>>,
    sinks: &mut [&mut dyn Sink],
) -> anyhow::Result<()> {
    let Some(rx) = notes else {
        return Ok(());
    };
    while let Ok(text) = rx.try_recv() {
        for sink in sinks.iter_mut() {
            sink.note(&text)?;
        }
    }
    Ok(())
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

/// The watcher's next change; never, without a watcher.
async fn next_change(watch: &mut Option<DeviceWatch>) -> DeviceChange {
    if let Some(w) = watch
        && let Some(change) = w.next().await
    {
        return change;
    }
    *watch = None;
    std::future::pending().await
}

/// Applies a device change to the session and tells the sinks. A device that cannot be
/// attached (it vanished again, or the kernel refused) is reported on stderr and skipped: the
/// recording goes on.
fn apply(
    session: &mut Session,
    sinks: &mut [&mut dyn Sink],
    change: DeviceChange,
) -> anyhow::Result<()> {
    let applied = match change {
        DeviceChange::Added(hop) => {
            let name = hop.device.name.clone();
            let ifindex = hop.device.ifindex;
            match session.add_hop(hop) {
                Ok(true) => session
                    .meta()
                    .hops
                    .iter()
                    .find(|h| h.ifindex == ifindex)
                    .cloned()
                    .map(HopChange::added),
                Ok(false) => None,
                Err(e) => {
                    eprintln!("vxprobe: not observing new device {name}: {e:#}");
                    None
                }
            }
        }
        DeviceChange::Removed { ifindex, .. } => {
            session.remove_hop(ifindex).map(HopChange::removed)
        }
        DeviceChange::Updated(hop) => {
            if let Err(e) = session.update_hop(&hop) {
                eprintln!("vxprobe: {}: new MTU not applied: {e:#}", hop.device.name);
            }
            None
        }
    };
    if let Some(change) = applied {
        for sink in sinks.iter_mut() {
            sink.device(&change)?;
        }
    }
    Ok(())
}
