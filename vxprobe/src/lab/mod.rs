//! Throwaway network-namespace topologies, built from code, for the integration tests and
//! `vxprobe demo`.
//!
//! The shape mirrors a Calico VXLAN cluster: two "nodes" joined by an underlay veth, a
//! `vxlan.calico` device on each (VNI 4096, UDP 4789, MTU 1450, static fdb and neighbour entries,
//! no learning), one "pod" per node on a `cali*` veth, and a tap device on node 1. Names carry the
//! process id and a sequence number, so concurrent runs never collide, and every namespace is
//! deleted when the [`Lab`] is dropped, also while a test panics. Addresses come only from
//! 198.18.0.0/15 and nothing is routed out of the namespaces.

pub mod faults;
pub mod http;
pub mod scenario;

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

/// Prefix of every namespace a lab creates; [`Lab::remove_stale`] relies on it.
pub const NETNS_PREFIX: &str = "vxp-";

pub const VNI: u32 = 4096;
pub const VXLAN_PORT: u16 = 4789;
pub const VXLAN_DEV: &str = "vxlan.calico";
pub const UNDERLAY_DEV: &str = "eth0";
pub const POD_HOST_DEV: &str = "cali0";
pub const TAP_DEV: &str = "tap0";

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub overlay_mtu: u32,
    pub underlay_mtu: u32,
    /// Pods also get fd00::/8 addresses, routed over the same overlay.
    pub ipv6: bool,
    /// Create `vxlan.calico` with `dev eth0` (default). Without, it has only its `local`
    /// address, as Calico creates it on real nodes; the kernel then does not cap its MTU at the
    /// underlay's minus 50, so an oversized overlay MTU can be set. An overlay MTU above the
    /// underlay's minus 50 implies no lower device.
    pub vxlan_lower_dev: bool,
    /// Join the nodes' underlays through a third namespace, a "switch" that no vxprobe
    /// watches (a bridge, [`SWITCH_BRIDGE`], with a port per node), instead of one veth: loss
    /// made there is loss on the wire.
    pub switch: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            overlay_mtu: 1450,
            underlay_mtu: 1500,
            ipv6: false,
            vxlan_lower_dev: true,
            switch: false,
        }
    }
}

/// The bridge inside the switch namespace; its ports are `sw1` and `sw2`.
pub const SWITCH_BRIDGE: &str = "br0";

/// VXLAN over IPv4 adds 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// A pod: its own namespace, `eth0` inside, a `cali0` veth on its node.
#[derive(Clone, Debug)]
pub struct Pod {
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Used when the lab was built with `ipv6`.
    pub ip6: Ipv6Addr,
}

/// A node: underlay `eth0`, `vxlan.calico`, the host side of its pod's veth.
#[derive(Clone, Debug)]
pub struct Node {
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: String,
    pub pod: Pod,
}

