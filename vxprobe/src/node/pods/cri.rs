//! Pods from the container runtime over CRI (containerd's or CRI-O's socket), as kubelet sees
//! them: `ListPodSandbox` (ready sandboxes) names and labels every pod; `PodSandboxStatus`,
//! asked once per new sandbox, says whether the pod has the node's network (skipped) and, in
//! its verbose info, the pid of the sandbox (containerd, CRI-O) or the path of its network
//! namespace; `/proc/<pid>/ns/net` then gives the namespace's inode. `ListContainers` gives
//! container names, read again when sandboxes change and every [`CONTAINERS_EVERY`].

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ListContainersRequest, ListPodSandboxRequest, NamespaceMode, PodSandboxFilter, PodSandboxState,
    PodSandboxStateValue, PodSandboxStatusRequest, PodSandboxStatusResponse, VersionRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{Found, Pod, PodId, layout::netns_of_link};

/// The sockets probed when none is given, in order: containerd, CRI-O, k3s's containerd,
/// cri-dockerd.
pub const USUAL_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/cri-dockerd.sock",
    "/var/run/cri-dockerd.sock",
];

/// No call to the runtime may take longer (a hung runtime must not stall the index forever).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Container names are read again at least this often,
const CONTAINERS_EVERY: Duration = Duration::from_secs(10);
/// and at every refresh for this long after a sandbox came or went (kubelet creates a pod's
/// containers just after its sandbox).
const CONTAINERS_AFTER_CHANGE: Duration = Duration::from_secs(5);

/// What a sandbox's status said about its network namespace.
#[derive(Clone, Debug)]
enum Netns {
    /// The pod's own namespace: its inode, and a path that opens it.
    Own(u64, PathBuf),
    /// The node's namespace (hostNetwork): never a pod's.
    Node,
    /// Not known (yet): the sandbox's process is not visible here. Asked again at the next
    /// refreshes, then only every [`UNKNOWN_RETRY`] (without hostPID, every sandbox is here).
    Unknown { asked: u32, at: Instant },
}

/// How often a sandbox whose namespace could not be found is asked about again.
const UNKNOWN_RETRY: Duration = Duration::from_secs(30);

impl Netns {
    fn ask_again(&self) -> bool {
        match self {
            Netns::Unknown { asked, at } => *asked < 3 || at.elapsed() >= UNKNOWN_RETRY,
            _ => false,
        }
    }
}

struct Sandbox {
    id: PodId,
    labels: BTreeMap<String, String>,
    netns: Netns,
}

/// A CRI connection and what it has said so far.
pub(super) struct Cri {
    client: RuntimeServiceClient<Channel>,
    /// The runtime's name and version, from `Version`.
    pub(super) runtime: String,
    proc_root: PathBuf,
    node_netns: Vec<u64>,
    sandboxes: HashMap<String, Sandbox>,
    containers: HashMap<String, Vec<String>>,
    containers_read: Option<Instant>,
    sandboxes_changed: Option<Instant>,
    found: BTreeMap<u64, Found>,
}

/// A gRPC channel to the CRI runtime listening on `socket` (a Unix socket).
pub async fn channel(socket: &Path) -> Result<Channel, String> {
    let path = socket.to_owned();
    // The URI is required and unused: the connector dials the socket.
    let endpoint = Endpoint::from_static("http://cri.invalid").connect_timeout(CALL_TIMEOUT);
    tokio::time::timeout(
        CALL_TIMEOUT,
        endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        })),
    )
    .await
    .map_err(|_| format!("{}: no answer in {CALL_TIMEOUT:?}", socket.display()))?
    .map_err(|e| format!("{}: {e}", socket.display()))
}

async fn timed<T>(
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("CRI {what}: {}", status.message())),
        Err(_) => Err(format!("CRI {what}: no answer in {CALL_TIMEOUT:?}")),
    }
}

impl Cri {
    /// Connects to the runtime at `socket` and asks its version (a socket that is not a CRI
    /// runtime's fails here).
    pub(super) async fn connect(
        socket: &Path,
        proc_root: PathBuf,
        node_netns: Vec<u64>,
    ) -> Result<Self, String> {
        let channel = channel(socket).await?;
        let mut client = RuntimeServiceClient::new(channel);
        let version = timed(
            "Version",
            client.version(VersionRequest {
                version: "v1".into(),
            }),
        )
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
        Ok(Self {
            client,
            runtime: format!("{} {}", version.runtime_name, version.runtime_version),
            proc_root,
            node_netns,
            sandboxes: HashMap::new(),
            containers: HashMap::new(),
            containers_read: None,
            sandboxes_changed: None,
            found: BTreeMap::new(),
        })
    }

