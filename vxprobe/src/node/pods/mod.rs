//! Pods, not inode numbers: which pod a network namespace, and a host-side device, belong to.
//!
//! Built from what the node itself has, without the API server, best source first:
//! - [`Source::Cri`]: the container runtime over CRI ([`cri`]), on `--cri-socket` or the usual
//!   sockets; names, UIDs, labels and container names of every ready sandbox.
//! - [`Source::Layout`]: without a socket, the node's layout ([`layout`]): pod UIDs in the
//!   processes' cgroup paths, namespaces and names in kubelet's `/var/log/pods`.
//! - [`Source::None`]: neither; nothing is named.
//!
//! The index runs on a thread of its own (blocking /proc reads and runtime calls never touch
//! the caller's event loop) and publishes immutable [`Snapshot`]s: a lookup is a map read on
//! the snapshot in hand. Devices of the caller's network namespace whose peer is in a pod's
//! namespace (veths of any CNI) are named by that pod ([`veth`]). The node's own namespaces
//! (init's, and the one the index was started in) are never a pod's: host-network pods live
//! there.

pub mod cri;
pub mod layout;
mod veth;

use std::{
    collections::{BTreeMap, HashMap},
    fmt, fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Serialize;
use tokio::sync::watch;

/// Which pod: what JSON lines carry as `"pod": {"namespace", "name", "uid"}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PodId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for PodId {
    /// `namespace/name`, as kubectl names a pod.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod, as much as the source knows of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub id: PodId,
    /// Container names (sorted), where the source knows them.
    pub containers: Vec<String>,
    /// The sandbox's labels (CRI only: kubelet copies the pod's labels there).
    pub labels: BTreeMap<String, String>,
}

/// Where the names came from, as `meta` says it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cri,
    Layout,
    None,
}

impl Source {
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Cri => "cri",
            Source::Layout => "layout",
            Source::None => "none",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which CRI socket to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CriSocket {
    /// The first of [`cri::USUAL_SOCKETS`] that answers.
    Probe,
    /// This one (`--cri-socket PATH`); it must exist.
    Path(PathBuf),
    /// None: the layout only.
    Off,
}

/// What the index reads, and how often.
#[derive(Clone, Debug)]
pub struct PodConfig {
    pub cri: CriSocket,
    /// The node's /proc (`/proc` with hostPID; a host mount otherwise).
    pub proc_root: PathBuf,
    /// Kubelet's pod log directories.
    pub pod_logs: PathBuf,
    /// Between refreshes; new pods are named within about two of them.
    pub interval: Duration,
    /// Also name devices of the caller's namespace by the pod at their other end.
    pub devices: bool,
}

impl Default for PodConfig {
    fn default() -> Self {
        Self {
            cri: CriSocket::Probe,
            proc_root: "/proc".into(),
            pod_logs: "/var/log/pods".into(),
            interval: Duration::from_secs(1),
            devices: true,
        }
    }
}

/// The index cannot start as asked.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("--cri-socket {0}: no such socket")]
    NoSocket(PathBuf),
    #[error("starting the pod index: {0}")]
    Thread(#[from] std::io::Error),
}

/// One pod namespace as a source found it (internal to the sources and the worker).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Found {
    netns: u64,
    /// A path that opens the namespace (a process's `ns/net`, or a bind mount).
    ns_path: PathBuf,
    pod: Arc<Pod>,
}

/// The pods at one moment: cheap to look up in, never changed once published.
#[derive(Clone, Debug)]
pub struct Snapshot {
    source: Source,
    /// The runtime's name and version (CRI), for `meta`.
    runtime: Option<String>,
    generation: u64,
    pods: HashMap<u64, Arc<Pod>>,
    devices: HashMap<u32, (u64, Arc<Pod>)>,
    error: Option<String>,
}

impl Snapshot {
    fn empty(source: Source) -> Self {
        Self {
            source,
            runtime: None,
            generation: 0,
            pods: HashMap::new(),
            devices: HashMap::new(),
            error: None,
        }
    }

    /// The pod whose network namespace has this inode.
    pub fn pod_of_netns(&self, netns: u64) -> Option<&Arc<Pod>> {
        self.pods.get(&netns)
    }

    /// The pod at the other end of this device of the index's namespace (a host-side veth).
    pub fn pod_of_device(&self, ifindex: u32) -> Option<&Arc<Pod>> {
        self.devices.get(&ifindex).map(|(_, pod)| pod)
    }

