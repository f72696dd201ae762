//! Kernel drop signals against the kernel's own counters: checksum failures and netfilter
//! drops, each at the hop and for the flow where they happen.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{Recorder, is_root, must, netns_inode};
use serde_json::Value;
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, VXLAN_DEV, faults};

fn of_kind<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["kind"] == kind).collect()
}

#[test]
fn bad_udp_checksums_are_csum_errors_matching_the_receivers_counter() {
    if !is_root() {
        return;
    }
    bad_udp_checksums_through(&[], "tp_btf:kfree_skb");
}

/// The raw-tracepoint rung of the ladder counts the same as tp_btf.
#[test]
fn the_raw_tracepoint_rung_counts_checksum_failures_too() {
    if !is_root() {
        return;
    }
    bad_udp_checksums_through(
        &["--skip-hook", "tp-btf", "--skip-hook", "kprobe"],
        "raw_tracepoint:kfree_skb",
    );
}

/// The kprobe rung (on the function that frees the skb) counts the same as tp_btf.
#[test]
fn the_kprobe_rung_counts_checksum_failures_too() {
    if !is_root() || !common::has_kprobes() {
        return;
    }
    // The freeing function: sk_skb_reason_drop since 6.11, kfree_skb_reason since 5.17,
    // kfree_skb itself before.
    let expected = if common::kernel_version() >= (6, 11) {
        "kprobe:sk_skb_reason_drop"
    } else if common::kernel_version() >= (5, 17) {
        "kprobe:kfree_skb_reason"
    } else {
        "kprobe:kfree_skb"
    };
    bad_udp_checksums_through(&["--skip-hook", "tp-btf"], expected);
}

#[test]
fn probes_names_the_hook_of_each_signal() {
    if !is_root() {
        return;
    }
    let report = common::run::probes_json();
    let drop = common::run::element(&report["signals"], "signal", "drop");
    // This kernel has tp_btf; kernels without it fall back (see the raw tracepoint test).
    assert_eq!(drop["hook"], "tp_btf:kfree_skb");
    // TCX links exist since Linux 6.6; before, `auto` adds clsact filters.
    let expected = if common::kernel_version() >= (6, 6) {
        "tcx"
    } else {
        "clsact"
    };
    assert_eq!(report["tc_attach"], expected, "on {}", report["kernel"]);
}

fn bad_udp_checksums_through(extra_args: &[&str], expected_hook: &str) {
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let [n1, n2] = &lab.nodes;
    let before = faults::snmp(&n2.pod.netns, "Udp", "InCsumErrors").unwrap();
    let mut args = vec!["--stats-interval", "200ms", "-i", VXLAN_DEV];
    args.extend(extra_args);
    let mut rec = Recorder::start(&n2.netns, &args);
    const N: u32 = 17;
    faults::bad_udp_checksums(&n1.pod.netns, n2.pod.ip, 5555, N).unwrap();
    let after = common::wait_until(
        "the receiver's UdpInCsumErrors",
        Duration::from_secs(10),
        || faults::snmp(&n2.pod.netns, "Udp", "InCsumErrors").unwrap(),
        |now| now - before >= u64::from(N),
    );
    let pod = netns_inode(&n2.pod.netns);
    rec.wait_total("csum_error lines", "count", after - before, |l| {
        l["kind"] == "csum_error" && l["flow"]["dport"] == 5555 && l["netns"] == pod
    });
    let lines = rec.stop();
    let after = faults::snmp(&n2.pod.netns, "Udp", "InCsumErrors").unwrap();
    assert_eq!(after - before, u64::from(N), "the kernel's own count");
    assert_eq!(lines[0]["kind"], "meta");
    assert_eq!(lines[0]["hooks"][0]["hook"], expected_hook);

    let ours: Vec<_> = of_kind(&lines, "csum_error")
        .into_iter()
        .filter(|l| l["flow"]["dport"] == 5555 && l["netns"] == pod)
        .collect();
    assert_eq!(
        ours.len() as u64,
        after - before,
        "csum_error events: {ours:#?}"
    );
    let e = ours[0];
    assert_eq!(e["reason"], "UDP_CSUM");
    assert_eq!(e["flow"]["proto"], "udp");
    assert_eq!(e["flow"]["src"], n1.pod.ip.to_string());
    assert_eq!(e["flow"]["dst"], n2.pod.ip.to_string());
    assert_eq!(e["ifname"], "eth0", "dropped on the pod's eth0");
    let pod_netns = std::fs::metadata(format!("/run/netns/{}", n2.pod.netns))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_eq!(e["netns"], pod_netns, "named by the pod's namespace");
    // Reported once, as its most specific kind.
    assert!(
        of_kind(&lines, "drop")
            .iter()
            .all(|l| l["flow"]["dport"] != 5555),
        "a checksum drop is not also a drop"
    );
}

