//! Device churn while `record` runs: devices that appear are observed within a second, devices
//! that vanish are let go, and the recording never stops.

mod common;

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use common::Recorder;
use serde_json::Value;
use vxprobe::lab::{Lab, VXLAN_DEV, extra_veth_peer_ip};
use vxprobe_common::names;

/// Continuous pings in the background, killed on drop.
struct Pinger(Child);

impl Pinger {
    fn start(netns: &str, dst: &str) -> Self {
        let child = Lab::command(netns, "ping")
            .args(["-q", "-i", "0.05", "-W", "1", dst])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        Self(child)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ifindex_of(netns: &str, dev: &str) -> u64 {
    let out = common::must(netns, "cat", &[&format!("/sys/class/net/{dev}/ifindex")]);
    out.trim().parse().unwrap()
}

fn is_hop(line: &Value, ifindex: u64) -> bool {
    line["kind"] == "hop" && line["ifindex"] == ifindex
}

#[test]
fn a_recreated_vxlan_device_is_observed_within_two_seconds() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    // The default selection: vxlan.calico, its underlay eth0, tap0.
    let mut rec = Recorder::start(&n1.netns, &["--stats-interval", "200ms"]);
    let _ping = Pinger::start(&n1.pod.netns, &n2.pod.ip.to_string());
    let old = ifindex_of(&n1.netns, VXLAN_DEV);
    rec.wait_for("traffic on vxlan.calico", Duration::from_secs(5), |l| {
        is_hop(l, old) && l["packets"].as_u64() > Some(0)
    });

    lab.delete_vxlan(0).unwrap();
    let removed = rec.wait_for("the removal", Duration::from_secs(2), |l| {
        l["kind"] == "device" && l["event"] == "removed" && l["ifindex"] == old
    });
    // The recording goes on past the device's last interval.
    rec.wait_intervals_after(removed["ts"].as_str().unwrap(), 2);
    rec.assert_running();

    lab.recreate_vxlan(0).unwrap();
    let recreated = Instant::now();
    let new = ifindex_of(&n1.netns, VXLAN_DEV);
    assert_ne!(new, old, "a new device");
    let added = rec.wait_for("the new device", Duration::from_secs(2), |l| {
        l["kind"] == "device" && l["event"] == "added" && l["ifindex"] == new
    });
    assert_eq!(added["ifname"], VXLAN_DEV);
    assert_eq!(added["role"], "overlay");
    rec.wait_for("traffic on the new device", Duration::from_secs(2), |l| {
        is_hop(l, new) && l["dir"] == "egress" && l["packets"].as_u64() > Some(0)
    });
    let latency = recreated.elapsed();
    assert!(
        latency < Duration::from_secs(2) * common::time_scale(),
        "{latency:?}"
    );

    let (lines, stderr) = rec.stop_with_stderr();
    // The old hop's lines stop after its last (partial) interval: at most one line per
    // direction follows the removal.
    let removed_at = lines
        .iter()
        .position(|l| l["kind"] == "device" && l["event"] == "removed")
        .unwrap();
    let after = lines[removed_at..]
        .iter()
        .filter(|l| is_hop(l, old))
        .count();
    assert!(after <= 2, "{after} hop lines of the vanished device");
    // Both ends of the run are in the output: the old device's history and the new one's.
    assert!(lines[..removed_at].iter().any(|l| is_hop(l, old)));
    assert!(lines.iter().any(|l| l["kind"] == "summary"));
    assert!(!stderr.contains("panick"), "{stderr}");
    eprintln!("new vxlan device counted {latency:?} after it was created");
}

#[test]
fn new_pod_veths_matching_the_glob_are_observed_and_vanished_ones_let_go() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let n1 = &lab.nodes[0];
    let mut rec = Recorder::start(&n1.netns, &["--stats-interval", "200ms", "-i", "cali*"]);
    for (round, net) in [(0, 30u8), (1, 31)] {
        let name = format!("cali7{round}");
        let created = Instant::now();
        lab.add_veth(0, &name, &format!("vxp7{round}"), net)
            .unwrap();
        let ifindex = ifindex_of(&n1.netns, &name);
        let added = rec.wait_for("the new veth", Duration::from_secs(1), |l| {
            l["kind"] == "device" && l["event"] == "added" && l["ifindex"] == ifindex
        });
        assert_eq!(added["role"], "pod");
        eprintln!(
            "{name} observed {:?} after it was created",
            created.elapsed()
        );
        common::ping(&n1.netns, 5, &extra_veth_peer_ip(net).to_string());
        // Summed over interval lines: on a slow machine five pings span two intervals.
        rec.wait_until(
            "the pings on the new veth",
            Duration::from_secs(2),
            |lines| {
                lines
                    .iter()
                    .filter(|l| is_hop(l, ifindex) && l["dir"] == "egress")
                    .filter_map(|l| l["packets"].as_u64())
                    .sum::<u64>()
                    >= 5
            },
        );
        common::must(&n1.netns, "ip", &["link", "del", &name]);
        rec.wait_for("the removal", Duration::from_secs(1), |l| {
            l["kind"] == "device" && l["event"] == "removed" && l["ifindex"] == ifindex
        });
    }
    let lines = rec.stop();
    // cali0 was there all along.
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "hop" && l["ifname"] == "cali0")
    );
}

