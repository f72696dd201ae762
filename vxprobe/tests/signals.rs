//! Send failures and retransmits against the kernel's own counters.

mod common;

use common::{Recorder, hook_of, is_root, must, netns_inode};
use serde_json::Value;
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, TAP_DEV, faults};

/// The Suricata-into-tap case of incident #4: frames larger than the tap's MTU, written with
/// AF_PACKET while TSO/GSO are off, fail with EMSGSIZE. Half the sends name the device in
/// the destination address, half go through a socket bound to it.
#[test]
fn oversized_af_packet_sends_into_a_tap_are_oversize_events() {
    if !is_root() {
        return;
    }
    oversized_af_packet_sends_through(&[]);
}

/// The syscall-tracepoint rung (every kernel has it) counts the same as fexit.
#[test]
fn the_syscall_tracepoint_rung_counts_oversized_sends_too() {
    if !is_root() {
        return;
    }
    let hook = oversized_af_packet_sends_through(&["--skip-hook", "fexit"]);
    assert!(hook.starts_with("tracepoint:"), "{hook}");
}

/// Runs the tap case with `extra_args` for `record`; returns the hook that counted.
fn oversized_af_packet_sends_through(extra_args: &[&str]) -> String {
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let node = &lab.nodes[0].netns;
    must(
        node,
        "ethtool",
        &["-K", TAP_DEV, "tso", "off", "gso", "off"],
    );
    let mut args = vec!["--stats-interval", "200ms", "-i", TAP_DEV];
    args.extend(extra_args);
    let rec = Recorder::start(node, &args);
    const N: u32 = 9;
    let failed = faults::packet_sends(node, TAP_DEV, 2000, N).unwrap();
    assert_eq!(failed, N, "every send failed with EMSGSIZE");
    // Stopping drains the ring buffer and closes the interval: nothing is left behind.
    let lines = rec.stop();
    let hook = hook_of(&lines, "send_emsgsize");
    // fexit names the kernel function, the syscall tracepoints the system call.
    let func = if hook.starts_with("fexit:") {
        "packet_sendmsg"
    } else {
        "sendto"
    };

    // The sends of this test's lab only: another test's lab may be refusing sends meanwhile.
    let netns = netns_inode(node);
    let oversize: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "oversize" && l["errno"] == 90 && l["netns"] == netns)
        .collect();
    assert_eq!(oversize.len() as u32, N, "{oversize:#?}");
    for e in &oversize {
        assert_eq!(e["ifname"], TAP_DEV, "{e}");
        assert_eq!(e["mtu"], 1500);
        assert_eq!(e["len"], 2000);
        assert_eq!(
            e["process"]["pid"],
            std::process::id(),
            "the sender is this test"
        );
        assert!(e["func"] == func, "{hook}: {e}");
    }
    // Charged to the tap's egress.
    let drops: u64 = lines
        .iter()
        .filter(|l| l["kind"] == "hop" && l["ifname"] == TAP_DEV && l["dir"] == "egress")
        .map(|l| l["drops"].as_u64().unwrap())
        .sum();
    assert_eq!(drops, u64::from(N));
    hook
}

/// TCP through a hop that loses 1 packet in 20: every retransmitted segment is counted for the
/// flow, exactly as the sender's TcpRetransSegs counts them.
#[test]
fn retransmits_match_the_senders_retrans_segs() {
    if !is_root() {
        return;
    }
    retransmits_through(&[]);
}

/// The raw-tracepoint rung counts retransmits exactly as tp_btf does.
#[test]
fn the_raw_tracepoint_rung_counts_retransmits_too() {
    if !is_root() {
        return;
    }
    let hook = retransmits_through(&["--skip-hook", "tp-btf"]);
    assert_eq!(hook, "raw_tracepoint:tcp_retransmit_skb");
}