#[test]
fn netfilter_drops_are_charged_to_their_hop_and_match_the_rule_counter() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let n1 = &lab.nodes[0];
    // Drop a third of the ICMP echo requests arriving from pod 1 on node 1's cali0.
    common::agent::drop_a_third_of_pings(&n1.netns);
    let mut rec = Recorder::start(&n1.netns, common::run::ALL_HOPS);
    common::agent::pings(&lab);
    let nft_counter = |name| common::agent::nft_counter(&n1.netns, name);
    let (dropped, seen) = (nft_counter("dropped"), nft_counter("seen"));
    // Drops are seen kernel-wide: other labs (tests running beside this one) drop too.
    let node = netns_inode(&n1.netns);
    let ours =
        |l: &Value| l["kind"] == "drop" && l["reason"] == "NETFILTER_DROP" && l["netns"] == node;
    rec.wait_total("NETFILTER_DROP lines", "count", dropped, ours);
    rec.wait_hop(POD_HOST_DEV, "ingress", "drops", dropped);
    let lines = rec.stop();
    assert!(dropped > 30, "the rule dropped {dropped}");

    let nf: Vec<_> = lines.iter().filter(|l| ours(l)).collect();
    assert_eq!(
        nf.len() as u64,
        dropped,
        "one drop event per packet the rule dropped"
    );
    assert!(
        nf.iter()
            .all(|l| l["ifname"] == POD_HOST_DEV && l["flow"]["proto"] == "icmp")
    );

    // The hop lines put the whole loss on cali0 ingress, none anywhere else.
    let mut drops: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut packets: BTreeMap<(String, String), u64> = BTreeMap::new();
    for l in of_kind(&lines, "hop") {
        let key = (
            l["ifname"].as_str().unwrap().into(),
            l["dir"].as_str().unwrap().into(),
        );
        *drops.entry(key.clone()).or_default() += l["drops"].as_u64().unwrap();
        *packets.entry(key).or_default() += l["packets"].as_u64().unwrap();
    }
    let at = (POD_HOST_DEV.to_owned(), "ingress".to_owned());
    assert_eq!(drops[&at], dropped);
    assert_eq!(
        drops.values().sum::<u64>(),
        dropped,
        "no other hop charged: {drops:?}"
    );
    // The hop's loss over the run is the share the rule dropped, within two points.
    let injected = dropped as f64 * 100.0 / seen as f64;
    let reported = drops[&at] as f64 * 100.0 / packets[&at] as f64;
    assert!(
        (injected - reported).abs() <= 2.0,
        "loss at cali0 ingress {reported:.2}% vs injected {injected:.2}%"
    );
    for l in of_kind(&lines, "hop") {
        if l["ifname"] != POD_HOST_DEV || l["dir"] != "ingress" {
            assert_eq!(l["loss_pct"], 0.0, "only the lossy hop shows loss: {l}");
        }
    }
}

