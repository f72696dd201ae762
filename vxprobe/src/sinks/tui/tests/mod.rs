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
