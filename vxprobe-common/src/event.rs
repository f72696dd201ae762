//! Events handed from the kernel to user space through the `EVENTS` ring buffer.
//!
//! Every record starts with an [`EventHeader`] whose `kind` says which struct follows; user
//! space decodes the bytes in exactly one place (`vxprobe::decode`), with length checks.

/// Bytes of packet kept with an event, from the network header on: headers, not payload.
pub const SNAP_LEN: usize = 128;

/// What a ring-buffer record is. Stored as `u32` in the header.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A packet freed with a drop reason (`skb:kfree_skb`).
    Drop = 1,
}

impl EventKind {
    /// Every kind, for per-kind counters indexed by `kind as u32`.
    pub const ALL: [EventKind; 1] = [EventKind::Drop];
    /// One past the largest kind value: the size of per-kind arrays.
    pub const COUNT: u32 = 2;
}

impl TryFrom<u32> for EventKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(EventKind::Drop),
            other => Err(other),
        }
    }
}

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
    /// The `SKB_CONSUMED` value: frees with it are not drops.
    pub reason_consumed: u32,
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);
const _: () = assert!(core::mem::size_of::<PacketInfo>() == 24 + 16 + SNAP_LEN);
const _: () = assert!(core::mem::size_of::<DropEvent>() == 16 + 16 + 168);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 14 * 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integer fields only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::KernelOffsets {}
}