/// TCP checksum failures: counted from drops (TCP_CSUM) and, where drops have no hook, from
/// tcp:tcp_bad_csum; both equal the receiver's TcpInCsumErrors.
#[test]
fn bad_tcp_checksums_are_counted_with_or_without_the_drop_hook() {
    if !is_root() {
        return;
    }
    // tcp:tcp_bad_csum came in 5.13: before, only the drop hook sees TCP checksum failures.
    let stand_in = std::path::Path::new("/sys/kernel/tracing/events/tcp/tcp_bad_csum").exists()
        || std::path::Path::new("/sys/kernel/debug/tracing/events/tcp/tcp_bad_csum").exists();
    if !stand_in {
        eprintln!("no tcp:tcp_bad_csum tracepoint on this kernel: its stand-in is not tested");
    }
    let legs: &[(&str, Option<&str>)] = if stand_in {
        &[("", None), ("drop", Some("tcp_bad_csum"))]
    } else {
        &[("", None)]
    };
    for &(skip, location) in legs {
        let lab = Lab::build(&LabOptions::default()).expect("building the lab");
        let [n1, n2] = &lab.nodes;
        let before = faults::snmp(&n2.pod.netns, "Tcp", "InCsumErrors").unwrap();
        let mut rec = Recorder::start_with_env(
            &n2.netns,
            &["--stats-interval", "200ms", "-i", VXLAN_DEV],
            &[("VXPROBE_SKIP_SIGNALS", skip)],
        );
        const N: u32 = 7;
        faults::bad_tcp_checksums(&n1.pod.netns, n2.pod.ip, 7901, N).unwrap();
        let after = common::wait_until(
            "the receiver's TcpInCsumErrors",
            Duration::from_secs(10),
            || faults::snmp(&n2.pod.netns, "Tcp", "InCsumErrors").unwrap(),
            |now| now - before >= u64::from(N),
        );
        let pod = netns_inode(&n2.pod.netns);
        let tcp_csum = |l: &Value| {
            l["kind"] == "csum_error"
                && l["flow"]["dport"] == 7901
                && l["reason"] == "TCP_CSUM"
                && l["netns"] == pod
        };
        rec.wait_total("TCP_CSUM lines", "count", after - before, tcp_csum);
        let lines = rec.stop();
        let after = faults::snmp(&n2.pod.netns, "Tcp", "InCsumErrors").unwrap();
        assert_eq!(after - before, u64::from(N), "the kernel's own count");
        let ours: Vec<_> = lines.iter().filter(|l| tcp_csum(l)).collect();
        assert_eq!(
            ours.len() as u64,
            after - before,
            "skipping [{skip}]: {ours:#?}"
        );
        if let Some(location) = location {
            assert!(ours.iter().all(|l| l["location"] == location));
            let hooks = lines[0]["hooks"].as_array().unwrap();
            assert!(
                hooks
                    .iter()
                    .any(|h| h["signal"] == "tcp_bad_csum" && h["hook"] == "tp_btf:tcp_bad_csum")
            );
        }
    }
}

/// The rx_dropped counter of a device in a namespace (`ip -s -j link`).
fn rx_dropped(netns: &str, dev: &str) -> u64 {
    let out = must(netns, "ip", &["-s", "-j", "link", "show", "dev", dev]);
    let links: Vec<Value> = serde_json::from_str(&out).unwrap();
    links[0]["stats64"]["rx"]["dropped"].as_u64().unwrap()
}

/// A plain drop, one no reason names: a veth hands its peer a frame larger than the peer's
/// MTU, and the peer frees it (`__dev_forward_skb`, plain `kfree_skb` on 5.10 and 6.1) and
/// counts it in its rx_dropped. On 6.1 the reason is NOT_SPECIFIED (1), which the drop
/// program used to skip for SKB_CONSUMED, absent there; on 5.10 no reason exists at all.
#[test]
fn a_plain_drop_is_a_drop_line_matching_the_devices_counter() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    // Pod 1's eth0 stays at 1450; its peer cali0 takes at most 1280 + 14 + 4.
    faults::set_mtu(&n1.netns, POD_HOST_DEV, 1280).unwrap();
    let before = rx_dropped(&n1.netns, POD_HOST_DEV);
    let rec = Recorder::start(
        &n1.netns,
        &["--stats-interval", "200ms", "-i", POD_HOST_DEV],
    );
    const N: u64 = 9;
    // 1400-byte packets, DF clear: pod 1 sends them whole (its MTU is 1450), and they die
    // crossing the veth. No reply comes, so ping's status says nothing.
    let out = vxprobe::lab::Lab::exec(
        &n1.pod.netns,
        "ping",
        &[
            "-q",
            "-c",
            &N.to_string(),
            "-s",
            "1372",
            "-M",
            "dont",
            "-i",
            "0.01",
            "-W",
            "1",
            &n2.pod.ip.to_string(),
        ],
    )
    .unwrap();
    assert!(out.status.code().is_some(), "ping ran");
    let lines = rec.stop();
    let after = rx_dropped(&n1.netns, POD_HOST_DEV);
    // The failed send returns ENOBUFS, and ping sends again at once: more drops than pings.
    let dropped = after - before;
    assert!(
        dropped >= N,
        "the kernel's own count at {POD_HOST_DEV}: {dropped}"
    );

    let pod_netns = common::netns_inode(&n1.pod.netns);
    let ours: Vec<_> = lines
        .iter()
        .filter(|l| l["flow"]["proto"] == "icmp" && l["flow"]["dst"] == n2.pod.ip.to_string())
        .filter(|l| l["netns"] == pod_netns && l["kind"] != "hop" && l["kind"] != "flow")
        .collect();
    assert_eq!(
        ours.len() as u64,
        dropped,
        "one line per packet {POD_HOST_DEV} dropped: {ours:#?}"
    );
    for l in &ours {
        assert_eq!(l["kind"], "drop", "{l}");
        assert_eq!(
            l["ifname"], "eth0",
            "freed on its way out of pod 1's eth0: {l}"
        );
        let location = l["location"].as_str().unwrap();
        assert!(location.contains("forward_skb"), "{l}");
    }
    // No reason is given for it, from 5.10 (none exist) through 6.1 (1, which the drop
    // program skipped while it took 1 for SKB_CONSUMED) to 6.18.
    assert!(
        ours.iter().all(|l| l["reason"] == "NOT_SPECIFIED"),
        "{ours:#?}"
    );
}