/// A running lab; dropping it deletes every namespace (and so every device) it made.
#[derive(Debug)]
pub struct Lab {
    pub name: String,
    pub nodes: [Node; 2],
    /// The switch's namespace, when built with [`LabOptions::switch`].
    pub switch: Option<String>,
    namespaces: Vec<String>,
    options: LabOptions,
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl Lab {
    pub fn build(options: &LabOptions) -> io::Result<Lab> {
        let name = format!(
            "{NETNS_PREFIX}{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let node = |i: u8| Node {
            netns: format!("{name}-n{i}"),
            underlay_ip: Ipv4Addr::new(198, 18, 0, i),
            vtep_ip: Ipv4Addr::new(198, 19, i, 0),
            vtep_mac: format!("02:76:78:00:0{i}:00"),
            pod: Pod {
                netns: format!("{name}-p{i}"),
                ip: Ipv4Addr::new(198, 19, i, 2),
                ip6: Ipv6Addr::new(0xfd00, 0x19, u16::from(i), 0, 0, 0, 0, 2),
            },
        };
        let nodes = [node(1), node(2)];
        let mut lab = Lab {
            switch: options.switch.then(|| format!("{name}-sw")),
            name,
            namespaces: Vec::new(),
            nodes,
            options: options.clone(),
        };
        // From here on, Drop cleans up whatever was made if a step fails.
        lab.create(options)?;
        Ok(lab)
    }

    fn create(&mut self, options: &LabOptions) -> io::Result<()> {
        for node in self.nodes.clone() {
            for ns in [&node.netns, &node.pod.netns] {
                ip(&format!("netns add {ns}"))?;
                self.namespaces.push(ns.clone());
                // No IPv6 unless asked for: router solicitations and MLD reports would add
                // packets the tests do not send. With it, no autoconfigured addresses either.
                let off = if options.ipv6 { "0" } else { "1" };
                sysctl(ns, "net.ipv6.conf.all.disable_ipv6", off)?;
                sysctl(ns, "net.ipv6.conf.default.disable_ipv6", off)?;
                if options.ipv6 {
                    sysctl(ns, "net.ipv6.conf.default.addr_gen_mode", "1")?;
                    sysctl(ns, "net.ipv6.conf.default.accept_ra", "0")?;
                }
                ip(&format!("-n {ns} link set lo up"))?;
            }
            sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
            if options.ipv6 {
                sysctl(&node.netns, "net.ipv6.conf.all.forwarding", "1")?;
            }
            sysctl(&node.netns, "net.ipv4.conf.all.rp_filter", "0")?;
            sysctl(&node.netns, "net.ipv4.conf.default.rp_filter", "0")?;
        }
        let [n1, n2] = self.nodes.clone();
        let (overlay_mtu, underlay_mtu) = (options.overlay_mtu, options.underlay_mtu);

        // Underlay: one veth between the nodes (or one to the switch each), static neighbours
        // both ways.
        if let Some(sw) = self.switch.clone() {
            ip(&format!("netns add {sw}"))?;
            self.namespaces.push(sw.clone());
            sysctl(&sw, "net.ipv6.conf.all.disable_ipv6", "1")?;
            sysctl(&sw, "net.ipv6.conf.default.disable_ipv6", "1")?;
            ip(&format!("-n {sw} link set lo up"))?;
            ip(&format!("-n {sw} link add {SWITCH_BRIDGE} type bridge"))?;
            ip(&format!("-n {sw} link set {SWITCH_BRIDGE} up"))?;
            for (i, node) in [&n1, &n2].into_iter().enumerate() {
                let port = format!("sw{}", i + 1);
                ip(&format!(
                    "link add {UNDERLAY_DEV} netns {} type veth peer name {port} netns {sw}",
                    node.netns
                ))?;
                ip(&format!(
                    "-n {sw} link set {port} mtu {underlay_mtu} master {SWITCH_BRIDGE} up"
                ))?;
            }
        } else {
            ip(&format!(
                "link add {UNDERLAY_DEV} netns {} type veth peer name {UNDERLAY_DEV} netns {}",
                n1.netns, n2.netns
            ))?;
        }
        for node in [&n1, &n2] {
            let (ns, addr) = (&node.netns, node.underlay_ip);
            ip(&format!(
                "-n {ns} link set {UNDERLAY_DEV} mtu {underlay_mtu} up"
            ))?;
            ip(&format!("-n {ns} addr add {addr}/24 dev {UNDERLAY_DEV}"))?;
        }
        for (node, peer) in [(&n1, &n2), (&n2, &n1)] {
            let peer_mac = mac_of(&peer.netns, UNDERLAY_DEV)?;
            neigh(&node.netns, peer.underlay_ip, &peer_mac, UNDERLAY_DEV)?;
        }

        // Overlay: vxlan.calico per node, with Calico's static fdb/neighbour/route entries.
        for (node, peer) in [(&n1, &n2), (&n2, &n1)] {
            add_vxlan(node, peer, options)?;
        }

        // Pods: eth0 in the pod, cali0 on the node, /32 routes and static neighbours.
        for node in [&n1, &n2] {
            let (ns, pod_ns, pod_ip) = (&node.netns, &node.pod.netns, node.pod.ip);
            let gateway = Ipv4Addr::new(198, 19, pod_ip.octets()[2], 1);
            ip(&format!(
                "-n {ns} link add {POD_HOST_DEV} type veth peer name eth0 netns {pod_ns}"
            ))?;
            ip(&format!(
                "-n {ns} link set {POD_HOST_DEV} mtu {overlay_mtu} up"
            ))?;
            ip(&format!("-n {ns} addr add {gateway}/32 dev {POD_HOST_DEV}"))?;
            ip(&format!(
                "-n {ns} route add {pod_ip}/32 dev {POD_HOST_DEV} scope link"
            ))?;
            ip(&format!("-n {pod_ns} link set eth0 mtu {overlay_mtu} up"))?;
            ip(&format!("-n {pod_ns} addr add {pod_ip}/32 dev eth0"))?;
            ip(&format!(
                "-n {pod_ns} route add {gateway}/32 dev eth0 scope link"
            ))?;
            ip(&format!(
                "-n {pod_ns} route add 198.18.0.0/15 via {gateway} dev eth0"
            ))?;
            neigh(pod_ns, gateway, &mac_of(ns, POD_HOST_DEV)?, "eth0")?;
            neigh(ns, pod_ip, &mac_of(pod_ns, "eth0")?, POD_HOST_DEV)?;
            if options.ipv6 {
                let (pod6, gw6) = (node.pod.ip6, gateway6_of(node));
                ip(&format!(
                    "-n {ns} addr add {gw6}/128 dev {POD_HOST_DEV} nodad"
                ))?;
                ip(&format!(
                    "-n {ns} -6 route add {pod6}/128 dev {POD_HOST_DEV}"
                ))?;
                ip(&format!("-n {pod_ns} addr add {pod6}/128 dev eth0 nodad"))?;
                ip(&format!("-n {pod_ns} -6 route add {gw6}/128 dev eth0"))?;
                ip(&format!(
                    "-n {pod_ns} -6 route add fd00::/8 via {gw6} dev eth0"
                ))?;
                neigh6(pod_ns, gw6, &mac_of(ns, POD_HOST_DEV)?, "eth0")?;
                neigh6(ns, pod6, &mac_of(pod_ns, "eth0")?, POD_HOST_DEV)?;
            }
        }

        // A tap on node 1, where a user-space engine (Suricata in incident #4) would sit.
        ip(&format!(
            "-n {} tuntap add dev {TAP_DEV} mode tap",
            n1.netns
        ))?;
        ip(&format!("-n {} link set {TAP_DEV} up", n1.netns))?;
        Ok(())
    }

    /// Deletes node `i`'s `vxlan.calico` (as Calico does when it reconfigures the overlay).
    pub fn delete_vxlan(&self, i: usize) -> io::Result<()> {
        ip(&format!("-n {} link del {VXLAN_DEV}", self.nodes[i].netns))
    }

    /// Creates node `i`'s `vxlan.calico` again, with its addresses, fdb, neighbour and route
    /// entries: a new device (new ifindex) with the old name.
    pub fn recreate_vxlan(&self, i: usize) -> io::Result<()> {
        let _ = self.delete_vxlan(i);
        add_vxlan(&self.nodes[i], &self.nodes[1 - i], &self.options)
    }

    /// Adds a veth `name` on node `i` whose peer (`peer`) sits in the node's pod namespace, with
    /// 198.18.`net`.1/30 on the node side and .2 in the pod: traffic the node sends to
    /// [`extra_veth_peer_ip`] crosses `name`. Deleting `name` (ip link del) removes both ends.
    pub fn add_veth(&self, i: usize, name: &str, peer: &str, net: u8) -> io::Result<()> {
        self.add_veth_at(i, name, peer, net, None)
    }

    /// [`Lab::add_veth`], with `name` at ifindex `index` when given.
    pub fn add_veth_at(
        &self,
        i: usize,
        name: &str,
        peer: &str,
        net: u8,
        index: Option<u32>,
    ) -> io::Result<()> {
        let node = &self.nodes[i];
        let (ns, pod) = (&node.netns, &node.pod.netns);
        let index = index.map(|n| format!("index {n}")).unwrap_or_default();
        ip(&format!(
            "-n {ns} link add {name} {index} type veth peer name {peer} netns {pod}"
        ))?;
        ip(&format!("-n {ns} addr add 198.18.{net}.1/30 dev {name}"))?;
        ip(&format!("-n {ns} link set {name} up"))?;
        ip(&format!("-n {pod} addr add 198.18.{net}.2/30 dev {peer}"))?;
        ip(&format!("-n {pod} link set {peer} up"))
    }

    /// [`faults::udp_datagrams`] from node 1's pod to node 2's pod (IPv4): the pod-to-pod
    /// traffic across the overlay that the tests and the benchmarks send.
    pub fn pod_datagrams(
        &self,
        port: u16,
        size: usize,
        count: u32,
        df: faults::Df,
    ) -> io::Result<u32> {
        let [n1, n2] = &self.nodes;
        faults::udp_datagrams(&n1.pod.netns, n2.pod.ip.into(), port, size, count, df)
    }

    /// Runs a command inside a namespace of this lab and waits for it.
    pub fn exec(netns: &str, program: &str, args: &[&str]) -> io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", netns, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// A command that will run inside `netns`, for callers that need to spawn it.
    pub fn command(netns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, program]);
        cmd
    }

    /// Every namespace of this lab.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Deletes what labs whose process is gone (a killed test or demo) left: the processes
    /// still running inside their namespaces (iperf3, ping), then the namespaces. A lab whose
    /// process still runs is never touched; a lab's pid taken by a process that started after
    /// the lab was made does not keep the lab alive.
    pub fn remove_stale() -> io::Result<()> {
        let out = Command::new("ip").args(["netns", "list"]).output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(pid) = name
                .strip_prefix(NETNS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if owner_lives(pid, name) {
                continue;
            }
            end_processes_in(name);
            let _ = ip(&format!("netns del {name}"));
        }
        Ok(())
    }
}

