//! `vxprobe demo --report DIR`: the demo's story recorded from both ends of the tunnel and
//! joined. The lab gets a switch between the nodes (and a last phase of loss on it, which only
//! the join can see); node 2 is recorded by a `vxprobe record` of its own inside its namespace,
//! node 1 by this process (its recording carries the phases as notes). Both record before the
//! traffic starts and after it stops, so every packet falls in the window they share. DIR gets
//! `node1.jsonl`, `node1.pcapng`, `node2.jsonl`, `node2.pcapng` and `report.html`,
//! `report.md`, `report.json`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::phases::{Seen, Timing, Watch, inject};
use crate::{
    cli::DemoArgs,
    cmd::record::{Outputs, stop_signal},
    error::UsageError,
    kernel::caps,
    lab::{
        Lab, LabOptions, TAP_DEV, UNDERLAY_DEV, VXLAN_DEV, faults,
        scenario::{Phase, Traffic},
    },
    observe::session::{Session, SessionConfig},
    report::{self as join, Format, Inputs},
};

/// The recorders' interval.
const INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(args: DemoArgs, dir: &Path) -> anyhow::Result<()> {
    let missing = caps::missing();
    if !missing.is_empty() {
        anyhow::bail!(
            "the demo builds network namespaces and loads eBPF: it needs {} (run it as root)",
            missing.join(", ")
        );
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| UsageError::new(format!("cannot create {}: {e}", dir.display())))?;
    let file = |name: &str| dir.join(name);
    let outputs = Outputs::open(
        &file("node1.jsonl").display().to_string(),
        Some(&file("node1.pcapng")),
        crate::sinks::pcap::Snap::Headers,
    )?;
    Lab::remove_stale().context("removing a previous demo's namespaces")?;
    let lab = Arc::new(
        Lab::build(&LabOptions {
            switch: true,
            ..LabOptions::default()
        })
        .context("building the demo lab")?,
    );
    eprintln!(
        "vxprobe: recording both nodes of the demo into {}",
        dir.display()
    );
    let mut node2 = NodeRecorder::start(&lab.nodes[1].netns, "node2", dir, &args.pods)?;

    let inside = faults::enter_netns(&lab.nodes[0].netns).context("entering node 1's namespace")?;
    let mut session = Session::start(&SessionConfig {
        node: Some("node1".into()),
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
        std::thread::spawn(move || -> anyhow::Result<()> {
            // Traffic from here, while both nodes record, and stopped before they stop.
            let traffic = Traffic::start(&lab).context("starting iperf3 between the pods");
            let injected = traffic.and_then(|traffic| {
                let injected = inject(
                    &lab,
                    &Phase::WITH_SWITCH,
                    timing,
                    false,
                    &stop,
                    &seen,
                    &notes_tx,
                );
                drop(traffic);
                injected.context("injecting faults")
            });
            let _ = phases_done_tx.send(());
            injected
        })
    };
    let signal_or_duration = stop_signal(args.duration)?;
    let until = async move {
        let phases_then_flush = async {
            let _ = phases_done.await;
            // The last packets of the traffic counted, on both nodes.
            tokio::time::sleep(INTERVAL + INTERVAL / 2).await;
        };
        tokio::select! {
            () = signal_or_duration => {}
            () = phases_then_flush => {}
        }
    };
    let recorded = outputs
        .write(
            &mut session,
            INTERVAL,
            Some(notes_rx),
            Some(&mut watch),
            until,
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    let injected = injector
        .join()
        .map_err(|_| anyhow::anyhow!("the fault injector panicked"))?;
    session.stop();
    let node2_stopped = node2.stop();
    drop(inside);
    drop(Arc::try_unwrap(lab).map_err(|_| anyhow::anyhow!("the lab is still in use"))?);
    recorded?;
    injected?;
    node2_stopped?;

    let report = join::build(&Inputs {
        recordings: vec![file("node1.jsonl"), file("node2.jsonl")],
        pcaps: vec![
            file("node1.pcapng").display().to_string(),
            file("node2.pcapng").display().to_string(),
        ],
        doctor: Vec::new(),
    })?;
    for (name, format) in [
        ("report.html", Format::Html),
        ("report.md", Format::Md),
        ("report.json", Format::Json),
    ] {
        std::fs::write(file(name), join::render(&report, format))
            .with_context(|| format!("writing {}", file(name).display()))?;
    }
    eprintln!(
        "vxprobe: {} flows, {} losing packets; open {}",
        report.flows.len(),
        report.flows.iter().filter(|f| f.lost > 0).count(),
        file("report.html").display()
    );
    Ok(())
}

/// The demo's `--cri-socket`, passed on to node 2's recorder.
fn cri_socket_arg(pods: &crate::cli::PodOptions) -> Vec<std::ffi::OsString> {
    use crate::node::pods::CriSocket;
    match &pods.cri_socket {
        Some(CriSocket::Path(path)) => vec!["--cri-socket".into(), path.into()],
        Some(CriSocket::Off) => vec!["--cri-socket".into(), "none".into()],
        Some(CriSocket::Probe) | None => Vec::new(),
    }
}

/// A `vxprobe record` (this executable) inside a node's namespace.
struct NodeRecorder {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl NodeRecorder {
    fn start(
        netns: &str,
        node: &str,
        dir: &Path,
        pods: &crate::cli::PodOptions,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the vxprobe executable")?;
        let ready = dir.join(format!(".{node}.ready"));
        let _ = std::fs::remove_file(&ready);
        let out = |ext: &str| -> PathBuf { dir.join(format!("{node}.{ext}")) };
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(&exe)
            .args(["record", "--node", node, "--stats-interval", "1s"])
            .args(["-i", "cali*", "-i", VXLAN_DEV, "-i", UNDERLAY_DEV])
            .args(cri_socket_arg(pods))
            .arg("-o")
            .arg(out("jsonl"))
            .arg("--pcap")
            .arg(out("pcapng"))
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting vxprobe record for node 2")?;
        let mut pipe = child.stderr.take();
        let stderr = Some(std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(pipe) = pipe.as_mut() {
                let _ = std::io::Read::read_to_string(pipe, &mut text);
            }
            text
        }));
        let mut recorder = Self { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Some(status) = recorder.child.try_wait()? {
                anyhow::bail!(
                    "vxprobe record for {node} exited ({status}): {}",
                    recorder.stderr_text().trim()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!("vxprobe record for {node} not attached after 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&ready);
        Ok(recorder)
    }

    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }

    /// SIGTERM, and the recorder's exit (it writes its last interval and summary first).
    fn stop(&mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("recorder pid")?;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                anyhow::bail!(
                    "vxprobe record for node 2 failed ({status}): {}",
                    self.stderr_text().trim()
                );
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                anyhow::bail!("vxprobe record for node 2 did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeRecorder {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
