//! The one loop every front end runs: kernel events as they arrive (batched wakeups), interval
//! reports every `--stats-interval`, device changes as the watcher sees them, until `stop`
//! resolves. Sinks (JSON lines, pcapng, the TUI) receive typed data; nothing here knows how it
//! is shown.

use std::{collections::BTreeMap, future::Future, time::Duration};

use tokio::time::{Instant, MissedTickBehavior};

use super::{
    anomaly::Anomaly,
    clock::WallClock,
    interval::Interval,
    report::{
        DeviceEvent, FlowReport, HopChange, IntervalEnd, IntervalReport, Meta, Summary, Warning,
    },
    session::Session,
};
use crate::node::{
    devices::Hop,
    watch::{DeviceChange, DeviceWatch},
};

/// Where pipeline output goes. Sinks format or forward what they are handed; every figure
/// in it was computed once, by [`Interval`].
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
    /// Something the run could not do and went on without.
    fn warning(&mut self, _warning: &Warning) -> anyhow::Result<()> {
        Ok(())
    }
    /// Last call; a sink may add what it knows to the summary for the sinks after it.
    fn finish(&mut self, _summary: &mut Summary) -> anyhow::Result<()> {
        Ok(())
    }
}

/// How long stopping may take to hand over the records still waiting: a flood's worth is
/// drained in well under a second; past this the rest is given up (exit must not hang).
const FINAL_DRAIN: Duration = Duration::from_secs(5);

/// Flows handed to the sinks at a time: flows are never all held.
const FLOW_BATCH: usize = 1024;

/// How a pipeline runs, beyond the session and its sinks.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How often an interval closes (`--stats-interval`, top's `--interval`).
    pub stats_interval: Duration,
    /// Give every anomaly line with a packet its frame number in the evidence file
    /// (`pcap_frame`), so a JSON line leads straight to its packet in Wireshark.
    pub number_evidence: bool,
    /// Lines per (kind, hop, flow, reason) and interval before the rest fold into one
    /// (`--event-lines`; 0: no limit).
    pub event_lines: u32,
}

impl Options {
    pub fn every(stats_interval: Duration) -> Self {
        Self {
            stats_interval,
            number_evidence: false,
            event_lines: super::fold::DEFAULT_EVENT_LINES,
        }
    }
}

/// Runs until `stop` resolves, then closes a last (partial) interval so nothing counted is
/// left unreported, and hands every sink the summary.
/// `number_evidence`: see [`Options::number_evidence`].
/// `notes`: remarks to pass to the sinks as they come.
pub async fn run(
    session: &mut Session,
    sinks: &mut [&mut dyn Sink],
    stats_interval: Duration,
    number_evidence: bool,
    notes: Option<tokio::sync::mpsc::Receiver<String>>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let options = Options {
        number_evidence,
        ..Options::every(stats_interval)
    };
    run_with(session, sinks, options, notes, stop).await
}

