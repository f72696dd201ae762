//! Paths across the nodes, losses located, shared kernels, window edges, fragmentation.

use super::*;

#[test]
fn paths_run_pod_tunnel_underlay_wire_underlay_tunnel_pod_both_ways() {
    let steady = |s: Micros, e: Micros| ((e - s) / 10_000) as u64;
    let a = shape("node1", 1, 0, S, 10, 0);
    let b = shape("node2", 2, 0, S, 10, 0);
    let (mut ra, rb) = two_nodes(a, b, steady, steady, [1.0; 6]);
    // Order in the recording does not matter.
    let flow = ra.flows.get_mut(&udp(7000)).unwrap();
    let reversed: BTreeMap<_, _> = std::mem::take(flow).into_iter().rev().collect();
    *flow = reversed;
    let report = joined(ra, rb);
    let path = |dport: u16| -> Vec<String> {
        report
            .flows
            .iter()
            .find(|f| f.flow.dport == dport)
            .unwrap()
            .path
            .iter()
            .map(|h| h.at.to_string())
            .collect()
    };
    assert_eq!(
        path(7000),
        [
            "node1 cali0 ingress",
            "node1 vxlan.calico egress",
            "node1 eth0 egress",
            "node2 eth0 ingress",
            "node2 vxlan.calico ingress",
            "node2 cali0 egress"
        ]
    );
    assert_eq!(
        path(40001),
        [
            "node2 cali0 ingress",
            "node2 vxlan.calico egress",
            "node2 eth0 egress",
            "node1 eth0 ingress",
            "node1 vxlan.calico ingress",
            "node1 cali0 egress"
        ]
    );
    let f = report.flows.iter().find(|f| f.flow.dport == 7000).unwrap();
    assert_eq!(f.vni, Some(4096));
    assert_eq!(f.outer.as_ref().unwrap().dport, 4789);
    assert_eq!(f.segments.len(), 5);
}

#[test]
fn each_loss_is_located_where_it_happens() {
    let steady = |s: Micros, e: Micros| ((e - s) / 10_000) as u64; // 1000 over 10 s
    struct Case {
        name: &'static str,
        keep: [f64; 6],
        /// (node index, ifname, packets dropped there)
        drops: &'static [(usize, &'static str, u64)],
        /// segment index, lost, where, at
        expect: (usize, u64, Where, Option<&'static str>),
    }
    let cases = [
        Case {
            name: "the wire",
            keep: [1.0, 1.0, 1.0, 0.9, 0.9, 0.9],
            drops: &[],
            expect: (2, 100, Where::Wire, None),
        },
        Case {
            name: "a drop at b's vxlan ingress",
            keep: [1.0, 1.0, 1.0, 1.0, 1.0, 0.93],
            drops: &[(1, "vxlan.calico", 70)],
            expect: (4, 70, Where::Hop, Some("node2 vxlan.calico ingress")),
        },
        Case {
            name: "a's underlay egress drops before its TC counts",
            keep: [1.0, 1.0, 0.96, 0.96, 0.96, 0.96],
            drops: &[(0, "eth0", 40)],
            expect: (1, 40, Where::Hop, Some("node1 eth0 egress")),
        },
        Case {
            name: "gone between two hops of a, nothing counted",
            keep: [1.0, 0.95, 0.95, 0.95, 0.95, 0.95],
            drops: &[],
            expect: (0, 50, Where::Between, None),
        },
    ];
    for case in cases {
        let a = shape("node1", 11, 0, S, 10, 0);
        let b = shape("node2", 22, 0, S, 10, 0);
        let (mut ra, mut rb) = two_nodes(a, b, steady, |_, _| 0, case.keep);
        for (node, ifname, n) in case.drops {
            let (rec, netns) = if *node == 0 {
                (&mut ra, 11)
            } else {
                (&mut rb, 22)
            };
            rec.events
                .push(drop_event(&udp(7000), ifname, netns, 5 * S, *n));
        }
        let report = joined(ra, rb);
        let f = report.flows.iter().find(|f| f.flow.dport == 7000).unwrap();
        let (index, lost, place, at) = case.expect;
        let losing: Vec<usize> = (0..f.segments.len())
            .filter(|&i| f.segments[i].lost > 0)
            .collect();
        assert_eq!(losing, [index], "{}: {:#?}", case.name, f.segments);
        let s = &f.segments[index];
        assert_eq!(
            (
                s.lost,
                s.location,
                s.at.as_ref().map(ToString::to_string).as_deref()
            ),
            (lost, Some(place), at),
            "{}: {s:#?}",
            case.name
        );
        assert_eq!(f.lost, lost, "{}", case.name);
        if place == Where::Hop {
            assert_eq!(s.dropped, lost, "{}", case.name);
        }
    }
}

