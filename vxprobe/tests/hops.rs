//! Per-hop counting across the VXLAN lab: exact numbers at every hop.

mod common;

use common::{Recorder, hop_totals, is_root, must};
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, TAP_DEV, UNDERLAY_DEV, VXLAN_DEV};

const HOP_ARGS: &[&str] = &[
    "--stats-interval",
    "200ms",
    "-i",
    "cali*",
    "-i",
    VXLAN_DEV,
    "-i",
    UNDERLAY_DEV,
];

#[test]
fn pings_are_counted_exactly_at_every_hop_of_both_nodes() {
    if !is_root() {
        return;
    }
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let [n1, n2] = &lab.nodes;
    let mut node1_args = HOP_ARGS.to_vec();
    node1_args.extend(["-i", TAP_DEV]);
    let rec1 = Recorder::start(&n1.netns, &node1_args);
    let rec2 = Recorder::start(&n2.netns, HOP_ARGS);

    const N: u64 = 25;
    must(
        &n1.pod.netns,
        "ping",
        &[
            "-q",
            "-c",
            &N.to_string(),
            "-i",
            "0.01",
            "-W",
            "2",
            &n2.pod.ip.to_string(),
        ],
    );

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
