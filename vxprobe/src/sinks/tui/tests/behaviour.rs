//! Behaviour: sorting and filtering, pause, bounded memory, keys, the loss the UI shows.

use super::*;

// Sorting and filtering.

#[test]
fn flows_sort_worst_first_by_each_key() {
    let mut app = demo_app();
    let expect_first = [
        (SortKey::Loss, "tcp:5201>41234"),
        (SortKey::Retransmits, "tcp:41234>5201"),
        (SortKey::CsumErrors, "tcp:5201>41234"),
        (SortKey::Oversize, "udp:5004>5004"),
        (SortKey::Fragments, "udp:5004>5004"),
        (SortKey::Bytes, "tcp:41234>5201"),
    ];
    for (at, (key, first)) in expect_first.iter().enumerate() {
        if at > 0 {
            app.handle_event(ch('s'));
        }
        assert_eq!(app.sort(), *key);
        assert_eq!(flow_names(&app)[0], *first, "sorted by {key:?}");
        let values: Vec<_> = app
            .flow_rows()
            .map(|e| match key {
                SortKey::Loss => (e.loss_pct() * 1000.0) as u64,
                SortKey::Retransmits => e.total.retransmits,
                SortKey::CsumErrors => e.total.csum_errors,
                SortKey::Oversize => e.total.oversize,
                SortKey::Fragments => e.total.fragments,
                SortKey::Bytes => e.total.bytes,
            })
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] >= w[1]),
            "{key:?}: {values:?}"
        );
    }
    app.handle_event(ch('s'));
    assert_eq!(app.sort(), SortKey::Loss);
    // The whole loss order: ACKs 3.4%, firewalled web 0.7%, media 0.2%, then the clean ones
    // by bytes.
    assert_eq!(
        flow_names(&app),
        [
            "tcp:5201>41234",
            "tcp:8080>36512",
            "udp:5004>5004",
            "tcp:41234>5201",
            "tcp:39000>443",
            "udp:53124>53"
        ]
    );
}

#[test]
fn the_selection_follows_its_flow_across_resorts() {
    let mut app = demo_app();
    feed(&mut app, [press(KeyCode::Tab), ch('j'), ch('j')]);
    let selected = app.selected_flow().unwrap().flow.clone();
    feed(&mut app, [ch('s'), ch('s')]);
    assert_eq!(app.selected_flow().unwrap().flow, selected);
    feed(&mut app, demo_interval(2));
    assert_eq!(app.selected_flow().unwrap().flow, selected);
}

#[test]
fn filter_by_port_host_device_and_text() {
    let mut app = demo_app();
    let mut filter = |text: &str| {
        feed(&mut app, [ch('/')]);
        // Start from an empty line.
        for _ in 0..40 {
            app.handle_event(press(KeyCode::Backspace));
        }
        feed(&mut app, typed(text));
        app.handle_event(press(KeyCode::Enter));
        (
            flow_names(&app),
            app.visible_hops()
                .map(|h| h.ifname.clone())
                .collect::<Vec<_>>(),
            app.visible_events().map(|e| e.count).sum::<u64>(),
        )
    };
    let (flows, hops, _) = filter("port:53");
    assert_eq!(flows, ["udp:53124>53"]);
    assert_eq!(hops.len(), 8, "host/port terms leave the hops alone");
    let (flows, _, events) = filter("host:198.18.9");
    assert_eq!(flows, ["udp:5004>5004"]);
    assert_eq!(events, 4, "the tap's oversize events (one row, ×4)");
    let (flows, hops, _) = filter("dev:tap");
    assert_eq!(flows, ["udp:5004>5004"]);
    assert_eq!(hops, ["tap0", "tap0"]);
    let (flows, _, _) = filter("5201");
    assert_eq!(flows, ["tcp:5201>41234", "tcp:41234>5201"]);
    let (flows, _, _) = filter("udp dev:eth0");
    assert_eq!(flows, ["udp:5004>5004", "udp:53124>53"]);
    let (flows, _, _) = filter("port:http");
    assert!(
        flows.is_empty(),
        "a port that does not parse matches nothing"
    );
    let (flows, hops, _) = filter("");
    assert_eq!(flows.len(), 6);
    assert_eq!(hops.len(), 8);
}

