//! Looking at devices and sockets of other network namespaces: kernel-wide hooks report events
//! from every namespace on the node, by ifindex, and an ifindex means nothing without its
//! namespace. Everything here is best effort: a process may be gone by the time we look.

use std::{
    ffi::CStr,
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// Name and MTU of `ifindex` in the network namespace whose inode is `netns`.
pub fn device_in_netns(netns: u64, ifindex: u32) -> Option<(String, u32)> {
    let ns = find_netns(netns)?;
    // setns changes the calling thread only: do it on a short-lived thread of our own.
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; it affects only this new thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        device_here(ifindex)
    })
    .join()
    .ok()
    .flatten()
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
    fn our_own_namespace_is_found_by_inode() {
        let ours = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(
            device_in_netns(ours, 1).map(|(n, _)| n).as_deref(),
            Some("lo")
        );
        assert_eq!(device_in_netns(1, 1), None, "no namespace has inode 1");
    }
}