/// An MTU change of an observed device is a `device` line (`mtu_changed`, the MTU before and
/// after), and its kernel programs judge sizes by the new MTU from then on.
#[test]
fn an_mtu_change_is_reported_and_sizes_are_judged_by_the_new_mtu() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let n1 = &lab.nodes[0];
    lab.add_veth(0, "cali76", "vxp76", 36).unwrap();
    let ifindex = ifindex_of(&n1.netns, "cali76");
    let peer = extra_veth_peer_ip(36).to_string();
    let mut rec = Recorder::start(&n1.netns, &["--stats-interval", "200ms", "-i", "cali76"]);
    // Five 3000-byte pings: three fragments each at MTU 1500.
    let big_pings = || {
        common::must(
            &n1.netns,
            "ping",
            &[
                "-q", "-c", "5", "-i", "0.01", "-W", "2", "-s", "3000", &peer,
            ],
        )
    };
    let egress_sum = |lines: &[Value], field: &str| -> u64 {
        lines
            .iter()
            .filter(|l| is_hop(l, ifindex) && l["dir"] == "egress")
            .filter_map(|l| l[field].as_u64())
            .sum()
    };
    big_pings();
    rec.wait_until("the pings' 15 fragments", Duration::from_secs(5), |lines| {
        egress_sum(lines, "fragments") >= 15
    });

    common::must(
        &n1.pod.netns,
        "ip",
        &["link", "set", "vxp76", "mtu", "4000"],
    );
    common::must(&n1.netns, "ip", &["link", "set", "cali76", "mtu", "4000"]);
    let changed = rec.wait_for("cali76's mtu_changed line", Duration::from_secs(5), |l| {
        l["kind"] == "device" && l["event"] == "mtu_changed" && l["ifindex"] == ifindex
    });
    assert_eq!(
        (changed["mtu"].as_u64(), changed["mtu_was"].as_u64()),
        (Some(4000), Some(1500)),
        "{changed}"
    );
    let from = rec
        .lines()
        .iter()
        .position(|l| l["event"] == "mtu_changed")
        .unwrap();
    big_pings();
    rec.wait_until("the five pings whole", Duration::from_secs(5), |lines| {
        egress_sum(&lines[from..], "packets") >= 5
    });
    let after = &rec.lines()[from..];
    // Whole packets now, under the new MTU: neither fragments nor oversized.
    assert_eq!(egress_sum(after, "fragments"), 0);
    assert_eq!(egress_sum(after, "oversize"), 0);
    let largest = after
        .iter()
        .filter(|l| is_hop(l, ifindex) && l["dir"] == "egress")
        .filter_map(|l| l["max_len"].as_u64())
        .max();
    assert!(largest >= Some(3028), "{largest:?}");
    let lines = rec.stop();
    // The replies, reassembled and delivered, lost nothing: their fragments freed with them
    // are not drops.
    let drops: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "drop").collect();
    assert!(drops.is_empty(), "{drops:?}");
}

