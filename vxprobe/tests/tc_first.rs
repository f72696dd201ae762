//! Behind a CNI's own TC programs: vxprobe's go first, and what it cannot go ahead of is named.
//! A TCX program returning TCX_PASS, or a clsact filter returning TC_ACT_OK, ends processing
//! on its hook: anything after it never sees the packet. The other tool's programs here are
//! two instructions (`r0 = verdict; exit`), loaded and attached before vxprobe starts.

mod common;

use std::os::fd::OwnedFd;

use common::{Recorder, hop_totals, is_root, must, tc, tc::PinnedProgram};
use serde_json::Value;
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, faults};

const TC_ACT_OK: i32 = 0;
/// Another tool's classifier (`tc::load_verdict`); a test without it cannot go on.
fn load_verdict(name: &str, verdict: i32, tcx: bool) -> OwnedFd {
    tc::load_verdict(name, verdict, tcx).unwrap_or_else(|e| panic!("BPF_PROG_LOAD {name}: {e}"))
}

/// Another tool's TCX program on a device's ingress, appended to the chain (what a CNI that
/// started first has there); the link lives as long as this value.
struct TcxProgram {
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl TcxProgram {
    fn attach(netns: &str, dev: &str, name: &str, verdict: i32) -> Self {
        let prog = load_verdict(name, verdict, true);
        let (dev, linked) = (dev.to_owned(), prog.try_clone().expect("a second fd"));
        // The link's ifindex is looked up in the namespace of the thread that creates it.
        let link = faults::in_netns(netns, move || {
            let ifindex = vxprobe::kernel::tc::device_index(&dev).expect("the device");
            tc::tcx_link(&linked, ifindex)
        })
        .unwrap_or_else(|e| panic!("BPF_LINK_CREATE tcx ingress: {e}"));
        Self {
            _link: link,
            _prog: prog,
        }
    }
}

const PINGS: u64 = 20;

/// Pings pod 1 -> pod 2: node 1's cali0 sees each request at ingress and each reply at egress
/// (static neighbours, no IPv6: nothing else crosses it).
fn ping(lab: &Lab) {
    common::ping(
        &lab.nodes[0].pod.netns,
        PINGS,
        &lab.nodes[1].pod.ip.to_string(),
    );
}

/// Packets counted at cali0 (ingress, egress) and what `meta` says runs ahead there.
fn record_cali0(lab: &Lab, args: &[&str]) -> ((u64, u64), Vec<Value>) {
    let mut all = vec!["--stats-interval", "200ms", "-i", POD_HOST_DEV];
    all.extend(args);
    let rec = Recorder::start(&lab.nodes[0].netns, &all);
    ping(lab);
    let lines = rec.stop();
    let packets = hop_totals(&lines, "packets");
    let at = |dir: &str| {
        packets
            .get(&(POD_HOST_DEV.to_owned(), dir.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    let hop = lines[0]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["ifname"] == POD_HOST_DEV)
        .unwrap_or_else(|| panic!("no {POD_HOST_DEV} in meta: {}", lines[0]));
    let ahead = hop["ahead"].as_array().cloned().unwrap_or_default();
    ((at("ingress"), at("egress")), ahead)
}

/// What `vxprobe probes --json` run in `netns` names ahead of vxprobe's TC programs.
fn probes_ahead(netns: &str) -> Vec<Value> {
    let out = vxprobe::lab::Lab::exec(netns, common::VXPROBE, &["probes", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "probes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["tc_ahead"].as_array().cloned().unwrap()
}

#[test]
fn a_tcx_program_that_passes_everything_does_not_hide_the_hop() {
    if !is_root() || !common::has_tcx() {
        return;
    }
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    let ns = &lab.nodes[0].netns;
    // A CNI's program, there before vxprobe: TCX_PASS (TC_ACT_OK) ends the chain.
    let _cni = TcxProgram::attach(ns, POD_HOST_DEV, "cni_from_pod", TC_ACT_OK);

    let ((ingress, egress), ahead) = record_cali0(&lab, &["--tc-attach", "tcx"]);
    assert_eq!(
        (ingress, egress),
        (PINGS, PINGS),
        "every ping at cali0 (ingress, egress), ahead of the CNI's program"
    );
    assert!(ahead.is_empty(), "nothing runs before vxprobe: {ahead:?}");

    // With clsact filters, every TCX program runs first: the pass hides the hop's ingress,
    // and vxprobe names it.
    let ((ingress, egress), ahead) = record_cali0(&lab, &["--tc-attach", "clsact"]);
    assert_eq!((ingress, egress), (0, PINGS), "hidden at ingress only");
    assert_eq!(ahead.len(), 1, "{ahead:?}");
    let a = &ahead[0];
    assert_eq!(
        (&a["dir"], &a["attach"], &a["program"]),
        (
            &Value::from("ingress"),
            &Value::from("tcx"),
            &Value::from("cni_from_pod")
        ),
        "{a}"
    );
}

#[test]
fn clsact_goes_ahead_of_the_filters_already_there() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    // Another tool's direct-action filters that pass every packet (TC_ACT_OK ends the
    // classification): at priority 1 on ingress, 7 on egress.
    let pass = PinnedProgram::pin("cni_pass", &load_verdict("cni_pass", TC_ACT_OK, false));
    tc::add_clsact(ns, POD_HOST_DEV);
    for (dir, prio) in [("ingress", "1"), ("egress", "7")] {
        tc::add_filter(
            ns,
            POD_HOST_DEV,
            dir,
            prio,
            &["protocol", "all", "bpf", "da", "object-pinned", pass.path()],
        );
    }
    let rec = Recorder::start(
        ns,
        &[
            "--stats-interval",
            "200ms",
            "-i",
            POD_HOST_DEV,
            "--tc-attach",
            "clsact",
        ],
    );
    // Where vxprobe's filters went: the ingress one shares priority 1 (at the head of the
    // bpf group), the egress one took 6.
    let show = |dir: &str| must(ns, "tc", &["filter", "show", "dev", POD_HOST_DEV, dir]);
    let (ingress_filters, egress_filters) = (show("ingress"), show("egress"));
    ping(&lab);
    let lines = rec.stop();
    let first_of = |listing: &str| {
        listing
            .lines()
            .find(|l| l.contains(" bpf ") && l.contains("id "))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        first_of(&ingress_filters).contains("vxprobe_tc_ingr")
            && first_of(&ingress_filters).contains("pref 1 "),
        "{ingress_filters}"
    );
    assert!(
        first_of(&egress_filters).contains("vxprobe_tc_egre")
            && first_of(&egress_filters).contains("pref 6 "),
        "{egress_filters}"
    );
    let packets = hop_totals(&lines, "packets");
    for dir in ["ingress", "egress"] {
        assert_eq!(
            packets.get(&(POD_HOST_DEV.to_owned(), dir.to_owned())),
            Some(&PINGS),
            "{dir}: {packets:?}"
        );
    }
    let hop = &lines[0]["hops"][0];
    assert!(hop["ahead"].is_null(), "nothing ahead: {hop}");
}

#[test]
fn a_filter_vxprobe_cannot_precede_is_named_in_meta_and_probes() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let ns = &lab.nodes[0].netns;
    // A u32 filter at priority 1 that matches every packet with a class (a terminal match)
    // and no action: TC_ACT_OK, classification ends. A filter of another kind cannot share its priority, and none can
    // go below 1.
    tc::add_clsact(ns, POD_HOST_DEV);
    tc::add_filter(
        ns,
        POD_HOST_DEV,
        "ingress",
        "1",
        &[
            "protocol", "all", "u32", "match", "u32", "0", "0", "classid", "1:1",
        ],
    );
    let is_the_u32 = |a: &Value| {
        a["dir"] == "ingress" && a["attach"] == "clsact" && a["kind"] == "u32" && a["prio"] == 1
    };

    let ((ingress, egress), ahead) = record_cali0(&lab, &["--tc-attach", "clsact"]);
    assert!(
        ahead.len() == 1 && is_the_u32(&ahead[0]),
        "meta names the u32 filter: {ahead:?}"
    );
    assert_eq!(
        (ingress, egress),
        (0, PINGS),
        "the u32 filter hides the ingress, as named"
    );

    if common::has_tcx() {
        // TCX programs run before every clsact filter: nothing is hidden.
        let ((ingress, egress), ahead) = record_cali0(&lab, &["--tc-attach", "tcx"]);
        assert_eq!((ingress, egress), (PINGS, PINGS));
        assert!(ahead.is_empty(), "{ahead:?}");
        assert!(probes_ahead(ns).is_empty(), "probes picks TCX here");
    } else {
        let named = probes_ahead(ns);
        assert!(
            named
                .iter()
                .any(|a| a["ifname"] == POD_HOST_DEV && is_the_u32(a)),
            "probes names the u32 filter: {named:?}"
        );
    }
}
