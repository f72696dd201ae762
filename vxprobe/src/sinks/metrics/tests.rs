use std::net::{IpAddr, Ipv4Addr};

use vxprobe_common::{Counters, EventKind};

use super::{families::registered_name, *};
use crate::{
    node::devices::Role,
    observe::{
        anomaly::tests_support::empty,
        interval::{HopCount, Interval},
        report::MetaHop,
    },
};

fn meta_hop(ifindex: u32, name: &str, role: Role) -> MetaHop {
    MetaHop::new(name, ifindex, role, 1450)
}

fn meta(hops: Vec<MetaHop>) -> Meta {
    Meta {
        node: "node-a".into(),
        vxprobe_version: "0.1.0",
        kernel: "6.18.0".into(),
        netns: 1,
        tc_attach: "tcx",
        max_flows: 4096,
        flow_cache_slots: 1024,
        degraded: Default::default(),
        hooks: vec![crate::kernel::probes::HookChoice {
            signal: "drop",
            hook: Some("tp_btf:kfree_skb".into()),
            unavailable: Vec::new(),
        }],
        hops,
        pods: crate::observe::report::PodsMeta {
            source: crate::node::pods::Source::None,
            runtime: None,
            count: 0,
            error: None,
        },
    }
}

fn flow(sport: u16) -> Flow {
    Flow {
        proto: 17,
        src: IpAddr::V4(Ipv4Addr::new(198, 19, 1, 2)),
        dst: IpAddr::V4(Ipv4Addr::new(198, 19, 2, 2)),
        sport,
        dport: 7000,
    }
}

/// An interval through the interval model: `packets` at every hop both ways, drops for each
/// of `reasons` charged at each, and drops of two flows elsewhere (5 and 1).
fn report(hops: &[MetaHop], packets: u64, reasons: &[(&str, u64)]) -> IntervalReport {
    let mut model = Interval::new(1, HashMap::new());
    let mut counts = Vec::new();
    for h in hops {
        model.observe_device(h.ifindex);
        for dir in [Direction::Ingress, Direction::Egress] {
            for (reason, n) in reasons {
                let mut a = empty();
                a.netns = 1;
                a.ifindex = Some(h.ifindex);
                a.hop_direction = Some(dir);
                a.dropped = true;
                a.reason = Some((*reason).into());
                a.count = Some(u32::try_from(*n).unwrap());
                model.charge(&a);
            }
            counts.push(HopCount {
                hop: h.clone(),
                dir,
                counters: Counters {
                    packets,
                    bytes: packets * 100,
                    segs: packets,
                    max_len: 1400,
                    ..Default::default()
                },
            });
        }
    }
    for (port, n) in [(1, 5), (2, 1)] {
        let mut a = empty();
        a.dropped = true;
        a.count = Some(n);
        a.flow = Some(flow(port));
        model.charge(&a);
    }
    model.close(
        SystemTime::now(),
        Duration::from_secs(1),
        counts,
        vec![(EventKind::Drop, 3)],
    )
}

fn sink(flow_metrics: Option<u32>) -> (MetricsSink, Arc<Exposition>) {
    MetricsSink::new("node-a", flow_metrics, Arc::new(AtomicU64::new(0)))
}

