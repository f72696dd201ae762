//! `vxprobe record`: attach, then write JSON lines (and pcapng evidence) until the duration
//! ends or SIGINT/SIGTERM comes; everything is flushed and detached before exit 0.

use std::{future::Future, path::Path, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc::Receiver,
};

use crate::{
    cli::RecordArgs,
    error::UsageError,
    output::{JsonLines, JsonSink},
    pcap::EvidenceFile,
    pipeline::{self, Sink, Summary},
    session::{self, Session, SessionConfig},
};

pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    // Output paths are the user's input: check them before touching the kernel.
    if let Some(pcap) = &args.pcap
        && args.output != "-"
        && same_file(Path::new(&args.output), pcap)
    {
        return Err(UsageError::new(format!(
            "--output and --pcap name the same file ({})",
            pcap.display()
        ))
        .into());
    }
    session::check_ready_file(args.ready_file.as_ref())?;
    // Signals first: a SIGTERM while attaching (which takes a moment) then ends the recording
    // cleanly as soon as it starts, instead of killing vxprobe half-attached.
    let stop = stop_signal(args.duration)?;
    let outputs = Outputs::open(&args.output, args.pcap.as_deref(), args.snaplen)?;
    let mut session =
        Session::start(&SessionConfig::from_cli(&args.selection, &args.probe)).await?;
    session::signal_ready(args.ready_file.as_ref())?;
    outputs
        .write(&mut session, args.stats_interval, None, None, stop)
        .await?;
    session.stop();
    Ok(())
}

/// Where a recording goes: JSON lines, and evidence packets if asked for.
pub struct Outputs {
    json: JsonSink,
    evidence: Option<EvidenceFile>,
}

impl Outputs {
    /// `output`: a path or `-` for stdout. A path that cannot be written is bad input.
    pub fn open(output: &str, pcap: Option<&Path>, snaplen: u32) -> anyhow::Result<Self> {
        let lines = JsonLines::open(output)
            .map_err(|e| UsageError::new(format!("cannot write to {output}: {e}")))?;
        let evidence = match pcap {
            Some(path) => Some(EvidenceFile::create(path, snaplen).map_err(|e| {
                UsageError::new(format!("cannot write to {}: {e}", path.display()))
            })?),
            None => None,
        };
        Ok(Self {
            json: JsonSink::new(lines),
            evidence,
        })
    }

    /// Runs the pipeline into these outputs (and `also`, the demo's watch on its faults)
    /// until `stop`.
    pub async fn write(
        mut self,
        session: &mut Session,
        stats_interval: Duration,
        notes: Option<Receiver<String>>,
        also: Option<&mut dyn Sink>,
        stop: impl Future<Output = ()>,
    ) -> anyhow::Result<Summary> {
        let numbered = self.evidence.is_some();
        // Evidence first: it adds its packet count to the summary the JSON sink writes last.
        let mut sinks: Vec<&mut dyn Sink> = Vec::new();
        if let Some(evidence) = self.evidence.as_mut() {
            sinks.push(evidence);
        }
        sinks.push(&mut self.json);
        if let Some(also) = also {
            sinks.push(also);
        }
        pipeline::run(session, &mut sinks, stats_interval, numbered, notes, stop).await
    }
}

/// Whether two paths name one file: the same path, or the same existing inode.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Resolves on SIGINT, SIGTERM or when `duration` has passed since it was first polled (the
/// handlers are installed at once, the clock starts with the recording).
pub fn stop_signal(duration: Option<Duration>) -> anyhow::Result<impl Future<Output = ()>> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        let after = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
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