/// Whether the process that made the lab namespace `name` still runs: `pid` is there, and it
/// started before the namespace was made (not a later process that got the same pid). When
/// in doubt, it lives.
fn owner_lives(pid: u32, name: &str) -> bool {
    let Some(started) = process_start(pid) else {
        return false; // no such process
    };
    let made = std::fs::metadata(format!("/run/netns/{name}")).and_then(|m| m.modified());
    match made {
        // A second of slack for the clocks' resolutions.
        Ok(made) => started <= made + std::time::Duration::from_secs(1),
        Err(_) => true,
    }
}

/// When process `pid` started, on the wall clock (`None`: no such process, or a zombie).
fn process_start(pid: u32) -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    let ticks: u64 = fields.get(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let booted = std::time::SystemTime::now() - std::time::Duration::from_secs_f64(uptime);
    Some(booted + std::time::Duration::from_millis(ticks * 1000 / hz.max(1)))
}

/// Ends every process inside the namespace `ns` (but this one) and waits, briefly, until
/// they are gone: a namespace deleted with processes in it lives on with them, nameless.
fn end_processes_in(ns: &str) {
    let me = std::process::id().to_string();
    let pids = || -> Vec<String> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter(|pid| *pid != me)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    for _ in 0..50 {
        let left: Vec<String> = pids()
            .into_iter()
            .filter(|pid| pid.parse().ok().and_then(process_start).is_some())
            .collect();
        if left.is_empty() {
            return;
        }
        for pid in &left {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: kill(2) on a process of the lab's namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // End what still runs inside (iperf3, ping) so the namespace really goes away; a
            // process may watch a lab node from inside (the demo): not this one.
            end_processes_in(ns);
            let _ = ip(&format!("netns del {ns}"));
        }
    }
}

