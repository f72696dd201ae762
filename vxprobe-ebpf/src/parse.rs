//! Packet headers at a TC hook: Ethernet (up to two VLAN tags), IPv4/IPv6 (extension headers,
//! fragments), TCP/UDP ports, and VXLAN/Geneve decapsulation to the inner flow. Reads come
//! straight from the packet's linear data when the bytes are there, through
//! bpf_skb_load_bytes (non-linear skbs, clean failure past the end) when they are not.

use aya_ebpf::programs::TcContext;
use vxprobe_common::OuterHeader;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_TEB: u16 = 0x6558;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

const VXLAN_PORT: u16 = 4789;
const VXLAN_LINUX_PORT: u16 = 8472;
const GENEVE_PORT: u16 = 6081;

/// An IPv4 (first word) or IPv6 address as it sits in the packet, in 32-bit words: an IPv4
/// address is one word and three zero words, stored as such, where sixteen bytes would have
/// been cleared by a memset call (a byte loop on the BPF target) in every header parse.
pub type Addr = [u32; 4];

/// The address's bytes, as the kernel/user structs hold it.
#[inline(always)]
pub fn addr_bytes(a: &Addr) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size and no invalid bit patterns.
    unsafe { core::mem::transmute::<Addr, [u8; 16]>(*a) }
}

/// Four word loads: a transmute of the array becomes a memmove call (a byte loop on BPF)
/// when the bytes are in a map value.
#[inline(always)]
pub fn addr_words(b: &[u8; 16]) -> Addr {
    // SAFETY: the sixteen bytes are `b`'s.
    unsafe { load_addr(b.as_ptr()) }
}

/// # Safety
/// `at..at + 16` must be readable (at any alignment).
#[inline(always)]
unsafe fn load_addr(at: *const u8) -> Addr {
    // SAFETY: the caller's: the four words are inside the sixteen bytes.
    let word = |i: usize| unsafe { core::ptr::read_unaligned(at.add(i).cast::<u32>()) };
    [word(0), word(4), word(8), word(12)]
}

/// One IP header's worth of facts.
#[derive(Copy, Clone)]
pub struct Ip {
    pub family: u8,
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    /// Fragment offset in bytes; `more` when MF is set. Both 0 for unfragmented packets.
    pub frag_offset: u32,
    pub frag_more: bool,
    pub frag_id: u32,
    /// Where the transport header starts.
    pub l4: usize,
}

impl Ip {
    pub fn is_fragment(&self) -> bool {
        self.frag_offset != 0 || self.frag_more
    }

    /// The first fragment, or an unfragmented packet: the transport header is here.
    pub fn has_transport(&self) -> bool {
        self.frag_offset == 0
    }
}

/// A packet: the flow it belongs to (inner for tunnels) and its tunnel header, if any.
/// Lives in a per-CPU scratch slot: the 512-byte BPF stack cannot hold it with the rest.
pub struct Packet {
    pub flow: Ip,
    /// The tunnel header; only `family` is set (to 0) when there is none.
    pub outer: OuterHeader,
    /// The outer IP header of a tunnel packet (to key outer fragments); family 0 if none.
    pub outer_ip: Ip,
}

/// Header reads go no further into a packet than this: far past any real header chain, and a
/// bound the verifier must see before a variable offset may move a packet pointer.
const MAX_DIRECT_OFFSET: usize = 1024;

/// Room for the largest header read at once (IPv6's fixed 40 bytes) when it has to be copied
/// out of the packet.
pub const SPILL_LEN: usize = 40;

/// Where a header is copied when it is not in the packet's linear data: per-CPU scratch memory
/// (the BPF stack is too small to spare it).
pub type Spill = [u8; SPILL_LEN];

/// `N` bytes of header, wherever they are: fields are read out of it one load each, at
/// offsets checked against `N` when the program is compiled. The verifier checks a packet
/// read; it cannot check one in the spill, whose map value is longer than most headers.
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

    #[inline(always)]
    fn addr16<const AT: usize>(self) -> Addr {
        const { assert!(AT + 16 <= N) };
        // SAFETY: as in `u8`.
        unsafe { load_addr(self.at.add(AT)) }
    }
}