/// Sample lines (name and labels, value) of an exposition.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Every family in the exposition is in [`FAMILIES`] with its type, and every one of
/// [`FAMILIES`] shows once it has a series; both formats.
#[test]
fn the_exposition_is_the_list() {
    let hops = [meta_hop(4, "vxlan.calico", Role::Overlay)];
    let (mut sink, exposition) = sink(Some(10));
    sink.meta(&meta(hops.to_vec())).unwrap();
    let mut a = empty();
    for kind in [
        AnomalyKind::Drop,
        AnomalyKind::CsumError,
        AnomalyKind::Oversize,
        AnomalyKind::Retransmit,
    ] {
        a.kind = kind;
        sink.anomaly(&a).unwrap();
    }
    sink.device(&HopChange::added(meta_hop(9, "tap0", Role::Tap)))
        .unwrap();
    let r = report(&hops, 10, &[("NETFILTER_DROP", 2)]);
    sink.interval(&r).unwrap();
    sink.flows(&[FlowReport {
        hop: hops[0].clone(),
        dir: Direction::Egress,
        flow: flow(1),
        outer: None,
        counters: Default::default(),
        mean_segment: 0,
    }])
    .unwrap();
    sink.interval_end(&IntervalEnd::default()).unwrap();
    for openmetrics in [true, false] {
        let text = exposition.encode(openmetrics);
        let mut typed: Vec<(String, String)> = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = line.split_whitespace().skip(2);
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            typed.push((name.to_owned(), kind.to_owned()));
        }
        for doc in FAMILIES {
            let (name, kind) = match (openmetrics, doc.kind) {
                (true, Kind::Counter) => (registered_name(doc), "counter"),
                (true, Kind::Info) => (registered_name(doc), "info"),
                (false, Kind::Counter) => (doc.name, "counter"),
                (false, Kind::Info) => (doc.name, "gauge"),
                (_, Kind::Gauge) => (doc.name, "gauge"),
            };
            assert!(
                typed.contains(&(name.to_owned(), kind.to_owned())),
                "{} missing as {kind} from:\n{text}",
                doc.name
            );
            assert!(
                text.lines().any(|l| l.starts_with(doc.name)),
                "{} has no sample:\n{text}",
                doc.name
            );
        }
        assert_eq!(typed.len(), FAMILIES.len(), "{text}");
        assert_eq!(text.ends_with("# EOF\n"), openmetrics);
    }
}

