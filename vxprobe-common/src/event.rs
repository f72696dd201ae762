//! Events handed from the kernel to user space through the `EVENTS` ring buffer.
//!
//! Every record starts with an [`EventHeader`] whose `kind` says which struct follows; user
//! space decodes the bytes in exactly one place (`vxprobe::decode`), with length checks.

/// Bytes of packet kept with an event, from the network header on: headers, not payload.
pub const SNAP_LEN: usize = 128;

/// Defines [`EventKind`] from one list: each kind's value and the `kind` its JSON lines carry;
/// [`EventKind::ALL`], [`EventKind::COUNT`] and the conversions follow from it.
macro_rules! event_kinds {
    ($($(#[$doc:meta])* $kind:ident = $value:literal, $line:literal;)*) => {
        /// What a ring-buffer record is. Stored as `u32` in the header.
        #[repr(u32)]
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $($(#[$doc])* $kind = $value,)*
        }

        impl EventKind {
            /// Every kind, for per-kind counters indexed by `kind as u32`.
            pub const ALL: [EventKind; [$($value),*].len()] = [$(EventKind::$kind),*];

            /// The `kind` of the JSON lines this kind of event becomes.
            pub const fn line_name(self) -> &'static str {
                match self {
                    $(EventKind::$kind => $line,)*
                }
            }
        }

        impl TryFrom<u32> for EventKind {
            type Error = u32;

            fn try_from(value: u32) -> Result<Self, Self::Error> {
                match value {
                    $($value => Ok(EventKind::$kind),)*
                    other => Err(other),
                }
            }
        }
    };
}

event_kinds! {
    /// A packet freed with a drop reason (`skb:kfree_skb`).
    Drop = 1, "drop";
    /// A TCP segment retransmitted (`tcp:tcp_retransmit_skb`).
    Retransmit = 2, "retransmit";
    /// A send(2) family call that failed with EMSGSIZE ("Message too long").
    SendError = 3, "oversize";
    /// An IP fragment seen at a hop (TC).
    Fragment = 4, "fragment";
    /// A non-GSO packet longer than its device's MTU allows, seen at a hop (TC).
    HopOversize = 5, "oversize";
    /// An ICMP "fragmentation needed" the kernel sent back for a packet (`icmp:icmp_send`).
    FragNeeded = 6, "frag_needed";
    /// A checksum failure seen by a hook other than a drop with a reason: `tcp:tcp_bad_csum`
    /// (kernels without drop reasons) or `netdev_rx_csum_fault` (a device's
    /// CHECKSUM_COMPLETE value was wrong).
    Csum = 7, "csum_error";
}

impl EventKind {
    /// One past the largest kind value: the size of per-kind arrays.
    pub const COUNT: u32 = {
        let mut max = 0;
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 > max {
                max = Self::ALL[i] as u32;
            }
            i += 1;
        }
        max + 1
    };
}

/// An event struct: `#[repr(C)]` with an [`EventHeader`] first, so whoever reserves its
/// record writes the header there.
///
/// # Safety
/// The type must be `#[repr(C)]` and start with an `EventHeader` field.
pub unsafe trait Event {}

#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// Namespace inode of the device the packet was on (0: no device).
    pub netns: u32,
    /// `bpf_ktime_get_ns()`: monotonic, for ordering.
    pub ktime_ns: u64,
}

/// The packet facts every skb-based event carries.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// `skb->dev->ifindex` (0 when the skb had no device).
    pub ifindex: u32,
    /// `skb->skb_iif`: the device the packet arrived on (0 for locally generated packets).
    pub iif: u32,
    pub skb_len: u32,
    /// Valid bytes in `packet`.
    pub cap_len: u32,
    /// Network namespace of the current task: the receiver's, for drops at the socket layer.
    pub task_netns: u32,
    /// `skb->protocol`, network byte order.
    pub protocol: u16,
    pub _pad: u16,
    /// `skb->dev->name`, NUL-padded.
    pub ifname: [u8; 16],
    /// The packet from its network header on, `cap_len` bytes valid.
    pub packet: [u8; SNAP_LEN],
}

/// `skb:kfree_skb`: a packet the kernel dropped, with its reason and where.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DropEvent {
    pub header: EventHeader,
    /// Kernel address the skb was freed from (resolved through /proc/kallsyms).
    pub location: u64,
    /// `enum skb_drop_reason` value; names come from the running kernel's BTF.
    pub reason: u32,
    pub _pad: u32,
    pub packet: PacketInfo,
}

