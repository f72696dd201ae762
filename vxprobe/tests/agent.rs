//! `vxprobe agent` against real components: its /metrics against the kernel's own counters
//! (an nft rule dropping a share of one hop's packets) and against `record`; a real Prometheus
//! scraping it inside the lab node's namespace; the image under podman with the DaemonSet's
//! security context; the alert rules under promtool; the manifests under kubernetes-validate;
//! the dashboard's queries against the metrics the agent exports.

mod common;

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Recorder, VXPROBE, is_root, must, programs_of, still_loaded, time_scale};
use serde_json::Value;
use vxprobe::{
    lab::{Lab, LabOptions, POD_HOST_DEV, UNDERLAY_DEV, VXLAN_DEV, faults, http},
    metrics::{FAMILIES, Kind},
};

const PORT: u16 = vxprobe::agent::DEFAULT_PORT;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Polls `check` until it returns something, or panics after `limit` (scaled) naming `what`
/// and the last state seen.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let limit = limit * time_scale();
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("waited {limit:?} for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Sample lines of a text exposition: series (name and labels, as written) to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of the samples of `name` whose labels include every `name="value"` of `labels`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// A `vxprobe agent` inside a lab namespace, listening on 127.0.0.1:PORT there.
struct Agent {
    child: Child,
    netns: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Agent {
    fn start(netns: &str, args: &[&str]) -> Agent {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, VXPROBE, "agent", "--listen"])
            .arg(local(PORT).to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning vxprobe agent");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        });
        let mut agent = Agent {
            child,
            netns: netns.to_owned(),
            stderr: Some(stderr),
        };
        agent.wait_ready(local(PORT));
        agent
    }

    /// Waits for /readyz to answer 200 (everything attached).
    fn wait_ready(&mut self, addr: SocketAddr) {
        let netns = self.netns.clone();
        wait_for(
            "the agent's /readyz to say 200",
            Duration::from_secs(30),
            || {
                if let Some(status) = self.child.try_wait().unwrap() {
                    let stderr = self.stderr.take().unwrap().join().unwrap();
                    panic!("the agent exited before it was ready ({status}): {stderr}");
                }
                match http::get(&netns, addr, "/readyz", None) {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("{} {}", r.status, r.body.trim())),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn get(&self, target: &str, accept: Option<&str>) -> http::Response {
        http::get(&self.netns, local(PORT), target, accept).expect("GET from the agent")
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        let r = self.get("/metrics", None);
        assert_eq!(r.status, 200, "{}", r.body);
        samples(&r.body)
    }

    /// SIGTERM; returns the exit status, what it wrote on stderr and how long it took.
    fn stop(mut self) -> (Option<i32>, String, Duration) {
        let t0 = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let elapsed = t0.elapsed();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status.code(), stderr, elapsed)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops a third of the ICMP echo requests that pod 1 sends into node 1 (on cali0 ingress),
/// counting what it saw and dropped, as tests/drops.rs does.
fn drop_a_third_of_pings(netns: &str) {
    faults::nft(
        netns,
        &format!(
            "table inet vxp {{\n counter seen {{ }}\n counter dropped {{ }}\n chain vxp_forward {{\n  type filter hook forward priority 0;\n  \
             iifname \"{POD_HOST_DEV}\" counter name seen\n  \
             iifname \"{POD_HOST_DEV}\" icmp type echo-request numgen random mod 3 == 0 counter name dropped drop\n }}\n}}\n"
        ),
    )
    .expect("loading the nft rule");
}

fn nft_counter(netns: &str, name: &str) -> u64 {
    must(netns, "nft", &["list", "counter", "inet", "vxp", name])
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// 300 pings from pod 1 to pod 2, 2 ms apart (a third are dropped: ping's status is not
/// looked at).
fn pings(lab: &Lab) {
    let out = Lab::exec(
        &lab.nodes[0].pod.netns,
        "ping",
        &[
            "-q",
            "-c",
            "300",
            "-i",
            "0.002",
            "-W",
            "1",
            &lab.nodes[1].pod.ip.to_string(),
        ],
    )
    .unwrap();
    assert!(out.status.code().is_some(), "ping ran");
}

const NODE_HOPS: [&str; 6] = ["-i", "cali*", "-i", VXLAN_DEV, "-i", UNDERLAY_DEV];

/// The hop labels of cali0 ingress.
const CALI_IN: [(&str, &str); 2] = [("iface", POD_HOST_DEV), ("direction", "ingress")];

/// Waits until the agent's cali0 ingress counters reach the nft rule's: every drop charged
/// there, every packet the rule saw counted; returns the samples.
fn wait_for_the_rule(agent: &Agent, seen: u64, dropped: u64) -> BTreeMap<String, f64> {
    wait_for(
        "the agent's cali0 ingress drops and packets to reach the nft counters",
        Duration::from_secs(10),
        || {
            let m = agent.metrics();
            let (drops, packets) = (
                sum(&m, "vxprobe_hop_drops_total", &CALI_IN),
                sum(&m, "vxprobe_hop_packets_total", &CALI_IN),
            );
            if drops == dropped as f64 && packets >= seen as f64 {
                Ok(m)
            } else {
                Err(format!(
                    "drops {drops} (rule {dropped}), packets {packets} (rule saw {seen})"
                ))
            }
        },
    )
}

/// (a) The kernel's count, record's count and the agent's count agree; every family is one the
/// metrics module lists; both formats; SIGTERM detaches everything and exits 0.
#[test]
fn metrics_match_the_nft_counter_and_record() {
    if !is_root() {
        return;
    }
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
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
        Some(vxprobe::metrics::PROMETHEUS_CONTENT_TYPE)
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
        Some(vxprobe::metrics::OPENMETRICS_CONTENT_TYPE)
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
    if !is_root() {
        return;
    }
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
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
    let (code, stderr, _) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

/// A process that is killed when dropped (a server the test started).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    if !is_root() {
        return;
    }
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
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

/// Where `cargo xtask setup` puts kubernetes-validate (xtask/src/image.rs).
fn k8s_venv() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("vxprobe/k8s-validate-1.37.0")
}

/// Every document of a YAML file, as JSON (through the venv's PyYAML).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let python = k8s_venv().join("bin/python");
    let out = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo xtask setup installs kubernetes-validate and PyYAML there)",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy/kubernetes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The resource of `kind` among the manifests.
fn resource(kind: &str) -> Value {
    manifests()
        .iter()
        .flat_map(|f| yaml_documents(f))
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}

/// (c) The image, run by podman exactly as the DaemonSet runs it (capabilities, read-only root,
/// host PID namespace, seccomp, host paths, arguments), in the lab node's namespace standing
/// for the host network: it attaches, answers the kubelet's probes on the node's address,
/// counts what the nft rule dropped, and stops cleanly.
#[test]
fn the_image_runs_under_the_daemonsets_security_context() {
    if !is_root() {
        return;
    }
    let podman_works = Command::new("podman")
        .args(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !podman_works {
        eprintln!("skipped: podman does not run here (`podman info` fails)");
        return;
    }
    let ds = resource("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let image = container["image"].as_str().unwrap();
    assert_eq!(
        image,
        format!("localhost/vxprobe:{}", env!("CARGO_PKG_VERSION")),
        "the DaemonSet runs this version's image"
    );
    let exists = Command::new("podman")
        .args(["image", "exists", image])
        .status()
        .unwrap();
    assert!(
        exists.success(),
        "no image {image}: `cargo xtask image` builds it (`cargo xtask test` does first)"
    );
    assert_eq!(pod["hostNetwork"], true);
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false, "never privileged");

    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let n1 = &lab.nodes[0];
    drop_a_third_of_pings(&n1.netns);
    let name = format!("vxprobe-test-{}", std::process::id());
    let mut cmd = Command::new("podman");
    cmd.args(["run", "--rm", "--name", &name])
        .arg(format!("--network=ns:/run/netns/{}", n1.netns))
        // This machine refuses to raise rlimits; podman's defaults would.
        .args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=1000:1000",
        ]);
    if pod["hostPID"] == true {
        cmd.arg("--pid=host");
    }
    let caps = &security["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    cmd.arg("--cap-drop=all");
    for cap in caps["add"].as_array().unwrap() {
        cmd.arg(format!("--cap-add=CAP_{}", cap.as_str().unwrap()));
    }
    if security["readOnlyRootFilesystem"] == true {
        cmd.arg("--read-only");
    }
    if security["allowPrivilegeEscalation"] == false {
        cmd.arg("--security-opt=no-new-privileges");
    }
    match security["seccompProfile"]["type"].as_str() {
        Some("Unconfined") => {
            cmd.arg("--security-opt=seccomp=unconfined");
        }
        Some("RuntimeDefault") | None => {}
        Some(other) => panic!("seccompProfile {other}: teach this test"),
    }
    if let Some(user) = security["runAsUser"].as_u64() {
        cmd.arg(format!("--user={user}"));
    }
    // hostPath volumes at their mount points, as the kubelet would mount them.
    for mount in container["volumeMounts"].as_array().unwrap() {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let host = volume["hostPath"]["path"].as_str().unwrap();
        if volume["hostPath"]["type"] == "DirectoryOrCreate" {
            std::fs::create_dir_all(host).unwrap();
        }
        let ro = if mount["readOnly"] == true { ":ro" } else { "" };
        cmd.arg(format!(
            "--volume={host}:{}{ro}",
            mount["mountPath"].as_str().unwrap()
        ));
    }
    for env in container["env"].as_array().unwrap() {
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    }
    cmd.arg(image);
    // The DaemonSet's arguments ($(NODE_NAME) as the kubelet expands it), then the lab's hops.
    for arg in container["args"].as_array().unwrap() {
        cmd.arg(arg.as_str().unwrap().replace("$(NODE_NAME)", "lab-node-1"));
    }
    cmd.args(["--stats-interval", "200ms"]).args(NODE_HOPS);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running podman");
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = pipe.read_to_string(&mut out);
        out
    });
    let mut container_guard = Server(child);

    // The kubelet probes a host-network pod on the node's address.
    let port = container["ports"][0]["containerPort"].as_u64().unwrap() as u16;
    let node_addr = SocketAddr::from((n1.underlay_ip, port));
    let probe = |path: &str| http::get(&n1.netns, node_addr, path, None);
    let readiness = container["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    let liveness = container["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    wait_for(
        "the container's readiness probe",
        Duration::from_secs(90),
        || {
            if let Some(status) = container_guard.0.try_wait().unwrap() {
                panic!("the container exited ({status})");
            }
            match probe(readiness) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.body.trim())),
                Err(e) => Err(e.to_string()),
            }
        },
    );
    assert_eq!(probe(liveness).unwrap().status, 200);
    let pid: i32 = String::from_utf8(
        Command::new("podman")
            .args(["inspect", "--format", "{{.State.Pid}}", &name])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let programs = programs_of(pid);

    pings(&lab);
    let (seen, dropped) = (
        nft_counter(&n1.netns, "seen"),
        nft_counter(&n1.netns, "dropped"),
    );
    assert!(dropped > 30, "the rule dropped {dropped}");
    let metrics = || {
        let r = probe("/metrics").expect("GET /metrics");
        samples(&r.body)
    };
    let m = wait_for(
        "the container's counters to reach the nft rule's",
        Duration::from_secs(10),
        || {
            let m = metrics();
            let drops = sum(&m, "vxprobe_hop_drops_total", &CALI_IN);
            let packets = sum(&m, "vxprobe_hop_packets_total", &CALI_IN);
            (drops == dropped as f64 && packets == seen as f64)
                .then_some(m.clone())
                .ok_or(format!(
                    "drops {drops} (rule {dropped}), packets {packets} (rule saw {seen})"
                ))
        },
    );
    assert_eq!(sum(&m, "vxprobe_hop_drops_total", &[]), dropped as f64);
    assert_eq!(sum(&m, "vxprobe_node_info", &[("node", "lab-node-1")]), 1.0);
    // Every signal attached in the container as it does outside (hook "none" only where this
    // kernel has no hook at all).
    for hook in m.keys().filter(|k| k.starts_with("vxprobe_hook_info")) {
        if hook.contains("hook=\"none\"") {
            assert!(
                hook.contains("rx_csum_fault") || hook.contains("tcp_bad_csum"),
                "{hook}"
            );
        }
    }

    // The kubelet's stop: SIGTERM, then the container's exit status.
    let stop = Command::new("podman")
        .args(["kill", "--signal", "TERM", &name])
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let status = wait_for("the container to exit", Duration::from_secs(30), || {
        container_guard
            .0
            .try_wait()
            .unwrap()
            .ok_or_else(|| "running".to_owned())
    });
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        still_loaded(&programs).is_empty(),
        "programs left after the container stopped"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// (d) `promtool test rules` passes on the rules' unit tests, and the rules name only metrics
/// the agent exports or the rules record.
#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let dir = repo_root().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "rules.yaml"],
        vec!["test", "rules", "rules.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("running promtool (cargo xtask setup installs Debian's prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = yaml_documents(&dir.join("rules.yaml"));
    let mut recorded = Vec::new();
    let mut exprs = Vec::new();
    let mut alerts = Vec::new();
    for group in rules[0]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            if let Some(name) = rule["record"].as_str() {
                recorded.push(name.to_owned());
            }
            if let Some(name) = rule["alert"].as_str() {
                alerts.push(name.to_owned());
            }
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    for wanted in [
        "VxprobeHopLoss",
        "VxprobeChecksumErrors",
        "VxprobeOversizeDrops",
        "VxprobeEventsLost",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "no alert {wanted}");
    }
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exported(&name) || recorded.contains(&name),
                "rules.yaml names {name}, which the agent does not export: {expr}"
            );
        }
    }
}

