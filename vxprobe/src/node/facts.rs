//! The facts `doctor` judges: every device of vxprobe's network namespace (kind, MTU, lower
//! device, tunnel attributes, master, carrier, GSO/GRO sizes, addresses) over rtnetlink, where
//! each tunnel's packets leave (a route lookup towards its remote VTEPs), offload features over
//! ethtool netlink, and the kernel release. Nothing here parses `ip` or `ethtool` output.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::{InfoData, InfoGeneve, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute},
        route::RouteAttribute,
    },
};
use serde::Serialize;

use super::devices::{Device, DeviceKind, Role};
use super::features::{self, Features};

/// How many remote VTEPs of one tunnel are kept as evidence (a large cluster has thousands of
/// fdb entries; the route to the first one decides the underlay).
const MAX_REMOTES: usize = 8;

/// Everything the rules look at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Facts {
    pub kernel: KernelRelease,
    pub devices: Vec<DeviceFacts>,
    /// How offload features were read: `netlink` (ethtool netlink) or `ioctl` (SIOCETHTOOL).
    pub features_from: Option<&'static str>,
    /// Why offload features are unknown, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features_error: Option<String>,
}

impl Facts {
    pub fn device(&self, ifindex: u32) -> Option<&DeviceFacts> {
        self.devices.iter().find(|d| d.ifindex == ifindex)
    }

    pub fn by_name(&self, name: &str) -> Option<&DeviceFacts> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// A kernel release (`uname -r`) and the version numbers at its start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelRelease {
    pub release: String,
    #[serde(skip)]
    pub version: Option<(u32, u32, u32)>,
}

impl KernelRelease {
    /// Parses `4.19.0-17-amd64`, `6.8.0`, `5.4`: major, minor, patch (0 when missing).
    pub fn parse(release: &str) -> KernelRelease {
        let release = release.trim();
        let numbers: Vec<Option<u32>> = release
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|n| n.parse().ok())
            .collect();
        let version = match numbers.as_slice() {
            [Some(major), Some(minor), patch] => Some((*major, *minor, patch.unwrap_or(0))),
            [Some(major), Some(minor)] => Some((*major, *minor, 0)),
            _ => None,
        };
        KernelRelease {
            release: release.to_owned(),
            version,
        }
    }

    /// The running kernel's release.
    pub fn running() -> std::io::Result<KernelRelease> {
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|r| KernelRelease::parse(&r))
    }

    /// Whether this kernel is older than `major.minor`; `None` when the release is unreadable.
    pub fn is_before(&self, major: u32, minor: u32) -> Option<bool> {
        self.version.map(|(a, b, _)| (a, b) < (major, minor))
    }
}

/// One device and what the kernel says about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceFacts {
    pub ifindex: u32,
    pub name: String,
    pub kind: DeviceKind,
    pub mtu: u32,
    pub up: bool,
    /// Link carrier: for a tap or tun, whether a program holds it open.
    pub carrier: Option<bool>,
    /// The bridge or OVS datapath this device is a port of (`IFLA_MASTER`).
    pub master: Option<u32>,
    /// Largest packet the stack hands this device before segmentation (`IFLA_GSO_MAX_SIZE`).
    pub gso_max_size: Option<u32>,
    /// Largest packet GRO builds on this device (`IFLA_GRO_MAX_SIZE`, Linux >= 5.19).
    pub gro_max_size: Option<u32>,
    pub addresses: Vec<IpAddr>,
    pub tunnel: Option<TunnelFacts>,
    /// `None` when ethtool could not be asked (see [`Facts::features_error`]).
    pub features: Option<Features>,
}

