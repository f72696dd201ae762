//! `vxprobe record`: attach, then write JSON lines (and pcapng evidence) until the duration
//! ends or SIGINT/SIGTERM comes; everything is flushed and detached before exit 0.

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc::Receiver,
};

use crate::{
    cli::RecordArgs,
    error::UsageError,
    observe::pipeline::{self, Sink},
    observe::report::Summary,
    observe::session::{Session, SessionConfig},
    sinks::jsonl::{JsonLines, JsonSink},
    sinks::pcap::EvidenceFile,
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
    check_ready_file(args.ready_file.as_ref())?;
    // Signals first: a SIGTERM while attaching (which takes a moment) then ends the recording
    // cleanly as soon as it starts, instead of killing vxprobe half-attached.
    let stop = stop_signal(args.duration)?;
    let outputs = Outputs::open(&args.output, args.pcap.as_deref(), args.snaplen)?;
    let mut session = Session::start(&SessionConfig {
        node: args.node.clone(),
        ..args.probe.session(&args.selection, &args.pods)
    })
    .await?;
    signal_ready(args.ready_file.as_ref())?;
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

/// Checks `--ready-file` before anything is attached: its directory must exist and be
/// writable, and a ready file left by an earlier run is removed (a script waiting for it must
/// not see it before this run is ready).
pub fn check_ready_file(path: Option<&PathBuf>) -> Result<(), UsageError> {
    let Some(path) = path else {
        return Ok(());
    };
    let bad = |why: &str| UsageError::new(format!("--ready-file {}: {why}", path.display()));
    if path.is_dir() {
        return Err(bad("is a directory"));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(bad(&format!("no such directory {}", dir.display())));
    }
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| bad("contains a NUL byte"))?;
    // SAFETY: access(2) reads a NUL-terminated path we own.
    if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(bad(&format!("cannot write in {}: {e}", dir.display())));
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bad(&format!("cannot remove the old one: {e}"))),
    }
}

/// Where a ready file goes once everything is attached.
pub fn signal_ready(path: Option<&PathBuf>) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, b"ready\n")
            .with_context(|| format!("writing the ready file {}", path.display()))?;
    }
    Ok(())
}
