//! The TC side across the lab: fragments at every hop with exact counts, outer fragments on
//! the underlay attributed to the inner flow, IPv6 pod traffic, and the segment-size signature
//! of offloads being off.

mod common;

use std::collections::BTreeMap;

use common::{Recorder, must, run::ALL_HOPS};
use serde_json::Value;
use vxprobe::lab::{LabOptions, POD_HOST_DEV, UNDERLAY_DEV, VXLAN_DEV, faults};

/// Per (ifname, dir): the sum of `field` over `kind` lines that match `keep` (without a
/// field: their events).
fn totals(
    lines: &[Value],
    kind: &str,
    field: Option<&str>,
    keep: impl Fn(&Value) -> bool,
) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for l in lines.iter().filter(|l| l["kind"] == kind && keep(l)) {
        let key = (
            l["ifname"].as_str().unwrap().to_owned(),
            l["dir"].as_str().unwrap().to_owned(),
        );
        // Without a field: events, each line standing for `count` of them (1 when absent).
        let n = l["count"].as_u64().unwrap_or(1);
        *out.entry(key).or_default() += field.map_or(n, |f| l[f].as_u64().unwrap());
    }
    out
}

fn key(dev: &str, dir: &str) -> (String, String) {
    (dev.to_owned(), dir.to_owned())
}

/// The hops a pod-to-pod packet crosses on the sending node, in order.
const SENDER_PATH: [(&str, &str); 3] = [
    (POD_HOST_DEV, "ingress"),
    (VXLAN_DEV, "egress"),
    (UNDERLAY_DEV, "egress"),
];

/// `totals` holds exactly `expected` at every hop of [`SENDER_PATH`].
fn assert_along_sender_path(totals: &BTreeMap<(String, String), u64>, expected: u64, what: &str) {
    for (dev, dir) in SENDER_PATH {
        assert_eq!(
            totals.get(&key(dev, dir)),
            Some(&expected),
            "{what} at {dev} {dir}: {totals:?}"
        );
    }
}

#[test]
fn udp_datagrams_of_3000_bytes_are_fragments_at_every_hop() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let mut rec1 = Recorder::start(&n1.netns, ALL_HOPS);
    let mut rec2 = Recorder::start(&n2.netns, ALL_HOPS);
    const N: u64 = 12;
    lab.pod_datagrams(7777, 3000, N as u32, faults::Df::Clear)
        .unwrap();
    // 3008 bytes of UDP in 1450-byte packets: 1424 + 1424 + 160 bytes of payload.
    let expected = 3 * N;
    // Each node's last hop has counted every fragment (more would fail the checks below).
    rec1.wait_hop(UNDERLAY_DEV, "egress", "fragments", expected);
    rec2.wait_hop(POD_HOST_DEV, "egress", "fragments", expected);

    let ours = |l: &Value| l["flow"]["dport"] == 7777 && l["flow"]["sport"] == 40001;
    for (node, rec, hops) in [
        ("node1", rec1, SENDER_PATH),
        (
            "node2",
            rec2,
            [
                (UNDERLAY_DEV, "ingress"),
                (VXLAN_DEV, "ingress"),
                (POD_HOST_DEV, "egress"),
            ],
        ),
    ] {
        let lines = rec.stop();
        let events = totals(&lines, "fragment", None, ours);
        let flow_fragments = totals(&lines, "flow", Some("fragments"), ours);
        let hop_fragments = totals(&lines, "hop", Some("fragments"), |_| true);
        for (dev, dir) in hops {
            let k = key(dev, dir);
            assert_eq!(
                events.get(&k),
                Some(&expected),
                "{node} {dev} {dir} fragment events: {events:?}"
            );
            assert_eq!(
                flow_fragments.get(&k),
                Some(&expected),
                "{node} {dev} {dir} flow fragments"
            );
            assert_eq!(
                hop_fragments.get(&k),
                Some(&expected),
                "{node} {dev} {dir} hop fragments"
            );
        }
        // On the underlay the inner flow is reported, with the tunnel header alongside.
        let on_underlay = lines
            .iter()
            .find(|l| l["kind"] == "fragment" && l["ifname"] == UNDERLAY_DEV && ours(l))
            .unwrap();
        assert_eq!(on_underlay["outer"]["vni"], 4096);
        assert_eq!(on_underlay["outer"]["dport"], 4789);
        assert_eq!(on_underlay["flow"]["src"], n1.pod.ip.to_string());
        // A tunnel header exactly where the packet is in the tunnel: every fragment on the
        // underlay, none on the pod veth or the vxlan device (later fragments included, whose
        // ports come from the first fragment seen at another hop).
        for l in lines.iter().filter(|l| l["kind"] == "fragment" && ours(l)) {
            let tunneled = l["ifname"] == UNDERLAY_DEV;
            assert_eq!(l["outer"].is_object(), tunneled, "{node}: {l}");
        }
    }
}

