//! The skb-hash shortcut to a flow's cache slot. Most packets carry a hash in their skb (TCP
//! and connected UDP sockets stamp theirs; the stack keeps one it computed: RPS, a VXLAN
//! source port), and the packets of a flow share it. A packet whose (hop, hash) has a hint
//! skips the parse: it checks the header bytes its flow key is made of against the key of the
//! slot's holder (the ethertype before the IP header, IP version and header length, protocol,
//! not a fragment, addresses, ports; a tunnel's outer header unfragmented UDP) and counts
//! there. On any difference it takes the full parse, which writes the hint again. A hint only
//! says where to look; the packet and the holder's key decide.

use aya_ebpf::{helpers::bpf_get_smp_processor_id, macros::map, maps::Array, programs::TcContext};
use vxprobe_common::{
    AF_INET6, CachedFlow, FLOW_CACHE_SLOTS as DEFAULT_SLOTS, FlowKey,
    wire::{
        ETH_P_IP, ETH_P_IPV6, GENEVE_PORT, IPPROTO_TCP, IPPROTO_UDP, VXLAN_LINUX_PORT, VXLAN_PORT,
    },
};

use crate::{flows, parse::Facts};

/// Where a flow seen with a hash at a hop counts, and where its packets' headers are. 32
/// bytes: two hints to a cache line.
#[repr(C)]
pub struct Hint {
    hash: u32,
    ifindex: u32,
    /// The flow's cache slot, and the low half of the slot's generation when the hint was
    /// written: a slot that changed hands since is not the hint's flow (and after 2^32
    /// handovers the packet is still checked against the key of whoever holds it).
    slot: u32,
    generation: u32,
    /// Where the flow's IP header starts, its transport header, and the tunnel's outer IP
    /// header.
    l3: u16,
    l4: u16,
    outer_l3: u16,
    /// [`EGRESS`], [`ETHERNET`], [`TUNNEL`], [`TUNNEL_V6`].
    flags: u8,
    /// IPv4: the header's first byte (version and header length: where the ports are).
    version_ihl: u8,
    _pad: [u8; 8],
}

const EGRESS: u8 = 1;
/// An ethertype precedes the IP header (not a tun device's bare IP packet).
const ETHERNET: u8 = 2;
const TUNNEL: u8 = 4;
const TUNNEL_V6: u8 = 8;

const _: () = assert!(core::mem::size_of::<Hint>() == 32);

/// The same shares and slots as the flow cache: sized by user space before load.
#[map]
static HINTS: Array<Hint> = Array::with_max_entries(DEFAULT_SLOTS, 0);

/// Offsets are masked to this, for the verifier, which wants a bound on a packet offset it
/// reads at. Flows whose transport header sits deeper get no hint (`remember`), so the mask
/// never changes an offset a hint holds.
const MAX_AT: u16 = 511;

#[inline(always)]
fn index(hash: u32, ifindex: u32, direction: u32) -> u32 {
    let slots = flows::slots();
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let mut h = hash ^ ifindex.wrapping_mul(0x9e37_79b1) ^ direction;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    cpu * slots + (h & (slots - 1))
}

/// The cache slot of the flow of this packet, when a hint names it and the packet's headers
/// are those of the slot holder's key: then the packet needs no parse.
#[inline(always)]
pub fn find(
    ctx: &TcContext,
    hash: u32,
    ifindex: u32,
    direction: u32,
) -> Option<&'static mut CachedFlow> {
    let hint = HINTS.get(index(hash, ifindex, direction))?;
    if hint.hash != hash || hint.ifindex != ifindex || u32::from(hint.flags & EGRESS) != direction {
        return None;
    }
    let held = flows::slot_held(hint.slot, hint.generation)?;
    let key = &held.key;
    let v6 = key.family == AF_INET6;
    // Read here for this check alone (volatile: not shared with the parse's reads). A packet
    // pointer carries the range its checks proved, so pointers shared with the parse would
    // enter it with a different range from each check that failed, and the verifier would
    // walk the whole parse once per check (it did: vxprobe's start took three times as long).
    // SAFETY: plain fields of the context.
    let (start, end) = unsafe {
        let skb = ctx.skb.skb;
        (
            core::ptr::read_volatile(&(*skb).data) as usize,
            core::ptr::read_volatile(&(*skb).data_end) as usize,
        )
    };
    if hint.flags & ETHERNET != 0 {
        let at = start + usize::from(hint.l3.wrapping_sub(2) & MAX_AT);
        let ethertype = if v6 { ETH_P_IPV6 } else { ETH_P_IP };
        // SAFETY: two bytes at `at`, in the packet (checked first).
        if at + 2 > end || unsafe { read16(at) } != ethertype.to_be() {
            return None;
        }
    }
    let ip = start + usize::from(hint.l3 & MAX_AT);
    let same_ip = if v6 {
        ip + 40 <= end
            // SAFETY: the 40 bytes of the IPv6 header at `ip` are in the packet's linear data.
            && unsafe { ipv6_is(ip, key.proto) }
            && same_words::<8>(ip + 8, key)
    } else {
        ip + 20 <= end
            // SAFETY: as above, IPv4's 20.
            && unsafe { ipv4_is(ip, hint.version_ihl, key.proto) }
            && same_words::<2>(ip + 12, key)
    };
    if !same_ip {
        return None;
    }
    if key.proto == IPPROTO_TCP || key.proto == IPPROTO_UDP {
        let at = start + usize::from(hint.l4 & MAX_AT);
        let ports = u32::from(key.sport.to_be()) | u32::from(key.dport.to_be()) << 16;
        // SAFETY: four bytes at `at`, in the packet (checked first).
        if at + 4 > end || unsafe { read32(at) } != ports {
            return None;
        }
    }
    if hint.flags & TUNNEL != 0 {
        let outer = start + usize::from(hint.outer_l3 & MAX_AT);
        let udp_unfragmented = if hint.flags & TUNNEL_V6 != 0 {
            // SAFETY: as for the flow's own header.
            outer + 40 <= end && unsafe { ipv6_is(outer, IPPROTO_UDP) }
        } else {
            // SAFETY: as above.
            outer + 20 <= end && unsafe { ipv4_unfragmented(outer, IPPROTO_UDP) }
        };
        if !udp_unfragmented {
            return None;
        }
    }
    Some(held)
}