#[test]
fn one_five_tuple_in_two_vnis_is_two_flows() {
    let steady = |s: Micros, e: Micros| ((e - s) / 10_000) as u64;
    let mut ra = recording(shape("a", 1, 0, S, 5, 0));
    let mut rb = recording(shape("b", 2, 0, S, 5, 0));
    let flow = udp(7000);
    for vni in [1, 2] {
        add(
            &mut ra,
            0,
            &flow,
            ("eth0", "egress", "underlay"),
            Some(vni),
            steady,
        );
        add(
            &mut rb,
            0,
            &flow,
            ("eth0", "ingress", "underlay"),
            Some(vni),
            steady,
        );
    }
    let report = joined(ra, rb);
    let vnis: Vec<Option<u32>> = report.flows.iter().map(|f| f.vni).collect();
    assert_eq!(vnis.len(), 2, "{vnis:?}");
    assert!(vnis.contains(&Some(1)) && vnis.contains(&Some(2)));
    assert!(
        report
            .flows
            .iter()
            .all(|f| f.path.len() == 2 && f.lost == 0)
    );
}

#[test]
fn events_of_a_shared_kernel_are_counted_once() {
    let steady = |s: Micros, e: Micros| ((e - s) / 10_000) as u64;
    let a = shape("node1", 11, 0, S, 10, 0);
    let b = shape("node2", 22, 0, S, 10, 0);
    let (mut ra, mut rb) = two_nodes(a, b, steady, |_, _| 0, [1.0, 1.0, 1.0, 0.9, 0.9, 0.9]);
    // Both recorders saw the same switch drops (netns 99, no node's) and node2's own drop.
    for rec in [&mut ra, &mut rb] {
        rec.events
            .push(drop_event(&udp(7000), "sw1", 99, 5 * S, 100));
        rec.events
            .push(drop_event(&udp(7000), "vxlan.calico", 22, 5 * S, 3));
    }
    let report = joined(ra, rb);
    let f = report.flows.iter().find(|f| f.flow.dport == 7000).unwrap();
    assert_eq!(f.anomalies["drop"], 103, "{:?}", f.anomalies);
    assert_eq!(f.drops_off_path.len(), 1, "{:#?}", f.drops_off_path);
    assert_eq!(f.drops_off_path[0].node, "shared");
    assert_eq!(f.drops_off_path[0].count, 100);
    assert_eq!(f.path[4].drops, 3, "node2's vxlan.calico, once");
    assert!(
        report
            .window
            .assumptions
            .iter()
            .any(|a| a.contains("share a kernel"))
    );
}

#[test]
fn a_node_whose_recorder_missed_its_own_events_gets_them_from_the_other_recording() {
    // Sharing a kernel, node1's recorder saw node2's 7 drops; node2's, flooded, saw 2 of them.
    let steady = |s: Micros, e: Micros| ((e - s) / 10_000) as u64;
    let a = shape("node1", 11, 0, S, 10, 0);
    let b = shape("node2", 22, 0, S, 10, 0);
    let (mut ra, mut rb) = two_nodes(a, b, steady, |_, _| 0, [1.0, 1.0, 1.0, 1.0, 1.0, 0.993]);
    ra.events
        .push(drop_event(&udp(7000), "vxlan.calico", 22, 5 * S, 7));
    rb.events
        .push(drop_event(&udp(7000), "vxlan.calico", 22, 5 * S, 2));
    let report = joined(ra, rb);
    let f = report.flows.iter().find(|f| f.flow.dport == 7000).unwrap();
    assert_eq!(f.anomalies["drop"], 7, "{:?}", f.anomalies);
    assert_eq!(
        f.segments[4].location,
        Some(Where::Hop),
        "{:#?}",
        f.segments[4]
    );
    let rows: Vec<_> = report
        .anomalies
        .iter()
        .filter(|r| r.kind == "drop")
        .collect();
    assert!(rows.iter().all(|r| r.node == "node2"), "{rows:#?}");
}

#[test]
fn traffic_across_the_window_edge_is_not_called_a_loss() {
    // a records from 0 s to 10 s, b from 3.5 s to 8.5 s; traffic runs throughout: a's
    // intervals [3 s, 4 s) and [8 s, 9 s) count whole, half of each outside b's recording.
    let steady = |s: Micros, e: Micros| ((e - s) / 10_000) as u64;
    let a = shape("a", 1, 0, S, 10, 0);
    let b = shape("b", 2, 3_500_000, S, 5, 0);
    let report = joined_with(a, b, steady, |_, _| 0);
    let f = report.flows.iter().find(|f| f.flow.dport == 7000).unwrap();
    let wire = &f.segments[2];
    assert!(wire.lost > 0 && wire.uncertainty >= wire.lost, "{wire:#?}");
    assert_eq!(wire.location, Some(Where::Edge));
    assert_eq!(f.lost, 0);
}

