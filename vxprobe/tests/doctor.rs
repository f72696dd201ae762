//! `vxprobe doctor` in the lab: each misconfiguration is made for real (ip, ethtool, a program
//! holding the tap like a user-space engine does), and `doctor --json`, run inside the node's
//! namespace, must name it with its code on the right device; a clean lab gives no finding.

mod common;

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
};

use common::{VXPROBE, is_root, must};
use serde_json::Value;
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, TAP_DEV, UNDERLAY_DEV, VXLAN_DEV};

/// Runs `vxprobe doctor ARGS` in `netns`: exit status, stdout, stderr.
fn doctor_raw(netns: &str, args: &[&str]) -> (i32, String, String) {
    doctor_env(netns, args, &[])
}

fn doctor_env(netns: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, VXPROBE, "doctor"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running vxprobe doctor");
    (
        out.status.code().expect("vxprobe killed by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vxprobe doctor --json ARGS` in `netns`, which must succeed.
fn doctor(netns: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend(args);
    let (code, stdout, stderr) = doctor_raw(netns, &all);
    assert_eq!(code, 0, "doctor exited {code}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn findings(report: &Value) -> &Vec<Value> {
    report["findings"].as_array().expect("findings is an array")
}

/// The one finding with `code` on `ifname`; fails listing them all otherwise.
fn finding<'a>(report: &'a Value, ifname: &str, code: &str) -> &'a Value {
    let matching: Vec<&Value> = findings(report)
        .iter()
        .filter(|f| f["ifname"] == ifname && f["code"] == code)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one {code} on {ifname}, findings: {:#}",
        report["findings"]
    );
    let f = matching[0];
    for field in ["severity", "message", "fix", "evidence"] {
        assert!(
            f.get(field).is_some_and(|v| !v.is_null()),
            "finding lacks {field}: {f}"
        );
    }
    f
}

fn codes(report: &Value) -> Vec<(String, String)> {
    findings(report)
        .iter()
        .map(|f| {
            (
                f["ifname"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn device<'a>(report: &'a Value, ifname: &str) -> &'a Value {
    report["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["ifname"] == ifname)
        .unwrap_or_else(|| panic!("no device {ifname} in {:#}", report["devices"]))
}

const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;

/// A program holding the lab's tap open, as QEMU, OVS or Suricata's tap does: the tap gets a
/// carrier, and the offloads the program asks for with TUNSETOFFLOAD (checksum and TSO, like a
/// virtio-net backend). Closing the file detaches it.
struct TapEngine(#[allow(dead_code, reason = "held for its fd")] File);

impl TapEngine {
    fn attach(netns: &str, name: &str) -> TapEngine {
        let path = format!("/run/netns/{netns}");
        let name = name.to_owned();
        // A thread of its own enters the namespace (setns moves only the calling thread) and
        // ends once the tap is open: the file descriptor belongs to the whole process.
        let file = std::thread::spawn(move || -> io::Result<File> {
            let ns = File::open(&path)?;
            // SAFETY: setns(2) on a namespace fd we own; it changes only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let tun = common::open_tap(&name, libc::IFF_TAP | libc::IFF_NO_PI)?;
            let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
            // SAFETY: TUNSETOFFLOAD takes its argument by value; nothing is dereferenced.
            if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETOFFLOAD, offloads) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(tun)
        })
        .join()
        .expect("tap thread panicked")
        .unwrap_or_else(|e| panic!("attaching to {TAP_DEV} in {netns}: {e}"));
        TapEngine(file)
    }
}

#[test]
fn a_clean_lab_has_no_findings_and_reports_the_facts() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    for node in [n1, n2] {
        let report = doctor(&node.netns, &[]);
        assert_eq!(codes(&report), Vec::<(String, String)>::new(), "{report:#}");
    }
    // With an engine on the tap (carrier, offloads set by the program): still nothing.
    let _engine = TapEngine::attach(&n1.netns, TAP_DEV);
    let report = doctor(&n1.netns, &[]);
    assert_eq!(codes(&report), Vec::<(String, String)>::new(), "{report:#}");

    // The facts behind it, as the kernel has them.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(report["kernel"], release.trim());
    let vxlan = device(&report, VXLAN_DEV);
    assert_eq!(vxlan["kind"], "vxlan");
    assert_eq!(vxlan["role"], "overlay");
    assert_eq!(vxlan["mtu"], 1450);
    let tunnel = &vxlan["tunnel"];
    assert_eq!(tunnel["vni"], 4096);
    assert_eq!(tunnel["port"], 4789);
    assert_eq!(tunnel["lower"], UNDERLAY_DEV);
    assert_eq!(tunnel["local"], n1.underlay_ip.to_string());
    assert_eq!(tunnel["fdb_remotes"][0], n2.underlay_ip.to_string());
    assert_eq!(tunnel["underlay"], UNDERLAY_DEV);
    assert_eq!(tunnel["underlay_mtu"], 1500);
    assert_eq!(tunnel["overhead"], 50);
    assert!(tunnel["udp_csum"].is_boolean(), "{tunnel}");
    assert_eq!(vxlan["features"]["tx-checksumming"]["on"], true);
    assert_eq!(vxlan["features"]["tx-tcp-segmentation"]["on"], true);
    assert_eq!(device(&report, UNDERLAY_DEV)["role"], "underlay");
    assert_eq!(device(&report, POD_HOST_DEV)["role"], "pod");
    let tap = device(&report, TAP_DEV);
    assert_eq!(tap["kind"], "tap");
    assert_eq!(tap["carrier"], true);
    assert_eq!(tap["features"]["tx-tcp-segmentation"]["on"], true);
    assert!(
        report["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["kind"] != "loopback")
    );

    // The plain report says so too, and exits 0.
    let (code, text, stderr) = doctor_raw(&n1.netns, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(text.contains("no findings"), "{text}");
    assert!(text.contains(VXLAN_DEV), "{text}");
}

#[test]
fn overlay_mtu_above_underlay_minus_vxlan_overhead() {
    // vxlan.calico as Calico makes it on real nodes: a `local` address and no `dev`, so the
    // kernel lets its MTU exceed what the underlay carries; the underlay is found by routing.
    let Some(lab) = common::lab::root_lab_with(LabOptions {
        vxlan_lower_dev: false,
        ..LabOptions::default()
    }) else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    assert_eq!(codes(&doctor(ns, &[])), Vec::<(String, String)>::new());
    must(ns, "ip", &["link", "set", VXLAN_DEV, "mtu", "1500"]);
    let report = doctor(ns, &[]);
    let f = finding(&report, VXLAN_DEV, "overlay-mtu-too-large");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["evidence"]["underlay"], UNDERLAY_DEV);
    assert_eq!(f["evidence"]["underlay_from"], "route_to_remote");
    assert_eq!(f["evidence"]["underlay_mtu"], 1500);
    assert_eq!(f["evidence"]["max_mtu"], 1450);
    assert!(f["fix"].as_str().unwrap().contains("mtu 1450"), "{f}");
    // The pods still have 1450: smaller than the overlay now, worth knowing only.
    assert_eq!(
        finding(&report, POD_HOST_DEV, "pod-mtu-mismatch")["severity"],
        "info"
    );
    assert_eq!(codes(&report).len(), 2, "{report:#}");

    // The same mistake from the other side, with `dev eth0`: the underlay's MTU lowered
    // after the tunnel was made (the kernel caps the overlay's MTU only when it is set).
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let ns = &lab.nodes[1].netns;
    must(ns, "ip", &["link", "set", UNDERLAY_DEV, "mtu", "1400"]);
    let report = doctor(ns, &[]);
    let f = finding(&report, VXLAN_DEV, "overlay-mtu-too-large");
    assert_eq!(f["evidence"]["underlay_from"], "lower_device");
    assert_eq!(f["evidence"]["max_mtu"], 1350);
    assert_eq!(codes(&report).len(), 1, "{report:#}");
}

#[test]
fn a_tunnel_without_lower_device_is_judged_against_its_route_or_local_address() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let ns = &n1.netns;
    let local = n1.underlay_ip.to_string();
    // As Calico makes it on a real node: `local` only, no `dev`, MTU too large for eth0.
    must(
        ns,
        "ip",
        &[
            "link",
            "add",
            "vx1",
            "mtu",
            "1480",
            "type",
            "vxlan",
            "id",
            "7",
            "dstport",
            "4790",
            "local",
            &local,
            "nolearning",
        ],
    );
    let report = doctor(ns, &["-i", "vx1"]);
    let f = finding(&report, "vx1", "overlay-mtu-too-large");
    assert_eq!(f["evidence"]["underlay"], UNDERLAY_DEV);
    assert_eq!(f["evidence"]["underlay_from"], "local_address");
    // A remote VTEP in the forwarding database: the route to it decides.
    must(
        ns,
        "bridge",
        &[
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx1",
            "dst",
            &n2.underlay_ip.to_string(),
        ],
    );
    let report = doctor(ns, &["-i", "vx1"]);
    let f = finding(&report, "vx1", "overlay-mtu-too-large");
    assert_eq!(f["evidence"]["underlay_from"], "route_to_remote");
    // `-i` limits the output to the selected devices.
    assert_eq!(report["devices"].as_array().unwrap().len(), 1);
}

#[test]
fn tx_checksum_off_on_vxlan_calico_names_felix() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    must(ns, "ethtool", &["-K", VXLAN_DEV, "tx", "off"]);
    let report = doctor(ns, &[]);
    let f = finding(&report, VXLAN_DEV, "vxlan-tx-csum-off");
    assert_eq!(f["severity"], "warning");
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("FELIX_FEATUREDETECTOVERRIDE=ChecksumOffloadBroken=false"),
        "{f}"
    );
    // TSO went off with it, though it is still requested: the evidence shows why.
    assert_eq!(
        f["evidence"]["features"]["tx-tcp-segmentation"],
        "off [requested on]"
    );
    assert_eq!(f["evidence"]["features"]["tx-checksum-ip-generic"], "off");
    assert_eq!(codes(&report).len(), 1, "{report:#}");
}

#[test]
fn an_old_kernel_with_tx_checksum_on_hits_the_nat_checksum_bug() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    // The lab's devices as they are; the kernel judged as incident #3's.
    let report = doctor(ns, &["--assume-kernel", "4.19.0-17-amd64"]);
    assert_eq!(report["kernel"], "4.19.0-17-amd64");
    let f = finding(&report, VXLAN_DEV, "vxlan-csum-nat-bug");
    assert!(f["message"].as_str().unwrap().contains("63 seconds"), "{f}");
    assert_eq!(f["evidence"]["features"]["tx-checksum-ip-generic"], "on");
    // Turning the offload off (what Felix does there) leaves only an info.
    must(ns, "ethtool", &["-K", VXLAN_DEV, "tx", "off"]);
    let report = doctor(ns, &["--assume-kernel", "4.19.0"]);
    assert_eq!(
        finding(&report, VXLAN_DEV, "vxlan-tx-csum-off")["severity"],
        "info"
    );
    assert_eq!(codes(&report).len(), 1, "{report:#}");
}

#[test]
fn a_tap_without_tso_gso_refuses_what_gro_builds() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    let _engine = TapEngine::attach(ns, TAP_DEV);
    must(ns, "ethtool", &["-K", TAP_DEV, "tso", "off", "gso", "off"]);
    let report = doctor(ns, &[]);
    let f = finding(&report, TAP_DEV, "tap-segmentation-off");
    assert_eq!(f["severity"], "error");
    assert!(
        f["message"].as_str().unwrap().contains("Message too long"),
        "{f}"
    );
    assert_eq!(f["evidence"]["features"]["tx-tcp-segmentation"], "off");
    assert_eq!(f["evidence"]["features"]["tx-generic-segmentation"], "off");
    let feeders = f["evidence"]["gro_feeders"].as_array().unwrap();
    assert!(
        feeders.iter().any(|d| d["ifname"] == VXLAN_DEV),
        "vxlan.calico has GRO on: {f}"
    );
    assert_eq!(codes(&report).len(), 1, "{report:#}");
    // Offloads back on: the finding goes away.
    must(ns, "ethtool", &["-K", TAP_DEV, "tso", "on", "gso", "on"]);
    assert_eq!(codes(&doctor(ns, &[])), Vec::<(String, String)>::new());
}

#[test]
fn a_bridge_feeding_an_engine_tap_with_tx_checksum_on() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    // The engine's tap on a bridge, as antrea-l7-tap0 is a port of OVS next to antrea-gw0.
    must(ns, "ip", &["link", "add", "br-engine", "type", "bridge"]);
    must(ns, "ip", &["link", "set", TAP_DEV, "master", "br-engine"]);
    must(ns, "ip", &["link", "set", "br-engine", "up"]);
    // No engine yet: nothing goes through user space, nothing to say.
    assert_eq!(codes(&doctor(ns, &[])), Vec::<(String, String)>::new());
    let _engine = TapEngine::attach(ns, TAP_DEV);
    let report = doctor(ns, &[]);
    let f = finding(&report, "br-engine", "engine-tx-csum-on");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["evidence"]["tap"], TAP_DEV);
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("disableTXChecksumOffload"),
        "{f}"
    );
    assert_eq!(codes(&report).len(), 1, "{report:#}");
    // Antrea's fix: the offload off on the device that feeds the engine.
    must(ns, "ethtool", &["-K", "br-engine", "tx", "off"]);
    assert_eq!(codes(&doctor(ns, &[])), Vec::<(String, String)>::new());
}

