//! Fault injectors for the lab: the failure modes of the incidents, made on purpose inside a
//! lab namespace. Sockets are opened from a thread that has entered the namespace, so nothing
//! here needs Python or leaves the lab.

use std::{
    ffi::CString,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
};

/// Runs `work` on a thread inside the named network namespace (`ip netns` name).
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; it changes only this new thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        work()
    })
    .join()
    .map_err(|_| io::Error::other("fault injector thread panicked"))?
}

/// A libc return value as a Result: negative is the thread's errno.
pub fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// setsockopt(2) of one `c_int` option on `socket`.
pub fn set_int_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int we own, of the size passed.
    check(unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// socket(2), close-on-exec, owned.
pub fn socket(domain: libc::c_int, kind: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory arguments; the fd is owned right away.
    let fd = check(unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A raw IPv4 socket of protocol `proto` that sends to `dst`: the kernel adds the IP header
/// and leaves the rest (a transport header and data) as given.
pub struct RawSender {
    fd: OwnedFd,
    addr: libc::sockaddr_in,
}

impl RawSender {
    pub fn open(proto: libc::c_int, dst: Ipv4Addr) -> io::Result<Self> {
        Ok(Self {
            fd: socket(libc::AF_INET, libc::SOCK_RAW, proto)?,
            addr: libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            },
        })
    }

    /// Sends one packet carrying `payload`.
    pub fn send(&self, payload: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer and the sockaddr_in outlive the call; lengths match them.
        check(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&raw const self.addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) as libc::c_int
        })
        .map(drop)
    }
}

/// Sends `count` copies of `payload` to `dst` through a [`RawSender`] of protocol `proto`.
fn raw_sends(proto: libc::c_int, dst: Ipv4Addr, payload: &[u8], count: u32) -> io::Result<()> {
    let sender = RawSender::open(proto, dst)?;
    for _ in 0..count {
        sender.send(payload)?;
    }
    Ok(())
}

/// Sends `count` UDP datagrams to `dst:port` whose checksum is wrong, from a raw socket (the
/// kernel fills in the IP header, never a raw socket's UDP checksum). The receiver drops them
/// with UDP_CSUM and counts UdpInCsumErrors.
pub fn bad_udp_checksums(netns: &str, dst: Ipv4Addr, port: u16, count: u32) -> io::Result<()> {
    in_netns(netns, move || {
        let payload = b"vxprobe-bad-csum";
        let mut datagram = Vec::with_capacity(8 + payload.len());
        datagram.extend(40000u16.to_be_bytes());
        datagram.extend(port.to_be_bytes());
        datagram.extend(((8 + payload.len()) as u16).to_be_bytes());
        datagram.extend(0xdeadu16.to_be_bytes());
        datagram.extend(payload);
        raw_sends(libc::IPPROTO_UDP, dst, &datagram, count)
    })
}

/// Like [`bad_udp_checksums`] with `size` bytes of payload: above 76 bytes in all
/// (CHECKSUM_BREAK) the receiver verifies the checksum only when a socket reads the datagram
/// (`udp_recvmsg`, while copying it), not on arrival.
pub fn bad_udp_checksums_sized(
    netns: &str,
    dst: Ipv4Addr,
    port: u16,
    count: u32,
    size: usize,
) -> io::Result<()> {
    in_netns(netns, move || {
        let mut datagram = Vec::with_capacity(8 + size);
        datagram.extend(40003u16.to_be_bytes());
        datagram.extend(port.to_be_bytes());
        datagram.extend(((8 + size) as u16).to_be_bytes());
        datagram.extend(0xdeadu16.to_be_bytes());
        datagram.extend((0..size).map(|i| b"vxprobe-bad-csum"[i % 16]));
        raw_sends(libc::IPPROTO_UDP, dst, &datagram, count)
    })
}

/// Sends `count` TCP SYNs to `dst:port` whose checksum is wrong, from a raw socket: the
/// receiver's TCP drops them (TCP_CSUM) and counts TcpInCsumErrors.
pub fn bad_tcp_checksums(netns: &str, dst: Ipv4Addr, port: u16, count: u32) -> io::Result<()> {
    in_netns(netns, move || {
        let mut segment = Vec::with_capacity(20);
        segment.extend(40002u16.to_be_bytes());
        segment.extend(port.to_be_bytes());
        segment.extend(1u32.to_be_bytes()); // sequence
        segment.extend(0u32.to_be_bytes()); // ack
        segment.extend([0x50, 0x02]); // 5 words, SYN
        segment.extend(64240u16.to_be_bytes()); // window
        segment.extend(0xbeefu16.to_be_bytes()); // a wrong checksum
        segment.extend([0, 0]);
        raw_sends(libc::IPPROTO_TCP, dst, &segment, count)
    })
}

/// How a sender treats the Don't Fragment bit (IP_MTU_DISCOVER).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Df {
    /// DF clear: routers fragment (IP_PMTUDISC_DONT).
    Clear,
    /// The socket default: DF set, but the sender fragments to a learned path MTU.
    Default,
    /// DF set and never fragment: sends above the path MTU fail with EMSGSIZE
    /// (IP_PMTUDISC_DO).
    Always,
}

