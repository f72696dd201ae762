//! JSON lines: the `record` sink. Each record type is a struct serialized in one place, so the
//! contract's field names live here and nowhere else.

use std::{
    fs::File,
    io::{self, Write},
    time::SystemTime,
};

use serde::Serialize;

use crate::{
    node::devices::Role,
    observe::{
        anomaly::Anomaly,
        packet::{Flow, Outer},
        pipeline::Sink,
        report::{FlowReport, HopChange, IntervalEnd, IntervalReport, Meta, Summary},
    },
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

pub const SCHEMA_VERSION: u32 = 1;

/// Writes one JSON object per line. Lines are gathered and handed to the OS whole, at every
/// interval ([`flush`]) or when a burst fills the buffer, never cut at a buffer boundary: if
/// vxprobe dies, every line that reached the file is complete.
///
/// [`flush`]: JsonLines::flush
pub struct JsonLines {
    out: Box<dyn Write + Send>,
    pending: Vec<u8>,
}

/// Complete lines kept before they are written even within an interval (an event burst).
const PENDING_LIMIT: usize = 256 * 1024;

impl JsonLines {
    /// `-` is stdout; anything else is a file, created or truncated.
    pub fn open(path: &str) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(File::create(path)?)
        };
        Ok(Self {
            out,
            pending: Vec::with_capacity(PENDING_LIMIT),
        })
    }

    pub fn write<T: Serialize>(&mut self, line: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.pending, line)?;
        self.pending.push(b'\n');
        if self.pending.len() >= PENDING_LIMIT {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.write_all(&self.pending)?;
        self.pending.clear();
        self.out.flush()
    }
}

#[derive(Serialize)]
struct MetaLine<'a> {
    kind: &'static str,
    ts: String,
    schema_version: u32,
    #[serde(flatten)]
    meta: &'a Meta,
}

#[derive(Serialize)]
struct AnomalyLine<'a> {
    kind: &'static str,
    ts: &'a str,
    #[serde(flatten)]
    anomaly: &'a Anomaly,
}

#[derive(Serialize)]
struct LostLine<'a> {
    kind: &'static str,
    ts: &'a str,
    count: u64,
    /// The kind of events that were lost.
    event_kind: &'static str,
}

/// A device that started (`added`) or stopped (`removed`: it vanished) being observed.
#[derive(Serialize)]
struct DeviceLine<'a> {
    kind: &'static str,
    ts: String,
    event: &'static str,
    ifname: &'a str,
    ifindex: u32,
    netns: u64,
    role: Role,
    mtu: u32,
    /// What runs before vxprobe's programs on the device (tc_order).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    ahead: &'a [crate::kernel::tc_order::Ahead],
}

/// Flow entries the kernel's full flow table evicted in an interval.
#[derive(Serialize)]
struct EvictedLine<'a> {
    kind: &'static str,
    ts: &'a str,
    count: u64,
    /// The table's capacity (`--max-flows`).
    capacity: u32,
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    kind: &'static str,
    ts: String,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// The `record` sink: every line of the contract, flushed at each interval and at the end.
pub struct JsonSink {
    lines: JsonLines,
    /// The namespace of the TC hops, from the meta data.
    netns: u64,
    max_flows: u32,
    /// `ts` of the interval whose flows are being written.
    interval_ts: String,
}

impl JsonSink {
    pub fn new(lines: JsonLines) -> Self {
        Self {
            lines,
            netns: 0,
            max_flows: 0,
            interval_ts: String::new(),
        }
    }
}

impl Sink for JsonSink {
    fn meta(&mut self, meta: &Meta) -> anyhow::Result<()> {
        self.netns = meta.netns;
        self.max_flows = meta.max_flows;
        self.lines.write(&MetaLine {
            kind: "meta",
            ts: timestamp(SystemTime::now()),
            schema_version: SCHEMA_VERSION,
            meta,
        })?;
        Ok(self.lines.flush()?)
    }

