//! The help overlay.

use ratatui::{
    buffer::Buffer,
    layout::Rect,
    style::{Color, Style},
    text::{Line, Span},
    widgets::{Block, BorderType, Clear, Paragraph, Widget},
};

use super::{path::centered, *};

pub(super) const HELP: &[(&str, &str)] = &[
    ("q  Esc", "quit (Esc first closes a view)"),
    ("Tab", "next panel (Shift-Tab: previous)"),
    ("↑ ↓  j k", "move (PgUp PgDn, g G: jump)"),
    (
        "s",
        "sort flows: loss, retrans, csum, oversize, frag, bytes",
    ),
    ("Enter", "path of the selected flow: its hops in order"),
    (
        "/",
        "filter: host:IP port:N dev:NAME pod:NAME ns:NS or any text",
    ),
    ("p", "pause (updates are held, applied on resume)"),
    ("?", "this help"),
];

pub(super) const HELP_NOTES: &[&str] = &[
    "Hops: rates per second over the last interval; csum, ovsz (oversize),",
    "frag, retr: counts in it. seg: bytes per segment, max: largest packet.",
    "▶ marks the hop losing most. Yellow size cells: MTU-sized packets out",
    "of the tunnel while a pod sends GSO packets: offload is off.",
    "Flows: totals since start, worst first. Loss = drops/(pkts+drops).",
];

pub(super) fn render_help(area: Rect, buf: &mut Buffer) {
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