    /// The pod an event belongs to: the pod whose namespace it happened in, or, in the
    /// observer's own namespace (`own_netns`, never a pod's), the pod at the other end of its
    /// device (a host-side veth). Device numbers of other namespaces are theirs: only the
    /// namespace names those events.
    pub fn pod_of_event(
        &self,
        own_netns: u64,
        netns: u64,
        ifindex: Option<u32>,
    ) -> Option<Arc<Pod>> {
        match self.pod_of_netns(netns) {
            Some(pod) => Some(pod.clone()),
            None if netns == own_netns => self.pod_of_device(ifindex?).cloned(),
            None => None,
        }
    }

    /// The pod's namespace inode at the other end of this device.
    pub fn netns_of_device(&self, ifindex: u32) -> Option<u64> {
        self.devices.get(&ifindex).map(|(netns, _)| *netns)
    }

    /// Every named namespace and its pod.
    pub fn pods(&self) -> impl Iterator<Item = (u64, &Arc<Pod>)> {
        self.pods.iter().map(|(netns, pod)| (*netns, pod))
    }

    /// Every named device (ifindex) and its pod.
    pub fn devices(&self) -> impl Iterator<Item = (u32, &Arc<Pod>)> {
        self.devices
            .iter()
            .map(|(ifindex, (_, pod))| (*ifindex, pod))
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn source(&self) -> Source {
        self.source
    }

    pub fn runtime(&self) -> Option<&str> {
        self.runtime.as_deref()
    }

    /// Counts the refreshes that changed something (0: none published yet).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Why the last refresh failed, if it did (the snapshot then holds the last good pods).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

/// The live pod index: a handle on the snapshots its thread publishes. Clones share the
/// thread; it stops once every handle is dropped.
#[derive(Clone, Debug)]
pub struct PodIndex {
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl PodIndex {
    /// Starts the index on a thread of its own, in the calling thread's network namespace
    /// (the one whose devices [`Snapshot::pod_of_device`] knows). Returns at once; the first
    /// snapshot follows ([`PodIndex::ready`]). An explicit socket that does not exist is an
    /// error; one that does not answer falls back to the layout, saying why in
    /// [`Snapshot::error`].
    pub fn start(config: PodConfig) -> Result<Self, PodError> {
        if let CriSocket::Path(path) = &config.cri
            && !path.exists()
        {
            return Err(PodError::NoSocket(path.clone()));
        }
        let (tx, rx) = watch::channel(Arc::new(Snapshot::empty(Source::None)));
        std::thread::Builder::new()
            .name("vxprobe-pods".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(run(config, tx)),
                    Err(e) => {
                        let mut snapshot = Snapshot::empty(Source::None);
                        snapshot.generation = 1;
                        snapshot.error = Some(format!("pod index: {e}"));
                        let _ = tx.send(Arc::new(snapshot));
                    }
                }
            })?;
        Ok(Self { rx })
    }

    /// An index that names nothing (`meta` says `none`).
    pub fn disabled() -> Self {
        let mut snapshot = Snapshot::empty(Source::None);
        snapshot.generation = 1;
        let (_, rx) = watch::channel(Arc::new(snapshot));
        Self { rx }
    }

    /// The pods now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// Waits for the first snapshot (the source chosen and the node read once).
    pub async fn ready(&mut self) -> Arc<Snapshot> {
        let first = match self.rx.wait_for(|s| s.generation > 0).await {
            Ok(snapshot) => Some(snapshot.clone()),
            Err(_) => None,
        };
        // The thread is gone: what it left is all there is.
        first.unwrap_or_else(|| self.snapshot())
    }

    /// Waits for the next published snapshot; `None` once the index has stopped.
    pub async fn changed(&mut self) -> Option<Arc<Snapshot>> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    pub fn pod_of_netns(&self, netns: u64) -> Option<Arc<Pod>> {
        self.rx.borrow().pod_of_netns(netns).cloned()
    }

    pub fn pod_of_device(&self, ifindex: u32) -> Option<Arc<Pod>> {
        self.rx.borrow().pod_of_device(ifindex).cloned()
    }
}

/// The node's own namespaces: the initial one and the caller's (host-network pods live
/// there). The initial one is init's, or kthreadd's where init's cannot be read (kernel
/// threads all live in it).
fn node_netns(proc_root: &Path) -> Vec<u64> {
    let inode = |path: PathBuf| layout::netns_of_link(&fs::read_link(path).ok()?);
    let kthreadd = fs::read_to_string(proc_root.join("2/comm"))
        .is_ok_and(|comm| comm.trim() == "kthreadd")
        .then(|| inode(proc_root.join("2/ns/net")))
        .flatten();
    let mut node: Vec<u64> = [
        inode(proc_root.join("1/ns/net")),
        kthreadd,
        inode("/proc/thread-self/ns/net".into()),
    ]
    .into_iter()
    .flatten()
    .collect();
    node.sort_unstable();
    node.dedup();
    node
}

enum Backend {
    Cri(cri::Cri),
    Layout(layout::Layout),
}

impl Backend {
    /// One refresh; says whether [`Backend::found`] changed.
    async fn refresh(&mut self) -> Result<bool, String> {
        match self {
            Backend::Cri(cri) => cri.refresh().await,
            Backend::Layout(layout) => layout.refresh(),
        }
    }