#[test]
fn esc_while_filtering_restores_the_filter_before() {
    let mut app = demo_app();
    feed(&mut app, [ch('/')]);
    feed(&mut app, typed("port:53"));
    app.handle_event(press(KeyCode::Enter));
    assert_eq!(app.flow_rows().len(), 1);
    feed(&mut app, [ch('/')]);
    feed(&mut app, typed(" zz"));
    assert_eq!(
        app.flow_rows().len(),
        0,
        "the filter applies as it is typed"
    );
    app.handle_event(press(KeyCode::Esc));
    assert_eq!(app.filter().text(), "port:53");
    assert_eq!(app.flow_rows().len(), 1);
    assert!(!app.should_quit(), "Esc ends the editing, not the program");
    // Keys typed into the filter are text, not commands.
    feed(&mut app, [ch('/'), ch('q'), ch('p'), ch('s')]);
    assert!(!app.should_quit() && !app.is_paused());
    assert_eq!(app.sort(), SortKey::Loss);
}

// ---------------------------------------------------------------------------------------------
// Pause: data is held (bounded), applied in order on resume.

#[test]
fn pause_holds_data_and_resume_applies_it() {
    let mut app = demo_app();
    let flows_before: Vec<_> = app.flow_rows().map(|e| e.total.clone()).collect();
    let history_before = app.loss_history().len();
    app.handle_event(ch('p'));
    assert!(app.is_paused());
    feed(&mut app, demo_interval(4));
    assert_eq!(app.held(), 4, "one interval and its three anomalies");
    let flows_now: Vec<_> = app.flow_rows().map(|e| e.total.clone()).collect();
    assert_eq!(flows_now, flows_before, "nothing moves while paused");
    assert_eq!(app.loss_history().len(), history_before);
    // Keys still work while paused.
    app.handle_event(ch('s'));
    assert_eq!(app.sort(), SortKey::Retransmits);
    app.handle_event(ch('p'));
    assert!(!app.is_paused());
    assert_eq!(app.held(), 0);
    assert_eq!(app.loss_history().len(), history_before + 1);
}

#[test]
fn pause_holds_at_most_max_held() {
    let mut app = App::new();
    app.handle_event(ch('p'));
    for i in 0..MAX_HELD + 5 {
        app.handle_event(anomaly(i));
    }
    assert_eq!(app.held(), MAX_HELD);
    assert_eq!(app.held_discarded, 5);
    app.handle_event(ch('p'));
    assert_eq!(app.event_count(), MAX_EVENTS);
    // The newest survived.
    let newest = app.visible_events().next().unwrap();
    assert_eq!(newest.len, (MAX_HELD + 4) as u32);
}

// ---------------------------------------------------------------------------------------------
// Bounded memory.

/// Anomaly `i`, of a flow of its own (distinct events, one row each).
fn anomaly(i: usize) -> AppEvent {
    AppEvent::Anomaly(AnomalySample {
        flow: Some(crate::observe::packet::Flow {
            proto: 17,
            src: "198.19.1.2".parse().unwrap(),
            dst: "198.19.2.2".parse().unwrap(),
            sport: i as u16,
            dport: 5555,
        }),
        ..same_anomaly(i)
    })
}

/// Anomaly `i` of one event repeated: only its length differs.
fn same_anomaly(i: usize) -> AnomalySample {
    AnomalySample {
        ts: std::time::UNIX_EPOCH,
        kind: EventKind::Drop,
        ifname: Some("eth0".into()),
        dir: Some(Direction::Ingress),
        reason: "NOT_SPECIFIED".into(),
        location: "kfree_skb".into(),
        len: i as u32,
        flow: None,
        pod: None,
        count: 1,
    }
}

#[test]
fn identical_events_share_one_row_with_their_count() {
    let mut app = App::new();
    for i in 0..20 {
        app.handle_event(AppEvent::Anomaly(same_anomaly(i)));
    }
    // A folded line from the pipeline adds its count.
    app.handle_event(AppEvent::Anomaly(AnomalySample {
        count: 80,
        ..same_anomaly(99)
    }));
    app.handle_event(anomaly(7));
    assert_eq!(app.event_count(), 2);
    let rows: Vec<_> = app.visible_events().collect();
    assert_eq!(
        (rows[0].count, rows[0].len),
        (1, 7),
        "another event, newest"
    );
    assert_eq!(
        (rows[1].count, rows[1].len),
        (100, 99),
        "the merged row has the latest's details"
    );
    // The same event again moves its row back to the top.
    app.handle_event(AppEvent::Anomaly(same_anomaly(5)));
    assert_eq!(app.visible_events().next().unwrap().count, 101);
}

