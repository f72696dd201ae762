//! Pods in the UI: the pod column of the hops and flows tables (only where pods are named),
//! the `pod:` and `ns:` filters, and the feed carrying the pipeline's pods through.

use super::*;
use crate::sinks::tui::model::PodId;

fn web() -> PodId {
    PodId {
        namespace: "shop".into(),
        name: "web-0".into(),
        uid: "5c1e4d3a-0000-4000-8000-000000000001".into(),
    }
}

/// The demo's data with `cali0` a veth of the pod `shop/web-0`: its hops, the flows that
/// crossed it, the events there.
fn with_pods(events: Vec<AppEvent>) -> Vec<AppEvent> {
    let named = |ifname: &str| (ifname == "cali0").then(web);
    events
        .into_iter()
        .map(|event| match event {
            AppEvent::Interval {
                mut hops,
                mut flows,
                lost,
                worst,
                hint,
            } => {
                for hop in &mut hops {
                    hop.pod = named(&hop.ifname);
                }
                for flow in &mut flows {
                    for hop in &mut flow.hops {
                        hop.pod = named(&hop.ifname);
                    }
                }
                AppEvent::Interval {
                    hops,
                    flows,
                    lost,
                    worst,
                    hint,
                }
            }
            AppEvent::Anomaly(mut sample) => {
                sample.pod = sample.ifname.as_deref().and_then(named);
                AppEvent::Anomaly(sample)
            }
            other => other,
        })
        .collect()
}

/// A drop inside the pod's own namespace, at its `eth0`, with no flow.
fn drop_in_pod() -> AppEvent {
    AppEvent::Anomaly(AnomalySample {
        ts: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_309_333),
        kind: EventKind::Drop,
        ifname: Some("eth0@shop/web-0".into()),
        dir: None,
        reason: "NETFILTER_DROP".into(),
        location: "nft_do_chain".into(),
        len: 84,
        flow: None,
        pod: Some(web()),
        count: 1,
    })
}

fn pod_app() -> App {
    let mut app = App::new();
    feed(&mut app, with_pods(demo_events()));
    feed(&mut app, [drop_in_pod()]);
    app
}

fn filtered(text: &str) -> App {
    let mut app = pod_app();
    feed(&mut app, [ch('/')]);
    feed(&mut app, typed(text));
    feed(&mut app, [press(KeyCode::Enter)]);
    app
}

#[test]
fn snapshot_pods() {
    insta::assert_snapshot!(draw(&pod_app(), 160, 40).backend());
}

#[test]
fn snapshot_pods_filtered_by_pod() {
    insta::assert_snapshot!(draw(&filtered("pod:web-0"), 160, 40).backend());
}

/// Without pods the tables keep their columns: the node's own devices have none.
#[test]
fn the_pod_column_shows_only_where_pods_are_named() {
    let header = |app: &App| {
        lines(&buffer(app, 160, 40))
            .into_iter()
            .filter(|l| l.contains("pkt/s") || l.contains("pkts"))
            .collect::<Vec<_>>()
    };
    for row in header(&demo_app()) {
        assert!(!row.contains(" pod "), "{row}");
    }
    let rows = header(&pod_app());
    assert!(rows.iter().all(|r| r.contains(" pod ")), "{rows:?}");
    let screen = lines(&buffer(&pod_app(), 160, 40));
    let cali = screen
        .iter()
        .find(|l| l.contains("cali0") && l.contains("ingress"))
        .unwrap();
    assert!(cali.contains("shop/web-0"), "{cali}");
    let eth0 = screen
        .iter()
        .find(|l| l.contains("eth0") && l.contains("ingress"))
        .unwrap();
    assert!(!eth0.contains("shop/"), "{eth0}");
}