/// The pod-side address of a veth made by [`Lab::add_veth`] with `net`.
pub fn extra_veth_peer_ip(net: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, net, 2)
}

/// `vxlan.calico` on `node`, pointing at `peer`: the device, its address, and Calico's static
/// neighbour, fdb and route entries for the peer.
fn add_vxlan(node: &Node, peer: &Node, options: &LabOptions) -> io::Result<()> {
    let (overlay_mtu, underlay_mtu) = (options.overlay_mtu, options.underlay_mtu);
    let (ns, local, mac, vtep) = (&node.netns, node.underlay_ip, &node.vtep_mac, node.vtep_ip);
    // The kernel refuses a vxlan MTU above its lower device's minus the overhead, so an
    // oversized overlay (the MTU-mismatch fault) is made without a lower device, as Calico
    // creates it (local address only).
    let lower = if !options.vxlan_lower_dev || overlay_mtu + VXLAN_OVERHEAD > underlay_mtu {
        String::new()
    } else {
        format!("dev {UNDERLAY_DEV}")
    };
    ip(&format!(
        "-n {ns} link add {VXLAN_DEV} type vxlan id {VNI} dstport {VXLAN_PORT} \
         local {local} {lower} nolearning"
    ))?;
    ip(&format!(
        "-n {ns} link set {VXLAN_DEV} address {mac} mtu {overlay_mtu} up"
    ))?;
    ip(&format!("-n {ns} addr add {vtep}/32 dev {VXLAN_DEV}"))?;
    let (peer_mac, peer_vtep, remote) = (&peer.vtep_mac, peer.vtep_ip, peer.underlay_ip);
    neigh(ns, peer_vtep, peer_mac, VXLAN_DEV)?;
    run(
        "bridge",
        &format!("-n {ns} fdb add {peer_mac} dev {VXLAN_DEV} dst {remote} self permanent"),
    )?;
    ip(&format!(
        "-n {ns} route add {peer_vtep}/24 via {peer_vtep} dev {VXLAN_DEV} onlink"
    ))?;
    if options.ipv6 {
        let vtep6 = vtep6_of(peer);
        ip(&format!(
            "-n {ns} addr add {}/128 dev {VXLAN_DEV} nodad",
            vtep6_of(node)
        ))?;
        neigh6(ns, vtep6, peer_mac, VXLAN_DEV)?;
        ip(&format!(
            "-n {ns} -6 route add {vtep6}/64 via {vtep6} dev {VXLAN_DEV} onlink"
        ))?;
    }
    Ok(())
}