/// TCP through the lossy hop with `extra_args` for `record`; returns the hook that counted.
fn retransmits_through(extra_args: &[&str]) -> String {
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let [n1, n2] = &lab.nodes;
    let ruleset = format!(
        "table inet vxp {{\n chain vxp_forward {{\n  type filter hook forward priority 0;\n  \
         iifname \"{POD_HOST_DEV}\" tcp dport 5201 numgen random mod 20 == 0 drop\n }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("vxprobe-nft-rt-{}", std::process::id()));
    std::fs::write(&file, ruleset).unwrap();
    must(&n1.netns, "nft", &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);

    let before = faults::snmp(&n1.pod.netns, "Tcp", "RetransSegs").unwrap();
    let probes_before = faults::snmp(&n1.pod.netns, "TcpExt", "TCPLossProbes").unwrap();
    let failed_before = faults::snmp(&n1.pod.netns, "TcpExt", "TCPRetransFail").unwrap();
    let mut args = vec!["--stats-interval", "500ms", "-i", POD_HOST_DEV];
    args.extend(extra_args);
    let rec = Recorder::start(&n1.netns, &args);
    // The lossy hop's precondition, not vxprobe's count: a run whose connection stalls early
    // (a lost SYN or a backed-off timer) may retransmit only a couple of segments. Such a run
    // is followed by another; the counts compared below cover every run.
    let mut retrans_segs = 0;
    for _ in 0..3 {
        let mut server = faults::iperf3_server(&n2.pod.netns, 5201).unwrap();
        let client = faults::iperf3_client(
            &n1.pod.netns,
            n2.pod.ip.into(),
            5201,
            &["-t", "2", "-b", "20M"],
        )
        .output()
        .unwrap();
        let _ = server.kill();
        let _ = server.wait();
        assert!(
            client.status.success(),
            "iperf3: {}",
            String::from_utf8_lossy(&client.stderr)
        );
        retrans_segs = faults::snmp(&n1.pod.netns, "Tcp", "RetransSegs").unwrap() - before;
        if retrans_segs > 5 {
            break;
        }
    }
    let lines = rec.stop();
    assert!(
        retrans_segs > 5,
        "the lossy hop caused retransmits: {retrans_segs}"
    );

    let events: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["kind"] == "retransmit"
                && l["netns"] == netns_inode(&n1.pod.netns)
                && l["flow"]["src"] == n1.pod.ip.to_string()
                && l["flow"]["dport"] == 5201
        })
        .collect();
    // A line stands for `count` segments (default 1): a retransmitted skb can carry several.
    let segments: u64 = events
        .iter()
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum();
    // Exact, but for tail loss probes: a TLP resends the last segment through the same path
    // and can be cut to one segment after the tracepoint read its skb's count.
    let loss_probes =
        faults::snmp(&n1.pod.netns, "TcpExt", "TCPLossProbes").unwrap() - probes_before;
    // The kernel counts a retransmit in TcpRetransSegs before it tries to send it, and a send
    // that fails (a full queue on a busy machine) in TCPRetransFail too: what went out is the
    // difference, and vxprobe counts what went out.
    let failed = faults::snmp(&n1.pod.netns, "TcpExt", "TCPRetransFail").unwrap() - failed_before;
    let sent = retrans_segs - failed;
    assert!(
        segments.abs_diff(sent) <= loss_probes,
        "retransmitted segments {segments} vs TcpRetransSegs {retrans_segs} - TCPRetransFail {failed} (loss probes {loss_probes})"
    );
    assert_eq!(events[0]["flow"]["proto"], "tcp");
    assert_eq!(events[0]["flow"]["dst"], n2.pod.ip.to_string());
    hook_of(&lines, "retransmit")
}

