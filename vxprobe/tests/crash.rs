//! Crash safety and coexistence: after SIGKILL nothing of vxprobe stays attached (TCX links go
//! with the process; clsact filters are removed by the next start, only vxprobe's), and two
//! vxprobe instances on the same devices do not disturb each other.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{Recorder, hop_totals, is_root, loaded, programs_of, still_loaded, tc};
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, TAP_DEV, UNDERLAY_DEV, VXLAN_DEV};

const DEVICES: [&str; 4] = [POD_HOST_DEV, VXLAN_DEV, UNDERLAY_DEV, TAP_DEV];

/// The TC filters of the lab devices in `netns`, and what `bpftool net show` lists there.
fn filters(netns: &str) -> String {
    let mut seen = String::new();
    for dev in DEVICES {
        for dir in ["ingress", "egress"] {
            let tc = Command::new("tc")
                .args(["-n", netns, "filter", "show", "dev", dev, dir])
                .output()
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&tc.stdout));
        }
    }
    let net = vxprobe::lab::Lab::exec(netns, "bpftool", &["net", "show"]).unwrap();
    seen.push_str(&String::from_utf8_lossy(&net.stdout));
    seen
}

#[test]
fn after_sigkill_in_tcx_mode_nothing_stays_attached() {
    if !is_root() || !common::has_tcx() {
        return;
    }
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let ns = &lab.nodes[0].netns;
    let rec = Recorder::start(ns, &["--tc-attach", "tcx", "-i", "*"]);
    let ours = programs_of(rec.pid());
    let names: Vec<String> = loaded(&ours).into_iter().map(|(_, name, _)| name).collect();
    assert!(
        names.iter().any(|n| n.starts_with("vxprobe_tc_ingr")),
        "{names:?}"
    );
    rec.kill();
    let left = still_loaded(&ours);
    assert!(left.is_empty(), "still loaded after SIGKILL: {left:?}");
    let filters = filters(ns);
    assert!(!filters.contains("vxprobe"), "{filters}");
}

#[test]
fn after_sigkill_in_clsact_mode_the_next_start_removes_only_vxprobes_filters() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    // Another tool's filters on the hooks vxprobe shares: a BPF one and a u32 one.
    // A BPF classifier of "another tool" (TC_ACT_UNSPEC: pass on), pinned for
    // `tc ... object-pinned`.
    let program = tc::load_verdict("othertool_tc", -1, false)
        .unwrap_or_else(|e| panic!("BPF_PROG_LOAD othertool_tc: {e}"));
    let foreign = tc::PinnedProgram::pin("othertool_tc", &program);
    tc::add_clsact(ns, POD_HOST_DEV);
    tc::add_filter(
        ns,
        POD_HOST_DEV,
        "egress",
        "20",
        &["bpf", "da", "object-pinned", foreign.path()],
    );
    // Matches nothing: packets pass on as if it were not there.
    tc::add_filter(
        ns,
        POD_HOST_DEV,
        "ingress",
        "30",
        &["u32", "match", "u32", "0xffffffff", "0xffffffff", "at", "0"],
    );
    let foreign_before = filters(ns);
    assert!(foreign_before.contains("othertool_tc") || foreign_before.contains("bpf"));
    assert!(foreign_before.contains("u32"), "{foreign_before}");

    let rec = Recorder::start(ns, &["--tc-attach", "clsact", "-i", "*"]);
    let killed = programs_of(rec.pid());
    rec.kill();
    // The kernel keeps clsact filters: they belong to the device, not the process, and they
    // hold the killed instance's TC programs.
    let stale = filters(ns);
    assert!(stale.contains("vxprobe_tc_ingress"), "{stale}");
    assert!(!loaded(&killed).is_empty());

    // The next start: none of the killed instance's programs may be left in a filter (with
    // TCX, no vxprobe filter at all; before 6.6 the new instance has its own).
    let next_mode = if common::has_tcx() { "tcx" } else { "clsact" };
    let rec = Recorder::start(ns, &["--tc-attach", next_mode, "-i", "*"]);
    let during = filters(ns);
    let stale: Vec<u64> = program_ids_in(&during)
        .filter(|id| killed.contains(id))
        .collect();
    assert!(stale.is_empty(), "stale filters {stale:?} left:\n{during}");
    if next_mode == "tcx" {
        assert!(!during.contains("vxprobe"), "stale filters left:\n{during}");
    }
    assert!(
        during.contains("u32"),
        "another tool's filter removed:\n{during}"
    );
    assert!(
        during.matches("bpf").count() >= foreign_before.matches("bpf").count(),
        "another tool's BPF filter removed:\n{foreign_before}\n---\n{during}"
    );
    let second = programs_of(rec.pid());
    let lines = rec.stop();
    assert!(lines.iter().any(|l| l["kind"] == "hop"));
    let left = still_loaded(&[killed, second].concat());
    assert!(left.is_empty(), "{left:?}");
    let after = filters(ns);
    assert!(
        after.contains("u32") && !after.contains("vxprobe"),
        "{after}"
    );
}

