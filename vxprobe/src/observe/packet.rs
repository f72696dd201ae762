//! Packet headers to flows, in user space: IPv4/IPv6 with extension headers, TCP/UDP ports,
//! and VXLAN/Geneve decapsulation so a tunnel packet is reported by its INNER flow with the
//! outer header alongside. Input is untrusted kernel-copied bytes: every read is bounds-checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

pub use vxprobe_common::wire::{GENEVE_PORT, VXLAN_PORTS};
use vxprobe_common::wire::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Flow {
    pub fn proto_name(&self) -> String {
        match self.proto {
            IPPROTO_TCP => "tcp".into(),
            IPPROTO_UDP => "udp".into(),
            IPPROTO_ICMP => "icmp".into(),
            IPPROTO_ICMPV6 => "icmpv6".into(),
            other => other.to_string(),
        }
    }
}

impl Serialize for Flow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Flow", 5)?;
        st.serialize_field("proto", &self.proto_name())?;
        st.serialize_field("src", &self.src)?;
        st.serialize_field("dst", &self.dst)?;
        st.serialize_field("sport", &self.sport)?;
        st.serialize_field("dport", &self.dport)?;
        st.end()
    }
}

/// The tunnel header of an encapsulated packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outer {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub vni: u32,
}

/// An IP fragment: `offset` in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub offset: u32,
    pub more: bool,
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub flow: Flow,
    pub outer: Option<Outer>,
    pub fragment: Option<Fragment>,
}

/// Parses a packet that starts at its IP header.
pub fn parse_ip(bytes: &[u8]) -> Option<Parsed> {
    let l3 = parse_l3(bytes)?;
    if let (IPPROTO_UDP, Some(payload)) = (l3.flow.proto, l3.payload)
        && l3
            .fragment
            .as_ref()
            .is_none_or(|f| f.offset == 0 && !f.more)
        && let Some((vni, inner)) = tunnel_payload(l3.flow.dport, payload)
        && let Some(inner) = parse_ethernet(inner).and_then(parse_l3)
    {
        return Some(Parsed {
            flow: inner.flow,
            fragment: inner.fragment,
            outer: Some(Outer {
                src: l3.flow.src,
                dst: l3.flow.dst,
                sport: l3.flow.sport,
                dport: l3.flow.dport,
                vni,
            }),
        });
    }
    Some(Parsed {
        flow: l3.flow,
        outer: None,
        fragment: l3.fragment,
    })
}

struct L3<'a> {
    flow: Flow,
    fragment: Option<Fragment>,
    /// The bytes after the UDP header, when this is the first (or only) piece of a UDP packet.
    payload: Option<&'a [u8]>,
    /// Where the transport header starts (after the IP header and its extensions).
    l4_at: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn parse_l3(b: &[u8]) -> Option<L3<'_>> {
    match b.first()? >> 4 {
        4 => parse_ipv4(b),
        6 => parse_ipv6(b),
        _ => None,
    }
}

fn parse_ipv4(b: &[u8]) -> Option<L3<'_>> {
    let ihl = usize::from(b.first()? & 0x0f) * 4;
    if ihl < 20 || b.len() < 20 {
        return None;
    }
    let frag = be16(b, 6)?;
    let offset = u32::from(frag & 0x1fff) * 8;
    let more = frag & 0x2000 != 0;
    let fragment = (offset != 0 || more).then(|| Fragment {
        offset,
        more,
        id: u32::from(be16(b, 4).unwrap_or(0)),
    });
    let src = IpAddr::V4(Ipv4Addr::from(be32(b, 12)?));
    let dst = IpAddr::V4(Ipv4Addr::from(be32(b, 16)?));
    Some(transport(b[9], src, dst, (ihl, b.get(ihl..)), fragment))
}

fn parse_ipv6(b: &[u8]) -> Option<L3<'_>> {
    let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(8..24)?).ok()?));
    let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(24..40)?).ok()?));
    let mut next = *b.get(6)?;
    let mut at = 40;
    let mut fragment = None;
    // Walk the extension headers (bounded: a hostile chain cannot loop us).
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                next = *b.get(at)?;
                at += (usize::from(*b.get(at + 1)?) + 1) * 8;
            }
            44 => {
                let off = be16(b, at + 2)?;
                fragment = Some(Fragment {
                    offset: u32::from(off & 0xfff8),
                    more: off & 1 != 0,
                    id: be32(b, at + 4)?,
                })
                .filter(|f| f.offset != 0 || f.more);
                next = *b.get(at)?;
                at += 8;
            }
            _ => break,
        }
    }
    Some(transport(next, src, dst, (at, b.get(at..)), fragment))
}

