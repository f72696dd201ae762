//! JSON lines: the `record` sink. Each record type is a struct serialized in one place, so the
//! contract's field names live here and nowhere else.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    time::SystemTime,
};

use serde::Serialize;

use crate::{
    devices::Role,
    packet::{Flow, Outer},
};

/// RFC 3339 timestamp in UTC, as every line's `ts`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// One `hop` line: what a device saw in one direction over one interval.
#[derive(Debug, Serialize)]
pub struct HopLine<'a> {
    pub kind: &'static str,
    pub ts: &'a str,
    pub ifname: &'a str,
    pub ifindex: u32,
    pub netns: u64,
    pub dir: &'static str,
    pub role: Role,
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
    pub loss_pct: f64,
    /// Segments the packets stand for (GSO packets count their `gso_segs`).
    pub segs: u64,
    /// bytes / segs: near the MTU where the device segments in software (offloads off),
    /// tens of KiB where GSO/TSO carry large packets through.
    pub mean_segment: u64,
    pub max_len: u64,
    pub fragments: u64,
    pub oversize: u64,
    pub interval_ms: u64,
}

/// One `flow` line: what one flow did at one hop over one interval.
#[derive(Debug, Serialize)]
pub struct FlowLine<'a> {
    pub kind: &'static str,
    pub ts: &'a str,
    pub ifname: &'a str,
    pub ifindex: u32,
    pub netns: u64,
    pub dir: &'static str,
    pub role: Role,
    pub flow: &'a Flow,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer: Option<&'a Outer>,
    pub packets: u64,
    pub bytes: u64,
    pub segs: u64,
    pub mean_segment: u64,
    pub max_len: u64,
    pub fragments: u64,
    pub oversize: u64,
}

/// bytes / segments, 0 when there were none.
pub fn mean_segment(bytes: u64, segs: u64) -> u64 {
    bytes.checked_div(segs).unwrap_or(0)
}

/// Writes one JSON object per line. Lines are buffered and handed to the OS by [`flush`]
/// (every interval and at exit), so a reader never sees half a line from a finished interval.
///
/// [`flush`]: JsonLines::flush
pub struct JsonLines {
    out: BufWriter<Box<dyn Write + Send>>,
}

impl JsonLines {
    /// `-` is stdout; anything else is a file, created or truncated.
    pub fn open(path: &str) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(File::create(path)?)
        };
        Ok(Self {
            out: BufWriter::new(out),
        })
    }

    pub fn write<T: Serialize>(&mut self, line: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