fn neigh(ns: &str, addr: Ipv4Addr, mac: &str, dev: &str) -> io::Result<()> {
    ip(&format!(
        "-n {ns} neigh replace {addr} lladdr {mac} dev {dev} nud permanent"
    ))
}

fn neigh6(ns: &str, addr: Ipv6Addr, mac: &str, dev: &str) -> io::Result<()> {
    ip(&format!(
        "-n {ns} -6 neigh replace {addr} lladdr {mac} dev {dev} nud permanent"
    ))
}

/// The node's address on its pod veth, the pod's IPv6 gateway: fd00:19:N::1.
fn gateway6_of(node: &Node) -> Ipv6Addr {
    let mut seg = node.pod.ip6.segments();
    seg[7] = 1;
    Ipv6Addr::from(seg)
}

/// The node's IPv6 address on vxlan.calico: fd00:19:N::.
fn vtep6_of(node: &Node) -> Ipv6Addr {
    let mut seg = node.pod.ip6.segments();
    seg[7] = 0;
    Ipv6Addr::from(seg)
}

fn sysctl(ns: &str, key: &str, value: &str) -> io::Result<()> {
    run("ip", &format!("netns exec {ns} sysctl -qw {key}={value}"))
}

fn mac_of(ns: &str, dev: &str) -> io::Result<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", dev])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other(format!("no MAC address for {dev} in {ns}")))
}

/// Runs `ip` with whitespace-separated arguments (lab names never contain spaces).
fn ip(args: &str) -> io::Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &str) -> io::Result<()> {
    let out = Command::new(program)
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {args}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