    /// One refresh; says whether [`Cri::found`] changed.
    pub(super) async fn refresh(&mut self) -> Result<bool, String> {
        let ready = ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue {
                    state: PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        };
        let listed = timed("ListPodSandbox", self.client.list_pod_sandbox(ready))
            .await?
            .items;
        let before = self.sandboxes.len();
        self.sandboxes
            .retain(|id, _| listed.iter().any(|item| &item.id == id));
        let mut changed = self.sandboxes.len() != before;
        for item in listed {
            let Some(meta) = item.metadata else { continue };
            let asked = match self.sandboxes.get(&item.id).map(|s| &s.netns) {
                None => 0,
                Some(netns @ Netns::Unknown { asked, .. }) if netns.ask_again() => *asked,
                Some(_) => continue,
            };
            let status = timed(
                "PodSandboxStatus",
                self.client.pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: item.id.clone(),
                    verbose: true,
                }),
            )
            .await;
            let netns = match status.map(|status| self.netns_of(&status)) {
                Ok(Some(netns)) => netns,
                // Not visible, or removed meanwhile (the next list says so).
                Ok(None) | Err(_) => Netns::Unknown {
                    asked: asked + 1,
                    at: Instant::now(),
                },
            };
            changed |= asked == 0 || !matches!(netns, Netns::Unknown { .. });
            self.sandboxes.insert(
                item.id,
                Sandbox {
                    id: PodId {
                        namespace: meta.namespace,
                        name: meta.name,
                        uid: meta.uid,
                    },
                    labels: item.labels.into_iter().collect(),
                    netns,
                },
            );
        }
        if changed {
            self.sandboxes_changed = Some(Instant::now());
        }
        let due = self
            .containers_read
            .is_none_or(|at| at.elapsed() >= CONTAINERS_EVERY)
            || self
                .sandboxes_changed
                .is_some_and(|at| at.elapsed() < CONTAINERS_AFTER_CHANGE);
        if due {
            changed |= self.read_containers().await?;
        }
        if !changed {
            return Ok(false);
        }
        let found = self.work_out();
        let changed = found != self.found;
        self.found = found;
        Ok(changed)
    }

    /// The pods by network namespace, as of the last refresh.
    pub(super) fn found(&self) -> &BTreeMap<u64, Found> {
        &self.found
    }

    /// Reads container names; says whether they changed.
    async fn read_containers(&mut self) -> Result<bool, String> {
        let listed = timed(
            "ListContainers",
            self.client
                .list_containers(ListContainersRequest { filter: None }),
        )
        .await?;
        let mut containers: HashMap<String, Vec<String>> = HashMap::new();
        for container in listed.containers {
            if let Some(meta) = container.metadata {
                containers
                    .entry(container.pod_sandbox_id)
                    .or_default()
                    .push(meta.name);
            }
        }
        for names in containers.values_mut() {
            names.sort();
            names.dedup();
        }
        let changed = containers != self.containers;
        self.containers = containers;
        self.containers_read = Some(Instant::now());
        Ok(changed)
    }

    fn work_out(&self) -> BTreeMap<u64, Found> {
        let mut found = BTreeMap::new();
        for (id, sandbox) in &self.sandboxes {
            let Netns::Own(netns, ns_path) = &sandbox.netns else {
                continue;
            };
            found.insert(
                *netns,
                Found {
                    netns: *netns,
                    ns_path: ns_path.clone(),
                    pod: Arc::new(Pod {
                        id: sandbox.id.clone(),
                        containers: self.containers.get(id).cloned().unwrap_or_default(),
                        labels: sandbox.labels.clone(),
                    }),
                },
            );
        }
        found
    }

    /// A sandbox's network namespace, from its status; `None` when it cannot be found.
    fn netns_of(&self, status: &PodSandboxStatusResponse) -> Option<Netns> {
        let mode = status
            .status
            .as_ref()
            .and_then(|s| s.linux.as_ref()?.namespaces.as_ref()?.options.as_ref())
            .map(|o| o.network);
        if mode == Some(NamespaceMode::Node as i32) {
            return Some(Netns::Node);
        }
        let info: serde_json::Value = serde_json::from_str(status.info.get("info")?).ok()?;
        let by_pid = info["pid"].as_u64().filter(|&pid| pid > 0).and_then(|pid| {
            let path = self.proc_root.join(format!("{pid}/ns/net"));
            let netns = netns_of_link(&fs::read_link(&path).ok()?)?;
            Some((netns, path))
        });
        // Without the sandbox's process in sight (no hostPID): its namespace's bind mount.
        let by_path = || {
            let namespaces = info["runtimeSpec"]["linux"]["namespaces"].as_array()?;
            let path = namespaces.iter().find(|ns| ns["type"] == "network")?["path"]
                .as_str()
                .filter(|p| !p.is_empty())?;
            let netns = fs::metadata(path).ok()?.ino();
            Some((netns, PathBuf::from(path)))
        };
        let (netns, path) = by_pid.or_else(by_path)?;
        Some(if self.node_netns.contains(&netns) {
            Netns::Node
        } else {
            Netns::Own(netns, path)
        })
    }
}
