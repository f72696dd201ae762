//! Tables whose columns give way on narrow screens, paged by the selection.

use ratatui::{
    buffer::Buffer,
    layout::{Alignment, Constraint, Rect},
    text::Line,
    widgets::{Block, BorderType, Cell, HighlightSpacing, Row, StatefulWidget, Table, TableState},
};

use super::{format::*, *};

/// One table column: its header, width, and how much it matters (0 = kept longest).
#[derive(Clone, Copy)]
pub(super) struct Column {
    pub(super) header: &'static str,
    pub(super) width: u16,
    pub(super) priority: u8,
    pub(super) right: bool,
    /// Text columns may be cut down to this width rather than dropped (0: never cut).
    pub(super) squeeze: u16,
}

impl Column {
    pub(super) const fn squeeze(mut self, min: u16) -> Self {
        self.squeeze = min;
        self
    }
}

pub(super) const fn col(header: &'static str, width: u16, priority: u8) -> Column {
    Column {
        header,
        width,
        priority,
        right: true,
        squeeze: 0,
    }
}

pub(super) const fn left(header: &'static str, width: u16, priority: u8) -> Column {
    Column {
        header,
        width,
        priority,
        right: false,
        squeeze: 0,
    }
}

/// A column wide enough for its widest text (and header), within bounds.
pub(super) fn content_width(
    widths: impl Iterator<Item = usize>,
    header: &str,
    min: u16,
    max: u16,
) -> u16 {
    let widest = widths.max().unwrap_or(0).max(header.chars().count());
    u16::try_from(widest).unwrap_or(u16::MAX).clamp(min, max)
}

pub(super) fn text_width(s: &str) -> usize {
    s.chars().count()
}

/// Indices of the columns that fit in `width`, taken most important first (up to the first
/// that does not fit) and shown in their order. A text column that does not fit whole is cut
/// to the space left when it may be; the most important column is always kept.
pub(super) fn fit_columns(columns: &mut [Column], width: u16, spacing: u16) -> Vec<usize> {
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

pub(super) fn header_row(
    columns: &[Column],
    chosen: &[usize],
    sorted: Option<usize>,
) -> Row<'static> {
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
pub(super) fn row_of(columns: &[Column], chosen: &[usize], cells: &[Txt]) -> Row<'static> {
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

pub(super) fn widths(
    columns: &[Column],
    chosen: &[usize],
    flexible: Option<usize>,
) -> Vec<Constraint> {
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
pub(super) fn page(selected: usize, len: usize, rows: usize) -> Range<usize> {
    if rows == 0 || len == 0 {
        return 0..0;
    }
    let start = selected.min(len - 1) / rows * rows;
    start..(start + rows).min(len)
}

/// How many rows a table has, and which are on screen when not all are: "8" or "1-5 of 8".
pub(super) fn rows_note(range: &Range<usize>, len: usize) -> String {
    if range.len() < len {
        format!("{}-{} of {len}", range.start + 1, range.end)
    } else {
        len.to_string()
    }
}

pub(super) fn panel_block(app: &App, panel: Panel, title: Line<'static>) -> Block<'static> {
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
pub(super) fn render_table(
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

/// One panel's table: what the shared [`render_panel_table`] needs.
pub(super) struct PanelTable<'a> {
    pub(super) panel: Panel,
    pub(super) title: Line<'static>,
    /// Shown in the panel when it has no row.
    pub(super) empty: &'static str,
    pub(super) columns: &'a mut [Column],
    /// The page's rows: their cells, and a style for the whole row if it stands out.
    pub(super) rows: Vec<(Vec<Txt>, Option<Style>)>,
    /// The column that takes the width left over.
    pub(super) flexible: Option<usize>,
    /// The column the rows are sorted by (marked in the header).
    pub(super) sorted: Option<usize>,
    /// The selected row, counted from the page's first.
    pub(super) selected: usize,
}

/// Draws a panel's table: the columns that fit, the header, the page's rows, the selection
/// (when the panel has focus); or the panel's `empty` text.
pub(super) fn render_panel_table(app: &App, area: Rect, buf: &mut Buffer, view: PanelTable<'_>) {
    let block = panel_block(app, view.panel, view.title);
    if view.rows.is_empty() {
        Paragraph::new(Span::styled(view.empty, DIM))
            .block(block)
            .render(area, buf);
        return;
    }
    let chosen = fit_columns(view.columns, table_width(area), 1);
    let columns = &*view.columns;
    let rows = view.rows.iter().map(|(cells, style)| {
        let row = row_of(columns, &chosen, cells);
        match style {
            Some(style) => row.style(*style),
            None => row,
        }
    });
    let table = Table::new(rows, widths(columns, &chosen, view.flexible))
        .header(header_row(columns, &chosen, view.sorted))
        .block(block);
    render_table(
        table,
        area,
        buf,
        Some(view.selected),
        app.focus == view.panel,
    );
}

/// Rows available for data in a bordered table with a header.
pub(super) fn data_rows(area: Rect) -> usize {
    usize::from(area.height.saturating_sub(3))
}

/// Inner width of a bordered table, less the selection marker column.
pub(super) fn table_width(area: Rect) -> u16 {
    area.width.saturating_sub(3)
}

#[cfg(test)]
mod tests {
    use super::{
        super::{events::EVENT_COLUMNS, format::*, hops::HOP_COLUMNS, path::bar},
        *,
    };

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
