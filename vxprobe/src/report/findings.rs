//! Findings: what the person on call should read first, each with its fix. From the located
//! losses (the wire, between hops), from the anomalies, from the recordings themselves (events
//! lost, a killed recorder) and from `doctor --json` documents.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use super::model::{Finding, HopRef, Report, Severity, Where};

/// A `vxprobe doctor --json` document, with the node it is about.
#[derive(Clone, Debug)]
pub struct DoctorDoc {
    pub node: Option<String>,
    pub file: String,
    pub findings: Vec<DoctorFinding>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DoctorFinding {
    pub ifname: Option<String>,
    pub severity: Severity,
    pub code: String,
    pub message: String,
    pub fix: String,
    #[serde(default)]
    pub evidence: serde_json::Value,
}

/// Every finding, the most severe and largest first.
pub fn derive(report: &Report, doctor: &[DoctorDoc]) -> Vec<Finding> {
    let mut out = path_findings(report);
    out.extend(anomaly_findings(report));
    out.extend(recording_findings(report));
    for doc in doctor {
        for f in &doc.findings {
            out.push(Finding {
                severity: f.severity,
                code: f.code.clone(),
                node: doc.node.clone(),
                ifname: f.ifname.clone(),
                message: f.message.clone(),
                fix: f.fix.clone(),
                source: "doctor",
                count: 0,
                evidence: json!({"document": doc.file, "evidence": f.evidence}),
            });
        }
    }
    let rank = |source: &str| match source {
        "path" => 0,
        "anomalies" => 1,
        "doctor" => 2,
        _ => 3,
    };
    out.sort_by(|a, b| {
        (a.severity, rank(a.source), std::cmp::Reverse(a.count)).cmp(&(
            b.severity,
            rank(b.source),
            std::cmp::Reverse(b.count),
        ))
    });
    out
}

/// Losses no drop counter explains: on the wire, between two hops, between nodes.
fn path_findings(report: &Report) -> Vec<Finding> {
    struct Group {
        lost: u64,
        sent: u64,
        flows: Vec<serde_json::Value>,
    }
    let mut groups: BTreeMap<(Where, HopRef, HopRef), Group> = BTreeMap::new();
    for flow in &report.flows {
        for seg in flow.losses() {
            let Some(w) = seg.location else { continue };
            if w == Where::Hop {
                continue; // the drop events say it, with their reasons
            }
            let g = groups
                .entry((w, seg.from.clone(), seg.to.clone()))
                .or_insert(Group {
                    lost: 0,
                    sent: 0,
                    flows: Vec::new(),
                });
            g.lost += seg.lost;
            g.sent += seg.sent;
            g.flows.push(json!({
                "flow": flow.flow, "vni": flow.vni, "sent": seg.sent, "lost": seg.lost,
                "unit": flow.unit,
            }));
        }
    }
    groups
        .into_iter()
        .map(|((w, from, to), g)| {
            let share = crate::observe::judge::flow_loss_pct(g.sent, g.lost);
            let flows = g.flows.len();
            let of = if flows == 1 {
                "1 flow".to_owned()
            } else {
                format!("{flows} flows")
            };
            let (code, message, fix) = match w {
                Where::Wire => (
                    "wire-loss",
                    format!(
                        "{} packets of {of} lost on the wire between {} {} and {} {} ({share:.1}% of what left {}): no node counted them",
                        g.lost, from.node, from.ifname, to.node, to.ifname, from.node
                    ),
                    format!(
                        "the underlay network between {} and {} drops tunnel packets: look at the switches, NICs and cloud rules on that path (security groups or firewalls dropping UDP 4789, a smaller MTU on the path: `ping -M do -s 1472` between the nodes' addresses, interface error counters)",
                        from.node, to.node
                    ),
                ),
                Where::Between => (
                    "uncounted-loss",
                    format!(
                        "{} packets of {of} left the path on {} between {} {} and {} {} with no drop counted ({share:.1}%)",
                        g.lost, from.node, from.ifname, from.dir, to.ifname, to.dir
                    ),
                    format!(
                        "the packets went elsewhere or were freed without a drop reason: check where {} routes them (`ip route get DST from SRC iif {}`, `ip rule`, policy routing by mark), tc/XDP redirects (`tc filter show dev {}`), and devices freeing packets without a reason",
                        from.node, from.ifname, from.ifname
                    ),
                ),
                _ => (
                    "unobserved-loss",
                    format!(
                        "{} packets of {of} lost between {} {} and {} {}, where the hops in between were not recorded ({share:.1}%)",
                        g.lost, from.node, from.ifname, to.node, to.ifname
                    ),
                    "record the hops in between (the underlay devices: `record -i IFACE`) to locate it".to_owned(),
                ),
            };
            Finding {
                severity: Severity::Error,
                code: code.to_owned(),
                node: Some(from.node.clone()),
                ifname: Some(from.ifname.clone()),
                message,
                fix,
                source: "path",
                count: g.lost,
                evidence: json!({"from": from, "to": to, "lost": g.lost, "sent": g.sent, "flows": g.flows}),
            }
        })
        .collect()
}

/// What to do about a drop reason.
fn drop_fix(reason: &str, node: &str, ifname: &str) -> String {
    match reason {
        "NETFILTER_DROP" => format!(
            "a firewall rule {} drops them: `nft list ruleset` (or `iptables-save -c`) shows the rule whose counter grows; NetworkPolicies and kube-proxy rules end up there",
            if node == "shared" { "in that namespace".to_owned() } else { format!("on {node}") }
        ),
        "NO_SOCKET" => "nothing listens on the destination port (or a Service has no endpoint)".to_owned(),
        "SOCKET_RCVBUFF" | "SOCKET_BACKLOG" => "the receiving application does not read fast enough: its socket buffer overflows (raise SO_RCVBUF / net.core.rmem_max, or read faster)".to_owned(),
        "QDISC_DROP" | "TC_INGRESS" | "TC_EGRESS" | "TC_RECLASSIFY_LOOP" => format!(
            "a queue or tc program on {ifname} drops them: `tc -s qdisc show dev {ifname}`, `tc filter show dev {ifname} ingress` (and egress)"
        ),
        "NEIGH_FAILED" | "NEIGH_QUEUEFULL" => format!(
            "{node} cannot resolve the next hop's address: check the neighbour table (`ip neigh show dev {ifname}`)"
        ),
        "IP_NOROUTE" | "IP_INADDRERRORS" => format!("{node} has no route for them: `ip route get DST`"),
        "PKT_TOO_BIG" => "a packet above the next device's MTU: give pods the overlay's MTU (VXLAN over IPv4: the underlay's minus 50)".to_owned(),
        other => format!(
            "the kernel's drop reason {other} (include/net/dropreason-core.h says when it is used)"
        ),
    }
}

/// Anomalies grouped by node, kind, reason and device.
fn anomaly_findings(report: &Report) -> Vec<Finding> {
    #[derive(Default)]
    struct Group {
        count: u64,
        location: Option<String>,
        netns: Option<u64>,
        processes: BTreeMap<String, u64>,
        hops: BTreeMap<String, u64>,
        flows: BTreeMap<String, u64>,
        frames: Vec<serde_json::Value>,
    }
    // (node, kind, reason or "refused"/"seen", ifname)
    let mut groups: BTreeMap<(String, String, String, Option<String>), Group> = BTreeMap::new();
    for row in &report.anomalies {
        let variant = match (row.kind.as_str(), &row.reason, row.errno) {
            ("oversize", _, Some(_)) => "refused".to_owned(),
            ("oversize", None, None) => "seen".to_owned(),
            (_, Some(reason), _) => reason.clone(),
            _ => String::new(),
        };
        // Retransmits have no device, and a fragment crosses every hop of its path: one group
        // per node (the hops listed).
        let ifname = if matches!(row.kind.as_str(), "retransmit" | "fragment") {
            None
        } else {
            row.ifname.clone()
        };
        let g = groups
            .entry((row.node.clone(), row.kind.clone(), variant, ifname))
            .or_default();
        g.count += row.count;
        if let Some(i) = &row.ifname {
            *g.hops.entry(i.clone()).or_default() += row.count;
        }
        g.location = g.location.take().or(row.location.clone());
        g.netns = g.netns.or(row.netns);
        if let Some(p) = &row.process {
            *g.processes.entry(p.clone()).or_default() += row.count;
        }
        if let Some(f) = &row.flow {
            *g.flows.entry(f.to_string()).or_default() += row.count;
        }
        if let (Some(file), Some(frame)) = (&row.pcap, row.pcap_frame)
            && g.frames.len() < 5
        {
            g.frames.push(json!({"pcap": file, "frame": frame}));
        }
    }
    let recorded: std::collections::BTreeSet<String> =
        report.flows.iter().map(|f| f.flow.to_string()).collect();
    let mut out = Vec::new();
    for ((node, kind, variant, ifname), g) in groups {
        // A namespace several nodes' recordings see, whose events touch none of the recorded
        // flows: another workload of the shared kernel (a lab machine), said quietly.
        let unrelated = node == "shared" && !g.flows.keys().any(|f| recorded.contains(f));
        let place = match (&ifname, node.as_str()) {
            (Some(i), "shared") => format!(
                "{i} in netns {} (a namespace several nodes' recordings see)",
                g.netns.unwrap_or(0)
            ),
            (Some(i), _) => format!("{node} {i}"),
            (None, "shared") => format!("netns {}", g.netns.unwrap_or(0)),
            (None, _) => node.clone(),
        };
        let dev = ifname.clone().unwrap_or_else(|| "the device".to_owned());
        let loc = g
            .location
            .as_ref()
            .map(|l| format!(" in {l}"))
            .unwrap_or_default();
        let (severity, code, message, fix) = match kind.as_str() {
            "drop" if consequence(&variant) => (
                Severity::Info,
                "drops",
                format!("{} discarded at {place} ({variant}{loc})", packets(g.count)),
                "TCP discarding data it already has (after retransmits) or a socket closing with data queued: a consequence of the loss above, not a cause".to_owned(),
            ),
            "drop" => (
                Severity::Error,
                "drops",
                format!("{} dropped at {place} ({variant}{loc})", packets(g.count)),
                drop_fix(&variant, &node, &dev),
            ),
            "csum_error" => (
                Severity::Error,
                "csum-errors",
                format!("{} with bad checksums dropped at {place} ({variant}{loc})", packets(g.count)),
                "checksums are corrupted or never filled in on the way: a device or user-space engine whose checksum offload is wrong (`vxprobe doctor` names vxlan-tx-csum-off, engine-tx-csum-on, vxlan-csum-nat-bug)".to_owned(),
            ),
            "oversize" if variant == "refused" => (
                Severity::Warning,
                "refused-sends",
                format!(
                    "{} sends refused with EMSGSIZE (Message too long) at {place}{}",
                    g.count,
                    processes(&g.processes)
                ),
                format!("on a tap: `ethtool -K {dev} tso on gso on` (the engine writes packets above the tap's MTU); elsewhere, the sender's MTU is above the path's"),
            ),
            "oversize" if variant == "seen" => (
                Severity::Warning,
                "oversize",
                format!("{} above the MTU seen at {place}", packets(g.count)),
                "a device sends packets larger than the next one's MTU: give pods the overlay's MTU (`vxprobe doctor`: pod-mtu-mismatch, overlay-mtu-too-large)".to_owned(),
            ),
            "oversize" => (
                Severity::Error,
                "size-drops",
                format!("{} dropped for their size at {place} ({variant}{loc})", packets(g.count)),
                "packets above the path's MTU: give pods the overlay's MTU, and the overlay the underlay's minus 50 (`vxprobe doctor`)".to_owned(),
            ),
            "fragment" => (
                Severity::Warning,
                "fragments",
                format!(
                    "{} IP fragments crossed {place}{}",
                    g.hops.values().max().copied().unwrap_or(g.count),
                    if g.hops.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", g.hops.keys().cloned().collect::<Vec<_>>().join(", "))
                    }
                ),
                "the path's MTU is below the packets' size, so they are fragmented (slow, and lost whole when one fragment is): align the MTUs (`vxprobe doctor`)".to_owned(),
            ),
            "retransmit" => (
                Severity::Warning,
                "retransmits",
                format!("{} TCP segments retransmitted by senders seen from {place}", g.count),
                "the loss above costs throughput: fix it first".to_owned(),
            ),
            "frag_needed" => (
                Severity::Info,
                "frag-needed",
                format!("{} ICMP \"fragmentation needed\" sent at {place}", g.count),
                "senders learn a smaller path MTU: expected once per path; many mean an MTU mismatch (`vxprobe doctor`)".to_owned(),
            ),
            _ => continue,
        };
        // A node's own drops of no recorded flow (a socket closed with data queued, traffic
        // outside the selection) matter less than those on the paths.
        let off_paths = node != "shared"
            && kind == "drop"
            && ifname.is_none()
            && !g.flows.keys().any(|f| recorded.contains(f));
        let (severity, message) = if unrelated {
            (
                Severity::Info,
                format!("{message} (on no recorded flow: another workload of a shared kernel)"),
            )
        } else if off_paths && severity == Severity::Error {
            (Severity::Warning, format!("{message}, on no recorded flow"))
        } else {
            (severity, message)
        };
        let mut flows: Vec<(String, u64)> = g.flows.into_iter().collect();
        flows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        flows.truncate(5);
        out.push(Finding {
            severity,
            code: code.to_owned(),
            node: Some(node.clone()),
            ifname,
            message,
            fix,
            source: "anomalies",
            count: g.count,
            evidence: json!({
                "kind": kind,
                "reason": (!variant.is_empty() && variant != "refused" && variant != "seen").then_some(&variant),
                "location": g.location,
                "netns": g.netns,
                "flows": flows.iter().map(|(f, n)| json!({"flow": f, "count": n})).collect::<Vec<_>>(),
                "pcap_frames": g.frames,
            }),
        });
    }
    out
}

