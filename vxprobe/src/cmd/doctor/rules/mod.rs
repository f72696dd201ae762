//! The rules: pure functions from [`Facts`] to [`Finding`]s. Each finding has a stable
//! [`Code`] (scripts and alerts match on it), a severity, a message a person understands, the
//! facts it rests on, and the fix.

use std::collections::BTreeSet;

use serde::{Serialize, Serializer};
use serde_json::{Value, json};

use crate::node::{
    devices::{DeviceKind, Role},
    facts::{DeviceFacts, Facts, roles, underlay},
    features::{FeatureState, GRO, GSO, TSO, TX_CSUM},
};

/// How bad a finding is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Packets are dropped, corrupted or delayed.
    Error,
    /// Traffic flows, at a large cost (throughput, CPU), or only by luck.
    Warning,
    /// Worth knowing; nothing is broken by it.
    Info,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// What a finding is about; `as_str` is the stable `code` of the output.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    /// Overlay MTU + encapsulation overhead above the underlay's MTU.
    OverlayMtuTooLarge,
    /// tx checksum offload off on a VXLAN device (so TSO is off too).
    VxlanTxCsumOff,
    /// Kernel < 5.7 with tx checksum offload on for a VXLAN device (the NAT checksum bug).
    VxlanCsumNatBug,
    /// Tap/tun with TSO or GSO off while the node builds packets above its MTU.
    TapSegmentationOff,
    /// tx checksum offload on for a device whose packets go through a user-space engine.
    EngineTxCsumOn,
    /// A pod veth's MTU differs from the overlay's.
    PodMtuMismatch,
    /// A tunnel whose underlay device is down.
    UnderlayDown,
    /// A tunnel whose underlay device could not be found.
    UnderlayUnknown,
}

impl Code {
    pub const ALL: [Code; 8] = [
        Code::OverlayMtuTooLarge,
        Code::VxlanTxCsumOff,
        Code::VxlanCsumNatBug,
        Code::TapSegmentationOff,
        Code::EngineTxCsumOn,
        Code::PodMtuMismatch,
        Code::UnderlayDown,
        Code::UnderlayUnknown,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Code::OverlayMtuTooLarge => "overlay-mtu-too-large",
            Code::VxlanTxCsumOff => "vxlan-tx-csum-off",
            Code::VxlanCsumNatBug => "vxlan-csum-nat-bug",
            Code::TapSegmentationOff => "tap-segmentation-off",
            Code::EngineTxCsumOn => "engine-tx-csum-on",
            Code::PodMtuMismatch => "pod-mtu-mismatch",
            Code::UnderlayDown => "underlay-down",
            Code::UnderlayUnknown => "underlay-unknown",
        }
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One diagnosis about one device.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub ifname: String,
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub fix: String,
    /// The facts the finding rests on (a JSON object).
    pub evidence: Value,
}

/// VXLAN's overhead on an IPv4 underlay, counted against the underlay's MTU: outer IPv4 20 +
/// UDP 8 + VXLAN 8 + the inner Ethernet header 14.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// On IPv6: the outer IP header is 40 bytes.
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// Geneve's fixed part is the same size as VXLAN's; options come on top and are chosen per
/// packet by whoever programs the tunnel, so netlink cannot tell them.
pub const GENEVE_OVERHEAD_V4: u32 = 50;
pub const GENEVE_OVERHEAD_V6: u32 = 70;

/// Kernels before this one break VXLAN checksums when NAT rewrites the outer UDP header and tx
/// checksum offload is on (projectcalico/calico#3145; Felix's `ChecksumOffloadBroken`).
pub const NAT_CSUM_FIXED_IN: (u32, u32) = (5, 7);

/// Calico's VXLAN device, whose offloads Felix manages.
const CALICO_VXLAN: &str = "vxlan.calico";

/// Runs every rule. Findings come sorted by severity, then device name.
pub fn diagnose(facts: &Facts) -> Vec<Finding> {
    let mut findings = Vec::new();
    for device in &facts.devices {
        // External (collect_metadata) tunnels have no underlay or MTU of their own to judge.
        if device.tunnel.as_ref().is_some_and(|t| !t.external) {
            tunnel_underlay(facts, device, &mut findings);
        }
        if device.kind == DeviceKind::Vxlan {
            vxlan_tx_checksum(facts, device, &mut findings);
        }
        if matches!(device.kind, DeviceKind::Tap | DeviceKind::Tun) {
            tap_segmentation(facts, device, &mut findings);
        }
    }
    engine_tx_checksum(facts, &mut findings);
    pod_mtu(facts, &mut findings);
    findings.sort_by(|a, b| (a.severity, &a.ifname, a.code).cmp(&(b.severity, &b.ifname, b.code)));
    findings
}