/// VXLAN or Geneve attributes, and where the tunnel's packets leave.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TunnelFacts {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    /// The lower device named at creation (`dev` in `ip link add ... type vxlan`).
    pub lower_ifindex: Option<u32>,
    pub local: Option<IpAddr>,
    /// The group or remote given at creation.
    pub remote: Option<IpAddr>,
    /// Remote VTEPs of the forwarding database (`bridge fdb ... dst`), as Calico programs them.
    pub fdb_remotes: Vec<IpAddr>,
    /// The device the route to the first remote VTEP leaves by.
    pub route_ifindex: Option<u32>,
    /// The outer header's DF bit: `unset`, `set` or `inherit` (VXLAN, Geneve).
    pub df: Option<String>,
    /// Whether the outer UDP header carries a checksum.
    pub udp_csum: Option<bool>,
    /// `external` (collect_metadata): a program (OVS, Cilium's eBPF) sets the remote per packet,
    /// and the device's own MTU does not bound what the pods send.
    pub external: bool,
}

impl TunnelFacts {
    /// The remote VTEP the underlay is looked up for.
    pub fn first_remote(&self) -> Option<IpAddr> {
        self.remote.or_else(|| self.fdb_remotes.first().copied())
    }

    /// Whether the outer header is IPv6 (70 bytes of VXLAN overhead instead of 50).
    pub fn is_ipv6(&self) -> bool {
        self.local
            .or_else(|| self.first_remote())
            .is_some_and(|a| a.is_ipv6())
    }
}

/// Why facts could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("cannot open an rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("listing {what} over rtnetlink failed: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot read the kernel release from /proc/sys/kernel/osrelease: {0}")]
    Kernel(#[source] std::io::Error),
}

/// Gathers the facts of the current network namespace.
pub async fn gather() -> Result<Facts, FactsError> {
    let kernel = KernelRelease::running().map_err(FactsError::Kernel)?;
    let (connection, handle, _) = rtnetlink::new_connection().map_err(FactsError::Socket)?;
    let task = tokio::spawn(connection);
    let result = gather_rtnetlink(&handle).await;
    task.abort();
    let mut devices = result?;
    let (features, features_from, features_error) = read_features(&devices).await;
    let mut features = features.unwrap_or_default();
    for device in &mut devices {
        device.features = features.remove(&device.ifindex);
    }
    Ok(Facts {
        kernel,
        devices,
        features_from,
        features_error,
    })
}

/// Set to `ioctl` to read features with the `SIOCETHTOOL` fallback even where ethtool netlink
/// works (the tests compare both).
pub const ETHTOOL_ENV: &str = "VXPROBE_ETHTOOL";

/// Offload features over ethtool netlink, or the ioctl where the kernel has no ethtool netlink
/// (before 5.6). Returns them, which way they were read, and why not, if not.
async fn read_features(
    devices: &[DeviceFacts],
) -> (
    Option<HashMap<u32, Features>>,
    Option<&'static str>,
    Option<String>,
) {
    let by_ioctl = || features::dump_ioctl(devices.iter().map(|d| (d.ifindex, d.name.as_str())));
    if std::env::var_os(ETHTOOL_ENV).is_some_and(|v| v == "ioctl") {
        return match by_ioctl() {
            Ok(f) => (Some(f), Some("ioctl"), None),
            Err(e) => (None, None, Some(e.to_string())),
        };
    }
    match features::dump_netlink().await {
        Ok(f) => (Some(f), Some("netlink"), None),
        Err(netlink) => match by_ioctl() {
            Ok(f) => (Some(f), Some("ioctl"), None),
            Err(ioctl) => (None, None, Some(format!("{netlink}; {ioctl}"))),
        },
    }
}