/// Drop reasons that are the transport's own housekeeping after a loss, not a loss.
fn consequence(reason: &str) -> bool {
    matches!(
        reason,
        "TCP_OLD_DATA"
            | "TCP_OLD_SEQUENCE"
            | "TCP_OFOMERGE"
            | "TCP_OLD_ACK"
            | "TCP_CLOSE"
            | "SOCKET_CLOSE"
            | "QUEUE_PURGE"
    )
}

/// "1 packet", "12 packets"
fn packets(n: u64) -> String {
    if n == 1 {
        "1 packet".to_owned()
    } else {
        format!("{n} packets")
    }
}

fn processes(p: &BTreeMap<String, u64>) -> String {
    if p.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = p.keys().map(String::as_str).take(3).collect();
    format!(" by {}", names.join(", "))
}

/// What the recordings say about themselves.
fn recording_findings(report: &Report) -> Vec<Finding> {
    let mut out = Vec::new();
    for n in &report.nodes {
        let mut add = |severity, code: &str, message: String, fix: &str, count| {
            out.push(Finding {
                severity,
                code: code.to_owned(),
                node: Some(n.node.clone()),
                ifname: None,
                message,
                fix: fix.to_owned(),
                source: "recording",
                count,
                evidence: json!({"recording": n.recording}),
            });
        };
        if n.lost_events > 0 {
            add(
                Severity::Warning,
                "events-lost",
                format!(
                    "{}'s recording missed {} events (its ring buffer was full): anomaly counts are low",
                    n.node, n.lost_events
                ),
                "record with a larger --ring-size",
                n.lost_events,
            );
        }
        if n.evicted > 0 {
            add(
                Severity::Info,
                "flows-evicted",
                format!(
                    "{}'s flow table was full: {} flow entries evicted, their counts since the last interval missing (hop counts are whole)",
                    n.node, n.evicted
                ),
                "record with a larger --max-flows, or filter (--host, --port)",
                n.evicted,
            );
        }
        if let Some(t) = &n.truncated {
            add(
                Severity::Warning,
                "recording-truncated",
                format!(
                    "{} is cut short at line {} ({}): read up to there",
                    n.recording, t.line, t.error
                ),
                "a recorder killed mid-write or a full disk: the report covers what was written",
                0,
            );
        } else if !n.complete {
            add(
                Severity::Info,
                "recording-unfinished",
                format!(
                    "{} has no summary line: its recorder did not stop cleanly (killed?); read up to its last interval",
                    n.recording
                ),
                "stop recorders with SIGINT or SIGTERM (or --duration) so they write their last interval",
                0,
            );
        }
    }
    out
}
