//! Decoded kernel events to the contract's anomaly records: the kind (each fault reported once,
//! as its most specific kind), the reason and location by name, the hop, the flow.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;
use vxprobe_common::{
    AF_INET, AF_INET6, AF_PACKET, CsumEvent, CsumOrigin, Direction, DropEvent, EventKind, FlowKey,
    FragNeededEvent, HopEvent, OuterHeader, PacketInfo, RetransmitEvent, SendCall, SendErrorEvent,
    SockFlow,
};

use crate::{
    kernel::btf::DropReasons,
    kernel::kallsyms::Kallsyms,
    node::{
        devices::{DeviceKind, Hop},
        netns,
    },
    observe::packet::{self, Flow, Outer},
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    Drop,
    CsumError,
    Oversize,
    Retransmit,
    Fragment,
    /// The node sent ICMP "fragmentation needed" for a packet too big for the next hop.
    FragNeeded,
}

impl AnomalyKind {
    /// Every kind, in the order of their values (`kind as usize` indexes per-kind arrays).
    pub const ALL: [AnomalyKind; 6] = [
        AnomalyKind::Drop,
        AnomalyKind::CsumError,
        AnomalyKind::Oversize,
        AnomalyKind::Retransmit,
        AnomalyKind::Fragment,
        AnomalyKind::FragNeeded,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Drop => "drop",
            AnomalyKind::CsumError => "csum_error",
            AnomalyKind::Oversize => "oversize",
            AnomalyKind::Retransmit => "retransmit",
            AnomalyKind::Fragment => "fragment",
            AnomalyKind::FragNeeded => "frag_needed",
        }
    }
}

/// Kernel functions that free an skb for being too big to send without fragmenting (or to
/// fragment at all); their drops carry NOT_SPECIFIED, so the location tells.
const SIZE_DROP_LOCATIONS: &[&str] = &["ip_fragment", "ip_do_fragment", "ip6_fragment"];

/// Socket-layer functions where `skb->dev` holds `dev_scratch`, not a device.
fn at_socket_layer(location: &str) -> bool {
    location.contains("recvmsg") || location.starts_with("__skb_recv")
}

/// The process behind an event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

/// Where a refused send was going (an IPv4 or IPv6 destination address).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
}

/// One anomaly, ready for every sink. Fields a kind does not have stay out of its JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// Written as the line's `kind` by the sink.
    #[serde(skip)]
    pub kind: AnomalyKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    pub netns: u64,
    /// The pod whose namespace this is, or at the other end of the device (a host-side veth
    /// of vxprobe's namespace): set by the session from the pod index.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::observe::report::serialize_pod"
    )]
    pub pod: Option<std::sync::Arc<crate::node::pods::Pod>>,
    /// `ingress`/`egress`, for events from device hooks (TC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<u32>,
    /// Fragment offset in bytes, and whether more fragments follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub func: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// A refused send's destination, when it named an IP one (sendto, or msg_name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dest: Option<Destination>,
    /// Segments this line stands for, when more than one (a retransmitted GSO skb).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<Flow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer: Option<Outer>,
    /// Where the packet was on its device: used to charge the fault to a hop, not written
    /// (kernel-wide hooks are not device hooks).
    #[serde(skip)]
    pub hop_direction: Option<Direction>,
    /// The packet died (or the send was refused): counts toward its hop's `drops`. Written
    /// as `"dropped": true` (absent when the packet went on), so readers of a recording (the
    /// report) take it from the line rather than judge it again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
    /// The packet's first bytes, for the pcapng evidence file.
    #[serde(skip)]
    pub evidence: Option<Evidence>,
    /// The packet's frame number in the evidence file (`--pcap`), 1-based as Wireshark shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap_frame: Option<u64>,
    /// CLOCK_MONOTONIC nanoseconds when the kernel saw it (`bpf_ktime_get_ns`).
    #[serde(skip)]
    pub ktime_ns: u64,
    /// `ktime_ns` on the wall clock ([`super::clock`]): the line's `ts`, the pcapng block's
    /// time.
    #[serde(skip)]
    pub ts: std::time::SystemTime,
}

/// What a packet capture needs of an anomaly's packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Frames from TC start at the Ethernet header; packets from kernel hooks at IP.
    pub link: Link,
    pub bytes: Vec<u8>,
    /// The packet's length before it was cut.
    pub original_len: u32,
    /// Where its headers end: the end of the innermost transport header (of the inner packet
    /// for tunnel packets), at most `bytes.len()`; `None` when they cannot be told apart from
    /// the payload (no IP packet). The evidence keeps no more than this unless `--snaplen`
    /// says otherwise.
    pub headers: Option<usize>,
}