#[test]
fn wire_losses_over_time_are_the_steps_of_a_non_decreasing_fit() {
    use crate::report::join::losses_over_time_for_tests as steps;
    // (per-bin sent - received, expected losses per bin)
    let cases: [(&[f64], &[f64]); 4] = [
        (&[0.0, 0.0, 5.0, 0.0], &[0.0, 0.0, 5.0, 0.0]),
        // Misaligned intervals: +40 then -40 is no loss.
        (&[40.0, -40.0, 0.0, 10.0], &[0.0, 0.0, 0.0, 10.0]),
        (&[-20.0, 20.0, 3.0], &[0.0, 0.0, 3.0]),
        (&[], &[]),
    ];
    for (input, expected) in cases {
        let got = steps(input);
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-9, "{input:?}: {got:?}");
        }
    }
}

#[test]
fn a_stalled_recorder_holding_the_traffic_in_one_long_interval_does_not_shift_the_clock() {
    // One clock; b's recorder stalled 1.5 s while the whole burst went by (seen on a loaded
    // machine): nothing finer than that interval can be told.
    let burst = |s: Micros, e: Micros| {
        let (s, e) = (s.max(3_200_000), e.min(4_300_000));
        if e > s { ((e - s) / 1000) as u64 } else { 0 }
    };
    let a = shape("a", 1, 0, 200_000, 50, 0);
    let mut rb = recording(shape("b", 2, 0, 200_000, 50, 0));
    rb.intervals
        .retain(|i| !(i.end > 3_000_000 && i.end <= 4_500_000));
    let at = rb.intervals.partition_point(|i| i.end < 4_500_000);
    rb.intervals.insert(
        at,
        Interval {
            end: 4_500_000,
            len: 1_500_000,
        },
    );
    let mut ra = recording(a);
    let flow = udp(7000);
    add(
        &mut ra,
        0,
        &flow,
        ("eth0", "egress", "underlay"),
        Some(1),
        burst,
    );
    add(
        &mut rb,
        0,
        &flow,
        ("eth0", "ingress", "underlay"),
        Some(1),
        burst,
    );
    let report = joined(ra, rb);
    let skew = &report.window.skew[0];
    assert!(!skew.applied, "{skew:?}");
    assert_eq!(report.flows[0].lost, 0, "{:#?}", report.flows[0].segments);
}

#[test]
fn a_segment_where_packets_are_fragmented_compares_no_counts() {
    // The tunnel's packets split in two on a's underlay (an overlay MTU above the underlay's
    // minus 50), reassembled on b's before vxlan.calico: twice the packets on the wire.
    let steady = |s: Micros, e: Micros| ((e - s) / 10_000) as u64;
    let a = shape("a", 1, 0, S, 10, 0);
    let b = shape("b", 2, 0, S, 10, 0);
    let (mut ra, mut rb) = two_nodes(a, b, steady, |_, _| 0, [1.0; 6]);
    for (rec, dir) in [(&mut ra, "egress"), (&mut rb, "ingress")] {
        let hop = HopId {
            ifname: "eth0".to_owned(),
            dir: dir.to_owned(),
        };
        let series = rec
            .flows
            .get_mut(&udp(7000))
            .unwrap()
            .get_mut(&(hop, Some(4096)))
            .unwrap();
        for p in &mut series.points {
            p.packets *= 2;
            p.segs *= 2;
            p.fragments = p.packets;
        }
    }
    let report = joined(ra, rb);
    let f = report.flows.iter().find(|f| f.flow.dport == 7000).unwrap();
    assert_eq!(f.lost, 0, "{:#?}", f.segments);
    for i in [1, 3] {
        assert!(f.segments[i].note.is_some(), "{:#?}", f.segments[i]);
        assert_eq!((f.segments[i].lost, f.segments[i].gained), (0, 0));
    }
    assert!(
        f.segments[2].note.is_none(),
        "the wire compares fragments with fragments"
    );

    // Fragments lost on the wire are packets lost there, not a recount.
    let (mut ra, mut rb) = two_nodes(
        shape("a", 1, 0, S, 10, 0),
        shape("b", 2, 0, S, 10, 0),
        steady,
        |_, _| 0,
        [1.0; 6],
    );
    for (rec, dir, lose) in [(&mut ra, "egress", 0), (&mut rb, "ingress", 3)] {
        let hop = HopId {
            ifname: "eth0".to_owned(),
            dir: dir.to_owned(),
        };
        let series = rec
            .flows
            .get_mut(&udp(7000))
            .unwrap()
            .get_mut(&(hop, Some(4096)))
            .unwrap();
        let middle = series.points.len() / 2;
        for (i, p) in series.points.iter_mut().enumerate() {
            p.packets *= 2;
            if i == middle {
                p.packets -= lose;
            }
            p.segs = p.packets;
            p.fragments = p.packets;
        }
    }
    let report = joined(ra, rb);
    let f = report.flows.iter().find(|f| f.flow.dport == 7000).unwrap();
    let wire = &f.segments[2];
    assert_eq!((wire.lost, wire.note), (3, None), "{wire:#?}");
}
