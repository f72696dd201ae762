//! What `doctor` prints: one JSON document (`--json`) or a short report for a person.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use serde::Serialize;

use super::rules::{self, Finding, Severity};
use crate::node::{
    devices::{DeviceKind, Role},
    facts::{self, DeviceFacts, Facts, UnderlaySource},
    features::{FeatureState, GRO, GSO, TSO},
};

/// The `--json` document: `{"kernel", "devices": [...], "findings": [...]}`.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub kernel: &'a str,
    pub devices: Vec<DeviceView<'a>>,
    pub findings: &'a [Finding],
    /// How offload features were read: `netlink` or `ioctl` (kernels before 5.6).
    pub features_from: Option<&'a str>,
    /// Why offload features are missing from `devices`, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features_error: Option<&'a str>,
}

/// One device as reported: names instead of ifindexes, the role and the underlay resolved.
#[derive(Debug, Serialize)]
pub struct DeviceView<'a> {
    pub ifname: &'a str,
    pub ifindex: u32,
    pub kind: String,
    pub role: Role,
    pub mtu: u32,
    pub up: bool,
    pub carrier: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<&'a str>,
    pub gso_max_size: Option<u32>,
    pub gro_max_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelView<'a>>,
    /// Offload features by ethtool name, plus `tx-checksumming` (any TCP/UDP checksum
    /// feature on), each `{"on", "fixed", "requested"}`.
    pub features: Option<BTreeMap<&'a str, FeatureState>>,
}

#[derive(Debug, Serialize)]
pub struct TunnelView<'a> {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub lower: Option<&'a str>,
    pub local: Option<IpAddr>,
    pub remote: Option<IpAddr>,
    pub fdb_remotes: &'a [IpAddr],
    pub df: Option<&'a str>,
    pub udp_csum: Option<bool>,
    pub external: bool,
    /// Encapsulation overhead in bytes (Geneve: without options).
    pub overhead: Option<u32>,
    pub underlay: Option<&'a str>,
    pub underlay_mtu: Option<u32>,
    pub underlay_from: Option<UnderlaySource>,
}

/// A device kind as one word: `vxlan`, `veth`, `openvswitch`...
pub fn kind_name(kind: &DeviceKind) -> String {
    match kind {
        DeviceKind::Other(k) => k.clone(),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
    }
}

impl<'a> Report<'a> {
    /// The report of `facts` and `findings`, listing the devices `shown` accepts (loopback never).
    pub fn new(
        facts: &'a Facts,
        findings: &'a [Finding],
        shown: impl Fn(&DeviceFacts) -> bool,
    ) -> Report<'a> {
        let roles = facts::roles(facts);
        let name_of = |i: u32| facts.device(i).map(|d| d.name.as_str());
        let devices = facts
            .devices
            .iter()
            .filter(|d| d.kind != DeviceKind::Loopback && shown(d))
            .map(|d| {
                let tunnel = d.tunnel.as_ref().map(|t| {
                    let under = facts::underlay(facts, d);
                    TunnelView {
                        vni: t.vni,
                        port: t.port,
                        lower: t.lower_ifindex.and_then(name_of),
                        local: t.local,
                        remote: t.remote,
                        fdb_remotes: &t.fdb_remotes,
                        df: t.df.as_deref(),
                        udp_csum: t.udp_csum,
                        external: t.external,
                        overhead: rules::encap_overhead(d),
                        underlay: under.map(|(u, _)| u.name.as_str()),
                        underlay_mtu: under.map(|(u, _)| u.mtu),
                        underlay_from: under.map(|(_, s)| s),
                    }
                });
                let features = d.features.as_ref().map(|f| {
                    let mut map: BTreeMap<&str, FeatureState> =
                        f.0.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                    if let Some(csum) = f.tx_checksum() {
                        map.insert("tx-checksumming", csum);
                    }
                    map
                });
                DeviceView {
                    ifname: &d.name,
                    ifindex: d.ifindex,
                    kind: kind_name(&d.kind),
                    role: roles.get(&d.ifindex).copied().unwrap_or(Role::Other),
                    mtu: d.mtu,
                    up: d.up,
                    carrier: d.carrier,
                    master: d.master.and_then(name_of),
                    gso_max_size: d.gso_max_size,
                    gro_max_size: d.gro_max_size,
                    tunnel,
                    features,
                }
            })
            .collect();
        Report {
            kernel: &facts.kernel.release,
            devices,
            findings,
            features_from: facts.features_from,
            features_error: facts.features_error.as_deref(),
        }
    }

    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// The short report for a person: a device table, then each finding with its fix.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "kernel {}", self.kernel);
        let _ = writeln!(
            out,
            "{:<16} {:<11} {:<9} {:>5}  {:<18} {:<18} {:<18} {:<18} detail",
            "DEVICE", "KIND", "ROLE", "MTU", "TX-CSUM", "TSO", "GSO", "GRO"
        );
        for d in &self.devices {
            let feature = |name: &str| {
                d.features
                    .as_ref()
                    .and_then(|f| f.get(name))
                    .map_or_else(|| "?".to_owned(), |s| rules::feature_text(*s))
            };
            let mut detail = Vec::new();
            if !d.up {
                detail.push("down".to_owned());
            } else if d.carrier == Some(false) {
                detail.push("no carrier".to_owned());
            }
            if let Some(master) = d.master {
                detail.push(format!("master {master}"));
            }
            if let Some(t) = &d.tunnel {
                if let Some(vni) = t.vni {
                    detail.push(format!("vni {vni}"));
                }
                if let Some(port) = t.port {
                    detail.push(format!("port {port}"));
                }
                if let Some(csum) = t.udp_csum {
                    detail.push(format!("udpcsum {}", if csum { "on" } else { "off" }));
                }
                match (t.underlay, t.underlay_mtu, t.overhead) {
                    _ if t.external => detail.push("external".to_owned()),
                    (Some(u), Some(mtu), Some(o)) => {
                        detail.push(format!("over {u} (mtu {mtu}, -{o})"));
                    }
                    _ => detail.push("underlay unknown".to_owned()),
                }
            }
            let _ = writeln!(
                out,
                "{:<16} {:<11} {:<9} {:>5}  {:<18} {:<18} {:<18} {:<18} {}",
                d.ifname,
                d.kind,
                d.role.as_str(),
                d.mtu,
                feature("tx-checksumming"),
                feature(TSO),
                feature(GSO),
                feature(GRO),
                detail.join(", ")
            );
        }
        if let Some(e) = self.features_error {
            let _ = writeln!(out, "offload features unknown: {e}");
        }
        out.push('\n');
        if self.findings.is_empty() {
            out.push_str("no findings: nothing doctor knows to be wrong\n");
            return out;
        }
        let count = |s| self.findings.iter().filter(|f| f.severity == s).count();
        let _ = writeln!(
            out,
            "{} finding(s): {} error, {} warning, {} info",
            self.findings.len(),
            count(Severity::Error),
            count(Severity::Warning),
            count(Severity::Info)
        );
        for f in self.findings {
            let _ = writeln!(
                out,
                "\n{:<7} {} [{}]\n  {}\n  fix: {}\n  evidence: {}",
                f.severity.as_str().to_uppercase(),
                f.ifname,
                f.code.as_str(),
                f.message,
                f.fix,
                f.evidence
            );
        }
        out
    }
}
