//! The loss history sparkline, the status line, and the summary of small screens.

use ratatui::{
    buffer::Buffer,
    layout::Rect,
    style::{Color, Modifier, Style},
    symbols,
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Sparkline, Widget},
};

use super::{format::*, *};

pub(super) fn render_history(app: &App, area: Rect, buf: &mut Buffer) {
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

/// A badge in the status line: black on `bg`, then a space.
fn badge(spans: &mut Vec<Span<'_>>, text: String, bg: Color) {
    spans.push(Span::styled(text, Style::new().fg(Color::Black).bg(bg)));
    spans.push(Span::raw(" "));
}

pub(super) fn render_status(app: &App, area: Rect, buf: &mut Buffer) {
    let sep = || Span::styled(" │ ", DIM);
    let mut spans = Vec::new();
    if app.paused {
        badge(
            &mut spans,
            format!(" PAUSED ({} held) ", app.held()),
            Color::Yellow,
        );
    }
    if let Some(input) = &app.filter_input {
        spans.push(Span::styled(
            format!("/{input}▏"),
            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        ));
        spans.push(Span::styled(
            "  host:IP port:N dev:NAME pod:NAME ns:NS · Enter keep · Esc cancel",
            DIM,
        ));
        Paragraph::new(Line::from(spans)).render(area, buf);
        return;
    }
    if app.feed_ended {
        badge(&mut spans, " FEED ENDED ".into(), Color::Red);
    }
    if let Some(notice) = &app.notice {
        badge(&mut spans, format!(" {notice} "), Color::Yellow);
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

pub(super) fn render_summary(app: &App, area: Rect, buf: &mut Buffer) {
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
