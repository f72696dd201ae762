//! Recordings (`record`'s JSON lines) read for the report: every line typed and checked, the
//! hop and flow counters per interval, the anomalies and the notes. Nothing here needs the
//! kernel: a recording is a file.

use std::{collections::BTreeMap, io::BufReader, path::Path};

use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch: every time the report handles.
pub type Micros = i64;

/// The `schema_version`s of `meta` lines this vxprobe reads.
pub const SCHEMA_VERSIONS: &[u32] = &[crate::sinks::jsonl::SCHEMA_VERSION];

/// Why a recording cannot be read: each one line, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file} is empty: not a recording")]
    Empty { file: String },
    #[error("{file} is not a vxprobe recording: its first line is not a meta line ({found})")]
    NoMeta { file: String, found: String },
    #[error(
        "{file}: schema_version {found} is not one this vxprobe reads ({known}): use the vxprobe that recorded it"
    )]
    Schema {
        file: String,
        found: String,
        known: String,
    },
    #[error("{file}: line {line} is not JSON ({error}) and lines follow it: the file is damaged")]
    Corrupt {
        file: String,
        line: usize,
        error: String,
    },
    #[error("{file}: line {line}: {what}")]
    BadLine {
        file: String,
        line: usize,
        what: String,
    },
    #[error("{file} has no interval: the recorder stopped before its first hop line")]
    NoIntervals { file: String },
}

/// A flow's inner 5-tuple, as every line writes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlowId {
    #[serde(deserialize_with = "proto_name")]
    pub proto: String,
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
}

impl std::fmt::Display for FlowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sport == 0 && self.dport == 0 {
            write!(f, "{} {} > {}", self.proto, self.src, self.dst)
        } else {
            let ip = |addr: &str, port: u16| {
                if addr.contains(':') {
                    format!("[{addr}]:{port}")
                } else {
                    format!("{addr}:{port}")
                }
            };
            write!(
                f,
                "{} {} > {}",
                self.proto,
                ip(&self.src, self.sport),
                ip(&self.dst, self.dport)
            )
        }
    }
}

/// `proto` is a name (`tcp`) or, for protocols without one, a number.
fn proto_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Proto {
        Name(String),
        Number(u64),
    }
    Ok(match Proto::deserialize(d)? {
        Proto::Name(name) => name,
        Proto::Number(n) => n.to_string(),
    })
}

/// A tunnel header (`outer`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OuterId {
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    pub vni: u32,
}

/// A hop of one node: a device and a direction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HopId {
    pub ifname: String,
    pub dir: String,
}

/// One interval of a recording: `[end - len, end]` on the recording node's clock.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    pub end: Micros,
    pub len: Micros,
}