    fn anomaly(&mut self, anomaly: &Anomaly) -> anyhow::Result<()> {
        let ts = timestamp(SystemTime::now());
        Ok(self.lines.write(&AnomalyLine {
            kind: anomaly.kind.as_str(),
            ts: &ts,
            anomaly,
        })?)
    }

    /// One `hop` line per selected device and direction, zero counts included (a hop that
    /// goes quiet is visible as such), then any `lost` lines; the flows that moved follow.
    fn interval(&mut self, report: &IntervalReport) -> anyhow::Result<()> {
        let ts = timestamp(report.ts);
        let interval_ms = u64::try_from(report.interval.as_millis()).unwrap_or(u64::MAX);
        for h in &report.hops {
            let c = &h.counters;
            self.lines.write(&HopLine {
                kind: "hop",
                ts: &ts,
                ifname: &h.hop.ifname,
                ifindex: h.hop.ifindex,
                netns: self.netns,
                dir: h.dir.as_str(),
                role: h.hop.role,
                packets: c.packets,
                bytes: c.bytes,
                drops: h.drops(),
                loss_pct: h.loss_pct,
                segs: c.segs,
                mean_segment: h.mean_segment,
                max_len: u64::from(c.max_len),
                fragments: c.fragments,
                oversize: c.oversize,
                interval_ms,
            })?;
        }
        for (kind, count) in &report.lost {
            self.lines.write(&LostLine {
                kind: "lost",
                ts: &ts,
                count: *count,
                event_kind: kind.line_name(),
            })?;
        }
        self.interval_ts = ts;
        Ok(())
    }

    /// One `flow` line per flow and hop that moved, with the interval's timestamp.
    fn flows(&mut self, flows: &[FlowReport]) -> anyhow::Result<()> {
        for f in flows {
            let c = &f.counters;
            self.lines.write(&FlowLine {
                kind: "flow",
                ts: &self.interval_ts,
                ifname: &f.hop.ifname,
                ifindex: f.hop.ifindex,
                netns: self.netns,
                dir: f.dir.as_str(),
                role: f.hop.role,
                flow: &f.flow,
                outer: f.outer.as_ref(),
                packets: c.counters.packets,
                bytes: c.counters.bytes,
                segs: c.counters.segs,
                mean_segment: f.mean_segment,
                max_len: u64::from(c.counters.max_len),
                fragments: c.counters.fragments,
                oversize: c.counters.oversize,
            })?;
        }
        Ok(())
    }

    /// The `evicted` line, if the flow table evicted entries; the interval's lines are
    /// complete and handed to the OS.
    fn interval_end(&mut self, end: &IntervalEnd) -> anyhow::Result<()> {
        if end.evicted > 0 {
            self.lines.write(&EvictedLine {
                kind: "evicted",
                ts: &self.interval_ts,
                count: end.evicted,
                capacity: self.max_flows,
            })?;
        }
        Ok(self.lines.flush()?)
    }

    fn device(&mut self, change: &HopChange) -> anyhow::Result<()> {
        self.lines.write(&DeviceLine {
            kind: "device",
            ts: timestamp(change.ts),
            event: if change.added { "added" } else { "removed" },
            ifname: &change.hop.ifname,
            ifindex: change.hop.ifindex,
            netns: self.netns,
            role: change.hop.role,
            mtu: change.hop.mtu,
            ahead: &change.hop.ahead,
        })?;
        Ok(self.lines.flush()?)
    }

    fn note(&mut self, text: &str) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct NoteLine<'a> {
            kind: &'static str,
            ts: String,
            text: &'a str,
        }
        self.lines.write(&NoteLine {
            kind: "note",
            ts: timestamp(SystemTime::now()),
            text,
        })?;
        Ok(self.lines.flush()?)
    }

    fn finish(&mut self, summary: &mut Summary) -> anyhow::Result<()> {
        self.lines.write(&SummaryLine {
            kind: "summary",
            ts: timestamp(SystemTime::now()),
            summary,
        })?;
        Ok(self.lines.flush()?)
    }
}
