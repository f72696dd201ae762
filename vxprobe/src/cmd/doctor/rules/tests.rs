//! Each rule on facts made to show its misconfiguration, and on facts that do not.

use std::collections::BTreeSet;

use super::*;
use crate::node::{
    facts::{KernelRelease, TunnelFacts},
    features::{Features, REPORTED},
};

/// Features with everything on and changeable, except `off`.
fn features(off: &[&str]) -> Features {
    let all: BTreeSet<String> = REPORTED.iter().map(|n| (*n).to_owned()).collect();
    let active: BTreeSet<String> = all
        .iter()
        .filter(|n| !off.contains(&n.as_str()))
        .cloned()
        .collect();
    Features::from_sets(&all, &all, &active, &BTreeSet::new())
}

fn dev(ifindex: u32, name: &str, kind: DeviceKind, mtu: u32) -> DeviceFacts {
    DeviceFacts {
        ifindex,
        name: name.into(),
        kind,
        mtu,
        up: true,
        carrier: Some(true),
        master: None,
        gso_max_size: Some(65536),
        gro_max_size: Some(65536),
        addresses: Vec::new(),
        tunnel: None,
        features: Some(features(&[])),
    }
}

/// The lab's node: eth0 underlay, vxlan.calico over it, cali0, a detached tap.
fn node() -> Facts {
    let mut eth0 = dev(2, "eth0", DeviceKind::Veth, 1500);
    eth0.addresses = vec!["198.18.0.1".parse().unwrap()];
    let mut vxlan = dev(4, "vxlan.calico", DeviceKind::Vxlan, 1450);
    vxlan.tunnel = Some(TunnelFacts {
        vni: Some(4096),
        port: Some(4789),
        lower_ifindex: Some(2),
        local: Some("198.18.0.1".parse().unwrap()),
        fdb_remotes: vec!["198.18.0.2".parse().unwrap()],
        route_ifindex: Some(2),
        udp_csum: Some(false),
        ..Default::default()
    });
    let mut tap = dev(6, "tap0", DeviceKind::Tap, 1500);
    tap.carrier = Some(false);
    tap.features = Some(features(&[TSO, TX_CSUM[1]]));
    Facts {
        kernel: KernelRelease::parse("6.8.0"),
        devices: vec![
            dev(1, "lo", DeviceKind::Loopback, 65536),
            eth0,
            vxlan,
            dev(5, "cali0", DeviceKind::Veth, 1450),
            tap,
        ],
        features_from: Some("netlink"),
        features_error: None,
    }
}

fn codes(findings: &[Finding]) -> Vec<(&str, &str, Severity)> {
    findings
        .iter()
        .map(|f| (f.ifname.as_str(), f.code.as_str(), f.severity))
        .collect()
}

fn device<'a>(facts: &'a mut Facts, name: &str) -> &'a mut DeviceFacts {
    facts.devices.iter_mut().find(|d| d.name == name).unwrap()
}

#[test]
fn a_healthy_node_has_no_findings() {
    assert_eq!(codes(&diagnose(&node())), []);
}

#[test]
fn codes_are_unique_and_kebab_case() {
    let set: BTreeSet<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(set.len(), Code::ALL.len());
    assert!(
        set.iter()
            .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-'))
    );
}

#[test]
fn overlay_mtu_above_underlay_minus_50() {
    let mut facts = node();
    device(&mut facts, "vxlan.calico").mtu = 1451;
    device(&mut facts, "cali0").mtu = 1451;
    let findings = diagnose(&facts);
    assert_eq!(
        codes(&findings),
        [("vxlan.calico", "overlay-mtu-too-large", Severity::Error)]
    );
    let e = &findings[0].evidence;
    assert_eq!(e["max_mtu"], 1450);
    assert_eq!(e["underlay"], "eth0");
    assert_eq!(e["underlay_from"], "lower_device");
    assert!(findings[0].fix.contains("mtu 1450"), "{}", findings[0].fix);
}

#[test]
fn ipv6_vteps_cost_70_bytes() {
    let mut facts = node();
    let vxlan = device(&mut facts, "vxlan.calico");
    let tunnel = vxlan.tunnel.as_mut().unwrap();
    tunnel.local = Some("fd00::1".parse().unwrap());
    tunnel.fdb_remotes = vec!["fd00::2".parse().unwrap()];
    let findings = diagnose(&facts);
    assert_eq!(findings[0].code, Code::OverlayMtuTooLarge);
    assert_eq!(findings[0].evidence["overhead"], 70);
    assert_eq!(findings[0].evidence["max_mtu"], 1430);
}

