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
            crate::sinks::pcap::Snap::Headers,
        )?),
        None => None,
    };
    Lab::remove_stale().context("removing a previous demo's namespaces")?;
    let lab = Arc::new(Lab::build(&LabOptions::default()).context("building the demo lab")?);
    let _traffic = Traffic::start(&lab).context("starting iperf3 between the pods")?;

    // Observe node 1 from the inside, as vxprobe runs on a real node.
    let inside = faults::enter_netns(&lab.nodes[0].netns).context("entering node 1's namespace")?;
    let mut session = Session::start(&SessionConfig {
        pods: Some(args.pods.config()),
        ..SessionConfig::watching(
            ["cali*", VXLAN_DEV, UNDERLAY_DEV, TAP_DEV]
                .map(str::to_owned)
                .to_vec(),
        )
    })
    .await?;

    let (notes_tx, notes_rx) = tokio::sync::mpsc::channel(16);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let mut watch = Watch::new(Arc::clone(&seen), session.meta().netns);
    let (phases_done_tx, phases_done) = tokio::sync::oneshot::channel::<()>();
    let injector = {
        let (lab, stop, seen) = (Arc::clone(&lab), Arc::clone(&stop), Arc::clone(&seen));
        let timing = Timing::new(args.phase);
        let cycle = args.record.is_none();
        std::thread::spawn(move || {
            let injected = inject(&lab, &Phase::ALL, timing, cycle, &stop, &seen, &notes_tx);
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