impl KernelOffsets {
    /// All zero: the placeholder the kernel object carries until user space fills it in.
    pub const ZERO: Self = Self {
        skb_len: 0,
        skb_dev: 0,
        skb_head: 0,
        skb_tail: 0,
        skb_network_header: 0,
        skb_iif: 0,
        skb_protocol: 0,
        dev_ifindex: 0,
        dev_name: 0,
        dev_nd_net: 0,
        net_ns_inum: 0,
        task_nsproxy: 0,
        nsproxy_net_ns: 0,
        sk_family: 0,
        sk_num: 0,
        sk_dport: 0,
        sk_rcv_saddr: 0,
        sk_daddr: 0,
        sk_v6_rcv_saddr: 0,
        sk_v6_daddr: 0,
        sk_net: 0,
        sk_state: 0,
        skb_tcp_gso_segs: 0,
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_private_data: 0,
        socket_sk: 0,
        packet_ifindex: 0,
        reason_consumed: 0,
        retransmit_has_err: 0,
        reason_not_dropped: 0,
        reason_not_specified: 0,
        skb_ip_summed_bit: 0,
        skb_csum_valid_bit: 0,
        skb_csum_sw_bit: 0,
    };
}

/// In [`KernelOffsets`]: this kernel has no such drop reason, or no such field.
pub const ABSENT: u32 = u32::MAX;

/// The drop reason a kernel without `enum skb_drop_reason` (before 5.17) gets for its frees:
/// user space names it `NOT_SPECIFIED`.
pub const REASONLESS_NOT_SPECIFIED: u32 = 0xffff_ff01;

/// On a kernel without drop reasons, a free of a packet whose checksum the stack computed and
/// found wrong: user space names it after the packet's protocol (`UDP_CSUM`, `TCP_CSUM`...).
pub const REASONLESS_CSUM: u32 = 0xffff_ff02;

/// On a kernel without drop reasons, a free of the packet the same CPU just answered with ICMP
/// fragmentation needed (`ip_forward`, `ip_fragment`): user space names it `PKT_TOO_BIG`.
pub const REASONLESS_TOO_BIG: u32 = 0xffff_ff03;

/// `icmp:icmp_send` of type 3 code 4: the node told a sender its packet is too big for the
/// path (PMTU discovery); `packet` is the packet that triggered it.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FragNeededEvent {
    pub header: EventHeader,
    pub packet: PacketInfo,
}

/// Where a [`CsumEvent`] comes from.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CsumOrigin {
    TcpBadCsum = 1,
    RxCsumFault = 2,
}

/// A packet with a bad checksum, from `tcp:tcp_bad_csum` or `netdev_rx_csum_fault`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CsumEvent {
    pub header: EventHeader,
    /// A [`CsumOrigin`] as u32.
    pub origin: u32,
    pub _pad: u32,
    pub packet: PacketInfo,
}

/// A connection's addresses as the socket holds them.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SockFlow {
    /// [`AF_INET`](crate::AF_INET) or [`AF_INET6`](crate::AF_INET6), as the socket holds
    /// it (16 bits).
    pub family: u16,
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    pub _pad: u16,
    /// IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// `tcp:tcp_retransmit_skb`: one retransmitted skb (a GSO skb may carry several segments).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RetransmitEvent {
    pub header: EventHeader,
    pub flow: SockFlow,
    /// TCP state of the socket (TCP_ESTABLISHED = 1, TCP_SYN_SENT = 2, ...).
    pub state: u32,
    /// Segments in the skb (`tcp_skb_pcount`): what TcpRetransSegs adds for it.
    pub segs: u32,
}

/// Which system call a [`SendErrorEvent`] failed in.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SendCall {
    Sendto = 1,
    Sendmsg = 2,
    /// fexit of the kernel function (the better rung: the socket is at hand).
    PacketSendmsg = 3,
    UdpSendmsg = 4,
}

impl SendCall {
    pub fn name(call: u32) -> &'static str {
        match call {
            1 => "sendto",
            2 => "sendmsg",
            3 => "packet_sendmsg",
            4 => "udp_sendmsg",
            _ => "send",
        }
    }
}

/// A send that failed with EMSGSIZE, seen at the system call's exit.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SendErrorEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; 16],
    /// The errno (positive: 90 for EMSGSIZE).
    pub errno: u32,
    /// A [`SendCall`] as `u32`.
    pub call: u32,
    pub fd: u32,
    /// Bytes the caller tried to send.
    pub len: u32,
    /// Destination address family from the call's sockaddr (`AF_*`, 16 bits as sockaddr
    /// holds it; 0: none given).
    pub addr_family: u16,
    /// Destination port (AF_INET/AF_INET6), host order.
    pub addr_port: u16,
    /// `sll_ifindex` of an AF_PACKET destination.
    pub addr_ifindex: u32,
    /// Destination address (AF_INET: first 4 bytes).
    pub addr: [u8; 16],
}