fn transport<'a>(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    (l4_at, l4): (usize, Option<&'a [u8]>),
    fragment: Option<Fragment>,
) -> L3<'a> {
    let first_piece = fragment.as_ref().is_none_or(|f| f.offset == 0);
    let ports = match (proto, l4) {
        (IPPROTO_TCP | IPPROTO_UDP, Some(l4)) if first_piece => {
            be16(l4, 0).zip(be16(l4, 2)).unwrap_or((0, 0))
        }
        _ => (0, 0),
    };
    let payload = match (proto, l4) {
        (IPPROTO_UDP, Some(l4)) if first_piece => l4.get(8..),
        _ => None,
    };
    L3 {
        flow: Flow {
            proto,
            src,
            dst,
            sport: ports.0,
            dport: ports.1,
        },
        fragment,
        payload,
        l4_at,
    }
}

/// Where the headers of a packet that starts at its IP header end: after the innermost
/// transport header (TCP with its options, UDP, ICMP's first 8 bytes), or after the IP header
/// for a later fragment or another protocol; for VXLAN/Geneve, after the inner packet's. The
/// offset may lie beyond a captured packet's end. `None`: not an IP packet.
pub fn headers_end(b: &[u8]) -> Option<usize> {
    headers_end_at(b, 0)
}

