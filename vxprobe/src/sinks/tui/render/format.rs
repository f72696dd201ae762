//! Numbers, addresses, times and styles as the UI writes them.

use ratatui::style::{Color, Modifier, Style};

use super::*;

/// 1234 -> "1.2k"; counts of things.
pub fn human_count(n: u64) -> String {
    scaled(n as f64, 1000.0, &["", "k", "M", "G", "T"])
}

/// 1536 -> "1.5K"; sizes in bytes (binary multiples).
pub fn human_bytes(n: u64) -> String {
    scaled(n as f64, 1024.0, &["", "K", "M", "G", "T"])
}

/// The offload signature as one line: the small packets, the pod's GSO packets, the cause.
pub fn hint_text(hint: &OffloadHint) -> String {
    let dir = |key: vxprobe_common::HopKey| HopId::from(key).dir.as_str();
    format!(
        "{} {}: {} packet {} B, {} {}: {} GSO packets → {}",
        hint.small_ifname,
        dir(hint.small),
        hint.measure,
        hint.small_size,
        hint.pod_ifname,
        dir(hint.pod),
        human_bytes(hint.pod_size),
        hint.cause,
    )
}

pub(super) fn human_rate(n: f64) -> String {
    scaled(n, 1000.0, &["", "k", "M", "G", "T"])
}

pub(super) fn human_byte_rate(n: f64) -> String {
    scaled(n, 1024.0, &["", "K", "M", "G", "T"])
}

pub(super) fn scaled(mut value: f64, step: f64, units: &[&str]) -> String {
    let mut unit = 0;
    while value >= step * 0.9995 && unit + 1 < units.len() {
        value /= step;
        unit += 1;
    }
    if unit == 0 {
        format!("{}", value.round() as u64)
    } else if value < 9.995 {
        format!("{value:.2}{}", units[unit])
    } else if value < 99.95 {
        format!("{value:.1}{}", units[unit])
    } else {
        format!("{value:.0}{}", units[unit])
    }
}

/// Packet sizes: exact up to 9999 B (the range where MTUs are compared), then scaled.
pub(super) fn segment_size(bytes: u32) -> String {
    if bytes < 10_000 {
        bytes.to_string()
    } else {
        human_bytes(u64::from(bytes))
    }
}

pub(super) fn pct(p: f64) -> String {
    if p == 0.0 {
        "0".into()
    } else if p < 0.01 {
        "<.01%".into()
    } else if p < 10.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

/// Loss colour: none, a trickle, some, a lot.
pub(super) fn loss_style(p: f64) -> Style {
    if p == 0.0 {
        DIM
    } else if p < 1.0 {
        Style::new().fg(Color::Yellow)
    } else if p < 5.0 {
        Style::new()
            .fg(Color::LightRed)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    }
}

/// A cell's text and style, before its column decides the alignment.
#[derive(Clone)]
pub(super) struct Txt {
    pub(super) text: String,
    pub(super) style: Style,
}

pub(super) fn txt(text: impl Into<String>) -> Txt {
    styled(text, Style::new())
}

pub(super) fn styled(text: impl Into<String>, style: Style) -> Txt {
    Txt {
        text: text.into(),
        style,
    }
}

/// A count that is a fault: dim at zero, coloured otherwise.
pub(super) fn fault_cell(n: u64, color: Color) -> Txt {
    if n == 0 {
        styled("0", DIM)
    } else {
        styled(human_count(n), Style::new().fg(color))
    }
}

pub fn flow_label(flow: &Flow) -> String {
    let (src, dst) = (addr(flow.src), addr(flow.dst));
    if flow.sport == 0 && flow.dport == 0 {
        format!("{} {src} → {dst}", flow.proto_name())
    } else {
        format!(
            "{} {src}:{} → {dst}:{}",
            flow.proto_name(),
            flow.sport,
            flow.dport
        )
    }
}

pub(super) fn addr(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `HH:MM:SS.mmm` in UTC.
pub(super) fn clock(ts: std::time::SystemTime) -> String {
    let since = ts.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_millis()
    )
}

pub(super) fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
