//! What a recording writes, read back with tshark: the evidence keeps headers, not payload
//! (unless `--snaplen` says otherwise); each line's `ts` is its packet's time in the pcapng
//! (the kernel's clock, not the moment vxprobe read the event); a flood folds into `count`
//! lines with exact totals; `--max-output-size` bounds the files.

mod common;

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use common::{Recorder, netns_inode, run::tshark_fields};
use serde_json::Value;
use vxprobe::lab::{Lab, POD_HOST_DEV, faults};

/// `record` on node 1 at cali0 only, its evidence in `pcap`, with `args` (the interval and
/// the options a test is about).
fn record_with_evidence(lab: &Lab, pcap: &Path, args: &[&str]) -> Recorder {
    let mut all = args.to_vec();
    all.extend(["--pcap", pcap.to_str().unwrap(), "-i", POD_HOST_DEV]);
    Recorder::start(&lab.nodes[0].netns, &all)
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vxprobe-evidence-{}-{name}", std::process::id()))
}

/// Every packet of a pcapng file: (frame number, epoch seconds, captured bytes, original
/// length, comment), from tshark.
fn frames(pcap: &Path) -> Vec<(u64, f64, u64, u64, String)> {
    let fields = [
        "frame.number",
        "frame.time_epoch",
        "frame.cap_len",
        "frame.len",
        "frame.comment",
    ];
    tshark_fields(pcap, &fields)
        .into_iter()
        .map(|f| {
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].clone(),
            )
        })
        .collect()
}

/// The bytes of every packet, in order (pcap-file reads what tshark shows).
fn packet_bytes(pcap: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(pcap).unwrap();
    let mut reader = pcap_file::pcapng::PcapNgReader::new(&data[..]).unwrap();
    let mut packets = Vec::new();
    while let Some(block) = reader.next_block() {
        if let pcap_file::pcapng::Block::EnhancedPacket(p) = block.unwrap() {
            packets.push(p.data.into_owned());
        }
    }
    packets
}

fn epoch_seconds(ts: &str) -> f64 {
    humantime::parse_rfc3339(ts)
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Bad checksums and fragments with a long interval: each anomaly's `ts` equals its pcapng
/// block's time within 1 ms (both from the kernel's clock), although vxprobe reads the few
/// events only at the interval's end; the evidence stops at the innermost transport header
/// (no payload byte in the file) and the file is its owner's only.
#[test]
fn each_line_has_its_packets_time_and_the_evidence_only_headers() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let pcap = scratch("times.pcapng");
    let _ = std::fs::remove_file(&pcap);
    let mut rec = record_with_evidence(&lab, &pcap, &["--stats-interval", "2s"]);
    let pod2 = netns_inode(&n2.pod.netns);
    // Few events: no wakeup (one per 64 records), read when the interval ends (2 s later).
    let sent_from = std::time::SystemTime::now();
    faults::bad_udp_checksums(&n1.pod.netns, n2.pod.ip, 5555, 5).unwrap();
    lab.pod_datagrams(7777, 3000, 4, faults::Df::Clear).unwrap();
    let sent_by = std::time::SystemTime::now();
    rec.wait_total("the bad checksums", "count", 5, |l| {
        l["kind"] == "csum_error" && l["netns"] == pod2
    });
    rec.wait_total("the fragments at cali0", "count", 12, |l| {
        l["kind"] == "fragment" && l["ifname"] == POD_HOST_DEV
    });
    let lines = rec.stop();
    let mode = std::fs::metadata(&pcap).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the evidence is its owner's only");

    let frames = frames(&pcap);
    let bytes = packet_bytes(&pcap);
    let by_number: BTreeMap<u64, &(u64, f64, u64, u64, String)> =
        frames.iter().map(|f| (f.0, f)).collect();
    let mut checked = 0;
    for line in lines.iter().filter(|l| l.get("pcap_frame").is_some()) {
        let n = line["pcap_frame"].as_u64().unwrap();
        let (_, time, cap_len, len, comment) = by_number[&n];
        let kind = line["kind"].as_str().unwrap();
        assert!(comment.starts_with(kind), "frame {n}: {comment} for {line}");
        let ts = epoch_seconds(line["ts"].as_str().unwrap());
        // The kernel's time of the packet, not the moment vxprobe read it (up to 2 s later):
        // within the sends, give or take the clock's conversion.
        let secs = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        assert!(
            ts >= secs(sent_from) - 0.001 && ts <= secs(sent_by) + 0.001,
            "{kind} line ts {ts:.6} outside the sends ({:.6} to {:.6}): {line}",
            secs(sent_from),
            secs(sent_by)
        );
        assert!(
            (ts - time).abs() <= 0.001,
            "{kind} line ts {ts:.6} and frame {n} at {time:.6} are {:.6} s apart: {line}",
            (ts - time).abs()
        );
        let data = &bytes[n as usize - 1];
        assert_eq!(data.len() as u64, *cap_len);
        assert!(cap_len < len, "frame {n}: {cap_len} of {len} bytes kept");
        assert!(
            !contains(data, b"vxprobe-bad-csum") && !contains(data, b"vvvv"),
            "frame {n} ({kind}) holds payload: {data:02x?}"
        );
        if kind == "csum_error" {
            // The packet from its IP header: 20 bytes of IPv4, 8 of UDP.
            assert_eq!(*cap_len, 28, "{line}");
            checked += 1;
        }
        if kind == "fragment" && line["offset"] == 0 {
            // Ethernet 14, IPv4 20, UDP 8.
            assert_eq!(*cap_len, 42, "{line}");
        }
    }
    assert_eq!(checked, 5, "every csum_error line has its frame");
    let _ = std::fs::remove_file(&pcap);
}

