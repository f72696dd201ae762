//! What a killed vxprobe leaves behind, removed at the next start. TCX links and the kernel-wide
//! hooks are owned by the process and go with it, even on SIGKILL; clsact filters
//! (`--tc-attach clsact`, and `auto` before Linux 6.6) belong to the device and outlive a
//! process that could not detach them. Such a filter keeps running vxprobe's program for no
//! one.
//!
//! A filter is vxprobe's when its program is named `vxprobe_tc_*`, and stale when no process
//! holds that program open: a running vxprobe holds its programs, so a second instance never
//! removes the first one's filters. Filters of other tools (another name, or not BPF) are
//! never touched. Ownership can be ruled out only where vxprobe sees every process: in the
//! initial PID namespace, with a /proc of that namespace that hides nothing (no `hidepid`
//! without CAP_SYS_PTRACE) and every process's descriptors readable. Anywhere else (a pod
//! without hostPID, a container's own /proc) stale-looking filters are reported and left
//! alone, with how to remove them by hand.
//!
//! Instances serialize their cleanup and their attach with a lock, [`TcLock`] (`flock` on
//! `/run/vxprobe/tc.lock`): one never sees another half-attached, nor chooses the priority
//! another is choosing. Without the lock (no writable /run) filters are only reported. A
//! filter's program is checked again right before it is deleted.

use std::{
    collections::BTreeSet,
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::DirBuilderExt as _, unix::fs::OpenOptionsExt as _},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    },
};

use crate::node::devices;

/// Programs vxprobe attaches to devices start with this (see `vxprobe_common::names`).
pub const TC_PROGRAM_PREFIX: &str = "vxprobe_tc_";

/// One BPF filter of vxprobe's found on a clsact hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub ifindex: u32,
    pub ifname: String,
    pub ingress: bool,
    /// `tcm_info`: priority << 16 | protocol, as the kernel reported it.
    pub info: u32,
    pub handle: TcHandle,
    pub program: String,
    pub prog_id: u32,
}

impl Filter {
    fn describe(&self) -> String {
        format!(
            "{} {} prio {} ({} id {})",
            self.ifname,
            if self.ingress { "ingress" } else { "egress" },
            self.info >> 16,
            self.program,
            self.prog_id
        )
    }
}

/// What was found and done.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub removed: Vec<Filter>,
    /// Stale-looking filters left alone, because ownership could not be ruled out.
    pub kept: Vec<Filter>,
    /// Why they were left alone.
    pub why_kept: Option<String>,
}

/// Where instances take [`TcLock`].
pub const LOCK_PATH: &str = "/run/vxprobe/tc.lock";

/// How long an instance waits for another's cleanup and attach before it goes on without
/// removing anything.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The lock that serializes instances' cleanup and attach (see the module's notes): an
/// exclusive `flock` on [`LOCK_PATH`], released when dropped (or when the process dies).
pub struct TcLock {
    _file: fs::File,
}

impl TcLock {
    /// Waits for the lock (up to 30 s); the reason when it cannot be had.
    pub fn take() -> Result<Self, String> {
        Self::take_at(Path::new(LOCK_PATH), LOCK_WAIT)
    }