/// Bytes a tunnel device adds to each packet (without Geneve options).
pub fn encap_overhead(device: &DeviceFacts) -> Option<u32> {
    let ipv6 = device.tunnel.as_ref()?.is_ipv6();
    match (&device.kind, ipv6) {
        (DeviceKind::Vxlan, false) => Some(VXLAN_OVERHEAD_V4),
        (DeviceKind::Vxlan, true) => Some(VXLAN_OVERHEAD_V6),
        (DeviceKind::Geneve, false) => Some(GENEVE_OVERHEAD_V4),
        (DeviceKind::Geneve, true) => Some(GENEVE_OVERHEAD_V6),
        _ => None,
    }
}

/// ethtool's way of showing a feature: `on`, `off [fixed]`, `off [requested on]`.
pub fn feature_text(state: FeatureState) -> String {
    let value = if state.on { "on" } else { "off" };
    if state.fixed {
        format!("{value} [fixed]")
    } else if state.requested != state.on {
        format!(
            "{value} [requested {}]",
            if state.requested { "on" } else { "off" }
        )
    } else {
        value.to_owned()
    }
}

fn feature_evidence(device: &DeviceFacts, names: &[&str]) -> Value {
    let Some(features) = &device.features else {
        return Value::Null;
    };
    let map: serde_json::Map<String, Value> = names
        .iter()
        .filter_map(|n| Some(((*n).to_owned(), feature_text(features.get(n)?).into())))
        .collect();
    map.into()
}

/// Rules 1 and the underlay checks: overlay MTU against the underlay's, underlay up, known.
fn tunnel_underlay(facts: &Facts, device: &DeviceFacts, findings: &mut Vec<Finding>) {
    let Some(overhead) = encap_overhead(device) else {
        return;
    };
    let kind = if device.kind == DeviceKind::Geneve {
        "Geneve"
    } else {
        "VXLAN"
    };
    let Some((under, source)) = underlay(facts, device) else {
        findings.push(Finding {
            ifname: device.name.clone(),
            severity: Severity::Info,
            code: Code::UnderlayUnknown,
            message: format!(
                "cannot tell which device carries {}'s {kind} packets (no lower device, no \
                 route to a remote VTEP, no device holding its local address), so its MTU was \
                 not checked against the underlay",
                device.name
            ),
            fix: format!(
                "create the tunnel with `dev UNDERLAY` or `local ADDRESS`, or check that \
                 {} has remote VTEPs (fdb entries) with a route to them",
                device.name
            ),
            evidence: json!({ "tunnel": device.tunnel }),
        });
        return;
    };
    let ipv6 = device.tunnel.as_ref().is_some_and(|t| t.is_ipv6());
    let fits = under.mtu.saturating_sub(overhead);
    if device.mtu > fits {
        let geneve_note = if device.kind == DeviceKind::Geneve {
            " (plus any Geneve options)"
        } else {
            ""
        };
        findings.push(Finding {
            ifname: device.name.clone(),
            severity: Severity::Error,
            code: Code::OverlayMtuTooLarge,
            message: format!(
                "{}'s MTU {} is larger than its underlay {} can carry after {kind}'s {overhead} \
                 bytes over IPv{}{geneve_note}: at most {fits}. Full-size packets are \
                 fragmented after encapsulation or dropped (with DF, or where the path refuses \
                 fragments): small pings work, large transfers stall",
                device.name,
                device.mtu,
                under.name,
                if ipv6 { 6 } else { 4 },
            ),
            fix: format!(
                "lower {dev}'s MTU to {fits} (`ip link set {dev} mtu {fits}`) and the pods' \
                 MTU with it (Calico: `vxlanMTU` in the FelixConfiguration, or the operator's \
                 `calicoNetwork.mtu`), or raise {under}'s MTU to {need} or more if the network \
                 carries it (`ping -M do -s {probe}` to a remote node tells)",
                dev = device.name,
                under = under.name,
                need = device.mtu + overhead,
                probe = (device.mtu + overhead).saturating_sub(if ipv6 { 48 } else { 28 }),
            ),
            evidence: json!({
                "mtu": device.mtu,
                "underlay": under.name,
                "underlay_mtu": under.mtu,
                "underlay_from": source,
                "overhead": overhead,
                "outer_ip": if ipv6 { "ipv6" } else { "ipv4" },
                "max_mtu": fits,
            }),
        });
    }
    if device.up && (!under.up || under.carrier == Some(false)) {
        findings.push(Finding {
            ifname: device.name.clone(),
            severity: Severity::Error,
            code: Code::UnderlayDown,
            message: format!(
                "{} is up but its underlay {} is {}: every {kind} packet is dropped, so pods \
                 on other nodes are unreachable",
                device.name,
                under.name,
                if under.up { "without carrier" } else { "down" }
            ),
            fix: format!(
                "bring {} up (`ip link set {} up`) or check its cable/peer",
                under.name, under.name
            ),
            evidence: json!({
                "underlay": under.name,
                "underlay_from": source,
                "underlay_up": under.up,
                "underlay_carrier": under.carrier,
            }),
        });
    }
}

