//! Starting and stopping: bad input exits 2 with one line, and nothing of vxprobe stays
//! attached after Ctrl-C or SIGTERM, in either TC attach mode.

mod common;

use std::process::Command;

use common::{Recorder, VXPROBE, loaded, programs_of, still_loaded};
use vxprobe::lab::{POD_HOST_DEV, TAP_DEV, UNDERLAY_DEV, VXLAN_DEV};

/// The clsact filters of the lab devices in `netns`.
fn filters(netns: &str) -> String {
    let mut seen = String::new();
    for dev in [POD_HOST_DEV, VXLAN_DEV, UNDERLAY_DEV, TAP_DEV] {
        for dir in ["ingress", "egress"] {
            let tc = Command::new("tc")
                .args(["-n", netns, "filter", "show", "dev", dev, dir])
                .output()
                .expect("running tc");
            seen.push_str(&String::from_utf8_lossy(&tc.stdout));
        }
    }
    seen
}

#[test]
fn nothing_stays_attached_after_sigint_or_sigterm() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    // TCX exists since Linux 6.6 (in the VM matrix, Debian's 6.1 has clsact only).
    let modes: &[&str] = if common::kernel_version() >= (6, 6) {
        &["tcx", "clsact"]
    } else {
        &["clsact"]
    };
    for &mode in modes {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            let rec = Recorder::start(ns, &["--tc-attach", mode, "-i", "*"]);
            // This instance's programs (others may run on the machine): an attached program
            // stays loaded as long as a TCX link or a clsact filter references it, so their
            // being gone is the proof (Debian's bpftool 7.1 cannot name TCX links).
            let ours = programs_of(rec.pid());
            let names: Vec<String> = loaded(&ours).into_iter().map(|(_, n, _)| n).collect();
            assert!(
                names.iter().any(|n| n.starts_with("vxprobe_tc_ingr"))
                    && names.iter().any(|n| n.starts_with("vxprobe_tc_egre")),
                "{mode}: vxprobe's TC programs not loaded: {names:?}"
            );
            if mode == "clsact" {
                let during = filters(ns);
                assert!(
                    during.contains("direct-action") && during.contains("vxprobe_tc"),
                    "no clsact filter:\n{during}"
                );
            }
            let (code, lines) = rec.stop_with(signal);
            assert_eq!(code, 0);
            assert!(
                lines.iter().any(|l| l["kind"] == "hop"),
                "no hop lines flushed"
            );
            // Detached programs are freed after an RCU grace period: still_loaded waits.
            let left = still_loaded(&ours);
            assert!(
                left.is_empty(),
                "{mode}, signal {signal}: still loaded: {left:?}"
            );
            let after = filters(ns);
            assert!(
                !after.contains("vxprobe"),
                "{mode}, signal {signal}: filters left:\n{after}"
            );
        }
    }
}

#[test]
fn duration_ends_the_recording() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let out = common::run::record_in(
        &lab.nodes[0].netns,
        &["--duration", "600ms", "--stats-interval", "200ms"],
    );
    let hops = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"kind\":\"hop\""))
        .count();
    // Default selection on node 1: vxlan.calico, its underlay eth0, tap0; two directions;
    // three intervals of 200 ms (a fourth, partial one may close at the deadline).
    assert!((18..=24).contains(&hops), "{hops} hop lines");
}

/// Bad invocations: exit 2 and exactly one line on stderr that names the problem.
#[test]
fn bad_usage_exits_2_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["record", "-i", "nosuchdev"], "nosuchdev"),
        (&["record", "--duration", "tenseconds"], "tenseconds"),
        (&["record", "--stats-interval", "0s"], "0s"),
        (&["record", "--bogus-flag"], "--bogus-flag"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, named) in cases {
        let out = Command::new(VXPROBE).args(*args).output().unwrap();
        common::run::assert_usage_error(&out, args, named);
    }
}