/// Sends `count` UDP datagrams of `size` bytes from port 40001 to `dst:port`. Returns how many
/// the kernel refused with EMSGSIZE (a learned path MTU below `size`, with [`Df::Always`]).
pub fn udp_datagrams(
    netns: &str,
    dst: IpAddr,
    port: u16,
    size: usize,
    count: u32,
    df: Df,
) -> io::Result<u32> {
    in_netns(netns, move || {
        let bind: SocketAddr = match dst {
            IpAddr::V4(_) => "0.0.0.0:40001".parse().expect("literal"),
            IpAddr::V6(_) => "[::]:40001".parse().expect("literal"),
        };
        let sock = UdpSocket::bind(bind)?;
        let mode = match df {
            Df::Clear => Some(libc::IP_PMTUDISC_DONT),
            Df::Default => None,
            Df::Always => Some(libc::IP_PMTUDISC_DO),
        };
        if let (Some(mode), true) = (mode, dst.is_ipv4()) {
            set_int_option(&sock, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, mode)?;
        }
        let payload = vec![b'v'; size];
        let mut refused = 0;
        for _ in 0..count {
            match sock.send_to(&payload, (dst, port)) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => refused += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(refused)
    })
}

/// AF_PACKET sockets that write Ethernet frames into one device of the current namespace, as
/// a user-space engine (Suricata in incident #4) writes packets back into a tap: one sends to
/// an address naming the device, the other is bound to it.
pub struct FrameWriter {
    addr: libc::sockaddr_ll,
    by_address: OwnedFd,
    bound: OwnedFd,
}

impl FrameWriter {
    /// Call from inside the device's namespace ([`in_netns`]).
    pub fn open(dev: &str) -> io::Result<Self> {
        let dev = CString::new(dev).map_err(io::Error::other)?;
        // SAFETY: if_nametoindex reads a NUL-terminated string we own.
        let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let addr = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_IP as u16).to_be(),
            sll_ifindex: ifindex as i32,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        let bound = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        // SAFETY: bind reads the sockaddr_ll we own, with its length.
        check(unsafe { libc::bind(bound.as_raw_fd(), (&raw const addr).cast(), ADDR_LEN) })?;
        Ok(Self {
            addr,
            by_address: socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?,
            bound,
        })
    }

    /// An IPv4 Ethernet frame of `size` bytes (zero payload) between two lab MACs.
    pub fn frame(size: usize) -> Vec<u8> {
        let mut frame = vec![0u8; size.max(14)];
        frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame
    }

    /// Sends `frame`, by address or through the bound socket; Err(EMSGSIZE) when the device
    /// refuses its size.
    pub fn send(&self, frame: &[u8], bound: bool) -> io::Result<()> {
        // SAFETY: the frame and the sockaddr_ll outlive the call; lengths match them.
        let rc = unsafe {
            if bound {
                libc::send(
                    self.bound.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                )
            } else {
                libc::sendto(
                    self.by_address.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const self.addr).cast(),
                    ADDR_LEN,
                )
            }
        };
        check(rc as libc::c_int).map(drop)
    }
}

const ADDR_LEN: libc::socklen_t = size_of::<libc::sockaddr_ll>() as libc::socklen_t;

/// Writes `count` Ethernet frames of `size` bytes into `dev` ([`FrameWriter`]), even ones by
/// address, odd ones through the bound socket. Returns how many failed with EMSGSIZE
/// ("Message too long").
pub fn packet_sends(netns: &str, dev: &str, size: usize, count: u32) -> io::Result<u32> {
    let dev = dev.to_owned();
    in_netns(netns, move || {
        let writer = FrameWriter::open(&dev)?;
        let frame = FrameWriter::frame(size);
        let mut refused = 0;
        for i in 0..count {
            if let Err(e) = writer.send(&frame, i % 2 == 1)
                && e.raw_os_error() == Some(libc::EMSGSIZE)
            {
                refused += 1;
            }
        }
        Ok(refused)
    })
}

/// Loads an nftables ruleset into the namespace.
pub fn nft(netns: &str, ruleset: &str) -> io::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    io::Write::write_all(
        child.stdin.as_mut().expect("stdin is piped"),
        ruleset.as_bytes(),
    )?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Drops one packet in `one_in` arriving on `dev` and forwarded by the node, at random (the
/// flaky hop). Counters `seen` and `dropped` in table `inet vxp_loss` tell what it did.
pub fn random_loss(netns: &str, dev: &str, one_in: u32) -> io::Result<()> {
    nft(
        netns,
        &format!(
            "table inet vxp_loss {{\n counter seen {{ }}\n counter dropped {{ }}\n \
             chain forward {{\n  type filter hook forward priority 0;\n  \
             iifname \"{dev}\" counter name seen\n  \
             iifname \"{dev}\" numgen random mod {one_in} == 0 counter name dropped drop\n }}\n}}\n"
        ),
    )
}

/// Packets a named counter of table `inet vxp_loss` counted.
pub fn loss_counter(netns: &str, name: &str) -> io::Result<u64> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "nft", "list", "counter", "inet", "vxp_loss", name,
        ])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no nft counter {name}")))
}

