//! Pods from the node's layout, without a container runtime socket: a process's cgroup path
//! carries its pod's UID, and kubelet's log directories (`/var/log/pods/<ns>_<name>_<uid>/`,
//! one subdirectory per container) give the pod's namespace, name and containers.
//!
//! One walk of /proc at start; then each refresh lists /proc's pid directories and reads only
//! the new ones (and, for a few seconds, the young ones again: a process is moved into its
//! pod's cgroup and namespace just after it is created). Every [`VERIFY_EVERY`] refreshes all
//! known pids are read again, which catches reused pids. A network namespace is a pod's when
//! the processes in it that belong to a pod all belong to that one pod; the node's own
//! namespaces never are (host-network pods live there).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use super::{Found, Pod, PodId};

/// Refreshes after which a pid is read again, then left alone until the next verification.
const SETTLE_REFRESHES: u32 = 3;
/// Every this many refreshes, every known pid is read again.
const VERIFY_EVERY: u64 = 30;
/// Refreshes in which a young pod's log directory is checked for new containers,
const CONTAINER_CHECKS: u32 = 10;
/// and the age past which a pod's directory is settled (not young) when first read.
const SETTLED_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The pod UID in a cgroup path, if the path is a kubelet pod's (`kubepods` appears above a
/// `pod<uid>` segment). Both drivers: cgroupfs `.../kubepods/burstable/pod<uid>/<container>`
/// and systemd `.../kubepods-burstable-pod<uid_with_underscores>.slice/...`. UIDs are UUIDs,
/// or 32 hex digits for static pods (a hash of their manifest).
pub fn pod_uid_of_cgroup(path: &str) -> Option<String> {
    let mut kubepods = false;
    let mut uid = None;
    for segment in path.split('/') {
        if segment.starts_with("kubepods") || segment.contains("-kubepods") {
            kubepods = true;
        }
        if !kubepods {
            continue;
        }
        let segment = segment.strip_suffix(".slice").unwrap_or(segment);
        // The pod's segment is `pod<uid>` or ends in `-pod<uid>`.
        let candidate = segment
            .strip_prefix("pod")
            .or_else(|| segment.rsplit_once("-pod").map(|(_, rest)| rest));
        if let Some(found) = candidate.and_then(normal_uid) {
            uid = Some(found);
        }
    }
    uid
}

/// A UID as kubelet writes it in paths: a UUID (with `_` for `-` under systemd) or 32 hex
/// digits; lowercase, with dashes.
fn normal_uid(text: &str) -> Option<String> {
    let uid = text.replace('_', "-").to_ascii_lowercase();
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = uid.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let uuid = lengths == [8, 4, 4, 4, 12] && groups.iter().all(|g| hex(g));
    let hash = lengths == [32] && hex(&uid);
    (uuid || hash).then_some(uid)
}

/// The pod UID of a process, from its `/proc/<pid>/cgroup` (any hierarchy, v1 or v2).
pub fn pod_uid_of_process(cgroup_file: &str) -> Option<String> {
    cgroup_file
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(pod_uid_of_cgroup)
}

/// A kubelet pod log directory's name, `<namespace>_<name>_<uid>`: namespaces and names are
/// DNS labels and subdomains, which hold no `_`.
pub fn parse_log_dir(name: &str) -> Option<PodId> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || namespace.is_empty() || pod.is_empty() {
        return None;
    }
    Some(PodId {
        namespace: namespace.to_owned(),
        name: pod.to_owned(),
        uid: normal_uid(uid)?,
    })
}

