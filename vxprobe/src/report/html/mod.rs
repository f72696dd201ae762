//! The report as one self-contained HTML page: styles inline, no script, no font or image to
//! fetch, so it opens from a ticket attachment and prints. The summary comes first (the worst
//! flows, where they lose, the findings with their fixes), then each losing flow's path drawn
//! with its counts, the charts over time, the anomalies with their evidence frames, and what
//! the join assumed.

mod path;

use path::path_svg;
use std::fmt::Write as _;

use super::{
    Report,
    join::{FlowReport, Where},
    model::Severity,
    plot::{self, Chart},
    text::{count, duration_ms, flow_places, headline, percent, segment_place, ts},
};

/// Losing flows drawn; the rest are listed in the JSON form.
const PATHS: usize = 12;
/// Anomaly groups shown per node.
const ROWS: usize = 200;

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root{--fg:#1f2328;--muted:#59636e;--line:#d8dee4;--soft:#f6f8fa;--loss:#b42318;--warn:#9a6700;--info:#0969da}
*{box-sizing:border-box}
body{margin:0;background:#fff;color:var(--fg);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans","Liberation Sans",sans-serif}
main{max-width:1080px;margin:0 auto;padding:28px 32px 56px}
h1{font-size:22px;font-weight:600;margin:0 0 2px}
h2{font-size:17px;font-weight:600;margin:36px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:14px;font-weight:600;margin:22px 0 6px}
p{margin:6px 0}
.meta{color:var(--muted);margin:0}
.tiles{display:flex;flex-wrap:wrap;gap:12px;margin:18px 0 6px}
.tile{flex:1 1 150px;border:1px solid var(--line);border-radius:6px;padding:10px 14px}
.tile b{display:block;font-size:24px;font-weight:600;line-height:1.2;font-variant-numeric:tabular-nums}
.tile span{color:var(--muted);font-size:12px}
.tile.bad b{color:var(--loss)}
.headline{font-size:16px;margin:16px 0 14px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:5px 12px 5px 0;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;font-size:12px;color:var(--muted)}
.n{text-align:right;white-space:nowrap}
.lost{color:var(--loss);font-weight:600}
.nowrap{white-space:nowrap}
ol.findings{list-style:none;padding:0;margin:8px 0}
ol.findings li{display:grid;grid-template-columns:74px 1fr;border-left:3px solid var(--line);padding:6px 0 6px 12px;margin:0 0 8px}
ol.findings li.error{border-color:var(--loss)}
ol.findings li.warning{border-color:#d4a72c}
ol.findings li.info{border-color:#8cb4ff;font-size:12px;padding:3px 0 3px 12px;margin-bottom:4px;color:var(--muted)}
ol.findings li.info .fix{display:inline;margin-left:4px}
.sev{font-size:11px;font-weight:600;text-transform:uppercase;letter-spacing:.04em;padding-top:2px}
.error .sev{color:var(--loss)}.warning .sev{color:var(--warn)}.info .sev{color:var(--info)}
.fix{color:var(--muted);margin:2px 0 0}
.fix b{color:var(--fg);font-weight:600}
code{font:12px ui-monospace,"DejaVu Sans Mono",monospace;background:var(--soft);padding:1px 4px;border-radius:3px}
figure{margin:14px 0 26px;break-inside:avoid}
figcaption{font-weight:600;margin:0 0 6px}
figcaption span{font-weight:400;color:var(--muted)}
svg{display:block;max-width:100%;height:auto}
.legend{display:flex;flex-wrap:wrap;gap:2px 18px;font-size:12px;color:var(--muted);margin:4px 0 0 58px}
.legend i{display:inline-block;width:12px;height:3px;margin:0 6px 3px 0;vertical-align:middle}
.small{font-size:12px;color:var(--muted)}
ol.notes{font-size:12px;color:var(--muted);margin:4px 0 0;padding-left:22px}
@media print{main{padding:0;max-width:none}h2{break-after:avoid}figure,tr,li{break-inside:avoid}}
"#;

pub fn render(report: &Report) -> String {
    let mut h = String::with_capacity(128 * 1024);
    let nodes: Vec<&str> = report.nodes.iter().map(|n| n.node.as_str()).collect();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>vxprobe report: {}</title><style>{STYLE}</style></head><body><main>\n",
        esc(&nodes.join(", "))
    );
    let _ = write!(
        h,
        "<header><h1>Packet loss across {}</h1><p class=\"meta\">{} to {} UTC · {} · times on {}'s clock · vxprobe {}</p></header>",
        esc(&nodes.join(" and ")),
        esc(&ts(&report.window.from)),
        esc(&ts(&report.window.to)),
        duration_ms(report.window.duration_ms),
        esc(&report.window.reference),
        esc(report.vxprobe_version)
    );
    summary(&mut h, report);
    paths(&mut h, report);
    plots(&mut h, report);
    anomalies(&mut h, report);
    inputs(&mut h, report);
    h.push_str("</main></body></html>\n");
    h
}

fn summary(h: &mut String, report: &Report) {
    let losing: Vec<&FlowReport> = report.flows.iter().filter(|f| f.lost > 0).collect();
    let lost: u64 = losing.iter().map(|f| f.lost).sum();
    let worst = losing.first().map_or(0.0, |f| f.loss_pct);
    let errors = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let tile = |h: &mut String, value: String, label: &str, bad: bool| {
        let _ = write!(
            h,
            "<div class=\"tile{}\"><b>{}</b><span>{}</span></div>",
            if bad { " bad" } else { "" },
            esc(&value),
            esc(label)
        );
    };
    h.push_str("<section id=\"summary\"><h2>Summary</h2><div class=\"tiles\">");
    tile(
        h,
        format!("{} / {}", losing.len(), report.flows.len()),
        "flows losing packets",
        !losing.is_empty(),
    );
    tile(h, count(lost), "packets lost", lost > 0);
    tile(h, percent(worst), "worst flow's loss", worst > 0.0);
    tile(h, errors.to_string(), "error findings", errors > 0);
    h.push_str("</div>");
    let _ = write!(h, "<p class=\"headline\">{}</p>", esc(&headline(report)));
    if !losing.is_empty() {
        h.push_str(
            "<h3>Worst flows</h3><table class=\"worst\"><thead><tr><th>flow</th><th class=\"n\">sent</th>\
             <th class=\"n\">lost</th><th class=\"n\">loss</th><th>where</th></tr></thead><tbody>",
        );
        for f in losing.iter().take(10) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n lost\">{}</td><td class=\"n lost\">{}</td><td>{}</td></tr>",
                esc(&f.title()),
                count(f.sent),
                count(f.lost),
                percent(f.loss_pct),
                esc(&flow_places(f))
            );
        }
        h.push_str("</tbody></table>");
        if losing.len() > 10 {
            let _ = write!(
                h,
                "<p class=\"small\">{} more flows lost packets (the JSON form lists every flow).</p>",
                losing.len() - 10
            );
        }
    }
    let _ = write!(
        h,
        "<h3>Findings</h3>{}",
        if report.findings.is_empty() {
            "<p class=\"small\">None.</p>"
        } else {
            ""
        }
    );
    if !report.findings.is_empty() {
        h.push_str("<ol class=\"findings\">");
        for f in &report.findings {
            let _ = write!(
                h,
                "<li class=\"{}\"><span class=\"sev\">{}</span><div>{} <code>{}</code><div class=\"fix\"><b>Fix:</b> {}</div></div></li>",
                f.severity.as_str(),
                f.severity.as_str(),
                esc(&f.message),
                esc(&f.code),
                code_spans(&f.fix)
            );
        }
        h.push_str("</ol>");
    }
    h.push_str("</section>\n");
}

/// Text with `backtick` spans as <code>.
fn code_spans(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", esc(part));
        } else {
            out.push_str(&esc(part));
        }
    }
    out
}

