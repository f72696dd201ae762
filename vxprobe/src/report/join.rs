//! The join: recordings of several nodes made one incident. The nodes' clocks are aligned (the
//! skew measured from traffic both ends of the tunnel saw), counts are taken over the window
//! the recordings share, each flow's hops are put in path order across the nodes, and every
//! segment between two consecutive hops says what it lost and where: at a hop (drops counted
//! there), between two hops of one node (nothing counted), or on the wire between two nodes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{
    evidence::Evidence,
    read::{FlowId, HopId, Micros, OuterId, Recording, format_ts},
    skew,
};

/// How far apart two nodes' clocks may be for the skew to be measured (beyond, it is assumed
/// 0 and said so).
pub const MAX_SKEW: Micros = 30_000_000;

/// Why recordings cannot be joined: each one line (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "{a} and {b} are both from node \"{node}\": give one recording per node (record --node NAME names them)"
    )]
    SameNode { node: String, a: String, b: String },
    #[error("the recordings do not overlap in time ({spans}): nothing to join")]
    NoOverlap { spans: String },
}

/// A hop as the report names it: node, device, direction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HopRef {
    pub node: String,
    pub ifname: String,
    pub dir: String,
}

impl std::fmt::Display for HopRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.node, self.ifname, self.dir)
    }
}

/// One hop of a flow's path, with what the flow did there over the window.
#[derive(Clone, Debug, Serialize)]
pub struct PathHop {
    #[serde(flatten)]
    pub at: HopRef,
    pub role: String,
    pub packets: u64,
    pub bytes: u64,
    pub segs: u64,
    /// Packets of this flow the kernel dropped there (drop, csum_error and size-drop events).
    pub drops: u64,
}

/// Where a segment's loss is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Where {
    /// At a hop: drops counted there explain it.
    Hop,
    /// Between two hops of one node, where nothing was counted as a drop.
    Between,
    /// On the wire: between one node's underlay egress and the next node's underlay ingress,
    /// where no node observes.
    Wire,
    /// Between two nodes whose hops in between were not recorded.
    Unobserved,
    /// Not a loss: no more than the window's edges explain (packets one node counted in the
    /// part of an interval the other did not record).
    Edge,
}

impl Where {
    pub fn describe(self) -> &'static str {
        match self {
            Where::Hop => "at the hop",
            Where::Between => "between the hops, nothing counted",
            Where::Wire => "on the wire",
            Where::Unobserved => "between nodes, hops not recorded",
            Where::Edge => "window edge, not a loss",
        }
    }
}

/// Two consecutive hops of a path and what went from one to the other.
#[derive(Clone, Debug, Serialize)]
pub struct Segment {
    pub from: HopRef,
    pub to: HopRef,
    pub sent: u64,
    pub received: u64,
    /// sent - received (0 when more arrived).
    pub lost: u64,
    /// received - sent, when more arrived than left (fragmentation, or the window's edges).
    #[serde(skip_serializing_if = "is_zero")]
    pub gained: u64,
    /// Drops of this flow counted inside the segment (after `from` at ingress, before `to`
    /// at egress).
    pub dropped: u64,
    #[serde(rename = "where")]
    pub location: Option<Where>,
    /// The hop the drops were counted at, when `where` is `hop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<HopRef>,
    /// Packets the window's edges may account for (two nodes' intervals never start together):
    /// a loss up to this is `edge`.
    #[serde(skip_serializing_if = "is_zero")]
    pub uncertainty: u64,
    /// Why the counts do not compare, when they do not (packets fragmented or reassembled
    /// between the hops): `lost` is then 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A drop of the flow that is not on its path: in a pod's namespace, on another device, or in
/// a namespace several recordings saw (nodes sharing a kernel, as in a lab).
#[derive(Clone, Debug, Serialize)]
pub struct OffPath {
    /// The node, or `shared` for a namespace several nodes' recordings saw.
    pub node: String,
    pub netns: Option<u64>,
    pub ifname: Option<String>,
    pub kind: String,
    pub reason: Option<String>,
    pub count: u64,
}

/// One flow across the nodes.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    pub flow: FlowId,
    pub vni: Option<u32>,
    pub outer: Option<OuterId>,
    /// `packets`, or `segments` where GSO packets were seen on the path (a GSO packet that is
    /// segmented between two hops is one packet before and many after; segments are what the
    /// wire carries).
    pub unit: &'static str,
    /// At the first hop of the path.
    pub sent: u64,
    /// At the last hop of the path.
    pub received: u64,
    /// Lost over every segment (edges excluded).
    pub lost: u64,
    pub loss_pct: f64,
    pub path: Vec<PathHop>,
    pub segments: Vec<Segment>,
    /// Anomaly events of this flow by kind, over the window.
    pub anomalies: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drops_off_path: Vec<OffPath>,
}

