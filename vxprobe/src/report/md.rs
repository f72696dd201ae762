//! The report as Markdown, for tickets: the summary, the findings and each losing flow's path.

use std::fmt::Write as _;

use super::{
    Report,
    join::Where,
    text::{count, duration_ms, flow_places, headline, percent, ts},
};

/// Losing flows whose paths are written out; the rest are counted.
const PATHS: usize = 20;

/// `|` inside a cell would end it.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

pub fn render(report: &Report) -> String {
    let mut md = String::new();
    let nodes: Vec<String> = report
        .nodes
        .iter()
        .map(|n| format!("{} (`{}`)", n.node, n.recording))
        .collect();
    let _ = writeln!(md, "# vxprobe report\n");
    let _ = writeln!(md, "- **Nodes**: {}", nodes.join(", "));
    let _ = writeln!(
        md,
        "- **Window**: {} to {} UTC ({}), times on {}'s clock",
        ts(&report.window.from),
        ts(&report.window.to),
        duration_ms(report.window.duration_ms),
        report.window.reference
    );
    for s in &report.window.skew {
        let _ = writeln!(
            md,
            "- **Clock of {}**: {}",
            s.node,
            match (s.applied, s.measured_ms) {
                (true, _) => format!("{:+.0} ms, applied", s.offset_ms),
                (false, Some(m)) => format!(
                    "agrees within {:.0} ms (measured {m:+.0} ms)",
                    s.resolution_ms
                ),
                (false, None) => "skew not measurable, assumed 0".to_owned(),
            }
        );
    }
    let _ = writeln!(md, "\n## Summary\n\n{}\n", headline(report));
    let losing: Vec<_> = report.flows.iter().filter(|f| f.lost > 0).collect();
    if !losing.is_empty() {
        let _ = writeln!(md, "| flow | sent | lost | loss | where |");
        let _ = writeln!(md, "| --- | ---: | ---: | ---: | --- |");
        for f in losing.iter().take(10) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                cell(&f.title()),
                count(f.sent),
                count(f.lost),
                percent(f.loss_pct),
                cell(&flow_places(f))
            );
        }
        if losing.len() > 10 {
            let _ = writeln!(md, "\n{} more flows lost packets.", losing.len() - 10);
        }
        md.push('\n');
    }
    if !report.findings.is_empty() {
        let _ = writeln!(md, "### Findings\n");
        for (i, f) in report.findings.iter().enumerate() {
            let _ = writeln!(
                md,
                "{}. **{}** `{}`: {}  \n   Fix: {}",
                i + 1,
                f.severity.as_str(),
                f.code,
                f.message,
                f.fix
            );
        }
        md.push('\n');
    }
    if !losing.is_empty() {
        let _ = writeln!(md, "## Paths\n");
        for f in losing.iter().take(PATHS) {
            let _ = writeln!(md, "### {}\n", cell(&f.title()));
            let _ = writeln!(
                md,
                "{} {} sent, {} received, {} lost ({}).\n",
                count(f.sent),
                f.unit,
                count(f.received),
                count(f.lost),
                percent(f.loss_pct)
            );
            let _ = writeln!(md, "| from | to | sent | received | lost | where |");
            let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | --- |");
            for s in &f.segments {
                let place = match s.location {
                    Some(Where::Hop) => format!(
                        "at {} ({} dropped)",
                        s.at.as_ref().map(ToString::to_string).unwrap_or_default(),
                        count(s.dropped)
                    ),
                    Some(w) => w.describe().to_owned(),
                    None => s.note.unwrap_or_default().to_owned(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    cell(&s.from.to_string()),
                    cell(&s.to.to_string()),
                    count(s.sent),
                    count(s.received),
                    if s.lost > 0 {
                        format!("**{}**", count(s.lost))
                    } else {
                        "0".to_owned()
                    },
                    place
                );
            }
            md.push('\n');
        }
        if losing.len() > PATHS {
            let _ = writeln!(
                md,
                "{} more losing flows in the JSON form.\n",
                losing.len() - PATHS
            );
        }
    }
    let _ = writeln!(md, "## Assumptions\n");
    for a in &report.window.assumptions {
        let _ = writeln!(md, "- {a}");
    }
    md
}
