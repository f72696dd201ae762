//! The demo's phases: each fault started, fed every second and undone, for at least the
//! phase's length and until the pipeline has shown it ([`Watch`]), bounded.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc::Sender;

use crate::{
    lab::{
        Lab, POD_HOST_DEV, TAP_DEV,
        scenario::{Evidence, Phase, Sign},
    },
    observe::{
        anomaly::{Anomaly, AnomalyKind},
        pipeline::Sink,
        report::IntervalReport,
    },
};

/// The note after the last phase of a recorded demo.
pub const SCENARIO_OVER: &str = "end: every fault removed";

/// How long phases last: at least `phase`, and beyond it (up to `most`) until the phase's
/// fault has shown in the pipeline, so a slow machine still shows (and records) every fault.
#[derive(Copy, Clone, Debug)]
pub(super) struct Timing {
    phase: Duration,
    most: Duration,
}

impl Timing {
    pub(super) fn new(phase: Duration) -> Self {
        Self {
            phase,
            most: (phase * 10).max(Duration::from_secs(60)),
        }
    }
}

/// What the pipeline has shown so far: anomalies by sign, intervals closed. Written by
/// [`Watch`] on the pipeline's task, read by the injector's thread.
#[derive(Default)]
pub(super) struct Seen {
    signs: [AtomicU64; 4],
    intervals: AtomicU64,
}

impl Seen {
    fn slot(sign: Sign) -> usize {
        match sign {
            Sign::CsumError => 0,
            Sign::SizeAtPodVeth => 1,
            Sign::RefusedSend => 2,
            Sign::NetfilterDrop => 3,
        }
    }

    fn count(&self, evidence: Evidence) -> u64 {
        match evidence {
            Evidence::Intervals(_) => self.intervals.load(Ordering::Relaxed),
            Evidence::Anomaly(sign) => self.signs[Self::slot(sign)].load(Ordering::Relaxed),
        }
    }

    /// Whether `evidence` showed since the count was `before`.
    fn shown(&self, evidence: Evidence, before: u64) -> bool {
        let new = self.count(evidence) - before;
        match evidence {
            Evidence::Intervals(n) => new >= u64::from(n),
            Evidence::Anomaly(_) => new > 0,
        }
    }
}

/// The sink that tells the injector what has shown.
pub(super) struct Watch {
    seen: Arc<Seen>,
    /// Node 1's namespace, where the TC hops are.
    node_netns: u64,
}

impl Watch {
    pub(super) fn new(seen: Arc<Seen>, node_netns: u64) -> Self {
        Self { seen, node_netns }
    }

    fn sign(&self, a: &Anomaly) -> Option<Sign> {
        let at = |dev: &str| a.ifname.as_deref() == Some(dev);
        match a.kind {
            AnomalyKind::CsumError => Some(Sign::CsumError),
            AnomalyKind::Drop if a.reason.as_deref() == Some("NETFILTER_DROP") => {
                Some(Sign::NetfilterDrop)
            }
            AnomalyKind::Oversize if a.errno.is_some() && at(TAP_DEV) => Some(Sign::RefusedSend),
            AnomalyKind::Oversize | AnomalyKind::Fragment
                if at(POD_HOST_DEV) && a.netns == self.node_netns =>
            {
                Some(Sign::SizeAtPodVeth)
            }
            _ => None,
        }
    }
}

impl Sink for Watch {
    fn anomaly(&mut self, anomaly: &Anomaly) -> anyhow::Result<()> {
        if let Some(sign) = self.sign(anomaly) {
            self.seen.signs[Seen::slot(sign)].fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn interval(&mut self, _report: &IntervalReport) -> anyhow::Result<()> {
        self.seen.intervals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Runs `phases` (once, or over and over for the interactive demo) until `stop`.
pub(super) fn inject(
    lab: &Lab,
    phases: &[Phase],
    timing: Timing,
    cycle: bool,
    stop: &AtomicBool,
    seen: &Seen,
    notes: &Sender<String>,
) -> std::io::Result<()> {
    loop {
        for &phase in phases {
            let _ = notes.blocking_send(phase.label().to_owned());
            let evidence = phase.evidence();
            let before = seen.count(evidence);
            phase.start(lab)?;
            let started = Instant::now();
            while started.elapsed() < timing.phase
                || (!seen.shown(evidence, before) && started.elapsed() < timing.most)
            {
                if stop.load(Ordering::Relaxed) {
                    return phase.stop(lab);
                }
                phase.tick(lab)?;
                sleep_unless_stopped(Duration::from_secs(1), stop);
            }
            phase.stop(lab)?;
        }
        if !cycle {
            // Marks where the last phase ends in a recording: what follows is fault-free.
            let _ = notes.blocking_send(SCENARIO_OVER.to_owned());
            return Ok(());
        }
    }
}
fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(100);
    let end = Instant::now() + total;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
    }
}