/// Rules 2 and 3: tx checksum offload on VXLAN devices, against the kernel release.
fn vxlan_tx_checksum(facts: &Facts, device: &DeviceFacts, findings: &mut Vec<Finding>) {
    let Some(csum) = device.features.as_ref().and_then(|f| f.tx_checksum()) else {
        return;
    };
    let old_kernel = facts
        .kernel
        .is_before(NAT_CSUM_FIXED_IN.0, NAT_CSUM_FIXED_IN.1);
    let is_calico = device.name == CALICO_VXLAN;
    let udp_csum = device.tunnel.as_ref().and_then(|t| t.udp_csum);
    let mut evidence = json!({
        "kernel": facts.kernel.release,
        "features": feature_evidence(device, &[TX_CSUM[0], TX_CSUM[1], TX_CSUM[2], TSO, GSO]),
        "udp_csum": udp_csum,
    });
    if !csum.on {
        let tso = device.features.as_ref().and_then(|f| f.get(TSO));
        let tso_note = match tso {
            Some(t) if !t.on => " and so TSO with it (tx-tcp-segmentation needs it)",
            _ => "",
        };
        let fixed_note = if csum.fixed {
            " It is marked [fixed]: this kernel does not let it be changed on this device."
        } else {
            ""
        };
        let (severity, fix) = if old_kernel == Some(true) {
            (
                Severity::Info,
                format!(
                    "on Linux {} this is the safe setting (see {}): upgrade to Linux {}.{} or \
                     later, then turn the offload on{}",
                    facts.kernel.release,
                    Code::VxlanCsumNatBug.as_str(),
                    NAT_CSUM_FIXED_IN.0,
                    NAT_CSUM_FIXED_IN.1,
                    if is_calico {
                        " with FELIX_FEATUREDETECTOVERRIDE=ChecksumOffloadBroken=false"
                    } else {
                        ""
                    }
                ),
            )
        } else if is_calico {
            (
                Severity::Warning,
                "set FELIX_FEATUREDETECTOVERRIDE=ChecksumOffloadBroken=false in calico-node's \
                 environment (or `featureDetectOverride: ChecksumOffloadBroken=false` in the \
                 FelixConfiguration): Felix keeps turning the offload off otherwise, so \
                 `ethtool -K vxlan.calico tx on` only helps for seconds"
                    .to_owned(),
            )
        } else {
            (
                Severity::Warning,
                format!(
                    "`ethtool -K {dev} tx on tso on` (and find what turned it off: a CNI \
                     agent may set it again)",
                    dev = device.name
                ),
            )
        };
        findings.push(Finding {
            ifname: device.name.clone(),
            severity,
            code: Code::VxlanTxCsumOff,
            message: format!(
                "tx checksum offload is off on {}{tso_note}: every TCP segment is cut and \
                 checksummed in software at this device, which costs most of the tunnel's \
                 throughput (incident #3: 2.9 Gbit/s through VXLAN against 9.38 Gbit/s on the \
                 bare network).{fixed_note}",
                device.name
            ),
            fix,
            evidence,
        });
    } else if old_kernel == Some(true) {
        let zero_csum = udp_csum != Some(true);
        evidence["nat_bug_fixed_in"] =
            format!("{}.{}", NAT_CSUM_FIXED_IN.0, NAT_CSUM_FIXED_IN.1).into();
        findings.push(Finding {
            ifname: device.name.clone(),
            severity: if zero_csum {
                Severity::Error
            } else {
                Severity::Warning
            },
            code: Code::VxlanCsumNatBug,
            message: format!(
                "Linux {} is older than {}.{} and tx checksum offload is on for {}: when NAT \
                 (kube-proxy's MASQUERADE --random-fully) rewrites the outer UDP header of a \
                 VXLAN packet sent without a UDP checksum, these kernels leave a wrong \
                 checksum, the receiver drops the packet, and connections to NodePorts and \
                 ClusterIPs hang for about 63 seconds (projectcalico/calico#3145).{}",
                facts.kernel.release,
                NAT_CSUM_FIXED_IN.0,
                NAT_CSUM_FIXED_IN.1,
                device.name,
                match udp_csum {
                    Some(false) => " This device sends no outer UDP checksum.",
                    None => " Whether this device sets an outer UDP checksum is unknown.",
                    Some(true) => {
                        " This device sets an outer UDP checksum, which narrows the exposure; \
                         Calico still turns the offload off on such kernels."
                    }
                }
            ),
            fix: format!(
                "upgrade to Linux {}.{} or later; until then `ethtool -K {} tx off`{}",
                NAT_CSUM_FIXED_IN.0,
                NAT_CSUM_FIXED_IN.1,
                device.name,
                if is_calico {
                    " (Calico does this itself unless FELIX_FEATUREDETECTOVERRIDE sets \
                     ChecksumOffloadBroken=false: remove that override on this node)"
                } else {
                    ""
                }
            ),
            evidence,
        });
    }
}