/// DF traffic larger than the overlay's MTU (the pod and its veth at 1500 over a 1450
/// overlay): the first datagram is refused where it is forwarded (oversize at cali0), the
/// node sends ICMP fragmentation-needed, and the sender's later sends fail with EMSGSIZE, each
/// counted.
#[test]
fn df_traffic_above_the_overlay_mtu_is_refused_at_the_hop_then_at_the_sender() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    faults::set_mtu(&n1.pod.netns, "eth0", 1500).unwrap();
    faults::set_mtu(&n1.netns, POD_HOST_DEV, 1500).unwrap();
    let mut rec = Recorder::start(&n1.netns, &["--stats-interval", "200ms", "-i", "cali*"]);
    const N: u32 = 10;
    let mut refused = 0;
    let me = std::process::id();
    let node = netns_inode(&n1.netns);
    let accounted = |lines: &[Value]| -> u64 {
        lines
            .iter()
            .filter(|l| {
                l["kind"] == "oversize"
                    && ((l["reason"] == "PKT_TOO_BIG"
                        && l["flow"]["dport"] == 7780
                        && l["netns"] == node)
                        || (l["errno"] == 90
                            && l["process"]["pid"] == me
                            && l["dest"]["port"] == 7780))
            })
            .count() as u64
    };
    for sent in 1..=N {
        refused += lab
            .pod_datagrams(7780, 1472, 1, faults::Df::Always)
            .unwrap();
        // One datagram at a time, each refused (and reported) before the next: by then the
        // node's ICMP reply has taught the sender the path MTU.
        rec.wait_until(
            &format!("datagram {sent} refused at the hop or the sender"),
            std::time::Duration::from_secs(10),
            |lines| accounted(lines) >= u64::from(sent),
        );
    }
    let lines = rec.stop();
    let ours =
        |l: &&Value| l["kind"] == "oversize" && l["flow"]["dport"] == 7780 && l["netns"] == node;
    let at_hop: Vec<&Value> = lines
        .iter()
        .filter(ours)
        .filter(|l| l["reason"] == "PKT_TOO_BIG")
        .collect();
    let seen: Vec<&Value> = lines
        .iter()
        .filter(|l| l["flow"]["dport"] == 7780)
        .collect();
    assert!(
        !at_hop.is_empty(),
        "refused where forwarded; refused at the sender: {refused}; lines of the flow: {seen:#?}"
    );
    assert!(
        at_hop
            .iter()
            .all(|l| l["ifname"] == POD_HOST_DEV && l["location"] == "ip_forward")
    );
    // The sender is in the pod; other tests' labs may be refusing sends meanwhile.
    let pod = netns_inode(&n1.pod.netns);
    let at_sender: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["kind"] == "oversize"
                && l["errno"] == 90
                && l["process"]["pid"] == std::process::id()
                && l["netns"] == pod
        })
        .collect();
    assert!(refused > 0, "the sender learned the path MTU");
    assert_eq!(
        at_sender.len() as u32,
        refused,
        "every EMSGSIZE the sender got is counted"
    );
    for e in &at_sender {
        assert_eq!(e["dest"]["addr"], n2.pod.ip.to_string(), "{e}");
        assert_eq!(e["dest"]["port"], 7780, "{e}");
    }
    assert_eq!(
        at_hop.len() as u32 + refused,
        N,
        "each datagram refused once, somewhere"
    );
}

/// A client whose handshake ACK is lost: the server sends its SYN-ACK again, and each one is a
/// retransmit of the server's flow, as its TcpRetransSegs counts them.
#[test]
fn syn_ack_retransmits_are_counted() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    faults::nft(
        &n1.netns,
        &format!(
            "table inet vxp_ack {{\n chain forward {{\n  type filter hook forward priority 0;\n  \
             iifname \"{POD_HOST_DEV}\" tcp dport 7900 tcp flags & (syn|ack|fin|rst|psh) == ack drop\n }}\n}}\n"
        ),
    )
    .unwrap();
    let listener = faults::in_netns(&n2.pod.netns, || {
        std::net::TcpListener::bind("0.0.0.0:7900")
    })
    .unwrap();
    let before = faults::snmp(&n2.pod.netns, "Tcp", "RetransSegs").unwrap();
    let mut rec = Recorder::start(
        &n1.netns,
        &["--stats-interval", "200ms", "-i", POD_HOST_DEV],
    );
    let server = n2.pod.ip;
    let client = faults::in_netns(&n1.pod.netns, move || {
        std::net::TcpStream::connect((server, 7900))
    })
    .unwrap();
    // Initial RTO 1 s: the SYN-ACK goes again at about 1 s (and 3 s, 7 s...).
    common::wait_until(
        "the server's first SYN-ACK retransmit",
        std::time::Duration::from_secs(10),
        || faults::snmp(&n2.pod.netns, "Tcp", "RetransSegs").unwrap() - before,
        |retransmitted| *retransmitted >= 1,
    );
    // A closed listener retransmits no more: the count is final.
    drop((client, listener));
    let after = faults::snmp(&n2.pod.netns, "Tcp", "RetransSegs").unwrap();
    // Retransmits are seen kernel-wide: other labs' servers have the same addresses.
    let server_pod = netns_inode(&n2.pod.netns);
    let server_synacks = |l: &Value| {
        l["kind"] == "retransmit"
            && l["flow"]["sport"] == 7900
            && l["flow"]["src"] == n2.pod.ip.to_string()
            && l["netns"] == server_pod
    };
    rec.wait_total(
        "the SYN-ACK retransmits",
        "count",
        after - before,
        server_synacks,
    );
    let lines = rec.stop();
    let synacks: u64 = lines
        .iter()
        .filter(|l| server_synacks(l))
        .map(|l| l["count"].as_u64().unwrap_or(1))
        .sum();
    assert!(after - before >= 1, "the server retransmitted its SYN-ACK");
    assert_eq!(
        synacks,
        after - before,
        "SYN-ACK retransmits vs the server's TcpRetransSegs"
    );
}