fn paths(h: &mut String, report: &Report) {
    let losing: Vec<&FlowReport> = report.flows.iter().filter(|f| f.lost > 0).collect();
    h.push_str("<section id=\"paths\"><h2>Paths of the losing flows</h2>");
    if losing.is_empty() {
        h.push_str("<p class=\"small\">No flow lost packets over the window.</p>");
    }
    for (k, f) in losing.iter().take(PATHS).enumerate() {
        let _ = write!(
            h,
            "<figure class=\"path\"><figcaption>{} <span>· {} of {} {} lost ({})</span></figcaption>",
            esc(&f.title()),
            count(f.lost),
            count(f.sent),
            f.unit,
            percent(f.loss_pct)
        );
        h.push_str(&path_svg(f, k));
        h.push_str(
            "<table class=\"segments\"><thead><tr><th>from</th><th>to</th><th class=\"n\">sent</th>\
             <th class=\"n\">received</th><th class=\"n\">lost</th><th>where</th></tr></thead><tbody>",
        );
        for s in &f.segments {
            let _ = write!(
                h,
                "<tr><td class=\"nowrap\">{}</td><td class=\"nowrap\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n{}\">{}</td><td>{}</td></tr>",
                esc(&s.from.to_string()),
                esc(&s.to.to_string()),
                count(s.sent),
                count(s.received),
                if s.lost > 0 && s.location != Some(Where::Edge) {
                    " lost"
                } else {
                    ""
                },
                count(s.lost),
                esc(&match (s.lost, s.note) {
                    (0, Some(note)) => note.to_owned(),
                    (0, None) => String::new(),
                    _ => segment_place(s),
                })
            );
        }
        h.push_str("</tbody></table></figure>");
    }
    if losing.len() > PATHS {
        let _ = write!(
            h,
            "<p class=\"small\">{} more losing flows: see the JSON form.</p>",
            losing.len() - PATHS
        );
    }
    h.push_str("</section>\n");
}