/// The manifests validate against Kubernetes' schemas (strict: no unknown field) of an older
/// and the newest release kubernetes-validate knows; the PodMonitor, which has no schema
/// there, is checked against the DaemonSet it scrapes; the Service and probes agree too.
#[test]
fn the_manifests_validate_and_agree() {
    let validate = k8s_venv().join("bin/kubernetes-validate");
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let out = Command::new(&validate)
        .args(["--strict", "-k", "1.29.0", "-k", "1.37.0"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo xtask setup installs it)",
                validate.display()
            )
        });
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in ["namespace", "serviceaccount", "daemonset", "service"] {
        for version in ["1.29", "1.37"] {
            assert!(
                report.lines().any(|l| l.starts_with("INFO")
                    && l.contains(&format!(
                        "resource {kind}/vxprobe against version {version}"
                    ))),
                "{kind} not validated against {version}: {report}"
            );
        }
    }
    for line in report.lines().filter(|l| l.starts_with("WARN")) {
        assert!(line.contains("PodMonitor"), "{line}");
    }

    let ds = resource("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let container = &pod["containers"][0];
    let port = &container["ports"][0];
    assert_eq!(port["name"], "metrics");
    assert_eq!(port["containerPort"], PORT);
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == &format!("--listen=0.0.0.0:{PORT}")),
        "the agent listens on the port the DaemonSet declares"
    );
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for cap in security["capabilities"]["add"].as_array().unwrap() {
        assert!(
            ["BPF", "PERFMON", "NET_ADMIN", "SYSLOG"].contains(&cap.as_str().unwrap()),
            "capability {cap} is not one the agent needs"
        );
    }
    let selects = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };
    assert!(selects(&ds["spec"]["selector"]["matchLabels"]));
    let service = resource("Service");
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    assert!(selects(&service["spec"]["selector"]));
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    let monitor = resource("PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"]));
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    let account = resource("ServiceAccount");
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    for r in [&ds, &service, &monitor, &account] {
        assert_eq!(
            r["metadata"]["namespace"],
            resource("Namespace")["metadata"]["name"]
        );
    }
}

