//! The join on recordings built in memory: clock skew, the shared window, flows matched across
//! nodes and their losses located. (The lab tests in tests/report.rs do it on real traffic.)

mod paths;

use std::collections::BTreeMap;

use super::{
    join::{JoinError, Report, Where, join},
    read::{Event, FlowId, FlowSeries, HopId, HopPoint, Interval, Micros, OuterId, Recording},
};

const S: Micros = 1_000_000;

/// A recording's shape: intervals of `len` from `start` (true time), timestamps written on a
/// clock `clock` ahead of the truth.
#[derive(Clone, Copy)]
struct Shape {
    node: &'static str,
    netns: u64,
    start: Micros,
    len: Micros,
    n: usize,
    clock: Micros,
}

fn recording(shape: Shape) -> Recording {
    Recording {
        file: format!("{}.jsonl", shape.node),
        node: shape.node.to_owned(),
        node_named: true,
        schema_version: 1,
        vxprobe_version: "test".to_owned(),
        kernel: "6.18".to_owned(),
        netns: shape.netns,
        intervals: (1..=shape.n)
            .map(|i| Interval {
                end: shape.start + i as Micros * shape.len + shape.clock,
                len: shape.len,
            })
            .collect(),
        hops: BTreeMap::new(),
        flows: BTreeMap::new(),
        events: Vec::new(),
        notes: Vec::new(),
        lost_events: 0,
        evicted: 0,
        summary: true,
        truncated: None,
    }
}

fn udp(dport: u16) -> FlowId {
    FlowId {
        proto: "udp".to_owned(),
        src: "198.19.1.2".to_owned(),
        dst: "198.19.2.2".to_owned(),
        sport: 40001,
        dport,
    }
}

/// Adds a flow's counts at a hop: `count(start, end)` on the true clock, per interval.
fn add(
    rec: &mut Recording,
    clock: Micros,
    flow: &FlowId,
    hop: (&str, &str, &str),
    vni: Option<u32>,
    count: impl Fn(Micros, Micros) -> u64,
) {
    let (ifname, dir, role) = hop;
    let points = rec
        .intervals
        .iter()
        .enumerate()
        .map(|(i, iv)| {
            let n = count(iv.start() - clock, iv.end - clock);
            HopPoint {
                interval: i,
                packets: n,
                bytes: n * 100,
                drops: 0,
                segs: n,
                fragments: 0,
            }
        })
        .collect();
    let outer = vni.map(|vni| OuterId {
        src: "198.18.0.1".to_owned(),
        dst: "198.18.0.2".to_owned(),
        sport: 5000,
        dport: 4789,
        vni,
    });
    rec.flows.entry(flow.clone()).or_default().insert(
        (
            HopId {
                ifname: ifname.to_owned(),
                dir: dir.to_owned(),
            },
            vni,
        ),
        FlowSeries {
            role: role.to_owned(),
            outer,
            points,
        },
    );
}

fn drop_event(flow: &FlowId, ifname: &str, netns: u64, at: Micros, count: u64) -> Event {
    Event {
        ts: at,
        kind: "drop".to_owned(),
        ifname: Some(ifname.to_owned()),
        netns: Some(netns),
        dir: None,
        reason: Some("NETFILTER_DROP".to_owned()),
        location: Some("nft_do_chain".to_owned()),
        flow: Some(flow.clone()),
        vni: None,
        count,
        len: Some(100),
        mtu: None,
        errno: None,
        process: None,
        pcap_frame: None,
        dropped: true,
    }
}

/// Packets per second varying from second to second (a fixed pseudo-random pattern), so two
/// recordings of it can only line up one way.
fn bursty(seed: u64) -> impl Fn(Micros, Micros) -> u64 + Clone {
    move |start: Micros, end: Micros| -> u64 {
        let rate = |second: i64| -> f64 {
            let mut x = (second as u64)
                .wrapping_add(seed)
                .wrapping_mul(6364136223846793005);
            x ^= x >> 29;
            (x % 400) as f64 + if x.is_multiple_of(3) { 0.0 } else { 200.0 }
        };
        let mut total = 0.0;
        let mut t = start;
        while t < end {
            let second = t.div_euclid(S);
            let next = ((second + 1) * S).min(end);
            total += rate(second) * (next - t) as f64 / S as f64;
            t = next;
        }
        total.round() as u64
    }
}

