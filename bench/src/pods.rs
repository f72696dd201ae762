//! Measurement 9: the pod index (`vxprobe::node::pods`) on a node with 1,000 pods, from the
//! layout: each pod two processes (a pause and an app) in a network namespace of its own, in a
//! kubelet-shaped cgroup (v1, cgroupfs driver), with a kubelet-shaped log directory under a
//! test root and a veth whose host side is in a lab node namespace. A fresh process (this
//! binary, `pods-child`) starts the index there and reports how long until every pod and every
//! veth is named, the memory that took, and the CPU of a steady refresh. Then `vxprobe record`
//! on one of the node's veths, with the layout's 1,000 pods and (the other arm, interleaved)
//! with no pod source: its start-up to the ready file and its memory.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use vxprobe::node::pods::{CriSocket, PodConfig, PodIndex};

use crate::{Ctx, procfs, stats::Dist};

pub const PODS: usize = 1000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Pods {
    pub pods: usize,
    pub processes: usize,
    pub runs: usize,
    /// Creating the pods (not measured further; for the reader's sense of scale).
    pub setup_seconds: f64,
    /// Index start to every pod and every veth named.
    pub startup_ms: Dist,
    /// CPU (user + system) of the index's process until then.
    pub startup_cpu_ms: Dist,
    /// Resident memory of the process once the index is built, and how much of it the index
    /// added (RSS before the start subtracted).
    pub rss_mib: Dist,
    pub index_rss_mib: Dist,
    /// The same after `malloc_trim`: what the index holds, without the allocator's free pages
    /// (the start-up's transient buffers: a thousand links' dump, /proc reads).
    pub trimmed_rss_mib: Dist,
    /// CPU per refresh (one a second) once built, nothing changing.
    pub refresh_cpu_ms: Dist,
    /// `record` with the 1,000 pods, and without a pod source.
    pub record: RecordArms,
}

/// `vxprobe record -i vp0` started with the layout's pods and without any.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecordArms {
    pub runs: usize,
    /// Pods `meta` counted at start (the index's first look).
    pub named: usize,
    /// Spawn to the ready file: attached, and the index's first look taken.
    pub startup_ms: Dist,
    pub startup_ms_without: Dist,
    /// RSS two intervals in, and its peak.
    pub rss_mib: Dist,
    pub rss_mib_without: Dist,
    pub hwm_mib: Dist,
    pub hwm_mib_without: Dist,
}

/// What a `pods-child` run reports (one JSON line on stdout).
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    startup_ms: f64,
    startup_cpu_ms: f64,
    rss_before: u64,
    rss_after: u64,
    rss_trimmed: u64,
    refresh_cpu_ms: f64,
}

struct Node {
    netns: String,
    root: PathBuf,
    cgroup: PathBuf,
    sleepers: Vec<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in &mut self.sleepers {
            let _ = child.kill();
        }
        for child in &mut self.sleepers {
            let _ = child.wait();
        }
        remove_tree(&self.cgroup);
        let _ = fs::remove_dir_all(&self.root);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The v1 `pids` hierarchy's mount point.
fn pids_hierarchy() -> anyhow::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids")).then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup v1 pids hierarchy")
}

