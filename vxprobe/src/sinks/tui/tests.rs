//! Whole-screen snapshots (ratatui `TestBackend` + insta) and behaviour tests, all driven
//! through [`AppEvent`]s only: data from the demo scenario, keys as synthetic key events.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::{Terminal, backend::TestBackend, buffer::Buffer, style::Color};

use super::{
    App, AppEvent,
    app::{HISTORY_LEN, MAX_EVENTS, MAX_FLOWS, MAX_HELD, Panel, SortKey},
    demo::{demo_events, demo_interval, judged, many_flows},
    model::{AnomalySample, Direction, EventKindView, HopId, HopSample, PathVerdict},
    render::hint_text,
};

fn press(code: KeyCode) -> AppEvent {
    AppEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn ch(c: char) -> AppEvent {
    press(KeyCode::Char(c))
}

fn typed(text: &str) -> impl Iterator<Item = AppEvent> + '_ {
    text.chars().map(ch)
}

fn feed(app: &mut App, events: impl IntoIterator<Item = AppEvent>) {
    for event in events {
        app.handle_event(event);
    }
}

fn demo_app() -> App {
    let mut app = App::new();
    feed(&mut app, demo_events());
    app
}

fn draw(app: &App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|frame| frame.render_widget(app, frame.area()))
        .unwrap();
    terminal
}

fn buffer(app: &App, width: u16, height: u16) -> Buffer {
    draw(app, width, height).backend().buffer().clone()
}

