//! Failures in the middle of a run never end it: a device whose hook is full is reported as
//! `attach_failed` and attached at a resync once there is room; map reads that fail (made to
//! fail for real: the kernel answers vxprobe's bpf(2) calls with EAGAIN through a seccomp
//! listener this test holds) are tried again, counted and reported as `warning` lines, and
//! the counts stay exact.

mod common;

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    os::unix::process::CommandExt as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use common::{Recorder, hop_totals};
use serde_json::Value;
use vxprobe::lab::{POD_HOST_DEV, faults};

/// Links of "another tool"'s pass-everything program (`r0 = TCX_NEXT; exit`) at the TCX
/// ingress of `ifindex` in `netns`, until the kernel refuses one (it takes 64,
/// BPF_MPROG_MAX): a hook with no room left.
fn fill_tcx_hook(netns: &str, ifindex: u32) -> Vec<OwnedFd> {
    faults::in_netns(netns, move || {
        let mut links = Vec::new();
        for _ in 0..100 {
            let program = common::tc::load_verdict("othertool_tcx", -1, true)?;
            match common::tc::tcx_link(&program, ifindex) {
                Ok(link) => links.push(link),
                Err(_) => break,
            }
        }
        Ok(links)
    })
    .unwrap()
}

/// A device whose TCX ingress holds as many programs as the kernel allows: vxprobe's attach
/// there fails (ERANGE) until one of them goes. Mid-run, and at start: reported as a
/// `device` line `attach_failed` with the reason, tried again at the watcher's resync, then
/// attached and counted; the recording never stops.
#[test]
fn a_device_that_cannot_be_attached_is_reported_and_attached_later() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    if !common::has_tcx() {
        return;
    }
    let ns = lab.nodes[0].netns.clone();
    lab.add_veth(0, "cali7", "eth7", 77).unwrap();
    let (ifindex, _) = common::ifindex_and_mac(&ns, "cali7");
    let mut links = fill_tcx_hook(&ns, ifindex);
    assert!(links.len() >= 32, "{} programs on the hook", links.len());
    let mut rec = Recorder::start(
        &ns,
        &[
            "--tc-attach",
            "tcx",
            "--stats-interval",
            "200ms",
            "-i",
            "cali*",
        ],
    );
    let failed = rec.wait_for("cali7's attach_failed line", Duration::from_secs(10), |l| {
        l["kind"] == "device" && l["event"] == "attach_failed" && l["ifname"] == "cali7"
    });
    assert!(
        failed["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{failed}"
    );
    // Room for one more: the next resync attaches it.
    drop(links.pop());
    rec.wait_for("cali7 added", Duration::from_secs(20), |l| {
        l["kind"] == "device" && l["event"] == "added" && l["ifname"] == "cali7"
    });
    common::ping(&ns, 10, &vxprobe::lab::extra_veth_peer_ip(77).to_string());
    rec.wait_hop("cali7", "egress", "packets", 10);

    // Mid-run: a device with a full hook becomes selected (renamed into the `cali*` glob).
    lab.add_veth(0, "x8", "eth8", 78).unwrap();
    let (x8, _) = common::ifindex_and_mac(&ns, "x8");
    let mut more = fill_tcx_hook(&ns, x8);
    for args in [
        &["link", "set", "x8", "down"][..],
        &["link", "set", "x8", "name", "cali8"],
        &["link", "set", "cali8", "up"],
    ] {
        common::must(&ns, "ip", args);
    }
    rec.wait_for("cali8's attach_failed line", Duration::from_secs(10), |l| {
        l["kind"] == "device" && l["event"] == "attach_failed" && l["ifname"] == "cali8"
    });
    drop(more.pop());
    rec.wait_for("cali8 added", Duration::from_secs(20), |l| {
        l["kind"] == "device" && l["event"] == "added" && l["ifname"] == "cali8"
    });
    let lines = rec.stop();
    for dev in ["cali7", "cali8"] {
        let attach_failed = lines
            .iter()
            .filter(|l| l["event"] == "attach_failed" && l["ifname"] == dev)
            .count();
        assert_eq!(attach_failed, 1, "{dev}: reported once, not at every try");
    }
    drop(links);
    drop(more);
}

const SECCOMP_SET_MODE_FILTER: libc::c_long = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_long = 1 << 3;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_LOOKUP_BATCH: u32 = 24;

#[repr(C)]
#[derive(Default)]
struct SeccompNotif {
    id: u64,
    pid: u32,
    flags: u32,
    nr: i32,
    arch: u32,
    instruction_pointer: u64,
    args: [u64; 6],
}

#[repr(C)]
struct SeccompNotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump_if(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: 0x15, // BPF_JMP | BPF_JEQ | BPF_K
        jt,
        jf,
        k,
    }
}

/// bpf(2) map lookups (BPF_MAP_LOOKUP_ELEM, BPF_MAP_LOOKUP_BATCH) to the listener, all else
/// allowed.
static LOOKUP_FILTER: [libc::sock_filter; 7] = [
    stmt(0x20, 0), // ld [nr]
    jump_if(libc::SYS_bpf as u32, 0, 4),
    stmt(0x20, 16), // ld [args[0]]: the command
    jump_if(BPF_MAP_LOOKUP_ELEM, 1, 0),
    jump_if(BPF_MAP_LOOKUP_BATCH, 0, 1),
    stmt(0x06, SECCOMP_RET_USER_NOTIF), // ret
    stmt(0x06, SECCOMP_RET_ALLOW),
];

