//! `vxprobe agent` against real components: its /metrics against the kernel's own counters
//! (an nft rule dropping a share of one hop's packets) and against `record`; a device that
//! vanishes; a real Prometheus scraping it inside the lab node's namespace with the project's
//! rules. The image under podman is tests/image.rs; rules, manifests, dashboard tests/deploy.rs.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Recorder, agent::*, programs_of, still_loaded};
use serde_json::Value;
use vxprobe::{
    lab::{POD_HOST_DEV, UNDERLAY_DEV, VXLAN_DEV, http},
    sinks::metrics::FAMILIES,
};

/// (a) The kernel's count, record's count and the agent's count agree; every family is one the
/// metrics module lists; both formats; SIGTERM detaches everything and exits 0.
#[test]
fn metrics_match_the_nft_counter_and_record() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let n1 = &lab.nodes[0];
    drop_a_third_of_pings(&n1.netns);
    let mut args = vec![
        "--stats-interval",
        "200ms",
        "--node",
        "lab-node-1",
        "--flow-metrics",
        "5",
    ];
    args.extend(NODE_HOPS);
    let agent = Agent::start(&n1.netns, &args);
    let programs = programs_of(agent.pid());
    let mut rec_args = vec!["--stats-interval", "200ms"];
    rec_args.extend(NODE_HOPS);
    let rec = Recorder::start(&n1.netns, &rec_args);

    pings(&lab);
    let lines = rec.stop();
    let (seen, dropped) = (
        nft_counter(&n1.netns, "seen"),
        nft_counter(&n1.netns, "dropped"),
    );
    assert!(dropped > 30, "the rule dropped {dropped}");
    let recorded_packets =
        common::hop_totals(&lines, "packets")[&(POD_HOST_DEV.to_owned(), "ingress".to_owned())];
    let recorded_drops =
        common::hop_totals(&lines, "drops")[&(POD_HOST_DEV.to_owned(), "ingress".to_owned())];
    assert_eq!(recorded_drops, dropped, "record's hop lines");

    let m = wait_for_the_rule(&agent, seen, dropped);
    // The hop's drops: the rule's counter, all of them NETFILTER_DROP, no other hop charged.
    assert_eq!(sum(&m, "vxprobe_hop_drops_total", &CALI_IN), dropped as f64);
    let mut netfilter = CALI_IN.to_vec();
    netfilter.push(("reason", "NETFILTER_DROP"));
    assert_eq!(
        sum(&m, "vxprobe_hop_drops_total", &netfilter),
        dropped as f64
    );
    assert_eq!(
        sum(&m, "vxprobe_hop_drops_total", &[]),
        dropped as f64,
        "only cali0 ingress is charged: {m:#?}"
    );
    // Packets: what record counted at the same hop, and every packet the rule saw.
    let packets = sum(&m, "vxprobe_hop_packets_total", &CALI_IN);
    assert_eq!(packets, recorded_packets as f64, "record counted the same");
    assert_eq!(packets, seen as f64, "the rule saw what TC saw");
    // --flow-metrics: the pings' flow lost exactly what the rule dropped.
    let (pod1, pod2) = (
        lab.nodes[0].pod.ip.to_string(),
        lab.nodes[1].pod.ip.to_string(),
    );
    let ping_flow = [
        ("proto", "icmp"),
        ("src", pod1.as_str()),
        ("dst", pod2.as_str()),
    ];
    assert_eq!(
        sum(&m, "vxprobe_flow_drops_total", &ping_flow),
        dropped as f64,
        "{m:#?}"
    );
    let mut at_cali = ping_flow.to_vec();
    at_cali.extend(CALI_IN);
    assert!(sum(&m, "vxprobe_flow_packets_total", &at_cali) > 0.0);
    // Node-wide counters see every namespace (other labs too): at least the rule's drops.
    assert!(sum(&m, "vxprobe_drops_total", &[("reason", "NETFILTER_DROP")]) >= dropped as f64);
    assert!(sum(&m, "vxprobe_anomalies_total", &[("kind", "drop")]) >= dropped as f64);
    assert_eq!(sum(&m, "vxprobe_observed_devices", &[]), 3.0);
    assert_eq!(sum(&m, "vxprobe_node_info", &[("node", "lab-node-1")]), 1.0);
    assert_eq!(
        sum(
            &m,
            "vxprobe_hook_info",
            &[("signal", "drop"), ("hook", "tp_btf:kfree_skb")]
        ),
        1.0
    );

    // The Prometheus text format: every family listed, none other, and promtool's linter has
    // nothing to say.
    let text = agent.get("/metrics", None);
    assert_eq!(
        text.header("content-type"),
        Some(vxprobe::sinks::metrics::PROMETHEUS_CONTENT_TYPE)
    );
    let typed: Vec<&str> = text
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in &typed {
        assert!(
            FAMILIES.iter().any(|f| f.name == *name),
            "{name} is not in metrics::FAMILIES"
        );
    }
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (cargo xtask setup installs it)");
    std::io::Write::write_all(lint.stdin.as_mut().unwrap(), text.body.as_bytes()).unwrap();
    drop(lint.stdin.take());
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    // OpenMetrics for whoever asks for it first, as Prometheus does.
    let om = agent.get(
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(
        om.header("content-type"),
        Some(vxprobe::sinks::metrics::OPENMETRICS_CONTENT_TYPE)
    );
    assert!(om.body.ends_with("# EOF\n"));
    assert_eq!(
        sum(&samples(&om.body), "vxprobe_hop_drops_total", &CALI_IN),
        dropped as f64
    );
    assert_eq!(agent.get("/healthz", None).status, 200);
    assert_eq!(agent.get("/nothing-here", None).status, 404);

    // SIGTERM: exit 0, nothing left attached.
    let (code, stderr, took) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert!(
        still_loaded(&programs).is_empty(),
        "programs left after SIGTERM: {:?}",
        still_loaded(&programs)
    );
}