impl Interval {
    pub fn start(&self) -> Micros {
        self.end - self.len
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HopPoint {
    /// Index into [`Recording::intervals`].
    pub interval: usize,
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
    pub segs: u64,
    /// IP fragments among the packets.
    pub fragments: u64,
}

#[derive(Clone, Debug, Default)]
pub struct HopSeries {
    pub role: String,
    pub points: Vec<HopPoint>,
}

#[derive(Clone, Debug, Default)]
pub struct FlowSeries {
    pub role: String,
    pub outer: Option<OuterId>,
    /// (interval, packets, bytes, segs)
    pub points: Vec<HopPoint>,
}

/// An anomaly line (`drop`, `csum_error`, `oversize`, `fragment`, `retransmit`,
/// `frag_needed`), or a `lost`/`evicted` line.
#[derive(Clone, Debug)]
pub struct Event {
    pub ts: Micros,
    pub kind: String,
    pub ifname: Option<String>,
    pub netns: Option<u64>,
    /// Only events of device hooks (TC) carry it.
    pub dir: Option<String>,
    pub reason: Option<String>,
    pub location: Option<String>,
    pub flow: Option<FlowId>,
    pub vni: Option<u32>,
    pub count: u64,
    pub len: Option<u64>,
    pub mtu: Option<u64>,
    pub errno: Option<u64>,
    pub process: Option<String>,
    pub pcap_frame: Option<u64>,
    /// The packet died (or its send was refused): what a hop's `drops` counts.
    pub dropped: bool,
}

/// Where a recording stops making sense: a last line cut short (a killed recorder, a full
/// disk). Everything before it was read.
#[derive(Clone, Debug, Serialize)]
pub struct Truncation {
    pub line: usize,
    pub error: String,
}

/// One node's recording, read whole.
#[derive(Clone, Debug)]
pub struct Recording {
    /// The file as given on the command line.
    pub file: String,
    pub node: String,
    /// `false`: the meta line has no `node` (recorded before `--node` existed), so the node is
    /// named after the file.
    pub node_named: bool,
    pub schema_version: u32,
    pub vxprobe_version: String,
    pub kernel: String,
    /// The node's network namespace (of its TC hops).
    pub netns: u64,
    pub intervals: Vec<Interval>,
    pub hops: BTreeMap<HopId, HopSeries>,
    /// Per inner 5-tuple, per hop and VNI (underlay hops carry the tunnel's).
    pub flows: BTreeMap<FlowId, BTreeMap<(HopId, Option<u32>), FlowSeries>>,
    pub events: Vec<Event>,
    pub notes: Vec<(Micros, String)>,
    /// Events lost to a full ring buffer (`lost` lines).
    pub lost_events: u64,
    /// Flow entries evicted from a full flow table (`evicted` lines).
    pub evicted: u64,
    /// The recording ended with its `summary` line (the recorder stopped cleanly).
    pub summary: bool,
    pub truncated: Option<Truncation>,
}

impl Recording {
    /// The node's clock span: from the first interval's start to the last one's end.
    pub fn span(&self) -> (Micros, Micros) {
        let first = self.intervals.first().map_or(0, Interval::start);
        let last = self.intervals.last().map_or(0, |i| i.end);
        (first, last)
    }

    /// The usual interval length (the median), for resolutions and bins.
    pub fn interval_len(&self) -> Micros {
        let mut lens: Vec<Micros> = self.intervals.iter().map(|i| i.len).collect();
        lens.sort_unstable();
        lens.get(lens.len() / 2).copied().unwrap_or(1_000_000)
    }
}

/// Every field any line may carry; each kind uses some.
#[derive(Deserialize)]
struct Line {
    kind: String,
    /// On anomaly lines: the packet died there (written by the recorder's model).
    dropped: Option<bool>,
    ts: Option<String>,
    schema_version: Option<serde_json::Value>,
    node: Option<String>,
    vxprobe_version: Option<String>,
    kernel: Option<String>,
    netns: Option<u64>,
    ifname: Option<String>,
    dir: Option<String>,
    role: Option<String>,
    packets: Option<u64>,
    bytes: Option<u64>,
    drops: Option<u64>,
    segs: Option<u64>,
    fragments: Option<u64>,
    interval_ms: Option<u64>,
    flow: Option<FlowId>,
    outer: Option<OuterId>,
    reason: Option<String>,
    location: Option<String>,
    len: Option<u64>,
    mtu: Option<u64>,
    errno: Option<u64>,
    count: Option<u64>,
    pcap_frame: Option<u64>,
    text: Option<String>,
    process: Option<Process>,
}

#[derive(Deserialize)]
struct Process {
    comm: Option<String>,
}

/// Parses an RFC 3339 timestamp (`ts`) to microseconds since the epoch.
pub fn parse_ts(text: &str) -> Option<Micros> {
    let at = humantime::parse_rfc3339_weak(text).ok()?;
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_micros()).ok()
}

/// Formats microseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn format_ts(at: Micros) -> String {
    // humantime writes years up to 9999; a crafted recording (or one shifted by a skew) can
    // hold later times: they are written as the last millisecond it can.
    const LAST: Micros = 253_402_300_799_999_000;
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_micros(u64::try_from(at.min(LAST)).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// An `interval_ms` as microseconds, saturating (a crafted value must not overflow).
fn interval_micros(ms: u64) -> Micros {
    i64::try_from(ms.saturating_mul(1000)).unwrap_or(Micros::MAX)
}

/// Reads a recording from a file.
pub fn read_file(path: &Path) -> Result<Recording, ReadError> {
    let file = path.display().to_string();
    let handle = std::fs::File::open(path).map_err(|source| ReadError::Io {
        file: file.clone(),
        source,
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.clone());
    read(BufReader::new(handle), &file, &stem)
}

/// Reads a recording; `file` names it in errors, `stem` names the node when the meta line
/// does not.
pub fn read(input: impl std::io::BufRead, file: &str, stem: &str) -> Result<Recording, ReadError> {
    let mut lines = input.split(b'\n').enumerate().peekable();
    let io = |source| ReadError::Io {
        file: file.to_owned(),
        source,
    };
    let bad = |line: usize, what: String| ReadError::BadLine {
        file: file.to_owned(),
        line,
        what,
    };
    let mut rec: Option<Recording> = None;
    // The interval being filled: its `ts` text and its index.
    let mut current: Option<(String, usize)> = None;
    while let Some((index, bytes)) = lines.next() {
        let number = index + 1;
        let bytes = bytes.map_err(io)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Line = match serde_json::from_slice(&bytes) {
            Ok(line) => line,
            Err(e) => {
                let last = lines
                    .peek()
                    .is_none_or(|(_, next)| next.as_ref().is_ok_and(|b| b.is_empty()));
                let Some(rec) = rec.as_mut() else {
                    return Err(ReadError::NoMeta {
                        file: file.to_owned(),
                        found: format!("not JSON: {e}"),
                    });
                };
                if !last {
                    return Err(ReadError::Corrupt {
                        file: file.to_owned(),
                        line: number,
                        error: e.to_string(),
                    });
                }
                rec.truncated = Some(Truncation {
                    line: number,
                    error: e.to_string(),
                });
                break;
            }
        };
        let Some(rec) = rec.as_mut() else {
            rec = Some(meta(&line, file, stem)?);
            continue;
        };
        let ts = || {
            line.ts
                .as_deref()
                .and_then(parse_ts)
                .ok_or_else(|| bad(number, format!("a {} line without a valid ts", line.kind)))
        };
        match line.kind.as_str() {
            "hop" | "flow" => {
                let ts_text = line.ts.clone().unwrap_or_default();
                let at = ts()?;
                let interval = match &current {
                    Some((text, i)) if *text == ts_text => *i,
                    _ => {
                        let len = line.interval_ms.map_or(0, interval_micros);
                        rec.intervals.push(Interval { end: at, len });
                        let i = rec.intervals.len() - 1;
                        current = Some((ts_text, i));
                        i
                    }
                };
                let (Some(ifname), Some(dir)) = (line.ifname.clone(), line.dir.clone()) else {
                    return Err(bad(
                        number,
                        format!("a {} line without ifname and dir", line.kind),
                    ));
                };
                let hop = HopId { ifname, dir };
                let point = HopPoint {
                    interval,
                    packets: line.packets.unwrap_or(0),
                    bytes: line.bytes.unwrap_or(0),
                    drops: line.drops.unwrap_or(0),
                    segs: line.segs.or(line.packets).unwrap_or(0),
                    fragments: line.fragments.unwrap_or(0),
                };
                let role = line.role.clone().unwrap_or_else(|| "other".to_owned());
                if line.kind == "hop" {
                    if rec.intervals[interval].len == 0 {
                        rec.intervals[interval].len = line.interval_ms.map_or(0, interval_micros);
                    }
                    let series = rec.hops.entry(hop).or_default();
                    series.role = role;
                    series.points.push(point);
                } else {
                    let Some(flow) = line.flow.clone() else {
                        return Err(bad(number, "a flow line without its flow".to_owned()));
                    };
                    let vni = line.outer.as_ref().map(|o| o.vni);
                    let series = rec
                        .flows
                        .entry(flow)
                        .or_default()
                        .entry((hop, vni))
                        .or_default();
                    series.role = role;
                    if series.outer.is_none() {
                        series.outer = line.outer.clone();
                    }
                    series.points.push(point);
                }
            }
            "drop" | "csum_error" | "oversize" | "fragment" | "retransmit" | "frag_needed" => {
                rec.events.push(Event {
                    ts: ts()?,
                    kind: line.kind.clone(),
                    ifname: line.ifname.clone(),
                    netns: line.netns,
                    dir: line.dir.clone(),
                    reason: line.reason.clone(),
                    location: line.location.clone(),
                    vni: line.outer.as_ref().map(|o| o.vni),
                    flow: line.flow.clone(),
                    count: line.count.unwrap_or(1).max(1),
                    len: line.len,
                    mtu: line.mtu,
                    errno: line.errno,
                    process: line.process.as_ref().and_then(|p| p.comm.clone()),
                    pcap_frame: line.pcap_frame,
                    dropped: line.dropped.unwrap_or(false),
                });
            }
            "lost" => rec.lost_events += line.count.unwrap_or(0),
            "evicted" => rec.evicted += line.count.unwrap_or(0),
            "note" => rec
                .notes
                .push((ts()?, line.text.clone().unwrap_or_default())),
            "summary" => rec.summary = true,
            "meta" => return Err(bad(number, "a second meta line".to_owned())),
            // `device` lines and kinds added later: nothing the report joins.
            _ => {}
        }
    }
    let mut rec = rec.ok_or_else(|| ReadError::Empty {
        file: file.to_owned(),
    })?;
    if rec.intervals.is_empty() {
        return Err(ReadError::NoIntervals {
            file: file.to_owned(),
        });
    }
    // Flow-only intervals (no hop selected) take their length from the previous end.
    let mut previous: Option<Micros> = None;
    for interval in &mut rec.intervals {
        if interval.len <= 0 {
            interval.len = previous.map_or(1_000_000, |p| (interval.end - p).max(1));
        }
        previous = Some(interval.end);
    }
    Ok(rec)
}

/// The first line: the recording's meta data, checked.
fn meta(line: &Line, file: &str, stem: &str) -> Result<Recording, ReadError> {
    if line.kind != "meta" {
        return Err(ReadError::NoMeta {
            file: file.to_owned(),
            found: format!("kind \"{}\"", line.kind),
        });
    }
    let known = SCHEMA_VERSIONS
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let version = line.schema_version.as_ref();
    let schema_version = version
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| SCHEMA_VERSIONS.contains(v))
        .ok_or_else(|| ReadError::Schema {
            file: file.to_owned(),
            found: version.map_or_else(|| "(none)".to_owned(), ToString::to_string),
            known,
        })?;
    let node = line.node.clone().filter(|n| !n.trim().is_empty());
    Ok(Recording {
        file: file.to_owned(),
        node_named: node.is_some(),
        node: node.unwrap_or_else(|| stem.to_owned()),
        schema_version,
        vxprobe_version: line.vxprobe_version.clone().unwrap_or_default(),
        kernel: line.kernel.clone().unwrap_or_default(),
        netns: line.netns.unwrap_or(0),
        intervals: Vec::new(),
        hops: BTreeMap::new(),
        flows: BTreeMap::new(),
        events: Vec::new(),
        notes: Vec::new(),
        lost_events: 0,
        evicted: 0,
        summary: false,
        truncated: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = r#"{"kind":"meta","ts":"2026-12-01T10:00:00Z","schema_version":1,"node":"n1","vxprobe_version":"0.1.0","kernel":"6.18","netns":7,"hops":[]}"#;
    const HOP: &str = r#"{"kind":"hop","ts":"2026-12-01T10:00:01Z","ifname":"eth0","ifindex":2,"netns":7,"dir":"egress","role":"underlay","packets":5,"bytes":500,"drops":0,"loss_pct":0.0,"segs":5,"interval_ms":1000}"#;

    fn read_str(text: &str) -> Result<Recording, ReadError> {
        read(text.as_bytes(), "t.jsonl", "t")
    }

    #[test]
    fn a_recording_reads_into_intervals_hops_and_flows() {
        let flow = r#"{"kind":"flow","ts":"2026-12-01T10:00:01Z","ifname":"eth0","ifindex":2,"netns":7,"dir":"egress","role":"underlay","flow":{"proto":"udp","src":"198.19.1.2","dst":"198.19.2.2","sport":1,"dport":2},"outer":{"src":"198.18.0.1","dst":"198.18.0.2","sport":9,"dport":4789,"vni":4096},"packets":5,"bytes":500,"segs":5}"#;
        let text = format!("{META}\n{HOP}\n{flow}\n");
        let rec = read_str(&text).unwrap();
        assert_eq!(rec.node, "n1");
        assert_eq!(rec.intervals.len(), 1);
        assert_eq!(rec.intervals[0].len, 1_000_000);
        let flows = &rec.flows.values().next().unwrap();
        let ((hop, vni), series) = flows.iter().next().unwrap();
        assert_eq!((hop.ifname.as_str(), *vni), ("eth0", Some(4096)));
        assert_eq!(series.points[0].packets, 5);
        assert!(!rec.summary && rec.truncated.is_none());
    }

    #[test]
    fn a_cut_last_line_is_read_up_to_where_it_breaks() {
        let text = format!("{META}\n{HOP}\n{{\"kind\":\"hop\",\"ts\":\"2026-12-01T1");
        let rec = read_str(&text).unwrap();
        assert_eq!(rec.intervals.len(), 1);
        assert_eq!(rec.truncated.as_ref().unwrap().line, 3);
    }

    #[test]
    fn bad_recordings_are_refused_with_one_line() {
        let cases = [
            ("", "is empty"),
            ("{\"kind\":\"hop\"}\n", "first line is not a meta line"),
            ("garbage\n", "first line is not a meta line"),
            (
                &META.replace("\"schema_version\":1", "\"schema_version\":99"),
                "schema_version 99",
            ),
            (&format!("{META}\nnot json\n{HOP}\n"), "line 2 is not JSON"),
            (META, "has no interval"),
        ];
        for (text, expected) in cases {
            let e = read_str(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
