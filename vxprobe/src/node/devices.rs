//! Which devices vxprobe watches, and what role each plays on the node.
//!
//! Facts come from rtnetlink in vxprobe's own network namespace (never from /sys, which shows
//! the namespace sysfs was mounted in, not the one the process runs in).

use std::{collections::BTreeSet, fmt, net::IpAddr};

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::link::{
    InfoData, InfoGeneve, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType,
    LinkMessage,
};
use serde::Serialize;

use crate::error::UsageError;

/// What a device is, from its netlink link kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Vxlan,
    Geneve,
    Tap,
    Tun,
    Veth,
    Bridge,
    Loopback,
    /// No link kind: a real NIC (or a driver that does not report one).
    Physical,
    Other(String),
}

/// The part a hop plays on the path, shown to users next to its name.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Overlay,
    Underlay,
    Tap,
    Pod,
    Physical,
    Other,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Overlay => "overlay",
            Role::Underlay => "underlay",
            Role::Tap => "tap",
            Role::Pod => "pod",
            Role::Physical => "physical",
            Role::Other => "other",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tunnel attributes of a VXLAN or Geneve device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TunnelInfo {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    /// The lower device named at creation (`dev` in `ip link add ... type vxlan`).
    pub lower_ifindex: Option<u32>,
    pub local: Option<IpAddr>,
    pub remote: Option<IpAddr>,
}

/// One network device of this namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Device {
    pub ifindex: u32,
    pub name: String,
    pub kind: DeviceKind,
    pub mtu: u32,
    pub up: bool,
    /// `IFLA_LINK`: the peer or parent for veth/vlan, when the kernel reports one.
    pub link: Option<u32>,
    pub tunnel: Option<TunnelInfo>,
}

impl Device {
    pub fn from_message(msg: &LinkMessage) -> Option<Self> {
        let mut name = None;
        let mut mtu = 0;
        let mut link = None;
        let mut kind = None;
        let mut tunnel = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Mtu(m) => mtu = *m,
                LinkAttribute::Link(l) => link = Some(*l),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => kind = Some(k.clone()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => tunnel = Some(vxlan_info(v)),
                            LinkInfo::Data(InfoData::Geneve(g)) => tunnel = Some(geneve_info(g)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let is_loopback = msg.header.flags.contains(LinkFlags::Loopback);
        let kind = match kind {
            Some(InfoKind::Vxlan) => DeviceKind::Vxlan,
            Some(InfoKind::Geneve) => DeviceKind::Geneve,
            // tun and tap share the "tun" kind; a tap carries Ethernet frames.
            Some(InfoKind::Tun) if msg.header.link_layer_type == LinkLayerType::Ether => {
                DeviceKind::Tap
            }
            Some(InfoKind::Tun) => DeviceKind::Tun,
            Some(InfoKind::Veth) => DeviceKind::Veth,
            Some(InfoKind::Bridge) => DeviceKind::Bridge,
            Some(other) => DeviceKind::Other(other.to_string()),
            None if is_loopback => DeviceKind::Loopback,
            None if msg.header.link_layer_type == LinkLayerType::Ether => DeviceKind::Physical,
            None => DeviceKind::Other(format!("{:?}", msg.header.link_layer_type).to_lowercase()),
        };
        Some(Device {
            ifindex: msg.header.index,
            name: name?,
            kind,
            mtu,
            up: msg.header.flags.contains(LinkFlags::Up),
            link,
            tunnel,
        })
    }

    pub fn is_tunnel(&self) -> bool {
        matches!(self.kind, DeviceKind::Vxlan | DeviceKind::Geneve)
    }
}

fn vxlan_info(attrs: &[InfoVxlan]) -> TunnelInfo {
    let mut info = TunnelInfo::default();
    for attr in attrs {
        match attr {
            InfoVxlan::Id(vni) => info.vni = Some(*vni),
            InfoVxlan::Port(port) => info.port = Some(*port),
            InfoVxlan::Link(ifindex) if *ifindex != 0 => info.lower_ifindex = Some(*ifindex),
            InfoVxlan::Local(a) => info.local = Some((*a).into()),
            InfoVxlan::Local6(a) => info.local = Some((*a).into()),
            InfoVxlan::Group(a) => info.remote = Some((*a).into()),
            InfoVxlan::Group6(a) => info.remote = Some((*a).into()),
            _ => {}
        }
    }
    info
}

fn geneve_info(attrs: &[InfoGeneve]) -> TunnelInfo {
    let mut info = TunnelInfo::default();
    for attr in attrs {
        match attr {
            InfoGeneve::Id(vni) => info.vni = Some(*vni),
            InfoGeneve::Port(port) => info.port = Some(*port),
            InfoGeneve::Remote(a) => info.remote = Some((*a).into()),
            InfoGeneve::Remote6(a) => info.remote = Some((*a).into()),
            _ => {}
        }
    }
    info
}

/// Lists every device of the current network namespace.
pub async fn list_devices() -> anyhow::Result<Vec<Device>> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(connection);
    let mut links = handle.link().get().execute();
    let mut devices = Vec::new();
    while let Some(msg) = links.try_next().await? {
        devices.extend(Device::from_message(&msg));
    }
    task.abort();
    devices.sort_by_key(|d| d.ifindex);
    Ok(devices)
}

/// A device chosen for observation, with the role it plays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub device: Device,
    pub role: Role,
}

/// Roles of every device, from the topology: the lower device of a tunnel is its underlay.
/// The role of a device of this kind, given which devices carry a tunnel's packets.
pub fn role_of(kind: &DeviceKind, ifindex: u32, underlays: &BTreeSet<u32>) -> Role {
    match kind {
        DeviceKind::Vxlan | DeviceKind::Geneve => Role::Overlay,
        _ if underlays.contains(&ifindex) => Role::Underlay,
        DeviceKind::Tap | DeviceKind::Tun => Role::Tap,
        DeviceKind::Veth => Role::Pod,
        DeviceKind::Physical => Role::Physical,
        _ => Role::Other,
    }
}