/// The CPUs this test may run on (and the pings it starts, which inherit its affinity): every
/// CPU the earlier pings could have counted on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it; CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set),
            0,
            "sched_getaffinity"
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// The ifindexes of the flows in the recorder's flow cache slots and in its flow map.
fn flow_ifindexes(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let ifindex =
        |bytes: &[u8], at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    let key_at = std::mem::offset_of!(vxprobe_common::CachedFlow, key);
    let cache = common::map_entries(common::map_of(pid, names::FLOW_CACHE))
        .iter()
        .map(|(_, slot)| ifindex(slot, key_at))
        .collect();
    let map = common::map_entries(common::map_of(pid, names::FLOW_STATS))
        .iter()
        .map(|(key, _)| ifindex(key, 0))
        .collect();
    (cache, map)
}

/// A vanished device's flows still holding flow cache slots reach the flow map only when
/// other flows take the slots, after the device's last interval (its own entries were
/// deleted then): they are deleted as they arrive, not left in the map to age out.
#[test]
fn a_vanished_devices_flows_leaving_the_flow_cache_are_deleted_from_the_map() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    // One slot per CPU: the last flow a CPU saw holds its slot.
    let args = [
        "--stats-interval",
        "200ms",
        "-i",
        "cali*",
        "--flow-cache",
        "1",
    ];
    let mut rec = Recorder::start(&n1.netns, &args);
    let pid = rec.pid() as u32;
    lab.add_veth(0, "cali70", "vxp70", 30).unwrap();
    let ifindex = ifindex_of(&n1.netns, "cali70");
    rec.wait_for("the new veth", Duration::from_secs(1), |l| {
        l["kind"] == "device" && l["event"] == "added" && l["ifindex"] == ifindex
    });
    let peer = extra_veth_peer_ip(30).to_string();
    common::ping(&n1.netns, 3, &peer);
    let gone = ifindex as u32;
    let (cache, _) = flow_ifindexes(pid);
    assert!(
        cache.contains(&gone),
        "the pings' flows hold a slot: {cache:?}"
    );

    common::must(&n1.netns, "ip", &["link", "del", "cali70"]);
    let removed = rec.wait_for("the removal", Duration::from_secs(1), |l| {
        l["kind"] == "device" && l["event"] == "removed" && l["ifindex"] == ifindex
    });
    // Past the device's last interval (the first to end after the removal), when its map
    // entries were deleted.
    rec.wait_intervals_after(removed["ts"].as_str().unwrap(), 2);
    let (cache, _) = flow_ifindexes(pid);
    assert!(
        cache.contains(&gone),
        "still in a slot after the device went: {cache:?}"
    );

    // The device's last interval is reported by now: nothing of it after this line.
    let reported = rec.lines().len();
    // Pod traffic on every CPU takes the slots: the vanished device's flows go to the map.
    for cpu in allowed_cpus() {
        let cpu = cpu.to_string();
        let dst = n2.pod.ip.to_string();
        common::must(
            &n1.pod.netns,
            "taskset",
            &[
                "-c", &cpu, "ping", "-q", "-c", "3", "-i", "0.02", "-W", "1", &dst,
            ],
        );
    }
    let (cache, _) = flow_ifindexes(pid);
    assert!(
        !cache.contains(&gone),
        "pod flows took every slot: {cache:?}"
    );
    // The next read finds them in the map and deletes them.
    rec.wait_intervals_after(&common::ts_now(), 2);
    let (_, map) = flow_ifindexes(pid);
    assert!(!map.contains(&gone), "{gone} left in the flow map: {map:?}");
    assert!(!map.is_empty(), "the pod's flows are in the map");
    let lines = rec.stop();
    let late: Vec<&Value> = lines[reported..]
        .iter()
        .filter(|l| l["ifindex"] == ifindex)
        .collect();
    assert!(
        late.is_empty(),
        "reported after the device's last interval: {late:#?}"
    );
}
