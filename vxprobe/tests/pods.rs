//! Pods by network namespace and host-side veth (`vxprobe::node::pods`), from real sources: a real
//! containerd with its CRI plugin, whose sandboxes are run through CRI as kubelet runs them
//! (a pause image built here with podman, a CNI network from Debian's plugins), and, without
//! a socket, processes in pod-shaped cgroups (v1, and v2 where mounted) with kubelet-shaped
//! log directories under a test root. The node's own namespaces are never named.
//!
//! Then the pods end to end: `vxprobe record` names a pod on the drops inside its namespace,
//! on its veth's `hop` and `flow` lines and in its pcapng (read back with tshark), from either
//! source; `vxprobe top` shows the pod column and filters on it (in tmux).
//!
//! Everything happens in network namespaces the tests create (containerd runs in one, so the
//! CNI plugin's host-side veths land there), under a temporary root; addresses are from
//! 198.18.0.0/15.

mod common;

use std::{
    fs,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use common::{
    Recorder,
    agent::{self, Agent},
    containerd::{
        Containerd, PAUSE_IMAGE, build_pause_image, remove_sandbox, sandbox_config, sandbox_netns,
        sandbox_pid,
    },
    is_root,
    pods::{
        LayoutPod, Netns, PodCgroup, SEQ, Sleeper, TempDir, add_veth, cgroup_mount, drop_pings, id,
        in_netns, init_netns, new_uid, pod_log_dir, remove_cgroup_tree, run, spawn_in, tmux,
        tmux_start, tshark_packets, unique, wait_screen,
    },
    time_scale,
};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, PodSandboxConfig,
    RunPodSandboxRequest, StartContainerRequest, runtime_service_client::RuntimeServiceClient,
};
use serde_json::Value;
use vxprobe::node::pods::{CriSocket, Pod, PodConfig, PodId, PodIndex, Snapshot, Source};

/// The node's own namespaces: never named as a pod, checked at every look at the index.
struct NodeNamespaces(Vec<u64>);

impl NodeNamespaces {
    fn check(&self, snapshot: &Snapshot) {
        for netns in &self.0 {
            assert!(
                snapshot.pod_of_netns(*netns).is_none(),
                "the node's namespace {netns} is named {:?}",
                snapshot.pod_of_netns(*netns)
            );
        }
    }
}

