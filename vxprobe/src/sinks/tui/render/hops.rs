//! The hops panel: one row per device and direction over the last interval.

use ratatui::{
    buffer::Buffer,
    layout::Rect,
    style::{Color, Style},
    text::{Line, Span},
};

use super::{format::*, table::*, *};

pub(super) const HOP_COLUMNS: [Column; 16] = [
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

/// Where the pod column goes (after the device) when some hop has a pod.
const POD_COLUMN: usize = 2;

/// A pod's cell: `namespace/name`, or a dim `-`.
pub(super) fn pod_cell(pod: Option<&PodId>) -> Txt {
    match pod {
        Some(pod) => txt(pod.to_string()),
        None => styled("-", DIM),
    }
}

pub(super) fn offload_text(hop: &HopSample) -> (String, Style) {
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

pub(super) fn hop_cells(app: &App, hop: &HopSample) -> Vec<Txt> {
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

pub(super) fn render_hops(app: &App, area: Rect, buf: &mut Buffer) {
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
    let empty = if app.hops.is_empty() {
        "waiting for the first interval…"
    } else {
        "no hop matches the filter"
    };
    let mut columns = HOP_COLUMNS.to_vec();
    columns[1].width = content_width(hops.iter().map(|h| text_width(&h.ifname)), "device", 6, 16);
    // A pod column only where pods are named (a node's own devices have none).
    let pods = hops.iter().any(|h| h.pod.is_some());
    if pods {
        let widths = hops
            .iter()
            .filter_map(|h| h.pod.as_ref())
            .map(|p| text_width(&p.to_string()));
        let width = content_width(widths, "pod", 3, 32);
        columns.insert(POD_COLUMN, left("pod", width, 2).squeeze(8));
    }
    let rows = hops[range.clone()]
        .iter()
        .map(|hop| {
            let worst = app.worst_hop == Some(hop.id());
            let mut cells = hop_cells(app, hop);
            if pods {
                cells.insert(POD_COLUMN, pod_cell(hop.pod.as_ref()));
            }
            (cells, worst.then_some(WORST))
        })
        .collect();
    render_panel_table(
        app,
        area,
        buf,
        PanelTable {
            panel: Panel::Hops,
            title: Line::from(title),
            empty,
            columns: &mut columns,
            rows,
            flexible: None,
            sorted: None,
            selected: app.hop_sel - range.start,
        },
    );
}