async fn gather_rtnetlink(handle: &Handle) -> Result<Vec<DeviceFacts>, FactsError> {
    let netlink = |what| move |source| FactsError::Netlink { what, source };
    let mut devices = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.map_err(netlink("devices"))? {
        devices.extend(device_facts(&msg));
    }
    devices.sort_by_key(|d| d.ifindex);

    let mut addresses = handle.address().get().execute();
    while let Some(msg) = addresses.try_next().await.map_err(netlink("addresses"))? {
        let Some(device) = devices.iter_mut().find(|d| d.ifindex == msg.header.index) else {
            continue;
        };
        for attr in &msg.attributes {
            // `Local` is the device's own address (`Address` is the peer's on point-to-point
            // links, and the same as `Local` elsewhere).
            if let AddressAttribute::Local(a) | AddressAttribute::Address(a) = attr
                && !device.addresses.contains(a)
            {
                device.addresses.push(*a);
            }
        }
    }

    // Remote VTEPs from the bridge forwarding database of each VXLAN device.
    if devices.iter().any(|d| d.kind == DeviceKind::Vxlan) {
        let mut fdb = handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let mut remotes: HashMap<u32, Vec<IpAddr>> = HashMap::new();
        while let Some(msg) = fdb.try_next().await.map_err(netlink("fdb entries"))? {
            for attr in &msg.attributes {
                let NeighbourAttribute::Destination(dst) = attr else {
                    continue;
                };
                let Some(addr) = neighbour_ip(dst) else {
                    continue;
                };
                let list = remotes.entry(msg.header.ifindex).or_default();
                if !addr_is_unspecified(addr) && !list.contains(&addr) && list.len() < MAX_REMOTES {
                    list.push(addr);
                }
            }
        }
        for device in &mut devices {
            if let (Some(tunnel), Some(list)) =
                (device.tunnel.as_mut(), remotes.remove(&device.ifindex))
            {
                tunnel.fdb_remotes = list;
            }
        }
    }

    // Where each tunnel's packets leave: the route to its (first) remote VTEP.
    for device in &mut devices {
        let Some(tunnel) = device.tunnel.as_mut() else {
            continue;
        };
        if let Some(remote) = tunnel.first_remote() {
            tunnel.route_ifindex = route_ifindex(handle, remote).await;
        }
    }
    Ok(devices)
}