/// The inode of a `net:[4026531840]` namespace link.
pub fn netns_of_link(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// What one process says: its network namespace and its pod, if any.
#[derive(Clone, Debug)]
struct Seen {
    netns: u64,
    uid: Option<Arc<str>>,
    /// Refreshes this pid has been read in; young pids are read again.
    reads: u32,
}

/// Names of the pods kubelet has log directories for, read again when the directory changes.
#[derive(Default)]
struct LogDirs {
    mtime: Option<SystemTime>,
    by_uid: HashMap<Arc<str>, (PodId, PathBuf)>,
}

/// A pod's container names, and when to read them again: kubelet makes a container's log
/// directory when it creates the container, after the sandbox, so a young pod's directory is
/// checked (its mtime) at each of its first refreshes; a settled one only at verifications.
struct Containers {
    names: Vec<String>,
    mtime: Option<SystemTime>,
    checks: u32,
}

impl Containers {
    fn read(dir: &Path) -> Self {
        let mtime = fs::metadata(dir).and_then(|m| m.modified()).ok();
        let settled = mtime
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= SETTLED_AGE);
        Self {
            names: container_names(dir),
            mtime,
            checks: if settled { CONTAINER_CHECKS } else { 0 },
        }
    }

    fn young(&self) -> bool {
        self.checks < CONTAINER_CHECKS
    }

    /// The names now, reading the directory again only if it changed.
    fn refresh(&mut self, dir: &Path) -> &[String] {
        if self.checks < CONTAINER_CHECKS {
            self.checks += 1;
            let mtime = fs::metadata(dir).and_then(|m| m.modified()).ok();
            if mtime != self.mtime {
                self.names = container_names(dir);
                self.mtime = mtime;
            }
        }
        &self.names
    }
}

/// The layout source's state between refreshes.
pub(super) struct Layout {
    proc_root: PathBuf,
    pod_logs: PathBuf,
    node_netns: Vec<u64>,
    pids: HashMap<u32, Seen>,
    logs: LogDirs,
    /// Container names per pod UID (the log directory's subdirectories).
    containers: HashMap<Arc<str>, Containers>,
    refreshes: u64,
    uids: HashSet<Arc<str>>,
    /// The pods by namespace, as of the last refresh.
    found: BTreeMap<u64, Found>,
}

impl Layout {
    /// `node_netns`: the namespaces that are the node's own, never a pod's.
    pub(super) fn new(proc_root: PathBuf, pod_logs: PathBuf, node_netns: Vec<u64>) -> Self {
        Self {
            proc_root,
            pod_logs,
            node_netns,
            pids: HashMap::new(),
            logs: LogDirs::default(),
            containers: HashMap::new(),
            refreshes: 0,
            uids: HashSet::new(),
            found: BTreeMap::new(),
        }
    }

    /// Whether this node has kubelet's pod log directories at all.
    pub(super) fn available(pod_logs: &Path) -> bool {
        pod_logs.is_dir()
    }

    /// The pods by network namespace, as of the last refresh.
    pub(super) fn found(&self) -> &BTreeMap<u64, Found> {
        &self.found
    }

    /// One refresh; says whether [`Layout::found`] changed. Pods are worked out again only
    /// when something they depend on did: a pod process came, went or moved, the log
    /// directories changed, a young pod's containers may have.
    pub(super) fn refresh(&mut self) -> Result<bool, String> {
        let verify = self.refreshes.is_multiple_of(VERIFY_EVERY);
        self.refreshes += 1;
        let mut dirty = verify | self.read_log_dirs(verify);
        let live = self.list_pids()?;
        self.pids.retain(|pid, seen| {
            let keep = live.contains(pid);
            dirty |= !keep && seen.uid.is_some();
            keep
        });
        for pid in live {
            let again = match self.pids.get(&pid) {
                None => true,
                Some(seen) => verify || seen.reads < SETTLE_REFRESHES,
            };
            if again {
                dirty |= self.read_pid(pid);
            }
        }
        dirty |= self.containers.values().any(Containers::young);
        if !dirty {
            return Ok(false);
        }
        let found = self.work_out(verify);
        let changed = found != self.found;
        self.found = found;
        Ok(changed)
    }