/// Counters add up the intervals; drops by reason are the report's own figures.
#[test]
fn hop_counters_add_up_the_reports() {
    let hops = [meta_hop(5, "cali0", Role::Pod)];
    let (mut sink, exposition) = sink(None);
    sink.meta(&meta(hops.to_vec())).unwrap();
    for _ in 0..3 {
        sink.interval(&report(&hops, 7, &[("NETFILTER_DROP", 2), ("UDP_CSUM", 1)]))
            .unwrap();
        sink.interval_end(&IntervalEnd {
            evicted: 4,
            ..Default::default()
        })
        .unwrap();
    }
    let s = samples(&exposition.encode(false));
    let at = r#"iface="cali0",direction="ingress",role="pod""#;
    assert_eq!(s[&format!("vxprobe_hop_packets_total{{{at}}}")], 21.0);
    assert_eq!(s[&format!("vxprobe_hop_bytes_total{{{at}}}")], 2100.0);
    assert_eq!(
        s[&format!("vxprobe_hop_drops_total{{{at},reason=\"NETFILTER_DROP\"}}")],
        6.0
    );
    assert_eq!(
        s[&format!("vxprobe_hop_drops_total{{{at},reason=\"UDP_CSUM\"}}")],
        3.0
    );
    assert_eq!(s[r#"vxprobe_events_lost_total{kind="drop"}"#], 9.0);
    assert_eq!(s["vxprobe_flow_entries_evicted_total"], 12.0);
    assert_eq!(s["vxprobe_intervals_total"], 3.0);
    assert_eq!(
        s[r#"vxprobe_hop_mtu_bytes{iface="cali0",role="pod"}"#],
        1450.0
    );
    assert_eq!(
        s[r#"vxprobe_node_info{node="node-a",kernel="6.18.0",tc_attach="tcx"}"#],
        1.0
    );
    assert!(
        !s.keys().any(|k| k.starts_with("vxprobe_flow_drops")),
        "off by default"
    );
}

/// A vanished device keeps its series until its last interval is counted, then loses
/// every one of them.
#[test]
fn vanished_devices_drop_their_series() {
    let hops = vec![
        meta_hop(5, "cali0", Role::Pod),
        meta_hop(6, "cali1", Role::Pod),
    ];
    let (mut sink, exposition) = sink(None);
    sink.meta(&meta(hops.clone())).unwrap();
    sink.interval(&report(&hops, 1, &[("NETFILTER_DROP", 1)]))
        .unwrap();
    sink.interval_end(&IntervalEnd::default()).unwrap();
    sink.device(&HopChange::removed(hops[1].clone())).unwrap();
    // The closing interval still reports the gone hop.
    sink.interval(&report(&hops, 1, &[("NETFILTER_DROP", 1)]))
        .unwrap();
    let text = exposition.encode(false);
    assert!(text.contains(r#"iface="cali1""#), "{text}");
    sink.interval_end(&IntervalEnd::default()).unwrap();
    let text = exposition.encode(false);
    assert!(!text.contains("cali1"), "{text}");
    assert!(text.contains(r#"iface="cali0""#), "{text}");
    assert!(text.contains("vxprobe_observed_devices 1\n"), "{text}");
    assert!(
        text.contains(r#"vxprobe_device_changes_total{event="removed"} 1"#),
        "{text}"
    );
}

/// A device that could not be attached is counted as such, and neither observed nor retired.
#[test]
fn a_failed_attach_is_counted_and_leaves_the_hops_alone() {
    let hops = vec![meta_hop(5, "cali0", Role::Pod)];
    let (mut sink, exposition) = sink(None);
    sink.meta(&meta(hops.clone())).unwrap();
    sink.device(&HopChange::attach_failed(
        meta_hop(6, "cali1", Role::Pod),
        "Numerical result out of range".into(),
    ))
    .unwrap();
    sink.interval(&report(&hops, 1, &[])).unwrap();
    sink.interval_end(&IntervalEnd::default()).unwrap();
    let text = exposition.encode(false);
    assert!(
        text.contains(r#"vxprobe_device_changes_total{event="attach_failed"} 1"#),
        "{text}"
    );
    assert!(!text.contains(r#"event="removed""#), "{text}");
    assert!(!text.contains("cali1"), "{text}");
    assert!(text.contains("vxprobe_observed_devices 1\n"), "{text}");
}

/// An MTU change is counted, and the hop's MTU gauge follows it.
#[test]
fn an_mtu_change_moves_the_mtu_gauge() {
    let hops = vec![meta_hop(5, "cali0", Role::Pod)];
    let (mut sink, exposition) = sink(None);
    sink.meta(&meta(hops.clone())).unwrap();
    let mut bigger = hops[0].clone();
    bigger.mtu = 9000;
    sink.device(&HopChange::new(
        DeviceEvent::MtuChanged { was: hops[0].mtu },
        bigger,
    ))
    .unwrap();
    sink.interval(&report(&hops, 1, &[])).unwrap();
    sink.interval_end(&IntervalEnd::default()).unwrap();
    let text = exposition.encode(false);
    assert!(
        text.contains(r#"vxprobe_device_changes_total{event="mtu_changed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"vxprobe_hop_mtu_bytes{iface="cali0",role="pod"} 9000"#),
        "{text}"
    );
    assert!(text.contains("vxprobe_observed_devices 1\n"), "{text}");
}

/// Anomaly counters add up `count`; oversize is split by where it comes from.
#[test]
fn anomalies_are_counted_by_kind_with_their_count() {
    let (mut sink, exposition) = sink(None);
    let mut retransmit = empty();
    retransmit.kind = AnomalyKind::Retransmit;
    retransmit.count = Some(3);
    let mut csum = empty();
    csum.kind = AnomalyKind::CsumError;
    csum.reason = Some("UDP_CSUM".into());
    let mut send = empty();
    send.kind = AnomalyKind::Oversize;
    send.errno = Some(90);
    send.dropped = true;
    let mut seen = empty();
    seen.kind = AnomalyKind::Oversize;
    for a in [&retransmit, &retransmit, &csum, &send, &seen] {
        sink.anomaly(a).unwrap();
    }
    let s = samples(&exposition.encode(false));
    assert_eq!(s["vxprobe_tcp_retransmits_total"], 6.0);
    assert_eq!(s[r#"vxprobe_anomalies_total{kind="retransmit"}"#], 6.0);
    assert_eq!(
        s[r#"vxprobe_checksum_errors_total{reason="UDP_CSUM"}"#],
        1.0
    );
    assert_eq!(s[r#"vxprobe_oversize_total{source="send"}"#], 1.0);
    assert_eq!(s[r#"vxprobe_oversize_total{source="hop"}"#], 1.0);
}

/// `--flow-metrics K`: exactly the K flows with the most loss, with their totals.
#[test]
fn flow_series_are_the_top_k_by_loss() {
    let hops = [meta_hop(5, "cali0", Role::Pod)];
    let (mut sink, exposition) = sink(Some(1));
    sink.meta(&meta(hops.to_vec())).unwrap();
    for _ in 0..2 {
        sink.interval(&report(&hops, 1, &[])).unwrap();
        sink.flows(&[1, 2, 3].map(|port| FlowReport {
            hop: hops[0].clone(),
            dir: Direction::Ingress,
            flow: flow(port),
            outer: None,
            counters: vxprobe_common::FlowCounters {
                counters: Counters {
                    packets: 10,
                    ..Default::default()
                },
                ..Default::default()
            },
            mean_segment: 0,
        }))
        .unwrap();
        sink.interval_end(&IntervalEnd::default()).unwrap();
    }
    let s = samples(&exposition.encode(false));
    let flow1 = r#"proto="udp",src="198.19.1.2",dst="198.19.2.2",sport="1",dport="7000""#;
    assert_eq!(s[&format!("vxprobe_flow_drops_total{{{flow1}}}")], 10.0);
    assert_eq!(
        s[&format!("vxprobe_flow_packets_total{{{flow1},iface=\"cali0\",direction=\"ingress\"}}")],
        20.0
    );
    assert_eq!(
        s.keys()
            .filter(|k| k.starts_with("vxprobe_flow_drops_total"))
            .count(),
        1,
        "K = 1"
    );
}

#[test]
fn accept_headers_choose_the_format() {
    // What Prometheus 2.42 sends.
    assert!(prefers_openmetrics(
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    ));
    assert!(!prefers_openmetrics("*/*"));
    assert!(!prefers_openmetrics(""));
    assert!(!prefers_openmetrics(
        "text/plain;version=0.0.4,application/openmetrics-text;q=0.5"
    ));
    assert!(!prefers_openmetrics("application/openmetrics-text;q=0"));
}

fn pod(name: &str) -> Arc<crate::node::pods::Pod> {
    Arc::new(crate::node::pods::Pod {
        id: crate::node::pods::PodId {
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        },
        containers: Vec::new(),
        labels: Default::default(),
    })
}

/// `--pod-labels`: hop and node-wide series of a pod carry `pod="namespace/name"`, for at
/// most the cap of pods (the rest `other`); a pod the node no longer has loses every series,
/// and its place goes to the next; without the flag no series has a `pod` label.
#[test]
fn pod_labels_are_bounded_and_forgotten_pods_lose_their_series() {
    let mut hops = vec![
        meta_hop(5, "cali0", Role::Pod),
        meta_hop(6, "cali1", Role::Pod),
        meta_hop(7, "cali2", Role::Pod),
        meta_hop(2, "eth0", Role::Underlay),
    ];
    for (hop, name) in hops.iter_mut().zip(["web-0", "web-1", "web-2"]) {
        hop.pod = Some(pod(name));
    }
    let live: Arc<std::sync::Mutex<std::collections::HashSet<String>>> =
        Arc::new(std::sync::Mutex::new(
            ["shop/web-0", "shop/web-1", "shop/web-2"]
                .map(str::to_owned)
                .into(),
        ));
    let drop_in = |name: Option<&str>| {
        let mut a = empty();
        a.reason = Some("NETFILTER_DROP".into());
        a.pod = name.map(pod);
        a
    };
    let run = |sink: &mut MetricsSink, hops: &[MetaHop], pods: &[Option<&str>]| {
        sink.interval(&report(hops, 1, &[("UDP_CSUM", 1)])).unwrap();
        for name in pods.iter().copied() {
            sink.anomaly(&drop_in(name)).unwrap();
        }
        sink.interval_end(&IntervalEnd::default()).unwrap();
    };

    let (mut plain, exposition) = sink(None);
    plain.meta(&meta(hops.clone())).unwrap();
    run(&mut plain, &hops, &[Some("web-0"), Some("web-2"), None]);
    assert!(!exposition.encode(false).contains("pod="), "opt-in");

    let (mut sink, exposition) = sink(None);
    let seen = Arc::clone(&live);
    sink.label_pods(2, Box::new(move || seen.lock().unwrap().clone()));
    sink.meta(&meta(hops.clone())).unwrap();
    run(&mut sink, &hops, &[Some("web-0"), Some("web-2"), None]);
    let s = samples(&exposition.encode(false));
    let hop = |iface: &str, pod: Option<&str>| {
        let pod = pod.map_or_else(String::new, |p| format!(",pod=\"{p}\""));
        format!(
            "vxprobe_hop_packets_total{{iface=\"{iface}\",direction=\"ingress\",role=\"pod\"{pod}}}"
        )
    };
    assert_eq!(s[&hop("cali0", Some("shop/web-0"))], 1.0);
    assert_eq!(s[&hop("cali1", Some("shop/web-1"))], 1.0);
    assert_eq!(s[&hop("cali2", Some(OTHER_POD))], 1.0, "beyond the cap");
    assert!(s.contains_key(
        r#"vxprobe_hop_packets_total{iface="eth0",direction="ingress",role="underlay"}"#
    ));
    assert_eq!(
        s[r#"vxprobe_hop_drops_total{iface="cali0",direction="ingress",role="pod",reason="UDP_CSUM",pod="shop/web-0"}"#],
        1.0
    );
    assert_eq!(
        s[r#"vxprobe_drops_total{reason="NETFILTER_DROP",pod="shop/web-0"}"#],
        1.0
    );
    assert_eq!(
        s[r#"vxprobe_drops_total{reason="NETFILTER_DROP",pod="other"}"#],
        1.0
    );
    assert_eq!(s[r#"vxprobe_drops_total{reason="NETFILTER_DROP"}"#], 1.0);
    assert_eq!(
        s[r#"vxprobe_anomalies_total{kind="drop",pod="shop/web-0"}"#],
        1.0
    );
    assert_eq!(sink.labeled_pods(), 2);
    for series in s.keys() {
        if series.contains("pod=") {
            let family = series.split('{').next().unwrap();
            assert!(POD_LABELED.contains(&family), "{series}");
        }
    }

    // web-0 is gone: every series naming it goes at the interval's end, and web-2 gets the
    // place it left.
    live.lock().unwrap().remove("shop/web-0");
    hops[0].pod = None;
    run(&mut sink, &hops, &[Some("web-2")]);
    let text = exposition.encode(false);
    assert!(!text.contains("web-0"), "{text}");
    assert_eq!(sink.labeled_pods(), 1);
    run(&mut sink, &hops, &[Some("web-2")]);
    let text = exposition.encode(false);
    assert!(!text.contains("web-0"), "{text}");
    let s = samples(&text);
    // cali0 counts afresh, unlabeled, from the interval its pod was gone in (two of them).
    assert_eq!(s[&hop("cali0", None)], 2.0);
    assert_eq!(s[&hop("cali2", Some("shop/web-2"))], 1.0);
    assert!(!s.contains_key(&hop("cali2", Some(OTHER_POD))), "relabeled");
    assert_eq!(sink.labeled_pods(), 2);
}
