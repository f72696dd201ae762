//! `vxprobe report` on real recordings: the lab's two nodes joined by a switch namespace no
//! vxprobe watches, a recorder in each node, real UDP between the pods, and three losses made
//! on purpose, each where the report must put it:
//! - on the wire: the switch's bridge drops a share of one flow's VXLAN packets (nft, bridge
//!   family, a counter); no node can count those;
//! - at a hop: node 2's forward chain drops a share of another flow arriving from
//!   `vxlan.calico` (a NETFILTER_DROP the kernel reports, charged to that hop);
//! - between two hops of node 1, with nothing counted: a share of a third flow is marked in
//!   prerouting (after `cali0`'s TC ingress saw it) and policy-routed into an ifb device. An
//!   ifb expects packets redirected to it by tc; one routed to it is freed in `ifb_xmit` with
//!   `dev_kfree_skb`, which is consume_skb, not kfree_skb: no drop reason, no drop event, only
//!   the device's own `rx_dropped` statistic. The packets simply never reach `vxlan.calico`.
//!
//! Each located loss must equal the nft counter that made it. Then the HTML page is opened in
//! headless Chromium; bad input gets one line and exit 2; `demo --report` writes everything.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Recorder, VXPROBE, is_root, must, time_scale};
use serde_json::Value;
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, UNDERLAY_DEV, VXLAN_DEV, faults};

/// Datagrams per flow.
const N: u64 = 1000;
const WIRE_PORT: u16 = 7000;
const HOP_PORT: u16 = 7001;
const BETWEEN_PORT: u16 = 7002;

