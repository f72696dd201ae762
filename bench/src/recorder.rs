//! `vxprobe record` as the benchmarks run it: inside a lab namespace, started with the
//! `--ready-file` handshake (the time to it is the attach time), stopped with SIGTERM, its
//! output either thrown away (`-o /dev/null`) or counted line by line as it streams.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::procfs;

/// Where `record` writes its JSON lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// `-o /dev/null`: the cheapest sink there is.
    DevNull,
    /// `-o -` into a pipe the benchmark reads, counting lines by kind (about what `| jq -c`
    /// would cost the recorder, with a far cheaper reader), and the lines that contain
    /// `marker`, if given.
    Counted { marker: Option<String> },
}

/// Lines of the JSON output, by kind, plus the `lost` counts and the `summary` line.
#[derive(Clone, Debug, Default)]
pub struct LineCounts {
    pub by_kind: BTreeMap<String, u64>,
    /// Sum of the `count` of every `lost` line.
    pub lost: u64,
    pub summary: Option<Value>,
    /// The first line: hops and the hook each signal uses.
    pub meta: Option<Value>,
    pub bytes: u64,
    /// Lines containing the marker.
    pub marked: u64,
}

impl LineCounts {
    pub fn kind(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }

    /// Events of `kind` as the summary line counts them.
    pub fn summary_events(&self, kind: &str) -> Option<u64> {
        self.summary.as_ref()?["events"][kind].as_u64().or(Some(0))
    }

    pub fn summary_lost(&self) -> Option<u64> {
        self.summary.as_ref()?["lost"].as_u64()
    }

    fn read(pipe: impl Read, marker: Option<String>, live: Arc<AtomicU64>) -> Self {
        let mut counts = Self::default();
        let marker = marker.map(String::into_bytes);
        let mut reader = BufReader::with_capacity(1 << 20, pipe);
        let mut line = Vec::with_capacity(4096);
        const PREFIX: &[u8] = b"{\"kind\":\"";
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(n) => counts.bytes += n as u64,
            }
            if let Some(m) = &marker
                && line.windows(m.len()).any(|w| w == m.as_slice())
            {
                counts.marked += 1;
                live.store(counts.marked, Ordering::Relaxed);
            }
            let Some(rest) = line.strip_prefix(PREFIX) else {
                *counts.by_kind.entry("?".into()).or_default() += 1;
                continue;
            };
            let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
            let kind = &rest[..end];
            match kind {
                b"lost" | b"summary" | b"meta" => {
                    if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                        match kind {
                            b"lost" => counts.lost += v["count"].as_u64().unwrap_or(0),
                            b"meta" => counts.meta = Some(v),
                            _ => counts.summary = Some(v),
                        }
                    }
                }
                _ => {}
            }
            match counts
                .by_kind
                .get_mut(std::str::from_utf8(kind).unwrap_or("?"))
            {
                Some(n) => *n += 1,
                None => {
                    counts
                        .by_kind
                        .insert(String::from_utf8_lossy(kind).into_owned(), 1);
                }
            }
        }
        counts
    }
}

/// A running `vxprobe record`.
pub struct Recorder {
    child: Child,
    pid: u32,
    ready: PathBuf,
    /// From spawn to the ready file: every program loaded and attached.
    pub attach_time: Duration,
    counter: Option<JoinHandle<LineCounts>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// Marked lines read so far.
    marked: Arc<AtomicU64>,
}

/// What a stopped recorder left.
#[derive(Debug)]
pub struct Recorded {
    pub lines: LineCounts,
    /// From SIGTERM to exit: the last drain, flush and detach.
    pub stop_time: Duration,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Recorder {
    /// Starts `vxprobe record ARGS` in `netns` and waits (at most 60 s) until it is attached.
    pub fn start(
        vxprobe: &Path,
        netns: &str,
        args: &[String],
        output: Output,
    ) -> anyhow::Result<Self> {
        let ready = std::env::temp_dir().join(format!(
            "vxprobe-bench-ready-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(vxprobe)
            .arg("record")
            .arg("--ready-file")
            .arg(&ready)
            .args([
                "-o",
                if output == Output::DevNull {
                    "/dev/null"
                } else {
                    "-"
                },
            ])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let marker = match &output {
            Output::DevNull => {
                cmd.stdout(Stdio::null());
                None
            }
            Output::Counted { marker } => {
                cmd.stdout(Stdio::piped());
                marker.clone()
            }
        };
        let started = Instant::now();
        let mut child = cmd.spawn().context("spawning vxprobe record")?;
        let marked = Arc::new(AtomicU64::new(0));
        let live = marked.clone();
        let counter = child
            .stdout
            .take()
            .map(|out| std::thread::spawn(move || LineCounts::read(out, marker, live)));
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = err.read_to_end(&mut buf);
                buf
            })
        });
        let pid = child.id();
        let mut recorder = Recorder {
            child,
            pid,
            ready,
            attach_time: Duration::ZERO,
            counter,
            stderr,
            marked,
        };
        let deadline = started + Duration::from_secs(60);
        while !recorder.ready.exists() {
            if let Some(status) = recorder.child.try_wait()? {
                let stderr = recorder.take_stderr();
                bail!("vxprobe record exited before it was ready ({status}): {stderr}");
            }
            if Instant::now() > deadline {
                bail!("vxprobe record not ready after 60 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        recorder.attach_time = started.elapsed();
        // `ip netns exec` execs the command, so the child is vxprobe itself.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "vxprobe" {
            bail!("expected pid {pid} to be vxprobe, it is {comm:?}");
        }
        Ok(recorder)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        procfs::cpu_time(self.pid)
    }

    pub fn memory(&self) -> anyhow::Result<procfs::Memory> {
        procfs::memory(self.pid)
    }

    /// Lines with the marker read so far (the output streams through the pipe as the
    /// recorder's 8 KiB buffer fills; the rest comes at the interval's flush).
    pub fn marked(&self) -> u64 {
        self.marked.load(Ordering::Relaxed)
    }

    /// SIGSTOP or SIGCONT (or any signal) to the recorder.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.pid as i32, signal) };
    }

    fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 30 s) and for the output to be read.
    pub fn stop(mut self) -> anyhow::Result<Recorded> {
        let asked = Instant::now();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if asked.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let stop_time = asked.elapsed();
        let lines = self
            .counter
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self.take_stderr();
        if !status.success() {
            bail!("vxprobe record failed ({status}): {stderr}");
        }
        Ok(Recorded { lines, stop_time })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.ready);
    }
}

/// `record`'s arguments for the devices of a lab node: every hop of the sending node.
pub fn node_hops() -> Vec<String> {
    ["-i", "cali*", "-i", "vxlan.calico", "-i", "eth0"]
        .map(String::from)
        .to_vec()
}
