//! The TC packet parser, run for real in the kernel on crafted packets with BPF_PROG_TEST_RUN:
//! truncated headers, VLAN tags, IPv6 extension headers, fragments, VXLAN with a garbage inner
//! packet, Geneve with options. Each case reads back the flow the program counted. Last,
//! headers outside the packet's linear data, which BPF_PROG_TEST_RUN never makes: written
//! into a tap, and read back from `record`.

mod common;

use std::{collections::BTreeMap, net::IpAddr};

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use common::{Recorder, is_root, open_tap};
use serde_json::Value;
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, TAP_DEV, faults};
use vxprobe::{
    kernel::flows::FlowStats,
    kernel::probes::{Probes, Tables, TcMode},
    observe::anomaly,
};
use vxprobe_common::{FlowCounters, FlowFilter, FlowKey, names};

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

fn vlan(tpid: u16, inner_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend(tpid.to_be_bytes());
    f.extend([0x00, 0x64]);
    f.extend(inner_type.to_be_bytes());
    f.extend(payload);
    f
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend(total.to_be_bytes());
    p.extend(id.to_be_bytes());
    p.extend(frag.to_be_bytes());
    p.extend([64, proto, 0, 0]);
    p.extend(src);
    p.extend(dst);
    p.extend(payload);
    p
}