#[test]
fn without_a_lower_device_the_route_then_the_local_address_decide() {
    let mut facts = node();
    let mut ens3 = dev(7, "ens3", DeviceKind::Physical, 1400);
    ens3.addresses = vec!["198.18.5.1".parse().unwrap()];
    facts.devices.push(ens3);
    let tunnel = device(&mut facts, "vxlan.calico").tunnel.as_mut().unwrap();
    tunnel.lower_ifindex = None;
    tunnel.route_ifindex = Some(7);
    let findings = diagnose(&facts);
    assert_eq!(findings[0].evidence["underlay"], "ens3");
    assert_eq!(findings[0].evidence["underlay_from"], "route_to_remote");

    let tunnel = device(&mut facts, "vxlan.calico").tunnel.as_mut().unwrap();
    tunnel.route_ifindex = None;
    tunnel.local = Some("198.18.5.1".parse().unwrap());
    let findings = diagnose(&facts);
    assert_eq!(findings[0].evidence["underlay_from"], "local_address");

    tunnel_mut(&mut facts).local = None;
    let findings = diagnose(&facts);
    let on_vxlan: Vec<_> = codes(&findings)
        .into_iter()
        .filter(|(dev, _, _)| *dev == "vxlan.calico")
        .collect();
    assert_eq!(
        on_vxlan,
        [("vxlan.calico", "underlay-unknown", Severity::Info)]
    );
}

fn tunnel_mut(facts: &mut Facts) -> &mut TunnelFacts {
    device(facts, "vxlan.calico").tunnel.as_mut().unwrap()
}

#[test]
fn external_tunnels_have_no_mtu_of_their_own_to_judge() {
    // OVS's genev_sys_6081 or cilium_vxlan: MTU 65000/1500, remotes set per packet.
    let mut facts = node();
    let mut geneve = dev(9, "genev_sys_6081", DeviceKind::Geneve, 65000);
    geneve.tunnel = Some(TunnelFacts {
        external: true,
        ..Default::default()
    });
    facts.devices.push(geneve);
    assert_eq!(codes(&diagnose(&facts)), []);
}

#[test]
fn underlay_down_breaks_the_tunnel() {
    let mut facts = node();
    device(&mut facts, "eth0").up = false;
    assert_eq!(
        codes(&diagnose(&facts)),
        [("vxlan.calico", "underlay-down", Severity::Error)]
    );
}

#[test]
fn tx_checksum_off_on_vxlan_calico_names_felix() {
    let mut facts = node();
    device(&mut facts, "vxlan.calico").features = Some(features(&TX_CSUM));
    let findings = diagnose(&facts);
    assert_eq!(
        codes(&findings),
        [("vxlan.calico", "vxlan-tx-csum-off", Severity::Warning)]
    );
    assert!(
        findings[0]
            .fix
            .contains("FELIX_FEATUREDETECTOVERRIDE=ChecksumOffloadBroken=false")
    );
    // Another VXLAN device gets the plain ethtool fix.
    device(&mut facts, "vxlan.calico").name = "vxlan0".into();
    let findings = diagnose(&facts);
    assert!(!findings[0].fix.contains("FELIX"), "{}", findings[0].fix);
    assert!(findings[0].fix.contains("ethtool -K vxlan0 tx on"));
}

#[test]
fn old_kernels_with_tx_checksum_on_hit_the_nat_bug() {
    let mut facts = node();
    facts.kernel = KernelRelease::parse("4.19.0-17-amd64");
    let findings = diagnose(&facts);
    assert_eq!(
        codes(&findings),
        [("vxlan.calico", "vxlan-csum-nat-bug", Severity::Error)]
    );
    assert_eq!(findings[0].evidence["kernel"], "4.19.0-17-amd64");
    // A device that sets its UDP checksum is less exposed.
    tunnel_mut(&mut facts).udp_csum = Some(true);
    assert_eq!(diagnose(&facts)[0].severity, Severity::Warning);
    // With the offload off, an old kernel makes "off" the safe choice: info only.
    device(&mut facts, "vxlan.calico").features = Some(features(&TX_CSUM));
    assert_eq!(
        codes(&diagnose(&facts)),
        [("vxlan.calico", "vxlan-tx-csum-off", Severity::Info)]
    );
    // From 5.7 on: nothing about the bug.
    facts.kernel = KernelRelease::parse("5.7.0");
    device(&mut facts, "vxlan.calico").features = Some(features(&[]));
    assert_eq!(codes(&diagnose(&facts)), []);
}

