//! Looking at devices and sockets of other network namespaces: kernel-wide hooks report events
//! from every namespace on the node, by ifindex, and an ifindex means nothing without its
//! namespace. Everything here is best effort: a process may be gone by the time we look.

use std::{
    collections::HashSet,
    ffi::CStr,
    fs,
    num::NonZeroUsize,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    time::{Duration, Instant},
};

/// A device's name and MTU.
pub type DeviceName = (String, u32);

/// Devices of other namespaces remembered (least recently used forgotten first).
const CACHE_ENTRIES: usize = 4096;
/// Lookups waiting for the worker at once; more are dropped (asked again later).
const PENDING_MAX: usize = 64;
/// How long the event loop may wait for the worker's answers per interval, in all: a user
/// who creates namespaces by the thousand costs the pipeline at most this.
const WAIT_PER_INTERVAL: Duration = Duration::from_millis(10);
/// /proc reads for sockets' devices per interval ([`DeviceNames::packet_socket`]).
const PROC_READS_PER_INTERVAL: u32 = 256;

/// The names of devices in other network namespaces, by (namespace inode, ifindex), for
/// events of kernel-wide hooks: an LRU cache in front of a worker thread that does the looking
/// (finding the namespace, `setns` into it, an ioctl), so the event loop never walks /proc or
/// spawns a thread. A miss waits for the answer within a budget per interval; beyond it the
/// event goes out without the name (it keeps `ifindex` and `netns`), and the answer serves the
/// next one. Devices of vxprobe's own namespace are an ioctl away, asked directly.
pub struct DeviceNames {
    own_netns: u64,
    cache: lru::LruCache<(u64, u32), Option<DeviceName>>,
    pending: HashSet<(u64, u32)>,
    worker: Option<Worker>,
    wait_left: Duration,
    proc_reads_left: u32,
}

struct Worker {
    requests: SyncSender<(u64, u32)>,
    answers: Receiver<((u64, u32), Option<DeviceName>)>,
}

impl DeviceNames {
    /// `own_netns`: the inode of vxprobe's network namespace. No thread until a device of
    /// another namespace is asked for.
    pub fn new(own_netns: u64) -> Self {
        Self {
            own_netns,
            cache: lru::LruCache::new(NonZeroUsize::new(CACHE_ENTRIES).expect("non-zero")),
            pending: HashSet::new(),
            worker: None,
            wait_left: WAIT_PER_INTERVAL,
            proc_reads_left: PROC_READS_PER_INTERVAL,
        }
    }

    /// A new interval: its budgets start afresh.
    pub fn new_interval(&mut self) {
        self.wait_left = WAIT_PER_INTERVAL;
        self.proc_reads_left = PROC_READS_PER_INTERVAL;
    }

    /// Remembers a device (for callers that know it).
    pub fn insert(&mut self, netns: u64, ifindex: u32, device: Option<DeviceName>) {
        self.cache.put((netns, ifindex), device);
    }

    /// Name and MTU of `ifindex` in the namespace with inode `netns`, if known or found in
    /// time.
    pub fn device(&mut self, netns: u64, ifindex: u32) -> Option<DeviceName> {
        self.take_answers();
        let key = (netns, ifindex);
        if let Some(known) = self.cache.get(&key) {
            return known.clone();
        }
        if netns == self.own_netns {
            let found = device_here(ifindex);
            self.cache.put(key, found.clone());
            return found;
        }
        self.ask(key);
        self.wait_for(key)
    }

    /// The device an AF_PACKET socket is bound to ([`packet_socket_ifindex`]), within the
    /// interval's budget of /proc reads.
    pub fn packet_socket(&mut self, pid: u32, fd: u32) -> Option<u32> {
        if self.proc_reads_left == 0 {
            return None;
        }
        self.proc_reads_left -= 1;
        packet_socket_ifindex(pid, fd)
    }

    fn ask(&mut self, key: (u64, u32)) {
        if self.pending.contains(&key) || self.pending.len() >= PENDING_MAX {
            return;
        }
        if self.worker.is_none() {
            self.worker = Worker::spawn();
        }
        let Some(worker) = &self.worker else {
            return;
        };
        match worker.requests.try_send(key) {
            Ok(()) => {
                self.pending.insert(key);
            }
            Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => self.lost_worker(),
        }
    }