/// An fdb entry's remote VTEP. In AF_BRIDGE messages the crate leaves NDA_DST as raw bytes.
fn neighbour_ip(dst: &NeighbourAddress) -> Option<IpAddr> {
    match dst {
        NeighbourAddress::Inet(a) => Some((*a).into()),
        NeighbourAddress::Inet6(a) => Some((*a).into()),
        NeighbourAddress::Other(raw) => match raw.len() {
            4 => <[u8; 4]>::try_from(raw.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(raw.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn addr_is_unspecified(addr: IpAddr) -> bool {
    addr.is_unspecified() || addr.is_multicast()
}

/// The output device of the route to `dst` (`ip route get`); `None` when there is no route.
async fn route_ifindex(handle: &Handle, dst: IpAddr) -> Option<u32> {
    let prefix = if dst.is_ipv4() { 32 } else { 128 };
    let request = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst, prefix)
        .ok()?
        .build();
    let mut routes = handle.route().get(request).execute();
    let route = routes.try_next().await.ok()??;
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn device_facts(msg: &LinkMessage) -> Option<DeviceFacts> {
    let device = Device::from_message(msg)?;
    let mut facts = DeviceFacts {
        ifindex: device.ifindex,
        name: device.name,
        kind: device.kind,
        mtu: device.mtu,
        up: device.up,
        carrier: None,
        master: None,
        gso_max_size: None,
        gro_max_size: None,
        addresses: Vec::new(),
        tunnel: device.tunnel.map(|t| TunnelFacts {
            vni: t.vni,
            port: t.port,
            lower_ifindex: t.lower_ifindex,
            local: t.local,
            remote: t.remote.filter(|a| !addr_is_unspecified(*a)),
            ..Default::default()
        }),
        features: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Carrier(c) => facts.carrier = Some(*c != 0),
            LinkAttribute::Controller(m) if *m != 0 => facts.master = Some(*m),
            LinkAttribute::GsoMaxSize(s) => facts.gso_max_size = Some(*s),
            LinkAttribute::GroMaxSize(s) => facts.gro_max_size = Some(*s),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let (LinkInfo::Data(data), Some(tunnel)) = (info, facts.tunnel.as_mut()) {
                        tunnel_extras(data, tunnel);
                    }
                }
            }
            _ => {}
        }
    }
    Some(facts)
}

/// The tunnel attributes `devices` does not read: DF and the outer UDP checksum.
fn tunnel_extras(data: &InfoData, tunnel: &mut TunnelFacts) {
    match data {
        InfoData::Vxlan(attrs) => {
            for attr in attrs {
                match attr {
                    InfoVxlan::UDPCsum(on) => tunnel.udp_csum = Some(*on),
                    InfoVxlan::CollectMetadata(on) => tunnel.external = *on,
                    InfoVxlan::Df(df) => tunnel.df = Some(format!("{df:?}").to_lowercase()),
                    _ => {}
                }
            }
        }
        InfoData::Geneve(attrs) => {
            for attr in attrs {
                match attr {
                    InfoGeneve::UdpCsum(on) => tunnel.udp_csum = Some(*on),
                    InfoGeneve::CollectMetadata => tunnel.external = true,
                    InfoGeneve::Df(df) => tunnel.df = Some(format!("{df:?}").to_lowercase()),
                    InfoGeneve::Local(a) => tunnel.local = Some((*a).into()),
                    InfoGeneve::Local6(a) => tunnel.local = Some((*a).into()),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        let k = KernelRelease::parse("4.19.0-17-amd64\n");
        assert_eq!(k.release, "4.19.0-17-amd64");
        assert_eq!(k.version, Some((4, 19, 0)));
        assert_eq!(k.is_before(5, 7), Some(true));
        assert_eq!(KernelRelease::parse("5.7").is_before(5, 7), Some(false));
        assert_eq!(
            KernelRelease::parse("6.18.44-fc-v669").version,
            Some((6, 18, 44))
        );
        assert_eq!(KernelRelease::parse("weird").is_before(5, 7), None);
    }
}

/// How a tunnel's underlay was found.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnderlaySource {
    /// The tunnel's lower device (`dev` at creation).
    LowerDevice,
    /// The device the route to a remote VTEP leaves by.
    RouteToRemote,
    /// The device holding the tunnel's `local` address.
    LocalAddress,
}

/// The underlay of a tunnel device: its lower device, else the device routing to its remote
/// VTEP, else the device holding its `local` address.
pub fn underlay<'a>(
    facts: &'a Facts,
    tunnel: &DeviceFacts,
) -> Option<(&'a DeviceFacts, UnderlaySource)> {
    let info = tunnel.tunnel.as_ref()?;
    let usable = |d: &&DeviceFacts| d.ifindex != tunnel.ifindex;
    if let Some(d) = info
        .lower_ifindex
        .and_then(|i| facts.device(i))
        .filter(usable)
    {
        return Some((d, UnderlaySource::LowerDevice));
    }
    if let Some(d) = info
        .route_ifindex
        .and_then(|i| facts.device(i))
        .filter(usable)
    {
        return Some((d, UnderlaySource::RouteToRemote));
    }
    let local = info.local?;
    facts
        .devices
        .iter()
        .filter(usable)
        .find(|d| d.addresses.contains(&local))
        .map(|d| (d, UnderlaySource::LocalAddress))
}

/// Every device a tunnel sends through, as [`underlay`] finds them.
pub fn underlays(facts: &Facts) -> BTreeSet<u32> {
    facts
        .devices
        .iter()
        .filter_map(|d| underlay(facts, d).map(|(u, _)| u.ifindex))
        .collect()
}

/// The role each device plays, from the topology (underlays as [`underlay`] finds them).
pub fn roles(facts: &Facts) -> BTreeMap<u32, Role> {
    let underlays = underlays(facts);
    facts
        .devices
        .iter()
        .map(|d| {
            (
                d.ifindex,
                super::devices::role_of(&d.kind, d.ifindex, &underlays),
            )
        })
        .collect()
}
