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

#[inline(always)]
pub fn addr_words(b: &[u8; 16]) -> Addr {
    // SAFETY: as in `addr_bytes`; transmute copies, so alignment does not matter.
    unsafe { core::mem::transmute::<[u8; 16], Addr>(*b) }
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

/// Reads a `T` at `offset`: straight from the packet when the bytes are in its linear part
/// (headers almost always are), else through bpf_skb_load_bytes, which also reaches paged
/// data and fails cleanly past the end. A helper call per header was most of the parse's cost.
///
/// Two bytes at least: for one, LLVM turns `start + 1 <= end` into `start < end`, which the
/// verifier does not take as proof that a byte is there.
#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    const { assert!(size_of::<T>() >= 2) };
    let start = ctx.data();
    let end = ctx.data_end();
    if offset < MAX_DIRECT_OFFSET && start + offset + size_of::<T>() <= end {
        // SAFETY: [start + offset, start + offset + size_of::<T>()) lies within the packet's
        // linear data, checked just above (and again by the verifier); T is a byte array or
        // an integer, valid for any bytes, read without assuming alignment.
        return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) });
    }
    ctx.load::<T>(offset).ok()
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Skips Ethernet and VLAN tags; returns (ethertype, offset of the network header).
#[inline(always)]
fn ethernet(ctx: &TcContext, start: usize) -> Option<(u16, usize)> {
    let mut ethertype = u16::from_be(load::<u16>(ctx, start + 12)?);
    let mut off = start + ETH_HLEN;
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = u16::from_be(load::<u16>(ctx, off + 2)?);
            off += 4;
        }
    }
    Some((ethertype, off))
}

#[inline(always)]
fn ip(ctx: &TcContext, ethertype: u16, off: usize, ip: &mut Ip) -> Option<()> {
    match ethertype {
        ETH_P_IP => ipv4(ctx, off, ip)?,
        ETH_P_IPV6 => ipv6(ctx, off, ip)?,
        _ => return None,
    };
    ip.sport = 0;
    ip.dport = 0;
    if ip.has_transport() && (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP) {
        if let Some(ports) = load::<[u8; 4]>(ctx, ip.l4) {
            ip.sport = be16(&ports, 0);
            ip.dport = be16(&ports, 2);
        }
    }
    Some(())
}

#[inline(always)]
fn ipv4(ctx: &TcContext, off: usize, ip: &mut Ip) -> Option<()> {
    let h = load::<[u8; 20]>(ctx, off)?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let frag = be16(&h, 6);
    ip.family = 4;
    ip.proto = h[9];
    ip.src = [u32::from_ne_bytes([h[12], h[13], h[14], h[15]]), 0, 0, 0];
    ip.dst = [u32::from_ne_bytes([h[16], h[17], h[18], h[19]]), 0, 0, 0];
    ip.frag_offset = u32::from(frag & 0x1fff) * 8;
    ip.frag_more = frag & 0x2000 != 0;
    ip.frag_id = u32::from(be16(&h, 4));
    ip.l4 = off + usize::from(h[0] & 0x0f) * 4;
    Some(())
}

#[inline(always)]
fn ipv6(ctx: &TcContext, off: usize, ip: &mut Ip) -> Option<()> {
    let h = load::<[u8; 8]>(ctx, off)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    ip.family = 6;
    ip.proto = h[6];
    ip.src = addr_words(&load::<[u8; 16]>(ctx, off + 8)?);
    ip.dst = addr_words(&load::<[u8; 16]>(ctx, off + 24)?);
    ip.frag_offset = 0;
    ip.frag_more = false;
    ip.frag_id = 0;
    ip.l4 = off + 40;
    // Extension headers: hop-by-hop (0), routing (43), fragment (44), destination (60).
    for _ in 0..4 {
        match ip.proto {
            // A chain cut short still leaves a flow: addresses known, ports not.
            0 | 43 | 60 => {
                let Some(ext) = load::<[u8; 2]>(ctx, ip.l4) else {
                    break;
                };
                ip.proto = ext[0];
                ip.l4 += (usize::from(ext[1]) + 1) * 8;
            }
            44 => {
                let Some(frag) = load::<[u8; 8]>(ctx, ip.l4) else {
                    break;
                };
                ip.proto = frag[0];
                let off_flags = be16(&frag, 2);
                ip.frag_offset = u32::from(off_flags & 0xfff8);
                ip.frag_more = off_flags & 1 != 0;
                ip.frag_id = u32::from_be_bytes([frag[4], frag[5], frag[6], frag[7]]);
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
pub fn packet(ctx: &TcContext, l3_device: bool, p: &mut Packet) -> bool {
    // Family 0: no tunnel; the other fields mean nothing then (not zeroed: a memset each
    // packet).
    p.outer.family = 0;
    p.outer_ip.family = 0;
    let Some((ethertype, off)) = (if l3_device {
        match load::<[u8; 2]>(ctx, 0).map(|b| b[0]) {
            Some(b) if b >> 4 == 6 => Some((ETH_P_IPV6, 0)),
            Some(_) => Some((ETH_P_IP, 0)),
            None => None,
        }
    } else {
        ethernet(ctx, 0)
    }) else {
        return false;
    };
    if ip(ctx, ethertype, off, &mut p.flow).is_none() {
        return false;
    }
    if p.flow.proto != IPPROTO_UDP || !p.flow.has_transport() {
        return true;
    }
    let Some((vni, inner_eth)) = tunnel(ctx, &p.flow) else {
        return true;
    };
    let Some((inner_type, inner_off)) = ethernet(ctx, inner_eth) else {
        return true;
    };
    // Keep the outer header, then decode the inner one over `flow`; a garbage inner packet
    // leaves the outer flow in place.
    p.outer_ip = p.flow;
    if ip(ctx, inner_type, inner_off, &mut p.flow).is_none() {
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
fn tunnel(ctx: &TcContext, udp: &Ip) -> Option<(u32, usize)> {
    let payload = udp.l4 + 8;
    if udp.dport == VXLAN_PORT || udp.dport == VXLAN_LINUX_PORT {
        let h = load::<[u8; 8]>(ctx, payload)?;
        if h[0] & 0x08 == 0 {
            return None;
        }
        let vni = u32::from_be_bytes([0, h[4], h[5], h[6]]);
        return Some((vni, payload + 8));
    }
    if udp.dport == GENEVE_PORT {
        let h = load::<[u8; 8]>(ctx, payload)?;
        if be16(&h, 2) != ETH_P_TEB {
            return None;
        }
        let options = usize::from(h[0] & 0x3f) * 4;
        let vni = u32::from_be_bytes([0, h[4], h[5], h[6]]);
        return Some((vni, payload + 8 + options));
    }
    None
}
