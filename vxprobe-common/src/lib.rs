//! Types that cross the kernel/user boundary, defined once for both sides.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and free of hidden padding (flags are `u32`, not
//! `bool`), so the eBPF programs and user space agree byte for byte. Sizes are pinned by
//! compile-time asserts: a change that moves a field breaks the build, not the data.
#![no_std]

pub mod event;
pub mod hop;

pub use event::{DropEvent, EventHeader, EventKind, KernelOffsets, PacketInfo, SNAP_LEN};
pub use hop::{Direction, HopCounters, HopKey};

/// Names of maps and programs, shared so user space never spells one by hand.
pub mod names {
    pub const HOP_STATS: &str = "HOP_STATS";
    pub const TC_INGRESS: &str = "vxprobe_tc_ingress";
    pub const TC_EGRESS: &str = "vxprobe_tc_egress";
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const OFFSETS: &str = "OFFSETS";
    pub const KFREE_SKB_BTF: &str = "vxprobe_kfree_skb_btf";
    pub const KFREE_SKB_RAW: &str = "vxprobe_kfree_skb_raw";
}

/// Upper bound on the hops (device x direction) counted at once.
pub const MAX_HOPS: u32 = 4096;
