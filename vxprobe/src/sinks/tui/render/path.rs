//! The path overlay: the hops a flow crossed, in order, and where it loses packets.

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    text::{Line, Span},
    widgets::{Block, BorderType, Clear, Paragraph, Table, Widget},
};

use super::{format::*, table::*, *};

pub(super) fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

pub(super) const PATH_COLUMNS: [Column; 13] = [
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

pub(super) fn bar(value: u64, max: u64, width: usize) -> String {
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

pub(super) fn render_path(app: &App, area: Rect, buf: &mut Buffer) {
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
            PathVerdict::Clean | PathVerdict::DropsElsewhere(_) => false,
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
        PathVerdict::DropsElsewhere(dropped) => Line::from(vec![
            Span::styled("✗ loses packets beyond these hops", WORST),
            Span::raw(format!(
                ": {} dropped in a pod's namespace, at a socket or before any hop saw them ({} of what it sent)",
                human_count(dropped),
                pct(entry.loss_pct()),
            )),
        ]),
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