/// `--snaplen N` keeps N bytes, payload included (the user asked for it).
#[test]
fn an_explicit_snaplen_keeps_that_many_bytes() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let pcap = scratch("snaplen.pcapng");
    let mut rec = record_with_evidence(
        &lab,
        &pcap,
        &["--stats-interval", "200ms", "--snaplen", "100"],
    );
    lab.pod_datagrams(7777, 3000, 2, faults::Df::Clear).unwrap();
    rec.wait_total("the fragments at cali0", "count", 6, |l| {
        l["kind"] == "fragment" && l["ifname"] == POD_HOST_DEV
    });
    rec.stop();
    let bytes = packet_bytes(&pcap);
    assert!(bytes.len() >= 6);
    for data in &bytes {
        assert_eq!(data.len(), 100);
    }
    assert!(bytes.iter().any(|d| contains(d, b"vvvv")), "payload kept");
    let _ = std::fs::remove_file(&pcap);
}

/// Sum of `count` (1 when absent) of the lines matching `filter`.
fn count_of(lines: &[Value], filter: impl Fn(&Value) -> bool) -> u64 {
    lines
        .iter()
        .filter(|l| filter(l))
        .map(|l| l["count"].as_u64().unwrap_or(1))
        .sum()
}

/// 2,000 datagrams of 3000 bytes: 6,000 fragments at cali0's ingress. At most 100 lines per
/// interval of that one (kind, hop, flow, reason), the rest in one `count` line per interval:
/// the counts add up to the kernel's fragment counter exactly, in far fewer lines.
#[test]
fn a_flood_of_fragments_folds_into_few_lines_with_exact_totals() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let pcap = scratch("flood.pcapng");
    let mut rec = record_with_evidence(&lab, &pcap, &["--stats-interval", "500ms"]);
    const DATAGRAMS: u32 = 2000;
    let fragments = u64::from(DATAGRAMS) * 3;
    lab.pod_datagrams(7777, 3000, DATAGRAMS, faults::Df::Clear)
        .unwrap();
    let at_cali0 =
        |l: &Value| l["kind"] == "fragment" && l["ifname"] == POD_HOST_DEV && l["dir"] == "ingress";
    rec.wait_hop(POD_HOST_DEV, "ingress", "fragments", fragments);
    rec.wait_total(
        "every fragment in a line or a count",
        "count",
        fragments,
        at_cali0,
    );
    let lines = rec.stop();
    let hop_fragments: u64 = lines
        .iter()
        .filter(|l| l["kind"] == "hop" && l["ifname"] == POD_HOST_DEV && l["dir"] == "ingress")
        .map(|l| l["fragments"].as_u64().unwrap())
        .sum();
    assert_eq!(hop_fragments, fragments, "the kernel's count");
    assert_eq!(
        count_of(&lines, at_cali0),
        fragments,
        "lines and counts add up"
    );
    let fragment_lines: Vec<&Value> = lines.iter().filter(|l| at_cali0(l)).collect();
    let folded: Vec<&&Value> = fragment_lines
        .iter()
        .filter(|l| l.get("count").is_some())
        .collect();
    let intervals = lines
        .iter()
        .filter(|l| l["kind"] == "hop" && l["ifname"] == POD_HOST_DEV && l["dir"] == "ingress")
        .count();
    eprintln!(
        "{fragments} fragments in {} lines ({} with a count) over {intervals} intervals",
        fragment_lines.len(),
        folded.len()
    );
    assert!(!folded.is_empty(), "the flood folded");
    assert!(
        fragment_lines.len() <= intervals * 101,
        "at most 100 lines and one count line per interval: {}",
        fragment_lines.len()
    );
    assert!(
        (fragment_lines.len() as u64) * 10 < fragments,
        "far fewer lines than fragments: {}",
        fragment_lines.len()
    );
    for line in &folded {
        assert!(line["count"].as_u64().unwrap() >= 1, "{line}");
        assert!(
            line.get("pcap_frame").is_none(),
            "no evidence for a count line: {line}"
        );
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    assert!(summary["events"]["fragment"].as_u64().unwrap() >= fragments);
    assert!(summary["folded"].as_u64().unwrap() > 0, "{summary}");
    let with_frames = lines
        .iter()
        .filter(|l| l.get("pcap_frame").is_some())
        .count();
    assert_eq!(
        packet_bytes(&pcap).len(),
        with_frames,
        "one packet per line with a frame"
    );
    let _ = std::fs::remove_file(&pcap);
}