    fn wait_for(&mut self, key: (u64, u32)) -> Option<DeviceName> {
        while self.pending.contains(&key) && !self.wait_left.is_zero() {
            let Some(worker) = &self.worker else {
                break;
            };
            let started = Instant::now();
            let answer = worker.answers.recv_timeout(self.wait_left);
            self.wait_left = self.wait_left.saturating_sub(started.elapsed());
            match answer {
                Ok((answered, device)) => {
                    self.pending.remove(&answered);
                    self.cache.put(answered, device);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => self.lost_worker(),
            }
        }
        self.cache.peek(&key).cloned().flatten()
    }

    fn take_answers(&mut self) {
        let Some(worker) = &self.worker else {
            return;
        };
        while let Ok((key, device)) = worker.answers.try_recv() {
            self.pending.remove(&key);
            self.cache.put(key, device);
        }
    }

    /// The worker is gone (it could not get back into its namespace): start afresh.
    fn lost_worker(&mut self) {
        self.worker = None;
        self.pending.clear();
    }
}

impl Worker {
    fn spawn() -> Option<Self> {
        let (requests, asked) = mpsc::sync_channel::<(u64, u32)>(PENDING_MAX);
        let (answer, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("vxprobe-netns".into())
            .spawn(move || {
                // The namespace it was born in (vxprobe's), to return to after each look.
                let Ok(home) = fs::File::open("/proc/thread-self/ns/net") else {
                    return;
                };
                for (netns, ifindex) in asked {
                    let (device, at_home) = look_in(&home, netns, ifindex);
                    if answer.send(((netns, ifindex), device)).is_err() || !at_home {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Self { requests, answers })
    }
}

/// Looks `ifindex` up in namespace `netns` from the calling thread, which returns to `home`
/// after: (the device, whether the thread is at home again).
fn look_in(home: &fs::File, netns: u64, ifindex: u32) -> (Option<DeviceName>, bool) {
    let Some(ns) = find_netns(netns) else {
        return (None, true);
    };
    // SAFETY: setns on a valid namespace fd; it affects only the calling (worker) thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return (None, true);
    }
    let device = device_here(ifindex);
    // SAFETY: as above, back to the thread's own namespace.
    let back = unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
    (device, back)
}

/// A handle on the network namespace with inode `netns`: ours, a named one (`ip netns`, CNI
/// plugins), or one a process lives in.
fn find_netns(netns: u64) -> Option<fs::File> {
    let matches = |path: &Path| fs::metadata(path).is_ok_and(|m| m.ino() == netns);
    let mut candidates: Vec<PathBuf> = vec!["/proc/self/ns/net".into()];
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(entries) = fs::read_dir(dir) {
            candidates.extend(entries.flatten().map(|e| e.path()));
        }
    }
    if let Some(found) = candidates.iter().find(|p| matches(p)) {
        return fs::File::open(found).ok();
    }
    fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path().join("ns/net"))
        .find(|p| matches(p))
        .and_then(|p| fs::File::open(p).ok())
}

/// Name and MTU of `ifindex` in the calling thread's network namespace.
pub fn device_here(ifindex: u32) -> Option<(String, u32)> {
    // SAFETY: a plain socket(2); closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return None;
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_ifindex = ifindex as i32;
    // SAFETY: SIOCGIFNAME and SIOCGIFMTU read and write only `req`, which lives on our stack.
    let result = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFNAME as _, &mut req) != 0 {
            None
        } else {
            let name = CStr::from_ptr(req.ifr_name.as_ptr())
                .to_string_lossy()
                .into_owned();
            let mtu = if libc::ioctl(sock, libc::SIOCGIFMTU as _, &mut req) == 0 {
                req.ifr_ifru.ifru_mtu as u32
            } else {
                0
            };
            Some((name, mtu))
        }
    };
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(sock) };
    result
}

/// The device an AF_PACKET socket is bound to, from the process's fd and /proc/net/packet.
pub fn packet_socket_ifindex(pid: u32, fd: u32) -> Option<u32> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .to_owned();
    let table = fs::read_to_string(format!("/proc/{pid}/net/packet")).ok()?;
    parse_packet_table(&table, &inode)
}

/// `/proc/net/packet`: `sk RefCnt Type Proto Iface R Rmem User Inode`.
fn parse_packet_table(table: &str, inode: &str) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(8) == Some(&inode)).then(|| cols.get(4)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_table_rows_are_found_by_inode() {
        let table = "sk       RefCnt Type Proto  Iface R Rmem   User   Inode\n\
                     ffff888003 3      3    0003   7     1 0      0      4242\n";
        assert_eq!(parse_packet_table(table, "4242"), Some(7));
        assert_eq!(parse_packet_table(table, "1"), None);
    }

    #[test]
    fn loopback_is_found_here() {
        let (name, mtu) = device_here(1).expect("ifindex 1 is lo");
        assert_eq!(name, "lo");
        assert!(mtu > 0);
    }
}

#[cfg(test)]
mod netns_tests {
    use super::*;

    #[test]
    fn names_come_from_the_cache_our_namespace_or_the_worker_within_a_budget() {
        let ours = fs::metadata("/proc/self/ns/net").unwrap().ino();
        let mut names = DeviceNames::new(ours);
        assert_eq!(names.device(ours, 1).map(|(n, _)| n).as_deref(), Some("lo"));
        assert!(names.worker.is_none(), "our namespace needs no thread");
        names.insert(7, 3, Some(("tap0".into(), 1500)));
        assert_eq!(names.device(7, 3), Some(("tap0".into(), 1500)));
        // Namespaces no one can find, by the thousand: the loop waits at most its budget.
        let started = Instant::now();
        for inode in 10..2010u64 {
            assert_eq!(names.device(inode, 1), None);
        }
        let spent = started.elapsed();
        assert!(spent < Duration::from_millis(500), "{spent:?}");
        assert!(names.pending.len() <= PENDING_MAX);
        assert!(names.cache.len() <= CACHE_ENTRIES);
    }
}