impl FlowReport {
    /// The segments that lost packets (edges excluded).
    pub fn losses(&self) -> impl Iterator<Item = &Segment> {
        self.segments
            .iter()
            .filter(|s| s.lost > 0 && s.location.is_some_and(|w| w != Where::Edge))
    }

    /// "udp 198.19.1.2:40001 > 198.19.2.2:7000 (VNI 4096)"
    pub fn title(&self) -> String {
        match self.vni {
            Some(vni) => format!("{} (VNI {vni})", self.flow),
            None => self.flow.to_string(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    pub node: String,
    pub recording: String,
    /// `false`: the recording's meta line has no `node`; it is named after its file.
    pub named: bool,
    pub kernel: String,
    pub vxprobe_version: String,
    pub netns: u64,
    /// The recording's span on the reference clock.
    pub from: String,
    pub to: String,
    pub intervals: usize,
    pub interval_ms: u64,
    /// This node's clock minus the reference's, as applied.
    pub clock_offset_ms: f64,
    /// The recording ended with its summary line.
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<super::read::Truncation>,
    pub lost_events: u64,
    pub evicted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap_frames: Option<u64>,
}

/// How one node's clock was aligned on the reference's.
#[derive(Clone, Debug, Serialize)]
pub struct Skew {
    pub node: String,
    /// What was applied (0 unless measured beyond the resolution).
    pub offset_ms: f64,
    /// What the traffic says, if it could say.
    pub measured_ms: Option<f64>,
    /// Finer than this, counts per interval cannot tell: half the longer interval, or of the
    /// intervals that held the traffic, or the spread of offsets that match as well.
    pub resolution_ms: f64,
    /// How well the two nodes' underlay series match at the measured offset (Pearson, -1..1).
    pub correlation: Option<f64>,
    /// Packets the measure rests on (underlay egress of one node, ingress of the other).
    pub packets: u64,
    pub applied: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub from: String,
    pub to: String,
    pub duration_ms: u64,
    /// The node whose clock the report's times are on.
    pub reference: String,
    pub skew: Vec<Skew>,
    /// What the join assumed, in words.
    pub assumptions: Vec<String>,
}

/// An anomaly line of a recording, on the reference clock, with its evidence packet.
#[derive(Clone, Debug, Serialize)]
pub struct AnomalyRow {
    /// The node whose recording it is from, or `shared` (see [`OffPath`]).
    pub node: String,
    pub ts: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowId>,
    pub count: u64,
    /// The evidence file and the packet's frame number in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap_frame: Option<u64>,
    /// The packet's comment in the evidence file, when it was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap_comment: Option<String>,
    #[serde(skip)]
    pub at: Micros,
    #[serde(skip)]
    pub len: Option<u64>,
    #[serde(skip)]
    pub errno: Option<u64>,
    #[serde(skip)]
    pub process: Option<String>,
    #[serde(skip)]
    pub dropped: bool,
}

/// Series over time for the plots (not part of the JSON).
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub from: Micros,
    pub bin: Micros,
    pub bins: usize,
    /// Per hop (label, drops per second, bits per second).
    pub hops: Vec<(String, Vec<f64>, Vec<f64>)>,
    /// Per pair of nodes (label, packets lost per second between their underlays).
    pub wire: Vec<(String, Vec<f64>)>,
    /// Per anomaly kind, events per second.
    pub anomalies: BTreeMap<String, Vec<f64>>,
    /// (time, node, text)
    pub notes: Vec<(Micros, String, String)>,
}

/// The joined incident; its JSON form is the report's schema.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub vxprobe_version: &'static str,
    pub nodes: Vec<NodeInfo>,
    pub window: Window,
    /// Worst first.
    pub flows: Vec<FlowReport>,
    pub findings: Vec<super::findings::Finding>,
    pub anomalies: Vec<AnomalyRow>,
    #[serde(skip)]
    pub timeline: Timeline,
}

/// Where a recording's included interval lies against the window.
struct Included {
    /// Per interval: whether it counts.
    counts: Vec<bool>,
    /// Per interval: the share of it outside the window (0 inside).
    outside: Vec<f64>,
}

/// One hop's observation of a flow on one node over the window.
#[derive(Clone, Debug)]
struct Obs {
    node: usize,
    hop: HopId,
    role: String,
    vni: Option<u32>,
    outer: Option<OuterId>,
    packets: u64,
    bytes: u64,
    segs: u64,
    fragments: u64,
    /// Packets (and segments) the window's edges may hold (see [`Segment::uncertainty`]).
    edge_packets: f64,
    edge_segs: f64,
}

/// The position of a hop on a path through a node: where traffic comes in from a pod, goes
/// into the tunnel, leaves by the underlay; then, on the next node, arrives by the underlay,
/// leaves the tunnel and goes out to the pod. A pod veth's host side sees the pod's packets
/// at INGRESS (the pod sends into its end of the pair).
pub fn stage(role: &str, dir: &str) -> u8 {
    let ingress = dir == "ingress";
    match (role, ingress) {
        ("overlay", false) => 1,
        ("underlay" | "physical", false) => 2,
        ("underlay" | "physical", true) => 3,
        ("overlay", true) => 4,
        (_, true) => 0,
        (_, false) => 5,
    }
}

fn is_underlay(role: &str) -> bool {
    matches!(role, "underlay" | "physical")
}

/// Joins the recordings (one per node, the first the reference clock); `evidence[i]` is the
/// pcapng of recording i, if given.
pub fn join(
    mut recordings: Vec<Recording>,
    evidence: Vec<Option<Evidence>>,
) -> Result<Report, JoinError> {
    for (i, a) in recordings.iter().enumerate() {
        if let Some(b) = recordings[i + 1..].iter().find(|b| b.node == a.node) {
            return Err(JoinError::SameNode {
                node: a.node.clone(),
                a: a.file.clone(),
                b: b.file.clone(),
            });
        }
    }
    check_overlap(&recordings, &[])?;
    let mut assumptions = Vec::new();

    // Clocks: every node against the first.
    let mut offsets = vec![0; recordings.len()];
    let mut skews = Vec::new();
    for x in 1..recordings.len() {
        let measure = skew::measure(&recordings[0], &recordings[x], MAX_SKEW);
        let resolution = (recordings[0]
            .interval_len()
            .max(recordings[x].interval_len())
            / 2)
        .max(measure.as_ref().map_or(0, |m| m.resolution));
        let applied = measure
            .as_ref()
            .is_some_and(|m| m.offset.abs() > resolution);
        if applied {
            offsets[x] = measure.as_ref().map_or(0, |m| m.offset);
        }
        let (node, reference) = (&recordings[x].node, &recordings[0].node);
        assumptions.push(match &measure {
            Some(m) if applied => format!(
                "{node}'s clock runs {:+.0} ms from {reference}'s, measured from the tunnel traffic both saw ({} packets, correlation {:.2}); {node}'s times are shifted by it",
                m.offset as f64 / 1000.0,
                m.packets,
                m.correlation
            ),
            Some(m) => format!(
                "{node}'s and {reference}'s clocks agree within {:.0} ms (what counts per interval can tell): measured {:+.0} ms from {} packets of tunnel traffic, not applied",
                resolution as f64 / 1000.0,
                m.offset as f64 / 1000.0,
                m.packets
            ),
            None => format!(
                "the skew between {node}'s and {reference}'s clocks could not be measured (too little tunnel traffic between them, too steady, or in intervals too long for counts to tell): assumed 0"
            ),
        });
        skews.push(Skew {
            node: node.clone(),
            offset_ms: offsets[x] as f64 / 1000.0,
            measured_ms: measure.as_ref().map(|m| m.offset as f64 / 1000.0),
            resolution_ms: resolution as f64 / 1000.0,
            correlation: measure.as_ref().map(|m| m.correlation),
            packets: measure.as_ref().map_or(0, |m| m.packets),
            applied,
        });
    }
    // Everything on the reference clock from here on.
    for (rec, offset) in recordings.iter_mut().zip(&offsets) {
        shift(rec, *offset);
    }
    let (from, to) = check_overlap(&recordings, &offsets)?;
    let included: Vec<Included> = recordings
        .iter()
        .map(|rec| {
            let mut counts = Vec::with_capacity(rec.intervals.len());
            let mut outside = Vec::with_capacity(rec.intervals.len());
            for i in &rec.intervals {
                let (start, end) = (i.start(), i.end);
                let inside = start < to && end > from;
                counts.push(inside);
                let out = (from - start).max(0) + (end - to).max(0);
                outside.push(if inside {
                    out as f64 / i.len.max(1) as f64
                } else {
                    1.0
                });
            }
            Included { counts, outside }
        })
        .collect();
    assumptions.push(format!(
        "counts are taken over the window all recordings share, {} to {}: each recording's intervals that overlap it count whole",
        format_ts(from),
        format_ts(to)
    ));
    if recordings.len() > 1 {
        assumptions.push(
            "the wire between two nodes is where one node's underlay egress and the other's underlay ingress differ; its delay is taken as far below an interval".to_owned(),
        );
    }

    // Events: each counted once, by the node whose namespace it happened in.
    let owners = event_owners(&recordings);
    if owners.shared_netns > 0 {
        let nodes: Vec<&str> = recordings.iter().map(|r| r.node.as_str()).collect();
        assumptions.push(format!(
            "{} network namespace(s) appear in the recordings of several nodes ({}): they share a kernel (a lab, or nodes in one machine). Each event is counted once, from the recording that kept the most of its kind, device, reason and flow; events of a namespace no node has are `shared`",
            owners.shared_netns,
            nodes.join(", ")
        ));
    }
    let mut rows = Vec::new();
    for (r, rec) in recordings.iter().enumerate() {
        let (first, last) = window_of(rec, &included[r]);
        for (e, event) in rec.events.iter().enumerate() {
            let Some(owner) = &owners.owner[r][e] else {
                continue;
            };
            if event.ts < first || event.ts > last + rec.interval_len() {
                continue;
            }
            let evidence = evidence.get(r).and_then(Option::as_ref);
            rows.push(AnomalyRow {
                node: owner.clone(),
                ts: format_ts(event.ts),
                kind: event.kind.clone(),
                ifname: event.ifname.clone(),
                netns: event.netns,
                dir: event.dir.clone(),
                reason: event.reason.clone(),
                location: event.location.clone(),
                flow: event.flow.clone(),
                count: event.count,
                pcap: event.pcap_frame.and(evidence.map(|e| e.file.clone())),
                pcap_frame: event.pcap_frame,
                pcap_comment: event
                    .pcap_frame
                    .and_then(|f| evidence.and_then(|e| e.comment(f)))
                    .map(str::to_owned),
                at: event.ts,
                len: event.len,
                errno: event.errno,
                process: event.process.clone(),
                dropped: event.dropped,
            });
        }
    }
    rows.sort_by_key(|r| r.at);

    // Flows: every node's observations, matched by 5-tuple and VNI.
    let mut by_flow: BTreeMap<FlowId, Vec<Obs>> = BTreeMap::new();
    for (r, rec) in recordings.iter().enumerate() {
        let inc = &included[r];
        for (flow, hops) in &rec.flows {
            for ((hop, vni), series) in hops {
                let mut obs = Obs {
                    node: r,
                    hop: hop.clone(),
                    role: series.role.clone(),
                    vni: *vni,
                    outer: series.outer.clone(),
                    packets: 0,
                    bytes: 0,
                    segs: 0,
                    fragments: 0,
                    edge_packets: 0.0,
                    edge_segs: 0.0,
                };
                for p in &series.points {
                    if !inc.counts[p.interval] {
                        continue;
                    }
                    obs.packets += p.packets;
                    obs.bytes += p.bytes;
                    obs.segs += p.segs;
                    obs.fragments += p.fragments;
                    let outside = inc.outside[p.interval];
                    if outside > 0.0 && active_beyond(series, inc, p.interval) {
                        // The part outside, and up to half an interval more: where the edge
                        // lies on the other node's clock is known to the skew's resolution.
                        let share = (outside + 0.5).min(1.0);
                        obs.edge_packets += p.packets as f64 * share;
                        obs.edge_segs += p.segs as f64 * share;
                    }
                }
                if obs.packets > 0 || obs.segs > 0 {
                    by_flow.entry(flow.clone()).or_default().push(obs);
                }
            }
        }
    }
    let names: Vec<String> = recordings.iter().map(|r| r.node.clone()).collect();
    let mut flows = Vec::new();
    for (flow, observations) in by_flow {
        for (vni, group) in split_by_vni(observations) {
            flows.push(flow_report(&flow, vni, group, &names, &rows));
        }
    }
    flows.sort_by(|a, b| {
        b.lost
            .cmp(&a.lost)
            .then(b.loss_pct.total_cmp(&a.loss_pct))
            .then(b.sent.cmp(&a.sent))
            .then(a.flow.cmp(&b.flow))
    });

    let nodes = recordings
        .iter()
        .zip(&evidence)
        .zip(&offsets)
        .map(|((rec, ev), offset)| {
            let (start, end) = rec.span();
            NodeInfo {
                node: rec.node.clone(),
                recording: rec.file.clone(),
                named: rec.node_named,
                kernel: rec.kernel.clone(),
                vxprobe_version: rec.vxprobe_version.clone(),
                netns: rec.netns,
                from: format_ts(start),
                to: format_ts(end),
                intervals: rec.intervals.len(),
                interval_ms: u64::try_from(rec.interval_len() / 1000).unwrap_or(0),
                clock_offset_ms: *offset as f64 / 1000.0,
                complete: rec.summary,
                truncated: rec.truncated.clone(),
                lost_events: rec.lost_events,
                evicted: rec.evicted,
                pcap: ev.as_ref().map(|e| e.file.clone()),
                pcap_frames: ev.as_ref().map(|e| e.frames),
            }
        })
        .collect();
    let timeline = timeline(&recordings, &included, from, to, &rows, &flows);
    Ok(Report {
        vxprobe_version: env!("CARGO_PKG_VERSION"),
        nodes,
        window: Window {
            from: format_ts(from),
            to: format_ts(to),
            duration_ms: u64::try_from((to - from) / 1000).unwrap_or(0),
            reference: recordings[0].node.clone(),
            skew: skews,
            assumptions,
        },
        flows,
        findings: Vec::new(),
        anomalies: rows,
        timeline,
    })
}

/// The window every recording covers, on the clocks as shifted by `offsets` (empty: as
/// recorded); an error naming each span when there is none.
fn check_overlap(
    recordings: &[Recording],
    offsets: &[Micros],
) -> Result<(Micros, Micros), JoinError> {
    let from = recordings.iter().map(|r| r.span().0).max().unwrap_or(0);
    let to = recordings.iter().map(|r| r.span().1).min().unwrap_or(0);
    if from < to {
        return Ok((from, to));
    }
    let spans = recordings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (a, b) = r.span();
            let offset = offsets.get(i).copied().unwrap_or(0);
            format!(
                "{} {} to {}",
                r.file,
                format_ts(a + offset),
                format_ts(b + offset)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(JoinError::NoOverlap { spans })
}

/// Moves a recording's times onto the reference clock (`offset`: its clock minus the
/// reference's).
fn shift(rec: &mut Recording, offset: Micros) {
    if offset == 0 {
        return;
    }
    for i in &mut rec.intervals {
        i.end -= offset;
    }
    for e in &mut rec.events {
        e.ts -= offset;
    }
    for (ts, _) in &mut rec.notes {
        *ts -= offset;
    }
}

/// The span of a recording's included intervals.
fn window_of(rec: &Recording, inc: &Included) -> (Micros, Micros) {
    let mut span = (Micros::MAX, Micros::MIN);
    for (i, interval) in rec.intervals.iter().enumerate() {
        if inc.counts[i] {
            span.0 = span.0.min(interval.start());
            span.1 = span.1.max(interval.end);
        }
    }
    span
}

/// Whether the flow moved at this hop in the interval beyond the window's edge next to
/// `interval` (so the part of `interval` outside the window likely held its packets too).
fn active_beyond(series: &super::read::FlowSeries, inc: &Included, interval: usize) -> bool {
    let beyond = if interval > 0 && !inc.counts[interval - 1] {
        Some(interval - 1)
    } else if interval + 1 < inc.counts.len() && !inc.counts[interval + 1] {
        Some(interval + 1)
    } else {
        None
    };
    beyond.is_some_and(|b| {
        series
            .points
            .iter()
            .any(|p| p.interval == b && p.packets > 0)
    })
}

/// Who each event belongs to: `owner[recording][event]` is the node (or `shared`) to count it
/// for, `None` to leave it to another recording.
struct Owners {
    owner: Vec<Vec<Option<String>>>,
    shared_netns: usize,
}

/// Kernel-wide hooks report every namespace of their kernel, so nodes sharing a kernel (a lab)
/// each record the others' events too. Events are grouped by namespace, kind, device, reason and
/// flow; each group is counted once, from the recording that has the most of it (a recorder
/// flooded by another workload's events may have missed some), the namespace's own node first
/// on a tie. An event in a node's namespace is that node's; one in a namespace several
/// recordings see and no node has is `shared`; any other is the recording node's (its pods).
fn event_owners(recordings: &[Recording]) -> Owners {
    let node_of_netns: BTreeMap<u64, usize> = recordings
        .iter()
        .enumerate()
        .filter(|(_, r)| r.netns != 0)
        .map(|(i, r)| (r.netns, i))
        .collect();
    // (netns, kind, device, reason, flow)
    type Group = (
        Option<u64>,
        String,
        Option<String>,
        Option<String>,
        Option<FlowId>,
    );
    let key = |e: &super::read::Event| -> Group {
        (
            e.netns,
            e.kind.clone(),
            e.ifname.clone(),
            e.reason.clone(),
            e.flow.clone(),
        )
    };
    let mut counts: BTreeMap<Group, BTreeMap<usize, u64>> = BTreeMap::new();
    let mut seen_in: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for (r, rec) in recordings.iter().enumerate() {
        for e in &rec.events {
            *counts.entry(key(e)).or_default().entry(r).or_default() += e.count;
            if let Some(ns) = e.netns {
                seen_in.entry(ns).or_default().insert(r);
            }
        }
    }
    let chosen: BTreeMap<Group, usize> = counts
        .into_iter()
        .map(|(k, by)| {
            let own = k.0.and_then(|ns| node_of_netns.get(&ns).copied());
            let best = by.values().copied().max().unwrap_or(0);
            let pick = own
                .filter(|o| by.get(o) == Some(&best))
                .or_else(|| by.iter().find(|(_, n)| **n == best).map(|(r, _)| *r))
                .unwrap_or(0);
            (k, pick)
        })
        .collect();
    let shared: BTreeSet<u64> = seen_in
        .iter()
        .filter(|(ns, rs)| rs.len() > 1 && !node_of_netns.contains_key(ns))
        .map(|(ns, _)| *ns)
        .collect();
    let owner = recordings
        .iter()
        .enumerate()
        .map(|(r, rec)| {
            rec.events
                .iter()
                .map(|e| {
                    if chosen.get(&key(e)) != Some(&r) {
                        return None;
                    }
                    Some(match e.netns {
                        Some(ns) if node_of_netns.contains_key(&ns) => {
                            recordings[node_of_netns[&ns]].node.clone()
                        }
                        Some(ns) if shared.contains(&ns) => "shared".to_owned(),
                        _ => rec.node.clone(),
                    })
                })
                .collect()
        })
        .collect();
    let crossed = seen_in.iter().filter(|(_, rs)| rs.len() > 1).count();
    Owners {
        owner,
        shared_netns: crossed,
    }
}

/// The same 5-tuple in several VNIs (overlapping pod addresses in several tunnels) is several
/// flows. Hops without a tunnel header go with the VNI their node's underlay saw, when it saw
/// one.
fn split_by_vni(observations: Vec<Obs>) -> BTreeMap<Option<u32>, Vec<Obs>> {
    let vnis: BTreeSet<u32> = observations.iter().filter_map(|o| o.vni).collect();
    let mut groups: BTreeMap<Option<u32>, Vec<Obs>> = BTreeMap::new();
    if vnis.len() <= 1 {
        groups.insert(vnis.first().copied(), observations);
        return groups;
    }
    let mut node_vnis: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    for o in &observations {
        if let Some(v) = o.vni {
            node_vnis.entry(o.node).or_default().insert(v);
        }
    }
    for o in observations {
        let vni = o.vni.or_else(|| {
            node_vnis
                .get(&o.node)
                .filter(|v| v.len() == 1)
                .and_then(|v| v.first().copied())
        });
        groups.entry(vni).or_default().push(o);
    }
    groups
}

/// The flow's path in order, its segments and where they lose.
fn flow_report(
    flow: &FlowId,
    vni: Option<u32>,
    mut hops: Vec<Obs>,
    names: &[String],
    rows: &[AnomalyRow],
) -> FlowReport {
    // Nodes in the order the flow crosses them, each node's hops in stage order.
    let mut first_stage: BTreeMap<usize, u8> = BTreeMap::new();
    for o in &hops {
        let s = stage(&o.role, &o.hop.dir);
        first_stage
            .entry(o.node)
            .and_modify(|m| *m = (*m).min(s))
            .or_insert(s);
    }
    hops.sort_by(|a, b| {
        (
            first_stage[&a.node],
            a.node,
            stage(&a.role, &a.hop.dir),
            &a.hop,
        )
            .cmp(&(
                first_stage[&b.node],
                b.node,
                stage(&b.role, &b.hop.dir),
                &b.hop,
            ))
    });
    let gso = hops.iter().any(|o| o.segs != o.packets);
    type Count = fn(&Obs) -> u64;
    type Edge = fn(&Obs) -> f64;
    let (unit, count, edge): (&'static str, Count, Edge) = if gso {
        ("segments", |o| o.segs, |o| o.edge_segs)
    } else {
        ("packets", |o| o.packets, |o| o.edge_packets)
    };
    let hop_ref = |o: &Obs| HopRef {
        node: names[o.node].clone(),
        ifname: o.hop.ifname.clone(),
        dir: o.hop.dir.clone(),
    };
    let refs: Vec<HopRef> = hops.iter().map(hop_ref).collect();

    // This flow's anomalies, and its drops charged to the hops of its path.
    let mut anomalies: BTreeMap<String, u64> = BTreeMap::new();
    let mut drops = vec![0u64; hops.len()];
    // (node, netns, ifname, kind, reason)
    type OffKey = (String, Option<u64>, Option<String>, String, Option<String>);
    let mut off_path: BTreeMap<OffKey, u64> = BTreeMap::new();
    for row in rows {
        if row.flow.as_ref() != Some(flow) {
            continue;
        }
        *anomalies.entry(row.kind.clone()).or_default() += row.count;
        if !row.dropped {
            continue;
        }
        let on_path = row.ifname.as_ref().and_then(|ifname| {
            let candidates: Vec<usize> = (0..hops.len())
                .filter(|&i| refs[i].node == row.node && &refs[i].ifname == ifname)
                .filter(|&i| row.dir.as_ref().is_none_or(|d| *d == refs[i].dir))
                .collect();
            // A device the flow crossed both ways: the kernel's drop hooks do not say which;
            // take the ingress (a packet is usually dropped on its way in).
            candidates
                .iter()
                .copied()
                .find(|&i| refs[i].dir == "ingress")
                .or(candidates.first().copied())
        });
        match on_path {
            Some(i) => drops[i] += row.count,
            None => {
                *off_path
                    .entry((
                        row.node.clone(),
                        row.netns,
                        row.ifname.clone(),
                        row.kind.clone(),
                        row.reason.clone(),
                    ))
                    .or_default() += row.count;
            }
        }
    }

    let mut segments = Vec::new();
    for i in 1..hops.len() {
        let (a, b) = (&hops[i - 1], &hops[i]);
        let (sent, received) = (count(a), count(b));
        // A packet fragmented (or reassembled) between the hops is one packet on one side and
        // several on the other: such counts do not compare.
        let refragmented = a.fragments != b.fragments;
        let lost = if refragmented {
            0
        } else {
            sent.saturating_sub(received)
        };
        // Drops after `a` (counted at its ingress) and before `b` (at its egress).
        let at_a = if a.hop.dir == "ingress" {
            drops[i - 1]
        } else {
            0
        };
        let at_b = if b.hop.dir == "egress" { drops[i] } else { 0 };
        let dropped = at_a + at_b;
        let cross = a.node != b.node;
        let uncertainty = if cross {
            (edge(a) + edge(b)).ceil() as u64
        } else {
            0
        };
        let location = if lost == 0 {
            None
        } else if cross && lost <= uncertainty {
            Some(Where::Edge)
        } else if cross
            && is_underlay(&a.role)
            && a.hop.dir == "egress"
            && is_underlay(&b.role)
            && b.hop.dir == "ingress"
        {
            Some(Where::Wire)
        } else if cross {
            Some(Where::Unobserved)
        } else if dropped > 0 {
            Some(Where::Hop)
        } else {
            Some(Where::Between)
        };
        let at = (location == Some(Where::Hop)).then(|| {
            if at_a >= at_b {
                refs[i - 1].clone()
            } else {
                refs[i].clone()
            }
        });
        segments.push(Segment {
            from: refs[i - 1].clone(),
            to: refs[i].clone(),
            sent,
            received,
            lost,
            gained: if refragmented {
                0
            } else {
                received.saturating_sub(sent)
            },
            dropped,
            location,
            at,
            uncertainty,
            note: refragmented.then_some(
                "fragmented or reassembled between these hops: packet counts do not compare",
            ),
        });
    }
    let outer = hops
        .iter()
        .filter(|o| is_underlay(&o.role) && o.hop.dir == "egress")
        .chain(hops.iter())
        .find_map(|o| o.outer.clone());
    let path: Vec<PathHop> = hops
        .iter()
        .zip(&refs)
        .zip(&drops)
        .map(|((o, at), d)| PathHop {
            at: at.clone(),
            role: o.role.clone(),
            packets: o.packets,
            bytes: o.bytes,
            segs: o.segs,
            drops: *d,
        })
        .collect();
    let sent = path
        .first()
        .map_or(0, |h| if gso { h.segs } else { h.packets });
    let received = path
        .last()
        .map_or(0, |h| if gso { h.segs } else { h.packets });
    let mut report = FlowReport {
        flow: flow.clone(),
        vni,
        outer,
        unit,
        sent,
        received,
        lost: 0,
        loss_pct: 0.0,
        path,
        segments,
        anomalies,
        drops_off_path: off_path
            .into_iter()
            .map(|((node, netns, ifname, kind, reason), count)| OffPath {
                node,
                netns,
                ifname,
                kind,
                reason,
                count,
            })
            .collect(),
    };
    report.lost = report.losses().map(|s| s.lost).sum();
    report.loss_pct = if sent > 0 {
        (report.lost as f64 * 100.0 / sent as f64 * 100.0).round() / 100.0
    } else {
        0.0
    };
    report
}

/// Values of intervals spread over bins of the window, each bin the share of each interval it
/// overlaps.
fn rebin(
    values: impl Iterator<Item = (Micros, Micros, f64)>,
    from: Micros,
    bin: Micros,
    bins: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; bins];
    // An interval across the window's edge counts whole, inside the window (as the totals
    // count it).
    let to = from + bin * bins as Micros;
    for (start, end, value) in values {
        let (start, end) = (start.max(from), end.min(to));
        if end <= start {
            continue;
        }
        let len = (end - start).max(1);
        let first = ((start - from).max(0) / bin) as usize;
        let last = (((end - from).max(0) / bin) as usize).min(bins.saturating_sub(1));
        for (b, slot) in out.iter_mut().enumerate().take(last + 1).skip(first) {
            let bin_start = from + b as Micros * bin;
            let overlap = end.min(bin_start + bin) - start.max(bin_start);
            if overlap > 0 {
                *slot += value * overlap as f64 / len as f64;
            }
        }
    }
    out
}

/// Per-bin differences (sent - received) of two nodes whose intervals do not line up are noisy:
/// a bin takes from its neighbour what the other node counted a moment later (+x, then -x). What
/// was lost so far can only grow, and no more than the cumulative difference at any later time:
/// the highest non-decreasing curve under the cumulative difference (its running minimum from
/// the end), whose steps are the losses per bin and whose end is the window's total.
fn losses_over_time(differences: &[f64]) -> Vec<f64> {
    let mut cumulative: Vec<f64> = differences
        .iter()
        .scan(0.0, |sum, d| {
            *sum += d;
            Some(*sum)
        })
        .collect();
    let mut floor = f64::INFINITY;
    for c in cumulative.iter_mut().rev() {
        floor = floor.min(*c);
        *c = floor.max(0.0);
    }
    let mut previous = 0.0;
    cumulative
        .into_iter()
        .map(|level| {
            let step = level - previous;
            previous = level;
            step
        })
        .collect()
}

#[cfg(test)]
pub(super) fn losses_over_time_for_tests(differences: &[f64]) -> Vec<f64> {
    losses_over_time(differences)
}

fn timeline(
    recordings: &[Recording],
    included: &[Included],
    from: Micros,
    to: Micros,
    rows: &[AnomalyRow],
    flows: &[FlowReport],
) -> Timeline {
    let mut bin = recordings
        .iter()
        .map(Recording::interval_len)
        .max()
        .unwrap_or(1_000_000)
        .max(1);
    const MAX_BINS: i64 = 400;
    if (to - from) / bin > MAX_BINS {
        bin = (to - from) / MAX_BINS + 1;
    }
    let bins = usize::try_from(((to - from) + bin - 1) / bin)
        .unwrap_or(1)
        .max(1);
    let per_second = 1_000_000.0 / bin as f64;
    let mut hops = Vec::new();
    for (r, rec) in recordings.iter().enumerate() {
        for (hop, series) in &rec.hops {
            let points = || {
                series
                    .points
                    .iter()
                    .filter(|p| included[r].counts[p.interval])
                    .map(|p| (rec.intervals[p.interval], p))
            };
            let drops = rebin(
                points().map(|(i, p)| (i.start(), i.end, p.drops as f64)),
                from,
                bin,
                bins,
            );
            let bits = rebin(
                points().map(|(i, p)| (i.start(), i.end, p.bytes as f64 * 8.0)),
                from,
                bin,
                bins,
            );
            hops.push((
                format!("{} {} {}", rec.node, hop.ifname, hop.dir),
                drops.iter().map(|v| v * per_second).collect(),
                bits.iter().map(|v| v * per_second).collect(),
            ));
        }
    }
    // Wire loss per pair of nodes: underlay egress of one minus underlay ingress of the other,
    // over the flows located on that wire.
    let mut wire: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for flow in flows {
        for seg in flow
            .segments
            .iter()
            .filter(|s| s.location == Some(Where::Wire))
        {
            let series = |hop: &HopRef, sign: f64| -> Vec<f64> {
                let Some(r) = recordings.iter().position(|r| r.node == hop.node) else {
                    return vec![0.0; bins];
                };
                let rec = &recordings[r];
                let id = HopId {
                    ifname: hop.ifname.clone(),
                    dir: hop.dir.clone(),
                };
                let points = rec
                    .flows
                    .get(&flow.flow)
                    .into_iter()
                    .flat_map(|hops| hops.iter())
                    .filter(|((h, vni), _)| *h == id && (flow.vni.is_none() || *vni == flow.vni))
                    .flat_map(|(_, s)| s.points.iter())
                    .filter(|p| included[r].counts[p.interval])
                    .map(|p| {
                        let i = rec.intervals[p.interval];
                        let n = if flow.unit == "segments" {
                            p.segs
                        } else {
                            p.packets
                        };
                        (i.start(), i.end, sign * n as f64)
                    });
                rebin(points, from, bin, bins)
            };
            let (sent, received) = (series(&seg.from, 1.0), series(&seg.to, -1.0));
            let slot = wire
                .entry((seg.from.node.clone(), seg.to.node.clone()))
                .or_insert_with(|| vec![0.0; bins]);
            for (b, v) in slot.iter_mut().enumerate() {
                *v += sent[b] + received[b];
            }
        }
    }
    let wire = wire
        .into_iter()
        .map(|((a, b), v)| {
            (
                format!("wire {a} → {b}"),
                losses_over_time(&v)
                    .into_iter()
                    .map(|x| x * per_second)
                    .collect(),
            )
        })
        .collect();
    let mut anomalies: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for row in rows {
        if row.at < from || row.at > to {
            continue;
        }
        let b = (((row.at - from) / bin) as usize).min(bins - 1);
        anomalies
            .entry(row.kind.clone())
            .or_insert_with(|| vec![0.0; bins])[b] += row.count as f64 * per_second;
    }
    let mut notes: Vec<(Micros, String, String)> = recordings
        .iter()
        .flat_map(|r| {
            r.notes
                .iter()
                .map(|(t, text)| (*t, r.node.clone(), text.clone()))
        })
        .filter(|(t, _, _)| *t >= from - bin && *t <= to)
        .collect();
    notes.sort();
    Timeline {
        from,
        bin,
        bins,
        hops,
        wire,
        anomalies,
        notes,
    }
}
