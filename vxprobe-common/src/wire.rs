//! Numbers from the wire and the kernel's ABI, for the kernel programs' parser and user
//! space's alike.

/// Address families as the kernel numbers them: every address family in these structs is
/// one of these (0: none).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const AF_PACKET: u8 = 17;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Transparent Ethernet bridging: what Geneve carries.
pub const ETH_P_TEB: u16 = 0x6558;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// VXLAN's UDP ports: IANA's, and the one Linux used first (Flannel, Calico's default).
pub const VXLAN_PORT: u16 = 4789;
pub const VXLAN_LINUX_PORT: u16 = 8472;
pub const VXLAN_PORTS: [u16; 2] = [VXLAN_PORT, VXLAN_LINUX_PORT];
pub const GENEVE_PORT: u16 = 6081;