/// Waits (up to `limit`, scaled) for `check` to find something in the index's snapshots,
/// checking the node's namespaces stay unnamed meanwhile; returns it and how long it took.
fn wait_for<T>(
    index: &PodIndex,
    node: &NodeNamespaces,
    what: &str,
    limit: Duration,
    mut check: impl FnMut(&Snapshot) -> Option<T>,
) -> (T, Duration) {
    let limit = limit * time_scale();
    let start = Instant::now();
    loop {
        let snapshot = index.snapshot();
        node.check(&snapshot);
        if let Some(found) = check(&snapshot) {
            return (found, start.elapsed());
        }
        let pods: Vec<String> = snapshot
            .pods()
            .map(|(netns, pod)| format!("{netns}: {}", pod.id))
            .collect();
        assert!(
            start.elapsed() < limit,
            "{what}: not after {limit:?}; the index (source {}, generation {}, error {:?}) \
             has {pods:?}",
            snapshot.source(),
            snapshot.generation(),
            snapshot.error()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_first(index: &PodIndex, node: &NodeNamespaces) -> Arc<Snapshot> {
    wait_for(
        index,
        node,
        "the first snapshot",
        Duration::from_secs(10),
        |s| (s.generation() > 0).then(|| index.snapshot()),
    )
    .0
}

/// A process in a pod-shaped cgroup, with its log directory, is named within 2 s from the
/// node's layout, its host-side veth with it; host-network pods (in the node's namespace and in
/// init's) are never named; the pod is forgotten once its process exits.
fn layout_case(v2: bool) {
    if !is_root() {
        return;
    }
    let Some(mount) = cgroup_mount(v2) else {
        eprintln!(
            "skipped: no cgroup {} hierarchy here",
            if v2 { "v2" } else { "v1 pids" }
        );
        return;
    };
    let root = TempDir::new("layout");
    let logs = root.0.join("var/log/pods");
    fs::create_dir_all(&logs).unwrap();
    let node = Netns::new("node");
    let pod_ns = Netns::new("pod");
    let host_dev = format!("calit{}", SEQ.fetch_add(1, Ordering::Relaxed));
    add_veth(&node, &host_dev, &pod_ns);
    run("ip", &["-n", &node.name, "link", "set", &host_dev, "up"]);
    let (ifindex, _) = common::ifindex_and_mac(&node.name, &host_dev);

    let web = new_uid();
    let kube_proxy = new_uid();
    let agent = new_uid();
    pod_log_dir(&logs, "shop", "web-0", &web, &["web", "istio-proxy"]);
    pod_log_dir(
        &logs,
        "kube-system",
        "kube-proxy-x2",
        &kube_proxy,
        &["kube-proxy"],
    );
    pod_log_dir(&logs, "monitoring", "agent-7", &agent, &["agent"]);

    let node_namespaces = NodeNamespaces(vec![node.inode(), init_netns()]);
    let config = PodConfig {
        cri: CriSocket::Off,
        pod_logs: logs.clone(),
        ..PodConfig::default()
    };
    let index = in_netns(&node.name, || PodIndex::start(config)).unwrap();
    let first = wait_first(&index, &node_namespaces);
    assert_eq!(first.source(), Source::Layout);

    // Host-network pods: one in the node's namespace (where the index runs), one in init's.
    let kube_proxy_proc = Sleeper::start(Some(&node.name));
    let kube_proxy_cg = PodCgroup::new(&mount, &kube_proxy);
    kube_proxy_cg.add(kube_proxy_proc.pid());
    let agent_proc = Sleeper::start(None);
    let agent_cg = PodCgroup::new(&mount, &agent);
    agent_cg.add(agent_proc.pid());

    // The pod: its process in its own namespace, moved into its cgroup as runc does.
    let web_proc = Sleeper::start(Some(&pod_ns.name));
    let web_cg = PodCgroup::new(&mount, &web);
    web_cg.add(web_proc.pid());
    let netns = pod_ns.inode();
    let (pod, took) = wait_for(
        &index,
        &node_namespaces,
        "web-0 named by its namespace",
        Duration::from_secs(10),
        |s| s.pod_of_netns(netns).cloned(),
    );
    eprintln!(
        "layout (cgroup v{}): named after {took:?}",
        if v2 { 2 } else { 1 }
    );
    assert!(
        took <= Duration::from_secs(2) * time_scale(),
        "named after {took:?}: more than 2 s"
    );
    assert_eq!(
        *pod,
        Pod {
            id: id("shop", "web-0", &web),
            containers: vec!["istio-proxy".into(), "web".into()],
            labels: Default::default(),
        }
    );
    let (by_device, _) = wait_for(
        &index,
        &node_namespaces,
        "the host-side veth named by web-0",
        Duration::from_secs(5),
        |s| s.pod_of_device(ifindex).cloned(),
    );
    assert_eq!(by_device.id, pod.id);
    let snapshot = index.snapshot();
    let named: Vec<&PodId> = snapshot.pods().map(|(_, p)| &p.id).collect();
    assert_eq!(named, [&pod.id], "only web-0 has a namespace of its own");
    assert_eq!(
        snapshot.devices().count(),
        1,
        "one device has a pod at its end"
    );

    drop(web_proc);
    let (_, took) = wait_for(
        &index,
        &node_namespaces,
        "web-0 forgotten once its process exited",
        Duration::from_secs(10),
        |s| (s.pod_of_netns(netns).is_none() && s.pod_of_device(ifindex).is_none()).then_some(()),
    );
    eprintln!("layout: forgotten after {took:?}");
    assert!(index.snapshot().is_empty());
    drop((kube_proxy_proc, agent_proc, kube_proxy_cg, agent_cg, web_cg));
}

#[test]
fn layout_names_pods_on_cgroup_v1() {
    layout_case(false);
}

#[test]
fn layout_names_pods_on_cgroup_v2() {
    layout_case(true);
}

/// Without a socket and without kubelet's log directories, nothing names pods; an explicit
/// socket that does not exist is refused.
#[test]
fn no_source_names_nothing() {
    let root = TempDir::new("none");
    let config = PodConfig {
        cri: CriSocket::Off,
        pod_logs: root.0.join("no-such-dir"),
        ..PodConfig::default()
    };
    let index = PodIndex::start(config).unwrap();
    let snapshot = wait_first(&index, &NodeNamespaces(vec![init_netns()]));
    assert_eq!(snapshot.source(), Source::None);
    assert!(snapshot.is_empty());
    let missing = root.0.join("nope.sock");
    let err = PodIndex::start(PodConfig {
        cri: CriSocket::Path(missing.clone()),
        ..PodConfig::default()
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("--cri-socket {}: no such socket", missing.display())
    );
}

/// A real containerd in a node namespace of its own, with a locally built pause image imported
/// and a CNI network of its own subnet, and a CRI client to it. Dropped in field order: the
/// client, containerd, then its namespace and root.
struct CriNode {
    client: RuntimeServiceClient<tonic::transport::Channel>,
    rt: tokio::runtime::Runtime,
    containerd: Containerd,
    image: String,
    node: Netns,
    root: TempDir,
}

impl CriNode {
    fn start(tag: &str) -> Self {
        let root = TempDir::new(tag);
        let node = Netns::new(tag);
        let image_tag = unique("t");
        let archive = build_pause_image(&root.0, &image_tag);
        let image = format!("{PAUSE_IMAGE}:{image_tag}");
        let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 250;
        let subnet = format!("198.19.{seq}.0/24");
        let containerd = Containerd::start(&root.0, &node.name, &image, &subnet);
        containerd.import(&archive);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            RuntimeServiceClient::new(
                vxprobe::node::pods::cri::channel(&containerd.socket)
                    .await
                    .unwrap(),
            )
        });
        CriNode {
            client,
            rt,
            containerd,
            image,
            node,
            root,
        }
    }

    /// Runs `pod`'s sandbox as kubelet would; its id and the config it was run with. `None`
    /// (the test skips, saying why) only where this machine's runc cannot start a container
    /// at all: Debian 11's 5.10 under vm-test, where runc's init dies before it reports
    /// ("read init-p: connection reset by peer"). Anywhere else a failure is a failure.
    fn run_sandbox(
        &mut self,
        pod: &PodId,
        host_network: bool,
        logs: &Path,
        cgroup_top: &str,
    ) -> Option<(String, PodSandboxConfig)> {
        let config = sandbox_config(pod, host_network, logs, cgroup_top);
        let reply = self
            .rt
            .block_on(self.client.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }));
        let sandbox = match reply {
            Ok(reply) => reply.into_inner().pod_sandbox_id,
            Err(e)
                if common::kernel_version() < (5, 11)
                    && e.message().contains("OCI runtime create failed") =>
            {
                eprintln!("skipped: runc cannot start a container on this kernel: {e}");
                return None;
            }
            Err(e) => {
                let network = if host_network { " (host network)" } else { "" };
                panic!("RunPodSandbox{network}: {e}\n{}", self.containerd.logs())
            }
        };
        Some((sandbox, config))
    }

    fn remove(&mut self, sandbox: &str) {
        self.rt
            .block_on(remove_sandbox(&mut self.client, sandbox))
            .unwrap_or_else(|e| panic!("removing the sandbox: {e}\n{}", self.containerd.logs()));
    }

    /// The one veth in the node's namespace: the CNI plugin's host side of the pod's.
    fn veth(&self) -> Value {
        let links: Vec<Value> = serde_json::from_str(&run(
            "ip",
            &["-n", &self.node.name, "-j", "link", "show", "type", "veth"],
        ))
        .unwrap();
        assert_eq!(links.len(), 1, "one veth in the node: {links:?}");
        links.into_iter().next().unwrap()
    }
}