fn netns_link(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// A thousand pods on a lab node.
fn build_node(ctx: &Ctx) -> anyhow::Result<Node> {
    let tag = format!("{}{}-pods", vxprobe::lab::NETNS_PREFIX, std::process::id());
    run_ok(Command::new("ip").args(["netns", "add", &tag]))?;
    let mut node = Node {
        netns: tag.clone(),
        root: std::env::temp_dir().join(format!("vxprobe-bench-{tag}")),
        cgroup: pids_hierarchy()?.join(format!("vxprobe-bench-{tag}")),
        sleepers: Vec::new(),
    };
    let logs = node.root.join("var/log/pods");
    let ours = netns_link(std::process::id());
    let mut batch = String::new();
    for i in 0..PODS {
        let uid = format!("00000000-0000-4000-8000-{:012x}", i + 1);
        let pause = Command::new("unshare")
            .args(["--net", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .context("unshare --net sleep")?;
        let pid = pause.id();
        node.sleepers.push(pause);
        // Wait for the pause to be in its own namespace before the app joins it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while netns_link(pid) == ours {
            if Instant::now() > deadline {
                bail!("pod {i}: unshare made no namespace");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let app = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .context("nsenter sleep")?;
        let app_pid = app.id();
        node.sleepers.push(app);
        let cgroup = node.cgroup.join(format!("kubepods/besteffort/pod{uid}"));
        fs::create_dir_all(&cgroup)?;
        for p in [pid, app_pid] {
            fs::write(cgroup.join("cgroup.procs"), p.to_string())
                .with_context(|| format!("{}", cgroup.display()))?;
        }
        let dir = logs.join(format!("bench_pod-{i}_{uid}"));
        fs::create_dir_all(dir.join("app"))?;
        // Pods that have been there a while, as on a node an agent starts on: their
        // directories are settled (not checked for new containers at every refresh).
        fs::File::open(&dir)?.set_modified(SystemTime::now() - Duration::from_secs(3600))?;
        batch.push_str(&format!(
            "link add vp{i} type veth peer name eth0 netns {pid}\nlink set vp{i} up\n"
        ));
    }
    let mut ip = Command::new("ip")
        .args(["-n", &tag, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()?;
    ip.stdin.take().unwrap().write_all(batch.as_bytes())?;
    if !ip.wait()?.success() {
        bail!("ip -batch: creating the veths failed");
    }
    ctx.log(&format!(
        "  {PODS} pods: {} processes, {PODS} veths in {tag}",
        node.sleepers.len()
    ));
    Ok(node)
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Pods> {
    let t0 = Instant::now();
    let node = build_node(ctx)?;
    let setup_seconds = t0.elapsed().as_secs_f64();
    let runs = if ctx.quick { 3 } else { 7 };
    // A full run's window holds one of the layout's 30 s verifications (every pid re-read).
    let steady = if ctx.quick { 10 } else { 30 };
    let me = std::env::current_exe()?;
    let logs = node.root.join("var/log/pods");
    let mut reports = Vec::new();
    for _ in 0..runs {
        let out = Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(&me)
            .arg("pods-child")
            .arg(&logs)
            .arg(PODS.to_string())
            .arg(steady.to_string())
            .output()?;
        if !out.status.success() {
            bail!(
                "pods-child: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let report: ChildReport = serde_json::from_slice(&out.stdout)
            .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
        reports.push(report);
    }
    let record = record_arms(ctx, &node, &logs, runs)?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let of = |f: &dyn Fn(&ChildReport) -> f64| Dist::of(&reports.iter().map(f).collect::<Vec<_>>());
    let out = Pods {
        pods: PODS,
        processes: node.sleepers.len(),
        runs,
        setup_seconds,
        startup_ms: of(&|r| r.startup_ms),
        startup_cpu_ms: of(&|r| r.startup_cpu_ms),
        rss_mib: of(&|r| mib(r.rss_after)),
        index_rss_mib: of(&|r| mib(r.rss_after.saturating_sub(r.rss_before))),
        trimmed_rss_mib: of(&|r| mib(r.rss_trimmed)),
        refresh_cpu_ms: of(&|r| r.refresh_cpu_ms),
        record,
    };
    ctx.log(&format!(
        "  named in {} ms ({} ms of CPU); RSS {} MiB ({} MiB trimmed), {} MiB of it the index; \
         {} ms CPU per refresh",
        out.startup_ms.show(1.0, 0),
        out.startup_cpu_ms.show(1.0, 0),
        out.rss_mib.show(1.0, 1),
        out.trimmed_rss_mib.show(1.0, 1),
        out.index_rss_mib.show(1.0, 1),
        out.refresh_cpu_ms.show(1.0, 2)
    ));
    ctx.log(&format!(
        "  record: ready {} ms with {} pods named ({} ms without pods); RSS {} MiB, peak {} \
         ({} / {} MiB without)",
        out.record.startup_ms.show(1.0, 0),
        out.record.named,
        out.record.startup_ms_without.show(1.0, 0),
        out.record.rss_mib.show(1.0, 1),
        out.record.hwm_mib.show(1.0, 1),
        out.record.rss_mib_without.show(1.0, 1),
        out.record.hwm_mib_without.show(1.0, 1),
    ));
    Ok(out)
}

/// One `record` on the node's first veth: start-up to the ready file, memory two intervals
/// in, the pods `meta` counted. `logs`: where the layout's pod names are (`None`: a directory
/// that does not exist, so no source names anything).
fn record_once(ctx: &Ctx, node: &Node, logs: Option<&Path>) -> anyhow::Result<RecordRun> {
    let ready = node.root.join("record.ready");
    let out = node.root.join("record.jsonl");
    let _ = fs::remove_file(&ready);
    let pod_logs = logs.map_or_else(|| node.root.join("no-pods"), Path::to_path_buf);
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(&ctx.vxprobe)
        .args([
            "record",
            "-i",
            "vp0",
            "--cri-socket",
            "none",
            "--stats-interval",
            "500ms",
        ])
        .arg("--ready-file")
        .arg(&ready)
        .arg("-o")
        .arg(&out)
        .env("VXPROBE_POD_LOGS", &pod_logs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning vxprobe record")?;
    let pid = child.id();
    let deadline = started + Duration::from_secs(60);
    while !ready.exists() {
        if let Some(status) = child.try_wait()? {
            bail!("vxprobe record exited before it was ready ({status})");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("vxprobe record not ready after 60 s");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let startup = started.elapsed();
    // Two intervals: the hop lines of the first ones written, every buffer warm.
    let hops = |text: &str| {
        text.lines()
            .filter(|l| l.contains("\"kind\":\"hop\""))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while hops(&fs::read_to_string(&out).unwrap_or_default()) < 4 {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("vxprobe record wrote no two intervals in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let memory = procfs::memory(pid)?;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    child.wait()?;
    let text = fs::read_to_string(&out)?;
    let meta: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or("{}"))?;
    let named = meta["pods"]["count"].as_u64().unwrap_or(0) as usize;
    Ok(RecordRun {
        startup_ms: startup.as_secs_f64() * 1e3,
        rss: memory.rss,
        hwm: memory.hwm,
        named,
    })
}

/// What one `record` start showed.
struct RecordRun {
    startup_ms: f64,
    rss: u64,
    hwm: u64,
    named: usize,
}

/// `record` with the pods and without, interleaved.
fn record_arms(ctx: &Ctx, node: &Node, logs: &Path, runs: usize) -> anyhow::Result<RecordArms> {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        with.push(record_once(ctx, node, Some(logs))?);
        without.push(record_once(ctx, node, None)?);
    }
    let named = with.iter().map(|r| r.named).min().unwrap_or(0);
    if named < PODS {
        bail!("record's meta counted {named} pods of {PODS}");
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let dist = |arm: &[RecordRun], f: &dyn Fn(&RecordRun) -> f64| {
        Dist::of(&arm.iter().map(f).collect::<Vec<_>>())
    };
    Ok(RecordArms {
        runs,
        named,
        startup_ms: dist(&with, &|r| r.startup_ms),
        startup_ms_without: dist(&without, &|r| r.startup_ms),
        rss_mib: dist(&with, &|r| mib(r.rss)),
        rss_mib_without: dist(&without, &|r| mib(r.rss)),
        hwm_mib: dist(&with, &|r| mib(r.hwm)),
        hwm_mib_without: dist(&without, &|r| mib(r.hwm)),
    })
}

/// `vxprobe-bench pods-child LOGS N STEADY_SECONDS`, run inside the lab node's namespace:
/// starts the index from the layout, waits for N pods and N veths, measures, prints JSON.
pub fn child(args: &[String]) -> anyhow::Result<()> {
    let [logs, expected, steady] = args else {
        bail!("usage: vxprobe-bench pods-child LOGS N STEADY_SECONDS");
    };
    let expected: usize = expected.parse()?;
    let steady: u64 = steady.parse()?;
    let me = std::process::id();
    let rss_before = procfs::memory(me)?.rss;
    let cpu_before = procfs::cpu_time(me)?;
    let start = Instant::now();
    let index = PodIndex::start(PodConfig {
        cri: CriSocket::Off,
        pod_logs: logs.into(),
        ..PodConfig::default()
    })?;
    let deadline = start + Duration::from_secs(120);
    loop {
        let snapshot = index.snapshot();
        if snapshot.len() >= expected && snapshot.devices().count() >= expected {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after 120 s: {} pods, {} devices named (of {expected}); error {:?}",
                snapshot.len(),
                snapshot.devices().count(),
                snapshot.error()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let startup = start.elapsed();
    let startup_cpu = procfs::cpu_time(me)? - cpu_before;
    let rss_after = procfs::memory(me)?.rss;
    let cpu_steady = procfs::cpu_time(me)?;
    std::thread::sleep(Duration::from_secs(steady));
    let refresh_cpu = procfs::cpu_time(me)? - cpu_steady;
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe { libc::malloc_trim(0) };
    let rss_trimmed = procfs::memory(me)?.rss;
    let report = ChildReport {
        startup_ms: startup.as_secs_f64() * 1e3,
        startup_cpu_ms: startup_cpu.as_secs_f64() * 1e3,
        rss_before,
        rss_after,
        rss_trimmed,
        refresh_cpu_ms: refresh_cpu.as_secs_f64() * 1e3 / steady as f64,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
