//! The agent's tests' shared pieces: a `vxprobe agent` in a lab namespace and reading its
//! /metrics, the nft rule that drops a share of one hop's packets, the deploy/ files.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use vxprobe::lab::{Lab, POD_HOST_DEV, UNDERLAY_DEV, VXLAN_DEV, faults, http};

use super::{VXPROBE, must, time_scale};

pub const PORT: u16 = vxprobe::cli::DEFAULT_PORT;

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Polls `check` until it returns something, or panics after `limit` (scaled) naming `what`
/// and the last state seen.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
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
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of the samples of `name` whose labels include every `name="value"` of `labels`.
pub fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
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
pub struct Agent {
    child: Child,
    netns: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Agent {
    pub fn start(netns: &str, args: &[&str]) -> Agent {
        Self::start_with_env(netns, args, &[])
    }

    /// Like [`Agent::start`], with extra environment variables for vxprobe.
    pub fn start_with_env(netns: &str, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, VXPROBE, "agent", "--listen"])
            .arg(local(PORT).to_string())
            .args(args)
            .envs(env.iter().copied())
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

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn get(&self, target: &str, accept: Option<&str>) -> http::Response {
        http::get(&self.netns, local(PORT), target, accept).expect("GET from the agent")
    }

    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let r = self.get("/metrics", None);
        assert_eq!(r.status, 200, "{}", r.body);
        samples(&r.body)
    }

    /// SIGTERM; returns the exit status, what it wrote on stderr and how long it took.
    pub fn stop(self) -> (Option<i32>, String, Duration) {
        self.stop_with(libc::SIGTERM)
    }

    pub fn stop_with(mut self, signal: i32) -> (Option<i32>, String, Duration) {
        let t0 = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
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
pub fn drop_a_third_of_pings(netns: &str) {
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

pub fn nft_counter(netns: &str, name: &str) -> u64 {
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
pub fn pings(lab: &Lab) {
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

pub const NODE_HOPS: [&str; 6] = ["-i", "cali*", "-i", VXLAN_DEV, "-i", UNDERLAY_DEV];

/// The hop labels of cali0 ingress.
pub const CALI_IN: [(&str, &str); 2] = [("iface", POD_HOST_DEV), ("direction", "ingress")];

/// Waits until the agent's cali0 ingress counters reach the nft rule's: every drop charged
/// there, every packet the rule saw counted; returns the samples.
pub fn wait_for_the_rule(agent: &Agent, seen: u64, dropped: u64) -> BTreeMap<String, f64> {
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

/// A process that is killed when dropped (a server the test started).
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where `cargo xtask setup` puts kubernetes-validate (xtask/src/image.rs).
pub fn k8s_venv() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("vxprobe/k8s-validate-1.37.0")
}

/// Every document of a YAML file, as JSON (through the venv's PyYAML).
pub fn yaml_documents(path: &Path) -> Vec<Value> {
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

pub fn manifests() -> Vec<PathBuf> {
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
pub fn resource(kind: &str) -> Value {
    manifests()
        .iter()
        .flat_map(|f| yaml_documents(f))
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}