/// A packet worth reporting seen by a TC program: a fragment or an oversized packet.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HopEvent {
    pub header: EventHeader,
    /// The (inner) flow, with the hop's ifindex and direction.
    pub flow: crate::FlowKey,
    pub outer: crate::OuterHeader,
    /// Length of the packet at the hop (skb length, link header included).
    pub len: u32,
    /// The device MTU vxprobe knew at attach time (0: unknown).
    pub mtu: u32,
    pub gso_segs: u32,
    /// Fragment offset in bytes, and 1 when more fragments follow.
    pub frag_offset: u32,
    pub frag_more: u32,
    /// Valid bytes of `frame`.
    pub cap_len: u32,
    /// The packet from its link-layer header on (what a pcap shows).
    pub frame: [u8; SNAP_LEN],
}

/// Kernel struct field offsets, read from the running kernel's BTF by user space and handed to
/// the programs as a read-only global: Rust eBPF cannot emit CO-RE relocations, and offsets
/// baked in at build time would be right for one kernel only.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub skb_len: u32,
    pub skb_dev: u32,
    pub skb_head: u32,
    pub skb_tail: u32,
    pub skb_network_header: u32,
    pub skb_iif: u32,
    pub skb_protocol: u32,
    pub dev_ifindex: u32,
    pub dev_name: u32,
    pub dev_nd_net: u32,
    pub net_ns_inum: u32,
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    pub sk_family: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_rcv_saddr: u32,
    pub sk_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_net: u32,
    pub sk_state: u32,
    /// `tcp_skb_pcount`: `skb->cb` + the offset of `tcp_gso_segs` in `struct tcp_skb_cb`.
    pub skb_tcp_gso_segs: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `struct packet_sock` `ifindex` (0: unknown, e.g. af_packet without BTF).
    pub packet_ifindex: u32,
    /// The `SKB_CONSUMED` value (6.2+): frees with it are not drops. [`ABSENT`] without one.
    pub reason_consumed: u32,
    /// 1 when `tcp_retransmit_skb` has the `err` argument (and fires on failed retransmits).
    pub retransmit_has_err: u32,
    /// The `SKB_NOT_DROPPED_YET` value (0 since 5.19): not a drop. [`ABSENT`] without one
    /// (on 5.17 and 5.18, 0 is `NOT_SPECIFIED`, a drop).
    pub reason_not_dropped: u32,
    /// What a free without a reason is reported as: `SKB_DROP_REASON_NOT_SPECIFIED`, or
    /// [`REASONLESS_NOT_SPECIFIED`] where the enum does not exist.
    pub reason_not_specified: u32,
    /// Bit offsets in `struct sk_buff` of `ip_summed` (2 bits), `csum_valid` and
    /// `csum_complete_sw`: a drop with CHECKSUM_COMPLETE computed in software and found wrong is
    /// a checksum failure on kernels whose frees carry no reason. [`ABSENT`] when missing.
    pub skb_ip_summed_bit: u32,
    pub skb_csum_valid_bit: u32,
    pub skb_csum_sw_bit: u32,
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);
const _: () = assert!(core::mem::size_of::<HopEvent>() == 16 + 44 + 44 + 24 + SNAP_LEN);
const _: () = assert!(core::mem::size_of::<PacketInfo>() == 24 + 16 + SNAP_LEN);
const _: () = assert!(core::mem::size_of::<DropEvent>() == 16 + 16 + 168);
const _: () = assert!(core::mem::size_of::<FragNeededEvent>() == 16 + 168);
const _: () = assert!(core::mem::size_of::<CsumEvent>() == 16 + 8 + 168);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 37 * 4);
const _: () = assert!(core::mem::size_of::<SockFlow>() == 40);
const _: () = assert!(core::mem::size_of::<RetransmitEvent>() == 16 + 40 + 8);
const _: () = assert!(core::mem::size_of::<SendErrorEvent>() == 16 + 8 + 16 + 16 + 8 + 16);

// SAFETY: each is #[repr(C)] with `header: EventHeader` as its first field.
unsafe impl Event for DropEvent {}
// SAFETY: as above.
unsafe impl Event for RetransmitEvent {}
// SAFETY: as above.
unsafe impl Event for SendErrorEvent {}
// SAFETY: as above.
unsafe impl Event for HopEvent {}
// SAFETY: as above.
unsafe impl Event for FragNeededEvent {}
// SAFETY: as above.
unsafe impl Event for CsumEvent {}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integer fields only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::KernelOffsets {}
}