/// The screen's rows as text.
fn lines(buf: &Buffer) -> Vec<String> {
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

fn flow_names(app: &App) -> Vec<String> {
    app.flow_rows()
        .map(|e| format!("{}:{}>{}", e.flow.proto_name(), e.flow.sport, e.flow.dport))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Snapshots.

#[test]
fn snapshot_empty() {
    let app = App::new();
    insta::assert_snapshot!(draw(&app, 120, 30).backend());
}

#[test]
fn snapshot_status_only() {
    let mut app = App::new();
    feed(&mut app, demo_events().into_iter().take(1));
    insta::assert_snapshot!(draw(&app, 120, 30).backend());
}

#[test]
fn snapshot_populated() {
    let app = demo_app();
    insta::assert_snapshot!(draw(&app, 140, 40).backend());
}

#[test]
fn snapshot_populated_200x60() {
    let app = demo_app();
    insta::assert_snapshot!(draw(&app, 200, 60).backend());
}

#[test]
fn snapshot_populated_60x20() {
    let app = demo_app();
    insta::assert_snapshot!(draw(&app, 60, 20).backend());
}

#[test]
fn snapshot_populated_20x5() {
    let app = demo_app();
    insta::assert_snapshot!(draw(&app, 20, 5).backend());
}

#[test]
fn snapshot_populated_1x1() {
    let app = demo_app();
    insta::assert_snapshot!(draw(&app, 1, 1).backend());
}

#[test]
fn snapshot_flow_path() {
    // Tab to the flows, then down and back up: the worst flow by loss, the ACKs losing their
    // checksums at eth0.
    let mut app = demo_app();
    feed(
        &mut app,
        [press(KeyCode::Tab), ch('j'), ch('k'), press(KeyCode::Enter)],
    );
    assert!(app.path_flow().is_some());
    insta::assert_snapshot!(draw(&app, 140, 40).backend());
}

#[test]
fn snapshot_flow_path_vanishing_bytes() {
    // Filter to port 443, open its path: bytes fall between the tunnel and the NIC.
    let mut app = demo_app();
    feed(&mut app, [press(KeyCode::Tab), ch('/')]);
    feed(&mut app, typed("port:443"));
    feed(&mut app, [press(KeyCode::Enter), press(KeyCode::Enter)]);
    insta::assert_snapshot!(draw(&app, 120, 36).backend());
}

#[test]
fn snapshot_help() {
    let mut app = demo_app();
    app.handle_event(ch('?'));
    insta::assert_snapshot!(draw(&app, 120, 36).backend());
}

#[test]
fn snapshot_sorted_by_retransmits_paused_filtering() {
    let mut app = demo_app();
    feed(&mut app, [press(KeyCode::Tab), ch('s'), ch('p')]);
    feed(&mut app, demo_interval(3));
    feed(&mut app, [ch('/')]);
    feed(&mut app, typed("host:198.19.2.2"));
    insta::assert_snapshot!(draw(&app, 120, 36).backend());
}

// ---------------------------------------------------------------------------------------------
// Every size, every overlay: no panic, nothing drawn outside the area.

#[test]
fn any_size_renders() {
    let mut views = vec![App::new(), demo_app()];
    let mut path = demo_app();
    feed(&mut path, [press(KeyCode::Tab), press(KeyCode::Enter)]);
    views.push(path);
    let mut help = demo_app();
    help.handle_event(ch('?'));
    views.push(help);
    let mut filtering = demo_app();
    feed(&mut filtering, [ch('/'), ch('x'), ch('p')]);
    views.push(filtering);
    // The sizes the layout changes at, the extremes, and a few arbitrary ones (each render
    // costs milliseconds in a debug build: the layout solver is not optimised there).
    let mut sizes = vec![
        (0, 0),
        (1, 1),
        (2, 2),
        (20, 5),
        (39, 9),
        (40, 10),
        (41, 11),
        (60, 20),
        (80, 15),
        (80, 24),
        (100, 12),
        (179, 30),
        (180, 40),
        (200, 60),
        (300, 100),
        (1, 100),
        (300, 1),
        (10, 40),
    ];
    let mut seed = 0x2545_f491_u32;
    for _ in 0..10 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        sizes.push((((seed >> 8) % 220) as u16, ((seed >> 20) % 70) as u16));
    }
    for app in &views {
        for &(width, height) in &sizes {
            // Straight into a buffer: the area is all the widget may touch.
            let area = ratatui::layout::Rect::new(0, 0, width, height);
            let mut buf = Buffer::empty(area);
            ratatui::widgets::Widget::render(app, area, &mut buf);
        }
    }
}

#[test]
fn absurd_counts_do_not_panic() {
    let mut app = App::new();
    for _ in 0..2 {
        let mut events = demo_interval(0);
        if let AppEvent::Interval {
            hops, flows, lost, ..
        } = &mut events[0]
        {
            *lost = u64::MAX;
            for hop in hops.iter_mut() {
                (hop.packets, hop.bytes, hop.drops) = (u64::MAX, u64::MAX, u64::MAX);
                hop.interval = std::time::Duration::ZERO;
                hop.mtu = u32::MAX;
            }
            for flow in flows.iter_mut() {
                flow.total.packets = u64::MAX;
                flow.total.drops = u64::MAX;
                for hop in &mut flow.hops {
                    hop.counts.bytes = u64::MAX;
                }
            }
        }
        feed(&mut app, events);
    }
    feed(
        &mut app,
        [AppEvent::Status {
            hooks: vec!["x".repeat(500)],
            interval: std::time::Duration::MAX,
        }],
    );
    feed(&mut app, [press(KeyCode::Tab), press(KeyCode::Enter)]);
    for (w, h) in [(140, 40), (60, 20), (20, 5)] {
        draw(&app, w, h);
    }
}

// ---------------------------------------------------------------------------------------------
// What stands out.

#[test]
fn the_hop_losing_most_is_marked_in_bold_red() {
    let app = demo_app();
    let buf = buffer(&app, 140, 40);
    let rows = lines(&buf);
    let y = rows
        .iter()
        .position(|r| r.contains('▶'))
        .expect("a marked hop");
    assert!(
        rows[y].contains("eth0") && rows[y].contains("ingress"),
        "{}",
        rows[y]
    );
    assert_eq!(rows.iter().filter(|r| r.contains('▶')).count(), 1);
    let x = u16::try_from(rows[y].find("eth0").unwrap()).unwrap();
    let cell = &buf[(x, u16::try_from(y).unwrap())];
    assert_eq!(cell.fg, Color::Red);
    assert!(cell.modifier.contains(ratatui::style::Modifier::BOLD));
}

#[test]
fn the_hop_losing_most_shows_in_the_title_when_off_the_page() {
    let mut app = demo_app();
    // Worst is eth0 ingress, the 5th hop; at this height the table shows 2 rows a page.
    let rows = lines(&buffer(&app, 80, 12));
    assert!(rows[0].contains("▶ eth0 ingress"), "{}", rows[0]);
    feed(&mut app, [ch('j'), ch('j'), ch('j'), ch('j')]);
    let rows = lines(&buffer(&app, 80, 12));
    assert!(!rows[0].contains('▶'), "on the page: marked in its row");
    assert_eq!(rows.iter().filter(|r| r.contains("▶ eth0")).count(), 1);
}

/// The demo's first interval with `change` applied to its hops (and judged again).
fn demo_with_hops(change: impl Fn(&mut HopSample)) -> App {
    let mut app = App::new();
    let mut events = demo_interval(0);
    if let AppEvent::Interval {
        mut hops,
        flows,
        lost,
        ..
    } = events.remove(0)
    {
        hops.iter_mut().for_each(change);
        events.insert(0, judged(hops, flows, lost));
    }
    feed(&mut app, events);
    app
}

#[test]
fn the_offload_signature_is_hinted_and_highlighted() {
    // The tunnel's TC hook still sees 64 KiB packets (segmentation comes after it); eth0's
    // largest packet is 1514 B while cali0 ingress carries GSO packets.
    let app = demo_app();
    let hint = app.offload_hint.as_ref().expect("a hint");
    assert_eq!(
        HopId::from(hint.small),
        HopId {
            ifindex: 2,
            dir: Direction::Egress
        }
    );
    assert_eq!(
        HopId::from(hint.pod),
        HopId {
            ifindex: 7,
            dir: Direction::Ingress
        }
    );
    assert_eq!(
        hint_text(hint),
        "eth0 egress: largest packet 1514 B, cali0 ingress: 63.7K GSO packets → TX checksum and \
         TSO off on vxlan.calico"
    );
    let buf = buffer(&app, 140, 40);
    let highlighted = (0..buf.area.height)
        .flat_map(|y| (0..buf.area.width).map(move |x| (x, y)))
        .filter(|&p| buf[p].bg == Color::Yellow)
        .count();
    assert!(highlighted > 0);
}

#[test]
fn the_signature_on_the_tunnel_itself_names_it() {
    let app = demo_with_hops(|hop| {
        if hop.ifname == "vxlan.calico" && hop.dir == Direction::Egress {
            hop.max_len = Some(1_464);
        }
    });
    let hint = app.offload_hint.as_ref().expect("a hint");
    assert_eq!(hint.small.ifindex, 4);
    assert!(
        hint_text(hint).starts_with("vxlan.calico egress: largest packet 1464 B"),
        "{}",
        hint_text(hint)
    );
}

#[test]
fn without_max_len_the_mean_segment_judges() {
    let app = demo_with_hops(|hop| {
        hop.max_len = None;
        hop.mean_segment = None;
        hop.segs = 0;
    });
    let hint = app.offload_hint.as_ref().expect("a hint");
    assert!(
        hint_text(hint).starts_with("eth0 egress: mean packet 1446 B"),
        "{}",
        hint_text(hint)
    );
}

#[test]
fn no_hint_when_gso_survives_or_is_absent() {
    // Offload on: the underlay carries the GSO packets too.
    let app = demo_with_hops(|hop| {
        if hop.ifname == "eth0" && hop.dir == Direction::Egress {
            hop.max_len = Some(65_280);
        }
    });
    assert!(app.offload_hint.is_none());
    // The pod sends no GSO packets.
    let app = demo_with_hops(|hop| {
        if hop.ifname == "cali0" {
            hop.max_len = Some(1_400);
        }
    });
    assert!(app.offload_hint.is_none());
    // Small packets on the underlay that are not the pod's (a tenth of its bytes).
    let app = demo_with_hops(|hop| {
        if hop.ifname == "eth0" && hop.dir == Direction::Egress {
            hop.bytes /= 10;
        }
    });
    assert!(app.offload_hint.is_none());
}

#[test]
fn offload_from_doctor_features() {
    use crate::node::features::{FeatureState, Features};

    use super::model::Offload;
    let state = |on| FeatureState {
        on,
        fixed: false,
        requested: on,
    };
    let features = Features(
        [
            ("tx-checksum-ip-generic", state(false)),
            ("tx-tcp-segmentation", state(false)),
            ("tx-generic-segmentation", state(true)),
            ("rx-gro", state(true)),
        ]
        .into_iter()
        .map(|(name, s)| (name.to_owned(), s))
        .collect(),
    );
    assert_eq!(
        Offload::from_features(&features),
        Some(Offload {
            tx_csum: false,
            tso: false,
            gso: true
        })
    );
    assert_eq!(Offload::from_features(&Features::default()), None);
}

#[test]
fn flow_samples_from_hops_in_any_order() {
    use super::model::{FlowHop, FlowSample, HopCounts, Role};
    let hop = |name: &str, ifindex, dir, role, packets, drops| FlowHop {
        ifname: name.into(),
        ifindex,
        dir,
        role,
        counts: HopCounts {
            packets,
            bytes: packets * 100,
            drops,
            retransmits: 1,
            ..HopCounts::default()
        },
    };
    let flow = demo_app().flow_rows().next().unwrap().flow.clone();
    let sample = FlowSample::from_hops(
        flow,
        None,
        vec![
            hop("cali0", 7, Direction::Egress, Role::Pod, 90, 0),
            hop("eth0", 2, Direction::Ingress, Role::Underlay, 100, 10),
            hop("vxlan.calico", 4, Direction::Ingress, Role::Overlay, 90, 0),
        ],
    );
    let order: Vec<_> = sample.hops.iter().map(|h| h.ifname.as_str()).collect();
    assert_eq!(order, ["eth0", "vxlan.calico", "cali0"]);
    assert_eq!((sample.total.packets, sample.total.bytes), (100, 10_000));
    assert_eq!((sample.total.drops, sample.total.retransmits), (10, 3));
    // Outbound, and to a tap.
    let rank = |dir, role| hop("x", 1, dir, role, 0, 0).path_rank();
    assert!(rank(Direction::Ingress, Role::Pod) < rank(Direction::Egress, Role::Overlay));
    assert!(rank(Direction::Egress, Role::Overlay) < rank(Direction::Egress, Role::Underlay));
    assert!(rank(Direction::Ingress, Role::Physical) < rank(Direction::Egress, Role::Tap));
}

// ---------------------------------------------------------------------------------------------
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
            app.visible_events().count(),
        )
    };
    let (flows, hops, _) = filter("port:53");
    assert_eq!(flows, ["udp:53124>53"]);
    assert_eq!(hops.len(), 8, "host/port terms leave the hops alone");
    let (flows, _, events) = filter("host:198.18.9");
    assert_eq!(flows, ["udp:5004>5004"]);
    assert_eq!(events, 4, "the tap's oversize events");
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