/// The dashboard is valid JSON, has the panels the issue asks for, and its queries name only
/// metrics the agent exports.
#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let path = repo_root().join("deploy/grafana/vxprobe.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<String> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap_or("").to_lowercase())
        .collect();
    for wanted in ["loss per hop", "worst hops", "anomalies by kind"] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel '{wanted}': {titles:?}"
        );
    }
    // The panels' queries, and the query variables' (label_values(...)).
    let mut exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("a target with a PromQL expr")
                .to_owned()
        })
        .collect();
    assert!(exprs.len() >= panels.len(), "{exprs:?}");
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = &variable["query"];
            exprs.push(
                query["query"]
                    .as_str()
                    .or(query.as_str())
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "a query without a metric: {expr}");
        for name in names {
            assert!(
                exported(&name),
                "the dashboard queries {name}, which the agent does not export: {expr}"
            );
        }
    }
}

/// Whether the agent exports samples of this name.
fn exported(name: &str) -> bool {
    FAMILIES.iter().any(|f| {
        f.name == name || (f.kind == Kind::Counter && name == f.name.trim_end_matches("_total"))
    })
}

/// The metric names a PromQL expression (or a Grafana variable query such as
/// `label_values(vxprobe_hop_packets_total, iface)`) selects: identifiers outside label
/// matchers, ranges and strings that are not functions, keywords or grouping labels.
fn metric_names(expr: &str) -> Vec<String> {
    // Grafana's label_values(SELECTOR, LABEL): only the selector names a metric.
    if let Some(args) = expr.trim().strip_prefix("label_values(")
        && let Some((selector, _label)) = args.rsplit_once(',')
    {
        return metric_names(selector);
    }
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        // Aggregation operators, which may be followed by `by (...)` before their `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let (mut i, mut depth_brace, mut depth_bracket) = (0, 0usize, 0usize);
    // Grouping labels follow `by (`/`without (`/`on (`/`ignoring (`.../`group_left (`.
    let mut in_grouping = false;
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '{' => depth_brace += 1,
            '}' => depth_brace = depth_brace.saturating_sub(1),
            '[' => depth_bracket += 1,
            ']' => depth_bracket = depth_bracket.saturating_sub(1),
            '(' => {
                in_grouping = [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&last_word.as_str());
            }
            ')' => in_grouping = false,
            '$' => {
                // A Grafana variable ($__rate_interval, ${iface}).
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let is_call = chars.get(j) == Some(&'(');
                let is_label_name =
                    matches!(chars.get(j), Some('=' | '!' | '~')) && depth_brace > 0;
                if depth_brace == 0
                    && depth_bracket == 0
                    && !in_grouping
                    && !is_call
                    && !is_label_name
                    && !KEYWORDS.contains(&word.to_lowercase().as_str())
                    && !(start > 0 && chars[start - 1].is_ascii_digit())
                {
                    names.push(word.clone());
                }
                last_word = word.to_lowercase();
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_word.clear();
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            r#"sum by (iface, direction) (rate(vxprobe_hop_drops_total{iface=~"cali.*"}[5m])) / on (iface) group_left vxprobe_hop_packets_total"#
        ),
        ["vxprobe_hop_drops_total", "vxprobe_hop_packets_total"]
    );
    assert_eq!(
        metric_names(
            r#"topk(10, sum without (reason) (increase(vxprobe_hop_drops_total[$__range])))"#
        ),
        ["vxprobe_hop_drops_total"]
    );
    assert_eq!(
        metric_names(r#"label_values(vxprobe_node_info{node=~"a.*"}, node)"#),
        ["vxprobe_node_info"]
    );
}

/// The README's metrics table names every family the agent exports.
#[test]
fn the_readme_lists_every_metric() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## Deploying on a cluster")
        .nth(1)
        .expect("a 'Deploying on a cluster' section");
    for family in FAMILIES {
        assert!(
            section.contains(&format!("`{}`", family.name)),
            "README's metrics table lacks {}",
            family.name
        );
    }
}
