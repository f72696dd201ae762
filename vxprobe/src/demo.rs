//! `vxprobe demo`: a throwaway lab (two nodes, VXLAN overlay, a pod each, a tap), real traffic,
//! and the incidents' failure modes injected one after another while `top` watches node 1 (or,
//! with `--record`, while a recording is written). Everything the demo made is removed on exit,
//! on Ctrl-C and on a panic; a demo that was killed is cleaned up by the next one.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::mpsc::Sender;

use crate::{
    anomaly::{Anomaly, AnomalyKind},
    caps,
    cli::{DemoArgs, Selection, TcAttach},
    lab::{
        Lab, LabOptions, POD_HOST_DEV, TAP_DEV, UNDERLAY_DEV, VXLAN_DEV, faults,
        scenario::{Evidence, Phase, Sign, Traffic},
    },
    pipeline::Sink,
    record::{Outputs, stop_signal},
    session::{IntervalReport, Session, SessionConfig},
    top,
};

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let missing = caps::missing();
    if !missing.is_empty() {
        anyhow::bail!(
            "the demo builds network namespaces and loads eBPF: it needs {} (run it as root)",
            missing.join(", ")
        );
    }
    let outputs = match &args.record {
        Some(path) => Some(Outputs::open(
            &path.display().to_string(),
            args.pcap.as_deref(),
            128,
        )?),
        None => None,
    };
    Lab::remove_stale().context("removing a previous demo's namespaces")?;
    let lab = Arc::new(Lab::build(&LabOptions::default()).context("building the demo lab")?);
    let _traffic = Traffic::start(&lab).context("starting iperf3 between the pods")?;

    // Observe node 1 from the inside, as vxprobe runs on a real node.
    let inside = faults::enter_netns(&lab.nodes[0].netns).context("entering node 1's namespace")?;
    let mut session = Session::start(&SessionConfig {
        selection: Selection {
            ifaces: ["cali*", VXLAN_DEV, UNDERLAY_DEV, TAP_DEV]
                .map(str::to_owned)
                .to_vec(),
            host: None,
            port: None,
            proto: None,
        },
        tc_attach: TcAttach::Auto,
        skip_hook: Vec::new(),
        max_flows: vxprobe_common::MAX_FLOWS,
        flow_cache_slots: None,
        ring_size: 8 << 20,
        all_drops: false,
    })
    .await?;

    let (notes_tx, notes_rx) = tokio::sync::mpsc::channel(16);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let mut watch = Watch {
        seen: Arc::clone(&seen),
        node_netns: session.meta().netns,
    };
    let (phases_done_tx, phases_done) = tokio::sync::oneshot::channel::<()>();
    let injector = {
        let (lab, stop, seen) = (Arc::clone(&lab), Arc::clone(&stop), Arc::clone(&seen));
        let timing = Timing::new(args.phase);
        let cycle = args.record.is_none();
        std::thread::spawn(move || {
            let injected = inject(&lab, timing, cycle, &stop, &seen, &notes_tx);
            let _ = phases_done_tx.send(());
            injected
        })
    };
    let interval = Duration::from_secs(1);
    let result = match outputs {
        Some(outputs) => {
            // Every phase once (however slow the machine makes them), then one more interval
            // so the last phase's counters are written; or `--duration`, or a signal.
            let signal_or_duration = stop_signal(args.duration)?;
            let until = async move {
                let phases_then_flush = async {
                    let _ = phases_done.await;
                    tokio::time::sleep(interval + interval / 2).await;
                };
                tokio::select! {
                    () = signal_or_duration => {}
                    () = phases_then_flush => {}
                }
            };
            outputs
                .write(
                    &mut session,
                    interval,
                    Some(notes_rx),
                    Some(&mut watch),
                    until,
                )
                .await
                .map(drop)
        }
        None => top::show(&mut session, interval, Some(notes_rx), Some(&mut watch)).await,
    };
    stop.store(true, Ordering::Relaxed);
    let injected = injector
        .join()
        .map_err(|_| anyhow::anyhow!("the fault injector panicked"))?;
    session.stop();
    drop(inside);
    drop(_traffic);
    // Deletes every namespace, and with them every device and process the demo made.
    drop(Arc::try_unwrap(lab).map_err(|_| anyhow::anyhow!("the lab is still in use"))?);
    result?;
    injected.context("injecting faults")
}

/// The note after the last phase of a recorded demo.
pub const SCENARIO_OVER: &str = "end: every fault removed";

/// How long phases last: at least `phase`, and beyond it (up to `most`) until the phase's
/// fault has shown in the pipeline, so a slow machine still shows (and records) every fault.
#[derive(Copy, Clone, Debug)]
struct Timing {
    phase: Duration,
    most: Duration,
}

impl Timing {
    fn new(phase: Duration) -> Self {
        Self {
            phase,
            most: (phase * 10).max(Duration::from_secs(60)),
        }
    }
}

/// What the pipeline has shown so far: anomalies by sign, intervals closed. Written by
/// [`Watch`] on the pipeline's task, read by the injector's thread.
#[derive(Default)]
struct Seen {
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
struct Watch {
    seen: Arc<Seen>,
    /// Node 1's namespace, where the TC hops are.
    node_netns: u64,
}

impl Watch {
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

/// Runs the phases (once, or over and over for the interactive demo) until `stop`.
fn inject(
    lab: &Lab,
    timing: Timing,
    cycle: bool,
    stop: &AtomicBool,
    seen: &Seen,
    notes: &Sender<String>,
) -> std::io::Result<()> {
    loop {
        for phase in Phase::ALL {
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
