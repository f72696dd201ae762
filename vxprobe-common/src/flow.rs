//! Per-flow counters at a hop, and the packet facts the TC programs decode.

/// A flow at a hop. For VXLAN/Geneve traffic the addresses and ports are the INNER ones.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub ifindex: u32,
    /// A `Direction` as u8.
    pub direction: u8,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6...).
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: u8,
    /// Host order; 0 where the protocol has no ports.
    pub sport: u16,
    pub dport: u16,
    /// IPv4 addresses use the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The tunnel header of encapsulated traffic (all zero when there is none).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct OuterHeader {
    /// 0: not encapsulated; otherwise 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
    pub vni: u32,
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// Counters of one flow at one hop on one CPU.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub packets: u64,
    pub bytes: u64,
    pub segs: u64,
    pub fragments: u64,
    pub oversize: u64,
    /// Largest packet (skb length) seen in epoch `max_epoch`; user space bumps the epoch
    /// every interval, so this is the largest packet of the interval.
    pub max_len: u32,
    pub max_epoch: u32,
    /// The tunnel header last seen for this flow.
    pub outer: OuterHeader,
    /// In the flow map: the generation of this CPU's cache slot that was last added in
    /// ([`CachedFlow`]); 0 before any. Unused in the cache itself.
    pub generation: u32,
}

impl FlowCounters {
    #[inline(always)]
    pub fn merge(&mut self, other: &FlowCounters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.segs += other.segs;
        self.fragments += other.fragments;
        self.oversize += other.oversize;
        // The newest epoch wins; within one epoch, the largest packet.
        if (other.max_epoch, other.max_len) > (self.max_epoch, self.max_len) {
            self.max_epoch = other.max_epoch;
            self.max_len = other.max_len;
        }
        if other.outer.family != 0 {
            self.outer = other.outer;
        }
    }
}

/// One slot of the TC programs' per-CPU flow cache: the flow that holds it and its counters
/// since it took the slot. Packets of a flow in its slot are counted here (an array lookup and
/// a key compare); a packet of another flow moves the holder's counters into the flow map
/// (its `generation` with them), then takes the slot with a new generation.
///
/// The generation is written twice around a takeover, `generation_end` first and `generation` last, so a
/// reader that copies the slot front to back and finds both equal has a copy from one
/// holder.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow {
    pub generation: u32,
    /// All zero while the slot was never taken (no packet has ifindex 0).
    pub key: FlowKey,
    pub counters: FlowCounters,
    pub generation_end: u32,
    pub _pad: u32,
}

/// The slot a flow takes in a CPU's share of the flow cache (`slots` a power of two): an
/// FNV-style multiply-xor over the key's words, cheap enough for every packet.
#[inline(always)]
pub fn flow_cache_slot(key: &FlowKey, slots: u32) -> u32 {
    // SAFETY: FlowKey is #[repr(C)], 44 bytes of integers without padding: eleven u32.
    let words: [u32; 11] = unsafe { core::mem::transmute(*key) };
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < 11 {
        h = (h ^ words[i]).wrapping_mul(0x0100_0193);
        i += 1;
    }
    // The high bits are the well-mixed ones.
    (h ^ (h >> 16)) & (slots - 1)
}

/// Identifies the fragments of one IP packet, to give later fragments the ports (and inner
/// flow) decoded from the first one.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// What the first fragment told about its packet.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FragInfo {
    pub flow: FlowKey,
    pub outer: OuterHeader,
}

/// Kernel-side flow filter (`--host`, `--port`, `--proto`): a packet is observed when every
/// set condition holds for its inner or outer header.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Bits: [`FlowFilter::HOST`], [`FlowFilter::PORT`], [`FlowFilter::PROTO`].
    pub flags: u32,
    /// 4 or 6 for the host.
    pub host_family: u8,
    pub proto: u8,
    pub port: u16,
    pub host: [u8; 16],
}

impl FlowFilter {
    pub const HOST: u32 = 1;
    pub const PORT: u32 = 2;
    pub const PROTO: u32 = 4;
    pub const NONE: Self = Self {
        flags: 0,
        host_family: 0,
        proto: 0,
        port: 0,
        host: [0; 16],
    };
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 44);
const _: () = assert!(core::mem::size_of::<OuterHeader>() == 44);
const _: () = assert!(core::mem::size_of::<FlowCounters>() == 48 + 48);
const _: () = assert!(core::mem::size_of::<CachedFlow>() == 4 + 44 + 96 + 8);
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);
const _: () = assert!(core::mem::size_of::<FragInfo>() == 88);
const _: () = assert!(core::mem::size_of::<FlowFilter>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers and byte arrays only, no implicit padding (sizes asserted
    // above; explicit _pad fields fill every gap), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowCounters {}
    unsafe impl aya::Pod for super::CachedFlow {}
    unsafe impl aya::Pod for super::FlowFilter {}
}