/// A real containerd: pod sandboxes run through CRI as kubelet runs them (a locally built
/// pause image, a CNI network of Debian's `ptp` plugin) are named by their namespace, with
/// labels and container names, and the CNI's host-side veth by its pod; a host-network
/// sandbox never is; removed sandboxes are forgotten.
#[test]
fn cri_names_containerd_sandboxes_and_their_veths() {
    if !is_root() {
        return;
    }
    let mut cri = CriNode::start("cri");
    let node_namespaces = NodeNamespaces(vec![cri.node.inode(), init_netns()]);
    let config = PodConfig {
        cri: CriSocket::Path(cri.containerd.socket.clone()),
        pod_logs: cri.root.0.join("no-pod-logs"),
        ..PodConfig::default()
    };
    let index = in_netns(&cri.node.name, || PodIndex::start(config)).unwrap();
    let first = wait_first(&index, &node_namespaces);
    assert_eq!(first.source(), Source::Cri, "error: {:?}", first.error());
    assert!(
        first.runtime().is_some_and(|r| r.starts_with("containerd")),
        "{:?}",
        first.runtime()
    );
    let logs = cri.root.0.join("logs");
    let cgroup_top = format!("vxprobe-test-{}", unique("cri"));

    // A host-network pod first: when web-0 is named, this one has been listed too.
    let host_pod = id("kube-system", "kube-proxy-q8", &new_uid());
    let Some((host_sandbox, _)) = cri.run_sandbox(&host_pod, true, &logs, &cgroup_top) else {
        return;
    };

    let web = id("shop", "web-0", &new_uid());
    let (sandbox, web_config) = cri
        .run_sandbox(&web, false, &logs, &cgroup_top)
        .expect("a second sandbox where the first ran");
    let CriNode {
        containerd,
        rt,
        client,
        image,
        ..
    } = &mut cri;
    let container = rt
        .block_on(client.create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "web".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                log_path: "web/0.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(web_config),
        }))
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", containerd.logs()))
        .into_inner()
        .container_id;
    rt.block_on(client.start_container(StartContainerRequest {
        container_id: container,
    }))
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", containerd.logs()));

    let netns = sandbox_netns(&sandbox).expect("the sandbox's process, by its cgroup");
    assert!(!node_namespaces.0.contains(&netns));
    let (pod, took) = wait_for(
        &index,
        &node_namespaces,
        "web-0 named by its sandbox's namespace",
        Duration::from_secs(10),
        |s| s.pod_of_netns(netns).cloned(),
    );
    eprintln!("cri: named after {took:?}");
    assert_eq!(pod.id, web);
    assert_eq!(pod.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(
        pod.labels.get("io.kubernetes.pod.uid"),
        Some(&web.uid),
        "{:?}",
        pod.labels
    );
    wait_for(
        &index,
        &node_namespaces,
        "web-0's container named",
        Duration::from_secs(15),
        |s| {
            s.pod_of_netns(netns)
                .filter(|p| p.containers == ["web"])
                .map(|_| ())
        },
    );

    // The ptp plugin's host-side veth, in the node's namespace.
    let ifindex = cri.veth()["ifindex"].as_u64().unwrap() as u32;
    let (by_device, _) = wait_for(
        &index,
        &node_namespaces,
        "the CNI's host-side veth named by web-0",
        Duration::from_secs(5),
        |s| s.pod_of_device(ifindex).cloned(),
    );
    assert_eq!(by_device.id, web);
    let snapshot = index.snapshot();
    assert!(
        snapshot.pods().all(|(_, p)| p.id.uid != host_pod.uid),
        "the host-network sandbox is named"
    );
    assert_eq!(snapshot.len(), 1);

    cri.remove(&sandbox);
    let (_, took) = wait_for(
        &index,
        &node_namespaces,
        "web-0 forgotten once its sandbox was removed",
        Duration::from_secs(10),
        |s| (s.pod_of_netns(netns).is_none() && s.pod_of_device(ifindex).is_none()).then_some(()),
    );
    eprintln!("cri: forgotten after {took:?}");
    cri.remove(&host_sandbox);
    drop(index);
    drop(cri);
    remove_cgroup_tree(&cgroup_top);
}

