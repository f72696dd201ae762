//! Types that cross the kernel/user boundary, defined once for both sides.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and free of hidden padding (flags are `u32`, not
//! `bool`), so the eBPF programs and user space agree byte for byte. Sizes are pinned by
//! compile-time asserts: a change that moves a field breaks the build, not the data.
#![no_std]

pub mod counters;
pub mod event;
pub mod flow;
pub mod hop;
pub mod wire;

pub use counters::Counters;
pub use event::{
    CsumEvent, CsumOrigin, DropEvent, Event, EventHeader, EventKind, FragNeededEvent, HopEvent,
    KernelOffsets, PacketInfo, RetransmitEvent, SNAP_LEN, SendCall, SendErrorEvent, SockFlow,
};
pub use flow::{
    CachedFlow, FlowCounters, FlowFilter, FlowKey, FragInfo, FragKey, OuterHeader, flow_cache_slot,
};
pub use hop::{Direction, HopKey};
pub use wire::{AF_INET, AF_INET6, AF_PACKET};

/// Names of maps and programs, shared so user space never spells one by hand.
pub mod names {
    pub const HOP_STATS: &str = "HOP_STATS";
    pub const FLOW_STATS: &str = "FLOW_STATS";
    pub const FLOW_INSERTS: &str = "FLOW_INSERTS";
    pub const FLOW_CACHE: &str = "FLOW_CACHE";
    pub const FLOW_CACHE_SLOTS: &str = "FLOW_CACHE_SLOTS";
    pub const HINTS: &str = "HINTS";
    pub const DEVICE_INFO: &str = "DEVICE_INFO";
    pub const DEVICE_INFO_LOW: &str = "DEVICE_INFO_LOW";
    pub const FILTER: &str = "FILTER";
    pub const EPOCH: &str = "EPOCH";
    pub const TC_INGRESS: &str = "vxprobe_tc_ingress";
    pub const TC_EGRESS: &str = "vxprobe_tc_egress";
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const OFFSETS: &str = "OFFSETS";
    pub const KFREE_SKB_BTF: &str = "vxprobe_kfree_skb_btf";
    pub const KFREE_SKB_RAW: &str = "vxprobe_kfree_skb_raw";
    pub const RETRANSMIT_BTF: &str = "vxprobe_retransmit_btf";
    pub const RETRANSMIT_RAW: &str = "vxprobe_retransmit_raw";
    pub const SENDTO_ENTER: &str = "vxprobe_sendto_enter";
    pub const SENDTO_EXIT: &str = "vxprobe_sendto_exit";
    pub const SENDMSG_ENTER: &str = "vxprobe_sendmsg_enter";
    pub const SENDMSG_EXIT: &str = "vxprobe_sendmsg_exit";
    /// The exits alone, the arguments read from the saved registers (5.15+).
    pub const SENDTO_EXIT_REGS: &str = "vxprobe_sendto_exit_regs";
    pub const SENDMSG_EXIT_REGS: &str = "vxprobe_sendmsg_exit_regs";
    pub const PACKET_SENDMSG_FEXIT: &str = "vxprobe_packet_sendmsg_fexit";
    pub const UDP_SENDMSG_FEXIT: &str = "vxprobe_udp_sendmsg_fexit";
    pub const KFREE_SKB_KPROBE_SK: &str = "vxprobe_sk_skb_reason_drop_kprobe";
    pub const KFREE_SKB_KPROBE: &str = "vxprobe_kfree_skb_reason_kprobe";
    pub const RETRANSMIT_SYNACK_BTF: &str = "vxprobe_retransmit_synack_btf";
    pub const RETRANSMIT_SYNACK_RAW: &str = "vxprobe_retransmit_synack_raw";
    pub const ICMP_SEND_BTF: &str = "vxprobe_icmp_send_btf";
    pub const TCP_BAD_CSUM_BTF: &str = "vxprobe_tcp_bad_csum_btf";
    pub const TCP_BAD_CSUM_RAW: &str = "vxprobe_tcp_bad_csum_raw";
    pub const RX_CSUM_FAULT_KPROBE: &str = "vxprobe_rx_csum_fault_kprobe";
    pub const ICMP_SEND_RAW: &str = "vxprobe_icmp_send_raw";
    /// `__icmp_send` itself, where `icmp:icmp_send` does not exist (before 5.17).
    pub const ICMP_SEND_FENTRY: &str = "vxprobe_icmp_send_fentry";
    pub const ICMP_SEND_KPROBE: &str = "vxprobe_icmp_send_kprobe";
    /// `skb:kfree_skb` without its `reason` argument (before 5.17): (skb, location) only.
    pub const KFREE_SKB_BTF_REASONLESS: &str = "vxprobe_kfree_skb_btf_noreason";
    pub const KFREE_SKB_RAW_REASONLESS: &str = "vxprobe_kfree_skb_raw_noreason";
    /// A kprobe on `kfree_skb`, a function before 5.17 (an inline wrapper since).
    pub const KFREE_SKB_KPROBE_REASONLESS: &str = "vxprobe_kfree_skb_kprobe";
    /// A no-op TC program for the benchmark's floor; vxprobe itself never attaches it.
    pub const YARDSTICK_TC: &str = "vxprobe_yardstick_tc";
    /// The least per-hop counter, for the benchmark; never attached by vxprobe either.
    pub const YARDSTICK_COUNT_TC: &str = "vxprobe_yardstick_count_tc";
    /// vxprobe's TC program cut short after a step, for the benchmark's decomposition: the
    /// device looked up, the headers parsed, the hop counted (never attached by vxprobe).
    pub const STEP_DEVICE_TC: &str = "vxprobe_step_device_tc";
    pub const STEP_PARSE_TC: &str = "vxprobe_step_parse_tc";
    pub const STEP_HOP_TC: &str = "vxprobe_step_hop_tc";
}

