//! Decoded kernel events to the contract's anomaly records: the kind (each fault reported once,
//! as its most specific kind), the reason and location by name, the hop, the flow.

use serde::Serialize;
use vxprobe_common::{Direction, DropEvent, PacketInfo};

use crate::{
    kallsyms::Kallsyms,
    kbtf::DropReasons,
    packet::{self, Flow, Outer},
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    Drop,
    CsumError,
    Oversize,
}

impl AnomalyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Drop => "drop",
            AnomalyKind::CsumError => "csum_error",
            AnomalyKind::Oversize => "oversize",
        }
    }
}

/// Kernel functions that free an skb for being too big to send without fragmenting (or to
/// fragment at all); their drops carry NOT_SPECIFIED, so the location tells.
const SIZE_DROP_LOCATIONS: &[&str] = &["ip_fragment", "ip_do_fragment", "ip6_fragment"];

/// Socket-layer functions where `skb->dev` holds `dev_scratch`, not a device.
fn at_socket_layer(location: &str) -> bool {
    location.contains("recvmsg") || location.starts_with("__skb_recv")
}

/// One anomaly, ready for every sink.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// Written as the line's `kind` by the sink.
    #[serde(skip)]
    pub kind: AnomalyKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    pub netns: u64,
    pub reason: String,
    pub location: String,
    pub len: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<Flow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer: Option<Outer>,
    /// Where the packet was on its device (not a contract field of kernel-wide events: used to
    /// charge the drop to a hop).
    #[serde(skip)]
    pub hop_direction: Option<Direction>,
}

/// What turns raw events into anomalies: names from this kernel.
pub struct Enricher {
    pub reasons: DropReasons,
    pub kallsyms: Kallsyms,
}

impl Enricher {
    pub fn drop_event(&self, event: &DropEvent) -> Anomaly {
        let reason = self.reasons.name(event.reason);
        let location = self.kallsyms.name(event.location);
        let kind = if reason.ends_with("_CSUM") {
            AnomalyKind::CsumError
        } else if reason == "PKT_TOO_BIG" || SIZE_DROP_LOCATIONS.contains(&location.as_str()) {
            AnomalyKind::Oversize
        } else {
            AnomalyKind::Drop
        };
        let info = &event.packet;
        let device = if at_socket_layer(&location) || info.ifindex == 0 {
            None
        } else {
            Some((ifname(info), info.ifindex))
        };
        let netns = match device {
            Some(_) => event.header.netns,
            None => info.task_netns,
        };
        let parsed = packet_bytes(info).and_then(packet::parse_ip);
        Anomaly {
            kind,
            hop_direction: device.as_ref().map(|_| {
                if info.iif == info.ifindex {
                    Direction::Ingress
                } else {
                    Direction::Egress
                }
            }),
            ifname: device.as_ref().map(|(name, _)| name.clone()),
            ifindex: device.map(|(_, index)| index),
            netns: u64::from(netns),
            reason,
            location,
            len: info.skb_len,
            flow: parsed.as_ref().map(|p| p.flow.clone()),
            outer: parsed.and_then(|p| p.outer),
        }
    }
}

fn ifname(info: &PacketInfo) -> String {
    let end = info.ifname.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&info.ifname[..end]).into_owned()
}

/// The captured bytes, when they start with an IP header.
pub fn packet_bytes(info: &PacketInfo) -> Option<&[u8]> {
    let len = usize::try_from(info.cap_len).ok()?.min(info.packet.len());
    let bytes = &info.packet[..len];
    matches!(bytes.first().map(|b| b >> 4), Some(4 | 6)).then_some(bytes)
}