fn figure(h: &mut String, id: &str, title: &str, note: &str, chart: &Chart) {
    let _ = write!(
        h,
        "<figure class=\"plot\" id=\"{id}\"><figcaption>{} <span>· {}</span></figcaption>{}<div class=\"legend\">",
        esc(title),
        esc(note),
        chart.svg
    );
    if chart.legend.is_empty() {
        h.push_str("<span>nothing to draw over the window</span>");
    }
    for (label, color) in &chart.legend {
        let _ = write!(
            h,
            "<span><i style=\"background:{color}\"></i>{}</span>",
            esc(label)
        );
    }
    h.push_str("</div></figure>");
}

fn plots(h: &mut String, report: &Report) {
    let t = &report.timeline;
    let bin = t.bin as f64 / 1e6;
    h.push_str("<section id=\"plots\"><h2>Over time</h2>");
    figure(
        h,
        "plot-loss",
        "Loss per hop",
        &format!(
            "packets lost per second, per {bin:.1} s; the wire: one node's underlay egress minus the next one's ingress"
        ),
        &plot::loss(t),
    );
    figure(
        h,
        "plot-anomalies",
        "Anomalies by kind",
        "events per second, every node",
        &plot::anomalies(t),
    );
    figure(
        h,
        "plot-throughput",
        "Throughput per hop",
        "bits per second, the busiest hops",
        &plot::throughput(t),
    );
    if !t.notes.is_empty() {
        h.push_str("<p class=\"small\">Numbered lines on the charts:</p><ol class=\"notes\">");
        for (at, node, text) in &t.notes {
            let secs = ((*at - t.from) as f64 / 1e6).max(0.0).round() as u64;
            let _ = write!(
                h,
                "<li>{}:{:02} {}: {}</li>",
                secs / 60,
                secs % 60,
                esc(node),
                esc(text)
            );
        }
        h.push_str("</ol>");
    }
    h.push_str("</section>\n");
}

/// Frame numbers as runs: "#1–8, 12, 15".
fn frame_runs(frames: &[u64]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &f in frames {
        match runs.last_mut() {
            Some(run) if run.1 + 1 == f => run.1 = f,
            _ => runs.push((f, f)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(4)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}–{b}")
            }
        })
        .collect();
    let more = if runs.len() > 4 { ", …" } else { "" };
    format!("#{}{more}", shown.join(", "))
}

