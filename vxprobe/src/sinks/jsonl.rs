//! JSON lines: the `record` sink. Each record type is a struct serialized in one place, so the
//! contract's field names live here and nowhere else.

use std::{
    io::{self, Write},
    sync::Arc,
    time::SystemTime,
};

use serde::Serialize;
use vxprobe_common::Direction;

use crate::{
    node::{devices::Role, pods::PodId},
    observe::{
        anomaly::Anomaly,
        packet::{Flow, Outer},
        pipeline::Sink,
        report::{
            DeviceEvent, FlowReport, HopChange, IntervalEnd, IntervalReport, Meta, MetaHop,
            Summary, Warning,
        },
    },
};

/// RFC 3339 timestamp in UTC, as every line's `ts`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// Where a `hop` or `flow` line was counted: the fields both start with.
#[derive(Debug, Serialize)]
pub struct AtHop<'a> {
    pub kind: &'static str,
    pub ts: &'a str,
    pub ifname: &'a str,
    pub ifindex: u32,
    pub netns: u64,
    /// The pod at the device's other end (a host-side veth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<&'a PodId>,
    pub dir: &'static str,
    pub role: Role,
}

impl<'a> AtHop<'a> {
    fn new(kind: &'static str, ts: &'a str, netns: u64, hop: &'a MetaHop, dir: Direction) -> Self {
        Self {
            kind,
            ts,
            ifname: &hop.ifname,
            ifindex: hop.ifindex,
            netns,
            pod: hop.pod.as_ref().map(|p| &p.id),
            dir: dir.as_str(),
            role: hop.role,
        }
    }
}

/// One `hop` line: what a device saw in one direction over one interval.
#[derive(Debug, Serialize)]
pub struct HopLine<'a> {
    #[serde(flatten)]
    pub at: AtHop<'a>,
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
    #[serde(flatten)]
    pub at: AtHop<'a>,
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
    /// The output file's device and inode (`None`: stdout).
    pub identity: Option<super::files::Identity>,
}

/// Complete lines kept before they are written even within an interval (an event burst).
const PENDING_LIMIT: usize = 256 * 1024;

impl JsonLines {
    /// `-` is stdout; anything else is a file, created (mode 0600) or truncated, never
    /// through a link ([`super::files::create`]).
    pub fn open(path: &str) -> Result<Self, super::files::FileError> {
        let (out, identity): (Box<dyn Write + Send>, _) = if path == "-" {
            (Box::new(io::stdout()), None)
        } else {
            let file = super::files::create(std::path::Path::new(path))?;
            let identity = super::files::identity(&file);
            (Box::new(file), identity)
        };
        Ok(Self {
            out,
            pending: Vec::with_capacity(PENDING_LIMIT),
            identity,
        })
    }

    pub fn write<T: Serialize>(&mut self, line: &T) -> io::Result<()> {
        self.write_within(line, None).map(drop)
    }

    /// Writes the line if `budget` has room for it (always, without one); returns whether it
    /// did.
    pub fn write_within<T: Serialize>(
        &mut self,
        line: &T,
        budget: Option<&Budget>,
    ) -> io::Result<bool> {
        let start = self.pending.len();
        serde_json::to_writer(&mut self.pending, line)?;
        self.pending.push(b'\n');
        if let Some(budget) = budget
            && !budget.take((self.pending.len() - start) as u64)
        {
            self.pending.truncate(start);
            return Ok(false);
        }
        if self.pending.len() >= PENDING_LIMIT {
            self.flush()?;
        }
        Ok(true)
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

/// A device that started (`added`) or stopped (`removed`: it vanished) being observed, or
/// could not be attached (`attach_failed`, with the `reason`).
#[derive(Serialize)]
struct DeviceLine<'a> {
    kind: &'static str,
    ts: String,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    ifname: &'a str,
    ifindex: u32,
    netns: u64,
    role: Role,
    mtu: u32,
    /// `mtu_changed`: the MTU before.
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu_was: Option<u32>,
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

/// What a recording may write (`--max-output-size`), shared by its JSON lines and its
/// evidence: once a line or a packet finds no room, both stop for good (a `note` line says
/// so, and the `summary` is still written), so no line points at a packet that is not there.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: std::sync::atomic::AtomicU64,
    full: std::sync::atomic::AtomicBool,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: 0.into(),
            full: false.into(),
        }
    }

    /// Takes `bytes` of the budget; false (for good) once they do not fit.
    pub fn take(&self, bytes: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.full.load(Relaxed) {
            return false;
        }
        let used = self.used.load(Relaxed);
        if used.saturating_add(bytes) > self.limit {
            self.full.store(true, Relaxed);
            return false;
        }
        self.used.store(used + bytes, Relaxed);
        true
    }

    /// Counts `bytes` written whatever the limit (the note and the summary).
    pub fn spend(&self, bytes: u64) {
        self.used
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// The `record` sink: every line of the contract, flushed at each interval and at the end.
pub struct JsonSink {
    lines: JsonLines,
    /// `--max-output-size`.
    budget: Option<Arc<Budget>>,
    /// Lines not written for want of room.
    unwritten: u64,
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
            budget: None,
            unwritten: 0,
            netns: 0,
            max_flows: 0,
            interval_ts: String::new(),
        }
    }
}

