//! `vxprobe demo`: a throwaway lab (two nodes, VXLAN overlay, a pod each, a tap), real traffic,
//! and the incidents' failure modes injected one after another while `top` watches node 1 (or,
//! with `--record`, while a recording is written). Everything the demo made is removed on exit,
//! on Ctrl-C and on a panic; a demo that was killed is cleaned up by the next one. With
//! `--report DIR`, both nodes are recorded and joined ([`report`]).

mod phases;
mod report;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::sync::mpsc::{Receiver, Sender};

pub use phases::SCENARIO_OVER;
use phases::{Seen, Timing, Watch, inject};

use crate::{
    cli::DemoArgs,
    cmd::record::{Outputs, stop_signal},
    cmd::top,
    kernel::caps,
    lab::{
        Lab, LabOptions, TAP_DEV, UNDERLAY_DEV, VXLAN_DEV, faults,
        scenario::{Phase, Traffic},
    },
    observe::session::{Session, SessionConfig},
};

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.report.clone() {
        return report::run(args, &dir).await;
    }
    need_caps()?;
    let outputs = match &args.record {
        Some(path) => Some(Outputs::open(
            &path.display().to_string(),
            args.pcap.as_deref(),
            crate::sinks::pcap::Snap::Headers,
        )?),
        None => None,
    };
    Lab::remove_stale().context("removing a previous demo's namespaces")?;
    let lab = Arc::new(Lab::build(&LabOptions::default()).context("building the demo lab")?);
    let _traffic = Traffic::start(&lab).context("starting iperf3 between the pods")?;

    let mut node1 = Node1::watch(&lab, None, &args).await?;

    let timing = Timing::new(args.phase);
    let cycle = args.record.is_none();
    let (injector, notes_rx, phases_done) =
        Injector::spawn(&lab, &node1.seen, move |lab, stop, seen, notes| {
            inject(lab, &Phase::ALL, timing, cycle, stop, seen, notes)
        });
    let interval = Duration::from_secs(1);
    let result = match outputs {
        Some(outputs) => {
            // One more interval after the phases, so the last phase's counters are written.
            let until = phases_then(phases_done, interval + interval / 2, args.duration)?;
            outputs
                .write(
                    &mut node1.session,
                    interval,
                    Some(notes_rx),
                    Some(&mut node1.watch),
                    until,
                )
                .await
                .map(drop)
        }
        None => {
            let (session, watch) = (&mut node1.session, &mut node1.watch);
            top::show(session, interval, Some(notes_rx), Some(watch)).await
        }
    };
    let injected = injector.stop()?;
    node1.session.stop();
    drop(node1.inside);
    drop(_traffic);
    // Deletes every namespace, and with them every device and process the demo made.
    drop(Arc::try_unwrap(lab).map_err(|_| anyhow::anyhow!("the lab is still in use"))?);
    result?;
    injected.context("injecting faults")
}

/// Refuses to start without what the lab and the eBPF programs need.
fn need_caps() -> anyhow::Result<()> {
    let missing = caps::missing();
    if !missing.is_empty() {
        anyhow::bail!(
            "the demo builds network namespaces and loads eBPF: it needs {} (run it as root)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Node 1 observed from the inside, as vxprobe runs on a real node: a session on the demo's
/// devices, and the watch the phases check their signals against.
struct Node1 {
    session: Session,
    seen: Arc<Seen>,
    watch: Watch,
    /// Back to this thread's own namespace when dropped (after the session has stopped).
    inside: faults::NetnsGuard,
}

impl Node1 {
    /// Enters node 1's namespace and starts the session there (named `node` when given).
    async fn watch(lab: &Lab, node: Option<&str>, args: &DemoArgs) -> anyhow::Result<Self> {
        let inside =
            faults::enter_netns(&lab.nodes[0].netns).context("entering node 1's namespace")?;
        let mut config = SessionConfig {
            pods: Some(args.pods.config()),
            ..SessionConfig::watching(
                ["cali*", VXLAN_DEV, UNDERLAY_DEV, TAP_DEV]
                    .map(str::to_owned)
                    .to_vec(),
            )
        };
        if let Some(node) = node {
            config.node = Some(node.to_owned());
        }
        let session = Session::start(&config).await?;
        let seen = Arc::new(Seen::default());
        let watch = Watch::new(Arc::clone(&seen), session.meta().netns);
        Ok(Self {
            session,
            seen,
            watch,
            inside,
        })
    }
}

/// Resolves once every phase has run once (however slow the machine makes them) and `flush`
/// has passed after; or at `--duration`, or on a signal.
fn phases_then(
    phases_done: tokio::sync::oneshot::Receiver<()>,
    flush: Duration,
    duration: Option<Duration>,
) -> anyhow::Result<impl Future<Output = ()>> {
    let signal_or_duration = stop_signal(duration)?;
    Ok(async move {
        let phases_then_flush = async {
            let _ = phases_done.await;
            tokio::time::sleep(flush).await;
        };
        tokio::select! {
            () = signal_or_duration => {}
            () = phases_then_flush => {}
        }
    })
}

/// The fault phases, on a thread of their own beside the session.
struct Injector<T> {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<T>,
}

impl<T: Send + 'static> Injector<T> {
    /// Runs `work(lab, stop, seen, notes)` on a thread; returns it with the notes `work`
    /// sends and word that it has returned (its phases are done).
    fn spawn(
        lab: &Arc<Lab>,
        seen: &Arc<Seen>,
        work: impl FnOnce(&Lab, &AtomicBool, &Seen, &Sender<String>) -> T + Send + 'static,
    ) -> (Self, Receiver<String>, tokio::sync::oneshot::Receiver<()>) {
        let (notes_tx, notes_rx) = tokio::sync::mpsc::channel(16);
        let stop = Arc::new(AtomicBool::new(false));
        let (phases_done_tx, phases_done) = tokio::sync::oneshot::channel();
        let thread = {
            let (lab, stop, seen) = (Arc::clone(lab), Arc::clone(&stop), Arc::clone(seen));
            std::thread::spawn(move || {
                let injected = work(&lab, &stop, &seen, &notes_tx);
                let _ = phases_done_tx.send(());
                injected
            })
        };
        (Self { stop, thread }, notes_rx, phases_done)
    }

    /// Tells the fault injector to stop, and waits for what it returns.
    fn stop(self) -> anyhow::Result<T> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the fault injector panicked"))
    }
}