impl Evidence {
    pub fn new(link: Link, bytes: Vec<u8>, original_len: u32) -> Self {
        let headers = match link {
            Link::Ethernet => packet::parse_ethernet(&bytes)
                .and_then(|ip| Some(bytes.len() - ip.len() + packet::headers_end(ip)?)),
            Link::Ip => packet::headers_end(&bytes),
        }
        .map(|end| end.min(bytes.len()));
        Self {
            link,
            bytes,
            original_len,
            headers,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    Ethernet,
    /// The packet starts with its IP header.
    Ip,
}

impl Link {
    /// How a hop's frames start: tun devices carry IP packets, the others Ethernet frames.
    pub fn of(hop: &Hop) -> Self {
        if hop.device.kind == DeviceKind::Tun {
            Self::Ip
        } else {
            Self::Ethernet
        }
    }
}

/// Where an oversized packet was found: a send the kernel refused (EMSGSIZE), a packet it
/// dropped for its size, or a packet a TC hop saw above its device's MTU (it went on).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OversizeSource {
    Send,
    Drop,
    Hop,
}

impl OversizeSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            OversizeSource::Send => "send",
            OversizeSource::Drop => "drop",
            OversizeSource::Hop => "hop",
        }
    }
}

impl Anomaly {
    /// Where an `oversize` anomaly comes from.
    pub fn oversize_source(&self) -> OversizeSource {
        if self.errno.is_some() {
            OversizeSource::Send
        } else if self.dropped {
            OversizeSource::Drop
        } else {
            OversizeSource::Hop
        }
    }

    /// Frees the kernel reports as drops although no packet was lost:
    /// - an ICMP echo reply is handed to raw sockets (root's ping) as a copy, then the
    ///   original is freed with NO_SOCKET in `ping_rcv` when no unprivileged ping socket
    ///   wants it;
    /// - the fragments of a reassembled datagram hang on its `frag_list` and are freed with
    ///   it (in `skb_release_data`; through `kfree_skb_list[_reason]` before 6.3) with the
    ///   datagram's reason: NOT_SPECIFIED when it was delivered and consumed (each reassembled
    ///   datagram read as fragments - 1 drops). When the datagram was dropped for a reason,
    ///   its fragments carry that reason and are losses too (each was a packet on the wire).
    pub fn is_benign(&self) -> bool {
        let reason = self.reason.as_deref();
        self.kind == AnomalyKind::Drop
            && match self.location.as_deref() {
                // icmp_rcv: kernels without drop reasons (btf_needs::reasonless_name)
                Some("ping_rcv" | "icmp_rcv") => reason == Some("NO_SOCKET"),
                Some("skb_release_data" | "kfree_skb_list" | "kfree_skb_list_reason") => {
                    reason == Some("NOT_SPECIFIED")
                }
                _ => false,
            }
    }

    pub(crate) fn new(kind: AnomalyKind, netns: u32) -> Self {
        Self {
            kind,
            ifname: None,
            ifindex: None,
            netns: u64::from(netns),
            pod: None,
            dir: None,
            reason: None,
            location: None,
            len: None,
            mtu: None,
            errno: None,
            offset: None,
            more: None,
            func: None,
            process: None,
            dest: None,
            count: None,
            flow: None,
            outer: None,
            hop_direction: None,
            dropped: false,
            evidence: None,
            pcap_frame: None,
            ktime_ns: 0,
            ts: std::time::SystemTime::UNIX_EPOCH,
        }
    }
}

/// What turns raw events into anomalies: names from this kernel, and our own hops.
pub struct Enricher {
    pub reasons: DropReasons,
    pub kallsyms: Kallsyms,
    /// Namespace inode vxprobe runs in: where the TC hooks are.
    pub netns: u64,
    /// The observed devices by ifindex (in `netns`): name, and whether frames start at IP.
    pub hops: HashMap<u32, (String, Link)>,
    /// Devices of other namespaces by (netns, ifindex): cached, looked up off the event loop.
    pub devices: netns::DeviceNames,
}

