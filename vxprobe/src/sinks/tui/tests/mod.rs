//! Whole-screen snapshots (ratatui `TestBackend` + insta) and behaviour tests, all driven
//! through [`AppEvent`]s only: data from the demo scenario, keys as synthetic key events.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::{Terminal, backend::TestBackend, buffer::Buffer, style::Color};

mod behaviour;
mod pods;
mod screens;

use super::{
    App, AppEvent,
    app::{HISTORY_LEN, MAX_EVENTS, MAX_FLOWS, MAX_HELD, Panel, SortKey},
    demo::{demo_events, demo_interval, judged, many_flows},
    model::{AnomalySample, Direction, EventKind, HopId, HopSample, PathVerdict},
    render::{flow_label, hint_text},
};

/// The cali0 hop the model-driven tests count on (ifindex 7), named by `pod`.
pub(super) fn cali0(
    pod: Option<std::sync::Arc<crate::node::pods::Pod>>,
) -> crate::observe::report::MetaHop {
    crate::observe::report::MetaHop {
        pod,
        ..crate::observe::report::MetaHop::new("cali0", 7, crate::node::devices::Role::Pod, 1450)
    }
}

/// The UDP flow between the lab's pods those tests count.
pub(super) fn pod_udp() -> crate::observe::packet::Flow {
    crate::observe::packet::Flow {
        proto: 17,
        src: "198.19.1.2".parse().unwrap(),
        dst: "198.19.2.2".parse().unwrap(),
        sport: 40000,
        dport: 5555,
    }
}

/// One interval through `feed` as the pipeline sends it: `model` closed over `hops` (1 s, no
/// lost events), then `flow`, then the interval's end. Returns the closed interval's report.
pub(super) fn feed_interval(
    feed: &mut super::feed::TuiFeed,
    model: &mut crate::observe::interval::Interval,
    hops: Vec<crate::observe::interval::HopCount>,
    flow: crate::observe::report::FlowReport,
) -> crate::observe::report::IntervalReport {
    use crate::observe::pipeline::Sink as _;
    let ts = std::time::SystemTime::now();
    let report = model.close(ts, std::time::Duration::from_secs(1), hops, vec![]);
    feed.interval(&report).unwrap();
    feed.flows(&[flow]).unwrap();
    feed.interval_end(&model.end(0, |_| true)).unwrap();
    report
}

pub(super) fn press(code: KeyCode) -> AppEvent {
    AppEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

pub(super) fn ch(c: char) -> AppEvent {
    press(KeyCode::Char(c))
}

pub(super) fn typed(text: &str) -> impl Iterator<Item = AppEvent> + '_ {
    text.chars().map(ch)
}

pub(super) fn feed(app: &mut App, events: impl IntoIterator<Item = AppEvent>) {
    for event in events {
        app.handle_event(event);
    }
}

pub(super) fn demo_app() -> App {
    let mut app = App::new();
    feed(&mut app, demo_events());
    app
}

pub(super) fn draw(app: &App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|frame| frame.render_widget(app, frame.area()))
        .unwrap();
    terminal
}

pub(super) fn buffer(app: &App, width: u16, height: u16) -> Buffer {
    draw(app, width, height).backend().buffer().clone()
}

/// The screen's rows as text.
pub(super) fn lines(buf: &Buffer) -> Vec<String> {
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

pub(super) fn flow_names(app: &App) -> Vec<String> {
    app.flow_rows()
        .map(|e| format!("{}:{}>{}", e.flow.proto_name(), e.flow.sport, e.flow.dport))
        .collect()
}