/// `--max-output-size`: the output and the evidence together stay within the limit (plus the
/// note saying so and the summary), the summary's totals stay exact.
#[test]
fn the_output_size_is_bounded_and_the_summary_still_counts() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let pcap = scratch("bounded.pcapng");
    const LIMIT: u64 = 64 * 1024;
    let mut rec = record_with_evidence(
        &lab,
        &pcap,
        &[
            "--stats-interval",
            "200ms",
            "--event-lines",
            "0",
            "--max-output-size",
            "64K",
        ],
    );
    const DATAGRAMS: u64 = 1000;
    lab.pod_datagrams(7777, 3000, DATAGRAMS as u32, faults::Df::Clear)
        .unwrap();
    rec.wait_for("the note of the limit", Duration::from_secs(10), |l| {
        l["kind"] == "note"
            && l["text"]
                .as_str()
                .is_some_and(|t| t.contains("--max-output-size"))
    });
    let lines = rec.stop();
    let json_bytes: u64 = lines.iter().map(|l| l.to_string().len() as u64 + 1).sum();
    let pcap_bytes = std::fs::metadata(&pcap).unwrap().len();
    let note = lines.iter().position(|l| l["kind"] == "note").unwrap();
    let summary = lines.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    assert_eq!(
        note,
        lines.len() - 2,
        "nothing but the summary after the note"
    );
    let tail: u64 = lines[note..]
        .iter()
        .map(|l| l.to_string().len() as u64 + 1)
        .sum();
    eprintln!(
        "limit {LIMIT}: {json_bytes} bytes of lines, {pcap_bytes} of evidence, note and summary {tail}"
    );
    assert!(
        json_bytes - tail + pcap_bytes <= LIMIT,
        "{json_bytes} - {tail} + {pcap_bytes} > {LIMIT}"
    );
    assert!(
        summary["unwritten_lines"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        summary["events"]["fragment"].as_u64().unwrap() >= DATAGRAMS * 3,
        "the summary counts every fragment: {summary}"
    );
    // No line points at a packet the bounded evidence does not hold.
    let packets = packet_bytes(&pcap).len() as u64;
    let last_frame = lines.iter().filter_map(|l| l["pcap_frame"].as_u64()).max();
    assert!(
        last_frame.unwrap_or(0) <= packets,
        "a line points at frame {last_frame:?} of {packets}"
    );
    let _ = std::fs::remove_file(&pcap);
}
