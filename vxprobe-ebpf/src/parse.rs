//! Packet headers at a TC hook: Ethernet (up to two VLAN tags), IPv4/IPv6 (extension headers,
//! fragments), TCP/UDP ports, and VXLAN/Geneve decapsulation to the inner flow. Reads come
//! straight from the packet's linear data when the bytes are there, through
//! bpf_skb_load_bytes (non-linear skbs, clean failure past the end) when they are not.
//!
//! The parse writes the flow key itself, field by field, and only as deep as the key needs:
//! no intermediate header struct copied into the key afterwards (those copies, and the
//! registers they took, were a third of the per-packet work).

use aya_ebpf::programs::TcContext;
use vxprobe_common::{
    AF_INET, AF_INET6, FlowKey, OuterHeader,
    wire::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_P_TEB, GENEVE_PORT,
        IPPROTO_TCP, IPPROTO_UDP, VXLAN_LINUX_PORT, VXLAN_PORT,
    },
};

/// Where an IP header says its packet is in a fragmented datagram.
#[derive(Copy, Clone, Default)]
pub struct Frag {
    /// Fragment offset in bytes; 0 for a first fragment and an unfragmented packet.
    pub offset: u32,
    /// MF: more fragments follow (1) or not (0).
    pub more: u32,
    pub id: u32,
}

impl Frag {
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.offset != 0 || self.more != 0
    }

    /// Field by field: an assignment between two of the scratch slot's became a memmove call
    /// (a byte loop on BPF) on every tunnelled packet.
    #[inline(always)]
    pub fn set(&mut self, from: &Frag) {
        self.offset = from.offset;
        self.more = from.more;
        self.id = from.id;
    }

    /// The first fragment, or an unfragmented packet: the transport header is here.
    #[inline(always)]
    pub fn has_transport(&self) -> bool {
        self.offset == 0
    }
}

/// What the parse found besides the flow key.
pub struct Facts {
    /// The tunnel header; only `family` is meaningful (0) when there is none.
    pub outer: OuterHeader,
    /// The flow's own IP header's fragment facts.
    pub frag: Frag,
    /// The tunnel's outer IP header's, when there is a tunnel.
    pub outer_frag: Frag,
    /// Where the flow's own IP header starts, and its transport header.
    pub l3: u32,
    pub l4: u32,
    /// Where the tunnel's outer IP header starts, when there is a tunnel.
    pub outer_l3: u32,
}

/// Sixteen bytes as four aligned words: every address in these structs is 4-aligned, and a
/// copy of `[u8; 16]` would be sixteen byte loads and stores.
#[inline(always)]
pub fn copy_addr(dst: &mut [u8; 16], src: &[u8; 16]) {
    let (d, s) = (dst.as_mut_ptr().cast::<u32>(), src.as_ptr().cast::<u32>());
    // SAFETY: both arrays sit at 4-aligned offsets of #[repr(C)] structs of 4-byte
    // alignment (FlowKey, OuterHeader, FragKey, the events), so four aligned words.
    unsafe {
        d.write(s.read());
        d.add(1).write(s.add(1).read());
        d.add(2).write(s.add(2).read());
        d.add(3).write(s.add(3).read());
    }
}

/// The key's second word (direction, protocol, family, padding) in one aligned store. Byte by
/// byte, LLVM merges the protocol's and the family's stores into one 16-bit store at an odd
/// offset, and the verifier refuses misaligned stack access.
#[inline(always)]
pub fn set_proto_family(key: &mut FlowKey, proto: u8, family: u8) {
    const { assert!(cfg!(target_endian = "little")) };
    let word = u32::from(key.direction) | u32::from(proto) << 8 | u32::from(family) << 16;
    // SAFETY: FlowKey is #[repr(C)] and 4-aligned; its bytes 4..8 are direction, proto,
    // family and the padding, in that order (little endian: the low byte first).
    unsafe { (key as *mut FlowKey).cast::<u32>().add(1).write(word) }
}

/// A tunnel header's first word (family and padding) in one aligned store, as above.
#[inline(always)]
pub fn set_outer_family(outer: &mut OuterHeader, family: u8) {
    // SAFETY: OuterHeader is #[repr(C)] and 4-aligned; its first four bytes are the family and
    // the padding (little endian, as above).
    unsafe {
        (outer as *mut OuterHeader)
            .cast::<u32>()
            .write(u32::from(family))
    }
}

