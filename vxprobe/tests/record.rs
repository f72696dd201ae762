//! `vxprobe record` as incident evidence: a recording with every kind of line checked against
//! the contract's schema, its pcapng read back with tshark, and a flood where every event is
//! either delivered or counted as lost.

mod common;

use std::{net::IpAddr, time::Duration};

use common::{Recorder, run::tshark_fields};
use serde_json::Value;
use vxprobe::lab::{Lab, POD_HOST_DEV, TAP_DEV, UNDERLAY_DEV, VXLAN_DEV, faults};

fn is_rfc3339_utc(ts: &str) -> bool {
    ts.len() >= 20
        && ts.as_bytes()[4] == b'-'
        && ts.as_bytes()[10] == b'T'
        && ts.ends_with('Z')
        && humantime::parse_rfc3339(ts).is_ok()
}

fn check_flow(line: &Value, flow: &Value) {
    let proto = flow["proto"]
        .as_str()
        .unwrap_or_else(|| panic!("flow.proto: {line}"));
    assert!(!proto.is_empty());
    for addr in ["src", "dst"] {
        let text = flow[addr]
            .as_str()
            .unwrap_or_else(|| panic!("flow.{addr}: {line}"));
        assert!(
            text.parse::<IpAddr>().is_ok(),
            "flow.{addr} is an IP: {line}"
        );
    }
    for port in ["sport", "dport"] {
        assert!(
            flow[port].as_u64().is_some_and(|p| p <= 65535),
            "flow.{port}: {line}"
        );
    }
}

fn check_device(line: &Value, with_dir: bool) {
    assert!(line["ifname"].is_string(), "ifname: {line}");
    assert!(line["ifindex"].as_u64().is_some(), "ifindex: {line}");
    assert!(
        line["netns"].as_u64().is_some_and(|n| n > 0),
        "netns: {line}"
    );
    if with_dir {
        assert!(
            line["dir"] == "ingress" || line["dir"] == "egress",
            "dir: {line}"
        );
    }
}

