//! Drawing: `impl Widget for &App`. Reads the state, never changes it, does no I/O. One
//! file per panel or overlay, over a shared table helper ([`table`]) and formatting
//! ([`format`]).
//!
//! Any size works: below [`MIN_WIDTH`] x [`MIN_HEIGHT`] a few summary lines replace the
//! panels, and narrow tables drop their least important columns first.

use std::{
    ops::Range,
    time::{Duration, Instant},
};

use ratatui::{
    Terminal,
    backend::TestBackend,
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Paragraph, Widget},
};

mod events;
mod flows;
mod format;
mod help;
mod hops;
mod path;
mod status;
mod table;

pub use format::{flow_label, hint_text, human_bytes, human_count};

use super::{
    app::{self, App, FlowEntry, Panel, SortKey},
    model::{
        AnomalySample, EventKind, Flow, HopCounts, HopId, HopSample, OffloadHint, PathVerdict,
        PodId,
    },
};
use crate::observe::judge;

/// Below this the panels do not fit: a summary is shown instead.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 10;
/// From this width on, flows and events sit side by side.
pub(super) const SIDE_BY_SIDE_WIDTH: u16 = 180;

pub(super) const DIM: Style = Style::new().fg(Color::DarkGray);
pub(super) const HEADER: Style = Style::new().add_modifier(Modifier::BOLD);
pub(super) const FOCUSED_BORDER: Style = Style::new().fg(Color::Cyan);
pub(super) const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);
pub(super) const WORST: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
pub(super) const SIZE_SIGNATURE: Style = Style::new()
    .fg(Color::Black)
    .bg(Color::Yellow)
    .add_modifier(Modifier::BOLD);

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
            status::render_summary(self, area, buf);
        } else {
            render_panels(self, area, buf);
        }
        if self.help {
            help::render_help(area, buf);
        }
    }
}

/// Draws `app` once into an off-screen buffer of `width` x `height` and returns how long it
/// took (for benchmarks).
pub fn render_once(app: &App, width: u16, height: u16) -> Duration {
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(never) => match never {},
    };
    let start = Instant::now();
    let drawn = terminal.draw(|frame| frame.render_widget(app, frame.area()));
    if let Err(never) = drawn {
        match never {}
    }
    start.elapsed()
}

pub(super) fn render_panels(app: &App, area: Rect, buf: &mut Buffer) {
    let hop_rows = u16::try_from(app.visible_hops().count()).unwrap_or(u16::MAX);
    let hops_height = hop_rows
        .max(1)
        .saturating_add(3)
        .min((area.height / 5 * 2).max(5));
    let hint_height = u16::from(app.offload_hint.is_some() && area.height >= 16);
    let history_height = if area.height >= 24 { 2 } else { 0 };
    let [hops_area, hint_area, rest, history_area, status_area] = Layout::vertical([
        Constraint::Length(hops_height),
        Constraint::Length(hint_height),
        Constraint::Min(4),
        Constraint::Length(history_height),
        Constraint::Length(1),
    ])
    .areas(area);

    hops::render_hops(app, hops_area, buf);
    if let Some(hint) = &app.offload_hint {
        Paragraph::new(Line::from(vec![
            Span::styled(" hint ", SIZE_SIGNATURE),
            Span::raw(" "),
            Span::styled(hint_text(hint), Style::new().fg(Color::Yellow)),
        ]))
        .render(hint_area, buf);
    }
    let (flows_area, events_area) = if area.width >= SIDE_BY_SIDE_WIDTH {
        let [f, e] =
            Layout::horizontal([Constraint::Percentage(58), Constraint::Fill(1)]).areas(rest);
        (f, e)
    } else {
        // The flows take what their rows need, up to 3/5 of the space; the events the rest.
        let wanted = u16::try_from(app.flow_view.len().max(1) + 3).unwrap_or(u16::MAX);
        let flows = wanted.min((rest.height / 5 * 3).max(4));
        let [f, e] = Layout::vertical([Constraint::Length(flows), Constraint::Fill(1)]).areas(rest);
        (f, e)
    };
    flows::render_flows(app, flows_area, buf);
    events::render_events(app, events_area, buf);
    status::render_history(app, history_area, buf);
    status::render_status(app, status_area, buf);
    if app.path_view.is_some() {
        path::render_path(app, rest, buf);
    }
}