/// The `N` header bytes at `offset`: in place when they are in the packet's linear data
/// (headers almost always are), else copied into `spill` by bpf_skb_load_bytes, which also
/// reaches paged data and fails cleanly past the end. Fields are then read in place: copying
/// headers out byte by byte (what a `[u8; N]` read becomes on BPF) was most of the parse.
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
    let at = if offset < MAX_DIRECT_OFFSET && start + offset + N <= end {
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
/// code's way in the instruction cache.
#[cold]
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

#[inline(always)]
fn ip(ctx: &TcContext, ethertype: u16, off: usize, ip: &mut Ip, spill: &mut Spill) -> Option<()> {
    match ethertype {
        ETH_P_IP => ipv4(ctx, off, ip, spill)?,
        ETH_P_IPV6 => ipv6(ctx, off, ip, spill)?,
        _ => return None,
    };
    ip.sport = 0;
    ip.dport = 0;
    if ip.has_transport() && (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP) {
        if let Some(ports) = header::<4>(ctx, ip.l4, spill) {
            ip.sport = ports.be16::<0>();
            ip.dport = ports.be16::<2>();
        }
    }
    Some(())
}

#[inline(always)]
fn ipv4(ctx: &TcContext, off: usize, ip: &mut Ip, spill: &mut Spill) -> Option<()> {
    let h = header::<20>(ctx, off, spill)?;
    let version_ihl = h.u8::<0>();
    if version_ihl >> 4 != 4 {
        return None;
    }
    let frag = h.be16::<6>();
    ip.family = 4;
    ip.proto = h.u8::<9>();
    ip.src = [h.raw32::<12>(), 0, 0, 0];
    ip.dst = [h.raw32::<16>(), 0, 0, 0];
    ip.frag_offset = u32::from(frag & 0x1fff) * 8;
    ip.frag_more = frag & 0x2000 != 0;
    ip.frag_id = u32::from(h.be16::<4>());
    ip.l4 = off + usize::from(version_ihl & 0x0f) * 4;
    Some(())
}

#[inline(always)]
fn ipv6(ctx: &TcContext, off: usize, ip: &mut Ip, spill: &mut Spill) -> Option<()> {
    let h = header::<40>(ctx, off, spill)?;
    if h.u8::<0>() >> 4 != 6 {
        return None;
    }
    ip.family = 6;
    ip.proto = h.u8::<6>();
    ip.src = h.addr16::<8>();
    ip.dst = h.addr16::<24>();
    ip.frag_offset = 0;
    ip.frag_more = false;
    ip.frag_id = 0;
    ip.l4 = off + 40;
    // Extension headers: hop-by-hop (0), routing (43), fragment (44), destination (60).
    for _ in 0..4 {
        match ip.proto {
            // A chain cut short still leaves a flow: addresses known, ports not.
            0 | 43 | 60 => {
                let Some(ext) = header::<2>(ctx, ip.l4, spill) else {
                    break;
                };
                ip.proto = ext.u8::<0>();
                ip.l4 += (usize::from(ext.u8::<1>()) + 1) * 8;
            }
            44 => {
                let Some(frag) = header::<8>(ctx, ip.l4, spill) else {
                    break;
                };
                ip.proto = frag.u8::<0>();
                let off_flags = frag.be16::<2>();
                ip.frag_offset = u32::from(off_flags & 0xfff8);
                ip.frag_more = off_flags & 1 != 0;
                ip.frag_id = frag.be32::<4>();
                ip.l4 += 8;
            }
            _ => break,
        }
    }
    Some(())
}

/// Decodes a packet into `p`; `l3_device` when frames start at the IP header (tun).
/// Returns false for packets that are not IP.
#[inline(always)]
pub fn packet(ctx: &TcContext, l3_device: bool, p: &mut Packet, spill: &mut Spill) -> bool {
    // Family 0: no tunnel; the other fields mean nothing then (not zeroed: a memset each
    // packet).
    p.outer.family = 0;
    p.outer_ip.family = 0;
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
    if ip(ctx, ethertype, off, &mut p.flow, spill).is_none() {
        return false;
    }
    if p.flow.proto != IPPROTO_UDP || !p.flow.has_transport() {
        return true;
    }
    let Some((vni, inner_eth)) = tunnel(ctx, &p.flow, spill) else {
        return true;
    };
    let Some((inner_type, inner_off)) = ethernet(ctx, inner_eth, spill) else {
        return true;
    };
    // Keep the outer header, then decode the inner one over `flow`; a garbage inner packet
    // leaves the outer flow in place.
    p.outer_ip = p.flow;
    if ip(ctx, inner_type, inner_off, &mut p.flow, spill).is_none() {
        p.flow = p.outer_ip;
        p.outer_ip.family = 0;
        return true;
    }
    // Field by field, the padding byte by byte: LLVM makes a memset call (a byte loop on the
    // BPF target) of a struct literal's zeros, even of three bytes.
    let o = &p.outer_ip;
    p.outer.family = o.family;
    p.outer._pad[0] = 0;
    p.outer._pad[1] = 0;
    p.outer._pad[2] = 0;
    p.outer.vni = vni;
    p.outer.sport = o.sport;
    p.outer.dport = o.dport;
    p.outer.src = addr_bytes(&o.src);
    p.outer.dst = addr_bytes(&o.dst);
    true
}

/// VXLAN or Geneve carrying Ethernet: (VNI, offset of the inner Ethernet header).
#[inline(always)]
fn tunnel(ctx: &TcContext, udp: &Ip, spill: &mut Spill) -> Option<(u32, usize)> {
    let payload = udp.l4 + 8;
    if udp.dport == VXLAN_PORT || udp.dport == VXLAN_LINUX_PORT {
        let h = header::<8>(ctx, payload, spill)?;
        if h.u8::<0>() & 0x08 == 0 {
            return None;
        }
        let vni = h.be32::<4>() >> 8;
        return Some((vni, payload + 8));
    }
    if udp.dport == GENEVE_PORT {
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
