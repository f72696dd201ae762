//! Pods as a node has them, for the pod tests: network namespaces, kubelet-shaped cgroups
//! (v1 and v2) and log directories, processes placed in them; and, in [`LayoutPod`], a whole
//! pod from the node's layout with a veth whose host side is in a lab node's namespace.
//! Everything lives in namespaces, cgroups and directories the tests create, and goes with the
//! values that made it; addresses are from 198.18.0.0/15.

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime},
};

use vxprobe::node::pods::PodId;

pub static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or test run) uses.
pub fn unique(tag: &str) -> String {
    format!(
        "{}-{tag}{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A pod UID, as the API server makes them (a version 4 UUID).
pub fn new_uid() -> String {
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

pub fn run(program: &str, args: &[&str]) -> String {
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
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("{}{}", vxprobe::lab::NETNS_PREFIX, unique(tag));
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    pub fn inode(&self) -> u64 {
        super::netns_inode(&self.name)
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
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
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
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
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

/// The initial namespace: kthreadd's (init's may not be readable in a sandbox).
pub fn init_netns() -> u64 {
    fs::metadata("/proc/2/ns/net").unwrap().ino()
}

/// A `sleep` child, in the namespace `netns` if given; killed when dropped.
pub struct Sleeper(Child);

impl Sleeper {
    pub fn start(netns: Option<&str>) -> Self {
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

    pub fn pid(&self) -> u32 {
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
pub fn cgroup_mount(v2: bool) -> Option<PathBuf> {
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
pub fn cgroup_mounts() -> Vec<PathBuf> {
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
pub fn remove_cgroup_tree(top: &str) {
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
pub struct PodCgroup {
    pub top: String,
    pub leaf: PathBuf,
}

impl PodCgroup {
    pub fn new(mount: &Path, uid: &str) -> Self {
        let top = format!("vxprobe-test-{}", unique("cg"));
        let leaf = mount
            .join(&top)
            .join(format!("kubepods/besteffort/pod{uid}"));
        fs::create_dir_all(&leaf).unwrap_or_else(|e| panic!("{}: {e}", leaf.display()));
        Self { top, leaf }
    }

    pub fn add(&self, pid: u32) {
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
pub fn pod_log_dir(logs: &Path, namespace: &str, name: &str, uid: &str, containers: &[&str]) {
    let dir = logs.join(format!("{namespace}_{name}_{uid}"));
    for container in containers {
        fs::create_dir_all(dir.join(container)).unwrap();
    }
}

pub fn id(namespace: &str, name: &str, uid: &str) -> PodId {
    PodId {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
    }
}

/// A background command in a namespace (`ip netns exec`), killed when dropped.
pub fn spawn_in(netns: &str, program: &str, args: &[&str]) -> Sleeper {
    let child = Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    Sleeper(child)
}

/// Makes the network namespace `enter` (an `nsenter` option: `--net=/run/netns/NAME` or
/// `--net=/proc/PID/ns/net`) drop every ICMP echo request it receives, in an nftables input
/// chain of its own: a `NETFILTER_DROP` inside it for each ping.
pub fn drop_pings(enter: &str) {
    for command in [
        "add table inet vxprobe_test",
        "add chain inet vxprobe_test input { type filter hook input priority 0 ; }",
        "add rule inet vxprobe_test input icmp type echo-request drop",
    ] {
        run("nsenter", &[enter, "nft", command]);
    }
}

/// A pod from the node's layout, on a lab node: the node's namespace (where vxprobe runs),
/// the pod's, a veth between them (`host` in the node, `eth0` in the pod, `host_ip` and
/// `pod_ip` on a /30), a `sleep` in the pod's namespace placed in a kubelet-shaped cgroup (v1's
/// pids hierarchy, or v2), and kubelet's log directory for it under `logs` (where
/// `VXPROBE_POD_LOGS` points vxprobe).
pub struct LayoutPod {
    // Dropped first to last: the process, its cgroup, the files, the namespaces.
    process: Option<Sleeper>,
    _cgroup: PodCgroup,
    pub root: TempDir,
    pub node: Netns,
    pub pod_ns: Netns,
    pub host: String,
    pub host_ip: String,
    pub pod_ip: String,
    pub id: PodId,
    pub logs: PathBuf,
}

impl LayoutPod {
    /// `None` (saying why) where no cgroup hierarchy is mounted.
    pub fn new(namespace: &str, name: &str) -> Option<Self> {
        let Some(mount) = cgroup_mount(false).or_else(|| cgroup_mount(true)) else {
            eprintln!("skipped: no cgroup hierarchy to put a pod's process in");
            return None;
        };
        let root = TempDir::new("layoutpod");
        let logs = root.0.join("var/log/pods");
        let node = Netns::new("node");
        let pod_ns = Netns::new("pod");
        let host = format!("calip{}", SEQ.fetch_add(1, Ordering::Relaxed) % 100_000);
        let (host_ip, pod_ip) = ("198.18.77.1", "198.18.77.2");
        add_veth(&node, &host, &pod_ns);
        run(
            "ip",
            &[
                "-n",
                &node.name,
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &host,
            ],
        );
        run("ip", &["-n", &node.name, "link", "set", &host, "up"]);
        run(
            "ip",
            &[
                "-n",
                &pod_ns.name,
                "addr",
                "add",
                &format!("{pod_ip}/30"),
                "dev",
                "eth0",
            ],
        );
        run("ip", &["-n", &pod_ns.name, "link", "set", "eth0", "up"]);
        let uid = new_uid();
        pod_log_dir(&logs, namespace, name, &uid, &["app"]);
        let process = Sleeper::start(Some(&pod_ns.name));
        let cgroup = PodCgroup::new(&mount, &uid);
        cgroup.add(process.pid());
        Some(Self {
            process: Some(process),
            _cgroup: cgroup,
            root,
            node,
            pod_ns,
            host,
            host_ip: host_ip.into(),
            pod_ip: pod_ip.into(),
            id: id(namespace, name, &uid),
            logs,
        })
    }

    /// The pod as JSON lines carry it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "namespace": self.id.namespace,
            "name": self.id.name,
            "uid": self.id.uid,
        })
    }

    /// vxprobe's environment for this node's layout.
    pub fn env(&self) -> [(&str, &str); 1] {
        [("VXPROBE_POD_LOGS", self.logs.to_str().unwrap())]
    }

    /// Ends the pod's process: the node's layout has the pod no more.
    pub fn end(&mut self) {
        self.process = None;
    }

    /// Pings from the node to the pod, ten a second, until dropped.
    pub fn ping(&self) -> Sleeper {
        spawn_in(
            &self.node.name,
            "ping",
            &["-q", "-i", "0.1", "-w", "300", &self.pod_ip],
        )
    }
}

/// The evidence file's packets as tshark reads them: each one's comment and its interface's
/// description.
pub fn tshark_packets(path: &Path) -> Vec<(String, String)> {
    let fields = ["frame.comment", "frame.interface_description"];
    super::run::tshark_fields(path, &fields)
        .into_iter()
        .map(|f| {
            let mut f = f.into_iter();
            (f.next().unwrap_or_default(), f.next().unwrap_or_default())
        })
        .collect()
}

pub fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("running tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair: `host` in `node`, its peer `eth0` in `pod_ns`.
pub fn add_veth(node: &Netns, host: &str, pod_ns: &Netns) {
    run(
        "ip",
        &[
            "-n",
            &node.name,
            "link",
            "add",
            host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod_ns.name,
        ],
    );
}

/// Starts `command` in a detached tmux session of `columns` x `rows`.
pub fn tmux_start(session: &str, columns: u16, rows: u16, command: &str) {
    let (columns, rows) = (columns.to_string(), rows.to_string());
    tmux(&[
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        &columns,
        "-y",
        &rows,
        command,
    ]);
}

/// Waits until the tmux pane shows what `done` looks for; returns the screen.
pub fn wait_screen(session: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    super::wait_until(
        what,
        Duration::from_secs(60),
        || tmux(&["capture-pane", "-p", "-t", session]),
        |screen| done(screen),
    )
}