/// An IPv4 address in the first word, zeros after it.
#[inline(always)]
fn set_addr4(dst: &mut [u8; 16], word: u32) {
    let d = dst.as_mut_ptr().cast::<u32>();
    // SAFETY: as in `copy_addr`.
    unsafe {
        d.write(word);
        d.add(1).write(0);
        d.add(2).write(0);
        d.add(3).write(0);
    }
}

/// Room for the largest header read at once (IPv6's fixed 40 bytes) when it has to be copied
/// out of the packet.
pub const SPILL_LEN: usize = 40;

/// Where a header is copied when it is not in the packet's linear data (on the stack).
pub type Spill = [u8; SPILL_LEN];

/// `N` bytes of header, wherever they are: fields are read out of it one load each, at
/// offsets checked against `N` when the program is compiled.
#[derive(Clone, Copy)]
struct Header<'a, const N: usize> {
    at: *const u8,
    _bytes: core::marker::PhantomData<&'a [u8; N]>,
}

impl<const N: usize> Header<'_, N> {
    #[inline(always)]
    fn u8<const AT: usize>(self) -> u8 {
        const { assert!(AT < N) };
        // SAFETY: `at..at + N` is readable (`header`) and AT < N.
        unsafe { *self.at.add(AT) }
    }

    /// Sixteen bits in network order, as a host integer.
    #[inline(always)]
    fn be16<const AT: usize>(self) -> u16 {
        const { assert!(AT + 2 <= N) };
        // SAFETY: as in `u8`; headers sit at any alignment (one load where the build allows
        // misaligned access: vxprobe-ebpf's build.rs).
        u16::from_be(unsafe { core::ptr::read_unaligned(self.at.add(AT).cast::<u16>()) })
    }

    /// Thirty-two bits as they are in the packet (addresses are kept so).
    #[inline(always)]
    fn raw32<const AT: usize>(self) -> u32 {
        const { assert!(AT + 4 <= N) };
        // SAFETY: as in `be16`.
        unsafe { core::ptr::read_unaligned(self.at.add(AT).cast::<u32>()) }
    }

    #[inline(always)]
    fn be32<const AT: usize>(self) -> u32 {
        u32::from_be(self.raw32::<AT>())
    }

    /// Sixteen address bytes at AT, as four words into `dst`.
    #[inline(always)]
    fn addr16<const AT: usize>(self, dst: &mut [u8; 16]) {
        const { assert!(AT + 16 <= N) };
        let d = dst.as_mut_ptr().cast::<u32>();
        // SAFETY: the words are inside the header (as in `u8`); `dst` as in `copy_addr`.
        unsafe {
            let word = |i: usize| core::ptr::read_unaligned(self.at.add(AT + i).cast::<u32>());
            d.write(word(0));
            d.add(1).write(word(4));
            d.add(2).write(word(8));
            d.add(3).write(word(12));
        }
    }
}

/// The `N` header bytes at `offset`: in place when they are in the packet's linear data
/// (headers almost always are), else copied into `spill` by bpf_skb_load_bytes, which also
/// reaches paged data and fails cleanly past the end.
///
/// Two bytes at least: for one, LLVM turns `start + 1 <= end` into `start < end`, which the
/// verifier does not take as proof that a byte is there.
#[inline(always)]
fn header<'a, const N: usize>(
    ctx: &'a TcContext,
    offset: usize,
    spill: &'a mut Spill,
) -> Option<Header<'a, N>> {
    const { assert!(N >= 2 && N <= SPILL_LEN) };
    let start = ctx.data();
    let end = ctx.data_end();
    // No separate `offset < LIMIT` test: every offset is a sum of bounded header lengths,
    // which bounds it for the verifier already, and such a test let Linux 6.1's verifier walk
    // a dead branch whose offset had contradictory bounds (umin > umax): the pointer moved by
    // it became a scalar, and the program was refused.
    let at = if start + offset + N <= end {
        (start + offset) as *const u8
    } else if spill_in(ctx, offset, spill, N as u32) {
        spill.as_ptr()
    } else {
        return None;
    };
    Some(Header {
        at,
        _bytes: core::marker::PhantomData,
    })
}

