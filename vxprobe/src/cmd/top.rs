//! `vxprobe top`: the live UI over the same pipeline as `record`. The UI runs as its own task;
//! when the user quits (or a signal ends it) the pipeline stops, detaches and exits 0.

use std::time::Duration;

use tokio::sync::mpsc::Receiver;

use crate::{
    cli::TopArgs,
    observe::pipeline::{self, Sink},
    observe::session::Session,
    sinks::tui::{self, feed::TuiFeed},
};

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    // Attach (and report problems) before the terminal switches to the UI.
    let mut session = Session::start(&args.probe.session(&args.selection, &args.pods)).await?;
    let result = show(&mut session, args.interval, None, None).await;
    session.stop();
    result
}

/// Runs the UI over `session` until the user quits; `notes` go to its status line, and what
/// the pipeline hands the UI also to `also` (the demo's watch on its faults).
pub async fn show(
    session: &mut Session,
    interval: Duration,
    notes: Option<Receiver<String>>,
    also: Option<&mut dyn Sink>,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let (quit_tx, quit_rx) = tokio::sync::oneshot::channel::<()>();
    let ui = tokio::spawn(async move {
        let result = tui::run(rx).await;
        let _ = quit_tx.send(());
        result
    });
    let mut feed = TuiFeed::new(tx, interval, session.offloads().clone());
    let stop = async {
        let _ = quit_rx.await;
    };
    let mut sinks: Vec<&mut dyn Sink> = vec![&mut feed];
    if let Some(also) = also {
        sinks.push(also);
    }
    let piped = pipeline::run(session, &mut sinks, interval, false, notes, stop).await;
    drop(feed);
    ui.await??;
    piped.map(drop)
}
