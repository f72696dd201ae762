//! Bad input and missing privileges: every invalid invocation exits 2 with one line on stderr
//! naming the problem; missing capabilities exit 1 naming them; a node without BTF or tracefs
//! gets a message and fewer signals, never a panic.

mod common;

use std::process::{Command, Output};

use common::{VXPROBE, is_root};
use vxprobe::lab::{Lab, LabOptions};

/// Runs vxprobe inside `netns` when given (so an invocation that wrongly passed validation
/// could only ever touch a lab), else as it is.
fn vxprobe(netns: Option<&str>, wrapper: &[&str], args: &[&str]) -> Output {
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]);
            cmd.args(wrapper);
            cmd.arg(VXPROBE);
            cmd
        }
        None if wrapper.is_empty() => Command::new(VXPROBE),
        None => {
            let mut cmd = Command::new(wrapper[0]);
            cmd.args(&wrapper[1..]);
            cmd.arg(VXPROBE);
            cmd
        }
    };
    cmd.args(args).output().expect("running vxprobe")
}

#[test]
fn every_bad_invocation_exits_2_with_one_line_naming_the_problem() {
    let lab = is_root().then(|| Lab::build(&LabOptions::default()).expect("building the lab"));
    let ns = lab.as_ref().map(|l| l.nodes[0].netns.as_str());
    let dir = std::env::temp_dir().join(format!("vxprobe-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let same = dir.join("same");
    let same = same.to_str().unwrap();
    let dir_s = dir.to_str().unwrap();
    // Links planted where root will write: their target must stay as it is.
    let target = dir.join("precious");
    std::fs::write(&target, b"keep me").unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let link = link.to_str().unwrap();
    let hard = dir.join("hard");
    std::fs::hard_link(&target, &hard).unwrap();
    let hard = hard.to_str().unwrap();
    let out = dir.join("out.jsonl");
    let out = out.to_str().unwrap();
    let dot_out = format!("{dir_s}/./out.jsonl");
    let cases: &[(&[&str], &str)] = &[
        (&[], "command"),
        (&["frobnicate"], "frobnicate"),
        (&["record", "--bogus-flag"], "--bogus-flag"),
        (&["record", "stray"], "stray"),
        (&["record", "-i", "nosuchdev"], "nosuchdev"),
        (&["record", "-i", ""], "empty interface name"),
        (&["record", "-i", "a-name-of-sixteen"], "a-name-of-sixteen"),
        (&["record", "-i", "cali["], "cali["),
        (&["record", "--duration", "tenseconds"], "tenseconds"),
        (&["record", "--duration", "0s"], "0s"),
        (&["record", "--duration", "100000000000y"], "100000000000y"),
        (
            &["record", "--duration", "5s", "--duration", "6s"],
            "--duration",
        ),
        (&["record", "--stats-interval", "1ns"], "1ns"),
        (&["record", "--stats-interval", "2d"], "2d"),
        (&["record", "--host", "300.1.1.1"], "300.1.1.1"),
        (&["record", "--port", "0"], "--port"),
        (&["record", "--port", "70000"], "70000"),
        (&["record", "--proto", "sctp"], "sctp"),
        (&["record", "--tc-attach", "xdp"], "xdp"),
        (&["record", "--skip-hook", "uprobe"], "uprobe"),
        (&["record", "--ring-size", "1000"], "1000"),
        (&["record", "--ring-size", "4294967296"], "4294967296"),
        (&["record", "--max-flows", "10"], "--max-flows"),
        (&["record", "--snaplen", "0"], "--snaplen"),
        (&["record", "--snaplen", "129"], "129"),
        (
            &["record", "--output", "/nonexistent-dir/out.jsonl"],
            "/nonexistent-dir",
        ),
        (&["record", "--output", dir_s], dir_s),
        (
            &["record", "--pcap", "/nonexistent-dir/ev.pcapng"],
            "/nonexistent-dir",
        ),
        (&["record", "--output", same, "--pcap", same], "same file"),
        (
            &["record", "--output", out, "--pcap", &dot_out],
            "same file",
        ),
        (&["record", "--output", link], link),
        (&["record", "--output", link], "symbolic link"),
        (&["record", "--pcap", link], link),
        (&["record", "--output", hard], "hard links"),
        (&["record", "--pcap", hard], hard),
        (&["record", "--ready-file", link], "symbolic link"),
        (
            &["record", "--output", out, "--ready-file", &dot_out],
            "--ready-file",
        ),
        (
            &["record", "--pcap", out, "--ready-file", &dot_out],
            "--ready-file",
        ),
        (&["record", "--event-lines", "-1"], "-1"),
        (&["record", "--event-lines", "many"], "many"),
        (&["record", "--max-output-size", "1000"], "1000"),
        (&["record", "--max-output-size", "lots"], "lots"),
        (
            &["record", "--ready-file", "/nonexistent-dir/ready"],
            "/nonexistent-dir",
        ),
        (&["record", "--ready-file", dir_s], "directory"),
        // An explicit CRI socket must be there (the usual ones are only probed).
        (
            &["record", "--cri-socket", "/nonexistent/cri.sock"],
            "no such socket /nonexistent/cri.sock",
        ),
        (&["record", "--cri-socket", dir_s], "is not a socket"),
        (
            &["top", "--cri-socket", "/nonexistent/cri.sock"],
            "/nonexistent/cri.sock",
        ),
        (
            &[
                "doctor",
                "--watch",
                "1s",
                "--cri-socket",
                "/nonexistent/cri.sock",
            ],
            "/nonexistent/cri.sock",
        ),
        (
            &["demo", "--cri-socket", "/nonexistent/cri.sock"],
            "/nonexistent/cri.sock",
        ),
        (&["top", "--interval", "0s"], "0s"),
        (&["top", "-i", "nosuchdev"], "nosuchdev"),
        (&["doctor", "--assume-kernel", "banana"], "banana"),
        (&["doctor", "-i", "["], "["),
        (&["probes", "--skip-hook", "uprobe"], "uprobe"),
        (&["demo", "--pcap", "x.pcapng"], "--record"),
        (&["demo", "--phase", "forever"], "forever"),
        (&["agent", "--bogus-flag"], "--bogus-flag"),
        (&["agent", "--listen", "19478"], "19478"),
        (&["agent", "--listen", "localhost:19478"], "localhost"),
        (&["agent", "--listen", "127.0.0.1:0"], "port 0"),
        (&["agent", "--listen", "127.0.0.1:70000"], "70000"),
        // An address this namespace does not have (198.18.0.0/15, never routed).
        (
            &["agent", "--listen", "198.18.255.254:19478"],
            "198.18.255.254",
        ),
        (&["agent", "--node", ""], "node name"),
        (&["agent", "--flow-metrics", "0"], "--flow-metrics"),
        (&["agent", "--flow-metrics", "100000"], "100000"),
        (&["agent", "--flow-metrics", "many"], "many"),
        (&["agent", "--stats-interval", "1ns"], "1ns"),
        (&["agent", "--tc-attach", "xdp"], "xdp"),
        (&["agent", "-i", "nosuchdev"], "nosuchdev"),
        (
            &["agent", "--cri-socket", "/nonexistent/cri.sock"],
            "/nonexistent/cri.sock",
        ),
        (&["agent", "--pod-labels=yes"], "--pod-labels"),
        (&["agent", "stray"], "stray"),
    ];
    for (args, named) in cases {
        let out = vxprobe(ns, &[], args);
        common::run::assert_usage_error(&out, args, named);
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
    }
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"keep me",
        "no link was written through"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a recording creates is its owner's only (0600), the ready file appears whole under
/// its name (written beside it, then renamed) and nothing else is left in its directory.
#[test]
fn the_files_a_recording_creates_are_private() {
    if !is_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let dir = std::env::temp_dir().join(format!("vxprobe-private-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let args = [
        "record",
        "-i",
        "cali0",
        "--duration",
        "1s",
        "--stats-interval",
        "200ms",
        "-o",
        &path("rec.jsonl"),
        "--pcap",
        &path("rec.pcapng"),
        "--ready-file",
        &path("ready"),
    ];
    let out = vxprobe(Some(&lab.nodes[0].netns), &[], &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["rec.jsonl", "rec.pcapng", "ready"] {
        let mode = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    assert_eq!(std::fs::read(dir.join("ready")).unwrap(), b"ready\n");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ready", "rec.jsonl", "rec.pcapng"],
        "no temporary file left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// No capabilities at all: exit 1, one line naming the three, before anything is loaded (the
/// agent has bound its port by then: it answers probes while it attaches).
#[test]
fn without_capabilities_record_top_and_probes_exit_1_naming_them() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    let drop_all = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"];
    for args in [
        &["record", "--duration", "1s"][..],
        &["top"],
        &["probes"],
        &["agent", "--listen", "127.0.0.1:19478"],
    ] {
        let out = vxprobe(Some(ns), &drop_all, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"] {
            assert!(stderr.contains(cap), "{args:?} should name {cap}: {stderr}");
        }
    }
    // Only CAP_NET_ADMIN missing: only it is named.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "capsh",
            "--drop=cap_net_admin",
            "--",
            "-c",
        ])
        .arg(format!("exec {VXPROBE} record --duration 1s"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");
    assert!(!stderr.contains("CAP_BPF"), "{stderr}");
}

/// Runs `record` for a moment inside `netns` as a shell script after `setup`, through `shell`
/// (a command ending in `-c`: a mount namespace of its own via unshare, or fewer capabilities
/// via capsh); returns (status, stdout, stderr).
fn record_with(netns: &str, shell: &[&str], setup: &str) -> (Option<i32>, String, String) {
    let script =
        format!("{setup} exec {VXPROBE} record -i cali0 --duration 1200ms --stats-interval 300ms");
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(shell)
        .arg(&script)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// No BTF (hidden by an empty tmpfs), then no tracefs (not mounted, and no CAP_SYS_ADMIN to
/// mount it): a message naming what is missing, hops still counted, exit 0, no panic.
#[test]
fn without_btf_or_tracefs_the_recording_goes_on_and_says_why() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    let (code, stdout, stderr) = record_with(
        ns,
        &["unshare", "-m", "--", "sh", "-c"],
        "mount -t tmpfs none /sys/kernel/btf &&",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("BTF") && stderr.contains("not observed"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains("\"kind\":\"hop\""), "{stdout}");
    let meta: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let hooks = meta["hooks"].as_array().unwrap();
    assert!(!hooks.is_empty(), "{meta}");
    for hook in hooks {
        assert!(hook["hook"].is_null(), "{hook}");
        assert!(
            hook["unavailable"][0].as_str().unwrap().contains("BTF"),
            "{hook}"
        );
    }

    // `ip netns exec` mounts a fresh /sys: tracefs is not there, and without CAP_SYS_ADMIN it
    // cannot be mounted. The send hook falls down its ladder to the syscall tracepoints
    // (where fexit is refused, as here) and names each failure; where fexit works (Debian's
    // kernels) it needs no tracefs.
    let (code, stdout, stderr) =
        record_with(ns, &["capsh", "--drop=cap_sys_admin", "--", "-c"], "");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains("\"kind\":\"hop\""), "{stdout}");
    let meta: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let send = common::run::element(&meta["hooks"], "signal", "send_emsgsize");
    match send["hook"].as_str() {
        Some(hook) => assert!(hook.starts_with("fexit:"), "{meta}"),
        None => assert!(stderr.contains("tracefs is not mounted"), "{stderr}"),
    }
    for hook in meta["hooks"].as_array().unwrap() {
        if hook["hook"].is_null() {
            let signal = hook["signal"].as_str().unwrap();
            assert!(
                stderr.contains(&format!("{signal} not observed")),
                "{signal}: {stderr}"
            );
        }
    }
    let drop = common::run::element(&meta["hooks"], "signal", "drop");
    assert!(drop["hook"].is_string(), "drops still observed: {meta}");
}