// ---------------------------------------------------------------------------------------------
// End to end: `record` and `top` name the pods.

/// What a recording of a pod's traffic must show: pinged from the node while its namespace
/// drops every echo request, the pod is named on the drops in its namespace, on its veth's
/// `hop` and `flow` lines, in `meta` (its source, and the veth's hop), on nothing else, and in
/// the pcapng's comments and interface descriptions.
struct Expected<'a> {
    source: &'a str,
    /// The pod's namespace (inode) and the host side of its veth.
    netns: u64,
    veth: &'a str,
    pod_ip: &'a str,
    pod: Value,
    pcap: &'a Path,
}

fn records_the_pod(mut recorder: Recorder, ping: impl FnOnce() -> Sleeper, want: &Expected) {
    let pod = &want.pod;
    let meta = recorder.wait_for("the meta line", Duration::from_secs(10), |l| {
        l["kind"] == "meta"
    });
    assert_eq!(meta["pods"]["source"], want.source, "{meta}");
    let pinging = ping();
    let named = |l: &Value| &l["pod"] == pod;
    // The rule's drops; the pod's namespace may drop other packets too (a neighbour
    // solicitation, a closed port), and those name the pod as well.
    recorder.wait_for(
        "a NETFILTER_DROP in the pod's namespace naming the pod",
        Duration::from_secs(20),
        |l| {
            l["kind"] == "drop"
                && l["netns"] == want.netns
                && l["reason"] == "NETFILTER_DROP"
                && named(l)
        },
    );
    recorder.wait_for(
        "a hop line of the pod's veth naming the pod",
        Duration::from_secs(10),
        |l| {
            l["kind"] == "hop"
                && l["ifname"] == want.veth
                && l["dir"] == "egress"
                && l["packets"].as_u64() > Some(0)
                && named(l)
        },
    );
    recorder.wait_for(
        "a flow line to the pod at its veth naming the pod",
        Duration::from_secs(10),
        |l| {
            l["kind"] == "flow"
                && l["ifname"] == want.veth
                && l["flow"]["proto"] == "icmp"
                && l["flow"]["dst"] == want.pod_ip
                && named(l)
        },
    );
    drop(pinging);
    let lines = recorder.stop();
    for line in &lines {
        if let Some(named) = line.get("pod") {
            assert_eq!(named, pod, "only the pod is named: {line}");
        }
        if line["kind"] == "drop" && line["netns"] == want.netns {
            assert_eq!(&line["pod"], pod, "every drop in its namespace: {line}");
        }
        if matches!(line["kind"].as_str(), Some("hop" | "flow")) && line["ifname"] == want.veth {
            // The index names a veth once its peer's namespace is a pod's: at the latest
            // when its first interval closes, here before anything was attached.
            assert_eq!(&line["pod"], pod, "every line of its veth: {line}");
        }
    }
    let hops = lines[0]["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 1);
    assert_eq!(&hops[0]["pod"], pod, "meta names the veth's pod at start");
    let name = format!(
        "pod={}/{}",
        pod["namespace"].as_str().unwrap(),
        pod["name"].as_str().unwrap()
    );
    let packets = tshark_packets(want.pcap);
    let named: Vec<&(String, String)> = packets
        .iter()
        .filter(|(comment, _)| comment.contains("NETFILTER_DROP"))
        .collect();
    assert!(!named.is_empty(), "no drop in the pcapng: {packets:?}");
    for (comment, description) in named {
        assert!(comment.contains(&name), "{comment}");
        assert!(
            description.contains(&format!("netns {}", want.netns)) && description.contains(&name),
            "{description}"
        );
    }
}

/// From the node's layout: a lab veth whose peer is in a pod's namespace, the pod's process in
/// a kubelet-shaped cgroup, its log directory where `VXPROBE_POD_LOGS` says.
#[test]
fn record_names_a_layout_pod_on_its_events_hops_flows_and_pcapng() {
    if !is_root() {
        return;
    }
    let Some(pod) = LayoutPod::new("shop", "web-0") else {
        return;
    };
    drop_pings(&format!("--net=/run/netns/{}", pod.pod_ns.name));
    let pcap = pod.root.0.join("layout.pcapng");
    let recorder = Recorder::start_with_env(
        &pod.node.name,
        &[
            "-i",
            &pod.host,
            "--cri-socket",
            "none",
            "--stats-interval",
            "500ms",
            "--pcap",
            pcap.to_str().unwrap(),
        ],
        &pod.env(),
    );
    records_the_pod(
        recorder,
        || pod.ping(),
        &Expected {
            source: "layout",
            netns: pod.pod_ns.inode(),
            veth: &pod.host,
            pod_ip: &pod.pod_ip,
            pod: pod.json(),
            pcap: &pcap,
        },
    );
}

/// Over CRI, from a real containerd: a sandbox run as kubelet runs it, with the CNI's
/// (Debian's `ptp`) veth in the node's namespace; `record --cri-socket` names it.
#[test]
fn record_names_a_cri_pod_on_its_events_hops_flows_and_pcapng() {
    if !is_root() {
        return;
    }
    let mut cri = CriNode::start("crirec");
    let cgroup_top = format!("vxprobe-test-{}", unique("crirec"));
    let web = id("shop", "web-0", &new_uid());
    let logs = cri.root.0.join("logs");
    let Some((sandbox, _)) = cri.run_sandbox(&web, false, &logs, &cgroup_top) else {
        return;
    };
    let pid = sandbox_pid(&sandbox).expect("the sandbox's process, by its cgroup");
    let enter = format!("--net=/proc/{pid}/ns/net");
    let addrs: Vec<Value> = serde_json::from_str(&run(
        "nsenter",
        &[&enter, "ip", "-j", "-4", "addr", "show", "eth0"],
    ))
    .unwrap();
    let pod_ip = addrs[0]["addr_info"][0]["local"]
        .as_str()
        .expect("the pod's address")
        .to_owned();
    drop_pings(&enter);
    let veth = cri.veth()["ifname"].as_str().unwrap().to_owned();

    let pcap = cri.root.0.join("cri.pcapng");
    let socket = cri.containerd.socket.to_str().unwrap().to_owned();
    let recorder = Recorder::start(
        &cri.node.name,
        &[
            "-i",
            &veth,
            "--cri-socket",
            &socket,
            "--stats-interval",
            "500ms",
            "--pcap",
            pcap.to_str().unwrap(),
        ],
    );
    records_the_pod(
        recorder,
        || {
            spawn_in(
                &cri.node.name,
                "ping",
                &["-q", "-i", "0.1", "-w", "300", &pod_ip],
            )
        },
        &Expected {
            source: "cri",
            netns: sandbox_netns(&sandbox).expect("the sandbox's namespace"),
            veth: &veth,
            pod_ip: &pod_ip,
            pod: serde_json::json!({"namespace": "shop", "name": "web-0", "uid": web.uid}),
            pcap: &pcap,
        },
    );
    cri.remove(&sandbox);
    drop(cri);
    remove_cgroup_tree(&cgroup_top);
}

/// `agent --pod-labels` on a layout pod's veth: its hop series and the drops in its namespace
/// carry `pod="shop/web-0"`; once the pod is gone (its process ended), every series naming it
/// goes, and the veth's series go on without the label.
#[test]
fn agent_labels_a_pods_series_and_drops_them_once_it_is_gone() {
    if !is_root() {
        return;
    }
    let Some(mut pod) = LayoutPod::new("shop", "web-0") else {
        return;
    };
    drop_pings(&format!("--net=/run/netns/{}", pod.pod_ns.name));
    let agent = Agent::start_with_env(
        &pod.node.name,
        &[
            "-i",
            &pod.host,
            "--cri-socket",
            "none",
            "--pod-labels",
            "--stats-interval",
            "500ms",
        ],
        &pod.env(),
    );
    let pinging = pod.ping();
    let label = ("pod", "shop/web-0");
    let host = pod.host.clone();
    agent::wait_for(
        "the pod's hop and drop series",
        Duration::from_secs(20),
        || {
            let s = agent.metrics();
            let hop = agent::sum(&s, "vxprobe_hop_packets_total", &[("iface", &host), label]);
            let drops = agent::sum(
                &s,
                "vxprobe_drops_total",
                &[("reason", "NETFILTER_DROP"), label],
            );
            let anomalies = agent::sum(&s, "vxprobe_anomalies_total", &[("kind", "drop"), label]);
            (hop > 0.0 && drops > 0.0 && anomalies >= drops)
                .then_some(())
                .ok_or(format!("hop {hop}, drops {drops}, anomalies {anomalies}"))
        },
    );
    drop(pinging);
    pod.end();
    agent::wait_for(
        "every series naming the pod gone, the veth's unlabeled",
        Duration::from_secs(20),
        || {
            let s = agent.metrics();
            let named: Vec<&String> = s.keys().filter(|k| k.contains("shop/web-0")).collect();
            let unlabeled = s.keys().any(|k| {
                k.starts_with("vxprobe_hop_packets_total{")
                    && k.contains(&format!("iface=\"{host}\""))
                    && !k.contains("pod=")
            });
            (named.is_empty() && unlabeled).then_some(()).ok_or(format!(
                "still named: {named:?}; veth unlabeled: {unlabeled}"
            ))
        },
    );
    let (code, stderr, _) = agent.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

/// `top` in tmux on a layout pod's veth: the pod column names the pod in the hops and the
/// flows; `pod:` keeps them, `ns:` of another namespace empties both tables; `q` exits 0.
#[test]
fn top_shows_the_pod_column_and_filters_on_it() {
    if !is_root() {
        return;
    }
    let Some(pod) = LayoutPod::new("shop", "web-0") else {
        return;
    };
    let session = format!("vxprobe-pods-top-{}", std::process::id());
    let exit_file = pod.root.0.join("top.exit");
    let command = format!(
        "VXPROBE_POD_LOGS={} ip netns exec {} {} top --interval 500ms -i {} --cri-socket none; echo $? > {}; sleep 60",
        pod.logs.display(),
        pod.node.name,
        common::VXPROBE,
        pod.host,
        exit_file.display()
    );
    tmux_start(&session, 180, 45, &command);
    let _ping = pod.ping();
    let name = pod.id.to_string();
    let hop_row = |screen: &str| {
        screen
            .lines()
            .find(|l| l.contains(&pod.host) && l.contains("egress"))
            .map(str::to_owned)
    };
    let screen = wait_screen(&session, "the veth's hop and flow named by the pod", |s| {
        hop_row(s).is_some_and(|row| row.contains(&name))
            && s.lines()
                .any(|l| l.contains(&pod.pod_ip) && l.contains(&name))
    });
    assert!(
        screen
            .lines()
            .any(|l| l.contains("device") && l.contains(" pod ")),
        "a pod column:\n{screen}"
    );
    // pod:NAME keeps the pod's hops and flows.
    tmux(&["send-keys", "-t", &session, "/pod:web-0", "Enter"]);
    let screen = wait_screen(&session, "the pod: filter in force", |s| {
        s.contains("filter: pod:web-0")
    });
    assert!(
        hop_row(&screen).is_some_and(|r| r.contains(&name)),
        "{screen}"
    );
    assert!(screen.contains(&pod.pod_ip), "{screen}");
    // ns: of a namespace no pod here is in empties both tables.
    tmux(&["send-keys", "-t", &session, "/"]);
    for _ in 0.."pod:web-0".len() {
        tmux(&["send-keys", "-t", &session, "BSpace"]);
    }
    tmux(&["send-keys", "-t", &session, "ns:kube-system", "Enter"]);
    let screen = wait_screen(&session, "the ns: filter emptying the tables", |s| {
        s.contains("filter: ns:kube-system")
            && s.contains("no hop matches the filter")
            && s.contains("no flow matches the filter")
    });
    assert!(hop_row(&screen).is_none(), "{screen}");
    tmux(&["send-keys", "-t", &session, "q"]);
    let code = common::wait_until(
        "top's exit status",
        Duration::from_secs(10),
        || fs::read_to_string(&exit_file).unwrap_or_default(),
        |code| !code.trim().is_empty(),
    );
    let _ = tmux(&["kill-session", "-t", &session]);
    assert_eq!(code.trim(), "0");
}