#[test]
fn a_pod_veth_larger_than_the_overlay() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[1].netns;
    must(ns, "ip", &["link", "set", POD_HOST_DEV, "mtu", "1500"]);
    let report = doctor(ns, &[]);
    let f = finding(&report, POD_HOST_DEV, "pod-mtu-mismatch");
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["evidence"]["overlay"], VXLAN_DEV);
    assert_eq!(f["evidence"]["overlay_mtu"], 1450);
    assert_eq!(codes(&report).len(), 1, "{report:#}");
}

#[test]
fn an_underlay_down_cuts_the_tunnel() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    must(ns, "ip", &["link", "set", UNDERLAY_DEV, "down"]);
    let report = doctor(ns, &[]);
    let f = finding(&report, VXLAN_DEV, "underlay-down");
    assert_eq!(f["evidence"]["underlay_up"], false);
}

#[test]
fn the_ioctl_fallback_reads_what_ethtool_netlink_reads() {
    if !is_root() {
        return;
    }
    // Kernels before 5.6 have no ethtool netlink; doctor then uses SIOCETHTOOL. Both must see
    // the same on this kernel, fixed and requested states included, and so find the same.
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let ns = &lab.nodes[0].netns;
    let _engine = TapEngine::attach(ns, TAP_DEV);
    must(ns, "ethtool", &["-K", VXLAN_DEV, "tx", "off"]);
    must(ns, "ethtool", &["-K", TAP_DEV, "tso", "off", "gso", "off"]);
    let netlink = doctor(ns, &[]);
    let (code, stdout, stderr) = doctor_env(ns, &["--json"], &[("VXPROBE_ETHTOOL", "ioctl")]);
    assert_eq!(code, 0, "{stderr}");
    let ioctl: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(netlink["features_from"], "netlink");
    assert_eq!(ioctl["features_from"], "ioctl");
    let features = |report: &Value| -> Vec<(Value, Value)> {
        report["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["ifname"].clone(), d["features"].clone()))
            .collect()
    };
    assert!(features(&netlink).iter().all(|(_, f)| f.is_object()));
    assert_eq!(features(&ioctl), features(&netlink));
    assert_eq!(codes(&ioctl), codes(&netlink));
    assert_eq!(
        ioctl["devices"].as_array().unwrap().len(),
        netlink["devices"].as_array().unwrap().len()
    );
    assert_eq!(codes(&ioctl).len(), 2, "{ioctl:#}");
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    for (args, names) in [
        (&["-i", "nosuchdev"][..], "nosuchdev"),
        (&["--assume-kernel", "banana"][..], "banana"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let (code, stdout, stderr) = doctor_raw(ns, args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    // A selection that matches: only those devices and their findings.
    must(ns, "ip", &["link", "set", POD_HOST_DEV, "mtu", "1500"]);
    must(ns, "ip", &["link", "set", UNDERLAY_DEV, "mtu", "1400"]);
    let report = doctor(ns, &["-i", "cali*"]);
    assert_eq!(
        codes(&report),
        [(POD_HOST_DEV.to_owned(), "pod-mtu-mismatch".to_owned())]
    );
    assert_eq!(report["devices"].as_array().unwrap().len(), 1);
}

/// `--watch`: the finding about tx checksum offload on vxlan.calico carries what the underlay
/// did meanwhile: TCP bulk across the overlay left it as MTU-sized packets.
#[test]
fn watch_ties_the_offload_finding_to_the_packets_it_saw() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    vxprobe::lab::faults::set_offload(&n1.netns, VXLAN_DEV, "tx", false).unwrap();
    let mut server = Lab::command(&n2.pod.netns, "iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let doctor = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &n1.netns,
            common::VXPROBE,
            "doctor",
            "--json",
            "--watch",
            "3s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    vxprobe::lab::faults::wait_tcp_listening(
        &n2.pod.netns,
        5201,
        &mut server,
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    // Bulk TCP for as long as the doctor watches, however long it takes to attach (a debug
    // build under QEMU/TCG takes seconds): stopped once it has reported.
    let mut client = Lab::command(&n1.pod.netns, "iperf3")
        .args(["-c", &n2.pod.ip.to_string(), "-t", "120"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = doctor.wait_with_output().unwrap();
    let _ = client.kill();
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = finding(&report, VXLAN_DEV, "vxlan-tx-csum-off");
    let underlay = &f["evidence"]["observed"][UNDERLAY_DEV]["egress"];
    assert!(underlay["packets"].as_u64().unwrap() > 100, "{f:#}");
    assert!(
        underlay["max_len"].as_u64().unwrap() <= 1514,
        "MTU-sized on the underlay: {f:#}"
    );
    assert_eq!(f["evidence"]["observed_for_s"], 3.0);
}

/// The BPF programs and links process `pid` holds (its fds), 0 when it is gone.
fn bpf_fds(pid: u32) -> (usize, usize) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let (mut programs, mut links) = (0, 0);
    for fd in fds.flatten() {
        match std::fs::read_link(fd.path()).unwrap_or_default().to_str() {
            Some("anon_inode:bpf-prog") => programs += 1,
            Some("anon_inode:bpf_link") => links += 1,
            _ => {}
        }
    }
    (programs, links)
}

/// `--watch` names devices exactly (a device called `v[1]*` is itself, not a pattern that
/// matches nothing), starts while veths come and go (one deleted between the listing and the
/// selection is left out, not a usage error), and SIGINT ends it early: exit 0, the report
/// printed, none of its programs left loaded and nothing left on the devices.
#[test]
fn watch_takes_exact_names_survives_churn_and_stops_on_sigint() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = lab.nodes[0].netns.clone();
    must(
        &ns,
        "ip",
        &[
            "link", "add", "v[1]*", "type", "veth", "peer", "name", "v[1]p",
        ],
    );
    must(&ns, "ip", &["link", "set", "v[1]*", "up"]);
    // Veths created and deleted for as long as the doctor starts.
    let churning = Arc::new(AtomicBool::new(true));
    let churn = {
        let (ns, churning) = (ns.clone(), Arc::clone(&churning));
        std::thread::spawn(move || {
            let mut rounds = 0;
            while churning.load(Ordering::Relaxed) {
                let name = format!("gone{}", rounds % 4);
                let _ = vxprobe::lab::Lab::exec(
                    &ns,
                    "ip",
                    &[
                        "link",
                        "add",
                        &name,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &format!("{name}p"),
                    ],
                );
                let _ = vxprobe::lab::Lab::exec(&ns, "ip", &["link", "del", &name]);
                rounds += 1;
            }
            rounds
        })
    };
    // The watch would last four times as long as the stop below may take: a doctor that
    // ended within that bound ended on the signal. Both scale with the machine. The signal
    // comes while the doctor is still loading programs: it ends the start at the next step
    // (TCG guests took 97 and 272 s to stop when the start ran to its end first).
    let scale = common::time_scale();
    let stop_within = std::time::Duration::from_secs(30) * scale;
    let watch = format!("{}s", 4 * stop_within.as_secs());
    let doctor = Command::new("ip")
        .args([
            "netns", "exec", &ns, VXPROBE, "doctor", "--json", "--watch", &watch,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = doctor.id();
    // Attached: it holds its programs and links (TCX) or filters (clsact); give it the time a
    // debug build needs, then interrupt it.
    let (programs, _) = common::wait_until(
        "the doctor's programs",
        std::time::Duration::from_secs(30),
        || bpf_fds(pid),
        |(programs, links)| *programs > 0 && (*links > 0 || !common::has_tcx()),
    );
    let ids = common::programs_of(pid as i32);
    churning.store(false, Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    let interrupted = std::time::Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let out = doctor.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        interrupted.elapsed() < stop_within,
        "not stopped by SIGINT within {stop_within:?} (the watch lasts {watch}): {:?}",
        interrupted.elapsed()
    );
    eprintln!(
        "{programs} programs, {rounds} veths churned while it started; stopped in {:?}",
        interrupted.elapsed()
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the report, printed");
    assert!(
        report["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["ifname"] == "v[1]*")
    );
    assert!(
        common::still_loaded(&ids).is_empty(),
        "programs left loaded"
    );
    for dev in ["v[1]*", POD_HOST_DEV, VXLAN_DEV, UNDERLAY_DEV] {
        for dir in ["ingress", "egress"] {
            let filters = must(&ns, "tc", &["filter", "show", "dev", dev, dir]);
            assert!(filters.trim().is_empty(), "{dev} {dir}: {filters}");
        }
    }
}
