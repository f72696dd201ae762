//! A realistic scenario for tests, screenshots and demos: one Calico VXLAN node during an
//! iperf run. Outer UDP checksums fail on arrival at `eth0` (loss on one hop), the tunnel
//! device has TX checksum offload and TSO off (it sends MTU-sized segments while the pod's veth
//! carries 64 KiB GSO packets), a tap refuses oversized packets, and a pod's HTTPS flow loses
//! bytes between the tunnel and the NIC with no drop counted.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::model::{
    AnomalySample, AppEvent, Direction, EventKindView, Flow, FlowHop, FlowSample, HopCounts,
    HopSample, Offload, Outer, Role,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const INTERVAL: Duration = Duration::from_secs(1);
/// 2026-11-22 01:02:03 UTC: fixed, so screens are the same on every run.
const START_SECS: u64 = 1_795_309_323;

const ETH0: (&str, u32) = ("eth0", 2);
const VXLAN: (&str, u32) = ("vxlan.calico", 4);
const CALI0: (&str, u32) = ("cali0", 7);
const TAP0: (&str, u32) = ("tap0", 9);

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn flow(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Flow {
    Flow {
        proto,
        src,
        dst,
        sport,
        dport,
    }
}

fn vxlan_outer(src: IpAddr, sport: u16, dst: IpAddr) -> Option<Outer> {
    Some(Outer {
        src,
        dst,
        sport,
        dport: 4789,
        vni: 4096,
    })
}

fn at(i: u64, millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(START_SECS + i) + Duration::from_millis(millis)
}

/// Counts of one hop: packets of `mean` bytes.
fn counts(packets: u64, mean: u64) -> HopCounts {
    HopCounts {
        packets,
        bytes: packets * mean,
        ..HopCounts::default()
    }
}

fn hop((name, ifindex): (&str, u32), dir: Direction, counts: HopCounts) -> FlowHop {
    FlowHop {
        ifname: name.to_owned(),
        ifindex,
        dir,
        counts,
    }
}

struct Node {
    /// The iperf client's data flow: pod -> tunnel -> NIC.
    data: Flow,
    /// Its ACKs, arriving with bad outer UDP checksums.
    acks: Flow,
    dns: Flow,
    /// Filtered by the host firewall.
    web: Flow,
    /// A stream routed to the tap, some of it too big for it.
    media: Flow,
    /// Loses bytes between the tunnel and the NIC with no drop seen.
    https: Flow,
}

impl Node {
    fn new() -> Self {
        let pod = ip(198, 19, 1, 2);
        Self {
            data: flow(TCP, pod, 41234, ip(198, 19, 2, 2), 5201),
            acks: flow(TCP, ip(198, 19, 2, 2), 5201, pod, 41234),
            dns: flow(UDP, pod, 53124, ip(198, 19, 0, 10), 53),
            web: flow(TCP, ip(198, 19, 2, 7), 8080, pod, 36512),
            media: flow(UDP, ip(198, 18, 9, 2), 5004, ip(198, 19, 1, 9), 5004),
            https: flow(TCP, ip(198, 19, 1, 5), 39000, ip(198, 19, 2, 8), 443),
        }
    }
}

/// Drops of bad-checksum ACKs at `eth0` per interval: the trouble grows, then stays.
const CSUM_DROPS: [u64; 10] = [0, 3, 12, 40, 71, 58, 80, 66, 90, 64];
/// Firewall drops at `eth0` per interval.
const FW_DROPS: [u64; 10] = [0, 0, 1, 0, 2, 0, 0, 3, 0, 7];
/// Oversize drops at `tap0` per interval.
const TAP_DROPS: [u64; 10] = [0, 0, 0, 2, 0, 1, 0, 0, 2, 2];

fn interval(node: &Node, i: usize) -> AppEvent {
    use Direction::{Egress, Ingress};
    let wobble = (i as u64 * 7) % 5;
    let csum = CSUM_DROPS[i];
    let fw = FW_DROPS[i];
    let tap_drops = TAP_DROPS[i];
    let gso = 86 + wobble;
    let segments = gso * 45;
    let acks = 1_100 + wobble * 3;
    let retrans = 30 + wobble * 3;

    let data = FlowSample {
        flow: node.data.clone(),
        outer: vxlan_outer(ip(198, 18, 0, 1), 47000, ip(198, 18, 0, 2)),
        hops: vec![
            hop(
                CALI0,
                Ingress,
                HopCounts {
                    retransmits: retrans,
                    ..counts(gso, 64_330)
                },
            ),
            hop(VXLAN, Egress, counts(segments, 1_398)),
            hop(ETH0, Egress, counts(segments, 1_448)),
        ],
        total: HopCounts {
            retransmits: retrans,
            ..counts(gso, 64_330)
        },
    };
    let ack_drops = HopCounts {
        drops: csum,
        csum_errors: csum,
        ..counts(acks, 116)
    };
    let acks_flow = FlowSample {
        flow: node.acks.clone(),
        outer: vxlan_outer(ip(198, 18, 0, 2), 47001, ip(198, 18, 0, 1)),
        hops: vec![
            hop(ETH0, Ingress, ack_drops.clone()),
            hop(VXLAN, Ingress, counts(acks - csum, 66)),
            hop(CALI0, Egress, counts(acks - csum, 66)),
        ],
        total: HopCounts {
            drops: csum,
            csum_errors: csum,
            ..counts(acks, 116)
        },
    };
    let dns = FlowSample {
        flow: node.dns.clone(),
        outer: vxlan_outer(ip(198, 18, 0, 1), 51000, ip(198, 18, 0, 3)),
        hops: vec![
            hop(CALI0, Ingress, counts(4, 74)),
            hop(VXLAN, Egress, counts(4, 74)),
            hop(ETH0, Egress, counts(4, 124)),
        ],
        total: counts(4, 74),
    };
    let web_in = 180 + wobble;
    let web = FlowSample {
        flow: node.web.clone(),
        outer: vxlan_outer(ip(198, 18, 0, 2), 47100, ip(198, 18, 0, 1)),
        hops: vec![
            hop(
                ETH0,
                Ingress,
                HopCounts {
                    drops: fw,
                    ..counts(web_in, 900)
                },
            ),
            hop(VXLAN, Ingress, counts(web_in - fw, 850)),
            hop(CALI0, Egress, counts(web_in - fw, 850)),
        ],
        total: HopCounts {
            drops: fw,
            ..counts(web_in, 900)
        },
    };
    let media = FlowSample {
        flow: node.media.clone(),
        outer: None,
        hops: vec![
            hop(
                ETH0,
                Ingress,
                HopCounts {
                    fragments: 6,
                    ..counts(400, 1_200)
                },
            ),
            hop(
                TAP0,
                Egress,
                HopCounts {
                    drops: tap_drops,
                    oversize: tap_drops,
                    ..counts(400 - tap_drops, 1_150)
                },
            ),
        ],
        total: HopCounts {
            drops: tap_drops,
            oversize: tap_drops,
            fragments: 6,
            ..counts(400, 1_200)
        },
    };
    let https = FlowSample {
        flow: node.https.clone(),
        outer: vxlan_outer(ip(198, 18, 0, 1), 47200, ip(198, 18, 0, 2)),
        hops: vec![
            hop(
                CALI0,
                Ingress,
                HopCounts {
                    retransmits: 3,
                    ..counts(20, 1_300)
                },
            ),
            hop(VXLAN, Egress, counts(20, 1_300)),
            hop(ETH0, Egress, counts(10, 1_350)),
        ],
        total: HopCounts {
            retransmits: 3,
            ..counts(20, 1_300)
        },
    };

    let on = Offload {
        tx_csum: true,
        tso: true,
        gso: true,
    };
    let device = |(name, ifindex): (&str, u32), dir, role, mtu, offload| {
        let mut h = HopSample::new(name, ifindex, dir, role, mtu, INTERVAL);
        h.offload = offload;
        h
    };
    let mut cali_in = device(CALI0, Ingress, Role::Pod, 1450, Some(on));
    cali_in.packets = gso + 4 + 20;
    cali_in.bytes = gso * 64_330 + 4 * 74 + 20 * 1_300;
    cali_in.gso_packets = gso;
    cali_in.retransmits = retrans + 3;
    let mut cali_eg = device(CALI0, Egress, Role::Pod, 1450, Some(on));
    cali_eg.packets = acks - csum + web_in - fw;
    cali_eg.bytes = (acks - csum) * 66 + (web_in - fw) * 850;
    let tunnel_offload = Some(Offload {
        tx_csum: false,
        tso: false,
        gso: true,
    });
    let mut vx_in = device(VXLAN, Ingress, Role::Overlay, 1450, tunnel_offload);
    vx_in.packets = cali_eg.packets;
    vx_in.bytes = cali_eg.bytes;
    let mut vx_eg = device(VXLAN, Egress, Role::Overlay, 1450, tunnel_offload);
    vx_eg.packets = segments + 4 + 20;
    vx_eg.bytes = segments * 1_398 + 4 * 74 + 20 * 1_300;
    let mut eth_in = device(ETH0, Ingress, Role::Underlay, 1500, Some(on));
    eth_in.packets = acks + web_in + 400;
    eth_in.bytes = acks * 116 + web_in * 900 + 400 * 1_200;
    eth_in.drops = csum + fw;
    eth_in.csum_errors = csum;
    eth_in.fragments = 6;
    let mut eth_eg = device(ETH0, Egress, Role::Underlay, 1500, Some(on));
    eth_eg.packets = segments + 4 + 10;
    eth_eg.bytes = segments * 1_448 + 4 * 124 + 10 * 1_350;
    let mut tap_in = device(TAP0, Ingress, Role::Tap, 1500, None);
    tap_in.packets = 12;
    tap_in.bytes = 12 * 90;
    let mut tap_eg = device(TAP0, Egress, Role::Tap, 1500, None);
    tap_eg.packets = 400 - tap_drops;
    tap_eg.bytes = (400 - tap_drops) * 1_150;
    tap_eg.drops = tap_drops;
    tap_eg.oversize = tap_drops;

    AppEvent::Interval {
        hops: vec![
            cali_in, cali_eg, vx_in, vx_eg, eth_in, eth_eg, tap_in, tap_eg,
        ],
        flows: vec![data, acks_flow, dns, web, media, https],
        lost: if i == 6 { 3 } else { 0 },
    }
}

/// The anomalies of interval `i`: one line for each kind that happened in it (a real feed
/// sends one per packet).
fn anomalies(node: &Node, i: usize) -> Vec<AppEvent> {
    let mut out = Vec::new();
    let mut push =
        |millis, kind, device: (&str, u32), dir, reason: &str, location: &str, len, flow: &Flow| {
            out.push(AppEvent::Anomaly(AnomalySample {
                ts: at(i as u64, millis),
                kind,
                ifname: Some(device.0.to_owned()),
                dir: Some(dir),
                reason: reason.to_owned(),
                location: location.to_owned(),
                len,
                flow: Some(flow.clone()),
            }));
        };
    if CSUM_DROPS[i] > 0 {
        push(
            120,
            EventKindView::CsumError,
            ETH0,
            Direction::Ingress,
            "UDP_CSUM",
            "__udp4_lib_rcv",
            116,
            &node.acks,
        );
    }
    if FW_DROPS[i] > 0 {
        push(
            340,
            EventKindView::Drop,
            ETH0,
            Direction::Ingress,
            "NETFILTER_DROP",
            "nft_do_chain",
            900,
            &node.web,
        );
    }
    if TAP_DROPS[i] > 0 {
        push(
            610,
            EventKindView::Oversize,
            TAP0,
            Direction::Egress,
            "PKT_TOO_BIG",
            "ip_forward",
            1_528,
            &node.media,
        );
    }
    if CSUM_DROPS[i] > 50 {
        push(
            870,
            EventKindView::CsumError,
            ETH0,
            Direction::Ingress,
            "UDP_CSUM",
            "__udp4_lib_rcv",
            116,
            &node.acks,
        );
    }
    out
}

/// The whole scenario: the status, then ten 1-second intervals, each followed by its
/// anomalies.
pub fn demo_events() -> Vec<AppEvent> {
    let node = Node::new();
    let mut events = vec![AppEvent::Status {
        hooks: vec!["tc:tcx".into(), "tp_btf:kfree_skb".into()],
        interval: INTERVAL,
    }];
    for i in 0..CSUM_DROPS.len() {
        events.push(interval(&node, i));
        events.extend(anomalies(&node, i));
    }
    events
}

/// The data of interval `i` of the scenario (wrapping), for a demo that keeps going.
pub fn demo_interval(i: usize) -> Vec<AppEvent> {
    let node = Node::new();
    let i = i % CSUM_DROPS.len();
    let mut events = vec![interval(&node, i)];
    events.extend(anomalies(&node, i));
    events
}

/// One interval with `n` distinct flows on the scenario's hops, some of them lossy (for
/// benchmarks and bounds tests). `seed` shifts the flows' ports so calls can add new flows.
pub fn many_flows(n: usize, seed: u32) -> AppEvent {
    use Direction::{Egress, Ingress};
    let flows = (0..n)
        .map(|k| {
            let k = k as u32 + seed;
            let drops = u64::from(k.is_multiple_of(7)) * u64::from(k % 13);
            let sample = |packets: u64| HopCounts {
                drops,
                csum_errors: drops / 2,
                retransmits: u64::from(k % 5),
                fragments: u64::from(k.is_multiple_of(11)),
                ..counts(packets, 900)
            };
            let packets = 10 + u64::from(k % 97);
            FlowSample {
                flow: flow(
                    TCP,
                    ip(198, 19, (k >> 16) as u8, (k >> 8) as u8),
                    (k & 0xffff) as u16,
                    ip(198, 19, 200, (k % 250) as u8),
                    443,
                ),
                outer: vxlan_outer(ip(198, 18, 0, 1), 40000, ip(198, 18, 0, 2)),
                hops: vec![
                    hop(CALI0, Ingress, counts(packets, 900)),
                    hop(VXLAN, Egress, counts(packets, 900)),
                    hop(ETH0, Egress, sample(packets)),
                ],
                total: sample(packets),
            }
        })
        .collect();
    match interval(&Node::new(), 4) {
        AppEvent::Interval { hops, .. } => AppEvent::Interval {
            hops,
            flows,
            lost: 0,
        },
        other => other,
    }
}