/// A device that vanishes loses its series once its last interval is counted; it comes back
/// with the device.
#[test]
fn vanished_devices_lose_their_series() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let n1 = &lab.nodes[0];
    let agent = Agent::start(
        &n1.netns,
        &[
            "--stats-interval",
            "200ms",
            "-i",
            VXLAN_DEV,
            "-i",
            UNDERLAY_DEV,
        ],
    );
    let vxlan = [("iface", VXLAN_DEV)];
    let series_of = |m: &BTreeMap<String, f64>| {
        m.keys()
            .filter(|k| k.contains(&format!("iface=\"{VXLAN_DEV}\"")))
            .count()
    };
    wait_for("vxlan.calico's series", Duration::from_secs(10), || {
        let m = agent.metrics();
        (sum(&m, "vxprobe_intervals_total", &[]) >= 1.0 && series_of(&m) > 0)
            .then_some(())
            .ok_or(format!("{} series", series_of(&m)))
    });
    let before = agent.metrics();
    assert_eq!(sum(&before, "vxprobe_hop_mtu_bytes", &vxlan), 1450.0);

    lab.delete_vxlan(0).unwrap();
    let gone = wait_for(
        "vxlan.calico's series to go",
        Duration::from_secs(10),
        || {
            let m = agent.metrics();
            (series_of(&m) == 0)
                .then_some(m.clone())
                .ok_or(format!("{} series left", series_of(&m)))
        },
    );
    assert_eq!(sum(&gone, "vxprobe_observed_devices", &[]), 1.0);
    assert_eq!(
        sum(
            &gone,
            "vxprobe_device_changes_total",
            &[("event", "removed")]
        ),
        1.0
    );

    lab.recreate_vxlan(0).unwrap();
    wait_for(
        "vxlan.calico's series to come back",
        Duration::from_secs(10),
        || {
            let m = agent.metrics();
            (series_of(&m) > 0 && sum(&m, "vxprobe_observed_devices", &[]) == 2.0)
                .then_some(())
                .ok_or(format!("{} series", series_of(&m)))
        },
    );
    // Ctrl-C ends it as SIGTERM does.
    let (code, stderr, _) = agent.stop_with(libc::SIGINT);
    assert_eq!(code, Some(0), "{stderr}");
}

