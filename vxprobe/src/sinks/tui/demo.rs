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
    AnomalySample, AppEvent, Direction, EventKind, Flow, FlowHop, FlowSample, HopCounts, HopId,
    HopSample, Offload, Outer, Role,
};
use crate::observe::judge;

const TCP: u8 = 6;
const UDP: u8 = 17;
const INTERVAL: Duration = Duration::from_secs(1);
/// 2026-11-22 01:02:03 UTC: fixed, so screens are the same on every run.
const START_SECS: u64 = 1_795_309_323;

type Device = (&'static str, u32, Role);
const ETH0: Device = ("eth0", 2, Role::Underlay);
const VXLAN: Device = ("vxlan.calico", 4, Role::Overlay);
const CALI0: Device = ("cali0", 7, Role::Pod);
const TAP0: Device = ("tap0", 9, Role::Tap);
/// A 64 KiB GSO packet: IP length 65,212 plus the Ethernet header.
const GSO_LEN: u32 = 65_226;

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

fn hop((name, ifindex, role): Device, dir: Direction, counts: HopCounts) -> FlowHop {
    FlowHop {
        ifname: name.to_owned(),
        ifindex,
        dir,
        role,
        pod: None,
        counts,
    }
}

/// The hops of a flow from the pod out through the tunnel: what the pod sent, what the
/// tunnel sent, what went on the wire.
fn departing(pod: HopCounts, tunnel: HopCounts, wire: HopCounts) -> Vec<FlowHop> {
    vec![
        hop(CALI0, Direction::Ingress, pod),
        hop(VXLAN, Direction::Egress, tunnel),
        hop(ETH0, Direction::Egress, wire),
    ]
}

/// The hops of a flow arriving through the tunnel: what came off the wire, then what went on
/// through the tunnel to the pod.
fn arriving(wire: HopCounts, delivered: HopCounts) -> Vec<FlowHop> {
    vec![
        hop(ETH0, Direction::Ingress, wire),
        hop(VXLAN, Direction::Ingress, delivered.clone()),
        hop(CALI0, Direction::Egress, delivered),
    ]
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
    // The iperf client sends GSO packets of 45 segments; the tunnel's TC hook still sees
    // them whole, the underlay sees the segments (software segmentation in between).
    let gso = 86 + wobble;
    let segments = gso * 45;
    let acks = 1_100 + wobble * 3;
    let retrans = 30 + wobble * 3;
    let web_in = 180 + wobble;

    // Hops listed out of order on purpose: from_hops puts them in path order.
    let data = FlowSample::from_hops(
        node.data.clone(),
        vxlan_outer(ip(198, 18, 0, 1), 47000, ip(198, 18, 0, 2)),
        vec![
            hop(ETH0, Egress, counts(segments, 1_448)),
            hop(VXLAN, Egress, counts(gso, 64_330)),
            hop(
                CALI0,
                Ingress,
                HopCounts {
                    retransmits: retrans,
                    ..counts(gso, 64_330)
                },
            ),
        ],
    );
    let acks_flow = FlowSample::from_hops(
        node.acks.clone(),
        vxlan_outer(ip(198, 18, 0, 2), 47001, ip(198, 18, 0, 1)),
        arriving(
            HopCounts {
                drops: csum,
                csum_errors: csum,
                ..counts(acks, 116)
            },
            counts(acks - csum, 66),
        ),
    );
    let dns = FlowSample::from_hops(
        node.dns.clone(),
        vxlan_outer(ip(198, 18, 0, 1), 51000, ip(198, 18, 0, 3)),
        departing(counts(4, 74), counts(4, 74), counts(4, 124)),
    );
    let web = FlowSample::from_hops(
        node.web.clone(),
        vxlan_outer(ip(198, 18, 0, 2), 47100, ip(198, 18, 0, 1)),
        arriving(
            HopCounts {
                drops: fw,
                ..counts(web_in, 900)
            },
            counts(web_in - fw, 850),
        ),
    );
    let media = FlowSample::from_hops(
        node.media.clone(),
        None,
        vec![
            hop(
                TAP0,
                Egress,
                HopCounts {
                    drops: tap_drops,
                    oversize: tap_drops,
                    ..counts(400 - tap_drops, 1_150)
                },
            ),
            hop(
                ETH0,
                Ingress,
                HopCounts {
                    fragments: 6,
                    ..counts(400, 1_200)
                },
            ),
        ],
    );
    let https = FlowSample::from_hops(
        node.https.clone(),
        vxlan_outer(ip(198, 18, 0, 1), 47200, ip(198, 18, 0, 2)),
        departing(
            HopCounts {
                retransmits: 3,
                ..counts(20, 1_300)
            },
            counts(20, 1_300),
            counts(10, 1_350),
        ),
    );

    let on = Offload {
        tx_csum: true,
        tso: true,
        gso: true,
    };
    let device = |(name, ifindex, role): Device, dir, mtu, offload| {
        let mut h = HopSample::new(name, ifindex, dir, role, mtu, INTERVAL);
        h.offload = offload;
        h
    };
    // A hop's packets, bytes, segments and largest packet, as the pipeline counts them.
    let size = |h: &mut HopSample, packets: u64, bytes: u64, segs: u64, max_len: u32| {
        h.packets = packets;
        h.bytes = bytes;
        h.segs = segs;
        h.mean_segment = bytes.checked_div(segs).and_then(|m| u32::try_from(m).ok());
        h.max_len = Some(max_len);
    };
    let pod_out_bytes = gso * 64_330 + 4 * 74 + 20 * 1_300;
    let pod_out_packets = gso + 4 + 20;
    let mut cali_in = device(CALI0, Ingress, 1450, Some(on));
    size(
        &mut cali_in,
        pod_out_packets,
        pod_out_bytes,
        segments + 24,
        GSO_LEN,
    );
    cali_in.retransmits = retrans + 3;
    let mut cali_eg = device(CALI0, Egress, 1450, Some(on));
    let pod_in = acks - csum + web_in - fw;
    let pod_in_bytes = (acks - csum) * 66 + (web_in - fw) * 850;
    size(&mut cali_eg, pod_in, pod_in_bytes, pod_in, 1_200);
    let tunnel_offload = Some(Offload {
        tx_csum: false,
        tso: false,
        gso: true,
    });
    let mut vx_in = device(VXLAN, Ingress, 1450, tunnel_offload);
    size(&mut vx_in, pod_in, pod_in_bytes, pod_in, 1_200);
    let mut vx_eg = device(VXLAN, Egress, 1450, tunnel_offload);
    size(
        &mut vx_eg,
        pod_out_packets,
        pod_out_bytes,
        segments + 24,
        GSO_LEN,
    );
    let mut eth_in = device(ETH0, Ingress, 1500, Some(on));
    let wire_in = acks + web_in + 400;
    size(
        &mut eth_in,
        wire_in,
        acks * 116 + web_in * 900 + 400 * 1_200,
        wire_in,
        1_514,
    );
    eth_in.drops = csum + fw;
    eth_in.csum_errors = csum;
    eth_in.fragments = 6;
    let mut eth_eg = device(ETH0, Egress, 1500, Some(on));
    let wire_out = segments + 4 + 10;
    size(
        &mut eth_eg,
        wire_out,
        segments * 1_448 + 4 * 124 + 10 * 1_350,
        wire_out,
        1_514,
    );
    let mut tap_in = device(TAP0, Ingress, 1500, None);
    size(&mut tap_in, 12, 12 * 90, 12, 90);
    let mut tap_eg = device(TAP0, Egress, 1500, None);
    let tap_out = 400 - tap_drops;
    size(&mut tap_eg, tap_out, tap_out * 1_150, tap_out, 1_514);
    tap_eg.drops = tap_drops;
    tap_eg.oversize = tap_drops;

    judged(
        vec![
            cali_in, cali_eg, vx_in, vx_eg, eth_in, eth_eg, tap_in, tap_eg,
        ],
        vec![data, acks_flow, dns, web, media, https],
        if i == 6 { 3 } else { 0 },
    )
}

/// An interval of the scenario's hops and flows, with what the interval model judges of
/// them (as the feed passes it on): each hop's loss, the hop losing most, the offload
/// signature.
pub fn judged(mut hops: Vec<HopSample>, flows: Vec<FlowSample>, lost: u64) -> AppEvent {
    for h in &mut hops {
        h.loss_pct = judge::hop_loss_pct(h.dir, h.packets, h.drops);
    }
    let offloads: std::collections::HashMap<u32, Offload> = hops
        .iter()
        .filter_map(|h| Some((h.ifindex, h.offload?)))
        .collect();
    AppEvent::Interval {
        worst: judge::worst_hop(&hops).map(HopId::from),
        hint: judge::offload_hint(&hops, |ifindex| offloads.get(&ifindex).copied()),
        hops,
        flows,
        lost,
    }
}

/// The anomalies of interval `i`: one line for each kind that happened in it (a real feed
/// sends one per packet).
fn anomalies(node: &Node, i: usize) -> Vec<AppEvent> {
    let mut out = Vec::new();
    let mut push =
        |millis, kind, device: Device, dir, reason: &str, location: &str, len, flow: &Flow| {
            out.push(AppEvent::Anomaly(AnomalySample {
                ts: at(i as u64, millis),
                kind,
                ifname: Some(device.0.to_owned()),
                dir: Some(dir),
                reason: reason.to_owned(),
                location: location.to_owned(),
                len,
                flow: Some(flow.clone()),
                pod: None,
                count: 1,
            }));
        };
    if CSUM_DROPS[i] > 0 {
        push(
            120,
            EventKind::CsumError,
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
            EventKind::Drop,
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
            EventKind::Oversize,
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
            EventKind::CsumError,
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
            FlowSample::from_hops(
                flow(
                    TCP,
                    ip(198, 19, (k >> 16) as u8, (k >> 8) as u8),
                    (k & 0xffff) as u16,
                    ip(198, 19, 200, (k % 250) as u8),
                    443,
                ),
                vxlan_outer(ip(198, 18, 0, 1), 40000, ip(198, 18, 0, 2)),
                vec![
                    hop(CALI0, Ingress, counts(packets, 900)),
                    hop(VXLAN, Egress, counts(packets, 900)),
                    hop(ETH0, Egress, sample(packets)),
                ],
            )
        })
        .collect();
    match interval(&Node::new(), 4) {
        AppEvent::Interval { hops, .. } => judged(hops, flows, 0),
        other => other,
    }
}