    fn found(&self) -> &BTreeMap<u64, Found> {
        match self {
            Backend::Cri(cri) => cri.found(),
            Backend::Layout(layout) => layout.found(),
        }
    }
}

/// Picks the best source this node has; the errors say why better ones were passed over.
async fn choose(config: &PodConfig, node: &[u64]) -> (Option<Backend>, Vec<String>) {
    let mut errors = Vec::new();
    let sockets: Vec<PathBuf> = match &config.cri {
        CriSocket::Probe => cri::USUAL_SOCKETS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect(),
        CriSocket::Path(path) => vec![path.clone()],
        CriSocket::Off => Vec::new(),
    };
    for socket in sockets {
        match cri::Cri::connect(&socket, config.proc_root.clone(), node.to_vec()).await {
            Ok(cri) => return (Some(Backend::Cri(cri)), errors),
            Err(e) => errors.push(e),
        }
    }
    if layout::Layout::available(&config.pod_logs) {
        let layout = layout::Layout::new(
            config.proc_root.clone(),
            config.pod_logs.clone(),
            node.to_vec(),
        );
        return (Some(Backend::Layout(layout)), errors);
    }
    (None, errors)
}

/// The index's thread: refresh, publish what changed, wait for the next tick or a link change.
async fn run(config: PodConfig, tx: watch::Sender<Arc<Snapshot>>) {
    let node = node_netns(&config.proc_root);
    let (backend, errors) = choose(&config, &node).await;
    let mut snapshot = Snapshot::empty(match &backend {
        Some(Backend::Cri(_)) => Source::Cri,
        Some(Backend::Layout(_)) => Source::Layout,
        None => Source::None,
    });
    snapshot.error = (!errors.is_empty()).then(|| errors.join("; "));
    let Some(mut backend) = backend else {
        snapshot.generation = 1;
        let _ = tx.send(Arc::new(snapshot));
        return;
    };
    if let Backend::Cri(cri) = &backend {
        snapshot.runtime = Some(cri.runtime.clone());
    }
    let mut devices = if config.devices {
        match veth::Devices::new() {
            Ok(devices) => Some(devices),
            Err(e) => {
                snapshot.error = Some(format!("devices: {e}"));
                None
            }
        }
    } else {
        None
    };
    let fallback_error = snapshot.error.clone();
    let mut snapshot = Arc::new(snapshot);
    let mut first = true;
    loop {
        let mut error = fallback_error.clone();
        let pods_changed = match backend.refresh().await {
            Ok(changed) => changed,
            Err(e) => {
                error = Some(e);
                false
            }
        };
        let mut devices_changed = false;
        if let Some(devices) = &mut devices {
            match devices.refresh(backend.found(), pods_changed).await {
                Ok(changed) => devices_changed = changed,
                Err(e) => error = Some(e),
            }
        }
        if first || pods_changed || devices_changed || error != snapshot.error {
            first = false;
            let empty = HashMap::new();
            let by_device = devices.as_ref().map_or(&empty, |d| d.by_device());
            snapshot = Arc::new(next_snapshot(&snapshot, backend.found(), by_device, error));
            if tx.send(snapshot.clone()).is_err() {
                return;
            }
        }
        let link_change = async {
            match &mut devices {
                Some(devices) => devices.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            // A new veth: name it now rather than at the next tick.
            _ = link_change => tokio::time::sleep(config.interval / 5).await,
            _ = tx.closed() => return,
        }
    }
}

/// The snapshot after a refresh that changed something.
fn next_snapshot(
    current: &Snapshot,
    found: &BTreeMap<u64, Found>,
    by_device: &HashMap<u32, u64>,
    error: Option<String>,
) -> Snapshot {
    let pods: HashMap<u64, Arc<Pod>> = found
        .iter()
        .map(|(netns, f)| {
            // Keep the published Arc where the pod is unchanged.
            let pod = match current.pods.get(netns) {
                Some(old) if **old == *f.pod => old.clone(),
                _ => f.pod.clone(),
            };
            (*netns, pod)
        })
        .collect();
    let devices = by_device
        .iter()
        .filter_map(|(ifindex, netns)| Some((*ifindex, (*netns, pods.get(netns)?.clone()))))
        .collect();
    Snapshot {
        source: current.source,
        runtime: current.runtime.clone(),
        generation: current.generation + 1,
        pods,
        devices,
        error,
    }
}