#[test]
fn events_and_history_are_bounded() {
    let mut app = App::new();
    for i in 0..MAX_EVENTS * 3 {
        app.handle_event(anomaly(i));
    }
    assert_eq!(app.event_count(), MAX_EVENTS);
    for i in 0..HISTORY_LEN + 50 {
        feed(&mut app, demo_interval(i).into_iter().take(1));
    }
    assert_eq!(app.loss_history().len(), HISTORY_LEN);
    assert_eq!(
        app.flow_count(),
        6,
        "the same flows accumulate, they do not multiply"
    );
}

#[test]
fn flows_are_capped_and_the_troubled_ones_kept() {
    let mut app = App::new();
    app.handle_event(many_flows(MAX_FLOWS, 0));
    assert_eq!(app.flow_count(), MAX_FLOWS);
    // Another batch of new flows: the table stays at the cap, and every flow with drops,
    // retransmits or fragments outranks the clean ones.
    app.handle_event(many_flows(MAX_FLOWS / 2, 1 << 20));
    assert_eq!(app.flow_count(), MAX_FLOWS);
    let troubled_kept = app.flow_rows().filter(|e| e.total.drops > 0).count();
    let all = {
        let mut fresh = App::new();
        fresh.handle_event(many_flows(MAX_FLOWS, 0));
        fresh.handle_event(many_flows(MAX_FLOWS / 2, 1 << 20));
        fresh.flow_rows().count()
    };
    assert_eq!(all, MAX_FLOWS);
    assert!(troubled_kept > 0);
    let min_kept = app.flow_rows().map(|e| e.total.trouble()).min().unwrap();
    assert!(min_kept > 0, "clean flows go first");
}

// ---------------------------------------------------------------------------------------------
// Keys.

#[test]
fn keys_move_switch_and_quit() {
    let mut app = demo_app();
    assert_eq!(app.focus(), Panel::Hops);
    feed(&mut app, [ch('j'), ch('j'), press(KeyCode::Down), ch('k')]);
    assert_eq!(app.hop_sel, 2);
    feed(&mut app, [press(KeyCode::End)]);
    assert_eq!(app.hop_sel, 7);
    feed(&mut app, [ch('j')]);
    assert_eq!(app.hop_sel, 7, "stops at the last row");
    feed(&mut app, [press(KeyCode::Tab), press(KeyCode::Tab)]);
    assert_eq!(app.focus(), Panel::Events);
    feed(&mut app, [press(KeyCode::BackTab)]);
    assert_eq!(app.focus(), Panel::Flows);
    // Enter opens the path; Esc closes it without quitting; j moves the path along.
    feed(&mut app, [press(KeyCode::Enter)]);
    let first = app.path_flow().cloned().unwrap();
    feed(&mut app, [ch('j')]);
    assert_ne!(app.path_flow(), Some(&first));
    feed(&mut app, [press(KeyCode::Esc)]);
    assert!(app.path_flow().is_none() && !app.should_quit());
    // Help: any key closes it.
    feed(&mut app, [ch('?'), ch('x')]);
    assert!(!app.help && !app.should_quit());
    // Key releases are not presses.
    app.handle_event(AppEvent::Key(KeyEvent::new_with_kind(
        KeyCode::Char('q'),
        KeyModifiers::NONE,
        KeyEventKind::Release,
    )));
    assert!(!app.should_quit());
    feed(&mut app, [ch('q')]);
    assert!(app.should_quit());

    let mut app = App::new();
    app.handle_event(press(KeyCode::Esc));
    assert!(app.should_quit());
    let mut app = App::new();
    app.handle_event(AppEvent::Key(KeyEvent::new(
        KeyCode::Char('c'),
        KeyModifiers::CONTROL,
    )));
    assert!(app.should_quit());
    let mut app = App::new();
    app.handle_event(AppEvent::Quit);
    assert!(app.should_quit());
}

#[test]
fn enter_on_an_event_opens_its_flow() {
    let mut app = demo_app();
    feed(&mut app, [press(KeyCode::BackTab), press(KeyCode::Enter)]);
    let flow = app.path_flow().expect("the newest event's flow").clone();
    assert_eq!(
        flow.dport, 41234,
        "the newest event is a checksum error on the ACKs"
    );
}

#[test]
fn path_verdicts() {
    let app = demo_app();
    let verdict = |sport| {
        let entry = app.flow_rows().find(|e| e.flow.sport == sport).unwrap();
        App::path_verdict(entry)
    };
    assert_eq!(verdict(5201), PathVerdict::DropsAt(0));
    assert_eq!(verdict(39000), PathVerdict::VanishesBefore(2));
    assert_eq!(verdict(41234), PathVerdict::Clean);
    assert_eq!(verdict(5004), PathVerdict::DropsAt(1));
}