/// Every line against the contract: `kind` and `ts` always; per kind, its fields.
fn check_schema(lines: &[Value]) -> std::collections::BTreeSet<String> {
    let mut kinds = std::collections::BTreeSet::new();
    for line in lines {
        let kind = line["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("no kind: {line}"));
        kinds.insert(kind.to_owned());
        let ts = line["ts"]
            .as_str()
            .unwrap_or_else(|| panic!("no ts: {line}"));
        assert!(is_rfc3339_utc(ts), "ts is RFC 3339 UTC: {line}");
        if let Some(count) = line.get("count") {
            assert!(count.as_u64().is_some_and(|c| c >= 1), "count >= 1: {line}");
        }
        if let Some(flow) = line.get("flow") {
            check_flow(line, flow);
        }
        // The pod of a namespace or of a host-side veth, where one is named.
        if let Some(pod) = line.get("pod") {
            for field in ["namespace", "name", "uid"] {
                assert!(
                    pod[field].as_str().is_some_and(|v| !v.is_empty()),
                    "pod.{field}: {line}"
                );
            }
            assert!(
                matches!(kind, "hop" | "flow") || line["netns"].as_u64().is_some(),
                "{line}"
            );
        }
        if let Some(outer) = line.get("outer") {
            assert!(outer["vni"].as_u64().is_some(), "outer.vni: {line}");
            assert!(
                outer["src"]
                    .as_str()
                    .is_some_and(|a| a.parse::<IpAddr>().is_ok())
            );
        }
        match kind {
            "meta" => {
                assert!(line["schema_version"].as_u64().is_some(), "{line}");
                assert!(
                    line["hooks"].is_array() && line["hops"].is_array(),
                    "{line}"
                );
                let source = line["pods"]["source"].as_str().unwrap_or_default();
                assert!(
                    ["cri", "layout", "none"].contains(&source),
                    "pods.source: {line}"
                );
                assert!(line["pods"]["count"].as_u64().is_some(), "{line}");
            }
            "hop" => {
                check_device(line, true);
                for f in ["packets", "bytes", "drops"] {
                    assert!(line[f].as_u64().is_some(), "hop.{f}: {line}");
                }
                let loss = line["loss_pct"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("loss_pct: {line}"));
                assert!((0.0..=100.0).contains(&loss), "{line}");
            }
            "flow" => {
                check_device(line, true);
                assert!(line["flow"].is_object(), "{line}");
            }
            "drop" => {
                let reason = line["reason"].as_str().unwrap();
                assert!(!reason.starts_with("SKB_DROP_REASON_"), "{line}");
                assert!(line["location"].is_string(), "{line}");
                assert!(line["netns"].as_u64().is_some(), "{line}");
            }
            "csum_error" => {
                assert!(
                    line["reason"].as_str().unwrap().ends_with("_CSUM"),
                    "{line}"
                );
            }
            "oversize" => {
                assert!(line["len"].as_u64().is_some(), "{line}");
                if line.get("errno").is_some() {
                    assert_eq!(line["errno"], 90, "{line}");
                    assert!(line["func"].is_string(), "{line}");
                }
            }
            "fragment" => {
                check_device(line, true);
                assert!(line["offset"].as_u64().is_some(), "{line}");
                assert!(line["more"].is_boolean(), "{line}");
            }
            "retransmit" => {
                assert_eq!(line["flow"]["proto"], "tcp", "{line}");
                assert!(line["netns"].as_u64().is_some(), "{line}");
            }
            "frag_needed" => check_device(line, false),
            "lost" => assert!(line["count"].as_u64().is_some_and(|c| c >= 1), "{line}"),
            "evicted" => assert!(line["capacity"].as_u64().is_some(), "{line}"),
            "device" => {
                check_device(line, false);
                assert!(
                    ["added", "removed", "attach_failed"]
                        .contains(&line["event"].as_str().unwrap()),
                    "{line}"
                );
                if line["event"] == "attach_failed" {
                    assert!(line["reason"].is_string(), "{line}");
                }
            }
            "warning" => {
                assert!(line["text"].is_string(), "{line}");
                assert!(line["count"].as_u64().is_some_and(|c| c >= 1), "{line}");
            }
            "note" => assert!(line["text"].is_string(), "{line}"),
            "summary" => assert!(line["events"].is_object(), "{line}"),
            other => panic!("a kind the contract does not know: {other}: {line}"),
        }
    }
    kinds
}

#[test]
fn a_recording_with_every_kind_matches_the_schema_and_its_pcapng() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    faults::random_loss(&n1.netns, POD_HOST_DEV, 10).unwrap();
    faults::set_offload(&n1.netns, TAP_DEV, "tso", false).unwrap();
    faults::set_offload(&n1.netns, TAP_DEV, "gso", false).unwrap();
    let pcap = std::env::temp_dir().join(format!("vxprobe-evidence-{}.pcapng", std::process::id()));
    let mut rec = Recorder::start(
        &n1.netns,
        &[
            "--stats-interval",
            "200ms",
            "--ring-size",
            "65536",
            "--pcap",
            pcap.to_str().unwrap(),
            "-i",
            "cali*",
            "-i",
            VXLAN_DEV,
            "-i",
            UNDERLAY_DEV,
            "-i",
            TAP_DEV,
        ],
    );
    // Each fault, then its first line (the recorder names it as it comes).
    let seen = |rec: &mut Recorder, kind: &str| {
        rec.wait_for(&format!("a {kind} line"), Duration::from_secs(10), |l| {
            l["kind"] == kind
        });
    };
    // drop (the lossy hop) and retransmit (TCP across it)
    let mut server = Lab::command(&n2.pod.netns, "iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    faults::wait_tcp_listening(&n2.pod.netns, 5201, &mut server, Duration::from_secs(10)).unwrap();
    let client = Lab::exec(
        &n1.pod.netns,
        "iperf3",
        &["-c", &n2.pod.ip.to_string(), "-t", "1", "-b", "10M"],
    )
    .unwrap();
    assert!(
        client.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    let _ = server.wait();
    seen(&mut rec, "drop");
    seen(&mut rec, "retransmit");
    faults::bad_udp_checksums(&n1.pod.netns, n2.pod.ip, 5555, 5).unwrap();
    seen(&mut rec, "csum_error");
    lab.pod_datagrams(7777, 3000, 3, faults::Df::Clear).unwrap();
    seen(&mut rec, "fragment");
    assert_eq!(
        faults::packet_sends(&n1.netns, TAP_DEV, 2000, 4).unwrap(),
        4
    );
    seen(&mut rec, "oversize");
    // A flood the 64 KiB ring cannot hold: lost lines.
    faults::packet_sends(&n1.netns, TAP_DEV, 2000, 100_000).unwrap();
    seen(&mut rec, "lost");
    let lines = rec.stop();

    let kinds = check_schema(&lines);
    for kind in [
        "meta",
        "hop",
        "flow",
        "drop",
        "csum_error",
        "oversize",
        "fragment",
        "retransmit",
        "lost",
        "summary",
    ] {
        assert!(
            kinds.contains(kind),
            "the recording has {kind} lines: {kinds:?}"
        );
    }
    assert_eq!(
        lines.first().unwrap()["kind"],
        "meta",
        "the first line is meta"
    );
    assert_eq!(
        lines.last().unwrap()["kind"],
        "summary",
        "the last line is the summary"
    );

    // The pcapng: one packet per anomaly line with evidence, each commented with its kind.
    let with_evidence: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("pcap_frame").is_some())
        .collect();
    assert!(!with_evidence.is_empty());
    let frames = tshark_fields(&pcap, &["frame.number", "frame.comment"]);
    assert_eq!(
        frames.len(),
        with_evidence.len(),
        "one packet per anomaly event with evidence"
    );
    for line in &with_evidence {
        let n = line["pcap_frame"].as_u64().unwrap() as usize;
        let [number, comment] = &frames[n - 1][..] else {
            panic!("frame {n}: {:?}", frames[n - 1]);
        };
        let kind = line["kind"].as_str().unwrap();
        assert!(
            *number == n.to_string() && comment.starts_with(&format!("{kind} ")),
            "frame {n} is the {kind}: {number} {comment}"
        );
        if let Some(reason) = line["reason"].as_str() {
            assert!(comment.contains(&format!("reason={reason}")), "{comment}");
        }
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["evidence_packets"], with_evidence.len() as u64);
    let _ = std::fs::remove_file(&pcap);
}

/// Under a flood of refused sends, what the kernel generated is either delivered or counted as
/// lost (per kind), and vxprobe's memory stays bounded.
#[test]
fn a_flood_is_delivered_or_counted_as_lost() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let node = &lab.nodes[0].netns;
    faults::set_offload(node, TAP_DEV, "tso", false).unwrap();
    faults::set_offload(node, TAP_DEV, "gso", false).unwrap();
    let mut rec = Recorder::start(
        node,
        &[
            "--stats-interval",
            "200ms",
            "--ring-size",
            "65536",
            "-i",
            TAP_DEV,
        ],
    );
    const N: u32 = 300_000;
    let refused = faults::packet_sends(node, TAP_DEV, 2000, N).unwrap();
    assert_eq!(refused, N);
    let me = std::process::id();
    // Every refused send is a line or in a `lost` count (checked exactly below).
    rec.wait_until(
        "every refused send delivered or lost",
        Duration::from_secs(30),
        |lines| {
            lines
                .iter()
                .map(|l| match l["kind"].as_str() {
                    Some("oversize") if l["process"]["pid"] == me => {
                        l["count"].as_u64().unwrap_or(1)
                    }
                    Some("lost") if l["event_kind"] == "oversize" => l["count"].as_u64().unwrap(),
                    _ => 0,
                })
                .sum::<u64>()
                >= u64::from(N)
        },
    );
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", rec.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
        })
        .unwrap();
    let misses = common::recursion_misses_of(rec.pid());
    let lines = rec.stop();
    // Runs of the programs the kernel skipped (nested on a CPU) are in the summary: what the
    // programs' fdinfo said before the end, or more.
    let summary = lines.last().unwrap();
    let reported = summary["recursion_misses"]
        .as_u64()
        .unwrap_or_else(|| panic!("recursion_misses in {summary}"));
    assert!(reported >= misses, "{reported} < {misses}: {summary}");
    eprintln!("recursion misses: {reported} (fdinfo before the end: {misses})");
    // Delivered: a line each, or folded into a line's `count` (--event-lines).
    let delivered: u64 = lines
        .iter()
        .filter(|l| l["kind"] == "oversize" && l["errno"] == 90 && l["process"]["pid"] == me)
        .map(|l| l["count"].as_u64().unwrap_or(1))
        .sum();
    let lost: u64 = lines
        .iter()
        .filter(|l| l["kind"] == "lost" && l["event_kind"] == "oversize")
        .map(|l| l["count"].as_u64().unwrap())
        .sum();
    eprintln!("flood of {N}: delivered {delivered}, lost {lost}, peak RSS {rss_kib} KiB");
    assert!(lost > 0, "a 64 KiB ring overflows under this flood");
    assert_eq!(
        delivered + lost,
        u64::from(N),
        "delivered + lost == generated"
    );
    assert!(rss_kib < 100 * 1024, "peak RSS {rss_kib} KiB");
}
