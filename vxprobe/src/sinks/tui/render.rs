//! Drawing: `impl Widget for &App`. Reads the state, never changes it, does no I/O.
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
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    symbols,
    text::{Line, Span},
    widgets::{
        Block, BorderType, Borders, Cell, Clear, HighlightSpacing, Paragraph, Row, Sparkline,
        StatefulWidget, Table, TableState, Widget,
    },
};

use super::{
    app::{self, App, FlowEntry, Panel, SortKey},
    model::{
        AnomalySample, EventKindView, Flow, HopCounts, HopId, HopSample, OffloadHint, PathVerdict,
    },
};
use crate::observe::judge;

/// Below this the panels do not fit: a summary is shown instead.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 10;
/// From this width on, flows and events sit side by side.
const SIDE_BY_SIDE_WIDTH: u16 = 180;

const DIM: Style = Style::new().fg(Color::DarkGray);
const HEADER: Style = Style::new().add_modifier(Modifier::BOLD);
const FOCUSED_BORDER: Style = Style::new().fg(Color::Cyan);
const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);
const WORST: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const SIZE_SIGNATURE: Style = Style::new()
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
            render_summary(self, area, buf);
        } else {
            render_panels(self, area, buf);
        }
        if self.help {
            render_help(area, buf);
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

fn render_panels(app: &App, area: Rect, buf: &mut Buffer) {
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

    render_hops(app, hops_area, buf);
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
    render_flows(app, flows_area, buf);
    render_events(app, events_area, buf);
    render_history(app, history_area, buf);
    render_status(app, status_area, buf);
    if app.path_view.is_some() {
        render_path(app, rest, buf);
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting.

/// 1234 -> "1.2k"; counts of things.
pub fn human_count(n: u64) -> String {
    scaled(n as f64, 1000.0, &["", "k", "M", "G", "T"])
}

/// 1536 -> "1.5K"; sizes in bytes (binary multiples).
pub fn human_bytes(n: u64) -> String {
    scaled(n as f64, 1024.0, &["", "K", "M", "G", "T"])
}

/// The offload signature as one line: the small packets, the pod's GSO packets, the cause.
pub fn hint_text(hint: &OffloadHint) -> String {
    let dir = |key: vxprobe_common::HopKey| HopId::from(key).dir.as_str();
    format!(
        "{} {}: {} packet {} B, {} {}: {} GSO packets → {}",
        hint.small_ifname,
        dir(hint.small),
        hint.measure,
        hint.small_size,
        hint.pod_ifname,
        dir(hint.pod),
        human_bytes(hint.pod_size),
        hint.cause,
    )
}

fn human_rate(n: f64) -> String {
    scaled(n, 1000.0, &["", "k", "M", "G", "T"])
}

fn human_byte_rate(n: f64) -> String {
    scaled(n, 1024.0, &["", "K", "M", "G", "T"])
}

fn scaled(mut value: f64, step: f64, units: &[&str]) -> String {
    let mut unit = 0;
    while value >= step * 0.9995 && unit + 1 < units.len() {
        value /= step;
        unit += 1;
    }
    if unit == 0 {
        format!("{}", value.round() as u64)
    } else if value < 9.995 {
        format!("{value:.2}{}", units[unit])
    } else if value < 99.95 {
        format!("{value:.1}{}", units[unit])
    } else {
        format!("{value:.0}{}", units[unit])
    }
}

/// Packet sizes: exact up to 9999 B (the range where MTUs are compared), then scaled.
fn segment_size(bytes: u32) -> String {
    if bytes < 10_000 {
        bytes.to_string()
    } else {
        human_bytes(u64::from(bytes))
    }
}

fn pct(p: f64) -> String {
    if p == 0.0 {
        "0".into()
    } else if p < 0.01 {
        "<.01%".into()
    } else if p < 10.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

/// Loss colour: none, a trickle, some, a lot.
fn loss_style(p: f64) -> Style {
    if p == 0.0 {
        DIM
    } else if p < 1.0 {
        Style::new().fg(Color::Yellow)
    } else if p < 5.0 {
        Style::new()
            .fg(Color::LightRed)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    }
}

/// A cell's text and style, before its column decides the alignment.
#[derive(Clone)]
struct Txt {
    text: String,
    style: Style,
}

fn txt(text: impl Into<String>) -> Txt {
    styled(text, Style::new())
}

fn styled(text: impl Into<String>, style: Style) -> Txt {
    Txt {
        text: text.into(),
        style,
    }
}

/// A count that is a fault: dim at zero, coloured otherwise.
fn fault_cell(n: u64, color: Color) -> Txt {
    if n == 0 {
        styled("0", DIM)
    } else {
        styled(human_count(n), Style::new().fg(color))
    }
}

pub fn flow_label(flow: &Flow) -> String {
    let (src, dst) = (addr(flow.src), addr(flow.dst));
    if flow.sport == 0 && flow.dport == 0 {
        format!("{} {src} → {dst}", flow.proto_name())
    } else {
        format!(
            "{} {src}:{} → {dst}:{}",
            flow.proto_name(),
            flow.sport,
            flow.dport
        )
    }
}

fn addr(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `HH:MM:SS.mmm` in UTC.
fn clock(ts: std::time::SystemTime) -> String {
    let since = ts.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_millis()
    )
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

// ---------------------------------------------------------------------------------------------
// Columns that give way on narrow screens.

/// One table column: its header, width, and how much it matters (0 = kept longest).
#[derive(Clone, Copy)]
struct Column {
    header: &'static str,
    width: u16,
    priority: u8,
    right: bool,
    /// Text columns may be cut down to this width rather than dropped (0: never cut).
    squeeze: u16,
}

impl Column {
    const fn squeeze(mut self, min: u16) -> Self {
        self.squeeze = min;
        self
    }
}

const fn col(header: &'static str, width: u16, priority: u8) -> Column {
    Column {
        header,
        width,
        priority,
        right: true,
        squeeze: 0,
    }
}

const fn left(header: &'static str, width: u16, priority: u8) -> Column {
    Column {
        header,
        width,
        priority,
        right: false,
        squeeze: 0,
    }
}

/// A column wide enough for its widest text (and header), within bounds.
fn content_width(widths: impl Iterator<Item = usize>, header: &str, min: u16, max: u16) -> u16 {
    let widest = widths.max().unwrap_or(0).max(header.chars().count());
    u16::try_from(widest).unwrap_or(u16::MAX).clamp(min, max)
}

fn text_width(s: &str) -> usize {
    s.chars().count()
}

/// Indices of the columns that fit in `width`, taken most important first (up to the first
/// that does not fit) and shown in their order. A text column that does not fit whole is cut
/// to the space left when it may be; the most important column is always kept.
fn fit_columns(columns: &mut [Column], width: u16, spacing: u16) -> Vec<usize> {
    let mut order: Vec<usize> = (0..columns.len()).collect();
    order.sort_by_key(|&i| (columns[i].priority, i));
    let mut chosen = Vec::new();
    let mut left = width;
    for i in order {
        let gap = if chosen.is_empty() { 0 } else { spacing };
        let column = &mut columns[i];
        if column.width + gap <= left {
            left -= column.width + gap;
        } else if chosen.is_empty() {
            column.width = left;
            left = 0;
        } else if column.squeeze > 0 && left >= column.squeeze + gap {
            column.width = left - gap;
            left = 0;
        } else {
            break;
        }
        chosen.push(i);
    }
    chosen.sort_unstable();
    chosen
}

fn header_row(columns: &[Column], chosen: &[usize], sorted: Option<usize>) -> Row<'static> {
    Row::new(chosen.iter().map(|&i| {
        let c = &columns[i];
        let text = if sorted == Some(i) {
            format!("{}▼", c.header)
        } else {
            c.header.to_owned()
        };
        let line = if c.right {
            Line::from(text).alignment(Alignment::Right)
        } else {
            Line::from(text)
        };
        Cell::from(line)
    }))
    .style(HEADER)
}

/// The chosen columns of one row, aligned as their columns say.
fn row_of(columns: &[Column], chosen: &[usize], cells: &[Txt]) -> Row<'static> {
    Row::new(chosen.iter().map(|&i| {
        let Txt { text, style } = cells[i].clone();
        let line = Line::from(text);
        let line = if columns[i].right {
            line.alignment(Alignment::Right)
        } else {
            line
        };
        Cell::from(line).style(style)
    }))
}

fn widths(columns: &[Column], chosen: &[usize], flexible: Option<usize>) -> Vec<Constraint> {
    chosen
        .iter()
        .map(|&i| {
            if Some(i) == flexible {
                Constraint::Min(columns[i].width)
            } else {
                Constraint::Length(columns[i].width)
            }
        })
        .collect()
}

/// The rows of a `len`-row list shown in `rows` lines with `selected` on screen: whole pages,
/// so the view is a function of the selection alone (rendering keeps no scroll state).
fn page(selected: usize, len: usize, rows: usize) -> Range<usize> {
    if rows == 0 || len == 0 {
        return 0..0;
    }
    let start = selected.min(len - 1) / rows * rows;
    start..(start + rows).min(len)
}

/// How many rows a table has, and which are on screen when not all are: "8" or "1-5 of 8".
fn rows_note(range: &Range<usize>, len: usize) -> String {
    if range.len() < len {
        format!("{}-{} of {len}", range.start + 1, range.end)
    } else {
        len.to_string()
    }
}

fn panel_block(app: &App, panel: Panel, title: Line<'static>) -> Block<'static> {
    let focused = app.focus == panel;
    Block::bordered()
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Plain
        })
        .border_style(if focused { FOCUSED_BORDER } else { DIM })
        .title(title)
}

/// Renders rows (already the visible page) with the selection marked when the panel has focus.
fn render_table(
    table: Table<'static>,
    area: Rect,
    buf: &mut Buffer,
    selected_in_page: Option<usize>,
    focused: bool,
) {
    let mut state = TableState::new().with_selected(if focused { selected_in_page } else { None });
    StatefulWidget::render(
        table
            .column_spacing(1)
            .row_highlight_style(SELECTED)
            .highlight_symbol("›")
            .highlight_spacing(HighlightSpacing::Always),
        area,
        buf,
        &mut state,
    );
}

/// Rows available for data in a bordered table with a header.
fn data_rows(area: Rect) -> usize {
    usize::from(area.height.saturating_sub(3))
}

/// Inner width of a bordered table, less the selection marker column.
fn table_width(area: Rect) -> u16 {
    area.width.saturating_sub(3)
}

// ---------------------------------------------------------------------------------------------
// Hops.

const HOP_COLUMNS: [Column; 16] = [
    left("", 1, 0),
    left("device", 12, 0),
    left("dir", 7, 3),
    left("role", 8, 9),
    col("pkt/s", 7, 2),
    col("B/s", 7, 4),
    col("drops/s", 7, 1),
    col("loss", 6, 0),
    col("csum", 5, 5),
    col("ovsz", 5, 6),
    col("frag", 5, 10),
    col("retr", 5, 8),
    col("seg", 6, 6),
    col("max", 6, 5),
    col("mtu", 5, 11),
    left("offload", 12, 7),
];

fn offload_text(hop: &HopSample) -> (String, Style) {
    match hop.offload {
        None => ("?".into(), DIM),
        Some(o) => {
            let off: Vec<&str> = [(o.tx_csum, "csum"), (o.tso, "tso"), (o.gso, "gso")]
                .into_iter()
                .filter_map(|(on, name)| (!on).then_some(name))
                .collect();
            if off.is_empty() {
                ("on".into(), DIM)
            } else {
                (
                    format!("off:{}", off.join(",")),
                    Style::new().fg(Color::Yellow),
                )
            }
        }
    }
}

fn hop_cells(app: &App, hop: &HopSample) -> Vec<Txt> {
    let secs = hop.interval.as_secs_f64();
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let loss = hop.loss_pct;
    let worst = app.worst_hop == Some(hop.id());
    let signature = app
        .offload_hint
        .as_ref()
        .is_some_and(|h| HopId::from(h.small) == hop.id() || HopId::from(h.pod) == hop.id());
    let seg = app::mean_segment(hop);
    let size_style = if signature {
        SIZE_SIGNATURE
    } else {
        Style::new()
    };
    let (offload, offload_style) = offload_text(hop);
    let drops_style = if hop.drops == 0 {
        DIM
    } else {
        loss_style(loss)
    };
    vec![
        styled(if worst { "▶" } else { " " }, WORST),
        txt(hop.ifname.clone()),
        txt(hop.dir.as_str()),
        txt(hop.role.as_str()),
        txt(human_rate(per_sec(hop.packets))),
        txt(human_byte_rate(per_sec(hop.bytes))),
        styled(human_rate(per_sec(hop.drops)), drops_style),
        styled(pct(loss), loss_style(loss)),
        fault_cell(hop.csum_errors, Color::Yellow),
        fault_cell(hop.oversize, Color::Magenta),
        fault_cell(hop.fragments, Color::Cyan),
        fault_cell(hop.retransmits, Color::Yellow),
        styled(seg.map_or_else(|| "-".into(), segment_size), size_style),
        styled(
            hop.max_len.map_or_else(|| "-".into(), segment_size),
            size_style,
        ),
        txt(hop.mtu.to_string()),
        styled(offload, offload_style),
    ]
}

fn render_hops(app: &App, area: Rect, buf: &mut Buffer) {
    let interval = app
        .interval
        .map_or_else(String::new, |d| format!(" · last {}", seconds(d)));
    let hops: Vec<&HopSample> = app.visible_hops().collect();
    let range = page(app.hop_sel, hops.len(), data_rows(area));
    let mut title = vec![
        Span::styled(" Hops", HEADER),
        Span::raw(if range.len() < hops.len() {
            format!("{interval} · {} ", rows_note(&range, hops.len()))
        } else {
            format!("{interval} ")
        }),
    ];
    // The hop losing most must stand out even when it is not on the page shown.
    if let Some(worst) = hops[range.clone()]
        .iter()
        .all(|h| Some(h.id()) != app.worst_hop)
        .then(|| hops.iter().find(|h| Some(h.id()) == app.worst_hop))
        .flatten()
    {
        let loss = worst.loss_pct;
        title.push(Span::styled(
            format!(
                "▶ {} {} {} (j/k) ",
                worst.ifname,
                worst.dir.as_str(),
                pct(loss)
            ),
            WORST,
        ));
    }
    let block = panel_block(app, Panel::Hops, Line::from(title));
    if hops.is_empty() {
        let text = if app.hops.is_empty() {
            "waiting for the first interval…"
        } else {
            "no hop matches the filter"
        };
        Paragraph::new(Span::styled(text, DIM))
            .block(block)
            .render(area, buf);
        return;
    }
    let mut columns = HOP_COLUMNS;
    columns[1].width = content_width(hops.iter().map(|h| text_width(&h.ifname)), "device", 6, 16);
    let chosen = fit_columns(&mut columns, table_width(area), 1);
    let rows = hops[range.clone()].iter().map(|hop| {
        let row = row_of(&columns, &chosen, &hop_cells(app, hop));
        if app.worst_hop == Some(hop.id()) {
            row.style(WORST)
        } else {
            row
        }
    });
    let table = Table::new(rows, widths(&columns, &chosen, None))
        .header(header_row(&columns, &chosen, None))
        .block(block);
    render_table(
        table,
        area,
        buf,
        Some(app.hop_sel - range.start),
        app.focus == Panel::Hops,
    );
}

// ---------------------------------------------------------------------------------------------
// Flows.

const FLOW_COLUMNS: [Column; 11] = [
    left("flow", 30, 0).squeeze(16),
    col("pkts", 7, 2),
    col("bytes", 7, 3),
    col("drops", 6, 1),
    col("loss", 6, 0),
    col("retr", 5, 3),
    col("csum", 5, 4),
    col("ovsz", 5, 5),
    col("frag", 5, 6),
    col("vni", 6, 8),
    left("path", 30, 9).squeeze(8),
];

fn sort_column(sort: SortKey) -> usize {
    match sort {
        SortKey::Loss => 4,
        SortKey::Retransmits => 5,
        SortKey::CsumErrors => 6,
        SortKey::Oversize => 7,
        SortKey::Fragments => 8,
        SortKey::Bytes => 2,
    }
}

fn path_text(entry: &FlowEntry) -> String {
    entry
        .hops
        .iter()
        .map(|h| h.ifname.as_str())
        .collect::<Vec<_>>()
        .join("›")
}

fn flow_cells(entry: &FlowEntry) -> Vec<Txt> {
    let t: &HopCounts = &entry.total;
    let loss = entry.loss_pct();
    vec![
        txt(flow_label(&entry.flow)),
        txt(human_count(t.packets)),
        txt(human_bytes(t.bytes)),
        fault_cell(t.drops, Color::Red),
        styled(pct(loss), loss_style(loss)),
        fault_cell(t.retransmits, Color::Yellow),
        fault_cell(t.csum_errors, Color::Yellow),
        fault_cell(t.oversize, Color::Magenta),
        fault_cell(t.fragments, Color::Cyan),
        txt(entry
            .outer
            .as_ref()
            .map_or_else(|| "-".into(), |o| o.vni.to_string())),
        styled(path_text(entry), DIM),
    ]
}

fn render_flows(app: &App, area: Rect, buf: &mut Buffer) {
    let count = app.flow_view.len();
    let range = page(app.flow_sel, count, data_rows(area));
    let shown = if app.filter.is_empty() {
        rows_note(&range, count)
    } else {
        format!("{} match", rows_note(&range, count))
    };
    let title = Line::from(vec![
        Span::styled(" Flows", HEADER),
        Span::raw(format!(" · {shown} · worst by ")),
        Span::styled(app.sort.as_str(), Style::new().fg(Color::Cyan)),
        Span::raw(" (s) "),
    ]);
    let block = panel_block(app, Panel::Flows, title);
    if count == 0 {
        let text = if app.flow_count() == 0 {
            "no flow seen yet"
        } else {
            "no flow matches the filter"
        };
        Paragraph::new(Span::styled(text, DIM))
            .block(block)
            .render(area, buf);
        return;
    }
    let sorted = sort_column(app.sort);
    // The sort column always stays.
    let mut columns = FLOW_COLUMNS;
    columns[sorted].priority = 0;
    let entries: Vec<&FlowEntry> = app.flow_view[range.clone()]
        .iter()
        .filter_map(|flow| app.flow(flow))
        .collect();
    columns[0].width = content_width(
        entries.iter().map(|e| text_width(&flow_label(&e.flow))),
        "flow",
        10,
        64,
    );
    columns[10].width = content_width(
        entries.iter().map(|e| text_width(&path_text(e))),
        "path",
        4,
        40,
    );
    let chosen = fit_columns(&mut columns, table_width(area), 1);
    let rows = entries
        .iter()
        .map(|entry| row_of(&columns, &chosen, &flow_cells(entry)));
    let table = Table::new(rows, widths(&columns, &chosen, Some(10)))
        .header(header_row(&columns, &chosen, Some(sorted)))
        .block(block);
    render_table(
        table,
        area,
        buf,
        Some(app.flow_sel - range.start),
        app.focus == Panel::Flows,
    );
}

// ---------------------------------------------------------------------------------------------
// Events.

const EVENT_COLUMNS: [Column; 6] = [
    left("time", 12, 1),
    left("kind", 10, 0),
    left("device", 16, 0),
    left("reason", 16, 2).squeeze(8),
    left("flow", 44, 3).squeeze(16),
    left("where", 22, 4).squeeze(8),
];

fn kind_style(kind: EventKindView) -> Style {
    match kind {
        EventKindView::Drop => Style::new().fg(Color::Red),
        EventKindView::CsumError => Style::new().fg(Color::Yellow),
        EventKindView::Oversize | EventKindView::FragNeeded => Style::new().fg(Color::Magenta),
        EventKindView::Fragment => Style::new().fg(Color::Cyan),
        EventKindView::Retransmit => Style::new().fg(Color::Yellow),
    }
}

fn event_cells(e: &AnomalySample) -> Vec<Txt> {
    let device = match (&e.ifname, e.dir) {
        (Some(name), Some(dir)) => format!("{name} {}", dir.as_str()),
        (Some(name), None) => name.clone(),
        (None, _) => "(socket)".into(),
    };
    vec![
        styled(clock(e.ts), DIM),
        styled(e.kind.as_str(), kind_style(e.kind)),
        txt(device),
        txt(e.reason.clone()),
        txt(e.flow.as_ref().map_or_else(String::new, flow_label)),
        styled(e.location.clone(), DIM),
    ]
}

fn render_events(app: &App, area: Rect, buf: &mut Buffer) {
    let events: Vec<&AnomalySample> = app.visible_events().collect();
    let range = page(app.event_sel, events.len(), data_rows(area));
    let title = Line::from(vec![
        Span::styled(" Events", HEADER),
        Span::raw(format!(
            " · {} · newest first ",
            rows_note(&range, events.len())
        )),
    ]);
    let block = panel_block(app, Panel::Events, title);
    if events.is_empty() {
        let text = if app.event_count() == 0 {
            "no drop, checksum error, oversize packet, fragment or retransmit seen"
        } else {
            "no event matches the filter"
        };
        Paragraph::new(Span::styled(text, DIM))
            .block(block)
            .render(area, buf);
        return;
    }
    let cells: Vec<Vec<Txt>> = events[range.clone()]
        .iter()
        .map(|e| event_cells(e))
        .collect();
    let mut columns = EVENT_COLUMNS;
    for (i, (min, max)) in [(2, (6, 20)), (3, (6, 24)), (4, (4, 64)), (5, (5, 28))] {
        columns[i].width = content_width(
            cells.iter().map(|row| text_width(&row[i].text)),
            columns[i].header,
            min,
            max,
        );
    }
    let chosen = fit_columns(&mut columns, table_width(area), 1);
    let rows = cells.iter().map(|row| row_of(&columns, &chosen, row));
    let table = Table::new(rows, widths(&columns, &chosen, None))
        .header(header_row(&columns, &chosen, None))
        .block(block);
    render_table(
        table,
        area,
        buf,
        Some(app.event_sel - range.start),
        app.focus == Panel::Events,
    );
}

// ---------------------------------------------------------------------------------------------
// Loss history, status line.

fn render_history(app: &App, area: Rect, buf: &mut Buffer) {
    if area.height == 0 {
        return;
    }
    let history = app.loss_history();
    let now = history.back().copied().unwrap_or(0);
    let peak = history.iter().copied().max().unwrap_or(0);
    let span = app
        .interval
        .and_then(|d| d.checked_mul(u32::try_from(history.len()).unwrap_or(u32::MAX)));
    let title = Line::from(vec![
        Span::styled(" Drops per interval", HEADER),
        Span::raw(" · now "),
        Span::styled(
            human_count(now),
            loss_style(if now > 0 { 5.0 } else { 0.0 }),
        ),
        Span::raw(format!(" · peak {}", human_count(peak))),
        Span::raw(
            span.filter(|_| !history.is_empty())
                .map_or_else(String::new, |d| format!(" · over {}", seconds(d))),
        ),
        Span::raw(" "),
    ]);
    let block = Block::new()
        .borders(Borders::TOP)
        .border_style(DIM)
        .title(title);
    let inner = block.inner(area);
    block.render(area, buf);
    let width = usize::from(inner.width);
    let skip = history.len().saturating_sub(width);
    Sparkline::default()
        .data(history.iter().skip(skip).copied())
        .max(peak.max(1))
        .bar_set(symbols::bar::NINE_LEVELS)
        .style(Style::new().fg(Color::Red))
        .render(inner, buf);
}

fn render_status(app: &App, area: Rect, buf: &mut Buffer) {
    let sep = || Span::styled(" │ ", DIM);
    let mut spans = Vec::new();
    if app.paused {
        spans.push(Span::styled(
            format!(" PAUSED ({} held) ", app.held()),
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
        spans.push(Span::raw(" "));
    }
    if let Some(input) = &app.filter_input {
        spans.push(Span::styled(
            format!("/{input}▏"),
            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        ));
        spans.push(Span::styled(
            "  host:IP port:N dev:NAME · Enter keep · Esc cancel",
            DIM,
        ));
        Paragraph::new(Line::from(spans)).render(area, buf);
        return;
    }
    if app.feed_ended {
        spans.push(Span::styled(
            " FEED ENDED ",
            Style::new().fg(Color::Black).bg(Color::Red),
        ));
        spans.push(Span::raw(" "));
    }
    if let Some(notice) = &app.notice {
        spans.push(Span::styled(
            format!(" {notice} "),
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
        spans.push(Span::raw(" "));
    }
    if !app.filter.is_empty() {
        spans.push(Span::styled(
            format!("filter: {}", app.filter.text()),
            Style::new().fg(Color::Cyan),
        ));
        spans.push(sep());
    }
    spans.push(Span::raw(match app.interval {
        Some(d) => format!("every {}", seconds(d)),
        None => "no data yet".into(),
    }));
    spans.push(sep());
    let lost_style = if app.lost_events > 0 {
        Style::new().fg(Color::Red)
    } else {
        Style::new()
    };
    spans.push(Span::styled(
        format!("lost events {}", human_count(app.lost_events)),
        lost_style,
    ));
    if app.evicted_flows > 0 {
        spans.push(sep());
        spans.push(Span::styled(
            format!("evicted flows {}", human_count(app.evicted_flows)),
            Style::new().fg(Color::Yellow),
        ));
    }
    if app.held_discarded > 0 {
        spans.push(sep());
        spans.push(Span::styled(
            format!("{} updates skipped while paused", app.held_discarded),
            Style::new().fg(Color::Yellow),
        ));
    }
    spans.push(sep());
    spans.push(Span::raw(if app.hooks.is_empty() {
        "hooks: ?".to_owned()
    } else {
        format!("hooks: {}", app.hooks.join(", "))
    }));
    spans.push(sep());
    spans.push(Span::styled("? help  q quit", DIM));
    Paragraph::new(Line::from(spans)).render(area, buf);
}

// ---------------------------------------------------------------------------------------------
// Overlays.

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

const PATH_COLUMNS: [Column; 13] = [
    col("#", 2, 0),
    left("device", 14, 0),
    left("dir", 7, 1),
    left("role", 8, 6),
    col("pkts", 7, 2),
    col("bytes", 7, 3),
    left("", 12, 4),
    col("drops", 6, 0),
    col("loss", 6, 1),
    col("csum", 5, 5),
    col("ovsz", 5, 5),
    col("frag", 5, 7),
    col("retr", 5, 7),
];

fn bar(value: u64, max: u64, width: usize) -> String {
    if max == 0 {
        return String::new();
    }
    let eighths = (value as u128 * width as u128 * 8 / max as u128) as usize;
    let mut s = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        s.push(['▏', '▎', '▍', '▌', '▋', '▊', '▉'][eighths % 8 - 1]);
    }
    s
}

fn render_path(app: &App, area: Rect, buf: &mut Buffer) {
    let Some(flow) = app.path_flow() else {
        return;
    };
    let popup = area;
    Clear.render(popup, buf);
    let mut title = vec![
        Span::styled(" Path ", HEADER),
        Span::styled(flow_label(flow), Style::new().fg(Color::Cyan)),
    ];
    let entry = app.flow(flow);
    if let Some(outer) = entry.and_then(|e| e.outer.as_ref()) {
        title.push(Span::styled(
            format!(
                " in {}:{} → {}:{} vni {}",
                addr(outer.src),
                outer.sport,
                addr(outer.dst),
                outer.dport,
                outer.vni
            ),
            DIM,
        ));
    }
    title.push(Span::raw(" "));
    let block = Block::bordered()
        .border_type(BorderType::Double)
        .border_style(FOCUSED_BORDER)
        .title(Line::from(title))
        .title_bottom(Line::from(" Esc/Enter back · j/k previous/next flow ").right_aligned());
    let inner = block.inner(popup);
    block.render(popup, buf);
    let Some(entry) = entry else {
        Paragraph::new(Span::styled("this flow is no longer tracked", DIM)).render(inner, buf);
        return;
    };
    let verdict = App::path_verdict(entry);
    let [table_area, _, verdict_area] = Layout::vertical([
        Constraint::Length(u16::try_from(entry.hops.len() + 1).unwrap_or(u16::MAX)),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(inner);

    let mut columns = PATH_COLUMNS;
    columns[1].width = content_width(
        entry.hops.iter().map(|h| text_width(&h.ifname)),
        "device",
        6,
        16,
    );
    let chosen = fit_columns(&mut columns, inner.width, 1);
    let max_bytes = entry.hops.iter().map(|h| h.counts.bytes).max().unwrap_or(0);
    let rows = entry.hops.iter().enumerate().map(|(at, hop)| {
        let c = &hop.counts;
        let loss = judge::hop_loss_pct(hop.dir, c.packets, c.drops);
        let flagged = match verdict {
            PathVerdict::DropsAt(i) | PathVerdict::VanishesBefore(i) => i == at,
            PathVerdict::Clean => false,
        };
        let cells = [
            txt(format!("{}", at + 1)),
            txt(hop.ifname.clone()),
            txt(hop.dir.as_str()),
            txt(hop.role.as_str()),
            txt(human_count(c.packets)),
            txt(human_bytes(c.bytes)),
            styled(
                bar(c.bytes, max_bytes, 12),
                Style::new().fg(if flagged { Color::Red } else { Color::Green }),
            ),
            fault_cell(c.drops, Color::Red),
            styled(pct(loss), loss_style(loss)),
            fault_cell(c.csum_errors, Color::Yellow),
            fault_cell(c.oversize, Color::Magenta),
            fault_cell(c.fragments, Color::Cyan),
            fault_cell(c.retransmits, Color::Yellow),
        ];
        let row = row_of(&columns, &chosen, &cells);
        if flagged { row.style(WORST) } else { row }
    });
    let table = Table::new(rows, widths(&columns, &chosen, None))
        .header(header_row(&columns, &chosen, None))
        .column_spacing(1);
    Widget::render(table, table_area, buf);

    let verdict_line = match verdict {
        PathVerdict::Clean => Line::from(Span::styled(
            "✓ no drop on this path, and no hop where its bytes fall",
            Style::new().fg(Color::Green),
        )),
        PathVerdict::DropsAt(at) => {
            let hop = &entry.hops[at];
            let c = &hop.counts;
            let mut kinds = Vec::new();
            if c.csum_errors > 0 {
                kinds.push(format!("{} checksum", human_count(c.csum_errors)));
            }
            if c.oversize > 0 {
                kinds.push(format!("{} oversize", human_count(c.oversize)));
            }
            let kinds = if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            };
            Line::from(vec![
                Span::styled("✗ loses packets at ", WORST),
                Span::styled(format!("{} {}", hop.ifname, hop.dir.as_str()), WORST),
                Span::raw(format!(
                    ": {} dropped{kinds}, {} of what reached it",
                    human_count(c.drops),
                    pct(judge::hop_loss_pct(hop.dir, c.packets, c.drops)),
                )),
            ])
        }
        PathVerdict::VanishesBefore(at) => {
            let (before, hop) = (&entry.hops[at - 1], &entry.hops[at]);
            Line::from(vec![
                Span::styled("✗ bytes fall between ", WORST),
                Span::styled(
                    format!(
                        "{} {} and {} {}",
                        before.ifname,
                        before.dir.as_str(),
                        hop.ifname,
                        hop.dir.as_str()
                    ),
                    WORST,
                ),
                Span::raw(": packets vanish there with no drop counted"),
            ])
        }
    };
    Paragraph::new(verdict_line).render(verdict_area, buf);
}

const HELP: &[(&str, &str)] = &[
    ("q  Esc", "quit (Esc first closes a view)"),
    ("Tab", "next panel (Shift-Tab: previous)"),
    ("↑ ↓  j k", "move (PgUp PgDn, g G: jump)"),
    (
        "s",
        "sort flows: loss, retrans, csum, oversize, frag, bytes",
    ),
    ("Enter", "path of the selected flow: its hops in order"),
    ("/", "filter: host:IP port:N dev:NAME or any text"),
    ("p", "pause (updates are held, applied on resume)"),
    ("?", "this help"),
];

const HELP_NOTES: &[&str] = &[
    "Hops: rates per second over the last interval; csum, ovsz (oversize),",
    "frag, retr: counts in it. seg: bytes per segment, max: largest packet.",
    "▶ marks the hop losing most. Yellow size cells: MTU-sized packets out",
    "of the tunnel while a pod sends GSO packets: offload is off.",
    "Flows: totals since start, worst first. Loss = drops/(pkts+drops).",
];

fn render_help(area: Rect, buf: &mut Buffer) {
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(format!(" {key:<9}"), Style::new().fg(Color::Cyan).bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.extend(
        HELP_NOTES
            .iter()
            .map(|n| Line::styled(format!(" {n}"), DIM)),
    );
    let height = u16::try_from(lines.len() + 2).unwrap_or(u16::MAX);
    let popup = centered(area, 74, height);
    Clear.render(popup, buf);
    Paragraph::new(lines)
        .block(
            Block::bordered()
                .border_type(BorderType::Double)
                .border_style(FOCUSED_BORDER)
                .title(Line::from(" vxprobe top · keys ").bold())
                .title_bottom(Line::from(" any key closes ").right_aligned()),
        )
        .render(popup, buf);
}

// ---------------------------------------------------------------------------------------------
// Small screens.

fn render_summary(app: &App, area: Rect, buf: &mut Buffer) {
    let mut lines = Vec::new();
    let mut title = vec![Span::styled("vxprobe top", HEADER)];
    if app.paused {
        title.push(Span::styled(" PAUSED", Style::new().fg(Color::Yellow)));
    }
    lines.push(Line::from(title));
    match app
        .worst_hop
        .and_then(|id| app.hops.iter().find(|h| h.id() == id))
    {
        Some(hop) => {
            let loss = hop.loss_pct;
            lines.push(Line::from(vec![
                Span::styled("▶ ", WORST),
                Span::styled(format!("{} {}", hop.ifname, hop.dir.as_str()), WORST),
                Span::raw(" "),
                Span::styled(pct(loss), loss_style(loss)),
            ]));
        }
        None if app.hops.is_empty() => lines.push(Line::styled("no data yet", DIM)),
        None => lines.push(Line::styled("no loss", Style::new().fg(Color::Green))),
    }
    if let Some(hint) = &app.offload_hint {
        let name = app
            .hops
            .iter()
            .find(|h| h.id() == HopId::from(hint.small))
            .map_or("tunnel", |h| h.ifname.as_str());
        lines.push(Line::styled(
            format!("offload off? {name}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    lines.push(Line::raw(format!(
        "{} hops {} flows {} events",
        app.hops.len(),
        app.flow_count(),
        app.event_count()
    )));
    lines.push(Line::styled(
        format!("enlarge to {MIN_WIDTH}x{MIN_HEIGHT} · q quit"),
        DIM,
    ));
    Paragraph::new(lines).render(area, buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_count(0), "0");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(1_234), "1.23k");
        assert_eq!(human_count(12_345), "12.3k");
        assert_eq!(human_count(123_456), "123k");
        assert_eq!(human_count(999_999), "1.00M");
        assert_eq!(human_bytes(65_536), "64.0K");
        assert_eq!(human_bytes(1_398), "1.37K");
    }

    #[test]
    fn pages_follow_the_selection() {
        assert_eq!(page(0, 0, 5), 0..0);
        assert_eq!(page(0, 3, 0), 0..0);
        assert_eq!(page(4, 12, 5), 0..5);
        assert_eq!(page(5, 12, 5), 5..10);
        assert_eq!(page(11, 12, 5), 10..12);
        assert_eq!(page(99, 12, 5), 10..12);
    }

    #[test]
    fn narrow_tables_keep_the_important_columns() {
        let chosen = fit_columns(&mut HOP_COLUMNS.clone(), 40, 1);
        let names: Vec<_> = chosen.iter().map(|&i| HOP_COLUMNS[i].header).collect();
        assert_eq!(names, ["", "device", "pkt/s", "drops/s", "loss"]);
        let chosen = fit_columns(&mut HOP_COLUMNS.clone(), 90, 1);
        let names: Vec<_> = chosen.iter().map(|&i| HOP_COLUMNS[i].header).collect();
        assert_eq!(
            names,
            [
                "", "device", "dir", "pkt/s", "B/s", "drops/s", "loss", "csum", "ovsz", "seg",
                "max"
            ]
        );
        assert_eq!(fit_columns(&mut HOP_COLUMNS.clone(), 0, 1), [0]);
        // A text column is cut rather than dropped when it may be.
        let mut columns = EVENT_COLUMNS;
        let chosen = fit_columns(&mut columns, 80, 1);
        assert_eq!(chosen, [0, 1, 2, 3, 4]);
        assert_eq!(columns[4].width, 80 - 12 - 10 - 16 - 16 - 4);
        // Too narrow even cut: it and everything less important go.
        let mut columns = EVENT_COLUMNS;
        assert_eq!(fit_columns(&mut columns, 70, 1), [0, 1, 2, 3]);
    }

    #[test]
    fn bars() {
        assert_eq!(bar(0, 0, 4), "");
        assert_eq!(bar(10, 10, 4), "████");
        assert_eq!(bar(5, 10, 4), "██");
        assert_eq!(bar(1, 16, 4), "▎");
        assert_eq!(bar(1, 32, 4), "▏");
    }
}