/// `pod:` and `ns:` narrow the hops to the pod's veth, the flows to those that crossed it,
/// the events to the pod's; a pod no one has empties them; `dev:` still works beside them.
#[test]
fn pod_and_namespace_filters_narrow_every_table() {
    let all = pod_app();
    let crossing: Vec<String> = all
        .flow_rows()
        .filter(|e| e.hops.iter().any(|h| h.ifname == "cali0"))
        .map(|e| flow_label(&e.flow))
        .collect();
    assert!(!crossing.is_empty() && crossing.len() < all.flow_count());
    for text in ["pod:web-0", "pod:WEB", "pod:shop/web-0", "ns:shop", "web-0"] {
        let app = filtered(text);
        let flows: Vec<String> = app.flow_rows().map(|e| flow_label(&e.flow)).collect();
        let mut expected = crossing.clone();
        expected.sort();
        let mut got = flows.clone();
        got.sort();
        assert_eq!(got, expected, "{text}");
        if text != "web-0" {
            assert!(
                app.visible_events().all(|e| e.pod.as_ref() == Some(&web())),
                "{text}"
            );
        }
        let hops: Vec<&str> = app.visible_hops().map(|h| h.ifname.as_str()).collect();
        if text == "web-0" {
            // A bare term never narrows the hops.
            assert_eq!(hops.len(), all.visible_hops().count(), "{text}");
        } else {
            assert_eq!(hops, ["cali0", "cali0"], "{text}");
        }
    }
    for text in ["pod:web-1", "ns:kube-system", "pod:shop/web-1"] {
        let app = filtered(text);
        assert_eq!(app.visible_hops().count(), 0, "{text}");
        assert_eq!(app.flow_rows().count(), 0, "{text}");
        assert_eq!(app.visible_events().count(), 0, "{text}");
        let screen = lines(&buffer(&app, 160, 40)).join("\n");
        assert!(screen.contains("no hop matches the filter"), "{screen}");
    }
    let app = filtered("ns:shop dev:eth0");
    assert_eq!(app.visible_hops().count(), 0, "both must match");
    // Events at the pod's veth, kept by its filter.
    let events = filtered("pod:web-0");
    assert!(
        events
            .visible_events()
            .any(|e| e.pod.as_ref() == Some(&web())),
        "the pod's events are kept"
    );
}

/// A flow seen at a veth before its pod was named takes the name once it is.
#[test]
fn a_flow_takes_its_pod_once_named() {
    let mut app = App::new();
    feed(&mut app, demo_events());
    assert!(app.flow_rows().all(|e| e.pods().is_empty()));
    feed(&mut app, with_pods(demo_interval(1)));
    let named = app.flow_rows().filter(|e| e.pods() == [&web()]).count();
    assert!(named > 0);
}

/// The pipeline's pods reach the UI: a hop's and a flow's pod from the reports, an event in a
/// pod's namespace named `device@namespace/name` rather than by its inode.
#[test]
fn the_feed_carries_the_pods() {
    use std::{collections::HashMap, sync::Arc};

    use crate::{
        node::pods::Pod,
        observe::{
            anomaly::tests_support::empty,
            interval::{HopCount, Interval},
            pipeline::Sink as _,
            report::{FlowReport, Meta, PodsMeta},
        },
        sinks::tui::feed::TuiFeed,
    };

    let pod = Arc::new(Pod {
        id: web(),
        containers: vec!["web".into()],
        labels: Default::default(),
    });
    let netns = 4026531840;
    let cali = cali0(Some(Arc::clone(&pod)));
    let flow = pod_udp();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let mut feed = TuiFeed::new(tx, std::time::Duration::from_secs(1), HashMap::new());
    feed.meta(&Meta {
        node: "node-a".into(),
        vxprobe_version: "0.1.0",
        kernel: "6.18.0".into(),
        netns,
        tc_attach: "tcx",
        max_flows: 4096,
        flow_cache_slots: 1024,
        hooks: Vec::new(),
        degraded: Default::default(),
        hops: vec![cali.clone()],
        pods: PodsMeta {
            source: crate::node::pods::Source::Cri,
            runtime: None,
            count: 1,
            error: None,
        },
    })
    .unwrap();
    let mut inside = empty();
    inside.netns = 4026532384;
    inside.ifname = Some("eth0".into());
    inside.reason = Some("NETFILTER_DROP".into());
    inside.pod = Some(Arc::clone(&pod));
    feed.anomaly(&inside).unwrap();
    let mut model = Interval::new(netns, HashMap::new());
    model.observe_device(7);
    let hops = vec![HopCount {
        hop: cali.clone(),
        dir: Direction::Ingress,
        counters: Default::default(),
    }];
    let flow_report = FlowReport {
        hop: cali,
        dir: Direction::Ingress,
        flow: flow.clone(),
        outer: None,
        counters: Default::default(),
        mean_segment: 0,
    };
    feed_interval(&mut feed, &mut model, hops, flow_report);
    let mut app = App::new();
    super::feed(&mut app, std::iter::from_fn(|| rx.try_recv().ok()));
    assert_eq!(app.hops()[0].pod, Some(web()));
    assert_eq!(app.flow(&flow).unwrap().pods(), [&web()]);
    let event = app.visible_events().next().unwrap();
    assert_eq!(event.ifname.as_deref(), Some("eth0@shop/web-0"));
    assert_eq!(event.pod, Some(web()));
}