fn headers_end_at(b: &[u8], depth: u8) -> Option<usize> {
    let l3 = parse_l3(b)?;
    if l3.fragment.as_ref().is_some_and(|f| f.offset != 0) {
        return Some(l3.l4_at);
    }
    let at = l3.l4_at;
    let end = match l3.flow.proto {
        IPPROTO_TCP => {
            let words = b.get(at + 12).map_or(5, |d| usize::from(d >> 4).max(5));
            at + words * 4
        }
        IPPROTO_UDP => {
            // A tunnel packet (whole, not fragmented): the inner packet's headers.
            let inner = l3
                .payload
                .filter(|_| depth == 0 && l3.fragment.is_none())
                .and_then(|payload| tunnel_payload(l3.flow.dport, payload))
                .and_then(|(_, frame)| parse_ethernet(frame));
            if let Some(ip) = inner
                && let Some(end) = headers_end_at(ip, depth + 1)
            {
                // `ip` lies within `b`: its offset is the distance between the two.
                return Some(ip.as_ptr() as usize - b.as_ptr() as usize + end);
            }
            at + 8
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => at + 8,
        _ => at,
    };
    Some(end)
}

/// The encapsulated Ethernet frame and VNI of a VXLAN or Geneve payload.
fn tunnel_payload(dport: u16, udp_payload: &[u8]) -> Option<(u32, &[u8])> {
    if VXLAN_PORTS.contains(&dport) {
        // flags(1) with the I bit, reserved(3), VNI(3), reserved(1)
        if udp_payload.first()? & 0x08 == 0 {
            return None;
        }
        let vni = be32(udp_payload, 4)? >> 8;
        return Some((vni, udp_payload.get(8..)?));
    }
    if dport == GENEVE_PORT {
        let options = usize::from(udp_payload.first()? & 0x3f) * 4;
        if be16(udp_payload, 2)? != vxprobe_common::wire::ETH_P_TEB {
            return None; // not Transparent Ethernet Bridging
        }
        let vni = be32(udp_payload, 4)? >> 8;
        return Some((vni, udp_payload.get(8 + options..)?));
    }
    None
}

/// Skips an Ethernet header and up to two VLAN tags; returns the IP packet.
pub fn parse_ethernet(frame: &[u8]) -> Option<&[u8]> {
    let mut ethertype = be16(frame, 12)?;
    let mut at = 14;
    for _ in 0..2 {
        if ethertype == vxprobe_common::wire::ETH_P_8021Q
            || ethertype == vxprobe_common::wire::ETH_P_8021AD
        {
            ethertype = be16(frame, at + 2)?;
            at += 4;
        }
    }
    matches!(
        ethertype,
        vxprobe_common::wire::ETH_P_IP | vxprobe_common::wire::ETH_P_IPV6
    )
    .then(|| frame.get(at..))
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, IPPROTO_UDP, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0, 0, 0, 0]);
        p.extend(payload);
        p
    }

    #[test]
    fn plain_udp() {
        let p = parse_ip(&ipv4_udp([198, 19, 1, 2], [198, 19, 2, 2], 1000, 53, &[])).unwrap();
        assert_eq!(p.flow.proto_name(), "udp");
        assert_eq!((p.flow.sport, p.flow.dport), (1000, 53));
        assert_eq!(p.outer, None);
    }

    #[test]
    fn vxlan_is_reported_by_its_inner_flow() {
        let inner = ipv4_udp([198, 19, 1, 2], [198, 19, 2, 2], 1111, 2222, b"x");
        let mut frame = vec![0u8; 12];
        frame.extend([0x08, 0x00]);
        frame.extend(inner);
        let mut vxlan = vec![0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0];
        vxlan.extend(frame);
        let outer = ipv4_udp([198, 18, 0, 1], [198, 18, 0, 2], 40000, 4789, &vxlan);
        let p = parse_ip(&outer).unwrap();
        assert_eq!(p.flow.src, IpAddr::from([198, 19, 1, 2]));
        assert_eq!((p.flow.sport, p.flow.dport), (1111, 2222));
        let o = p.outer.unwrap();
        assert_eq!((o.vni, o.dport), (4096, 4789));
    }

    #[test]
    fn vxlan_with_a_garbage_inner_packet_stays_the_outer_flow() {
        let outer = ipv4_udp(
            [198, 18, 0, 1],
            [198, 18, 0, 2],
            40000,
            4789,
            &[0x08, 0, 0, 0, 0, 0, 1, 0, 0xff],
        );
        let p = parse_ip(&outer).unwrap();
        assert_eq!(p.flow.dport, 4789);
        assert_eq!(p.outer, None);
    }

    #[test]
    fn truncated_headers_do_not_panic() {
        let full = ipv4_udp([198, 19, 1, 2], [198, 19, 2, 2], 1, 2, &[0x08; 40]);
        for len in 0..full.len() {
            let _ = parse_ip(&full[..len]);
        }
    }

    #[test]
    fn non_first_fragments_have_no_ports() {
        let mut p = ipv4_udp([198, 19, 1, 2], [198, 19, 2, 2], 1, 2, &[]);
        p[6] = 0x00;
        p[7] = 0xb9; // offset 185 * 8 = 1480
        let parsed = parse_ip(&p).unwrap();
        let f = parsed.fragment.unwrap();
        assert_eq!((f.offset, f.more), (1480, false));
        assert_eq!(parsed.flow.sport, 0);
    }

    #[test]
    fn headers_end_after_the_innermost_transport_header() {
        let udp = ipv4_udp([198, 19, 1, 2], [198, 19, 2, 2], 1000, 53, &[7; 100]);
        assert_eq!(headers_end(&udp), Some(28));
        // TCP with 12 bytes of options: data offset 8 words.
        let mut tcp = udp.clone();
        tcp[9] = IPPROTO_TCP;
        tcp[20 + 12] = 8 << 4;
        assert_eq!(headers_end(&tcp), Some(52));
        // A later fragment: only the IP header is header.
        let mut later = udp.clone();
        later[7] = 0xb9;
        assert_eq!(headers_end(&later), Some(20));
        // VXLAN: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14, inner IP 20, UDP 8.
        let mut frame = vec![0u8; 12];
        frame.extend([0x08, 0x00]);
        frame.extend(ipv4_udp([198, 19, 1, 2], [198, 19, 2, 2], 1, 2, &[9; 500]));
        let mut vxlan = vec![0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0];
        vxlan.extend(frame);
        let outer = ipv4_udp([198, 18, 0, 1], [198, 18, 0, 2], 40000, 4789, &vxlan);
        assert_eq!(headers_end(&outer), Some(78));
        assert_eq!(headers_end(&[0x00; 40]), None);
        for len in 0..outer.len() {
            let _ = headers_end(&outer[..len]);
        }
    }
}
