//! A real containerd for the pod tests, beside the system's (its own root, state, socket and
//! config, CNI from Debian's plugins), a pause image built here, and pod sandboxes as kubelet
//! asks for them over CRI.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    StopPodSandboxRequest, runtime_service_client::RuntimeServiceClient,
};
use vxprobe::node::pods::PodId;

use super::{
    pods::{in_netns, run, unique},
    time_scale,
};

pub const PAUSE_IMAGE: &str = "localhost/vxprobe-pause";

/// A pause image built here (FROM scratch, busybox-static's sleep) and saved as an OCI
/// archive: nothing can be pulled from a registry on this machine.
pub fn build_pause_image(root: &Path, tag: &str) -> PathBuf {
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
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
    root: PathBuf,
}

impl Containerd {
    pub fn start(root: &Path, netns: &str, image: &str, subnet: &str) -> Self {
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

    pub fn wait_serving(&mut self) {
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

    pub fn logs(&self) -> String {
        let stderr = fs::read_to_string(self.root.join("containerd.stderr")).unwrap_or_default();
        let stdout = fs::read_to_string(&self.log).unwrap_or_default();
        let text = format!("{stdout}{stderr}");
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn import(&self, archive: &Path) {
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

pub async fn remove_sandbox(
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
pub fn sandbox_config(
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
pub fn sandbox_netns(sandbox_id: &str) -> Option<u64> {
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

/// The pid of a sandbox's process (runc put it in a cgroup named after the sandbox).
pub fn sandbox_pid(sandbox_id: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        let cgroup = fs::read_to_string(entry.path().join("cgroup")).ok()?;
        cgroup.contains(sandbox_id).then_some(pid)
    })
}