/// The program ids `tc filter show` (`id N`) and `bpftool net show` (`prog_id N`) name.
fn program_ids_in(listing: &str) -> impl Iterator<Item = u64> + '_ {
    let words: Vec<&str> = listing.split_whitespace().collect();
    words
        .windows(2)
        .filter(|pair| pair[0] == "id" || pair[0] == "prog_id")
        .filter_map(|pair| pair[1].parse().ok())
        .collect::<Vec<u64>>()
        .into_iter()
}

/// Waits (up to 30 s) until process `pid` is vxprobe and catches SIGTERM.
fn wait_until_catching_sigterm(pid: u32) -> bool {
    for _ in 0..3000 {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        if comm.trim() == "vxprobe" && caught & (1 << (libc::SIGTERM - 1)) != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Pings from pod 1 to pod 2: at node 1, cali0 sees every request at ingress and every reply
/// at egress (static neighbours, no IPv6: nothing else crosses it).
fn ping(lab: &Lab, count: u64) {
    common::ping(
        &lab.nodes[0].pod.netns,
        count,
        &lab.nodes[1].pod.ip.to_string(),
    );
}

#[test]
fn two_recorders_on_the_same_devices_count_exactly_and_independently() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    let modes: &[&str] = if common::has_tcx() {
        &["tcx", "clsact"]
    } else {
        &["clsact"]
    };
    for &mode in modes {
        let args = ["--tc-attach", mode, "--stats-interval", "200ms", "-i", "*"];
        let first = Recorder::start(ns, &args);
        // The second start must not take the first one's clsact filters for stale ones.
        let second = Recorder::start(ns, &args);
        let ids = [programs_of(first.pid()), programs_of(second.pid())].concat();
        ping(&lab, 10);
        let first_lines = first.stop();
        ping(&lab, 7);
        // A ping's request and reply crossed cali0 before it returned: counted already, and
        // stopping reads the counters.
        let second_lines = second.stop();
        for (who, lines, expected) in [("first", &first_lines, 10), ("second", &second_lines, 17)] {
            let packets = hop_totals(lines, "packets");
            for dir in ["ingress", "egress"] {
                assert_eq!(
                    packets.get(&(POD_HOST_DEV.to_owned(), dir.to_owned())),
                    Some(&expected),
                    "{mode}: the {who} recorder at {POD_HOST_DEV} {dir}: {packets:?}"
                );
            }
        }
        let left = still_loaded(&ids);
        assert!(left.is_empty(), "{mode}: {left:?}");
    }
}

/// SIGTERM while vxprobe is still attaching (loading, BTF, hook ladders take a moment): the
/// recording ends at the next step of the start (or at once if it has started), exit 0, its
/// summary written, everything detached, also in clsact mode.
#[test]
fn sigterm_while_attaching_ends_cleanly() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    for delay_ms in [0, 250] {
        let child = common::run::record_command(ns)
            .args(["--tc-attach", "clsact"])
            .args(["-i", "*"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // From when vxprobe handles SIGTERM (before it loads anything): fixed delays from
        // the spawn would hit `ip netns exec` itself on a slow machine.
        let catching = wait_until_catching_sigterm(child.id());
        assert!(catching, "vxprobe never installed its SIGTERM handler");
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "after {delay_ms} ms: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("\"kind\":\"summary\""), "{stdout}");
        let filters = filters(ns);
        assert!(
            !filters.contains("vxprobe"),
            "after {delay_ms} ms:\n{filters}"
        );
    }
}

/// A recorder in a PID namespace of its own (`unshare -p`: a pod without hostPID) cannot see
/// the process that holds another instance's clsact filters: it must report them and leave
/// them, and the live instance keeps counting.
#[test]
fn cleanup_in_a_pid_namespace_of_its_own_leaves_a_live_instances_filters() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    let mut live = Recorder::start(
        ns,
        &[
            "--tc-attach",
            "clsact",
            "--stats-interval",
            "200ms",
            "-i",
            POD_HOST_DEV,
        ],
    );
    let ids = programs_of(live.pid());
    // Each filter's program id, once (tc and bpftool both list it).
    let on_hooks = |listing: &str| -> std::collections::BTreeSet<u64> {
        program_ids_in(listing)
            .filter(|id| ids.contains(id))
            .collect()
    };
    assert_eq!(on_hooks(&filters(ns)).len(), 2, "{}", filters(ns));
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "unshare", "-p", "-f", "--mount-proc"])
        .args([
            common::VXPROBE,
            "record",
            "--tc-attach",
            "clsact",
            "-i",
            POD_HOST_DEV,
        ])
        .args(["--duration", "1s", "--stats-interval", "300ms"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("may be stale") && stderr.contains("PID namespace"),
        "reported, with why: {stderr}"
    );
    assert!(!stderr.contains("removed"), "{stderr}");
    let after = filters(ns);
    assert_eq!(
        on_hooks(&after).len(),
        2,
        "the live instance's filters: {after}"
    );
    let started = common::ts_now();
    ping(&lab, 10);
    live.wait_intervals_after(&started, 2);
    let lines = live.stop();
    let counted = hop_totals(&lines, "packets");
    assert!(
        counted[&(POD_HOST_DEV.to_owned(), "ingress".to_owned())] >= 10,
        "the live instance still counts: {counted:?}"
    );
}