    fn list_pids(&self) -> Result<HashSet<u32>, String> {
        let entries = fs::read_dir(&self.proc_root)
            .map_err(|e| format!("{}: {e}", self.proc_root.display()))?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect())
    }

    /// Reads a process's namespace and pod; says whether that may change the pods.
    fn read_pid(&mut self, pid: u32) -> bool {
        let dir = self.proc_root.join(pid.to_string());
        let read = match (
            fs::read_link(dir.join("ns/net")),
            fs::read_to_string(dir.join("cgroup")),
        ) {
            (Ok(link), Ok(cgroup)) => netns_of_link(&link).map(|netns| (netns, cgroup)),
            _ => None,
        };
        // Gone, or a process whose namespace cannot be read (an undumpable init): nothing to
        // say, and nothing to read again before the next verification.
        let (netns, uid) = match read {
            Some((netns, cgroup)) => (netns, pod_uid_of_process(&cgroup).map(|u| self.intern(u))),
            None => (0, None),
        };
        // The first walk finds settled processes: only those that appear later are young.
        let first_walk = self.refreshes == 1;
        let reads = match self.pids.get(&pid) {
            _ if first_walk => SETTLE_REFRESHES,
            Some(seen) => seen.reads + 1,
            None => 1,
        };
        let has_pod = uid.is_some();
        let before = self.pids.insert(pid, Seen { netns, uid, reads });
        let now = &self.pids[&pid];
        let same = before
            .as_ref()
            .is_some_and(|b| b.netns == now.netns && b.uid == now.uid);
        let had_pod = before.is_some_and(|b| b.uid.is_some());
        (had_pod || has_pod) && !same
    }

    /// One shared string per UID: a thousand pods have many thousand processes.
    fn intern(&mut self, uid: String) -> Arc<str> {
        if let Some(known) = self.uids.get(uid.as_str()) {
            return known.clone();
        }
        let uid: Arc<str> = uid.into();
        self.uids.insert(uid.clone());
        uid
    }

    /// Reads the log directories again if they changed; says whether it did.
    fn read_log_dirs(&mut self, verify: bool) -> bool {
        let mtime = fs::metadata(&self.pod_logs).and_then(|m| m.modified()).ok();
        if !verify && mtime.is_some() && mtime == self.logs.mtime {
            return false;
        }
        self.logs.mtime = mtime;
        let mut by_uid = HashMap::new();
        for entry in fs::read_dir(&self.pod_logs).into_iter().flatten().flatten() {
            let Some(id) = entry.file_name().to_str().and_then(parse_log_dir) else {
                continue;
            };
            let uid = self.intern(id.uid.clone());
            by_uid.insert(uid, (id, entry.path()));
        }
        self.logs.by_uid = by_uid;
        true
    }

    /// Pods by namespace, from the pids and log directories read so far.
    fn work_out(&mut self, verify: bool) -> BTreeMap<u64, Found> {
        // Per namespace: the pod UIDs of its processes, and one pid to open it by.
        let mut per_netns: HashMap<u64, (HashSet<&Arc<str>>, u32)> = HashMap::new();
        for (pid, seen) in &self.pids {
            let Some(uid) = &seen.uid else { continue };
            if self.node_netns.contains(&seen.netns) {
                continue;
            }
            let entry = per_netns
                .entry(seen.netns)
                .or_insert((HashSet::new(), *pid));
            entry.0.insert(uid);
        }
        let mut found = BTreeMap::new();
        let mut named = HashSet::new();
        for (netns, (uids, pid)) in per_netns {
            // Processes of two pods in one namespace: whose it is cannot be told.
            let [uid] = uids.into_iter().collect::<Vec<_>>()[..] else {
                continue;
            };
            let Some((id, dir)) = self.logs.by_uid.get(uid) else {
                continue;
            };
            let containers = match self.containers.get_mut(uid) {
                Some(known) if !verify => known.refresh(dir).to_vec(),
                _ => {
                    let read = Containers::read(dir);
                    let names = read.names.clone();
                    self.containers.insert(uid.clone(), read);
                    names
                }
            };
            named.insert(uid.clone());
            found.insert(
                netns,
                Found {
                    netns,
                    ns_path: self.proc_root.join(format!("{pid}/ns/net")),
                    pod: Arc::new(Pod {
                        id: id.clone(),
                        containers,
                        labels: BTreeMap::new(),
                    }),
                },
            );
        }
        self.containers.retain(|uid, _| named.contains(uid));
        if verify {
            let referenced: HashSet<&Arc<str>> = self
                .pids
                .values()
                .filter_map(|s| s.uid.as_ref())
                .chain(self.logs.by_uid.keys())
                .collect();
            let keep: HashSet<Arc<str>> = referenced.into_iter().cloned().collect();
            self.uids = keep;
        }
        found
    }
}