/// A tap or tun a program holds open (carrier on): a user-space engine reads and writes it.
fn is_engine_tap(device: &DeviceFacts) -> bool {
    matches!(device.kind, DeviceKind::Tap | DeviceKind::Tun)
        && device.up
        && device.carrier == Some(true)
}

/// Rule 4: a tap/tun with TSO or GSO off while other devices build packets above its MTU.
///
/// Statically, "a path that carries packets above its MTU" is: some other device of the node
/// has GRO on, so it merges what it receives into packets up to its `gro_max_size` (64 KiB by
/// default), and the node forwards those as they are. The engine behind the tap reads such
/// packets and writes them back; a tap without TSO/GSO only takes packets up to its MTU, so the
/// write fails with EMSGSIZE ("Message too long", incident #4). Taps nobody holds open (no
/// carrier) are skipped: they carry nothing, and their offloads are placeholders until a
/// program sets them (TUNSETOFFLOAD).
fn tap_segmentation(facts: &Facts, device: &DeviceFacts, findings: &mut Vec<Finding>) {
    let Some(features) = &device.features else {
        return;
    };
    if !is_engine_tap(device) {
        return;
    }
    let off: Vec<&str> = [TSO, GSO]
        .into_iter()
        .filter(|n| features.get(n).is_some_and(|s| !s.on))
        .collect();
    if off.is_empty() {
        return;
    }
    let feeders: Vec<Value> = facts
        .devices
        .iter()
        .filter(|d| {
            d.ifindex != device.ifindex
                && d.up
                && !matches!(
                    d.kind,
                    DeviceKind::Loopback | DeviceKind::Tap | DeviceKind::Tun
                )
        })
        .filter_map(|d| {
            let gro = d.features.as_ref()?.get(GRO)?;
            let size = d.gro_max_size.or(d.gso_max_size).unwrap_or(65536);
            (gro.on && size > device.mtu).then(|| json!({ "ifname": d.name, "gro_max_size": size }))
        })
        .collect();
    if feeders.is_empty() {
        return;
    }
    let names: Vec<&str> = feeders
        .iter()
        .filter_map(|f| f["ifname"].as_str())
        .collect();
    let largest = feeders
        .iter()
        .filter_map(|f| f["gro_max_size"].as_u64())
        .max()
        .unwrap_or(65536);
    findings.push(Finding {
        ifname: device.name.clone(),
        severity: Severity::Error,
        code: Code::TapSegmentationOff,
        message: format!(
            "{} has {} off, so it only takes packets up to its MTU {}; but GRO on {} merges \
             packets up to {largest} bytes that the node forwards as they are. Whatever engine \
             reads them from a tap and writes them back through {} gets EMSGSIZE (\"Message \
             too long\"), the packet is lost, and TCP retransmits and falls back to tiny \
             segments (incident #4: below 10 Kbit/s)",
            device.name,
            off.join(" and "),
            device.mtu,
            names.join(", "),
            device.name
        ),
        fix: format!(
            "`ethtool -K {} tso on gso on` (where the engine opens the tap: it sets the offloads \
             with TUNSETOFFLOAD), or turn GRO off where those packets come from",
            device.name
        ),
        evidence: json!({
            "mtu": device.mtu,
            "carrier": device.carrier,
            "features": feature_evidence(device, &[TSO, GSO]),
            "gro_feeders": feeders,
        }),
    });
}