/// Default size of the event ring buffer in bytes (`--ring-size`): a burst of ~40k drop
/// events fits between two reads.
pub const RING_SIZE: u32 = 8 << 20;

/// Upper bound on the devices observed at once (each is two hops, ingress and egress).
pub const MAX_DEVICES: u32 = 2048;

/// Devices with an ifindex below this are described in an array indexed by ifindex (a lookup
/// the verifier inlines), the others in a hash map. A node's tunnel, underlay and NICs are
/// made at boot and have low indexes; pods' veths climb with churn.
pub const LOW_IFINDEXES: u32 = 4096;

/// Size of the per-hop counter array: a device's slot `s` counts at `2s` (ingress) and
/// `2s + 1` (egress).
pub const MAX_HOPS: u32 = MAX_DEVICES * 2;

/// Default size of the per-CPU LRU flow map (flows x hops x directions). Beyond it the least
/// recently seen entries are evicted.
pub const MAX_FLOWS: u32 = 65536;

/// Default slots per CPU in the TC programs' flow cache ([`CachedFlow`]): a power of two.
pub const FLOW_CACHE_SLOTS: u32 = 1024;

/// What user space tells the TC programs about a device, by ifindex.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub mtu: u32,
    /// 1 when frames start with the IP header (tun, ipip...), 0 for Ethernet.
    pub l3: u32,
    /// The device's slot in the per-hop counter array (below [`MAX_DEVICES`]): an array
    /// lookup the verifier inlines, where a hash lookup per packet cost ~30 ns.
    pub slot: u32,
    /// 1 for a described device: the array's other entries are all zero.
    pub known: u32,
}

/// Where the device in `slot` counts `direction` in the per-hop array.
#[inline(always)]
pub fn hop_index(slot: u32, direction: Direction) -> u32 {
    slot * 2 + direction as u32
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], four u32, no padding.
unsafe impl aya::Pod for DeviceInfo {}