const A_OUT: [(&str, &str, &str); 3] = [
    ("cali0", "ingress", "pod"),
    ("vxlan.calico", "egress", "overlay"),
    ("eth0", "egress", "underlay"),
];
const B_IN: [(&str, &str, &str); 3] = [
    ("eth0", "ingress", "underlay"),
    ("vxlan.calico", "ingress", "overlay"),
    ("cali0", "egress", "pod"),
];

/// Two nodes with `traffic` from a's pod to b's pod and `back` the other way, each hop's count
/// scaled by `keep` (a: cali0, vxlan, eth0; b: eth0, vxlan, cali0) for losses.
fn two_nodes(
    a: Shape,
    b: Shape,
    traffic: impl Fn(Micros, Micros) -> u64 + Clone,
    back: impl Fn(Micros, Micros) -> u64 + Clone,
    keep: [f64; 6],
) -> (Recording, Recording) {
    let (mut ra, mut rb) = (recording(a), recording(b));
    let flow = udp(7000);
    let reply = FlowId {
        src: flow.dst.clone(),
        dst: flow.src.clone(),
        sport: flow.dport,
        dport: flow.sport,
        ..flow.clone()
    };
    for (i, hop) in A_OUT.iter().enumerate() {
        let t = traffic.clone();
        let vni = (hop.2 == "underlay").then_some(4096);
        add(&mut ra, a.clock, &flow, *hop, vni, move |s, e| {
            (t(s, e) as f64 * keep[i]).round() as u64
        });
    }
    for (i, hop) in B_IN.iter().enumerate() {
        let t = traffic.clone();
        let vni = (hop.2 == "underlay").then_some(4096);
        add(&mut rb, b.clock, &flow, *hop, vni, move |s, e| {
            (t(s, e) as f64 * keep[3 + i]).round() as u64
        });
    }
    // The way back: b's pod to a's.
    for hop in A_OUT {
        add(
            &mut rb,
            b.clock,
            &reply,
            hop,
            (hop.2 == "underlay").then_some(4096),
            back.clone(),
        );
    }
    for hop in B_IN {
        add(
            &mut ra,
            a.clock,
            &reply,
            hop,
            (hop.2 == "underlay").then_some(4096),
            back.clone(),
        );
    }
    (ra, rb)
}

fn shape(
    node: &'static str,
    netns: u64,
    start: Micros,
    len: Micros,
    n: usize,
    clock: Micros,
) -> Shape {
    Shape {
        node,
        netns,
        start,
        len,
        n,
        clock,
    }
}

fn joined(a: Recording, b: Recording) -> Report {
    join(vec![a, b], vec![None, None]).expect("the recordings join")
}

#[test]
fn skew_is_measured_from_the_tunnel_traffic_and_applied_beyond_the_resolution() {
    // (b's clock ahead of a's, interval length, b's intervals' phase)
    let cases: [(Micros, Micros, Micros); 6] = [
        (0, S, 0),
        (0, S, 300_000),
        (3 * S, S, 300_000),
        (-7 * S, 200_000, 50_000),
        (2_500_000, S, 500_000),
        (-12 * S, 500_000, 0),
    ];
    for (truth, len, phase) in cases {
        let n = (60 * S / len) as usize;
        let a = shape("a", 1, 0, len, n, 0);
        let b = shape(
            "b",
            2,
            5 * S + phase,
            len,
            n - (10 * S / len) as usize,
            truth,
        );
        let (ra, rb) = two_nodes(a, b, bursty(1), bursty(2), [1.0; 6]);
        let report = joined(ra, rb);
        let skew = &report.window.skew[0];
        let measured = skew.measured_ms.expect("measured") * 1000.0;
        let resolution = skew.resolution_ms * 1000.0;
        assert!(
            (measured - truth as f64).abs() <= len as f64 / 2.0,
            "truth {truth} us, measured {measured} us (interval {len})"
        );
        assert_eq!(
            skew.applied,
            (truth as f64).abs() > resolution,
            "truth {truth}: {skew:?}"
        );
        assert!(skew.correlation.unwrap() > 0.6, "{skew:?}");
        // Aligned, the flow loses nothing anywhere (the window's edges aside).
        let flow = report.flows.iter().find(|f| f.flow.dport == 7000).unwrap();
        assert_eq!(flow.lost, 0, "truth {truth}: {:#?}", flow.segments);
    }
}

