//! Packet headers at a TC hook: Ethernet (up to two VLAN tags), IPv4/IPv6 (extension headers,
//! fragments), TCP/UDP ports, and VXLAN/Geneve decapsulation to the inner flow. Every read is
//! a bpf_skb_load_bytes, which works on non-linear skbs and fails cleanly past the end.

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

/// One IP header's worth of facts.
#[derive(Copy, Clone)]
pub struct Ip {
    pub family: u8,
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
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
    pub outer: OuterHeader,
    /// The outer IP header of a tunnel packet (to key outer fragments); family 0 if none.
    pub outer_ip: Ip,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Skips Ethernet and VLAN tags; returns (ethertype, offset of the network header).
#[inline(always)]
fn ethernet(ctx: &TcContext, start: usize) -> Option<(u16, usize)> {
    let mut ethertype = u16::from_be(ctx.load::<u16>(start + 12).ok()?);
    let mut off = start + ETH_HLEN;
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = u16::from_be(ctx.load::<u16>(off + 2).ok()?);
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
        if let Ok(ports) = ctx.load::<[u8; 4]>(ip.l4) {
            ip.sport = be16(&ports, 0);
            ip.dport = be16(&ports, 2);
        }
    }
    Some(())
}

#[inline(always)]
fn ipv4(ctx: &TcContext, off: usize, ip: &mut Ip) -> Option<()> {
    let h = ctx.load::<[u8; 12]>(off).ok()?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let frag = be16(&h, 6);
    ip.family = 4;
    ip.proto = h[9];
    ip.src = [0; 16];
    ip.dst = [0; 16];
    ip.src[..4].copy_from_slice(&ctx.load::<[u8; 4]>(off + 12).ok()?);
    ip.dst[..4].copy_from_slice(&ctx.load::<[u8; 4]>(off + 16).ok()?);
    ip.frag_offset = u32::from(frag & 0x1fff) * 8;
    ip.frag_more = frag & 0x2000 != 0;
    ip.frag_id = u32::from(be16(&h, 4));
    ip.l4 = off + usize::from(h[0] & 0x0f) * 4;
    Some(())
}

#[inline(always)]
fn ipv6(ctx: &TcContext, off: usize, ip: &mut Ip) -> Option<()> {
    let h = ctx.load::<[u8; 8]>(off).ok()?;
    if h[0] >> 4 != 6 {
        return None;
    }
    ip.family = 6;
    ip.proto = h[6];
    ip.src = ctx.load::<[u8; 16]>(off + 8).ok()?;
    ip.dst = ctx.load::<[u8; 16]>(off + 24).ok()?;
    ip.frag_offset = 0;
    ip.frag_more = false;
    ip.frag_id = 0;
    ip.l4 = off + 40;
    // Extension headers: hop-by-hop (0), routing (43), fragment (44), destination (60).
    for _ in 0..4 {
        match ip.proto {
            // A chain cut short still leaves a flow: addresses known, ports not.
            0 | 43 | 60 => {
                let Ok(ext) = ctx.load::<[u8; 2]>(ip.l4) else {
                    break;
                };
                ip.proto = ext[0];
                ip.l4 += (usize::from(ext[1]) + 1) * 8;
            }
            44 => {
                let Ok(frag) = ctx.load::<[u8; 8]>(ip.l4) else {
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
    p.outer = OuterHeader::default();
    p.outer_ip.family = 0;
    let Some((ethertype, off)) = (if l3_device {
        match ctx.load::<u8>(0) {
            Ok(b) if b >> 4 == 6 => Some((ETH_P_IPV6, 0)),
            Ok(_) => Some((ETH_P_IP, 0)),
            Err(_) => None,
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
    let o = &p.outer_ip;
    p.outer = OuterHeader {
        family: o.family,
        _pad: [0; 3],
        vni,
        sport: o.sport,
        dport: o.dport,
        src: o.src,
        dst: o.dst,
    };
    true
}

/// VXLAN or Geneve carrying Ethernet: (VNI, offset of the inner Ethernet header).
#[inline(always)]
fn tunnel(ctx: &TcContext, udp: &Ip) -> Option<(u32, usize)> {
    let payload = udp.l4 + 8;
    if udp.dport == VXLAN_PORT || udp.dport == VXLAN_LINUX_PORT {
        let h = ctx.load::<[u8; 8]>(payload).ok()?;
        if h[0] & 0x08 == 0 {
            return None;
        }
        let vni = u32::from_be_bytes([0, h[4], h[5], h[6]]);
        return Some((vni, payload + 8));
    }
    if udp.dport == GENEVE_PORT {
        let h = ctx.load::<[u8; 8]>(payload).ok()?;
        if be16(&h, 2) != ETH_P_TEB {
            return None;
        }
        let options = usize::from(h[0] & 0x3f) * 4;
        let vni = u32::from_be_bytes([0, h[4], h[5], h[6]]);
        return Some((vni, payload + 8 + options));
    }
    None
}