#[test]
fn an_attached_tap_without_tso_gso_refuses_gro_packets() {
    let mut facts = node();
    let tap = device(&mut facts, "tap0");
    tap.carrier = Some(true);
    tap.features = Some(features(&[TSO, GSO]));
    let findings = diagnose(&facts);
    assert_eq!(
        codes(&findings),
        [("tap0", "tap-segmentation-off", Severity::Error)]
    );
    let feeders = findings[0].evidence["gro_feeders"].as_array().unwrap();
    assert!(feeders.iter().any(|f| f["ifname"] == "vxlan.calico"));
    // Nothing on the node builds packets above the tap's MTU: no finding.
    for d in &mut facts.devices {
        if let Some(f) = d.features.as_mut()
            && d.name != "tap0"
        {
            f.0.get_mut(GRO).unwrap().on = false;
        }
    }
    assert_eq!(codes(&diagnose(&facts)), []);
}

#[test]
fn a_detached_tap_is_not_judged() {
    let mut facts = node();
    device(&mut facts, "tap0").features = Some(features(&[TSO, GSO]));
    assert_eq!(codes(&diagnose(&facts)), []);
}

#[test]
fn a_bridge_or_ovs_gateway_feeding_an_engine_tap_with_tx_checksum_on() {
    // Linux bridge: the bridge device itself sends into the engine.
    let mut facts = node();
    facts.devices.push(dev(8, "br0", DeviceKind::Bridge, 1500));
    let tap = device(&mut facts, "tap0");
    tap.master = Some(8);
    tap.carrier = Some(true);
    tap.features = Some(features(&[]));
    let findings = diagnose(&facts);
    assert_eq!(
        codes(&findings),
        [("br0", "engine-tx-csum-on", Severity::Error)]
    );
    assert_eq!(findings[0].evidence["tap"], "tap0");
    // Detached tap: no engine, no finding.
    device(&mut facts, "tap0").carrier = Some(false);
    assert_eq!(codes(&diagnose(&facts)), []);

    // OVS as in Antrea: the gateway is an internal port of ovs-system, like the taps.
    let ovs = || DeviceKind::Other("openvswitch".into());
    let mut facts = node();
    facts.devices.push(dev(9, "ovs-system", ovs(), 1500));
    let mut gw = dev(10, "antrea-gw0", ovs(), 1450);
    gw.master = Some(9);
    facts.devices.push(gw);
    let tap = device(&mut facts, "tap0");
    tap.master = Some(9);
    tap.carrier = Some(true);
    tap.features = Some(features(&[]));
    let findings = diagnose(&facts);
    assert_eq!(
        codes(&findings),
        [("antrea-gw0", "engine-tx-csum-on", Severity::Error)]
    );
    assert!(findings[0].fix.contains("disableTXChecksumOffload"));
    // With the offload off (Antrea's fix), nothing to say.
    device(&mut facts, "antrea-gw0").features = Some(features(&TX_CSUM));
    assert_eq!(codes(&diagnose(&facts)), []);
}

#[test]
fn pod_veths_should_have_the_overlay_mtu() {
    let mut facts = node();
    device(&mut facts, "cali0").mtu = 1500;
    let findings = diagnose(&facts);
    assert_eq!(
        codes(&findings),
        [("cali0", "pod-mtu-mismatch", Severity::Warning)]
    );
    assert_eq!(findings[0].evidence["overlay_mtu"], 1450);
    device(&mut facts, "cali0").mtu = 1400;
    assert_eq!(diagnose(&facts)[0].severity, Severity::Info);
    // The underlay veth is not a pod.
    assert_eq!(roles(&facts)[&2], Role::Underlay);
}

#[test]
fn feature_text_reads_like_ethtool() {
    let s = |on, fixed, requested| {
        feature_text(FeatureState {
            on,
            fixed,
            requested,
        })
    };
    assert_eq!(s(true, false, true), "on");
    assert_eq!(s(false, true, false), "off [fixed]");
    assert_eq!(s(false, false, true), "off [requested on]");
}