/// Rule 5: tx checksum offload on for a device whose packets go through a user-space engine.
///
/// The engine's taps are ports of a bridge or an OVS datapath. Packets the host sends through
/// that bridge (the bridge device itself) or through an OVS internal port on the same datapath
/// (a gateway such as `antrea-gw0`) leave with only a partial checksum and metadata saying the
/// device will finish it; the metadata is lost on the way through user space, so they arrive
/// with bad checksums and are dropped.
fn engine_tx_checksum(facts: &Facts, findings: &mut Vec<Finding>) {
    let mut flagged = BTreeSet::new();
    for tap in facts.devices.iter().filter(|d| is_engine_tap(d)) {
        let Some(master) = tap.master.and_then(|m| facts.device(m)) else {
            continue;
        };
        let ovs = |d: &DeviceFacts| matches!(&d.kind, DeviceKind::Other(k) if k == "openvswitch");
        let mut senders: Vec<&DeviceFacts> = Vec::new();
        if master.kind == DeviceKind::Bridge {
            senders.push(master);
        }
        senders.extend(
            facts
                .devices
                .iter()
                .filter(|d| d.master == Some(master.ifindex) && d.ifindex != tap.ifindex && ovs(d)),
        );
        for sender in senders {
            let Some(csum) = sender.features.as_ref().and_then(|f| f.tx_checksum()) else {
                continue;
            };
            if !csum.on || !sender.up || !flagged.insert(sender.ifindex) {
                continue;
            }
            findings.push(Finding {
                ifname: sender.name.clone(),
                severity: Severity::Error,
                code: Code::EngineTxCsumOn,
                message: format!(
                    "{} has tx checksum offload on, and its packets reach a user-space engine \
                     through tap {} (a port of {}): they carry a partial checksum that the \
                     device was to finish, that promise is lost in user space, and they come \
                     back with bad checksums that the receiver drops (incident #4)",
                    sender.name, tap.name, master.name
                ),
                fix: format!(
                    "`ethtool -K {} tx off tso off` (Antrea: `disableTXChecksumOffload: true` \
                     in antrea-agent.conf)",
                    sender.name
                ),
                evidence: json!({
                    "tap": tap.name,
                    "tap_carrier": tap.carrier,
                    "master": master.name,
                    "master_kind": master.kind,
                    "features": feature_evidence(sender, &TX_CSUM),
                }),
            });
        }
    }
}

/// Rule 6: pod veths whose MTU differs from the overlay's.
fn pod_mtu(facts: &Facts, findings: &mut Vec<Finding>) {
    let roles = roles(facts);
    let Some(overlay) = facts
        .devices
        .iter()
        .filter(|d| d.tunnel.as_ref().is_some_and(|t| !t.external))
        .min_by_key(|d| d.mtu)
    else {
        return;
    };
    for pod in facts.devices.iter().filter(|d| {
        roles.get(&d.ifindex) == Some(&Role::Pod) && d.master.is_none() && d.mtu != overlay.mtu
    }) {
        let larger = pod.mtu > overlay.mtu;
        findings.push(Finding {
            ifname: pod.name.clone(),
            severity: if larger {
                Severity::Warning
            } else {
                Severity::Info
            },
            code: Code::PodMtuMismatch,
            message: if larger {
                format!(
                    "pod veth {} has MTU {} but the overlay {} only {}: the pod sends packets \
                     the tunnel cannot carry, which are fragmented or dropped with \"fragmentation \
                     needed\" on the way (cross-node traffic slow or stuck while same-node \
                     traffic works, incident #5)",
                    pod.name, pod.mtu, overlay.name, overlay.mtu
                )
            } else {
                format!(
                    "pod veth {} has MTU {}, below the overlay {}'s {}: it works, with more \
                     packets than needed",
                    pod.name, pod.mtu, overlay.name, overlay.mtu
                )
            },
            fix: format!(
                "give the pod interfaces the overlay's MTU {} (both ends of the veth; Calico: \
                 `vxlanMTU`/`calicoNetwork.mtu`, then recreate the pods)",
                overlay.mtu
            ),
            evidence: json!({
                "mtu": pod.mtu,
                "overlay": overlay.name,
                "overlay_mtu": overlay.mtu,
            }),
        });
    }
}

#[cfg(test)]
mod tests;
