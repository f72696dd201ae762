//! The events panel: the latest anomalies, newest first.

use ratatui::{
    buffer::Buffer,
    layout::Rect,
    style::{Color, Style},
    text::{Line, Span},
};

use super::{format::*, table::*, *};

pub(super) const EVENT_COLUMNS: [Column; 6] = [
    left("time", 12, 1),
    left("kind", 10, 0),
    left("device", 16, 0),
    left("reason", 16, 2).squeeze(8),
    left("flow", 44, 3).squeeze(16),
    left("where", 22, 4).squeeze(8),
];

pub(super) fn kind_style(kind: EventKind) -> Style {
    match kind {
        EventKind::Drop => Style::new().fg(Color::Red),
        EventKind::CsumError => Style::new().fg(Color::Yellow),
        EventKind::Oversize | EventKind::FragNeeded => Style::new().fg(Color::Magenta),
        EventKind::Fragment => Style::new().fg(Color::Cyan),
        EventKind::Retransmit => Style::new().fg(Color::Yellow),
    }
}

pub(super) fn event_cells(e: &AnomalySample) -> Vec<Txt> {
    let device = match (&e.ifname, e.dir) {
        (Some(name), Some(dir)) => format!("{name} {}", dir.as_str()),
        (Some(name), None) => name.clone(),
        (None, _) => "(socket)".into(),
    };
    vec![
        styled(clock(e.ts), DIM),
        if e.count > 1 {
            styled(
                format!("{} ×{}", e.kind.as_str(), e.count),
                kind_style(e.kind),
            )
        } else {
            styled(e.kind.as_str(), kind_style(e.kind))
        },
        txt(device),
        txt(e.reason.clone()),
        txt(e.flow.as_ref().map_or_else(String::new, flow_label)),
        styled(e.location.clone(), DIM),
    ]
}

pub(super) fn render_events(app: &App, area: Rect, buf: &mut Buffer) {
    let events: Vec<&AnomalySample> = app.visible_events().collect();
    let range = page(app.event_sel, events.len(), data_rows(area));
    let title = Line::from(vec![
        Span::styled(" Events", HEADER),
        Span::raw(format!(
            " · {} · newest first ",
            rows_note(&range, events.len())
        )),
    ]);
    let empty = if app.event_count() == 0 {
        "no drop, checksum error, oversize packet, fragment or retransmit seen"
    } else {
        "no event matches the filter"
    };
    let cells: Vec<Vec<Txt>> = events[range.clone()]
        .iter()
        .map(|e| event_cells(e))
        .collect();
    let mut columns = EVENT_COLUMNS;
    for (i, (min, max)) in [
        (1, (10, 18)),
        (2, (6, 20)),
        (3, (6, 24)),
        (4, (4, 64)),
        (5, (5, 28)),
    ] {
        columns[i].width = content_width(
            cells.iter().map(|row| text_width(&row[i].text)),
            columns[i].header,
            min,
            max,
        );
    }
    render_panel_table(
        app,
        area,
        buf,
        PanelTable {
            panel: Panel::Events,
            title,
            empty,
            columns: &mut columns,
            rows: cells.into_iter().map(|cells| (cells, None)).collect(),
            flexible: None,
            sorted: None,
            selected: app.event_sel - range.start,
        },
    );
}
