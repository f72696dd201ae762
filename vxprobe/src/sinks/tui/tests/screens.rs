//! Whole screens: snapshots, every size, and what must stand out.

use super::*;

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

    use crate::sinks::tui::model::Offload;
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
    use crate::sinks::tui::model::{FlowHop, FlowSample, HopCounts, Role};
    let hop = |name: &str, ifindex, dir, role, packets, drops| FlowHop {
        ifname: name.into(),
        ifindex,
        dir,
        role,
        pod: None,
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