/// Holds `/run/vxprobe/tc.lock` as another instance would, until dropped.
fn hold_tc_lock() -> std::fs::File {
    use std::os::fd::AsRawFd as _;
    std::fs::create_dir_all("/run/vxprobe").unwrap();
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(vxprobe::kernel::stale::LOCK_PATH)
        .unwrap();
    // Another instance (of another test, elsewhere on the machine) may hold it a moment.
    // SAFETY: flock(2) on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    lock
}

/// Waits until process `pid` has the lock file open (it is waiting for the lock).
fn wait_for_lock_waiter(pid: u32) {
    let holds_lock = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|t| t.as_os_str() == vxprobe::kernel::stale::LOCK_PATH)
                })
            })
            .unwrap_or(false)
    };
    common::wait_until(
        "the recorder waiting on the lock",
        Duration::from_secs(30),
        holds_lock,
        |open| *open,
    );
}

/// Instances serialize cleanup and attach with a lock under /run: while another holds
/// `/run/vxprobe/tc.lock`, a starting recorder waits on it and attaches nothing; once it is
/// released, the recorder attaches and becomes ready.
#[test]
fn starting_instances_take_the_lock_before_cleanup_and_attach() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    let lock = hold_tc_lock();
    let ready = std::env::temp_dir().join(format!("vxprobe-lock-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut waiting = common::run::record_command(ns)
        .args(["--tc-attach", "clsact"])
        .args(["-i", POD_HOST_DEV, "-o", "/dev/null", "--ready-file"])
        .arg(&ready)
        .spawn()
        .unwrap();
    let pid = waiting.id();
    wait_for_lock_waiter(pid);
    assert!(!ready.exists(), "ready while another holds the lock");
    let before = filters(ns);
    assert!(
        !before.contains("vxprobe"),
        "attached while another holds the lock: {before}"
    );
    drop(lock);
    common::wait_until(
        "the recorder ready once the lock is free",
        Duration::from_secs(30),
        || ready.exists(),
        |ready| *ready,
    );
    assert!(filters(ns).contains("vxprobe_tc"), "{}", filters(ns));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(waiting.wait().unwrap().success());
    let _ = std::fs::remove_file(&ready);
}

/// A signal while starting ends the start at its next step, with exit 0 and nothing attached:
/// here the step is waiting for another instance's lock (up to 30 s), which a recorder
/// interrupted there gives up at once. (A signal during a program load is held back until the
/// load ends; only kernels before 6.4 show what that prevents, so `sigterm_while_attaching`
/// guards it in the 6.1 and 5.10 guests, where it hung for 25 minutes without it.)
#[test]
fn a_signal_while_starting_ends_the_start_without_attaching() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    let lock = hold_tc_lock();
    // A duration bounds a recorder this test would leave behind if it failed early.
    let waiting = common::run::record_command(ns)
        .args(["--tc-attach", "clsact", "-i", POD_HOST_DEV, "-o", "-"])
        .args(["--duration", "300s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lock_waiter(waiting.id());
    let signalled = std::time::Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(waiting.id() as i32, libc::SIGTERM) };
    let out = waiting.wait_with_output().unwrap();
    let waited = signalled.elapsed();
    // The lock is still ours: the recorder ended without it.
    drop(lock);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("stopped by a signal while starting"),
        "not stopped while starting: {stderr}"
    );
    // A recorder that waited out the lock (30 s, counted from before we saw it waiting)
    // ends about 30 s after the signal; one that saw the signal ends at once.
    assert!(
        waited < Duration::from_secs(20),
        "waited out the lock ({waited:?} after the signal) before stopping: {stderr}"
    );
    eprintln!("stopped {waited:?} after the signal");
    // Still a recording: its summary, of nothing.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0]["kind"], "summary", "{stdout}");
    assert_eq!(lines[0]["intervals"], 0, "{stdout}");
    let after = filters(ns);
    assert!(!after.contains("vxprobe"), "attached: {after}");
}