/// # Safety
/// Two bytes at `at` are readable.
#[inline(always)]
unsafe fn read16(at: usize) -> u16 {
    // SAFETY: the caller's; headers sit at any alignment (misaligned loads allowed: build.rs).
    unsafe { core::ptr::read_unaligned(at as *const u16) }
}

/// # Safety
/// Four bytes at `at` are readable.
#[inline(always)]
unsafe fn read32(at: usize) -> u32 {
    // SAFETY: the caller's; headers sit at any alignment (misaligned loads allowed: build.rs).
    unsafe { core::ptr::read_unaligned(at as *const u32) }
}

/// An IPv6 header with `proto` right after it (no extension header, so no fragment header).
///
/// # Safety
/// 40 bytes at `ip` are readable.
#[inline(always)]
unsafe fn ipv6_is(ip: usize, proto: u8) -> bool {
    // SAFETY: the caller's.
    let (version, next) = unsafe { (*(ip as *const u8), *((ip + 6) as *const u8)) };
    version >> 4 == 6 && next == proto
}

/// An IPv4 header carrying `proto`, neither a fragment nor the first of several.
///
/// # Safety
/// 20 bytes at `ip` are readable.
#[inline(always)]
unsafe fn ipv4_unfragmented(ip: usize, proto: u8) -> bool {
    // SAFETY: the caller's. Bytes 6-9: flags and fragment offset (MF and the offset must be
    // clear; DF may be set), TTL, protocol.
    let word = unsafe { read32(ip + 6) };
    word & 0xff00_ff3f == u32::from(proto) << 24
}

/// ... with this first byte (version and header length: where the ports are).
///
/// # Safety
/// As [`ipv4_unfragmented`].
#[inline(always)]
unsafe fn ipv4_is(ip: usize, version_ihl: u8, proto: u8) -> bool {
    // SAFETY: the caller's.
    unsafe { *(ip as *const u8) == version_ihl && ipv4_unfragmented(ip, proto) }
}

/// The packet's `N` address words at `at` against the key's source and destination (IPv4:
/// the first word of each; IPv6: four each).
#[inline(always)]
fn same_words<const N: usize>(at: usize, key: &FlowKey) -> bool {
    let half = N / 2;
    let (src, dst) = (
        key.src.as_ptr().cast::<u32>(),
        key.dst.as_ptr().cast::<u32>(),
    );
    let mut same = true;
    let mut i = 0;
    while i < half {
        // SAFETY: the caller checked that `N` words at `at` are in the packet; the key's
        // addresses are four aligned words each (as in parse's `copy_addr`).
        unsafe {
            same &= read32(at + 4 * i) == src.add(i).read();
            same &= read32(at + 4 * (i + half)) == dst.add(i).read();
        }
        i += 1;
    }
    same
}

/// After a parse: the hint that lets the flow's next packets with this hash skip theirs.
/// Only for packets that are not fragments (the caller's test). None where the checks above
/// could pass for a packet the parse would read differently:
/// - IPv6 with extension headers (the check reads the protocol right after the fixed header),
///   or whose chain was cut short (its "protocol" is an extension header);
/// - UDP to a tunnel port that the parse could not decapsulate (an inner frame that is not
///   IP): a tunnelled IP flow with the same outer header would pass the outer flow's checks.
///
/// Out of line: a flow's first packets, and those the shortcut refused, come here.
#[inline(never)]
pub fn remember(hash: u32, key: &FlowKey, facts: &Facts, slot: u32, generation: u64) {
    let v6 = key.family == AF_INET6;
    let unparsed_tunnel = key.proto == IPPROTO_UDP
        && facts.outer.family == 0
        && (key.dport == VXLAN_PORT || key.dport == VXLAN_LINUX_PORT || key.dport == GENEVE_PORT);
    let v6_extensions = v6 && (facts.l4 != facts.l3 + 40 || matches!(key.proto, 0 | 43 | 44 | 60));
    if hash == 0 || facts.l4 > u32::from(MAX_AT) || v6_extensions || unparsed_tunnel {
        return;
    }
    let direction = u32::from(key.direction);
    let Some(out) = HINTS.get_ptr_mut(index(hash, key.ifindex, direction)) else {
        return;
    };
    // SAFETY: this CPU's share of the hints: written only by programs on this CPU, which do
    // not preempt each other; read only by them.
    let out = unsafe { &mut *out };
    let mut flags = direction as u8 & EGRESS;
    if facts.l3 >= 2 {
        flags |= ETHERNET;
    }
    if facts.outer.family != 0 {
        flags |= TUNNEL;
        if facts.outer.family == AF_INET6 {
            flags |= TUNNEL_V6;
        }
    }
    out.hash = hash;
    out.ifindex = key.ifindex;
    out.slot = slot;
    out.generation = generation as u32;
    out.l3 = facts.l3 as u16;
    out.l4 = facts.l4 as u16;
    out.outer_l3 = facts.outer_l3 as u16;
    out.flags = flags;
    // Read for IPv4 only.
    out.version_ihl = 0x40 | ((facts.l4 - facts.l3) / 4) as u8;
}
