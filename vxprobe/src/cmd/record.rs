//! `vxprobe record`: attach, then write JSON lines (and pcapng evidence) until the duration
//! ends or SIGINT/SIGTERM comes; everything is flushed and detached before exit 0.

use std::{
    future::Future,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
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
    interrupt::Interrupted,
    observe::pipeline::{self, Sink},
    observe::report::Summary,
    observe::session::{Session, SessionConfig},
    sinks::files,
    sinks::jsonl::{Budget, JsonLines, JsonSink},
    sinks::pcap::{EvidenceFile, PcapError, Snap},
};

pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    // Output paths are the user's input: check them before touching the kernel.
    let mut outputs = Outputs::open(
        &args.output,
        args.pcap.as_deref(),
        Snap::from_flag(args.snaplen),
    )?;
    outputs.check_ready_file_apart(args.ready_file.as_deref())?;
    check_ready_file(args.ready_file.as_ref())?;
    // Signals first: a SIGTERM while attaching (which takes a moment) then ends the recording
    // cleanly as soon as it starts, instead of killing vxprobe half-attached.
    let stop = stop_signal(args.duration)?;
    if let Some(limit) = args.max_output_size {
        outputs = outputs.within(limit);
    }
    outputs.event_lines = args.event_lines;
    let mut session = match Session::start(&SessionConfig {
        node: args.node.clone(),
        ..args.probe.session(&args.selection, &args.pods)
    })
    .await
    {
        Ok(session) => session,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            // Stopped before the first moment: still a recording, whose summary says nothing
            // was counted (main says why and exits 0).
            if let Err(finishing) = outputs.finish_unstarted() {
                eprintln!("vxprobe: {finishing:#}");
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
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
    /// The files' places and identities, to keep the ready file apart from them.
    files: Vec<(PathBuf, Option<files::Identity>)>,
    /// `--event-lines`.
    pub event_lines: u32,
}

impl Outputs {
    /// `output`: a path or `-` for stdout. A path that cannot be written, a link, or the same
    /// file twice is bad input.
    pub fn open(output: &str, pcap: Option<&Path>, snap: Snap) -> anyhow::Result<Self> {
        let usage = |e: files::FileError| UsageError::new(e.to_string());
        if let Some(pcap) = pcap {
            if output != "-" && same_place(Path::new(output), pcap) {
                return Err(same(pcap).into());
            }
            files::refuse_symlink(pcap).map_err(usage)?;
        }
        let lines = JsonLines::open(output).map_err(usage)?;
        let mut files = Vec::new();
        if output != "-" {
            files.push((files::place(Path::new(output)), lines.identity));
        }
        let evidence = match pcap {
            Some(path) => {
                let mut evidence = EvidenceFile::create(path, snap).map_err(|e| match e {
                    PcapError::File(e) => usage(e),
                    e => UsageError::new(format!("cannot write to {}: {e}", path.display())),
                })?;
                let identity = evidence.identity();
                // Two names of one file (a hard link made meanwhile, a bind mount).
                if identity.is_some() && files.iter().any(|(_, id)| *id == identity) {
                    return Err(same(path).into());
                }
                files.push((files::place(path), identity));
                Some(evidence)
            }
            None => None,
        };
        Ok(Self {
            json: JsonSink::new(lines),
            evidence,
            files,
            event_lines: crate::observe::fold::DEFAULT_EVENT_LINES,
        })
    }

    /// Bounds what the outputs write together (`--max-output-size`).
    pub fn within(mut self, limit: u64) -> Self {
        let budget = Arc::new(Budget::new(limit));
        self.json = self.json.within(Arc::clone(&budget));
        self.evidence = self.evidence.map(|e| e.within(budget));
        self
    }

    /// The ready file must be neither output.
    pub fn check_ready_file_apart(&self, ready: Option<&Path>) -> Result<(), UsageError> {
        let Some(ready) = ready else {
            return Ok(());
        };
        let place = files::place(ready);
        let identity = std::fs::metadata(ready).ok().map(|m| (m.dev(), m.ino()));
        if self
            .files
            .iter()
            .any(|(at, id)| *at == place || (identity.is_some() && *id == identity))
        {
            return Err(UsageError::new(format!(
                "--ready-file {} is also an output of the recording",
                ready.display()
            )));
        }
        Ok(())
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
        let options = pipeline::Options {
            number_evidence: self.evidence.is_some(),
            event_lines: self.event_lines,
            ..pipeline::Options::every(stats_interval)
        };
        // Evidence first: it adds its packet count to the summary the JSON sink writes last.
        let mut sinks: Vec<&mut dyn Sink> = Vec::new();
        if let Some(evidence) = self.evidence.as_mut() {
            sinks.push(evidence);
        }
        sinks.push(&mut self.json);
        if let Some(also) = also {
            sinks.push(also);
        }
        pipeline::run_with(session, &mut sinks, options, notes, stop).await
    }
}

impl Outputs {
    /// Ends outputs no session wrote to: the summary of an empty recording.
    fn finish_unstarted(mut self) -> anyhow::Result<()> {
        let mut summary = Summary::default();
        if let Some(evidence) = self.evidence.as_mut() {
            evidence.finish(&mut summary)?;
        }
        self.json.finish(&mut summary)
    }
}

fn same(path: &Path) -> UsageError {
    UsageError::new(format!(
        "--output and --pcap name the same file ({})",
        path.display()
    ))
}

/// Whether two paths name one file: the same place, or the same existing inode.
fn same_place(a: &Path, b: &Path) -> bool {
    if files::place(a) == files::place(b) {
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
    // The same signals also stop a session that is still starting.
    crate::interrupt::watch().context("installing the start-up's signal flag")?;
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
    if crate::sinks::files::refuse_symlink(path).is_err() {
        return Err(bad(
            "is a symbolic link: vxprobe does not write through links",
        ));
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

/// Where a ready file goes once everything is attached: written under a temporary name in
/// its directory and renamed into place, so it appears whole (and a link planted meanwhile is
/// replaced, not followed).
pub fn signal_ready(path: Option<&PathBuf>) -> anyhow::Result<()> {
    if let Some(path) = path {
        files::write_atomically(path, b"ready\n")
            .with_context(|| format!("writing the ready file {}", path.display()))?;
    }
    Ok(())
}