/// A pod log directory's subdirectories: one per container, by name.
fn container_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6a5d6e-3c4f-4e0a-9f7e-2d1c3b4a5f60";

    #[test]
    fn cgroupfs_paths_carry_the_uid() {
        for path in [
            "/kubepods/besteffort/pod0b6a5d6e-3c4f-4e0a-9f7e-2d1c3b4a5f60/3f2a9c",
            "/kubepods/pod0b6a5d6e-3c4f-4e0a-9f7e-2d1c3b4a5f60/3f2a9c",
            "/kubepods/burstable/pod0b6a5d6e-3c4f-4e0a-9f7e-2d1c3b4a5f60",
        ] {
            assert_eq!(pod_uid_of_cgroup(path).as_deref(), Some(UID), "{path}");
        }
    }

    #[test]
    fn systemd_slices_carry_the_uid_with_underscores() {
        let path = "/kubepods.slice/kubepods-burstable.slice/\
                    kubepods-burstable-pod0b6a5d6e_3c4f_4e0a_9f7e_2d1c3b4a5f60.slice/\
                    cri-containerd-3f2a9c.scope";
        assert_eq!(pod_uid_of_cgroup(path).as_deref(), Some(UID));
        let guaranteed = "/kubepods.slice/kubepods-pod0b6a5d6e_3c4f_4e0a_9f7e_2d1c3b4a5f60.slice";
        assert_eq!(pod_uid_of_cgroup(guaranteed).as_deref(), Some(UID));
        // kubelet's own slice under systemd (kind, k3s).
        let nested = "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
                      kubelet-kubepods-besteffort-pod0b6a5d6e_3c4f_4e0a_9f7e_2d1c3b4a5f60.slice";
        assert_eq!(pod_uid_of_cgroup(nested).as_deref(), Some(UID));
    }

    #[test]
    fn static_pods_have_hash_uids() {
        let path = "/kubepods/burstable/pod9a8b7c6d5e4f30211a2b3c4d5e6f7a8b/abc";
        assert_eq!(
            pod_uid_of_cgroup(path).as_deref(),
            Some("9a8b7c6d5e4f30211a2b3c4d5e6f7a8b")
        );
    }

    #[test]
    fn other_cgroups_carry_none() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/containerd.service",
            // A pod-like name outside kubepods.
            "/pod0b6a5d6e-3c4f-4e0a-9f7e-2d1c3b4a5f60",
            "/kubepods/besteffort/podnot-a-uid",
            "/kubepods/besteffort",
        ] {
            assert_eq!(pod_uid_of_cgroup(path), None, "{path}");
        }
    }

    #[test]
    fn a_process_cgroup_file_is_read_on_v1_and_v2() {
        let v1 = "12:pids:/kubepods/besteffort/pod0b6a5d6e-3c4f-4e0a-9f7e-2d1c3b4a5f60/c1\n\
                  1:name=systemd:/\n0::/\n";
        assert_eq!(pod_uid_of_process(v1).as_deref(), Some(UID));
        let v2 = "0::/kubepods.slice/kubepods-besteffort.slice/\
                  kubepods-besteffort-pod0b6a5d6e_3c4f_4e0a_9f7e_2d1c3b4a5f60.slice/cri-x.scope\n";
        assert_eq!(pod_uid_of_process(v2).as_deref(), Some(UID));
        assert_eq!(pod_uid_of_process("0::/\n"), None);
    }

    #[test]
    fn log_dirs_name_pods() {
        let id = parse_log_dir("shop_web-0_0b6a5d6e-3c4f-4e0a-9f7e-2d1c3b4a5f60").unwrap();
        assert_eq!(
            (id.namespace.as_str(), id.name.as_str(), id.uid.as_str()),
            ("shop", "web-0", UID)
        );
        assert!(parse_log_dir("shop_web-0").is_none());
        assert!(parse_log_dir("shop_web_0_0b6a5d6e-3c4f-4e0a-9f7e-2d1c3b4a5f60").is_none());
        assert!(parse_log_dir("shop_web-0_notauid").is_none());
        assert!(parse_log_dir("_web-0_0b6a5d6e-3c4f-4e0a-9f7e-2d1c3b4a5f60").is_none());
    }

    /// A /proc of symlinks and files: what the layout reads of each process.
    fn fake_process(proc_root: &Path, pid: u32, netns: u64, cgroup: &str) {
        let dir = proc_root.join(pid.to_string());
        fs::create_dir_all(dir.join("ns")).unwrap();
        std::os::unix::fs::symlink(format!("net:[{netns}]"), dir.join("ns/net")).unwrap();
        fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
    }

    #[test]
    fn namespaces_are_named_by_their_one_pod_never_the_nodes() {
        let root = std::env::temp_dir().join(format!("vxprobe-layout-{}", std::process::id()));
        let (proc_root, logs) = (root.join("proc"), root.join("pods"));
        let uid = |n: u32| format!("00000000-0000-4000-8000-{n:012}");
        let cgroup = |n: u32| format!("/kubepods/besteffort/pod{}/c", uid(n));
        for (n, name) in [(1, "web-0"), (2, "kube-proxy"), (3, "a"), (4, "b")] {
            fs::create_dir_all(logs.join(format!("shop_{name}_{}/app", uid(n)))).unwrap();
        }
        fake_process(&proc_root, 10, 1000, &cgroup(1));
        fake_process(&proc_root, 11, 1000, &cgroup(1));
        // nsenter from the host into the pod: no pod of its own, no say.
        fake_process(&proc_root, 12, 1000, "/user.slice");
        // A host-network pod, in the node's namespace 1.
        fake_process(&proc_root, 13, 1, &cgroup(2));
        // Two pods in one namespace: whose it is cannot be told.
        fake_process(&proc_root, 14, 2000, &cgroup(3));
        fake_process(&proc_root, 15, 2000, &cgroup(4));
        let mut layout = Layout::new(proc_root.clone(), logs, vec![1]);
        assert!(layout.refresh().unwrap());
        let named: Vec<(u64, String, Vec<String>)> = layout
            .found()
            .values()
            .map(|f| (f.netns, f.pod.id.to_string(), f.pod.containers.clone()))
            .collect();
        assert_eq!(named, [(1000, "shop/web-0".into(), vec!["app".into()])]);
        // The pod's processes exit: forgotten.
        for pid in [10, 11] {
            fs::remove_dir_all(proc_root.join(pid.to_string())).unwrap();
        }
        assert!(layout.refresh().unwrap());
        assert!(layout.found().is_empty());
        assert!(!layout.refresh().unwrap(), "nothing changed");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn namespace_links_give_inodes() {
        assert_eq!(
            netns_of_link(Path::new("net:[4026532384]")),
            Some(4026532384)
        );
        assert_eq!(netns_of_link(Path::new("mnt:[4026532384]")), None);
    }
}
