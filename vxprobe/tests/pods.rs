//! Pods by network namespace and host-side veth (`vxprobe::node::pods`), from real sources: a real
//! containerd with its CRI plugin, whose sandboxes are run through CRI as kubelet runs them
//! (a pause image built here with podman, a CNI network from Debian's plugins), and, without
//! a socket, processes in pod-shaped cgroups (v1, and v2 where mounted) with kubelet-shaped
//! log directories under a test root. The node's own namespaces are never named.
//!
//! Everything happens in network namespaces the tests create (containerd runs in one, so the
//! CNI plugin's host-side veths land there), under a temporary root; addresses are from
//! 198.18.0.0/15.

mod common;

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use common::{is_root, time_scale};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest, runtime_service_client::RuntimeServiceClient,
};
use vxprobe::node::pods::{CriSocket, Pod, PodConfig, PodId, PodIndex, Snapshot, Source};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or test run) uses.
fn unique(tag: &str) -> String {
    format!(
        "{}-{tag}{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A pod UID, as the API server makes them (a version 4 UUID).
fn new_uid() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) as u64;
    let pid = std::process::id() as u64;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        nanos as u32,
        (nanos >> 32) as u16,
        seq & 0xfff,
        pid & 0xfff,
        (nanos ^ (seq << 20) ^ pid) & 0xffff_ffff_ffff
    )
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of the test's own; `vxp-<pid>-...`, so a crashed run's are removed by
/// `Lab::remove_stale`.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("{}{}", vxprobe::lab::NETNS_PREFIX, unique(tag));
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    fn inode(&self) -> u64 {
        common::netns_inode(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A temporary directory, removed afterwards.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("vxprobe-pods-{}", unique(tag)));
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` on a thread inside the namespace `netns`; threads it starts (the index's) stay
/// there.
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = fs::File::open(format!("/run/netns/{netns}")).unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a namespace fd we hold open; it moves only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
    })
}

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

/// The initial namespace: kthreadd's (init's may not be readable in a sandbox).
fn init_netns() -> u64 {
    fs::metadata("/proc/2/ns/net").unwrap().ino()
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

/// A `sleep` child, in the namespace `netns` if given; killed when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn start(netns: Option<&str>) -> Self {
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "sleep", "1000"]);
                cmd
            }
            None => {
                let mut cmd = Command::new("sleep");
                cmd.arg("1000");
                cmd
            }
        };
        Self(cmd.stdin(Stdio::null()).spawn().expect("spawning sleep"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where a cgroup hierarchy is mounted: v1's `pids` controller, or the v2 hierarchy.
fn cgroup_mount(v2: bool) -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (path, fstype, options) = (fields[1], fields[2], fields[3]);
        let wanted = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && options.split(',').any(|o| o == "pids")
        };
        wanted.then(|| PathBuf::from(path))
    })
}

/// Every cgroup hierarchy mounted here (v1 controllers and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            matches!(fields[2], "cgroup" | "cgroup2").then(|| PathBuf::from(fields[1]))
        })
        .collect()
}

/// Removes the cgroup tree `top` (relative to each hierarchy) wherever it exists, leaves first.
fn remove_cgroup_tree(top: &str) {
    fn remove(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&entry.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
    }
    for mount in cgroup_mounts() {
        remove(&mount.join(top));
    }
}

/// A kubelet-shaped pod cgroup (cgroupfs driver) under a test-only top directory:
/// `<mount>/vxprobe-test-<n>/kubepods/besteffort/pod<uid>`.
struct PodCgroup {
    top: String,
    leaf: PathBuf,
}

impl PodCgroup {
    fn new(mount: &Path, uid: &str) -> Self {
        let top = format!("vxprobe-test-{}", unique("cg"));
        let leaf = mount
            .join(&top)
            .join(format!("kubepods/besteffort/pod{uid}"));
        fs::create_dir_all(&leaf).unwrap_or_else(|e| panic!("{}: {e}", leaf.display()));
        Self { top, leaf }
    }

    fn add(&self, pid: u32) {
        let procs = self.leaf.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("{} < {pid}: {e}", procs.display()));
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.top);
    }
}

/// A kubelet-shaped pod log directory with one subdirectory per container.
fn pod_log_dir(logs: &Path, namespace: &str, name: &str, uid: &str, containers: &[&str]) {
    let dir = logs.join(format!("{namespace}_{name}_{uid}"));
    for container in containers {
        fs::create_dir_all(dir.join(container)).unwrap();
    }
}

fn id(namespace: &str, name: &str, uid: &str) -> PodId {
    PodId {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
    }
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
    run(
        "ip",
        &[
            "-n",
            &node.name,
            "link",
            "add",
            &host_dev,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod_ns.name,
        ],
    );
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

const PAUSE_IMAGE: &str = "localhost/vxprobe-pause";

/// A pause image built here (FROM scratch, busybox-static's sleep) and saved as an OCI
/// archive: nothing can be pulled from a registry on this machine.
fn build_pause_image(root: &Path, tag: &str) -> PathBuf {
    let context = root.join("image");
    fs::create_dir_all(&context).unwrap();
    fs::copy("/bin/busybox", context.join("busybox")).expect("busybox-static (xtask installs it)");
    fs::write(
        context.join("Containerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         ENTRYPOINT [\"/bin/busybox\", \"sleep\", \"2147483647\"]\n",
    )
    .unwrap();
    // Podman's storage under the test root: nothing is left in the machine's.
    let storage = [
        "--root",
        &root.join("podman/root").to_string_lossy(),
        "--runroot",
        &root.join("podman/run").to_string_lossy(),
        "--storage-driver",
        "vfs",
    ]
    .map(str::to_owned);
    let image = format!("{PAUSE_IMAGE}:{tag}");
    let mut build = storage.to_vec();
    build.extend(["build", "-q", "-t", &image].map(str::to_owned));
    build.push(context.to_string_lossy().into_owned());
    run(
        "podman",
        &build.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let archive = root.join("pause.tar");
    let mut save = storage.to_vec();
    save.extend(["save", "--format", "oci-archive", "-o"].map(str::to_owned));
    save.push(archive.to_string_lossy().into_owned());
    save.push(image);
    run(
        "podman",
        &save.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    archive
}

/// containerd beside the system: its own root, state, socket and config, run inside the
/// node's namespace (so the CNI plugin's host-side veths are made there).
struct Containerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    root: PathBuf,
}

impl Containerd {
    fn start(root: &Path, netns: &str, image: &str, subnet: &str) -> Self {
        let socket = root.join("containerd.sock");
        let cni = root.join("cni");
        fs::create_dir_all(&cni).unwrap();
        fs::write(
            cni.join("10-vxprobe.conflist"),
            format!(
                r#"{{"cniVersion": "0.4.0", "name": "vxprobe-{}", "plugins": [
                    {{"type": "ptp", "ipMasq": false, "mtu": 1500,
                      "ipam": {{"type": "host-local", "subnet": "{subnet}",
                                "dataDir": "{}"}}}}]}}"#,
                unique("net"),
                root.join("ipam").display()
            ),
        )
        .unwrap();
        let config = root.join("containerd.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
"#,
                root = root.display(),
                socket = socket.display(),
                cni = cni.display(),
            ),
        )
        .unwrap();
        let log = root.join("containerd.log");
        // Forked from a thread in the namespace, not through `ip netns exec`, whose fresh
        // /sys has no cgroup mounts for runc.
        let child = in_netns(netns, || {
            Command::new("containerd")
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(fs::File::create(&log).unwrap())
                .stderr(fs::File::create(root.join("containerd.stderr")).unwrap())
                .spawn()
                .expect("containerd (xtask installs Debian's)")
        });
        let mut containerd = Self {
            child,
            socket,
            log,
            root: root.to_owned(),
        };
        containerd.wait_serving();
        containerd
    }

    fn wait_serving(&mut self) {
        let limit = Duration::from_secs(30) * time_scale();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("containerd exited ({status}): {}", self.logs());
            }
            let answered = self.socket.exists()
                && Command::new("ctr")
                    .arg("--address")
                    .arg(&self.socket)
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success());
            if answered {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "containerd not serving after {limit:?}: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        let stderr = fs::read_to_string(self.root.join("containerd.stderr")).unwrap_or_default();
        let stdout = fs::read_to_string(&self.log).unwrap_or_default();
        let text = format!("{stdout}{stderr}");
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn import(&self, archive: &Path) {
        run(
            "ctr",
            &[
                "--address",
                &self.socket.to_string_lossy(),
                "-n",
                "k8s.io",
                "images",
                "import",
                "--base-name",
                PAUSE_IMAGE,
                &archive.to_string_lossy(),
            ],
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Sandboxes still there (a failed test): removed through CRI, as kubelet would.
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            let socket = self.socket.clone();
            rt.block_on(async move {
                let Ok(channel) = vxprobe::node::pods::cri::channel(&socket).await else {
                    return;
                };
                let mut client = RuntimeServiceClient::new(channel);
                let Ok(list) = client
                    .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                    .await
                else {
                    return;
                };
                for sandbox in list.into_inner().items {
                    let _ = remove_sandbox(&mut client, &sandbox.id).await;
                }
            });
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // Shims outlive containerd: end the ones started for this socket, by pid.
        let address = self.socket.to_string_lossy().into_owned();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.starts_with("/usr/bin/containerd-shim") && cmdline.contains(&address) {
                // SAFETY: kill(2) on a shim this test's containerd started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Mounts left under the root (rootfs overlays, shm), deepest first.
        let root = self.root.to_string_lossy().into_owned();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = Command::new("umount").args(["-l", mount]).status();
        }
    }
}

async fn remove_sandbox(
    client: &mut RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> Result<(), tonic::Status> {
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    Ok(())
}

/// A sandbox config as kubelet writes one (cgroupfs driver), under a test-only cgroup top.
fn sandbox_config(
    pod: &PodId,
    host_network: bool,
    logs: &Path,
    cgroup_top: &str,
) -> PodSandboxConfig {
    let labels = [
        ("io.kubernetes.pod.name", pod.name.as_str()),
        ("io.kubernetes.pod.namespace", pod.namespace.as_str()),
        ("io.kubernetes.pod.uid", pod.uid.as_str()),
        ("app", "web"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into_iter()
    .collect();
    let log_directory = logs.join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid));
    fs::create_dir_all(&log_directory).unwrap();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt: 0,
        }),
        // Kubelet leaves the hostname out for host-network pods (no UTS namespace of their own).
        hostname: if host_network {
            String::new()
        } else {
            pod.name.clone()
        },
        log_directory: log_directory.to_string_lossy().into_owned(),
        labels,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{cgroup_top}/kubepods/besteffort/pod{}", pod.uid),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: if host_network {
                        NamespaceMode::Node
                    } else {
                        NamespaceMode::Pod
                    } as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The network namespace of a sandbox, found without CRI: the process runc put in a cgroup
/// named after the sandbox.
fn sandbox_netns(sandbox_id: &str) -> Option<u64> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        entry.file_name().to_str()?.parse::<u32>().ok()?;
        let cgroup = fs::read_to_string(entry.path().join("cgroup")).ok()?;
        cgroup.contains(sandbox_id).then(|| {
            fs::metadata(entry.path().join("ns/net"))
                .ok()
                .map(|m| m.ino())
        })?
    })
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
    let root = TempDir::new("cri");
    let node = Netns::new("crinode");
    let tag = unique("t");
    let archive = build_pause_image(&root.0, &tag);
    let image = format!("{PAUSE_IMAGE}:{tag}");
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 250;
    let containerd = Containerd::start(&root.0, &node.name, &image, &format!("198.19.{seq}.0/24"));
    containerd.import(&archive);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = rt.block_on(async {
        RuntimeServiceClient::new(
            vxprobe::node::pods::cri::channel(&containerd.socket)
                .await
                .unwrap(),
        )
    });
    let node_namespaces = NodeNamespaces(vec![node.inode(), init_netns()]);
    let config = PodConfig {
        cri: CriSocket::Path(containerd.socket.clone()),
        pod_logs: root.0.join("no-pod-logs"),
        ..PodConfig::default()
    };
    let index = in_netns(&node.name, || PodIndex::start(config)).unwrap();
    let first = wait_first(&index, &node_namespaces);
    assert_eq!(first.source(), Source::Cri, "error: {:?}", first.error());
    assert!(
        first.runtime().is_some_and(|r| r.starts_with("containerd")),
        "{:?}",
        first.runtime()
    );
    let logs = root.0.join("logs");
    let cgroup_top = format!("vxprobe-test-{}", unique("cri"));

    // A host-network pod first: when web-0 is named, this one has been listed too.
    let host_pod = id("kube-system", "kube-proxy-q8", &new_uid());
    let host_config = sandbox_config(&host_pod, true, &logs, &cgroup_top);
    let host_sandbox = rt
        .block_on(client.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host_config),
            runtime_handler: String::new(),
        }))
        .unwrap_or_else(|e| panic!("RunPodSandbox (host network): {e}\n{}", containerd.logs()))
        .into_inner()
        .pod_sandbox_id;

    let web = id("shop", "web-0", &new_uid());
    let web_config = sandbox_config(&web, false, &logs, &cgroup_top);
    let sandbox = rt
        .block_on(client.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(web_config.clone()),
            runtime_handler: String::new(),
        }))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", containerd.logs()))
        .into_inner()
        .pod_sandbox_id;
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
    let links: Vec<serde_json::Value> = serde_json::from_str(&run(
        "ip",
        &["-n", &node.name, "-j", "link", "show", "type", "veth"],
    ))
    .unwrap();
    assert_eq!(links.len(), 1, "one veth in the node: {links:?}");
    let ifindex = links[0]["ifindex"].as_u64().unwrap() as u32;
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

    rt.block_on(remove_sandbox(&mut client, &sandbox))
        .unwrap_or_else(|e| panic!("removing the sandbox: {e}\n{}", containerd.logs()));
    let (_, took) = wait_for(
        &index,
        &node_namespaces,
        "web-0 forgotten once its sandbox was removed",
        Duration::from_secs(10),
        |s| (s.pod_of_netns(netns).is_none() && s.pod_of_device(ifindex).is_none()).then_some(()),
    );
    eprintln!("cri: forgotten after {took:?}");
    rt.block_on(remove_sandbox(&mut client, &host_sandbox))
        .unwrap();
    drop(index);
    drop(containerd);
    remove_cgroup_tree(&cgroup_top);
}