#[test]
fn steady_or_absent_traffic_leaves_the_skew_assumed_zero() {
    let steady = |s: Micros, e: Micros| ((e - s) / 10_000) as u64; // 100 packets/s exactly
    let none = |_: Micros, _: Micros| 0u64;
    let a = shape("a", 1, 0, S, 30, 0);
    let b = shape("b", 2, 0, S, 30, 0);
    for (name, report) in [
        ("steady", joined_with(a, b, steady, steady)),
        ("none", joined_with(a, b, none, none)),
    ] {
        let skew = &report.window.skew[0];
        assert!(
            skew.measured_ms.is_none() && !skew.applied,
            "{name}: {skew:?}"
        );
        assert!(
            report
                .window
                .assumptions
                .iter()
                .any(|a| a.contains("assumed 0")),
            "{name}: {:?}",
            report.window.assumptions
        );
    }
}

fn joined_with(
    a: Shape,
    b: Shape,
    t: impl Fn(Micros, Micros) -> u64 + Clone,
    back: impl Fn(Micros, Micros) -> u64 + Clone,
) -> Report {
    let (ra, rb) = two_nodes(a, b, t, back, [1.0; 6]);
    joined(ra, rb)
}

#[test]
fn counts_are_taken_over_the_window_the_recordings_share() {
    // Traffic only in [6 s, 9 s): inside the window whatever the edges.
    let burst = |s: Micros, e: Micros| {
        let (s, e) = (s.max(6 * S), e.min(9 * S));
        if e > s { ((e - s) / 10_000) as u64 } else { 0 }
    };
    // (a: start, n; b: start, n) -> window (from, to) in seconds
    let cases = [
        ((0, 10), (4, 16), (4.0, 10.0)),
        ((3, 10), (0, 20), (3.0, 13.0)),
        ((0, 12), (0, 12), (0.0, 12.0)),
    ];
    for ((sa, na), (sb, nb), (from, to)) in cases {
        let a = shape("a", 1, sa * S, S, na, 0);
        let b = shape("b", 2, sb * S, S, nb, 0);
        let report = joined_with(a, b, burst, |_, _| 0);
        let at = |t: f64| super::read::format_ts((t * 1e6) as Micros);
        assert_eq!(
            (report.window.from.as_str(), report.window.to.as_str()),
            (at(from).as_str(), at(to).as_str())
        );
        let flow = &report.flows[0];
        assert_eq!(
            (flow.sent, flow.received, flow.lost),
            (300, 300, 0),
            "{flow:#?}"
        );
    }
    // Only the window counts: traffic before b started is not compared.
    let early = |s: Micros, e: Micros| {
        let (s, e) = (s.max(0), e.min(2 * S));
        if e > s { ((e - s) / 10_000) as u64 } else { 0 }
    };
    let a = shape("a", 1, 0, S, 10, 0);
    let b = shape("b", 2, 4 * S, S, 10, 0);
    let report = joined_with(a, b, early, |_, _| 0);
    assert!(
        report.flows.iter().all(|f| f.flows_nothing()),
        "{:#?}",
        report.flows
    );
}

impl super::join::FlowReport {
    fn flows_nothing(&self) -> bool {
        self.path.iter().all(|h| h.packets == 0)
    }
}

#[test]
fn recordings_that_do_not_overlap_or_share_a_node_are_refused() {
    let a = recording(shape("a", 1, 0, S, 10, 0));
    let later = recording(shape("b", 2, 20 * S, S, 10, 0));
    let e = join(vec![a.clone(), later], vec![None, None]).unwrap_err();
    assert!(matches!(e, JoinError::NoOverlap { .. }), "{e}");
    assert!(e.to_string().contains("do not overlap"), "{e}");
    let mut twin = recording(shape("a", 3, 0, S, 10, 0));
    twin.file = "other.jsonl".to_owned();
    let e = join(vec![a, twin], vec![None, None]).unwrap_err();
    assert!(e.to_string().contains("both from node \"a\""), "{e}");
}
