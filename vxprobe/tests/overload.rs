//! Overload: more flows than the kernel's flow table holds are evicted least recently seen
//! first and counted, while the hop counters stay exact.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use common::{Recorder, hop_totals, is_root};
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, faults};

#[test]
fn a_full_flow_table_evicts_counts_and_keeps_hops_exact() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let n1 = &lab.nodes[0];
    const CAPACITY: u64 = 64;
    const FLOWS: u64 = 300;
    // One cache slot per CPU: every flow but the last one on each CPU goes to the table (the
    // default cache would hold most of these flows and never fill it).
    let mut rec = Recorder::start(
        &n1.netns,
        &[
            "--stats-interval",
            "200ms",
            "--max-flows",
            &CAPACITY.to_string(),
            "--flow-cache",
            "1",
            "-i",
            POD_HOST_DEV,
        ],
    );
    // One datagram to each of FLOWS ports: FLOWS flows at cali0 ingress.
    for port in 0..FLOWS as u16 {
        lab.pod_datagrams(20000 + port, 64, 1, faults::Df::Default)
            .unwrap();
    }
    rec.wait_hop(POD_HOST_DEV, "ingress", "packets", FLOWS);
    let lines = rec.stop();

    let meta = lines.iter().find(|l| l["kind"] == "meta").unwrap();
    assert_eq!(meta["max_flows"], CAPACITY);
    assert_eq!(meta["flow_cache_slots"], 1);
    let packets = hop_totals(&lines, "packets");
    assert_eq!(
        packets.get(&(POD_HOST_DEV.to_owned(), "ingress".to_owned())),
        Some(&FLOWS),
        "hop counters are not subject to the flow table: {packets:?}"
    );
    let summary = lines.iter().find(|l| l["kind"] == "summary").unwrap();
    let evicted = summary["evicted"].as_u64().unwrap();
    // The ICMP port-unreachable replies add one flow at egress; the flow holding each CPU's
    // cache slot at the end never went to the table.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(
        (FLOWS - CAPACITY - cpus..=FLOWS + 1).contains(&evicted),
        "{evicted} evicted of {FLOWS} flows in a table of {CAPACITY}"
    );
    let per_interval: u64 = lines
        .iter()
        .filter(|l| l["kind"] == "evicted")
        .map(|l| {
            assert_eq!(l["capacity"], CAPACITY);
            l["count"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(per_interval, evicted, "evicted lines add up to the summary");
    assert_eq!(summary["lost"], 0);
    eprintln!("{FLOWS} flows in a table of {CAPACITY}: {evicted} evicted");
}

/// A flood of events into a tiny ring buffer: what does not fit is counted as `lost`, every
/// event is either a line or a lost one, and intervals keep closing during the flood.
#[test]
fn a_full_ring_buffer_loses_events_and_counts_every_one() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let mut rec = Recorder::start(
        &n1.netns,
        &[
            "--stats-interval",
            "200ms",
            "--ring-size",
            "4096",
            "-i",
            POD_HOST_DEV,
        ],
    );
    // 3000-byte datagrams through a 1450-byte MTU: three fragments each, an event each. The
    // flood goes on until intervals were seen closing during it, and 20,000 datagrams went.
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let (netns, dst, flooding) = (n1.pod.netns.clone(), n2.pod.ip, Arc::clone(&flooding));
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while sent < 20_000 || flooding.load(Ordering::Relaxed) {
                faults::udp_datagrams(&netns, dst.into(), 5555, 3000, 1000, faults::Df::Clear)
                    .unwrap();
                sent += 1000;
            }
            sent
        })
    };
    let started = common::ts_now();
    rec.wait_intervals_after(&started, 5);
    assert!(!flood.is_finished(), "the flood is still going");
    flooding.store(false, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    rec.wait_hop(POD_HOST_DEV, "ingress", "fragments", 3 * sent);
    let lines = rec.stop();

    let fragments: u64 = hop_totals(&lines, "fragments").values().sum();
    assert!(
        fragments >= 60_000,
        "{fragments} fragments counted at the hop"
    );
    let summary = lines.iter().find(|l| l["kind"] == "summary").unwrap();
    let delivered = summary["events"]["fragment"].as_u64().unwrap_or(0);
    let lost = summary["lost"].as_u64().unwrap();
    assert!(lost > 0, "nothing lost in a 4 KiB ring");
    let lost_lines = |kind: Option<&str>| -> u64 {
        lines
            .iter()
            .filter(|l| l["kind"] == "lost" && kind.is_none_or(|k| l["event_kind"] == k))
            .map(|l| l["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(lost_lines(None), lost);
    // (Kernel-wide hooks see the whole machine: drops of other work may be lost too.)
    let lost = lost_lines(Some("fragment"));
    assert_eq!(
        delivered + lost,
        fragments,
        "every fragment is a line or counted as lost"
    );
    eprintln!("{fragments} fragment events: {delivered} delivered, {lost} lost");
}

/// A backlog of records the flow filter throws away (refused sends, which have no flow, under
/// `--host`) still goes through the ring a batch at a time: the interval closes between two
/// batches, before the one matching record queued behind the backlog is even read. (When
/// filtered records skipped the budget, one drain swallowed the whole backlog first.)
#[test]
fn records_the_filter_drops_count_against_the_drain_budget() {
    let Some(lab) = common::lab::root_lab() else {
        return;
    };
    let [n1, n2] = &lab.nodes;
    let host = n2.pod.ip.to_string();
    let mut rec = Recorder::start(
        &n1.netns,
        &[
            "--stats-interval",
            "20ms",
            "--host",
            &host,
            "--ring-size",
            "134217728",
            "-i",
            POD_HOST_DEV,
        ],
    );
    let started = common::ts_now();
    rec.wait_intervals_after(&started, 2);
    // SAFETY: kill(2) on the recorder's pid; SIGCONT below resumes it.
    unsafe { libc::kill(rec.pid(), libc::SIGSTOP) };
    // 400,000 records of refused sends while it sleeps (several drain batches of them)...
    const SENDS: u32 = 400_000;
    let refused = lab
        .pod_datagrams(7000, 2000, SENDS, faults::Df::Always)
        .unwrap();
    assert_eq!(refused, SENDS, "every send refused (pod MTU 1450)");
    // ... then one the filter keeps.
    faults::bad_udp_checksums(&n1.pod.netns, n2.pod.ip, 5555, 1).unwrap();
    let resumed = common::ts_now();
    // SAFETY: as above.
    unsafe { libc::kill(rec.pid(), libc::SIGCONT) };
    let csum = |l: &serde_json::Value| l["kind"] == "csum_error" && l["flow"]["dport"] == 5555;
    rec.wait_for(
        "the bad checksum behind the backlog",
        std::time::Duration::from_secs(60),
        csum,
    );
    let lines = rec.stop();
    let at = lines.iter().position(csum).unwrap();
    // Intervals that closed after the wakeup (a hop line's ts is when its interval closed).
    let hops_between = lines[..at]
        .iter()
        .filter(|l| l["kind"] == "hop" && l["ts"].as_str().unwrap() > resumed.as_str())
        .count();
    let summary = lines.last().unwrap();
    eprintln!(
        "{hops_between} hop lines between the wakeup and the matching record; summary {summary}"
    );
    assert_eq!(summary["lost"], 0, "the ring held the backlog: {summary}");
    assert!(
        hops_between > 0,
        "intervals closed while the filtered backlog was drained"
    );
}

/// Refused sends from 400 network namespaces (threads of this test that unshared one each),
/// on a node running 2,000 more processes: looking up a namespace no process holds means
/// walking all of /proc. Naming their devices never holds the event loop: the intervals keep
/// closing on time. (On the loop, the walks held it for about a second.)
#[test]
fn namespaces_by_the_hundred_do_not_stall_the_intervals() {
    if !is_root() {
        return;
    }
    use std::sync::Barrier;
    let lab = Lab::build(&LabOptions::default()).expect("building the lab");
    const PROCESSES: usize = 2000;
    const NAMESPACES: usize = 400;
    let mut sleepers: Vec<std::process::Child> = (0..PROCESSES)
        .map(|_| {
            std::process::Command::new("sleep")
                .arg("600")
                .spawn()
                .unwrap()
        })
        .collect();
    let mut rec = Recorder::start(
        &lab.nodes[0].netns,
        &["--stats-interval", "50ms", "-i", POD_HOST_DEV],
    );
    let ready = Arc::new(Barrier::new(NAMESPACES + 1));
    let done = Arc::new(Barrier::new(NAMESPACES + 1));
    let senders: Vec<_> = (0..NAMESPACES)
        .map(|_| {
            let (ready, done) = (Arc::clone(&ready), Arc::clone(&done));
            std::thread::spawn(move || {
                let writer = (|| {
                    // SAFETY: unshare(2) moves only this thread into a new namespace.
                    faults::check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
                    let up = std::process::Command::new("ip")
                        .args(["link", "set", "lo", "mtu", "1500", "up"])
                        .status()?;
                    assert!(up.success());
                    faults::FrameWriter::open("lo")
                })();
                ready.wait();
                let refused = writer
                    .unwrap()
                    .send(&faults::FrameWriter::frame(2000), false)
                    .is_err_and(|e| e.raw_os_error() == Some(libc::EMSGSIZE));
                // The namespace lives until vxprobe has looked at every send.
                done.wait();
                refused
            })
        })
        .collect();
    ready.wait();
    let burst = common::ts_now();
    rec.wait_total("the refused sends", "count", NAMESPACES as u64, |l| {
        l["kind"] == "oversize" && l["errno"] == 90 && l["len"] == 2000 && l["ifindex"] == 1
    });
    rec.wait_intervals_after(&common::ts_now(), 2);
    done.wait();
    let refused = senders
        .into_iter()
        .map(|s| s.join().unwrap())
        .filter(|refused| *refused)
        .count();
    let lines = rec.stop();
    for sleeper in &mut sleepers {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
    assert_eq!(refused, NAMESPACES);
    // The intervals' ends from the burst on: no gap much longer than an interval.
    let stamps: Vec<std::time::SystemTime> = lines
        .iter()
        .filter(|l| l["kind"] == "hop" && l["dir"] == "ingress")
        .filter_map(|l| l["ts"].as_str())
        .filter(|ts| *ts > burst.as_str())
        .map(|ts| humantime::parse_rfc3339(ts).unwrap())
        .collect();
    let gap = stamps
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .max()
        .unwrap();
    eprintln!(
        "{NAMESPACES} namespaces, {PROCESSES} processes: longest gap between intervals {gap:?}"
    );
    // Five 50 ms intervals; a TCG guest (VXPROBE_TEST_TIME_SCALE=5) runs everything about
    // five times slower, the walks the bound guards against too (6.1 guest, three guests on
    // two cores: 483 ms).
    let bound = std::time::Duration::from_millis(250) * common::time_scale();
    assert!(
        gap < bound,
        "the intervals stalled for {gap:?} (bound {bound:?})"
    );
}
