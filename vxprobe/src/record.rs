//! `vxprobe record`: attach, then write JSON lines (and pcapng evidence) until the duration
//! ends or SIGINT/SIGTERM comes; everything is flushed and detached before exit 0.

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RecordArgs,
    error::UsageError,
    output::{JsonLines, JsonSink},
    pcap::EvidenceFile,
    pipeline::{self, Sink},
    session::{self, Session, SessionConfig},
};

pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    // Output paths are the user's input: check them before touching the kernel.
    let lines = JsonLines::open(&args.output)
        .map_err(|e| UsageError::new(format!("cannot write to {}: {e}", args.output)))?;
    let mut evidence = match &args.pcap {
        Some(path) => Some(
            EvidenceFile::create(path, args.snaplen)
                .map_err(|e| UsageError::new(format!("cannot write to {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let mut json = JsonSink::new(lines);

    let mut session = Session::start(&SessionConfig {
        selection: args.selection.clone(),
        tc_attach: args.probe.tc_attach,
        skip_hook: args.probe.skip_hook.clone(),
        max_flows: args.probe.max_flows,
        ring_size: args.probe.ring_size,
        all_drops: args.probe.all_drops,
    })
    .await?;
    session::signal_ready(args.ready_file.as_ref())?;

    let stop = stop_signal(args.duration)?;
    // Evidence first: it adds its packet count to the summary the JSON sink writes last.
    let mut sinks: Vec<&mut dyn Sink> = Vec::new();
    if let Some(evidence) = evidence.as_mut() {
        sinks.push(evidence);
    }
    sinks.push(&mut json);
    let numbered = args.pcap.is_some();
    pipeline::run(
        &mut session,
        &mut sinks,
        args.stats_interval,
        numbered,
        stop,
    )
    .await?;
    session.stop();
    Ok(())
}

/// Resolves on SIGINT, SIGTERM or when `duration` has passed.
pub fn stop_signal(
    duration: Option<std::time::Duration>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    Ok(async move {
        let after = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
            () = after => {}
        }
    })
}