    fn take_at(path: &Path, wait: Duration) -> Result<Self, String> {
        let why = |e: io::Error| format!("cannot lock {}: {e}", path.display());
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(why)?;
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(why)?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock(2) on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Self { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(why(e));
            }
            if crate::interrupt::requested() {
                return Err("stopped by a signal while waiting for it".to_owned());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} is held by another instance for more than {}s",
                    path.display(),
                    wait.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Finds vxprobe's clsact filters on every device of this namespace and removes those whose
/// program no process holds, if it holds `lock` and sees every process (else it only reports
/// them). Reports what it did on stderr; errors are reported, never fatal.
pub async fn remove_stale_filters(lock: &Result<TcLock, String>) -> Cleanup {
    match try_remove(lock.as_ref().err()).await {
        Ok(cleanup) => {
            if !cleanup.removed.is_empty() {
                let list: Vec<String> = cleanup.removed.iter().map(Filter::describe).collect();
                eprintln!(
                    "vxprobe: removed {} clsact filter(s) a killed vxprobe left behind: {}",
                    list.len(),
                    list.join(", ")
                );
            }
            if !cleanup.kept.is_empty() {
                let list: Vec<String> = cleanup.kept.iter().map(Filter::describe).collect();
                eprintln!(
                    "vxprobe: {} vxprobe clsact filter(s) may be stale, but whether another \
                     vxprobe holds them cannot be told ({}): {} (remove with `tc filter del dev \
                     DEV ingress|egress prio N` once no vxprobe runs)",
                    list.len(),
                    cleanup.why_kept.as_deref().unwrap_or("unknown"),
                    list.join(", ")
                );
            }
            cleanup
        }
        Err(e) => {
            eprintln!("vxprobe: could not look for stale clsact filters: {e:#}");
            Cleanup::default()
        }
    }
}

async fn try_remove(no_lock: Option<&String>) -> anyhow::Result<Cleanup> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(connection);
    let result = async {
        let mut ours = Vec::new();
        for device in devices::list_devices().await? {
            for ingress in [true, false] {
                ours.extend(vxprobe_filters(&handle, device.ifindex, &device.name, ingress).await);
            }
        }
        if ours.is_empty() {
            return Ok(Cleanup::default());
        }
        let holders = programs_held_open();
        let mut cleanup = Cleanup {
            why_kept: no_lock.cloned().or_else(proc_blind_spot).or_else(|| {
                (!holders.complete).then(|| {
                    "some processes' descriptors cannot be read without CAP_SYS_PTRACE".to_owned()
                })
            }),
            ..Cleanup::default()
        };
        for filter in ours {
            if holders.ids.contains(&filter.prog_id) {
                continue; // a running vxprobe's (maybe ours)
            }
            if cleanup.why_kept.is_some() {
                cleanup.kept.push(filter);
                continue;
            }
            // Just before deleting: the hook still runs that program there, and still no
            // process holds it.
            if !still_stale(&handle, &filter).await {
                continue;
            }
            delete(&handle, &filter)
                .await
                .with_context(|| format!("removing {}", filter.describe()))?;
            cleanup.removed.push(filter);
        }
        Ok(cleanup)
    }
    .await;
    task.abort();
    result
}

/// Whether `filter` is still on its hook with the same program, and no process holds it.
async fn still_stale(handle: &rtnetlink::Handle, filter: &Filter) -> bool {
    let now = vxprobe_filters(handle, filter.ifindex, &filter.ifname, filter.ingress).await;
    let same = now
        .iter()
        .any(|f| f.handle == filter.handle && f.info == filter.info && f.prog_id == filter.prog_id);
    same && {
        let holders = programs_held_open();
        holders.complete && !holders.ids.contains(&filter.prog_id)
    }
}

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`, the same on every kernel).
const INIT_PID_NS: &str = "pid:[4026531836]";

/// Why /proc may not show every process of the node (`None`: it shows them all).
fn proc_blind_spot() -> Option<String> {
    match fs::read_link("/proc/self/ns/pid") {
        Ok(ns) if ns.as_os_str() == INIT_PID_NS => {}
        Ok(ns) => {
            return Some(format!(
                "vxprobe runs in a PID namespace of its own ({}), not the node's: run node agents with hostPID",
                ns.display()
            ));
        }
        Err(e) => {
            return Some(format!(
                "/proc/self/ns/pid: {e} (a /proc of another PID namespace)"
            ));
        }
    }
    // (A /proc of another PID namespace has no /proc/self for a process of the initial one:
    // the read above found this /proc to be the node's.)
    if fs::read_to_string("/proc/self/status").is_ok_and(|s| in_child_pid_namespace(&s)) {
        return Some("vxprobe runs in a PID namespace of its own".into());
    }
    if let Some(hidepid) = fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| proc_hidepid(&info))
        && !crate::kernel::caps::has(crate::kernel::caps::CAP_SYS_PTRACE)
    {
        return Some(format!(
            "/proc is mounted with hidepid={hidepid} and vxprobe lacks CAP_SYS_PTRACE"
        ));
    }
    None
}

/// The `hidepid` option of the /proc mount in `/proc/self/mountinfo`, unless it hides nothing.
fn proc_hidepid(mountinfo: &str) -> Option<String> {
    let line = mountinfo.lines().find(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(4) == Some(&"/proc")
            && l.split(" - ")
                .nth(1)
                .is_some_and(|fs| fs.starts_with("proc "))
    })?;
    let options = line.split(" - ").nth(1)?.split_whitespace().nth(2)?;
    options
        .split(',')
        .find_map(|o| o.strip_prefix("hidepid="))
        .filter(|v| !matches!(*v, "0" | "off"))
        .map(str::to_owned)
}

fn clsact_parent(ingress: bool) -> TcHandle {
    TcHandle {
        major: 0xffff,
        minor: if ingress {
            TcHandle::MIN_INGRESS
        } else {
            TcHandle::MIN_EGRESS
        },
    }
}

/// vxprobe's BPF filters on one clsact hook (none when the device has no clsact qdisc).
async fn vxprobe_filters(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    ifname: &str,
    ingress: bool,
) -> Vec<Filter> {
    let request = handle.traffic_filter(ifindex as i32).get();
    let request = if ingress {
        request.ingress()
    } else {
        request.egress()
    };
    let messages: Vec<TcMessage> = match request.execute().try_collect().await {
        Ok(messages) => messages,
        Err(_) => return Vec::new(), // no clsact qdisc there
    };
    messages
        .iter()
        .filter_map(|msg| {
            let (program, prog_id) = bpf_program(msg)?;
            program.starts_with(TC_PROGRAM_PREFIX).then(|| Filter {
                ifindex,
                ifname: ifname.to_owned(),
                ingress,
                info: msg.header.info,
                handle: msg.header.handle,
                program,
                prog_id,
            })
        })
        .collect()
}

/// Name and id of the program behind a BPF filter.
pub fn bpf_program(msg: &TcMessage) -> Option<(String, u32)> {
    let is_bpf = msg
        .attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(kind) if kind == "bpf"));
    if !is_bpf {
        return None;
    }
    let (mut name, mut id) = (None, None);
    for attr in &msg.attributes {
        if let TcAttribute::Options(options) = attr {
            for option in options {
                match option {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                    TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                    _ => {}
                }
            }
        }
    }
    Some((name?, id?))
}

async fn delete(handle: &rtnetlink::Handle, filter: &Filter) -> anyhow::Result<()> {
    let mut message = TcMessage::with_index(filter.ifindex as i32);
    message.header.parent = clsact_parent(filter.ingress);
    message.header.handle = filter.handle;
    message.header.info = filter.info;
    message.attributes.push(TcAttribute::Kind("bpf".into()));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut responses = handle.clone().request(request)?;
    while let Some(response) = responses.next().await {
        if let NetlinkPayload::Error(e) = response.payload
            && let Some(code) = e.code
        {
            let err = io::Error::from_raw_os_error(-code.get());
            // Gone already (its device vanished, or another vxprobe cleaned up first).
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err.into());
            }
        }
    }
    Ok(())
}

/// The BPF programs processes hold open, from /proc/PID/fdinfo.
struct Holders {
    ids: BTreeSet<u32>,
    /// Every process's descriptors could be read: `ids` is the whole truth.
    complete: bool,
}

fn programs_held_open() -> Holders {
    let mut holders = Holders {
        ids: BTreeSet::new(),
        complete: true,
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        holders.complete = false;
        return holders;
    };
    for proc in procs.flatten() {
        let name = proc.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let fds = match fs::read_dir(proc.path().join("fd")) {
            Ok(fds) => fds,
            // Gone meanwhile: it holds nothing any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => {
                holders.complete = false;
                continue;
            }
        };
        for fd in fds.flatten() {
            let is_prog = fs::read_link(fd.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-prog");
            if !is_prog {
                continue;
            }
            let info = proc.path().join("fdinfo").join(fd.file_name());
            if let Some(id) = fs::read_to_string(info).ok().and_then(|t| prog_id(&t)) {
                holders.ids.insert(id);
            }
        }
    }
    holders
}

/// Whether /proc/self/status says this process has more than one pid (`NSpid:`): it lives in
/// a child pid namespace.
fn in_child_pid_namespace(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(|pids| pids.split_whitespace().count() > 1)
}

/// The `prog_id` line of a BPF program's fdinfo.
pub fn prog_id(fdinfo: &str) -> Option<u32> {
    super::counters::fdinfo_field(fdinfo, "prog_id").and_then(|id| u32::try_from(id).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_names_vxprobes_tc_programs() {
        for name in [
            vxprobe_common::names::TC_INGRESS,
            vxprobe_common::names::TC_EGRESS,
        ] {
            assert!(name.starts_with(TC_PROGRAM_PREFIX), "{name}");
        }
    }

    #[test]
    fn a_child_pid_namespace_is_told_from_nspid() {
        assert!(!in_child_pid_namespace("Name:\tvxprobe\nNSpid:\t4242\n"));
        assert!(in_child_pid_namespace("Name:\tvxprobe\nNSpid:\t4242\t1\n"));
        assert!(!in_child_pid_namespace("Name:\tvxprobe\n"));
    }

    #[test]
    fn hidepid_is_read_from_mountinfo() {
        let hidden = "22 1 0:5 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw,hidepid=invisible\n";
        assert_eq!(proc_hidepid(hidden).as_deref(), Some("invisible"));
        let open = "22 1 0:5 / /proc rw,relatime - proc proc rw,hidepid=0\n";
        assert_eq!(proc_hidepid(open), None);
        let other = "23 22 0:6 / /proc/sys rw - proc proc rw,hidepid=2\n";
        assert_eq!(proc_hidepid(other), None);
    }

    #[test]
    fn the_lock_excludes_a_second_holder_until_released() {
        let path = std::env::temp_dir()
            .join(format!("vxprobe-lock-{}", std::process::id()))
            .join("tc.lock");
        let first = TcLock::take_at(&path, Duration::ZERO).unwrap();
        // flock is per open file: a second open in this process waits as another would.
        let err = TcLock::take_at(&path, Duration::from_millis(50))
            .err()
            .unwrap();
        assert!(err.contains("held by another instance"), "{err}");
        drop(first);
        assert!(TcLock::take_at(&path, Duration::ZERO).is_ok());
        let _ = fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn prog_ids_are_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t3\n\
                      prog_jited:\t1\nprog_tag:\t0123456789abcdef\nmemlock:\t4096\nprog_id:\t47\n";
        assert_eq!(prog_id(fdinfo), Some(47));
        assert_eq!(prog_id("pos:\t0\nmap_id:\t5\n"), None);
    }

    #[test]
    fn only_bpf_filters_named_vxprobe_tc_are_ours() {
        let filter = |kind: &str, name: &str| {
            let mut msg = TcMessage::with_index(3);
            msg.attributes.push(TcAttribute::Kind(kind.into()));
            msg.attributes.push(TcAttribute::Options(vec![
                TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
                TcOption::Bpf(TcFilterBpfOption::ProgId(9)),
            ]));
            msg
        };
        assert_eq!(
            bpf_program(&filter("bpf", "vxprobe_tc_ingress")),
            Some(("vxprobe_tc_ingress".into(), 9))
        );
        assert_eq!(bpf_program(&filter("matchall", "vxprobe_tc_ingress")), None);
        let (name, _) = bpf_program(&filter("bpf", "cil_from_container")).unwrap();
        assert!(!name.starts_with(TC_PROGRAM_PREFIX));
    }
}