/// Anomaly lines of one node grouped by kind, hop, reason and flow: one row each, with the
/// first and last time and the evidence frames.
fn anomalies(h: &mut String, report: &Report) {
    struct Row<'a> {
        first: &'a str,
        last: &'a str,
        kind: &'a str,
        hop: String,
        reason: String,
        flow: String,
        count: u64,
        pcap: Option<&'a str>,
        frames: Vec<u64>,
        comment: Option<&'a str>,
    }
    h.push_str("<section id=\"anomalies\"><h2>Anomalies</h2>");
    if report.anomalies.is_empty() {
        h.push_str("<p class=\"small\">No anomaly over the window.</p>");
    }
    // Nodes in the report's order, `shared` last.
    let mut nodes: Vec<&str> = report.nodes.iter().map(|n| n.node.as_str()).collect();
    nodes.push("shared");
    for node in nodes {
        let mut rows: Vec<Row<'_>> = Vec::new();
        let mut index: std::collections::HashMap<(String, String, String, String), usize> =
            std::collections::HashMap::new();
        let mut lines = 0u64;
        for r in report.anomalies.iter().filter(|r| r.node == node) {
            lines += 1;
            let hop = match (&r.ifname, &r.dir) {
                (Some(i), Some(d)) => format!("{i} {d}"),
                (Some(i), None) => i.clone(),
                (None, _) => r.netns.map(|n| format!("netns {n}")).unwrap_or_default(),
            };
            let reason = match (&r.reason, &r.location) {
                (Some(reason), Some(loc)) => format!("{reason} ({loc})"),
                (Some(reason), None) => reason.clone(),
                (None, _) => r
                    .errno
                    .map(|e| {
                        let by = r
                            .process
                            .as_ref()
                            .map(|p| format!(" ({p})"))
                            .unwrap_or_default();
                        format!("errno {e}{by}")
                    })
                    .unwrap_or_default(),
            };
            let flow = r.flow.as_ref().map(ToString::to_string).unwrap_or_default();
            let key = (r.kind.clone(), hop.clone(), reason.clone(), flow.clone());
            let i = *index.entry(key).or_insert_with(|| {
                rows.push(Row {
                    first: &r.ts,
                    last: &r.ts,
                    kind: &r.kind,
                    hop,
                    reason,
                    flow,
                    count: 0,
                    pcap: None,
                    frames: Vec::new(),
                    comment: None,
                });
                rows.len() - 1
            });
            let row = &mut rows[i];
            row.last = &r.ts;
            row.count += r.count;
            if let Some(frame) = r.pcap_frame {
                row.frames.push(frame);
                row.pcap = row.pcap.or(r.pcap.as_deref());
                row.comment = row.comment.or(r.pcap_comment.as_deref());
            }
        }
        if rows.is_empty() {
            continue;
        }
        let title = if node == "shared" {
            "In namespaces several nodes' recordings see (a shared kernel)".to_owned()
        } else {
            node.to_owned()
        };
        let _ = write!(
            h,
            "<h3>{} <span class=\"small\">· {} lines in {} groups</span></h3><table class=\"anomalies\"><thead><tr>\
             <th>first (UTC)</th><th>last</th><th>kind</th><th>hop</th><th>reason</th><th>flow</th><th class=\"n\">count</th>\
             <th>evidence</th></tr></thead><tbody>",
            esc(&title),
            count(lines),
            count(rows.len() as u64)
        );
        let time = |t: &str| -> String {
            let t = ts(t);
            t.split(' ').nth(1).unwrap_or(&t).to_owned()
        };
        for r in rows.iter().take(ROWS) {
            let evidence = match (r.pcap, r.frames.is_empty()) {
                (Some(file), false) => format!(
                    "<span title=\"{}\">{} {}</span>",
                    esc(r.comment.unwrap_or("")),
                    esc(file.rsplit('/').next().unwrap_or(file)),
                    frame_runs(&r.frames)
                ),
                (None, false) => format!("frames {}", frame_runs(&r.frames)),
                _ => String::new(),
            };
            let _ = write!(
                h,
                "<tr><td class=\"nowrap\">{}</td><td class=\"nowrap\">{}</td><td>{}</td><td class=\"nowrap\">{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{evidence}</td></tr>",
                esc(&time(r.first)),
                esc(&time(r.last)),
                esc(r.kind),
                esc(&r.hop),
                esc(&r.reason),
                esc(&r.flow),
                count(r.count)
            );
        }
        h.push_str("</tbody></table>");
        if rows.len() > ROWS {
            let _ = write!(
                h,
                "<p class=\"small\">{} more groups: see the JSON form.</p>",
                count((rows.len() - ROWS) as u64)
            );
        }
    }
    h.push_str("</section>\n");
}

fn inputs(h: &mut String, report: &Report) {
    h.push_str(
        "<section id=\"inputs\"><h2>Recordings and assumptions</h2><table><thead><tr><th>node</th><th>recording</th>\
         <th>kernel</th><th>from</th><th>to</th><th class=\"n\">intervals</th><th class=\"n\">clock</th><th>evidence</th><th>state</th></tr></thead><tbody>",
    );
    for n in &report.nodes {
        let state = match (&n.truncated, n.complete) {
            (Some(t), _) => format!("cut at line {}", t.line),
            (None, true) => "complete".to_owned(),
            (None, false) => "no summary line".to_owned(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td class=\"nowrap\">{}</td><td class=\"nowrap\">{}</td><td class=\"n\">{} × {} ms</td><td class=\"n\">{:+.0} ms</td><td>{}</td><td>{}</td></tr>",
            esc(&n.node),
            esc(&n.recording),
            esc(n.recording.rsplit('/').next().unwrap_or(&n.recording)),
            esc(&n.kernel),
            esc(&ts(&n.from)),
            esc(&ts(&n.to)),
            n.intervals,
            n.interval_ms,
            n.clock_offset_ms,
            esc(&match (&n.pcap, n.pcap_frames) {
                (Some(p), Some(f)) => format!("{} ({f} frames)", p.rsplit('/').next().unwrap_or(p)),
                _ => String::new(),
            }),
            esc(&state)
        );
    }
    h.push_str("</tbody></table><ul>");
    for a in &report.window.assumptions {
        let _ = write!(h, "<li>{}</li>", code_spans(a));
    }
    h.push_str(
        "</ul><p class=\"small\">How to read a path: each box is a hop (a device and a direction) with the flow's count there; \
         a segment's loss is at a hop when the kernel counted drops there, between two hops of a node when packets vanished \
         with no drop counted, and on the wire between one node's underlay egress and the next node's underlay ingress.</p></section>\n",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            code_spans("run `ip <x>` now"),
            "run <code>ip &lt;x&gt;</code> now"
        );
        assert_eq!(frame_runs(&[1, 2, 3, 7, 9, 10]), "#1–3, 7, 9–10");
    }
}