/// In `netns`, a UDP socket bound to each of `ports` sends what `send(round, socket)` does, in
/// `rounds` rounds, every socket in turn.
fn send_rounds(
    netns: &str,
    ports: [u16; 4],
    rounds: u64,
    send: impl Fn(u64, &std::net::UdpSocket) -> std::io::Result<()> + Send + 'static,
) {
    faults::in_netns(netns, move || {
        let socks = ports
            .iter()
            .map(|p| std::net::UdpSocket::bind(("0.0.0.0", *p)))
            .collect::<std::io::Result<Vec<_>>>()?;
        for round in 0..rounds {
            for s in &socks {
                send(round, s)?;
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("sending from ports {ports:?} in {netns}: {e}"));
}

/// `--flow-cache 1`: every flow of a CPU shares one cache slot, so the flows below (and the
/// ICMP errors they draw) take it from each other at almost every packet, over several
/// intervals: slots are read while a flow holds them, then handed over to the flow map. The
/// counts stay exact.
#[test]
fn flows_that_share_one_cache_slot_are_counted_exactly() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let mut args = ALL_HOPS.to_vec();
    args.extend(["--flow-cache", "1"]);
    let mut rec = Recorder::start(&n1.netns, &args);
    const N: u64 = 40;
    let ports = [41001u16, 41002, 41003, 41004];
    let dst = n2.pod.ip;
    // Spread over several intervals, so slots are read while held and handed over after:
    // after each batch, an interval closes before the next one is sent.
    const BATCHES: u64 = 4;
    for _ in 0..BATCHES {
        send_rounds(&n1.pod.netns, ports, N / BATCHES, move |_, s| {
            s.send_to(b"slot", (dst, 9)).map(drop)
        });
        rec.wait_intervals_after(&common::ts_now(), 1);
    }
    for port in ports {
        rec.wait_total(&format!("port {port}"), "packets", N, |l| {
            l["kind"] == "flow"
                && l["ifname"] == UNDERLAY_DEV
                && l["flow"]["sport"] == port
                && l["flow"]["dport"] == 9
        });
    }
    let lines = rec.stop();
    for port in ports {
        let packets = totals(&lines, "flow", Some("packets"), |l| {
            l["flow"]["sport"] == port && l["flow"]["dport"] == 9
        });
        assert_along_sender_path(&packets, N, &format!("port {port}"));
    }
    // Each entry is reported in several intervals, from its slot and from the map: the
    // summary counts it once.
    let entries: std::collections::BTreeSet<String> = lines
        .iter()
        .filter(|l| l["kind"] == "flow")
        .map(|l| format!("{} {} {}", l["ifindex"], l["dir"], l["flow"]))
        .collect();
    let summary = lines.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    assert_eq!(
        summary["flow_entries"],
        entries.len() as u64,
        "distinct flow entries reported: {entries:#?}"
    );
}

/// Every packet the pod sends leaves its eth0 with one and the same skb hash (a classifier
/// there sets it): the worst case for the TC programs' shortcut, which finds a flow's cache
/// slot by its hash and skips the parse when the packet's headers confirm the flow. Four UDP
/// flows, their fragments and a ping, all with that hash, interleaved: each is still counted
/// exactly, as its own flow, and the fragments as fragments.
#[test]
fn flows_whose_packets_all_carry_one_skb_hash_are_told_apart_and_counted_exactly() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let setter = common::tc::load_hash_setter("one_hash", 0x5eed_1234)
        .unwrap_or_else(|e| panic!("BPF_PROG_LOAD one_hash: {e}"));
    let pinned = common::tc::PinnedProgram::pin("one_hash", &setter);
    common::tc::add_clsact(&n1.pod.netns, "eth0");
    common::tc::add_filter(
        &n1.pod.netns,
        "eth0",
        "egress",
        "1",
        &["bpf", "da", "object-pinned", pinned.path()],
    );
    let mut rec = Recorder::start(&n1.netns, ALL_HOPS);
    // Per flow: small datagrams and 3000-byte ones (three fragments each), interleaved.
    const SMALL: u64 = 30;
    const LARGE: u64 = 5;
    const PINGS: u64 = 10;
    let ports = [42001u16, 42002, 42003, 42004];
    let dst = n2.pod.ip;
    send_rounds(&n1.pod.netns, ports, SMALL, move |round, s| {
        s.send_to(b"hash", (dst, 9))?;
        if round % (SMALL / LARGE) == 0 {
            s.send_to(&[7u8; 3000], (dst, 9))?;
        }
        Ok(())
    });
    common::ping(&n1.pod.netns, PINGS, &dst.to_string());
    let per_flow = SMALL + 3 * LARGE;
    for port in ports {
        rec.wait_total(&format!("port {port}"), "packets", per_flow, |l| {
            l["kind"] == "flow" && l["ifname"] == UNDERLAY_DEV && l["flow"]["sport"] == port
        });
    }
    let lines = rec.stop();
    for port in ports {
        let ours = |l: &Value| l["flow"]["sport"] == port && l["flow"]["dport"] == 9;
        let packets = totals(&lines, "flow", Some("packets"), ours);
        assert_along_sender_path(&packets, per_flow, &format!("port {port} packets"));
        let fragments = totals(&lines, "flow", Some("fragments"), ours);
        assert_along_sender_path(&fragments, 3 * LARGE, &format!("port {port} fragments"));
    }
    let requests = totals(&lines, "flow", Some("packets"), |l| {
        l["flow"]["proto"] == "icmp" && l["flow"]["src"] == n1.pod.ip.to_string()
    });
    assert_along_sender_path(&requests, PINGS, "echo requests");
    let hop_fragments = totals(&lines, "hop", Some("fragments"), |_| true);
    assert_along_sender_path(&hop_fragments, 4 * 3 * LARGE, "hop fragments");
}

#[test]
fn an_overlay_mtu_above_the_underlay_fragments_outer_packets_of_the_inner_flow() {
    let Some(lab) = common::lab::root_lab_with(LabOptions {
        overlay_mtu: 1500,
        ..LabOptions::default()
    }) else {
        return;
    };
    let n1 = &lab.nodes[0];
    let mut rec = Recorder::start(&n1.netns, ALL_HOPS);
    const N: u64 = 10;
    // 1472 bytes of UDP: a full 1500-byte inner packet, 1550 once encapsulated.
    lab.pod_datagrams(7778, 1472, N as u32, faults::Df::Clear)
        .unwrap();
    rec.wait_hop(UNDERLAY_DEV, "egress", "fragments", 2 * N);
    let lines = rec.stop();
    let ours = |l: &Value| l["flow"]["dport"] == 7778;
    let events = totals(&lines, "fragment", None, ours);
    // No inner fragmentation (the pod's MTU fits), two outer pieces per packet on the underlay.
    assert_eq!(events.get(&key(POD_HOST_DEV, "ingress")), None);
    assert_eq!(
        events.get(&key(UNDERLAY_DEV, "egress")),
        Some(&(2 * N)),
        "{events:?}"
    );
    let flow = totals(&lines, "flow", Some("fragments"), ours);
    assert_eq!(flow.get(&key(UNDERLAY_DEV, "egress")), Some(&(2 * N)));
}

#[test]
fn ipv6_pod_traffic_crosses_the_overlay_counted_and_attributed() {
    let Some(lab) = common::lab::root_lab_with(LabOptions {
        ipv6: true,
        ..LabOptions::default()
    }) else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let mut rec = Recorder::start(&n1.netns, ALL_HOPS);
    const N: u64 = 15;
    faults::udp_datagrams(
        &n1.pod.netns,
        n2.pod.ip6.into(),
        7779,
        200,
        N as u32,
        faults::Df::Default,
    )
    .unwrap();
    let ours = |l: &Value| l["flow"]["dport"] == 7779 && l["flow"]["src"] == n1.pod.ip6.to_string();
    rec.wait_total("IPv6 packets on the underlay", "packets", N, |l| {
        l["kind"] == "flow" && l["ifname"] == UNDERLAY_DEV && ours(l)
    });
    let lines = rec.stop();
    let packets = totals(&lines, "flow", Some("packets"), ours);
    assert_along_sender_path(&packets, N, "IPv6 packets");
    let underlay = lines
        .iter()
        .find(|l| l["kind"] == "flow" && l["ifname"] == UNDERLAY_DEV && ours(l))
        .unwrap();
    assert_eq!(underlay["flow"]["dst"], n2.pod.ip6.to_string());
    assert_eq!(underlay["outer"]["src"], n1.underlay_ip.to_string());
}

/// Incident #3: with tx checksum offload off on the VXLAN device (so TSO is off too), the
/// underlay carries MTU-sized packets built in software while the pod still hands 64 KiB GSO
/// packets to its veth. The hop lines show it in `max_len`, the largest packet per interval.
#[test]
fn offloads_off_on_the_vxlan_show_as_mtu_sized_packets_on_the_underlay() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let mut largest = Vec::new();
    for offload in ["on", "off"] {
        must(&n1.netns, "ethtool", &["-K", VXLAN_DEV, "tx", offload]);
        let mut server = faults::iperf3_server(&n2.pod.netns, 5201).unwrap();
        let rec = Recorder::start(&n1.netns, ALL_HOPS);
        must(
            &n1.pod.netns,
            "iperf3",
            &["-c", &n2.pod.ip.to_string(), "-p", "5201", "-t", "2"],
        );
        let lines = rec.stop();
        let _ = server.wait();
        let max = |dev: &str, dir: &str| {
            lines
                .iter()
                .filter(|l| l["kind"] == "hop" && l["ifname"] == dev && l["dir"] == dir)
                .map(|l| l["max_len"].as_u64().unwrap())
                .max()
                .unwrap()
        };
        largest.push((
            offload,
            max(POD_HOST_DEV, "ingress"),
            max(UNDERLAY_DEV, "egress"),
        ));
    }
    let [(_, pod_on, underlay_on), (_, pod_off, underlay_off)] = largest[..] else {
        unreachable!()
    };
    // The pod side is the same either way: GSO packets far above the MTU.
    assert!(pod_on > 3 * 1450 && pod_off > 3 * 1450, "{largest:?}");
    // With offloads on, GSO survives encapsulation; off, every packet is one MTU at most.
    assert!(underlay_on > 3 * 1500, "{largest:?}");
    assert!(underlay_off <= 1514, "{largest:?}");
}