/// [`run`], with every option.
pub async fn run_with(
    session: &mut Session,
    sinks: &mut [&mut dyn Sink],
    options: Options,
    mut notes: Option<tokio::sync::mpsc::Receiver<String>>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let stats_interval = options.stats_interval;
    let started = Instant::now();
    let mut model = Interval::new(session.meta().netns, session.offloads().clone())
        .with_event_lines(options.event_lines);
    for hop in session.hops() {
        model.observe_device(hop.device.ifindex);
    }
    let mut out = Drained {
        frames: options.number_evidence.then_some(0),
        clock: WallClock::measured(),
    };
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
    // Devices that could not be attached: reported, tried again at each resync until they
    // attach or vanish.
    let mut failed = Failed::default();
    for (hop, why) in session.take_attach_failures() {
        failed.report(session, sinks, hop, why, watch.as_ref())?;
    }
    let mut ticker = tokio::time::interval_at(Instant::now() + stats_interval, stats_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut interval_start = Instant::now();
    tokio::pin!(stop);
    loop {
        let stopping = tokio::select! {
            ready = session.events_ready() => {
                ready?;
                write_waiting_notes(&mut notes, sinks)?;
                drain(session, &mut model, sinks, &mut out)?;
                continue;
            }
            change = next_change(&mut watch) => {
                apply(session, &mut model, sinks, change, &mut failed, watch.as_ref())?;
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
        // Records submitted without a wakeup are picked up here, before the interval closes;
        // at the end, every record left (a flood can leave many batches), for a while at most.
        write_waiting_notes(&mut notes, sinks)?;
        drain(session, &mut model, sinks, &mut out)?;
        let last_drain = Instant::now() + FINAL_DRAIN;
        while stopping && session.has_backlog() && Instant::now() < last_drain {
            drain(session, &mut model, sinks, &mut out)?;
        }
        let now = Instant::now();
        if close_interval(session, &mut model, sinks, now - interval_start)? {
            interval_start = now;
        }
        // The wall clock may have been stepped or slewed: follow it.
        out.clock.remeasure();
        if stopping {
            break;
        }
    }
    let mut summary = model.summary(started.elapsed());
    summary.recursion_misses = session.recursion_misses();
    for sink in sinks.iter_mut() {
        sink.finish(&mut summary)?;
    }
    Ok(summary)
}

/// What the drain gives each anomaly besides the model's judgment: its wall time, its frame
/// number in the evidence file.
struct Drained {
    frames: Option<u64>,
    clock: WallClock,
}

/// Closes the interval: the hops' reports, then the flows that moved a batch at a time, then
/// the end. Counters that cannot be read (after retries) are reported as `warning` lines and
/// left for the next interval, which then covers both (every counter is cumulative in the
/// kernel); returns whether the interval closed.
fn close_interval(
    session: &mut Session,
    model: &mut Interval,
    sinks: &mut [&mut dyn Sink],
    length: Duration,
) -> anyhow::Result<bool> {
    let ts = std::time::SystemTime::now();
    let (counts, lost) = match session.read_hops() {
        Ok(read) => read,
        Err(e) => {
            warn(
                sinks,
                format!("hop counters not read, left for the next interval: {e:#}"),
                1,
            )?;
            warn_retries(sinks)?;
            return Ok(false);
        }
    };
    // Folded lines belong to the interval, before its hop lines.
    for folded in model.take_folded() {
        for sink in sinks.iter_mut() {
            sink.anomaly(&folded)?;
        }
    }
    let report = model.close(ts, length, counts, lost);
    for sink in sinks.iter_mut() {
        sink.interval(&report)?;
    }
    let mut batch = Vec::with_capacity(FLOW_BATCH);
    let mut sink_failed = None;
    let created = session.read_flows(|hop, key, counters, new_entry| {
        if let Some(flow) = model.flow_report(hop.clone(), key, counters, new_entry) {
            batch.push(flow);
        }
        if batch.len() == FLOW_BATCH {
            for sink in sinks.iter_mut() {
                if let Err(e) = sink.flows(&batch) {
                    sink_failed = Some(e);
                    anyhow::bail!("a sink failed");
                }
            }
            batch.clear();
        }
        Ok(())
    });
    if let Some(e) = sink_failed {
        return Err(e);
    }
    if !batch.is_empty() {
        for sink in sinks.iter_mut() {
            sink.flows(&batch)?;
        }
    }
    let created = match created {
        Ok(created) => Some(created),
        Err(e) => {
            let text =
                format!("flow counters not all read, the rest left for the next interval: {e:#}");
            warn(sinks, text, 1)?;
            None
        }
    };
    let evicted = session.end_interval(created)?;
    let end = model.end(evicted, |ifindex| session.is_observed(ifindex));
    for sink in sinks.iter_mut() {
        sink.interval_end(&end)?;
    }
    for error in session.take_read_errors() {
        warn(sinks, format!("left for the next interval: {error}"), 1)?;
    }
    warn_retries(sinks)?;
    Ok(true)
}

/// The map reads that failed and were tried again since the last call, as one `warning`.
fn warn_retries(sinks: &mut [&mut dyn Sink]) -> anyhow::Result<()> {
    match crate::kernel::retry::take_failures() {
        0 => Ok(()),
        retried => warn(
            sinks,
            "map reads failed and were tried again".to_owned(),
            retried,
        ),
    }
}

fn warn(sinks: &mut [&mut dyn Sink], text: String, count: u64) -> anyhow::Result<()> {
    let warning = Warning {
        ts: std::time::SystemTime::now(),
        text,
        count,
    };
    for sink in sinks.iter_mut() {
        sink.warning(&warning)?;
    }
    Ok(())
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
    model: &mut Interval,
    sinks: &mut [&mut dyn Sink],
    out: &mut Drained,
) -> anyhow::Result<()> {
    session.drain(|mut anomaly| {
        anomaly.ts = out.clock.wall(anomaly.ktime_ns);
        model.charge(&anomaly);
        if !model.line(&anomaly) {
            return Ok(()); // folded: written with its count when the interval closes
        }
        if let Some(frame) = &mut out.frames
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

/// Selected devices that could not be attached, by ifindex.
#[derive(Default)]
struct Failed(BTreeMap<u32, Failure>);

/// A device that could not be attached: as last seen, why, and how many attaches in a row
/// failed.
struct Failure {
    hop: Hop,
    why: String,
    tries: u32,
}

/// When a device that failed to attach `tries` times in a row is tried again: 2 s, then twice
/// as long each time up to 16 s (the periodic resync comes every 30 s anyway). A hook that
/// stays full is not a reason to re-read every device of the node every 2 s.
fn retry_after(tries: u32) -> Duration {
    Duration::from_secs(2 << tries.saturating_sub(1).min(3))
}

impl Failed {
    /// Reports a failed attach as a `device` line (once per reason) and asks the watcher for
    /// an early resync ([`retry_after`]), at which it is tried again.
    fn report(
        &mut self,
        session: &Session,
        sinks: &mut [&mut dyn Sink],
        hop: Hop,
        why: String,
        watch: Option<&DeviceWatch>,
    ) -> anyhow::Result<()> {
        let known = self.0.get(&hop.device.ifindex);
        let tries = known.map_or(0, |f| f.tries) + 1;
        let known = known.map(|f| f.why.as_str());
        if known != Some(why.as_str()) {
            eprintln!("vxprobe: cannot attach to {}: {why}", hop.device.name);
            let change = HopChange::attach_failed(session.describe(&hop), why.clone());
            for sink in sinks.iter_mut() {
                sink.device(&change)?;
            }
        }
        self.0
            .insert(hop.device.ifindex, Failure { hop, why, tries });
        if let Some(watch) = watch {
            watch.resync_in(retry_after(tries));
        }
        Ok(())
    }
}

/// Attaches a device that appeared (or failed before): its `added` line, or an
/// `attach_failed` one. A device that vanished meanwhile is only noted on stderr.
fn attach(
    session: &mut Session,
    model: &mut Interval,
    sinks: &mut [&mut dyn Sink],
    hop: Hop,
    failed: &mut Failed,
    watch: Option<&DeviceWatch>,
) -> anyhow::Result<()> {
    let (name, ifindex) = (hop.device.name.clone(), hop.device.ifindex);
    match session.add_hop(hop.clone()) {
        Ok(Some(added)) => {
            failed.0.remove(&ifindex);
            model.observe_device(added.ifindex);
            let change = HopChange::added(added);
            for sink in sinks.iter_mut() {
                sink.device(&change)?;
            }
        }
        Ok(None) => {
            failed.0.remove(&ifindex);
        }
        Err(e) if crate::kernel::tc::device_is(&name, ifindex) => {
            failed.report(session, sinks, hop, format!("{e:#}"), watch)?;
        }
        Err(e) => {
            failed.0.remove(&ifindex);
            eprintln!("vxprobe: not observing new device {name}: {e:#}");
        }
    }
    Ok(())
}

/// Applies a device change to the session and the model, and tells the sinks. A device
/// that cannot be attached (the kernel refused) is reported and tried again at the watcher's
/// next resync; the recording goes on.
fn apply(
    session: &mut Session,
    model: &mut Interval,
    sinks: &mut [&mut dyn Sink],
    change: DeviceChange,
    failed: &mut Failed,
    watch: Option<&DeviceWatch>,
) -> anyhow::Result<()> {
    let applied = match change {
        DeviceChange::Added(hop) => {
            return attach(session, model, sinks, hop, failed, watch);
        }
        DeviceChange::Resynced => {
            let retry: Vec<Hop> = failed.0.values().map(|f| f.hop.clone()).collect();
            for hop in retry {
                attach(session, model, sinks, hop, failed, watch)?;
            }
            return Ok(());
        }
        DeviceChange::Removed { ifindex, .. } => {
            failed.0.remove(&ifindex);
            session.remove_hop(ifindex).map(HopChange::removed)
        }
        DeviceChange::Updated(hop) => {
            if let Some(known) = failed.0.get_mut(&hop.device.ifindex) {
                known.hop = hop.clone();
            }
            match session.update_hop(&hop) {
                Ok(changed) => {
                    changed.map(|(was, now)| HopChange::new(DeviceEvent::MtuChanged { was }, now))
                }
                Err(e) => {
                    eprintln!("vxprobe: {}: new MTU not applied: {e:#}", hop.device.name);
                    None
                }
            }
        }
    };
    if let Some(change) = applied {
        for sink in sinks.iter_mut() {
            sink.device(&change)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attaches_are_retried_ever_later_up_to_16_s() {
        let secs: Vec<u64> = (1..=6).map(|t| retry_after(t).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 16, 16]);
    }
}