/// Copies `len` (<= SPILL_LEN) bytes at `offset` into `spill`; false past the packet's end.
/// Out of line: rare (paged headers, truncated packets), so it stays out of the per-packet
/// code's way in the instruction cache. Not `#[cold]`: that puts it in `.text.unlikely`, and
/// aya 0.14 links functions by their offset in their section alone, so two text sections'
/// functions at the same offset are taken for one (calls into `.text` then land here).
#[inline(never)]
fn spill_in(ctx: &TcContext, offset: usize, spill: &mut Spill, len: u32) -> bool {
    // SAFETY: the helper writes at most `len` <= SPILL_LEN bytes into `spill` (the caller's
    // N, a constant the verifier sees at each call).
    let ret = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            spill.as_mut_ptr().cast(),
            len,
        )
    };
    ret == 0
}

/// Skips Ethernet and VLAN tags; returns (ethertype, offset of the network header).
#[inline(always)]
fn ethernet(ctx: &TcContext, start: usize, spill: &mut Spill) -> Option<(u16, usize)> {
    let mut ethertype = header::<2>(ctx, start + 12, spill)?.be16::<0>();
    let mut off = start + ETH_HLEN;
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = header::<2>(ctx, off + 2, spill)?.be16::<0>();
            off += 4;
        }
    }
    Some((ethertype, off))
}

/// The IP header at `off` and its ports into `key` (family, proto, addresses, ports), its
/// fragment facts into `frag`; returns where the transport header starts.
#[inline(always)]
fn ip(
    ctx: &TcContext,
    ethertype: u16,
    off: usize,
    key: &mut FlowKey,
    frag: &mut Frag,
    spill: &mut Spill,
) -> Option<usize> {
    let l4 = match ethertype {
        ETH_P_IP => ipv4(ctx, off, key, frag, spill)?,
        ETH_P_IPV6 => ipv6(ctx, off, key, frag, spill)?,
        _ => return None,
    };
    key.sport = 0;
    key.dport = 0;
    if frag.has_transport() && (key.proto == IPPROTO_TCP || key.proto == IPPROTO_UDP) {
        if let Some(ports) = header::<4>(ctx, l4, spill) {
            key.sport = ports.be16::<0>();
            key.dport = ports.be16::<2>();
        }
    }
    Some(l4)
}

#[inline(always)]
fn ipv4(
    ctx: &TcContext,
    off: usize,
    key: &mut FlowKey,
    frag: &mut Frag,
    spill: &mut Spill,
) -> Option<usize> {
    let h = header::<20>(ctx, off, spill)?;
    let version_ihl = h.u8::<0>();
    if version_ihl >> 4 != 4 {
        return None;
    }
    let flags = h.be16::<6>();
    set_proto_family(key, h.u8::<9>(), AF_INET);
    set_addr4(&mut key.src, h.raw32::<12>());
    set_addr4(&mut key.dst, h.raw32::<16>());
    frag.offset = u32::from(flags & 0x1fff) * 8;
    frag.more = u32::from(flags >> 13) & 1;
    frag.id = u32::from(h.be16::<4>());
    Some(off + usize::from(version_ihl & 0x0f) * 4)
}

#[inline(always)]
fn ipv6(
    ctx: &TcContext,
    off: usize,
    key: &mut FlowKey,
    frag: &mut Frag,
    spill: &mut Spill,
) -> Option<usize> {
    let h = header::<40>(ctx, off, spill)?;
    if h.u8::<0>() >> 4 != 6 {
        return None;
    }
    let mut proto = h.u8::<6>();
    h.addr16::<8>(&mut key.src);
    h.addr16::<24>(&mut key.dst);
    frag.offset = 0;
    frag.more = 0;
    frag.id = 0;
    let mut l4 = off + 40;
    // Extension headers: hop-by-hop (0), routing (43), fragment (44), destination (60).
    for _ in 0..4 {
        match proto {
            // A chain cut short still leaves a flow: addresses known, ports not.
            0 | 43 | 60 => {
                let Some(ext) = header::<2>(ctx, l4, spill) else {
                    break;
                };
                proto = ext.u8::<0>();
                l4 += (usize::from(ext.u8::<1>()) + 1) * 8;
            }
            44 => {
                let Some(h) = header::<8>(ctx, l4, spill) else {
                    break;
                };
                proto = h.u8::<0>();
                let off_flags = h.be16::<2>();
                frag.offset = u32::from(off_flags & 0xfff8);
                frag.more = u32::from(off_flags & 1);
                frag.id = h.be32::<4>();
                l4 += 8;
            }
            _ => break,
        }
    }
    set_proto_family(key, proto, AF_INET6);
    Some(l4)
}