/// Waits for `ready` with a deadline, saying what it waited for.
fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let limit = limit * time_scale();
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn nft_counter(netns: &str, family: &str, table: &str, name: &str) -> u64 {
    must(netns, "nft", &["list", "counter", family, table, name])
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter {name} in {family} {table} of {netns}"))
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vxprobe-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two recordings of one incident, and what the kernel counted of each loss.
struct Incident {
    dir: PathBuf,
    recordings: [PathBuf; 2],
    pcaps: [PathBuf; 2],
    wire: u64,
    hop: u64,
    between: u64,
    /// What the ifb device counted as dropped (its own statistic, no drop event).
    ifb_dropped: u64,
}

impl Incident {
    /// `report`'s inputs: both recordings, each pcapng after `--pcap`.
    fn with_pcaps(&self) -> Vec<&str> {
        let mut args: Vec<&str> = self
            .recordings
            .iter()
            .map(|r| r.to_str().unwrap())
            .collect();
        for pcap in &self.pcaps {
            args.extend(["--pcap", pcap.to_str().unwrap()]);
        }
        args
    }
}

fn record_incident(name: &str) -> Incident {
    let dir = scratch(name);
    let lab = Lab::build(&LabOptions {
        switch: true,
        ..LabOptions::default()
    })
    .expect("building the lab with a switch");
    let [n1, n2] = &lab.nodes;
    let sw = lab.switch.clone().unwrap();
    // The wire: the switch drops a tenth of flow 7000's VXLAN packets (the inner UDP
    // destination port sits 52 bytes into the outer UDP header: UDP 8, VXLAN 8, Ethernet 14,
    // IPv4 20, then the port at 2).
    faults::nft(
        &sw,
        &format!(
            "table bridge vxp_switch {{\n counter wire {{ }}\n chain forward {{\n  type filter hook forward priority 0;\n  \
             udp dport 4789 @th,416,16 {WIRE_PORT} numgen random mod 10 == 0 counter name wire drop\n }}\n}}\n"
        ),
    )
    .unwrap();
    // A hop: node 2 drops an eighth of flow 7001 arriving from the tunnel.
    faults::nft(
        &n2.netns,
        &format!(
            "table inet vxp_hop {{\n counter hop {{ }}\n chain forward {{\n  type filter hook forward priority 0;\n  \
             iifname \"{VXLAN_DEV}\" udp dport {HOP_PORT} numgen random mod 8 == 0 counter name hop drop\n }}\n}}\n"
        ),
    )
    .unwrap();
    // Between two hops of node 1: an eighth of flow 7002 routed into an ifb device.
    for args in [
        "link add vxpifb type ifb",
        "link set vxpifb up",
        &format!("route add {}/32 dev vxpifb table 118", n2.pod.ip),
        "rule add fwmark 0x76 lookup 118",
    ] {
        must(&n1.netns, "ip", &args.split(' ').collect::<Vec<_>>());
    }
    faults::nft(
        &n1.netns,
        &format!(
            "table ip vxp_misroute {{\n counter between {{ }}\n chain prerouting {{\n  type filter hook prerouting priority mangle;\n  \
             iifname \"{POD_HOST_DEV}\" udp dport {BETWEEN_PORT} numgen random mod 8 == 0 counter name between meta mark set 0x76\n }}\n}}\n"
        ),
    )
    .unwrap();
    let sinks: Vec<_> = [WIRE_PORT, HOP_PORT, BETWEEN_PORT]
        .iter()
        .map(|&port| faults::udp_sink(&n2.pod.netns, port).unwrap())
        .collect();

    let recordings = [dir.join("node1.jsonl"), dir.join("node2.jsonl")];
    let pcaps = [dir.join("node1.pcapng"), dir.join("node2.pcapng")];
    let recorders: Vec<Recorder> = (0..2)
        .map(|i| {
            Recorder::start(
                &lab.nodes[i].netns,
                &[
                    "--node",
                    &format!("node{}", i + 1),
                    "--stats-interval",
                    "200ms",
                    "-i",
                    POD_HOST_DEV,
                    "-i",
                    VXLAN_DEV,
                    "-i",
                    UNDERLAY_DEV,
                    "-o",
                    recordings[i].to_str().unwrap(),
                    "--pcap",
                    pcaps[i].to_str().unwrap(),
                ],
            )
        })
        .collect();
    // Traffic starts once both recordings have their first interval: every packet falls in the
    // window they share.
    for file in &recordings {
        wait_until(
            &format!("hop line in {}", file.display()),
            Duration::from_secs(10),
            || std::fs::read_to_string(file).is_ok_and(|t| t.contains("\"kind\":\"hop\"")),
        );
    }
    let received_before = faults::snmp(&n2.pod.netns, "Ip", "InReceives").unwrap();
    for _ in 0..(N / 100) {
        for port in [WIRE_PORT, HOP_PORT, BETWEEN_PORT] {
            lab.pod_datagrams(port, 200, 100, faults::Df::Default)
                .unwrap();
        }
        // Bursts of 100 per flow, paced so no backlog queue overflows.
        std::thread::sleep(Duration::from_millis(20));
    }
    let counters = || {
        (
            nft_counter(&sw, "bridge", "vxp_switch", "wire"),
            nft_counter(&n2.netns, "inet", "vxp_hop", "hop"),
            nft_counter(&n1.netns, "ip", "vxp_misroute", "between"),
        )
    };
    // Every datagram either arrived at pod 2 or was taken by one of the three rules.
    wait_until(
        "every datagram to have arrived at pod 2 or been taken by a rule",
        Duration::from_secs(10),
        || {
            let (w, h, b) = counters();
            let received =
                faults::snmp(&n2.pod.netns, "Ip", "InReceives").unwrap() - received_before;
            received + w + h + b == 3 * N
        },
    );
    let (wire, hop, between) = counters();
    let ifb: Value = serde_json::from_str(&must(
        &n1.netns,
        "ip",
        &["-s", "-j", "link", "show", "vxpifb"],
    ))
    .unwrap();
    let ifb_dropped = ifb[0]["stats64"]["rx"]["dropped"].as_u64().unwrap();
    for rec in recorders {
        rec.stop();
    }
    for sink in sinks {
        sink.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    assert!(
        wire > 30 && hop > 30 && between > 30,
        "the rules dropped {wire}, {hop}, {between}"
    );
    // A misconfiguration for doctor to name: node 1's pod veth above the overlay's MTU.
    must(
        &n1.netns,
        "ip",
        &["link", "set", POD_HOST_DEV, "mtu", "1500"],
    );
    let doctor = common::run::output_ok(
        Command::new("ip").args(["netns", "exec", &n1.netns, VXPROBE, "doctor", "--json"]),
    );
    std::fs::write(dir.join("node1-doctor.json"), &doctor.stdout).unwrap();
    Incident {
        dir,
        recordings,
        pcaps,
        wire,
        hop,
        between,
        ifb_dropped,
    }
}

/// Runs `vxprobe report ARGS`; returns (exit code, stdout, stderr).
fn run_report(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(VXPROBE)
        .arg("report")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running vxprobe report");
    (
        out.status.code().expect("report exits by itself"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn report_json(incident: &Incident, extra: &[&str]) -> Value {
    let mut args = incident.with_pcaps();
    args.extend(["--format", "json"]);
    args.extend(extra);
    let (code, stdout, stderr) = run_report(&args);
    assert_eq!(code, 0, "report failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn flow_to(report: &Value, dport: u16) -> &Value {
    report["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["flow"]["dport"] == dport && f["flow"]["proto"] == "udp")
        .unwrap_or_else(|| panic!("no flow to port {dport} in {:#}", report["flows"]))
}

const PATH: [&str; 6] = [
    "node1 cali0 ingress",
    "node1 vxlan.calico egress",
    "node1 eth0 egress",
    "node2 eth0 ingress",
    "node2 vxlan.calico ingress",
    "node2 cali0 egress",
];

fn hop_name(h: &Value) -> String {
    format!(
        "{} {} {}",
        h["node"].as_str().unwrap(),
        h["ifname"].as_str().unwrap(),
        h["dir"].as_str().unwrap()
    )
}

/// The flow crossed the six hops in order, lost `lost` in segment `at` (located `place`), and
/// nothing anywhere else.
fn assert_loss(flow: &Value, at: usize, lost: u64, place: &str) {
    let path: Vec<String> = flow["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(hop_name)
        .collect();
    assert_eq!(path, PATH, "{flow:#}");
    assert_eq!(flow["unit"], "packets");
    assert_eq!(flow["sent"], N, "{flow:#}");
    assert_eq!(flow["received"], N - lost, "{flow:#}");
    assert_eq!(flow["lost"], lost, "{flow:#}");
    let segments = flow["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 5);
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(hop_name(&s["from"]), PATH[i]);
        assert_eq!(hop_name(&s["to"]), PATH[i + 1]);
        if i == at {
            assert_eq!(s["lost"], lost, "segment {i}: {s:#}");
            assert_eq!(s["sent"], s["received"].as_u64().unwrap() + lost, "{s:#}");
            assert_eq!(s["where"], place, "segment {i}: {s:#}");
        } else {
            assert_eq!(s["lost"], 0, "segment {i}: {s:#}");
            assert!(s["where"].is_null(), "{s:#}");
        }
    }
}

#[test]
fn report_locates_each_loss_on_the_wire_at_a_hop_or_between_hops_exactly() {
    if !is_root() {
        return;
    }
    let incident = record_incident("json");
    let report = report_json(&incident, &[]);
    assert_eq!(report["nodes"][0]["node"], "node1");
    assert_eq!(report["nodes"][1]["node"], "node2");
    assert_eq!(report["nodes"][0]["named"], true, "named by the meta line");
    // One kernel, one clock: no skew applied (measured within what counts per interval can
    // tell, or not measurable from so little traffic on a loaded machine; the unit tests
    // measure skews of seconds).
    assert_eq!(
        report["window"]["skew"][0]["applied"], false,
        "{:#}",
        report["window"]
    );

    // The wire: node 1's underlay egress to node 2's underlay ingress, the switch's count.
    let wire = flow_to(&report, WIRE_PORT);
    assert_loss(wire, 2, incident.wire, "wire");
    assert_eq!(wire["vni"], 4096);
    assert_eq!(wire["outer"]["dport"], 4789);
    // Both recorders saw the switch's drops (one kernel): counted once, off the path. (Pod 2's
    // socket may also have overflowed on a loaded machine: SOCKET_RCVBUFF, after the path.)
    let off: Vec<&Value> = wire["drops_off_path"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["reason"] == "NETFILTER_DROP")
        .collect();
    assert_eq!(off.len(), 1, "{off:#?}");
    assert_eq!(off[0]["node"], "shared");
    assert_eq!(off[0]["ifname"], "sw2");
    assert_eq!(off[0]["count"], incident.wire);

    // At node 2's vxlan.calico ingress, where the kernel counted every drop.
    let hop = flow_to(&report, HOP_PORT);
    assert_loss(hop, 4, incident.hop, "hop");
    let s = &hop["segments"][4];
    assert_eq!(s["dropped"], incident.hop);
    assert_eq!(hop_name(&s["at"]), "node2 vxlan.calico ingress");
    assert_eq!(hop["path"][4]["drops"], incident.hop);
    // Its drop events: those at the hop, and any after the path (pod 2's socket buffer, on a
    // loaded machine).
    assert_eq!(
        hop["anomalies"]["drop"].as_u64().unwrap(),
        incident.hop + off_path_drops(hop),
        "{hop:#}"
    );

    // Between node 1's cali0 ingress and vxlan.calico egress: gone, and no drop counted.
    let between = flow_to(&report, BETWEEN_PORT);
    assert_loss(between, 0, incident.between, "between");
    assert_eq!(between["segments"][0]["dropped"], 0);
    assert_eq!(
        incident.ifb_dropped, incident.between,
        "the ifb freed each one"
    );
    // consume_skb is no drop: no event anywhere on the path (pod 2's socket aside).
    assert!(
        between["path"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["drops"] == 0),
        "{between:#}"
    );
    assert_eq!(
        between["anomalies"]["drop"].as_u64().unwrap_or(0),
        off_path_drops(between),
        "{between:#}"
    );

    // Worst first; findings name the wire and the uncounted loss, and the drop with its rule.
    let codes: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    for code in ["wire-loss", "uncounted-loss", "drops"] {
        assert!(codes.contains(&code), "no {code} finding: {codes:?}");
    }
    let wire_finding = common::run::element(&report["findings"], "code", "wire-loss");
    assert_eq!(wire_finding["count"], incident.wire);
    // Anomaly rows carry their evidence frame, read back from the pcapng.
    let framed: Vec<&Value> = report["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["pcap_frame"].is_u64())
        .collect();
    assert!(!framed.is_empty());
    for a in framed {
        let comment = a["pcap_comment"]
            .as_str()
            .unwrap_or_else(|| panic!("{a:#}"));
        assert!(
            comment.starts_with(a["kind"].as_str().unwrap()),
            "frame {} of {}: {comment}",
            a["pcap_frame"],
            a["pcap"]
        );
    }

    // A doctor document, its node named by the file name: its findings join the report's.
    let doctor = incident.dir.join("node1-doctor.json");
    let with_doctor = report_json(&incident, &["--doctor", doctor.to_str().unwrap()]);
    let from_doctor: Vec<&Value> = with_doctor["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["source"] == "doctor")
        .collect();
    assert!(
        from_doctor.iter().any(|f| f["code"] == "pod-mtu-mismatch"
            && f["node"] == "node1"
            && f["ifname"] == POD_HOST_DEV),
        "{from_doctor:#?}"
    );

    // Markdown: the summary and the path tables.
    let (code, md, stderr) = run_report(&[
        incident.recordings[0].to_str().unwrap(),
        incident.recordings[1].to_str().unwrap(),
        "--format",
        "md",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(md.contains("## Summary") && md.contains("## Paths"), "{md}");
    assert!(
        md.contains(&format!(
            "| node1 eth0 egress | node2 eth0 ingress | 1,000 | {} | **{}** | on the wire |",
            grouped(N - incident.wire),
            incident.wire
        )),
        "{md}"
    );

    let _ = std::fs::remove_dir_all(&incident.dir);
}

/// A flow's drop events off its path (`drops_off_path`).
fn off_path_drops(flow: &Value) -> u64 {
    flow["drops_off_path"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter(|d| d["kind"] == "drop")
                .map(|d| d["count"].as_u64().unwrap())
                .sum()
        })
        .unwrap_or(0)
}

/// 1234 as "1,234", as the report writes counts.
fn grouped(n: u64) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

/// Headless Chromium (Debian's), with a fresh profile, no network of its own: `args` and the
/// page; waits for it with a deadline.
fn chromium(profile: &Path, args: &[&str], page: &Path) -> std::process::Output {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running chromium (cargo xtask setup installs it)");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut { stdout }, &mut out);
        out
    });
    let limit = Duration::from_secs(90) * time_scale();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = Vec::new();
    let _ = std::io::Read::read_to_end(&mut child.stderr.take().unwrap(), &mut stderr);
    std::process::Output {
        status,
        stdout: reader.join().unwrap(),
        stderr,
    }
}

#[test]
fn the_html_report_opens_in_chromium_with_summary_paths_and_plots() {
    if !is_root() {
        return;
    }
    let incident = record_incident("html");
    let page = incident.dir.join("report.html");
    let mut args = incident.with_pcaps();
    args.extend(["-o", page.to_str().unwrap()]);
    let (code, _, stderr) = run_report(&args);
    assert_eq!(code, 0, "{stderr}");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing to fetch.
    for outside in [
        "src=", "href=", "<script", "<link", "@import", "url(http", "url(//",
    ] {
        assert!(!html.contains(outside), "the page refers to {outside}");
    }

    let profile = incident.dir.join("chromium-profile");
    let dom = chromium(&profile, &["--dump-dom"], &page);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    // The summary first, with the worst flow and the wire.
    let summary = dom.find("id=\"summary\"").expect("a summary section");
    let paths = dom.find("id=\"paths\"").expect("a paths section");
    let plots = dom.find("id=\"plots\"").expect("a plots section");
    assert!(
        summary < paths && paths < plots,
        "summary, then paths, then plots"
    );
    let head = &dom[summary..paths];
    assert!(
        head.contains("3 / 3"),
        "three flows of three losing: {head}"
    );
    assert!(
        head.contains("on the wire between node1 eth0 and node2 eth0"),
        "{head}"
    );
    assert!(
        head.contains("wire-loss") && head.contains("Fix:"),
        "{head}"
    );
    // Each losing flow's path drawn, with its counts.
    let drawn = &dom[paths..plots];
    assert_eq!(
        drawn.matches("<svg class=\"path\"").count(),
        3,
        "three paths"
    );
    assert!(
        drawn.contains(&format!("−{}", incident.wire)),
        "the wire's loss on the path"
    );
    assert!(drawn.contains(&grouped(N - incident.wire)));
    // Three charts, each an SVG with lines.
    for id in ["plot-loss", "plot-anomalies", "plot-throughput"] {
        let at = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no {id}"));
        let figure = &dom[at..at + dom[at..].find("</figure>").unwrap()];
        assert!(
            figure.contains("<svg") && figure.contains("<polyline"),
            "{id}: {figure}"
        );
    }
    // The anomalies with their evidence frames (from whichever recorder kept them: a recorder
    // flooded by another test's events may have missed its own).
    assert!(dom.contains("id=\"anomalies\"") && dom.contains(".pcapng #"));

    let shot = incident.dir.join("report.png");
    let out = chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,1800",
        ],
        &page,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    // Kept for a person to look at.
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    std::fs::copy(&shot, &keep).unwrap();
    std::fs::copy(&page, keep.with_extension("html")).unwrap();
    eprintln!("screenshot: {}", keep.display());
    let _ = std::fs::remove_dir_all(&incident.dir);
}

/// Runs `vxprobe record` in a lab node for a moment, to a file (`--node` when `node` is not
/// empty).
fn short_recording(lab: &Lab, node: &str, file: &Path) {
    let named: &[&str] = if node.is_empty() {
        &[]
    } else {
        &["--node", node]
    };
    let mut args = named.to_vec();
    args.extend(["--duration", "1s", "--stats-interval", "200ms"]);
    args.extend(["-i", UNDERLAY_DEV, "-o", file.to_str().unwrap()]);
    common::run::record_in(&lab.nodes[0].netns, &args);
}

#[test]
fn bad_input_gets_one_line_and_exit_2_a_cut_recording_is_read_up_to_the_cut() {
    if !is_root() {
        return;
    }
    let dir = scratch("bad");
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let a = dir.join("a.jsonl");
    short_recording(&lab, "node1", &a);
    // Without --node, the node is the hostname.
    let unnamed = dir.join("unnamed.jsonl");
    short_recording(&lab, "", &unnamed);
    let meta: Value = serde_json::from_str(
        std::fs::read_to_string(&unnamed)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(meta["node"], hostname.trim(), "{meta}");
    let text = std::fs::read_to_string(&a).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let write = |name: &str, content: &str| -> String {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let twin = write("twin.jsonl", &text);
    // The same node's recording a day later, as node2: no time in common.
    let later: String = lines
        .iter()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let at = humantime::parse_rfc3339_weak(v["ts"].as_str().unwrap()).unwrap()
                + Duration::from_secs(86_400);
            v["ts"] = humantime::format_rfc3339_micros(at).to_string().into();
            if v["kind"] == "meta" {
                v["node"] = "node2".into();
            }
            format!("{v}\n")
        })
        .collect();
    let later = write("later.jsonl", &later);
    let schema = write(
        "schema.jsonl",
        &text.replacen("\"schema_version\":1", "\"schema_version\":99", 1),
    );
    let mut damaged_lines = lines.clone();
    damaged_lines[2] = "{\"kind\":\"hop\", garbage";
    let damaged = write("damaged.jsonl", &(damaged_lines.join("\n") + "\n"));
    let empty = write("empty.jsonl", "");
    let not_recording = write("hello.jsonl", "{\"hello\":1}\n");
    let garbage = write("garbage.pcapng", "not a capture");
    let a = a.display().to_string();
    let missing = dir.join("missing.jsonl").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![&a, &twin], "both from node \"node1\""),
        (vec![&a, &later], "do not overlap"),
        (
            vec![&schema],
            "schema_version 99 is not one this vxprobe reads",
        ),
        (vec![&damaged], "line 3 is not JSON"),
        (vec![&empty], "is empty"),
        (vec![&not_recording], "is not a vxprobe recording"),
        (vec![&missing], "cannot read"),
        (
            vec![&a, "-o", "report.txt"],
            "cannot tell the report's format",
        ),
        (vec![&a, "--pcap", &garbage], "is not a pcapng file"),
        (
            vec![&a, "--pcap", &garbage, "--pcap", &garbage],
            "more files than recordings",
        ),
        (
            vec![&a, "--doctor", &not_recording],
            "is not a `vxprobe doctor --json` document",
        ),
        (
            vec![&a, "-o", "/nonexistent/dir/report.html"],
            "cannot write to",
        ),
        (vec![&a, "--format", "pdf"], "pdf"),
        (vec![], "REC.jsonl"),
    ];
    for (args, expected) in cases {
        let (code, stdout, stderr) = run_report(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(
            stderr.starts_with("vxprobe: ") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }

    // A recorder killed while writing: the last line cut. Read up to it, said on one line.
    let cut = write("cut.jsonl", &text[..text.len() - 12]);
    let (code, stdout, stderr) = run_report(&[&cut]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("line {} is cut short", lines.len())),
        "{stderr}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["nodes"][0]["truncated"]["line"], lines.len());
    assert_eq!(report["nodes"][0]["complete"], false);
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "recording-truncated")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_report_writes_both_recordings_and_the_report() {
    if !is_root() {
        return;
    }
    let dir = scratch("demo");
    common::run::output_ok(
        Command::new(VXPROBE)
            .args(["demo", "--report"])
            .arg(&dir)
            .args(["--phase", "3s"])
            .stdin(Stdio::null()),
    );
    for name in [
        "node1.jsonl",
        "node1.pcapng",
        "node2.jsonl",
        "node2.pcapng",
        "report.html",
        "report.md",
        "report.json",
    ] {
        let len = std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
        assert!(len > 0, "{name} missing or empty");
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let nodes: Vec<&str> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["node1", "node2"]);
    // The iperf3 flow crossed both nodes; the switch phase lost some of it on the wire and
    // the random-loss phase at node 1's cali0 ingress.
    let tcp = report["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["flow"]["dport"] == 5201)
        .expect("the iperf3 flow");
    assert_eq!(tcp["path"].as_array().unwrap().len(), 6, "{tcp:#}");
    let lost_at = |place: &str| -> u64 {
        tcp["segments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["where"] == place)
            .map(|s| s["lost"].as_u64().unwrap())
            .sum()
    };
    assert!(lost_at("wire") > 0, "{:#}", tcp["segments"]);
    assert!(lost_at("hop") > 0, "{:#}", tcp["segments"]);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("id=\"summary\"") && html.contains("the switch between the nodes"));
    let _ = std::fs::remove_dir_all(&dir);
}