/// `ethtool -K dev feature on|off` inside the namespace.
pub fn set_offload(netns: &str, dev: &str, feature: &str, on: bool) -> io::Result<()> {
    let state = if on { "on" } else { "off" };
    super::run(
        "ip",
        &format!("netns exec {netns} ethtool -K {dev} {feature} {state}"),
    )
}

/// A counter of /proc/net/snmp (`Udp`, `Tcp`, ...) or /proc/net/netstat (`TcpExt`) read
/// inside the namespace (nstat would mix namespaces).
pub fn snmp(netns: &str, group: &str, field: &str) -> io::Result<u64> {
    // thread-self: /proc/net follows the main thread's namespace, not this thread's.
    let file = if group == "TcpExt" {
        "/proc/thread-self/net/netstat"
    } else {
        "/proc/thread-self/net/snmp"
    };
    let (group, field) = (format!("{group}:"), field.to_owned());
    in_netns(netns, move || {
        let text = std::fs::read_to_string(file)?;
        let mut lines = text.lines().filter(|l| l.starts_with(&group));
        let (names, values) = lines
            .next()
            .zip(lines.next())
            .ok_or_else(|| io::Error::other(format!("no {group} in {file}")))?;
        let at = names
            .split_whitespace()
            .position(|n| n == field)
            .ok_or_else(|| io::Error::other(format!("no {field} in {file}")))?;
        values
            .split_whitespace()
            .nth(at)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad {field} in {file}")))
    })
}

/// An iperf3 client in `netns` to the server on `port` at `server`, `args` after (`-t`, `-b`...).
pub fn iperf3_client(netns: &str, server: IpAddr, port: u16, args: &[&str]) -> Command {
    let mut client = super::Lab::command(netns, "iperf3");
    client
        .args(["-c", &server.to_string(), "-p", &port.to_string()])
        .args(args);
    client
}

/// Starts a one-shot iperf3 server (`-s -1`) on `port` in `netns` and waits (up to 10 s) until
/// it listens.
pub fn iperf3_server(netns: &str, port: u16) -> io::Result<std::process::Child> {
    let mut server = super::Lab::command(netns, "iperf3")
        .args(["-s", "-1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    if let Err(e) = wait_tcp_listening(netns, port, &mut server, std::time::Duration::from_secs(10))
    {
        let _ = server.kill();
        let _ = server.wait();
        return Err(e);
    }
    Ok(server)
}

/// Waits until a TCP socket listens on `port` in `netns` (a server just started: connecting
/// before would be refused); an error if `server` exits or `timeout` passes first.
pub fn wait_tcp_listening(
    netns: &str,
    port: u16,
    server: &mut std::process::Child,
    timeout: std::time::Duration,
) -> io::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let port_field = format!(":{port:04X}");
    loop {
        let wanted = port_field.clone();
        // thread-self: /proc/net follows the main thread's namespace, not this thread's.
        let listening = in_netns(netns, move || {
            let mut tables = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
            tables += &std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap_or_default();
            // "sl local_address rem_address st ...": state 0A is LISTEN.
            Ok(tables.lines().any(|l| {
                let mut fields = l.split_whitespace().skip(1);
                let local = fields.next().unwrap_or("");
                local.ends_with(&wanted) && fields.nth(1) == Some("0A")
            }))
        })?;
        if listening {
            return Ok(());
        }
        if let Some(status) = server.try_wait()? {
            return Err(io::Error::other(format!(
                "the server for port {port} exited: {status}"
            )));
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "nothing listens on port {port} after {timeout:?}"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The calling thread inside another network namespace until dropped, then back where it was.
pub struct NetnsGuard {
    previous: std::fs::File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: setns on the namespace fd opened before leaving it.
        unsafe { libc::setns(self.previous.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Moves the calling thread into the named network namespace (for a process that observes a
/// lab node from the inside, as `demo` does) until the guard is dropped.
pub fn enter_netns(netns: &str) -> io::Result<NetnsGuard> {
    let previous = std::fs::File::open("/proc/thread-self/ns/net")?;
    let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
    // SAFETY: setns on a valid namespace fd; it changes the calling thread only.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(NetnsGuard { previous })
}

/// A UDP socket bound to `port` inside the namespace, read and discarded on a thread until
/// the returned flag is set: the receiving end of the pods' steady UDP.
pub fn udp_sink(
    netns: &str,
    port: u16,
) -> io::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    // A socket keeps the namespace it was created in, whichever thread uses it later.
    let sock = in_netns(netns, move || UdpSocket::bind(("0.0.0.0", port)))?;
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !flag.load(Ordering::Relaxed) {
            let _ = sock.recv(&mut buf);
        }
    });
    Ok(stop)
}

/// Sets a device's MTU inside the namespace.
pub fn set_mtu(netns: &str, dev: &str, mtu: u32) -> io::Result<()> {
    super::ip(&format!("-n {netns} link set {dev} mtu {mtu}"))
}