/// Decodes a packet's flow into `key` (all but its hop: ifindex and direction) and the rest
/// into `facts`; `l3_device` when frames start at the IP header (tun). Returns false for
/// packets that are not IP (then `key` means nothing).
#[inline(always)]
pub fn packet(
    ctx: &TcContext,
    l3_device: bool,
    key: &mut FlowKey,
    facts: &mut Facts,
    spill: &mut Spill,
) -> bool {
    set_outer_family(&mut facts.outer, 0);
    let Some((ethertype, off)) = (if l3_device {
        match header::<2>(ctx, 0, spill).map(|h| h.u8::<0>()) {
            Some(b) if b >> 4 == 6 => Some((ETH_P_IPV6, 0)),
            Some(_) => Some((ETH_P_IP, 0)),
            None => None,
        }
    } else {
        ethernet(ctx, 0, spill)
    }) else {
        return false;
    };
    let Some(l4) = ip(ctx, ethertype, off, key, &mut facts.frag, spill) else {
        return false;
    };
    facts.l3 = off as u32;
    facts.l4 = l4 as u32;
    if key.proto != IPPROTO_UDP || !facts.frag.has_transport() {
        return true;
    }
    let Some((vni, inner_eth)) = tunnel(ctx, key.dport, l4, spill) else {
        return true;
    };
    let Some((inner_type, inner_off)) = ethernet(ctx, inner_eth, spill) else {
        return true;
    };
    // Keep the outer header, then decode the inner one over the key; a garbage inner packet
    // leaves the outer flow in place.
    let outer = &mut facts.outer;
    set_outer_family(outer, key.family);
    outer.vni = vni;
    outer.sport = key.sport;
    outer.dport = key.dport;
    copy_addr(&mut outer.src, &key.src);
    copy_addr(&mut outer.dst, &key.dst);
    facts.outer_frag.set(&facts.frag);
    facts.outer_l3 = facts.l3;
    if let Some(inner_l4) = ip(ctx, inner_type, inner_off, key, &mut facts.frag, spill) {
        facts.l3 = inner_off as u32;
        facts.l4 = inner_l4 as u32;
    } else {
        let outer = &facts.outer;
        set_proto_family(key, IPPROTO_UDP, outer.family);
        key.sport = outer.sport;
        key.dport = outer.dport;
        copy_addr(&mut key.src, &outer.src);
        copy_addr(&mut key.dst, &outer.dst);
        facts.frag.set(&facts.outer_frag);
        set_outer_family(&mut facts.outer, 0);
    }
    true
}

/// VXLAN or Geneve carrying Ethernet, by the UDP destination port `dport` of the datagram
/// whose header is at `l4`: (VNI, offset of the inner Ethernet header).
#[inline(always)]
fn tunnel(ctx: &TcContext, dport: u16, l4: usize, spill: &mut Spill) -> Option<(u32, usize)> {
    let payload = l4 + 8;
    if dport == VXLAN_PORT || dport == VXLAN_LINUX_PORT {
        let h = header::<8>(ctx, payload, spill)?;
        if h.u8::<0>() & 0x08 == 0 {
            return None;
        }
        let vni = h.be32::<4>() >> 8;
        return Some((vni, payload + 8));
    }
    if dport == GENEVE_PORT {
        let h = header::<8>(ctx, payload, spill)?;
        if h.be16::<2>() != ETH_P_TEB {
            return None;
        }
        let options = usize::from(h.u8::<0>() & 0x3f) * 4;
        let vni = h.be32::<4>() >> 8;
        return Some((vni, payload + 8 + options));
    }
    None
}
