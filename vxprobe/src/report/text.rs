//! Words and numbers shared by the Markdown and HTML forms.

use super::join::{FlowReport, Report, Segment, Where};

/// 1234567 -> "1,234,567"
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn percent(p: f64) -> String {
    if p == 0.0 {
        "0%".to_owned()
    } else if p < 0.1 {
        "<0.1%".to_owned()
    } else {
        format!("{p:.1}%")
    }
}

/// "12.3 s", "4 min 10 s"
pub fn duration_ms(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// "2026-12-01 10:00:00.123" from RFC 3339.
pub fn ts(rfc3339: &str) -> String {
    rfc3339.replace('T', " ").trim_end_matches('Z').to_owned()
}

/// Where a segment loses, in words.
pub fn segment_place(s: &Segment) -> String {
    match s.location {
        Some(Where::Wire) => format!(
            "on the wire between {} {} and {} {}",
            s.from.node, s.from.ifname, s.to.node, s.to.ifname
        ),
        Some(Where::Hop) => {
            let at = s.at.as_ref().unwrap_or(&s.from);
            format!(
                "at {} {} {} ({} drops counted there)",
                at.node,
                at.ifname,
                at.dir,
                count(s.dropped)
            )
        }
        Some(Where::Between) => format!(
            "on {} between {} {} and {} {}, where nothing was counted",
            s.from.node, s.from.ifname, s.from.dir, s.to.ifname, s.to.dir
        ),
        Some(Where::Unobserved) => format!(
            "between {} {} and {} {} (hops in between not recorded)",
            s.from.node, s.from.ifname, s.to.node, s.to.ifname
        ),
        Some(Where::Edge) => "at the window's edges (not a loss)".to_owned(),
        None => String::new(),
    }
}

/// Where a flow loses, its largest losses first.
pub fn flow_places(f: &FlowReport) -> String {
    let mut losses: Vec<&Segment> = f.losses().collect();
    losses.sort_by_key(|s| std::cmp::Reverse(s.lost));
    losses
        .iter()
        .map(|s| format!("{} {}", count(s.lost), segment_place(s)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The report in one sentence or two.
pub fn headline(report: &Report) -> String {
    let flows = report.flows.len();
    if flows == 0 {
        return "No flow was seen at the recorded hops during the window.".to_owned();
    }
    let losing: Vec<&FlowReport> = report.flows.iter().filter(|f| f.lost > 0).collect();
    let Some(worst) = losing.first() else {
        return format!(
            "No flow lost packets: {flows} flow{} crossed the recorded hops.",
            if flows == 1 { "" } else { "s" }
        );
    };
    let mut losses: Vec<&Segment> = worst.losses().collect();
    losses.sort_by_key(|s| std::cmp::Reverse(s.lost));
    let place = losses.first().map(|s| segment_place(s)).unwrap_or_default();
    format!(
        "{} of {flows} flows lost packets. The worst, {}, lost {} of {} {} ({}), {place}.",
        losing.len(),
        worst.title(),
        count(worst.lost),
        count(worst.sent),
        worst.unit,
        percent(worst.loss_pct)
    )
}
