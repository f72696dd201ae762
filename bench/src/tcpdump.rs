//! `tcpdump -w` on the node's devices: what a user reaches for instead of vxprobe. One process
//! per device (tcpdump captures one interface at a time), full packets, written to /dev/null
//! like vxprobe's `-o /dev/null`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use vxprobe::lab::Lab;

use crate::procfs;

struct Capture {
    child: Child,
    stderr: JoinHandle<Vec<String>>,
}

/// Running captures on several devices.
pub struct Tcpdump {
    captures: Vec<Capture>,
}

/// What the captures reported at exit.
#[derive(Copy, Clone, Debug, Default)]
pub struct Stats {
    pub captured: u64,
    pub dropped_by_kernel: u64,
}

impl Tcpdump {
    /// Starts one `tcpdump -i DEV -w /dev/null` per device in `netns`; returns once every one
    /// says it is listening.
    pub fn start(netns: &str, devices: &[&str]) -> anyhow::Result<Self> {
        let mut captures = Vec::new();
        let mut ready = Vec::new();
        for dev in devices {
            let mut child = Lab::command(netns, "tcpdump")
                .args(["-i", dev, "-w", "/dev/null"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting tcpdump")?;
            let err = child.stderr.take().context("tcpdump stderr")?;
            let (tx, rx) = mpsc::channel();
            let stderr = std::thread::spawn(move || {
                let mut lines = Vec::new();
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if line.contains("listening on") {
                        let _ = tx.send(());
                    }
                    lines.push(line);
                }
                lines
            });
            captures.push(Capture { child, stderr });
            ready.push(rx);
        }
        let this = Self { captures };
        let deadline = Instant::now() + Duration::from_secs(15);
        for rx in ready {
            let left = deadline.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left).is_err() {
                bail!("tcpdump did not start listening within 15 s");
            }
        }
        Ok(this)
    }

    /// CPU time of every capture process together.
    pub fn cpu_time(&self) -> Duration {
        self.captures
            .iter()
            .filter_map(|c| procfs::cpu_time(c.child.id()).ok())
            .sum()
    }

    /// SIGINT (tcpdump then prints its counters), wait, and add up the counters.
    pub fn stop(mut self) -> anyhow::Result<Stats> {
        let mut stats = Stats::default();
        for capture in self.captures.drain(..) {
            let Capture { mut child, stderr } = capture;
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            for line in stderr.join().unwrap_or_default() {
                let n = line
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                if line.ends_with("packets captured") {
                    stats.captured += n;
                } else if line.ends_with("packets dropped by kernel") {
                    stats.dropped_by_kernel += n;
                }
            }
        }
        Ok(stats)
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        for c in &mut self.captures {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}