impl JsonSink {
    /// Within `budget` (`--max-output-size`).
    pub fn within(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Writes a line if the budget has room; the first line that finds none is replaced by a
    /// `note` saying the recording stops here.
    fn put<T: Serialize>(&mut self, line: &T) -> io::Result<()> {
        let Some(budget) = self.budget.clone() else {
            return self.lines.write(line);
        };
        if self.lines.write_within(line, Some(&budget))? {
            return Ok(());
        }
        self.unwritten += 1;
        if self.unwritten == 1 {
            let note = NoteLine {
                kind: "note",
                ts: timestamp(SystemTime::now()),
                text: &format!(
                    "--max-output-size {} reached: no more lines or evidence are written; the \
                     summary still counts everything",
                    budget.limit()
                ),
            };
            self.lines.write(&note)?;
            budget.spend(serde_json::to_vec(&note).map_or(0, |v| v.len() as u64 + 1));
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct NoteLine<'a> {
    kind: &'static str,
    ts: String,
    text: &'a str,
}

impl Sink for JsonSink {
    fn meta(&mut self, meta: &Meta) -> anyhow::Result<()> {
        self.netns = meta.netns;
        self.max_flows = meta.max_flows;
        self.put(&MetaLine {
            kind: "meta",
            ts: timestamp(SystemTime::now()),
            schema_version: SCHEMA_VERSION,
            meta,
        })?;
        Ok(self.lines.flush()?)
    }

    fn anomaly(&mut self, anomaly: &Anomaly) -> anyhow::Result<()> {
        let ts = timestamp(anomaly.ts);
        Ok(self.put(&AnomalyLine {
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
            self.put(&HopLine {
                at: AtHop::new("hop", &ts, self.netns, &h.hop, h.dir),
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
            self.put(&LostLine {
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
        let ts = self.interval_ts.clone();
        for f in flows {
            let c = &f.counters;
            self.put(&FlowLine {
                at: AtHop::new("flow", &ts, self.netns, &f.hop, f.dir),
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
            let ts = self.interval_ts.clone();
            self.put(&EvictedLine {
                kind: "evicted",
                ts: &ts,
                count: end.evicted,
                capacity: self.max_flows,
            })?;
        }
        Ok(self.lines.flush()?)
    }

    fn device(&mut self, change: &HopChange) -> anyhow::Result<()> {
        self.put(&DeviceLine {
            kind: "device",
            ts: timestamp(change.ts),
            event: change.event.as_str(),
            reason: match &change.event {
                DeviceEvent::AttachFailed(why) => Some(why),
                _ => None,
            },
            mtu_was: match change.event {
                DeviceEvent::MtuChanged { was } => Some(was),
                _ => None,
            },
            ifname: &change.hop.ifname,
            ifindex: change.hop.ifindex,
            netns: self.netns,
            role: change.hop.role,
            mtu: change.hop.mtu,
            ahead: &change.hop.ahead,
        })?;
        Ok(self.lines.flush()?)
    }

    fn warning(&mut self, warning: &Warning) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct WarningLine<'a> {
            kind: &'static str,
            ts: String,
            text: &'a str,
            count: u64,
        }
        self.put(&WarningLine {
            kind: "warning",
            ts: timestamp(warning.ts),
            text: &warning.text,
            count: warning.count,
        })?;
        Ok(self.lines.flush()?)
    }

    fn note(&mut self, text: &str) -> anyhow::Result<()> {
        self.put(&NoteLine {
            kind: "note",
            ts: timestamp(SystemTime::now()),
            text,
        })?;
        Ok(self.lines.flush()?)
    }

    fn finish(&mut self, summary: &mut Summary) -> anyhow::Result<()> {
        if self.budget.is_some() {
            summary.unwritten_lines = Some(self.unwritten);
        }
        // The summary is written whatever the budget: it holds the run's totals.
        self.lines.write(&SummaryLine {
            kind: "summary",
            ts: timestamp(SystemTime::now()),
            summary,
        })?;
        Ok(self.lines.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hop line's bytes, field order included: the contract's consumers (jq scripts, the
    /// report's reader) see exactly what they saw before the fields were shared (`AtHop`).
    #[test]
    fn a_hop_line_is_byte_for_byte_the_contracts() {
        let hop = MetaHop::new("cali0", 5, Role::Pod, 1500);
        let line = HopLine {
            at: AtHop::new("hop", "2026-12-07T00:00:00Z", 7, &hop, Direction::Egress),
            packets: 3,
            bytes: 300,
            drops: 1,
            loss_pct: 25.0,
            segs: 3,
            mean_segment: 100,
            max_len: 100,
            fragments: 0,
            oversize: 0,
            interval_ms: 1000,
        };
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            concat!(
                r#"{"kind":"hop","ts":"2026-12-07T00:00:00Z","ifname":"cali0","ifindex":5,"#,
                r#""netns":7,"dir":"egress","role":"pod","packets":3,"bytes":300,"drops":1,"#,
                r#""loss_pct":25.0,"segs":3,"mean_segment":100,"max_len":100,"fragments":0,"#,
                r#""oversize":0,"interval_ms":1000}"#
            )
        );
    }
}