fn ipv6(next: u8, src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend((payload.len() as u16).to_be_bytes());
    p.extend([next, 64]);
    p.extend(src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend(dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend(payload);
    p
}

fn l4(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(sport.to_be_bytes());
    p.extend(dport.to_be_bytes());
    p.extend(((8 + payload.len()) as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(payload);
    p
}

fn vxlan(vni: u32, inner_frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend((vni << 8).to_be_bytes());
    p.extend(inner_frame);
    p
}

/// The pod addresses of the inner flows, and the node addresses of the tunnels around them.
const POD_A: [u8; 4] = [198, 19, 1, 2];
const POD_B: [u8; 4] = [198, 19, 2, 2];
const NODE_A: [u8; 4] = [198, 18, 0, 1];
const NODE_B: [u8; 4] = [198, 18, 0, 2];

/// An Ethernet frame holding an unfragmented IPv4 packet (`proto`, IP id `id`) with ports
/// `sport` > `dport` around `payload`.
fn frame4(
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    eth(
        0x0800,
        &ipv4(proto, src, dst, id, 0, &l4(sport, dport, payload)),
    )
}

/// A UDP tunnel packet between the nodes, to `dport` (4789 VXLAN, 6081 Geneve).
fn tunnel4(dport: u16, tunnel: &[u8]) -> Vec<u8> {
    frame4(17, NODE_A, NODE_B, 9, 51000, dport, tunnel)
}

/// The flows the ingress program counted over one run for each of `packets`, in order; every
/// packet is passed on (TC_ACT_UNSPEC).
fn counted_all(packets: &[&[u8]]) -> BTreeMap<FlowKey, FlowCounters> {
    let mut probes = Probes::load(TcMode::Tcx, None, &FlowFilter::NONE, Tables::default())
        .expect("loading the eBPF object");
    {
        let prog: &mut SchedClassifier = probes
            .ebpf_mut()
            .program_mut(names::TC_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        for packet in packets {
            let opts = TestRunOptions {
                data_in: Some(packet),
                ..Default::default()
            };
            let result = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
            assert_eq!(
                result.return_value as i32, -1,
                "the packet is passed on (TC_ACT_UNSPEC)"
            );
        }
    }
    let mut flows = BTreeMap::new();
    FlowStats::take(probes.ebpf_mut())
        .unwrap()
        .interval(0, |key, counters, _new| {
            flows.insert(*key, *counters);
            Ok(true)
        })
        .unwrap();
    flows
}

/// The flows one run of the ingress program counted for `packet`.
fn counted(packet: &[u8]) -> BTreeMap<FlowKey, FlowCounters> {
    counted_all(&[packet])
}

fn only_flow(packet: &[u8]) -> (vxprobe::observe::packet::Flow, FlowCounters) {
    let flows = counted(packet);
    assert_eq!(flows.len(), 1, "exactly one flow counted: {flows:?}");
    let (key, counters) = flows.into_iter().next().unwrap();
    (anomaly::flow_of(&key).expect("an IP flow"), counters)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn plain_udp_and_tcp() {
    if !is_root() {
        return;
    }
    let (flow, c) = only_flow(&frame4(17, POD_A, POD_B, 1, 1111, 53, b"q"));
    assert_eq!((flow.proto, flow.sport, flow.dport), (17, 1111, 53));
    assert_eq!((flow.src, flow.dst), (ip("198.19.1.2"), ip("198.19.2.2")));
    assert_eq!(
        (c.counters.packets, c.counters.fragments, c.outer.family),
        (1, 0, 0)
    );
}

/// (BPF_PROG_TEST_RUN itself refuses frames whose IP header is incomplete, so the cuts are
/// inside the transport header, an IPv6 extension chain, or a tunnel's inner packet.)
#[test]
fn truncated_headers_keep_what_could_be_read() {
    if !is_root() {
        return;
    }
    // Cut inside the UDP header: the flow is known, the ports are not.
    let full = frame4(17, POD_A, POD_B, 1, 1, 2, &[]);
    let (flow, _) = only_flow(&full[..14 + 20 + 2]);
    assert_eq!((flow.proto, flow.sport, flow.dport), (17, 0, 0));

    // Cut inside an IPv6 extension header chain: addresses, no ports.
    let ext = [60u8, 0, 0, 0, 0, 0, 0, 0, 17];
    let (flow, _) = only_flow(&eth(0x86dd, &ipv6(0, "fd00::1", "fd00::2", &ext)));
    assert_eq!((flow.src, flow.sport, flow.dport), (ip("fd00::1"), 0, 0));

    // VXLAN whose inner IPv4 header is cut: the outer flow, no tunnel decoding.
    let inner = frame4(6, POD_A, POD_B, 5, 1, 2, &[]);
    let (flow, c) = only_flow(&tunnel4(4789, &vxlan(1, &inner[..14 + 8])));
    assert_eq!((flow.dport, c.outer.family), (4789, 0));
}

#[test]
fn vlan_and_qinq_tags_are_skipped() {
    if !is_root() {
        return;
    }
    let ip4 = ipv4(6, POD_A, POD_B, 1, 0, &l4(40000, 443, &[0; 12]));
    let (flow, _) = only_flow(&vlan(0x8100, 0x0800, &ip4));
    assert_eq!((flow.proto, flow.dport), (6, 443));
    let mut inner_tag = vec![0x00, 0x65];
    inner_tag.extend(0x0800u16.to_be_bytes());
    inner_tag.extend(&ip4);
    let (flow, _) = only_flow(&vlan(0x88a8, 0x8100, &inner_tag));
    assert_eq!((flow.proto, flow.dport), (6, 443));
}

#[test]
fn ipv6_extension_headers_and_fragment_header() {
    if !is_root() {
        return;
    }
    // hop-by-hop (8 bytes) -> destination options (8 bytes) -> UDP
    let mut ext = vec![60, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0];
    ext.extend(l4(5000, 6000, b"x"));
    let (flow, c) = only_flow(&eth(0x86dd, &ipv6(0, "fd00::1", "fd00::2", &ext)));
    assert_eq!((flow.proto, flow.sport, flow.dport), (17, 5000, 6000));
    assert_eq!(flow.src, ip("fd00::1"));
    assert_eq!(c.counters.fragments, 0);

    // A first fragment (offset 0, M=1) keeps its ports and counts as a fragment.
    let mut frag = vec![17, 0, 0x00, 0x01, 0, 0, 0, 42];
    frag.extend(l4(5000, 6000, &[0; 32]));
    let (flow, c) = only_flow(&eth(0x86dd, &ipv6(44, "fd00::1", "fd00::2", &frag)));
    assert_eq!(
        (flow.sport, flow.dport, c.counters.fragments),
        (5000, 6000, 1)
    );
}

#[test]
fn later_ipv4_fragments_take_the_ports_of_the_first() {
    if !is_root() {
        return;
    }
    let first = eth(
        0x0800,
        &ipv4(17, POD_A, POD_B, 77, 0x2000, &l4(1234, 7777, &[0; 64])),
    );
    let second = eth(0x0800, &ipv4(17, POD_A, POD_B, 77, 9, &[0; 40]));
    let flows = counted_all(&[&first, &second]);
    assert_eq!(flows.len(), 1, "both fragments are one flow: {flows:?}");
    let (key, c) = flows.into_iter().next().unwrap();
    assert_eq!((key.sport, key.dport), (1234, 7777));
    assert_eq!((c.counters.packets, c.counters.fragments), (2, 2));
}

#[test]
fn vxlan_is_counted_by_its_inner_flow_with_the_outer_header_kept() {
    if !is_root() {
        return;
    }
    let inner = frame4(6, POD_A, POD_B, 5, 33000, 80, &[0; 12]);
    let (flow, c) = only_flow(&tunnel4(4789, &vxlan(4096, &inner)));
    assert_eq!((flow.proto, flow.sport, flow.dport), (6, 33000, 80));
    assert_eq!(flow.src, ip("198.19.1.2"));
    let o = anomaly::outer_of(&c.outer).expect("outer header kept");
    assert_eq!((o.vni, o.dport, o.src), (4096, 4789, ip("198.18.0.1")));
}

#[test]
fn vxlan_with_a_garbage_inner_packet_is_the_outer_flow() {
    if !is_root() {
        return;
    }
    let garbage = [0xffu8; 30];
    let (flow, c) = only_flow(&tunnel4(4789, &vxlan(7, &garbage)));
    assert_eq!(
        (flow.proto, flow.dport, flow.src),
        (17, 4789, ip("198.18.0.1"))
    );
    assert_eq!(c.outer.family, 0);
}

#[test]
fn geneve_options_are_skipped() {
    if !is_root() {
        return;
    }
    let inner = eth(
        0x86dd,
        &ipv6(17, "fd00::a", "fd00::b", &l4(7000, 8000, b"y")),
    );
    // Geneve: ver/optlen = 2 words (8 bytes of options), protocol 0x6558, VNI 99.
    let mut geneve = vec![0x02, 0x00, 0x65, 0x58, 0, 0, 99, 0];
    geneve.extend([0u8; 8]);
    geneve.extend(inner);
    let (flow, c) = only_flow(&tunnel4(6081, &geneve));
    assert_eq!(
        (flow.sport, flow.dport, flow.dst),
        (7000, 8000, ip("fd00::b"))
    );
    assert_eq!(c.outer.vni, 99);
}

/// Headers the packet's linear data does not hold are read through bpf_skb_load_bytes, by the
/// same parse. A frame of a page or more written into a tap after a virtio-net header with
/// hdr_len 14 keeps only its Ethernet header linear (tun_alloc_skb): every header after it,
/// the tunnel's inner ones too, is in paged data.
#[test]
fn headers_in_paged_data_are_read_through_the_helper() {
    if !is_root() {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
    // Frames of more than a page; with 64 KiB pages, longer than an IP packet can be.
    let payload_len = page + 904;
    if payload_len > 60_000 {
        eprintln!("skipped: pages of {page} bytes leave no frame this test can write");
        return;
    }
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let node = &lab.nodes[0].netns;
    let mut rec = Recorder::start(node, &["--stats-interval", "200ms", "-i", TAP_DEV]);
    let payload = vec![0x5a; payload_len];
    let plain = frame4(
        17,
        [198, 18, 200, 1],
        [198, 18, 200, 2],
        1,
        40001,
        7001,
        &payload,
    );
    let inner = frame4(
        6,
        [198, 18, 202, 1],
        [198, 18, 202, 2],
        2,
        40003,
        7003,
        &payload,
    );
    let tunneled = frame4(
        17,
        [198, 18, 201, 1],
        [198, 18, 201, 2],
        3,
        40002,
        4789,
        &vxlan(77, &inner),
    );
    let v6 = eth(
        0x86dd,
        &ipv6(17, "fd00::a:1", "fd00::a:2", &l4(40004, 7004, &payload)),
    );
    const N: u64 = 5;
    let frames = [plain, tunneled, v6];
    faults::in_netns(node, move || {
        let mut tap = open_tap(
            TAP_DEV,
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
        )?;
        // struct virtio_net_hdr: no offloads, hdr_len 14 (little-endian, as tun reads it here).
        let mut vnet = [0u8; 10];
        vnet[2..4].copy_from_slice(&14u16.to_le_bytes());
        for _ in 0..N {
            for frame in &frames {
                // The frames' destination MAC is not the tap's: the stack drops them after
                // the TC ingress hook, before routing.
                std::io::Write::write_all(&mut tap, &[&vnet[..], frame].concat())?;
            }
        }
        Ok(())
    })
    .expect("writing into the tap");
    // Each flow's packets at the tap's ingress (checked exactly below).
    for (sport, dport) in [(40001, 7001), (40003, 7003), (40004, 7004)] {
        rec.wait_total(&format!("flow {sport} > {dport}"), "packets", N, |l| {
            l["kind"] == "flow"
                && l["ifname"] == TAP_DEV
                && l["dir"] == "ingress"
                && l["flow"]["sport"] == sport
                && l["flow"]["dport"] == dport
        });
    }
    let lines = rec.stop();
    let at_tap: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "flow" && l["ifname"] == TAP_DEV && l["dir"] == "ingress")
        .collect();
    let packets = |sport: u16, dport: u16| -> u64 {
        at_tap
            .iter()
            .filter(|l| l["flow"]["sport"] == sport && l["flow"]["dport"] == dport)
            .map(|l| l["packets"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(packets(40001, 7001), N, "IPv4: {at_tap:#?}");
    assert_eq!(packets(40003, 7003), N, "VXLAN's inner flow: {at_tap:#?}");
    assert_eq!(packets(40004, 7004), N, "IPv6: {at_tap:#?}");
    let tunneled = at_tap.iter().find(|l| l["flow"]["dport"] == 7003).unwrap();
    assert_eq!(tunneled["flow"]["src"], "198.18.202.1");
    assert_eq!(tunneled["outer"]["vni"], 77);
    assert_eq!(tunneled["outer"]["sport"], 40002);
    let v6 = at_tap.iter().find(|l| l["flow"]["dport"] == 7004).unwrap();
    assert_eq!(v6["flow"]["dst"], "fd00::a:2");
}

/// The skb-hash shortcut (a packet whose hash has a hint skips the parse) must never read a
/// packet otherwise than the parse does. Every frame the pod writes here leaves its eth0 with
/// one and the same hash (a classifier there sets it), so each frame below meets the hint the
/// frame before it left at cali0:
/// - a VXLAN frame whose inner frame is not IP is the outer flow, and the VXLAN frames of an
///   IP inner flow between the same nodes after it are that inner flow;
/// - an IPv6 packet whose extension chain ends with the packet (its "protocol" is the
///   fragment header) is followed by fragments between the same hosts: they are fragments.
#[test]
fn frames_that_share_a_hash_are_still_read_as_the_parse_reads_them() {
    if !is_root() {
        return;
    }
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let pod = lab.nodes[0].pod.netns.clone();
    let setter = common::tc::load_hash_setter("one_hash", 0x5eed_5678)
        .unwrap_or_else(|e| panic!("BPF_PROG_LOAD one_hash: {e}"));
    let pinned = common::tc::PinnedProgram::pin("one_hash_parse", &setter);
    common::tc::add_clsact(&pod, "eth0");
    common::tc::add_filter(
        &pod,
        "eth0",
        "egress",
        "1",
        &["bpf", "da", "object-pinned", pinned.path()],
    );
    let mut rec = Recorder::start(
        &lab.nodes[0].netns,
        &["--stats-interval", "200ms", "-i", POD_HOST_DEV],
    );
    const N: u64 = 20;
    let arp = eth(0x0806, &[0u8; 28]);
    let not_ip = tunnel4(4789, &vxlan(7, &arp));
    let inner = tunnel4(
        4789,
        &vxlan(7, &frame4(17, POD_A, POD_B, 5, 7000, 8000, b"in")),
    );
    let (a, b) = ("fd00::5:1", "fd00::5:2");
    let chain_cut_short = eth(0x86dd, &ipv6(44, a, b, &[]));
    let fragment = |id: u32| {
        // Fragment header: next header UDP, offset 0 with more fragments to come.
        let mut header = vec![17, 0, 0x00, 0x01];
        header.extend(id.to_be_bytes());
        header.extend(l4(7001, 8001, b"fragment"));
        eth(0x86dd, &ipv6(44, a, b, &header))
    };
    faults::in_netns(&pod, move || {
        let writer = faults::FrameWriter::open("eth0")?;
        writer.send(&not_ip, false)?;
        for _ in 0..N {
            writer.send(&inner, false)?;
        }
        writer.send(&chain_cut_short, false)?;
        for id in 0..N as u32 {
            writer.send(&fragment(id), false)?;
        }
        Ok(())
    })
    .expect("writing frames into the pod's eth0");
    let at_cali0 = |l: &Value| l["ifname"] == POD_HOST_DEV && l["dir"] == "ingress";
    rec.wait_total("the inner flow", "packets", N, |l| {
        l["kind"] == "flow" && at_cali0(l) && l["flow"]["dport"] == 8000
    });
    rec.wait_hop(POD_HOST_DEV, "ingress", "fragments", N);
    let lines = rec.stop();
    let flows: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "flow" && at_cali0(l))
        .collect();
    let sum = |field: &str, keep: &dyn Fn(&Value) -> bool| -> u64 {
        flows
            .iter()
            .filter(|l| keep(l))
            .map(|l| l[field].as_u64().unwrap())
            .sum()
    };
    let inner_flow = |l: &Value| l["flow"]["sport"] == 7000 && l["flow"]["dport"] == 8000;
    let outer_flow = |l: &Value| l["flow"]["dport"] == 4789;
    assert_eq!(sum("packets", &inner_flow), N, "the inner flow: {flows:#?}");
    assert_eq!(sum("packets", &outer_flow), 1, "the outer flow: {flows:#?}");
    let v6 = |l: &Value| l["flow"]["dst"] == b;
    assert_eq!(sum("packets", &v6), N + 1, "IPv6: {flows:#?}");
    assert_eq!(sum("fragments", &v6), N, "IPv6 fragments: {flows:#?}");
    let hop_fragments: u64 = lines
        .iter()
        .filter(|l| l["kind"] == "hop" && at_cali0(l))
        .map(|l| l["fragments"].as_u64().unwrap())
        .sum();
    assert_eq!(hop_fragments, N);
}