/// Picks the hops to observe. With patterns (`-i`, shell globs), every device whose name matches
/// one; each pattern must match at least one device. Without, every tunnel device, each one's
/// underlay, every tun/tap and every physical NIC.
///
/// `underlays`: the devices tunnels send through (their lower device, or the one routing to
/// their remote VTEP; see `doctor::rules::underlay`).
pub fn select(
    devices: &[Device],
    patterns: &[String],
    underlays: &BTreeSet<u32>,
) -> Result<Vec<Hop>, UsageError> {
    let matchers = matchers(patterns)?;
    for (pattern, matcher) in patterns.iter().zip(&matchers) {
        if !devices.iter().any(|d| matcher.matches(&d.name)) {
            return Err(UsageError::new(format!(
                "no such interface: {pattern} (in this network namespace)"
            )));
        }
    }
    Ok(selected(devices, &matchers, underlays))
}

/// The `-i` patterns as globs; an empty or malformed one is bad usage.
pub fn matchers(patterns: &[String]) -> Result<Vec<glob::Pattern>, UsageError> {
    patterns
        .iter()
        .map(|pattern| {
            if pattern.is_empty() {
                return Err(UsageError::new("empty interface name (-i '')"));
            }
            let is_glob = pattern.contains(['*', '?', '[']);
            if !is_glob && pattern.len() > IFNAMSIZ - 1 {
                return Err(UsageError::new(format!(
                    "interface name '{pattern}' is longer than {} bytes",
                    IFNAMSIZ - 1
                )));
            }
            glob::Pattern::new(pattern)
                .map_err(|e| UsageError::new(format!("invalid interface pattern '{pattern}': {e}")))
        })
        .collect()
}

/// Linux device names hold at most 15 bytes and a NUL.
const IFNAMSIZ: usize = 16;

/// The lower devices tunnels name: the underlays known without asking routes (a device that
/// appears while vxprobe runs is judged by this).
pub fn lower_devices(devices: &[Device]) -> BTreeSet<u32> {
    devices
        .iter()
        .filter_map(|d| d.tunnel.as_ref()?.lower_ifindex)
        .collect()
}

/// The devices a selection picks, with their roles; patterns matching nothing are fine here
/// (devices come and go while vxprobe runs).
pub fn selected(
    devices: &[Device],
    matchers: &[glob::Pattern],
    underlays: &BTreeSet<u32>,
) -> Vec<Hop> {
    devices
        .iter()
        .filter(|d| {
            if matchers.is_empty() {
                d.is_tunnel()
                    || underlays.contains(&d.ifindex)
                    || matches!(
                        d.kind,
                        DeviceKind::Tap | DeviceKind::Tun | DeviceKind::Physical
                    )
            } else {
                matchers.iter().any(|m| m.matches(&d.name))
            }
        })
        .map(|d| Hop {
            device: d.clone(),
            role: role_of(&d.kind, d.ifindex, underlays),
        })
        .collect()
}

/// An up device of MTU 1500 without a lower device or tunnel, for tests.
#[cfg(test)]
pub(crate) fn test_device(ifindex: u32, name: &str, kind: DeviceKind) -> Device {
    Device {
        ifindex,
        name: name.into(),
        kind,
        mtu: 1500,
        up: true,
        link: None,
        tunnel: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_device as dev;

    fn node() -> Vec<Device> {
        let mut vxlan = dev(4, "vxlan.calico", DeviceKind::Vxlan);
        vxlan.tunnel = Some(TunnelInfo {
            lower_ifindex: Some(2),
            ..Default::default()
        });
        vec![
            dev(1, "lo", DeviceKind::Loopback),
            dev(2, "eth0", DeviceKind::Veth),
            dev(3, "cali1234", DeviceKind::Veth),
            vxlan,
            dev(5, "tap0", DeviceKind::Tap),
            dev(6, "ens3", DeviceKind::Physical),
        ]
    }

    #[test]
    fn default_selection_is_tunnels_underlays_taps_and_nics() {
        let hops = select(&node(), &[], &BTreeSet::from([2])).unwrap();
        let got: Vec<(&str, Role)> = hops
            .iter()
            .map(|h| (h.device.name.as_str(), h.role))
            .collect();
        assert_eq!(
            got,
            [
                ("eth0", Role::Underlay),
                ("vxlan.calico", Role::Overlay),
                ("tap0", Role::Tap),
                ("ens3", Role::Physical)
            ]
        );
    }

    #[test]
    fn globs_select_veths_as_pods() {
        let hops = select(&node(), &["cali*".into()], &BTreeSet::from([2])).unwrap();
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].device.name, "cali1234");
        assert_eq!(hops[0].role, Role::Pod);
    }

    #[test]
    fn empty_and_overlong_names_are_bad_usage() {
        let err = select(&node(), &[String::new()], &BTreeSet::new()).unwrap_err();
        assert!(err.to_string().contains("empty interface name"), "{err}");
        let err = select(&node(), &["a-name-of-sixteen".into()], &BTreeSet::new()).unwrap_err();
        assert!(err.to_string().contains("a-name-of-sixteen"), "{err}");
        // Globs may be longer than a name.
        assert!(matchers(&["cali[0-9a-f][0-9a-f]*".into()]).is_ok());
    }

    #[test]
    fn an_unmatched_pattern_names_itself() {
        let err = select(
            &node(),
            &["eth0".into(), "nosuchdev".into()],
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nosuchdev"), "{err}");
    }
}
