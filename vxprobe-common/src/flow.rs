//! Per-flow counters at a hop, and the packet facts the TC programs decode.

use crate::Counters;

/// A flow at a hop. For VXLAN/Geneve traffic the addresses and ports are the INNER ones.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub ifindex: u32,
    /// A `Direction` as u8.
    pub direction: u8,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6...).
    pub proto: u8,
    /// [`AF_INET`](crate::AF_INET) or [`AF_INET6`](crate::AF_INET6).
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
    /// 0: not encapsulated; otherwise [`AF_INET`](crate::AF_INET) or
    /// [`AF_INET6`](crate::AF_INET6).
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
    /// What the flow counted, as a hop counts.
    pub counters: Counters,
    /// The flow's tunnel header (family 0: none seen). A flow's packets at one hop share one:
    /// the kernel stores the first it sees in each cache tenure (`CachedFlow`), and a merge
    /// keeps the newest tenure's.
    pub outer: OuterHeader,
    pub _pad: u32,
    /// In the flow map: the generation of this CPU's cache slot that was last added in
    /// ([`CachedFlow`]); 0 before any. Unused in the cache itself. Last, and written first:
    /// a reader copying the value front to back never sees counters newer than it.
    pub generation: u64,
}

impl FlowCounters {
    #[inline(always)]
    pub fn merge(&mut self, other: &FlowCounters) {
        self.counters.merge(&other.counters);
        if other.outer.family != 0 {
            // SAFETY: a shared and an exclusive reference never overlap. Spelled out: the
            // assignment, between two map values, became a memmove call in the kernel
            // programs (a byte loop on BPF), on every flow cache handover.
            unsafe { core::ptr::copy_nonoverlapping(&other.outer, &mut self.outer, 1) };
        }
    }
}

/// One slot of the TC programs' per-CPU flow cache: the flow that holds it and its counters
/// since it took the slot. Packets of a flow in its slot are counted here (an array lookup and
/// a key compare); a packet of another flow moves the holder's counters into the flow map
/// (its `generation` with them), then takes the slot with a new generation.
///
/// The generation is written twice around a takeover, `generation_end` first and
/// `generation` last, so a reader that copies the slot front to back and finds both equal has
/// a copy from one holder. 64 bits: a flow map entry's stamp can be far behind its slot's.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow {
    pub generation: u64,
    /// All zero while the slot was never taken (no packet has ifindex 0).
    pub key: FlowKey,
    pub _pad: u32,
    pub counters: FlowCounters,
    pub generation_end: u64,
}

/// The slot a flow takes in a CPU's share of the flow cache (`slots` a power of two). Runs on
/// every packet, so it is short and mostly parallel: three lanes of xor-folded key words, each
/// multiplied, then one more multiply so every key bit reaches the low bits the mask keeps
/// (IPv4 addresses vary in their high bytes).
#[inline(always)]
pub fn flow_cache_slot(key: &FlowKey, slots: u32) -> u32 {
    // SAFETY: FlowKey is #[repr(C)], 44 bytes of integers without padding: eleven u32.
    let w: [u32; 11] = unsafe { core::mem::transmute(*key) };
    let a = (w[0] ^ w[3] ^ w[6] ^ w[9]).wrapping_mul(0x9e37_79b1);
    let b = (w[1] ^ w[4] ^ w[7] ^ w[10]).wrapping_mul(0x85eb_ca77);
    let c = (w[2] ^ w[5] ^ w[8]).wrapping_mul(0xc2b2_ae3d);
    let mut h = a ^ b.rotate_right(7) ^ c.rotate_right(19);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h & (slots - 1)
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
    /// [`AF_INET`](crate::AF_INET) or [`AF_INET6`](crate::AF_INET6) for the host.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ifindex: u32, src: [u8; 4], dst: [u8; 4], sport: u16) -> FlowKey {
        let mut k = FlowKey {
            ifindex,
            direction: 1,
            proto: 17,
            family: crate::AF_INET,
            sport,
            dport: 4789,
            ..Default::default()
        };
        k.src[..4].copy_from_slice(&src);
        k.dst[..4].copy_from_slice(&dst);
        k
    }

    /// Keys that differ in one field only (an address's high byte, a port, the hop) spread
    /// over the slots about as well as random ones: 1024 keys in 1024 slots fill ~63%.
    #[test]
    fn flows_spread_over_the_cache_slots() {
        let families: [&dyn Fn(u32) -> FlowKey; 4] = [
            &|i| {
                key(
                    3,
                    [198, 18, (i >> 8) as u8, i as u8],
                    [198, 19, 0, 1],
                    40000,
                )
            },
            &|i| key(3, [198, 18, 0, 1], [198, 19, 0, 1], 30000 + i as u16),
            &|i| key(i + 1, [198, 18, 0, 1], [198, 19, 0, 1], 40000),
            &|i| key(3, [10, 0, 0, 1], [10, (i >> 8) as u8, i as u8, 7], 53),
        ];
        for (n, make) in families.iter().enumerate() {
            let mut used = [false; 1024];
            for i in 0..1024 {
                used[flow_cache_slot(&make(i), 1024) as usize] = true;
            }
            let filled = used.iter().filter(|u| **u).count();
            assert!(filled > 580, "family {n}: {filled} of 1024 slots used");
        }
    }

    #[test]
    fn one_slot_takes_every_flow() {
        assert_eq!(
            flow_cache_slot(&key(9, [1, 2, 3, 4], [5, 6, 7, 8], 1), 1),
            0
        );
    }
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 44);
const _: () = assert!(core::mem::size_of::<OuterHeader>() == 44);
const _: () = assert!(core::mem::size_of::<FlowCounters>() == 48 + 48 + 8);
const _: () = assert!(core::mem::size_of::<CachedFlow>() == 8 + 48 + 104 + 8);
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