impl Enricher {
    pub fn drop_event(&self, event: &DropEvent) -> Anomaly {
        let location = self.kallsyms.name(event.location);
        // Frees the kernel gives no reason for, named where the place says it (all kernels:
        // 6.1 frees the checksum failures udp_recvmsg finds with plain kfree_skb too).
        let reason = crate::kernel::btf_needs::reasonless_name(
            self.reasons.name(event.reason),
            &location,
            packet_bytes(&event.packet),
        );
        let kind = if reason.ends_with("_CSUM") {
            AnomalyKind::CsumError
        } else if reason == "PKT_TOO_BIG" || SIZE_DROP_LOCATIONS.contains(&location.as_str()) {
            AnomalyKind::Oversize
        } else {
            AnomalyKind::Drop
        };
        let info = &event.packet;
        let has_device = !at_socket_layer(&location) && info.ifindex != 0;
        let netns = if has_device {
            event.header.netns
        } else {
            info.task_netns
        };
        let mut anomaly = Anomaly::new(kind, netns);
        anomaly.ktime_ns = event.header.ktime_ns;
        anomaly.dropped = true;
        if has_device {
            anomaly.ifname = Some(c_string(&info.ifname));
            anomaly.ifindex = Some(info.ifindex);
            anomaly.hop_direction = Some(if info.iif == info.ifindex {
                Direction::Ingress
            } else {
                Direction::Egress
            });
        }
        anomaly.len = Some(info.skb_len);
        if let Some(bytes) = packet_bytes(info) {
            if let Some(parsed) = packet::parse_ip(bytes) {
                anomaly.flow = Some(parsed.flow);
                anomaly.outer = parsed.outer;
            }
            anomaly.evidence = Some(Evidence::new(
                Link::Ip,
                bytes.to_vec(),
                info.skb_len.max(bytes.len() as u32),
            ));
        }
        anomaly.reason = Some(reason);
        anomaly.location = Some(location);
        anomaly
    }

    /// A fragment or an oversized packet seen at one of our TC hooks.
    pub fn hop_event(&self, event: &HopEvent) -> Anomaly {
        let kind = if event.header.kind == EventKind::HopOversize as u32 {
            AnomalyKind::Oversize
        } else {
            AnomalyKind::Fragment
        };
        let mut anomaly = Anomaly::new(kind, 0);
        anomaly.ktime_ns = event.header.ktime_ns;
        anomaly.netns = self.netns;
        let direction = Direction::try_from(event.flow.direction).ok();
        anomaly.hop_direction = direction;
        anomaly.dir = direction.map(Direction::as_str);
        anomaly.ifindex = Some(event.flow.ifindex);
        let hop = self.hops.get(&event.flow.ifindex);
        anomaly.ifname = hop.map(|(name, _)| name.clone());
        let captured = usize::try_from(event.cap_len)
            .unwrap_or(0)
            .min(event.frame.len());
        if captured > 0 {
            anomaly.evidence = Some(Evidence::new(
                hop.map_or(Link::Ethernet, |(_, link)| *link),
                event.frame[..captured].to_vec(),
                event.len,
            ));
        }
        anomaly.len = Some(event.len);
        anomaly.flow = flow_of(&event.flow);
        anomaly.outer = outer_of(&event.outer);
        match kind {
            AnomalyKind::Fragment => {
                anomaly.offset = Some(event.frag_offset);
                anomaly.more = Some(event.frag_more != 0);
            }
            _ => anomaly.mtu = (event.mtu != 0).then_some(event.mtu),
        }
        anomaly
    }

    /// A checksum failure from `tcp_bad_csum` (the packet is dropped) or
    /// `netdev_rx_csum_fault` (flagged: the device's checksum value was wrong).
    pub fn csum(&self, event: &CsumEvent) -> Anomaly {
        let info = &event.packet;
        let mut anomaly = Anomaly::new(AnomalyKind::CsumError, event.header.netns);
        anomaly.ktime_ns = event.header.ktime_ns;
        let (reason, location) = if event.origin == CsumOrigin::RxCsumFault as u32 {
            ("HW_CSUM_FAULT", "netdev_rx_csum_fault")
        } else {
            ("TCP_CSUM", "tcp_bad_csum")
        };
        anomaly.reason = Some(reason.to_owned());
        anomaly.location = Some(location.to_owned());
        anomaly.dropped = event.origin == CsumOrigin::TcpBadCsum as u32;
        if info.ifindex != 0 {
            anomaly.ifname = Some(c_string(&info.ifname));
            anomaly.ifindex = Some(info.ifindex);
            anomaly.hop_direction = Some(Direction::Ingress);
        }
        anomaly.len = Some(info.skb_len);
        if let Some(parsed) = packet_bytes(info).and_then(packet::parse_ip) {
            anomaly.flow = Some(parsed.flow);
            anomaly.outer = parsed.outer;
        }
        anomaly
    }

    /// ICMP fragmentation-needed sent for a packet: the device it arrived on and its flow.
    pub fn frag_needed(&self, event: &FragNeededEvent) -> Anomaly {
        let info = &event.packet;
        let mut anomaly = Anomaly::new(AnomalyKind::FragNeeded, event.header.netns);
        anomaly.ktime_ns = event.header.ktime_ns;
        if info.ifindex != 0 {
            anomaly.ifname = Some(c_string(&info.ifname));
            anomaly.ifindex = Some(info.ifindex);
        }
        anomaly.len = Some(info.skb_len);
        if let Some(parsed) = packet_bytes(info).and_then(packet::parse_ip) {
            anomaly.flow = Some(parsed.flow);
            anomaly.outer = parsed.outer;
        }
        anomaly
    }