#[test]
fn status_counts_lost_events_and_feed_end() {
    let mut app = demo_app();
    assert_eq!(app.lost_events, 3);
    app.handle_event(AppEvent::FeedEnded);
    let text = lines(&buffer(&app, 140, 40)).join("\n");
    assert!(text.contains("FEED ENDED"));
    assert!(text.contains("lost events 3"));
    assert!(text.contains("hooks: tc:tcx, tp_btf:kfree_skb"));
}

#[test]
fn status_shows_evicted_flows_only_when_some_were() {
    let mut app = demo_app();
    let text = lines(&buffer(&app, 140, 40)).join("\n");
    assert!(!text.contains("evicted"), "{text}");
    app.handle_event(AppEvent::Evicted(1500));
    app.handle_event(AppEvent::Evicted(u64::MAX));
    assert_eq!(app.evicted_flows, u64::MAX);
    app.evicted_flows = 1500;
    let text = lines(&buffer(&app, 160, 40)).join("\n");
    assert!(text.contains("evicted flows"), "{text}");
}

/// The UI shows the loss the interval model computed, the one `record` writes in its hop
/// lines; and a flow all of whose packets died reads 100%.
#[test]
fn the_ui_shows_the_models_loss() {
    use std::collections::HashMap;

    use vxprobe_common::{Counters, FlowCounters};

    use crate::{
        observe::{
            anomaly::{AnomalyKind, tests_support::empty},
            interval::{HopCount, Interval},
            report::FlowReport,
        },
        sinks::tui::feed::TuiFeed,
    };

    let netns = 4026531840;
    let cali = cali0(None);
    let flow = pod_udp();
    let mut model = Interval::new(netns, HashMap::new());
    model.observe_device(7);
    // 50 datagrams crossed cali0; each died of a bad checksum at the receiving pod.
    for _ in 0..50 {
        let mut a = empty();
        a.kind = AnomalyKind::CsumError;
        a.netns = 99;
        a.dropped = true;
        a.reason = Some("UDP_CSUM".into());
        a.flow = Some(flow.clone());
        model.charge(&a);
    }
    // And 3 of cali0's 30 ingress packets died there.
    for _ in 0..3 {
        let mut a = empty();
        a.netns = netns;
        a.ifindex = Some(7);
        a.hop_direction = Some(Direction::Ingress);
        a.dropped = true;
        a.reason = Some("NETFILTER_DROP".into());
        model.charge(&a);
    }
    let counters = |packets| Counters {
        packets,
        bytes: packets * 200,
        segs: packets,
        ..Default::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let mut feed = TuiFeed::new(tx, std::time::Duration::from_secs(1), HashMap::new());
    let hops = vec![
        HopCount {
            hop: cali.clone(),
            dir: Direction::Ingress,
            counters: counters(80),
        },
        HopCount {
            hop: cali.clone(),
            dir: Direction::Egress,
            counters: counters(0),
        },
    ];
    let flow_report = FlowReport {
        hop: cali,
        dir: Direction::Ingress,
        flow: flow.clone(),
        outer: None,
        counters: FlowCounters {
            counters: Counters {
                packets: 50,
                bytes: 50 * 200,
                segs: 50,
                ..Default::default()
            },
            ..Default::default()
        },
        mean_segment: 200,
    };
    let report = feed_interval(&mut feed, &mut model, hops, flow_report);
    assert_eq!(report.hops[0].loss_pct, 3.75);
    let mut app = App::new();
    super::feed(&mut app, std::iter::from_fn(|| rx.try_recv().ok()));
    assert_eq!(app.hops()[0].loss_pct, report.hops[0].loss_pct);
    assert_eq!(app.flow(&flow).unwrap().loss_pct(), 100.0);
}

// ---------------------------------------------------------------------------------------------
// Benchmark.

/// `cargo test --release -p vxprobe --lib -- --ignored render_time --nocapture`
#[test]
#[ignore = "a benchmark: prints frame render times at 10,000 flows"]
fn render_time_at_10k_flows() {
    let mut app = demo_app();
    let start = std::time::Instant::now();
    app.handle_event(many_flows(MAX_FLOWS, 0));
    let apply = start.elapsed();
    assert_eq!(app.flow_count(), MAX_FLOWS);
    for (w, h) in [(120, 40), (200, 60)] {
        let frames = 200;
        let total: std::time::Duration = (0..frames)
            .map(|_| crate::sinks::tui::render_once(&app, w, h))
            .sum();
        println!(
            "{w}x{h}, {} flows: {:?} per frame (interval of {} flows applied in {apply:?})",
            app.flow_count(),
            total / frames,
            MAX_FLOWS,
        );
    }
}
