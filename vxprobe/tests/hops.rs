//! Per-hop counting across the VXLAN lab: exact numbers at every hop.

mod common;

use common::{Recorder, hop_totals, must, run::ALL_HOPS};
use vxprobe::lab::{
    LabOptions, POD_HOST_DEV, TAP_DEV, UNDERLAY_DEV, VXLAN_DEV, extra_veth_peer_ip,
};
use vxprobe_common::LOW_IFINDEXES;

#[test]
fn pings_are_counted_exactly_at_every_hop_of_both_nodes() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let mut node1_args = ALL_HOPS.to_vec();
    node1_args.extend(["-i", TAP_DEV]);
    let rec1 = Recorder::start(&n1.netns, &node1_args);
    let rec2 = Recorder::start(&n2.netns, ALL_HOPS);

    const N: u64 = 25;
    common::ping(&n1.pod.netns, N, &n2.pod.ip.to_string());

    for (node, lines) in [("node1", rec1.stop()), ("node2", rec2.stop())] {
        let packets = hop_totals(&lines, "packets");
        let bytes = hop_totals(&lines, "bytes");
        // ICMP echo, 56 bytes of payload: 98-byte frames inside, 50 bytes more once in VXLAN.
        for (dev, frame) in [(POD_HOST_DEV, 98), (VXLAN_DEV, 98), (UNDERLAY_DEV, 148)] {
            for dir in ["ingress", "egress"] {
                let key = (dev.to_owned(), dir.to_owned());
                assert_eq!(
                    packets.get(&key),
                    Some(&N),
                    "{node} {dev} {dir} packets: {packets:?}"
                );
                assert_eq!(
                    bytes.get(&key),
                    Some(&(N * frame)),
                    "{node} {dev} {dir} bytes"
                );
            }
        }
        if node == "node1" {
            // The tap carries none of this traffic, and says so with zero lines, not silence.
            for dir in ["ingress", "egress"] {
                assert_eq!(packets.get(&(TAP_DEV.to_owned(), dir.to_owned())), Some(&0));
            }
        }
        let hop = lines.iter().find(|l| l["kind"] == "hop").unwrap();
        for field in [
            "ts", "ifname", "ifindex", "netns", "dir", "packets", "bytes", "drops", "loss_pct",
        ] {
            assert!(hop.get(field).is_some(), "hop line lacks {field}: {hop}");
        }
        let role = |dev: &str| {
            lines
                .iter()
                .find(|l| l["kind"] == "hop" && l["ifname"] == dev)
                .unwrap()["role"]
                .clone()
        };
        assert_eq!(role(VXLAN_DEV), "overlay");
        assert_eq!(role(UNDERLAY_DEV), "underlay");
        assert_eq!(role(POD_HOST_DEV), "pod");
        // Nothing was lost on the way: no hop charged with a drop.
        assert_eq!(hop_totals(&lines, "drops").values().sum::<u64>(), 0);
    }
}

/// Calico creates vxlan.calico with a local address only: the default selection still finds
/// its underlay, the device routing to the remote VTEP.
#[test]
fn the_default_selection_finds_the_underlay_of_a_vxlan_without_lower_device() {
    let Some(lab) = common::lab::root_lab_with(LabOptions {
        vxlan_lower_dev: false,
        ..LabOptions::default()
    }) else {
        return;
    };
    let out = common::run::record_in(
        &lab.nodes[0].netns,
        &["--duration", "300ms", "--stats-interval", "100ms"],
    );
    let meta: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let roles: Vec<(String, String)> = meta["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["ifname"].as_str().unwrap().into(),
                h["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        roles.contains(&(UNDERLAY_DEV.into(), "underlay".into())),
        "{roles:?}"
    );
    assert!(
        roles.contains(&(VXLAN_DEV.into(), "overlay".into())),
        "{roles:?}"
    );
    assert!(roles.contains(&(TAP_DEV.into(), "tap".into())), "{roles:?}");
}

/// A device whose ifindex is past the kernel's array of low indexes (described to the TC
/// programs through the hash map instead, as pods' veths are on a node with churn) counts as
/// exactly.
#[test]
fn a_device_with_a_high_ifindex_is_counted_exactly() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let n1 = &lab.nodes[0];
    let (dev, peer, net, index) = ("cali9", "vxp9", 40, LOW_IFINDEXES + 904);
    lab.add_veth_at(0, dev, peer, net, Some(index)).unwrap();
    let address = common::ifindex_and_mac(&n1.netns, dev);
    assert_eq!(address.0, index);
    // Static neighbours both ways: nothing but the pings crosses the veth.
    let peer_mac = common::ifindex_and_mac(&n1.pod.netns, peer).1;
    let (node_ip, peer_ip) = (
        format!("198.18.{net}.1"),
        extra_veth_peer_ip(net).to_string(),
    );
    must(
        &n1.netns,
        "ip",
        &[
            "neigh",
            "replace",
            &peer_ip,
            "lladdr",
            &peer_mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    );
    must(
        &n1.pod.netns,
        "ip",
        &[
            "neigh",
            "replace",
            &node_ip,
            "lladdr",
            &address.1,
            "dev",
            peer,
            "nud",
            "permanent",
        ],
    );
    let rec = Recorder::start(&n1.netns, &["--stats-interval", "200ms", "-i", dev]);
    const N: u64 = 20;
    common::ping(&n1.netns, N, &peer_ip);
    let packets = hop_totals(&rec.stop(), "packets");
    for dir in ["ingress", "egress"] {
        assert_eq!(
            packets.get(&(dev.to_owned(), dir.to_owned())),
            Some(&N),
            "{dir}: {packets:?}"
        );
    }
}
