//! `--host`, `--port`, `--proto`: one description of the flows to observe, applied in the
//! kernel by the TC programs (a load-time global) and to kernel-wide events in user space.

use std::net::IpAddr;

use vxprobe_common::FlowFilter;

use crate::observe::anomaly::Anomaly;

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    /// IP protocol numbers this name covers (ICMP includes ICMPv6).
    fn numbers(self) -> &'static [u8] {
        match self {
            Proto::Tcp => &[6],
            Proto::Udp => &[17],
            Proto::Icmp => &[1, 58],
        }
    }
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowSelector {
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
    pub proto: Option<Proto>,
}

impl FlowSelector {
    pub fn is_empty(&self) -> bool {
        self.host.is_none() && self.port.is_none() && self.proto.is_none()
    }

    /// The kernel's form. ICMP selects protocol 1 there; ICMPv6 traffic is matched by
    /// `--proto icmp` in user space only.
    pub fn to_kernel(&self) -> FlowFilter {
        let mut filter = FlowFilter::NONE;
        if let Some(host) = self.host {
            filter.flags |= FlowFilter::HOST;
            match host {
                IpAddr::V4(v4) => {
                    filter.host_family = vxprobe_common::AF_INET;
                    filter.host[..4].copy_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    filter.host_family = vxprobe_common::AF_INET6;
                    filter.host = v6.octets();
                }
            }
        }
        if let Some(port) = self.port {
            filter.flags |= FlowFilter::PORT;
            filter.port = port;
        }
        if let Some(proto) = self.proto {
            filter.flags |= FlowFilter::PROTO;
            filter.proto = proto.numbers()[0];
        }
        filter
    }

    /// Whether an event from a kernel-wide hook concerns the selected flows. Events without
    /// a flow (a send refused before any packet existed) pass a port or proto filter only if
    /// nothing contradicts it.
    pub fn matches(&self, anomaly: &Anomaly) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(flow) = &anomaly.flow else {
            return self.host.is_none();
        };
        let outer = anomaly.outer.as_ref();
        if let Some(host) = self.host {
            let hit = flow.src == host
                || flow.dst == host
                || outer.is_some_and(|o| o.src == host || o.dst == host);
            if !hit {
                return false;
            }
        }
        if let Some(port) = self.port {
            let hit = flow.sport == port
                || flow.dport == port
                || outer.is_some_and(|o| o.sport == port || o.dport == port);
            if !hit {
                return false;
            }
        }
        if let Some(proto) = self.proto
            && !proto.numbers().contains(&flow.proto)
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::packet::Flow;

    fn anomaly(flow: Flow) -> Anomaly {
        let mut a = crate::observe::anomaly::tests_support::empty();
        a.flow = Some(flow);
        a
    }

    fn udp(src: [u8; 4], dst: [u8; 4], dport: u16) -> Flow {
        Flow {
            proto: 17,
            src: src.into(),
            dst: dst.into(),
            sport: 1000,
            dport,
        }
    }

    #[test]
    fn host_port_and_proto_must_all_hold() {
        let sel = FlowSelector {
            host: Some([198, 19, 2, 2].into()),
            port: Some(53),
            proto: Some(Proto::Udp),
        };
        assert!(sel.matches(&anomaly(udp([198, 19, 1, 2], [198, 19, 2, 2], 53))));
        assert!(!sel.matches(&anomaly(udp([198, 19, 1, 2], [198, 19, 2, 3], 53))));
        assert!(!sel.matches(&anomaly(udp([198, 19, 1, 2], [198, 19, 2, 2], 54))));
    }

    #[test]
    fn the_kernel_form_carries_every_condition() {
        let sel = FlowSelector {
            host: Some("fd00::1".parse().unwrap()),
            port: Some(4789),
            proto: Some(Proto::Tcp),
        };
        let k = sel.to_kernel();
        assert_eq!(
            k.flags,
            FlowFilter::HOST | FlowFilter::PORT | FlowFilter::PROTO
        );
        assert_eq!(
            (k.host_family, k.port, k.proto),
            (vxprobe_common::AF_INET6, 4789, 6)
        );
        assert_eq!(FlowSelector::default().to_kernel(), FlowFilter::NONE);
    }
}
