//! Soak: `record` over the lab for ten minutes (VXPROBE_SOAK_SECS) of TCP and UDP traffic, the
//! demo's faults one after another, a fresh UDP flow every few milliseconds through a small
//! flow table, a pod veth created and deleted every two seconds and `vxlan.calico` re-created
//! every thirty: the process stays up, its RSS and file descriptors stay flat. Ignored by the
//! normal run; `cargo xtask soak [--minutes N]` runs it (release build) and prints the table
//! the README shows.

mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{VXPROBE, is_root};
use vxprobe::lab::{
    Lab, LabOptions, faults,
    scenario::{Phase, Traffic},
};

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    output_bytes: u64,
}

#[test]
#[ignore = "ten minutes long: cargo xtask soak"]
fn ten_minutes_of_traffic_faults_and_churn_keep_rss_flat() {
    if !is_root() {
        return;
    }
    let total = Duration::from_secs(
        std::env::var("VXPROBE_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    );
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let n1 = &lab.nodes[0];
    let _traffic = Traffic::start(&lab).expect("iperf3 between the pods");
    let dir = std::env::temp_dir();
    let output: PathBuf = dir.join(format!("vxprobe-soak-{}.jsonl", std::process::id()));
    let ready = dir.join(format!("vxprobe-soak-{}.ready", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &n1.netns, VXPROBE, "record", "-i", "*"])
        .args(["--stats-interval", "1s", "--max-flows", "1024", "-o"])
        .arg(&output)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning vxprobe");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "vxprobe not ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut phase: Option<Phase> = None;
    let mut veth: Option<String> = None;
    let mut second = 0u64;
    let mut port = 10_000u16;
    eprintln!(
        "{:>6} {:>9} {:>5} {:>10}",
        "t (s)", "RSS KiB", "fds", "output KiB"
    );
    while started.elapsed() < total {
        let tick = started + Duration::from_secs(second);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("vxprobe exited during the soak: {status}");
        }
        // The demo's faults, 20 s each, round and round.
        let now_phase = Phase::ALL[(second / 20) as usize % Phase::ALL.len()];
        if phase != Some(now_phase) {
            if let Some(old) = phase {
                old.stop(&lab).expect("ending a fault");
            }
            now_phase.start(&lab).expect("starting a fault");
            phase = Some(now_phase);
        }
        now_phase.tick(&lab).expect("feeding a fault");
        // New flows all the time, through a table of 1024: evictions.
        for _ in 0..40 {
            port = if port >= 60_000 { 10_000 } else { port + 1 };
            lab.pod_datagrams(port, 64, 1, faults::Df::Default)
                .expect("udp");
        }
        // A pod veth every 2 s, the previous one deleted: device churn at the glob.
        if second.is_multiple_of(2) {
            if let Some(old) = veth.take() {
                let _ = Lab::exec(&n1.netns, "ip", &["link", "del", &old]);
            }
            let k = (second / 2) % 50;
            let name = format!("cali9{k:02}");
            lab.add_veth(0, &name, &format!("vxp9{k:02}"), 40 + k as u8)
                .expect("adding a veth");
            veth = Some(name);
        }
        // The overlay itself, re-created every 30 s.
        if second % 30 == 15 {
            lab.recreate_vxlan(0).expect("re-creating vxlan.calico");
        }
        if second.is_multiple_of(10) {
            let sample = Sample {
                at: started.elapsed(),
                rss_kib: status_kib(pid, "VmRSS:"),
                fds: fds(pid),
                output_bytes: std::fs::metadata(&output).map_or(0, |m| m.len()),
            };
            eprintln!(
                "{:>6} {:>9} {:>5} {:>10}",
                sample.at.as_secs(),
                sample.rss_kib,
                sample.fds,
                sample.output_bytes / 1024
            );
            samples.push(sample);
        }
        second += 1;
    }
    if let Some(old) = phase {
        old.stop(&lab).expect("ending a fault");
    }
    let peak_kib = status_kib(pid, "VmHWM:");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let _ = std::fs::remove_file(&ready);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");

    // The output is large (every oversize packet of the MTU phase is a line): stream it.
    let file = std::fs::File::open(&output).unwrap();
    let (mut lines, mut added, mut removed, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut summary = serde_json::Value::Null;
    for line in std::io::BufRead::lines(std::io::BufReader::new(file)) {
        let line = line.unwrap();
        lines += 1;
        bytes += line.len() as u64 + 1;
        let value: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        match value["kind"].as_str() {
            Some("device") if value["event"] == "added" => added += 1,
            Some("device") => removed += 1,
            Some("summary") => summary = value,
            _ => {}
        }
    }
    let _ = std::fs::remove_file(&output);
    assert_eq!(summary["kind"], "summary", "the last line is the summary");

    // Flat: after a minute of warm-up (maps read, caches filled), RSS and descriptors do not
    // grow with time.
    let warm = samples
        .iter()
        .find(|s| s.at >= Duration::from_secs(60.min(total.as_secs() / 2)))
        .expect("a sample after warm-up");
    let last = samples.last().unwrap();
    let max_after = samples
        .iter()
        .filter(|s| s.at >= warm.at)
        .map(|s| s.rss_kib)
        .max()
        .unwrap();
    eprintln!("\nRSS over time (KiB), every minute:");
    eprintln!("| t (min) | RSS (MiB) | open fds |");
    eprintln!("| --- | --- | --- |");
    for s in samples.iter().filter(|s| s.at.as_secs() % 60 < 10) {
        eprintln!(
            "| {} | {:.1} | {} |",
            s.at.as_secs() / 60,
            s.rss_kib as f64 / 1024.0,
            s.fds
        );
    }
    eprintln!(
        "\n{} s: RSS {} KiB after warm-up, {} KiB at the end, {} KiB at most after warm-up \
         (peak {} KiB); fds {} -> {}; {} devices added and {} removed; {} evicted, {} lost; \
         {} lines, {} KiB",
        total.as_secs(),
        warm.rss_kib,
        last.rss_kib,
        max_after,
        peak_kib,
        warm.fds,
        last.fds,
        added,
        removed,
        summary["evicted"],
        summary["lost"],
        lines,
        bytes / 1024
    );
    assert!(
        last.rss_kib <= warm.rss_kib + warm.rss_kib / 10 + 2048,
        "RSS grew from {} to {} KiB",
        warm.rss_kib,
        last.rss_kib
    );
    assert!(
        last.fds <= warm.fds + 4,
        "fds grew from {} to {}",
        warm.fds,
        last.fds
    );
    assert!(added >= total.as_secs() / 2 - 2, "{added} devices added");
    assert!(
        summary["evicted"].as_u64().unwrap() > 0,
        "the flow table was never full"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