/// Answers the map lookups of the process it listens to: the next `fail` of them with
/// EAGAIN, the others as the kernel would (carried on), until `stop`.
fn supervise(listener: OwnedFd, fail: Arc<AtomicU32>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut poll = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd we own.
        if unsafe { libc::poll(&mut poll, 1, 100) } <= 0 {
            continue;
        }
        if poll.revents & libc::POLLHUP != 0 {
            return; // the process is gone
        }
        let mut notif = SeccompNotif::default();
        // SAFETY: the ioctl writes one seccomp_notif, which `notif` is (zeroed, as required).
        if unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_RECV, &mut notif) } != 0 {
            continue;
        }
        let failing = fail
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        let mut resp = SeccompNotifResp {
            id: notif.id,
            val: 0,
            error: if failing { -libc::EAGAIN } else { 0 },
            flags: if failing {
                0
            } else {
                SECCOMP_USER_NOTIF_FLAG_CONTINUE
            },
        };
        // SAFETY: the ioctl reads one seccomp_notif_resp.
        unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}

/// A recorder whose map lookups a thread of this process answers ([`supervise`], from
/// before vxprobe starts); returns it and that thread.
fn supervised_recorder(
    netns: &str,
    args: &[&str],
    fail: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
) -> (Recorder, std::thread::JoinHandle<()>) {
    let mut pair = [0; 2];
    // SAFETY: socketpair(2) writes two descriptors into `pair`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    faults::check(rc).unwrap();
    // SAFETY: the two descriptors socketpair made.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    let supervisor = std::thread::spawn(move || {
        // The listener, passed over the socket pair (SCM_RIGHTS).
        let mut byte = [0u8; 1];
        let mut space = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: msghdr is plain data; zeroed is valid, then pointed at our buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&space);
        // SAFETY: recvmsg(2) into the buffers above; CMSG_DATA reads the fd the kernel put.
        let listener = unsafe {
            faults::check(libc::recvmsg(ours.as_raw_fd(), &mut msg, 0) as libc::c_int).unwrap();
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null(), "the listener came");
            OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            ))
        };
        supervise(listener, fail, stop);
    });
    let send_fd = theirs.as_raw_fd();
    let rec = Recorder::start_with(netns, args, move |cmd| {
        // SAFETY: between fork and exec, only system calls on the static filter and on the
        // child's own stack.
        unsafe {
            cmd.pre_exec(move || {
                let program = libc::sock_fprog {
                    len: LOOKUP_FILTER.len() as u16,
                    filter: LOOKUP_FILTER.as_ptr().cast_mut(),
                };
                let listener = libc::syscall(
                    libc::SYS_seccomp,
                    SECCOMP_SET_MODE_FILTER,
                    SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    &program,
                );
                if listener < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let listener = listener as RawFd;
                let mut byte = [0u8; 1];
                let mut iov = libc::iovec {
                    iov_base: byte.as_mut_ptr().cast(),
                    iov_len: 1,
                };
                let mut space = [0u64; 8];
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = space.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), listener);
                if libc::sendmsg(send_fd, &msg, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(listener);
                Ok(())
            });
        }
    });
    drop(theirs);
    (rec, supervisor)
}

fn warning_about(lines: &[Value], text: &str) -> Option<Value> {
    lines
        .iter()
        .find(|l| l["kind"] == "warning" && l["text"].as_str().is_some_and(|t| t.contains(text)))
        .cloned()
}

fn retried(lines: &[Value]) -> u64 {
    lines
        .iter()
        .filter(|l| {
            l["kind"] == "warning"
                && l["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("tried again"))
        })
        .map(|l| l["count"].as_u64().unwrap())
        .sum()
}

/// vxprobe's map lookups answered EAGAIN for a moment: three times in a row (a read whose
/// every attempt fails: what it reads, the hop counters most likely, is left for the next
/// interval, which covers both; a `warning` says so), then twice (the third attempt
/// succeeds). Every failed attempt is counted in `warning` lines; the recording goes on, ends
/// with exit 0, and the hop counts are exact.
#[test]
fn map_reads_that_fail_are_tried_again_and_reported_not_fatal() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let fail = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (mut rec, supervisor) = supervised_recorder(
        &n1.netns,
        &["--stats-interval", "200ms", "-i", POD_HOST_DEV],
        Arc::clone(&fail),
        Arc::clone(&stop),
    );
    rec.wait_intervals_after(&common::ts_now(), 2);
    common::ping(&n1.pod.netns, 10, &n2.pod.ip.to_string());
    // Three in a row: one read's every attempt fails.
    fail.store(3, Ordering::Relaxed);
    rec.wait_until(
        "the warning that a read was left for the next interval, and the 3 attempts counted",
        Duration::from_secs(10),
        |lines| warning_about(lines, "left for the next interval").is_some() && retried(lines) == 3,
    );
    common::ping(&n1.pod.netns, 10, &n2.pod.ip.to_string());
    // Two: the third attempt succeeds.
    fail.store(2, Ordering::Relaxed);
    rec.wait_until(
        "the warnings counting 5 failed attempts in all",
        Duration::from_secs(10),
        |lines| retried(lines) == 5,
    );
    rec.wait_intervals_after(&common::ts_now(), 2);
    let lines = rec.stop();
    stop.store(true, Ordering::Relaxed);
    supervisor.join().unwrap();
    assert_eq!(fail.load(Ordering::Relaxed), 0);
    assert_eq!(
        retried(&lines),
        5,
        "every failed attempt counted once: {lines:#?}"
    );
    let packets = hop_totals(&lines, "packets");
    assert_eq!(
        packets[&(POD_HOST_DEV.to_owned(), "ingress".to_owned())],
        20,
        "every ping counted once: {packets:?}"
    );
    assert_eq!(lines.last().unwrap()["kind"], "summary");
}