/// A PromQL instant query through Prometheus' HTTP API: the result vector.
fn promql(netns: &str, addr: SocketAddr, query: &str) -> Result<Vec<Value>, String> {
    let r = http::get(
        netns,
        addr,
        &format!("/api/v1/query?query={}", http::query_escape(query)),
        None,
    )
    .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
    if v["status"] != "success" {
        return Err(r.body);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The value of a one-element PromQL result.
fn single_value(result: &[Value]) -> Option<f64> {
    match result {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// (b) Debian's Prometheus, inside the lab node's namespace, scrapes the agent (it asks for
/// OpenMetrics) with the project's rules loaded: PromQL gives the nft rule's figure, the
/// recording rule the hop's loss, and the loss alert goes pending.
#[test]
fn prometheus_scrapes_the_agent_and_evaluates_the_rules() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let n1 = &lab.nodes[0];
    drop_a_third_of_pings(&n1.netns);
    let mut args = vec!["--stats-interval", "200ms"];
    args.extend(NODE_HOPS);
    let agent = Agent::start(&n1.netns, &args);

    let dir = std::env::temp_dir().join(format!("vxprobe-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let rules = repo_root().join("deploy/prometheus/rules.yaml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: vxprobe\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            local(PORT)
        ),
    )
    .unwrap();
    let prom_addr = local(9090);
    let prometheus = Server(
        Command::new("ip")
            .args(["netns", "exec", &n1.netns, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (cargo xtask setup installs it)"),
    );
    wait_for(
        "Prometheus to be ready",
        Duration::from_secs(60),
        || match http::get(&n1.netns, prom_addr, "/-/ready", None) {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("{} {}", r.status, r.body.trim())),
            Err(e) => Err(e.to_string()),
        },
    );
    wait_for(
        "Prometheus' first scrape of the agent",
        Duration::from_secs(30),
        || {
            let up = promql(&n1.netns, prom_addr, r#"up{job="vxprobe"}"#)?;
            (single_value(&up) == Some(1.0))
                .then_some(())
                .ok_or(format!("up: {up:?}"))
        },
    );

    pings(&lab);
    let (seen, dropped) = (
        nft_counter(&n1.netns, "seen"),
        nft_counter(&n1.netns, "dropped"),
    );
    assert!(dropped > 30, "the rule dropped {dropped}");
    let m = wait_for_the_rule(&agent, seen, dropped);
    let packets = sum(&m, "vxprobe_hop_packets_total", &CALI_IN);

    let drops_query = r#"sum(vxprobe_hop_drops_total{iface="cali0",direction="ingress"})"#;
    let packets_query = r#"vxprobe_hop_packets_total{iface="cali0",direction="ingress"}"#;
    wait_for(
        "PromQL to give the rule's drops",
        Duration::from_secs(30),
        || {
            let drops = single_value(&promql(&n1.netns, prom_addr, drops_query)?);
            let seen_packets = single_value(&promql(&n1.netns, prom_addr, packets_query)?);
            (drops == Some(dropped as f64) && seen_packets == Some(packets))
                .then_some(())
                .ok_or(format!(
                    "drops {drops:?} (rule {dropped}), packets {seen_packets:?} (agent {packets})"
                ))
        },
    );
    // The recording rule: the hop loses the share the rule drops.
    let loss = wait_for(
        "the hop loss recording rule",
        Duration::from_secs(30),
        || {
            let r = promql(
                &n1.netns,
                prom_addr,
                r#"vxprobe:hop_loss:ratio_rate5m{iface="cali0",direction="ingress"}"#,
            )?;
            single_value(&r).ok_or(format!("{r:?}"))
        },
    );
    let injected = dropped as f64 / seen as f64;
    assert!(
        (loss - injected).abs() < 0.1,
        "loss {loss:.3} vs injected {injected:.3}"
    );
    wait_for(
        "VxprobeHopLoss to be pending",
        Duration::from_secs(30),
        || {
            let r = promql(
                &n1.netns,
                prom_addr,
                r#"ALERTS{alertname="VxprobeHopLoss",iface="cali0",direction="ingress"}"#,
            )?;
            r.iter()
                .any(|a| a["metric"]["alertstate"] == "pending")
                .then_some(())
                .ok_or(format!("{r:?}"))
        },
    );
    drop(prometheus);
    let (code, stderr, _) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
