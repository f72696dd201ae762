//! The flows panel: totals since start, worst first.

use ratatui::{
    buffer::Buffer,
    layout::Rect,
    style::{Color, Style},
    text::{Line, Span},
};

use super::{format::*, hops::pod_cell, table::*, *};

pub(super) const FLOW_COLUMNS: [Column; 11] = [
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

pub(super) fn sort_column(sort: SortKey) -> usize {
    match sort {
        SortKey::Loss => 4,
        SortKey::Retransmits => 5,
        SortKey::CsumErrors => 6,
        SortKey::Oversize => 7,
        SortKey::Fragments => 8,
        SortKey::Bytes => 2,
    }
}

/// Where the pod column goes (before the path) when some flow on the page crossed a pod's
/// veth.
const POD_COLUMN: usize = 10;

/// The pods on a flow's path, `namespace/name`, comma-separated.
fn pods_text(entry: &FlowEntry) -> Option<String> {
    let pods = entry.pods();
    (!pods.is_empty()).then(|| {
        pods.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

pub(super) fn path_text(entry: &FlowEntry) -> String {
    entry
        .hops
        .iter()
        .map(|h| h.ifname.as_str())
        .collect::<Vec<_>>()
        .join("›")
}

pub(super) fn flow_cells(entry: &FlowEntry) -> Vec<Txt> {
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

pub(super) fn render_flows(app: &App, area: Rect, buf: &mut Buffer) {
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
    let empty = if app.flow_count() == 0 {
        "no flow seen yet"
    } else {
        "no flow matches the filter"
    };
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
    let mut columns = columns.to_vec();
    let pods = entries.iter().any(|e| !e.pods().is_empty());
    let mut path = 10;
    if pods {
        let width = content_width(
            entries
                .iter()
                .filter_map(|e| pods_text(e))
                .map(|t| text_width(&t)),
            "pod",
            3,
            40,
        );
        columns.insert(POD_COLUMN, left("pod", width, 2).squeeze(8));
        path += 1;
    }
    let rows = entries
        .iter()
        .map(|e| {
            let mut cells = flow_cells(e);
            if pods {
                let cell = match pods_text(e) {
                    Some(text) => txt(text),
                    None => pod_cell(None),
                };
                cells.insert(POD_COLUMN, cell);
            }
            (cells, None)
        })
        .collect();
    render_panel_table(
        app,
        area,
        buf,
        PanelTable {
            panel: Panel::Flows,
            title,
            empty,
            columns: &mut columns,
            rows,
            flexible: Some(path),
            sorted: Some(sorted),
            selected: app.flow_sel - range.start,
        },
    );
}
