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
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Injector, Node1, need_caps,
    phases::{Timing, inject},
    phases_then,
};
use crate::{
    cli::DemoArgs,
    cmd::record::Outputs,
    error::UsageError,
    lab::{
        Lab, LabOptions, UNDERLAY_DEV, VXLAN_DEV,
        scenario::{Phase, Traffic},
    },
    report::{self as join, Format, Inputs},
};

/// The recorders' interval.
const INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(args: DemoArgs, dir: &Path) -> anyhow::Result<()> {
    need_caps()?;
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

    let mut node1 = Node1::watch(&lab, Some("node1"), &args).await?;

    let timing = Timing::new(args.phase);
    let (injector, notes_rx, phases_done) =
        Injector::spawn(&lab, &node1.seen, move |lab, stop, seen, notes| {
            // Traffic from here, while both nodes record, and stopped before they stop.
            let traffic = Traffic::start(lab).context("starting iperf3 between the pods");
            traffic.and_then(|traffic| {
                let injected = inject(lab, &Phase::WITH_SWITCH, timing, false, stop, seen, notes);
                drop(traffic);
                injected.context("injecting faults")
            })
        });
    // The last packets of the traffic counted, on both nodes.
    let until = phases_then(phases_done, INTERVAL + INTERVAL / 2, args.duration)?;
    let recorded = outputs
        .write(
            &mut node1.session,
            INTERVAL,
            Some(notes_rx),
            Some(&mut node1.watch),
            until,
        )
        .await;
    let injected = injector.stop()?;
    node1.session.stop();
    let node2_stopped = node2.stop();
    drop(node1.inside);
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

/// How long a recorder may take to attach before the demo says it is slow, and gives up.
const ATTACH_SLOW: Duration = Duration::from_secs(60);
const ATTACH_GIVE_UP: Duration = Duration::from_secs(600);

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
        // Seconds here; minutes on a busy or emulated machine, where a fixed minute failed the
        // demo while the recorder was still loading: say so after a minute, give up after ten.
        let started = Instant::now();
        let mut said = false;
        while !ready.exists() {
            if let Some(status) = recorder.child.try_wait()? {
                anyhow::bail!(
                    "vxprobe record for {node} exited ({status}): {}",
                    recorder.stderr_text().trim()
                );
            }
            let waited = started.elapsed();
            if waited > ATTACH_GIVE_UP {
                anyhow::bail!(
                    "vxprobe record for {node} not attached after {} s",
                    waited.as_secs()
                );
            }
            if !said && waited > ATTACH_SLOW {
                eprintln!(
                    "vxprobe: record for {node} still attaching after {} s (a slow machine); \
                     waiting up to {} s",
                    waited.as_secs(),
                    ATTACH_GIVE_UP.as_secs()
                );
                said = true;
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