/// Datagrams above 76 bytes are not verified on arrival: the reading socket's recvmsg computes
/// the checksum while copying and frees a bad one (`udp_recvmsg`, UDP_CSUM since 5.17; on
/// 5.10 with no reason, which the location names). Every one equals UdpInCsumErrors.
#[test]
fn bad_udp_checksums_found_by_a_reading_socket_match_the_receivers_counter() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    const PORT: u16 = 5557;
    let before = faults::snmp(&n2.pod.netns, "Udp", "InCsumErrors").unwrap();
    // A reader in pod 2 (a thread inside its namespace, as a pod's process is), blocked until
    // the good datagram sent after the bad ones: every bad one ahead of it in the queue was
    // read and freed by then.
    let limit = std::time::Duration::from_secs(20) * common::time_scale();
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let pod_ns = n2.pod.netns.clone();
    let reader = std::thread::spawn(move || {
        let _inside = faults::enter_netns(&pod_ns)?;
        let sock = std::net::UdpSocket::bind(("0.0.0.0", PORT))?;
        sock.set_read_timeout(Some(limit))?;
        let _ = bound_tx.send(());
        let mut buf = [0u8; 2048];
        loop {
            let n = sock.recv(&mut buf)?;
            if &buf[..n] == b"done" {
                return Ok::<_, std::io::Error>(());
            }
        }
    });
    bound.recv().expect("the reader bound its socket");
    let rec = Recorder::start(&n2.netns, &["--stats-interval", "200ms", "-i", VXLAN_DEV]);
    const N: u32 = 11;
    faults::bad_udp_checksums_sized(&n1.pod.netns, n2.pod.ip, PORT, N, 400).unwrap();
    let dst = n2.pod.ip;
    faults::in_netns(&n1.pod.netns, move || {
        std::net::UdpSocket::bind("0.0.0.0:0")?.send_to(b"done", (dst, PORT))
    })
    .unwrap();
    reader
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the reader never got the good datagram in {limit:?}: {e}"));
    let lines = rec.stop();
    let after = faults::snmp(&n2.pod.netns, "Udp", "InCsumErrors").unwrap();
    assert_eq!(after - before, u64::from(N), "the kernel's own count");
    let ours: Vec<_> = of_kind(&lines, "csum_error")
        .into_iter()
        .filter(|l| l["flow"]["dport"] == PORT)
        .collect();
    let of_the_flow: Vec<_> = lines
        .iter()
        .filter(|l| l["flow"]["dport"] == PORT && l["kind"] != "flow")
        .collect();
    assert_eq!(ours.len() as u64, after - before, "{of_the_flow:#?}");
    for l in &ours {
        assert_eq!(l["reason"], "UDP_CSUM", "{l}");
        assert_eq!(l["location"], "udp_recvmsg", "{l}");
        assert_eq!(
            l["netns"],
            common::netns_inode(&n2.pod.netns),
            "the reader's: {l}"
        );
    }
    assert!(
        of_kind(&lines, "drop")
            .iter()
            .all(|l| l["flow"]["dport"] != PORT),
        "a checksum drop is not also a drop"
    );
}