    pub fn retransmit(&self, event: &RetransmitEvent) -> Anomaly {
        let mut anomaly = Anomaly::new(AnomalyKind::Retransmit, event.header.netns);
        anomaly.ktime_ns = event.header.ktime_ns;
        anomaly.flow = sock_flow(&event.flow);
        anomaly.count = (event.segs > 1).then_some(event.segs);
        anomaly
    }

    /// A send refused with EMSGSIZE. The device comes from the destination (AF_PACKET's
    /// sll_ifindex) or the socket's binding, looked up in the sender's namespace.
    pub fn send_error(&mut self, event: &SendErrorEvent) -> Anomaly {
        let mut anomaly = Anomaly::new(AnomalyKind::Oversize, event.header.netns);
        anomaly.ktime_ns = event.header.ktime_ns;
        anomaly.dropped = true;
        anomaly.len = Some(event.len);
        anomaly.errno = Some(event.errno);
        anomaly.func = Some(SendCall::name(event.call));
        anomaly.process = Some(Process {
            pid: event.tgid,
            comm: c_string(&event.comm),
        });
        let family = u8::try_from(event.addr_family).unwrap_or(0);
        anomaly.dest = ip_of(family, &event.addr).map(|addr| Destination {
            addr,
            port: event.addr_port,
        });
        // The kernel names the device from the destination or the socket's binding; if it
        // could not (no BTF for af_packet), ask /proc while the sender is still there.
        let ifindex = match family {
            AF_PACKET | 0 if event.addr_ifindex != 0 => Some(event.addr_ifindex),
            0 => self.devices.packet_socket(event.tgid, event.fd),
            _ => None,
        };
        if let Some(ifindex) = ifindex {
            anomaly.ifindex = Some(ifindex);
            anomaly.hop_direction = Some(Direction::Egress);
            if let Some((name, mtu)) = self.devices.device(anomaly.netns, ifindex) {
                anomaly.ifname = Some(name);
                anomaly.mtu = Some(mtu);
            }
        }
        anomaly
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// An address of `family` (`AF_*`, as every kernel struct holds it).
fn ip_of(family: u8, raw: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).into()),
        AF_INET6 => Some(Ipv6Addr::from(*raw).into()),
        _ => None,
    }
}

/// A kernel flow key as the contract's flow.
pub fn flow_of(key: &FlowKey) -> Option<Flow> {
    Some(Flow {
        proto: key.proto,
        src: ip_of(key.family, &key.src)?,
        dst: ip_of(key.family, &key.dst)?,
        sport: key.sport,
        dport: key.dport,
    })
}

/// A kernel tunnel header as the contract's `outer`.
pub fn outer_of(outer: &OuterHeader) -> Option<Outer> {
    Some(Outer {
        src: ip_of(outer.family, &outer.src)?,
        dst: ip_of(outer.family, &outer.dst)?,
        sport: outer.sport,
        dport: outer.dport,
        vni: outer.vni,
    })
}

fn sock_flow(flow: &SockFlow) -> Option<Flow> {
    let family = u8::try_from(flow.family).ok()?;
    Some(Flow {
        proto: 6,
        src: ip_of(family, &flow.saddr)?,
        dst: ip_of(family, &flow.daddr)?,
        sport: flow.sport,
        dport: flow.dport,
    })
}

/// The captured bytes, when they start with an IP header.
pub fn packet_bytes(info: &PacketInfo) -> Option<&[u8]> {
    let len = usize::try_from(info.cap_len).ok()?.min(info.packet.len());
    let bytes = &info.packet[..len];
    matches!(bytes.first().map(|b| b >> 4), Some(4 | 6)).then_some(bytes)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// An anomaly with nothing set, for tests to fill in.
    pub fn empty() -> Anomaly {
        Anomaly::new(AnomalyKind::Drop, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::{tests_support::empty, *};

    #[test]
    fn frees_that_lose_nothing_are_benign() {
        let drop = |reason: &str, location: &str| Anomaly {
            reason: Some(reason.into()),
            location: Some(location.into()),
            ..empty()
        };
        assert!(drop("NO_SOCKET", "ping_rcv").is_benign());
        assert!(drop("NO_SOCKET", "icmp_rcv").is_benign());
        assert!(drop("NOT_SPECIFIED", "skb_release_data").is_benign());
        assert!(drop("NOT_SPECIFIED", "kfree_skb_list").is_benign());
        // A reassembled datagram dropped for a reason: its fragments are losses.
        assert!(!drop("NETFILTER_DROP", "skb_release_data").is_benign());
        assert!(!drop("NO_SOCKET", "udp_queue_rcv_one_skb").is_benign());
        assert!(!drop("NOT_SPECIFIED", "ip_rcv_finish").is_benign());
        assert!(!drop("NETFILTER_DROP", "nf_hook_slow").is_benign());
    }
}