fn anomaly(i: usize) -> AppEvent {
    AppEvent::Anomaly(AnomalySample {
        ts: std::time::UNIX_EPOCH,
        kind: EventKindView::Drop,
        ifname: Some("eth0".into()),
        dir: Some(Direction::Ingress),
        reason: "NOT_SPECIFIED".into(),
        location: "kfree_skb".into(),
        len: i as u32,
        flow: None,
    })
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
    use std::{collections::HashMap, time::SystemTime};

    use vxprobe_common::{FlowCounters, HopCounters};

    use crate::{
        node::devices::Role,
        observe::{
            anomaly::{AnomalyKind, tests_support::empty},
            interval::{HopCount, Interval},
            packet::Flow,
            pipeline::Sink as _,
            report::{FlowReport, MetaHop},
        },
        sinks::tui::feed::TuiFeed,
    };

    let netns = 4026531840;
    let cali = MetaHop {
        ifname: "cali0".into(),
        ifindex: 7,
        role: Role::Pod,
        mtu: 1450,
    };
    let flow = Flow {
        proto: 17,
        src: "198.19.1.2".parse().unwrap(),
        dst: "198.19.2.2".parse().unwrap(),
        sport: 40000,
        dport: 5555,
    };
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
    let counters = |packets| HopCounters {
        packets,
        bytes: packets * 200,
        segs: packets,
        ..Default::default()
    };
    let report = model.close(
        SystemTime::now(),
        std::time::Duration::from_secs(1),
        vec![
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
        ],
        vec![],
    );
    assert_eq!(report.hops[0].loss_pct, 3.75);
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let mut feed = TuiFeed::new(tx, std::time::Duration::from_secs(1), HashMap::new());
    feed.interval(&report).unwrap();
    feed.flows(&[FlowReport {
        hop: cali,
        dir: Direction::Ingress,
        flow: flow.clone(),
        outer: None,
        counters: FlowCounters {
            packets: 50,
            bytes: 50 * 200,
            segs: 50,
            ..Default::default()
        },
        mean_segment: 200,
    }])
    .unwrap();
    feed.interval_end(&model.end(0, |_| true)).unwrap();
    let mut app = App::new();
    while let Ok(event) = rx.try_recv() {
        app.handle_event(event);
    }
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
        let total: std::time::Duration = (0..frames).map(|_| super::render_once(&app, w, h)).sum();
        println!(
            "{w}x{h}, {} flows: {:?} per frame (interval of {} flows applied in {apply:?})",
            app.flow_count(),
            total / frames,
            MAX_FLOWS,
        );
    }
}
