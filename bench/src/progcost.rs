//! Measurement 3: what each vxprobe program costs per run, from the kernel's own BPF
//! statistics (`kernel.bpf_stats_enabled=1`, restored afterwards; `bpftool prog show`
//! run_time_ns/run_cnt), for the programs of the benchmark's own `vxprobe record` only, over
//! windows of iperf3 load (TCP, small-packet UDP) and of injected faults.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    process::Command,
};

use anyhow::Context as _;
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions,
    tc::{NlOptions, TcAttachOptions},
};
use serde::Serialize;
use serde_json::Value;
use vxprobe::{
    cli::TcAttach,
    kernel::probes::{Probes, Tables, TcMode},
    lab::{Lab, LabOptions, faults},
    node::devices,
};
use vxprobe_common::{FlowFilter, names};

use crate::{
    Ctx,
    iperf::{self, Load},
    recorder::{Output, Recorder, node_hops},
    stats::Dist,
};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns BPF run-time statistics on and puts the previous setting back when dropped.
struct StatsEnabled {
    before: String,
}

impl StatsEnabled {
    fn new() -> anyhow::Result<Self> {
        let before = fs::read_to_string(SYSCTL).context("reading kernel.bpf_stats_enabled")?;
        fs::write(SYSCTL, "1").context("setting kernel.bpf_stats_enabled=1")?;
        Ok(Self { before })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = fs::write(SYSCTL, self.before.trim());
    }
}

/// Every program of the object, to name bpftool's 15-character names in full.
const PROGRAMS: &[&str] = &[
    names::TC_INGRESS,
    names::TC_EGRESS,
    names::KFREE_SKB_BTF,
    names::KFREE_SKB_RAW,
    names::KFREE_SKB_KPROBE_SK,
    names::KFREE_SKB_KPROBE,
    names::RETRANSMIT_BTF,
    names::RETRANSMIT_RAW,
    names::SENDTO_ENTER,
    names::SENDTO_EXIT,
    names::SENDMSG_ENTER,
    names::SENDMSG_EXIT,
    names::SENDTO_EXIT_REGS,
    names::SENDMSG_EXIT_REGS,
    names::PACKET_SENDMSG_FEXIT,
    names::UDP_SENDMSG_FEXIT,
    names::RETRANSMIT_SYNACK_BTF,
    names::RETRANSMIT_SYNACK_RAW,
    names::ICMP_SEND_BTF,
    names::ICMP_SEND_RAW,
    names::YARDSTICK_TC,
    names::YARDSTICK_COUNT_TC,
    names::STEP_DEVICE_TC,
    names::STEP_PARSE_TC,
    names::STEP_HOP_TC,
    names::TCP_BAD_CSUM_BTF,
    names::TCP_BAD_CSUM_RAW,
    names::RX_CSUM_FAULT_KPROBE,
];

/// bpftool names programs in full where the kernel has their BTF, else by the kernel's 15
/// characters; those are expanded when only one program starts with them.
fn full_name(short: &str) -> String {
    let mut candidates = PROGRAMS
        .iter()
        .filter(|p| **p == short || (short.len() >= 15 && p.starts_with(short)));
    match (candidates.next(), candidates.next()) {
        (Some(one), None) => (*one).to_owned(),
        _ => short.to_owned(),
    }
}

/// run_time_ns and run_cnt by program name, summed over the programs of one name (the TC
/// programs are one program each, attached to several hooks).
type Totals = BTreeMap<String, (u64, u64)>;

/// Program ids held by a process, from its fd table.
fn prog_ids(pid: u32) -> anyhow::Result<BTreeSet<u64>> {
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// The prefix of the baseline recorder's programs in [`Totals`].
const BASELINE: &str = "baseline:";

/// `baseline`: the ids of the baseline recorder's programs, named with [`BASELINE`] first.
fn snapshot(ids: &BTreeSet<u64>, baseline: &BTreeSet<u64>) -> anyhow::Result<Totals> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("running bpftool prog show")?;
    let progs: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let mut totals = Totals::new();
    for p in progs.as_array().into_iter().flatten() {
        let Some(id) = p["id"].as_u64() else { continue };
        if !ids.contains(&id) && !baseline.contains(&id) {
            continue;
        }
        let mut name = full_name(p["name"].as_str().unwrap_or("?"));
        if baseline.contains(&id) {
            name.insert_str(0, BASELINE);
        }
        let t = totals.entry(name).or_default();
        t.0 += p["run_time_ns"].as_u64().unwrap_or(0);
        t.1 += p["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(totals)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WindowCost {
    /// Runs over every window of this load.
    pub runs: u64,
    /// Mean ns per run, one sample per window.
    pub ns_per_run: Dist,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgramCost {
    pub program: String,
    /// By load: "tcp", "udp64", "faults".
    pub loads: BTreeMap<String, WindowCost>,
}

/// The decomposition: programs that each do a step more than the one before, attached after
/// vxprobe's on the same hooks (and run alone the same way); vxprobe's own programs do it all.
pub const LADDER: &[(&str, &str)] = &[
    (names::YARDSTICK_TC, "nothing (the no-op)"),
    (
        names::YARDSTICK_COUNT_TC,
        "one counter slot by ifindex (the least counter)",
    ),
    (
        names::STEP_DEVICE_TC,
        "looks up its device (MTU, hop slot), reads the length and GSO segments",
    ),
    (
        names::STEP_PARSE_TC,
        "... parses the headers (VLAN, IPv4/IPv6, VXLAN/Geneve to the inner flow)",
    ),
    (names::STEP_HOP_TC, "... counts the hop"),
];

/// The label of vxprobe's own programs in the decomposition.
pub const FULL_STEP: &str = "... counts the flow, reports fragments and oversize (vxprobe)";

/// The windows: iperf3 TCP, iperf3 64-byte UDP, injected faults (refused sends, bad
/// checksums, fragments), and sends that succeed (64-byte UDP datagrams to a closed port).
pub const LOADS: [&str; 4] = ["tcp", "udp64", "faults", "sends"];

/// The ratio vxprobe's TC programs may cost, at most, of the no-op on the same hooks.
pub const RATIO_TARGET: f64 = 1.8;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgCost {
    pub rounds: usize,
    pub seconds_per_window: u32,
    pub programs: Vec<ProgramCost>,
    /// Both TC programs together, per load: mean ns per run (one sample per window).
    pub tc: BTreeMap<String, Dist>,
    /// The no-op TC program on the same hooks in the same windows, per load: what a run
    /// costs before any work, as bpf_stats measures it here.
    pub floor: BTreeMap<String, Dist>,
    /// The least per-hop counter on the same hooks in the same windows, per load: what
    /// counting at all costs here.
    pub least_counter: BTreeMap<String, Dist>,
    /// Every program of [`LADDER`] on the same hooks in the same windows: program -> load ->
    /// mean ns per run (one sample per window).
    pub steps: BTreeMap<String, BTreeMap<String, Dist>>,
    /// Per load: both TC programs' mean ns per run over the no-op's in the same window.
    pub ratio: BTreeMap<String, Dist>,
    /// The baseline recorder's (`--baseline`) TC programs, on the same hooks in the same
    /// windows, per load: mean ns per run, and over the no-op's. Empty without one.
    pub baseline_tc: BTreeMap<String, Dist>,
    pub baseline_ratio: BTreeMap<String, Dist>,
    pub isolated: Option<Isolated>,
}

pub fn run(ctx: &Ctx) -> anyhow::Result<ProgCost> {
    let lab = Lab::build(&LabOptions::default())?;
    let [n1, n2] = &lab.nodes;
    let _server = iperf::Server::start(&n2.pod.netns)?;
    let (rounds, seconds) = if ctx.quick { (2, 2) } else { (3, 3) };
    // Before the statistics are on: they add two clock reads to every run.
    let isolated = isolated(ctx)?;
    let _stats = StatsEnabled::new()?;
    let mut hops = node_hops();
    hops.extend(["-i".into(), "tap0".into()]);
    // The baseline first: each recorder attaches ahead of what is there, so the measured
    // one runs first on every packet (and meets the packet's cache misses first).
    let baseline = match &ctx.baseline {
        Some(path) => Some(Recorder::start(path, &n1.netns, &hops, Output::DevNull)?),
        None => None,
    };
    let baseline_ids = match &baseline {
        Some(rec) => prog_ids(rec.pid())?,
        None => BTreeSet::new(),
    };
    let rec = Recorder::start(&ctx.vxprobe, &n1.netns, &hops, Output::DevNull)?;
    let mut ids = prog_ids(rec.pid())?;
    let yardsticks = Yardsticks::attach(&n1.netns, &hops)?;
    ids.extend(&yardsticks.ids);
    // (load, program) -> per-window (ns per run, runs)
    let mut samples: BTreeMap<(String, String), Vec<(f64, u64)>> = BTreeMap::new();
    let mut tc: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut floor: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut least_counter: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut steps: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut ratio: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut baseline_tc: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut baseline_ratio: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for load in LOADS {
            let before = snapshot(&ids, &baseline_ids)?;
            match load {
                "tcp" => {
                    iperf::client(&n1.pod.netns, n2.pod.ip, Load::Tcp, seconds)?;
                }
                "udp64" => {
                    iperf::client(&n1.pod.netns, n2.pod.ip, Load::Udp { len: 64 }, seconds)?;
                }
                "sends" => {
                    // Sends that succeed: what the send hooks cost every sender of the node.
                    faults::udp_datagrams(
                        &n1.pod.netns,
                        n2.pod.ip.into(),
                        9,
                        64,
                        20_000,
                        faults::Df::Clear,
                    )?;
                }
                _ => {
                    // Refused sends into the tap (EMSGSIZE), bad UDP checksums dropped by
                    // the receiving pod, and fragments on every hop.
                    faults::packet_sends(&n1.netns, "tap0", 2000, 20_000)?;
                    faults::bad_udp_checksums(&n1.pod.netns, n2.pod.ip, 9, 5_000)?;
                    lab.pod_datagrams(9, 4000, 2_000, faults::Df::Clear)?;
                }
            }
            let after = snapshot(&ids, &baseline_ids)?;
            let (mut tc_ns, mut tc_runs) = (0u64, 0u64);
            let (mut base_ns, mut base_runs) = (0u64, 0u64);
            for (name, (ns, cnt)) in &after {
                let (ns0, cnt0) = before.get(name).copied().unwrap_or_default();
                let (dns, dcnt) = (ns - ns0, cnt - cnt0);
                if name.starts_with("vxprobe_tc_") {
                    tc_ns += dns;
                    tc_runs += dcnt;
                }
                if name
                    .strip_prefix(BASELINE)
                    .is_some_and(|n| n.starts_with("vxprobe_tc_"))
                {
                    base_ns += dns;
                    base_runs += dcnt;
                }
                let per_run = if dcnt > 0 {
                    dns as f64 / dcnt as f64
                } else {
                    f64::NAN
                };
                if dcnt > 0 {
                    let yardstick = match name.as_str() {
                        names::YARDSTICK_TC => Some(&mut floor),
                        names::YARDSTICK_COUNT_TC => Some(&mut least_counter),
                        _ => None,
                    };
                    if let Some(yardstick) = yardstick {
                        yardstick.entry(load.to_owned()).or_default().push(per_run);
                    }
                    if LADDER.iter().any(|(p, _)| p == name) {
                        steps
                            .entry(name.clone())
                            .or_default()
                            .entry(load.to_owned())
                            .or_default()
                            .push(per_run);
                    }
                }
                samples
                    .entry((load.to_owned(), name.clone()))
                    .or_default()
                    .push((per_run, dcnt));
            }
            if tc_runs > 0 {
                let tc_per_run = tc_ns as f64 / tc_runs as f64;
                tc.entry(load.to_owned()).or_default().push(tc_per_run);
                if let Some(noop) = floor.get(load).and_then(|f| f.last()) {
                    ratio
                        .entry(load.to_owned())
                        .or_default()
                        .push(tc_per_run / noop);
                }
            }
            if base_runs > 0 {
                let per_run = base_ns as f64 / base_runs as f64;
                baseline_tc
                    .entry(load.to_owned())
                    .or_default()
                    .push(per_run);
                if let Some(noop) = floor.get(load).and_then(|f| f.last()) {
                    baseline_ratio
                        .entry(load.to_owned())
                        .or_default()
                        .push(per_run / noop);
                }
                ctx.log(&format!(
                    "  round {}/{rounds} {load}: baseline TC {per_run:.0} ns/run over {base_runs} runs",
                    round + 1
                ));
            }
            let last = |program: &str| {
                steps
                    .get(program)
                    .and_then(|s| s.get(load))
                    .and_then(|v| v.last())
                    .map_or("-".into(), |ns| format!("{ns:.0}"))
            };
            ctx.log(&format!(
                "  round {}/{rounds} {load}: TC {:.0} ns/run over {tc_runs} runs; steps {}",
                round + 1,
                tc_ns as f64 / tc_runs.max(1) as f64,
                LADDER
                    .iter()
                    .map(|(p, _)| last(p))
                    .collect::<Vec<_>>()
                    .join(" / "),
            ));
        }
    }
    drop(yardsticks);
    rec.stop()?;
    if let Some(baseline) = baseline {
        baseline.stop()?;
    }
    let mut programs: BTreeMap<String, ProgramCost> = BTreeMap::new();
    for ((load, name), windows) in samples {
        let entry = programs.entry(name.clone()).or_insert_with(|| ProgramCost {
            program: name,
            ..Default::default()
        });
        let ns: Vec<f64> = windows.iter().map(|w| w.0).collect();
        entry.loads.insert(
            load,
            WindowCost {
                runs: windows.iter().map(|w| w.1).sum(),
                ns_per_run: Dist::of(&ns),
            },
        );
    }
    let dists = |m: BTreeMap<String, Vec<f64>>| -> BTreeMap<String, Dist> {
        m.into_iter().map(|(k, v)| (k, Dist::of(&v))).collect()
    };
    Ok(ProgCost {
        steps: steps.into_iter().map(|(k, v)| (k, dists(v))).collect(),
        ratio: dists(ratio),
        baseline_tc: dists(baseline_tc),
        baseline_ratio: dists(baseline_ratio),
        isolated: Some(isolated),
        rounds,
        seconds_per_window: seconds,
        programs: programs.into_values().collect(),
        tc: tc.into_iter().map(|(k, v)| (k, Dist::of(&v))).collect(),
        floor: floor.into_iter().map(|(k, v)| (k, Dist::of(&v))).collect(),
        least_counter: least_counter
            .into_iter()
            .map(|(k, v)| (k, Dist::of(&v)))
            .collect(),
    })
}

/// The yardstick TC programs (the no-op, the least counter), attached after vxprobe's on
/// every device the recorder observes in the lab node; detached when dropped.
struct Yardsticks {
    _probes: Probes,
    ids: Vec<u64>,
}

impl Yardsticks {
    /// `hops`: the recorder's `-i` arguments, selected as vxprobe selects them.
    fn attach(netns: &str, hops: &[String]) -> anyhow::Result<Self> {
        let patterns: Vec<String> = hops.iter().filter(|h| *h != "-i").cloned().collect();
        // Devices are listed, and aya attaches by name, in the calling thread's namespace.
        let _inside = faults::enter_netns(netns)
            .with_context(|| format!("entering network namespace {netns}"))?;
        let listed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(devices::list_devices())?;
        let hops = devices::select(&listed, &patterns, &Default::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mode = TcMode::choose(TcAttach::Auto);
        let mut probes = Probes::load(mode, None, &FlowFilter::NONE, Tables::default())?;
        // The steps look their devices up as vxprobe's programs do (their own maps).
        for hop in &hops {
            probes.set_device_info(hop)?;
        }
        let devices = hops
            .into_iter()
            .map(|hop| hop.device.name)
            .collect::<Vec<_>>();
        let mut ids = Vec::new();
        for (name, _) in LADDER {
            let prog = classifier(&mut probes, name)?;
            prog.load().with_context(|| format!("loading {name}"))?;
            for device in &devices {
                for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
                    // After vxprobe's (which hand every packet on), so they see the same
                    // packets.
                    let options = match mode {
                        TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::last()),
                        TcMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
                    };
                    prog.attach_with_options(device, direction, options)
                        .with_context(|| format!("attaching {name} to {device}"))?;
                }
            }
            ids.push(u64::from(prog.info().context("a yardstick's id")?.id()));
        }
        Ok(Self {
            _probes: probes,
            ids,
        })
    }
}

/// The TC program alone, on crafted packets, with `BPF_PROG_TEST_RUN` repeated in the kernel:
/// no traffic, no other work in the measurement, so it is steady where the windows under
/// load are not. Every packet's flow is in the table after the first run, as on a busy hop.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Isolated {
    pub repeat: u32,
    /// Packet -> mean ns per run, one sample per batch of `repeat` runs.
    pub ns_per_run: BTreeMap<String, Dist>,
    /// The no-op TC program the same way (on the pod's packet): the harness's own cost.
    pub floor: Dist,
    /// The least per-hop counter the same way.
    pub least_counter: Dist,
    /// Every program of [`LADDER`] the same way (on the pod's packet).
    pub steps: BTreeMap<String, Dist>,
    /// vxprobe's program over the no-op, per packet: each sample's median over the no-op's.
    pub ratio: BTreeMap<String, f64>,
}

fn frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend(((20 + payload.len()) as u16).to_be_bytes());
    p.extend([0, 1, 0x40, 0, 64, proto, 0, 0]);
    p.extend(src);
    p.extend(dst);
    p.extend(payload);
    p
}

fn ports(sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(sport.to_be_bytes());
    p.extend(dport.to_be_bytes());
    p.resize(len, 0);
    p
}

/// A pod's TCP segment; the same inside VXLAN as the underlay carries it; one over IPv6.
fn packets() -> Vec<(&'static str, Vec<u8>)> {
    let pod = frame(
        0x0800,
        &ipv4(
            6,
            [198, 19, 1, 2],
            [198, 19, 2, 2],
            &ports(40000, 5201, 100),
        ),
    );
    let mut vxlan = vec![0x08, 0, 0, 0, 0, 0x10, 0, 0];
    vxlan.extend(&pod);
    let underlay = frame(
        0x0800,
        &ipv4(17, [198, 18, 0, 1], [198, 18, 0, 2], &{
            let mut udp = ports(51234, 4789, 8);
            udp.extend(&vxlan);
            udp
        }),
    );
    let mut v6 = vec![0x60, 0, 0, 0, 0, 120, 6, 64];
    v6.extend([0xfd, 0, 0, 0x19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    v6.extend([0xfd, 0, 0, 0x19, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    v6.extend(ports(40000, 5201, 100));
    vec![
        ("tcp over ipv4 (pod veth)", pod),
        ("tcp in vxlan (underlay)", underlay),
        ("tcp over ipv6", frame(0x86dd, &v6)),
    ]
}

/// The ifindex of `lo`, the device BPF_PROG_TEST_RUN's packets arrive on.
const LOOPBACK_IFINDEX: u32 = 1;

pub fn isolated(ctx: &Ctx) -> anyhow::Result<Isolated> {
    let (repeat, samples) = if ctx.quick { (50_000, 5) } else { (200_000, 9) };
    let mut probes = Probes::load(TcMode::Tcx, None, &FlowFilter::NONE, Tables::default())?;
    // BPF_PROG_TEST_RUN's packets come from the loopback device: give it a hop, as an
    // attached device has, so the run counts per hop too.
    probes.describe_device(LOOPBACK_IFINDEX, 65536, false)?;
    let mut out = Isolated {
        repeat,
        ..Default::default()
    };
    let prog = classifier(&mut probes, names::TC_INGRESS)?;
    for (name, packet) in packets() {
        let d = test_run(prog, &packet, repeat, samples)?;
        ctx.log(&format!(
            "  isolated, {name}: {} ns per run",
            d.show(1.0, 0)
        ));
        out.ns_per_run.insert(name.to_owned(), d);
    }
    let (_, pod_packet) = &packets()[0];
    for (name, _) in LADDER {
        let step = classifier(&mut probes, name)?;
        step.load().with_context(|| format!("loading {name}"))?;
        let d = test_run(step, pod_packet, repeat, samples)?;
        ctx.log(&format!(
            "  isolated, {name}: {} ns per run",
            d.show(1.0, 0)
        ));
        out.steps.insert((*name).to_owned(), d);
    }
    out.floor = out.steps[names::YARDSTICK_TC].clone();
    out.least_counter = out.steps[names::YARDSTICK_COUNT_TC].clone();
    for (packet, d) in &out.ns_per_run {
        out.ratio
            .insert(packet.clone(), d.median / out.floor.median.max(1e-9));
    }
    Ok(out)
}

fn classifier<'a>(probes: &'a mut Probes, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    Ok(probes
        .ebpf_mut()
        .program_mut(name)
        .with_context(|| format!("no program {name} in the object"))?
        .try_into()?)
}

/// Mean ns per run of `prog` on `packet`, one sample per batch of `repeat` runs.
fn test_run(
    prog: &SchedClassifier,
    packet: &[u8],
    repeat: u32,
    samples: usize,
) -> anyhow::Result<Dist> {
    let mut ns = Vec::new();
    for _ in 0..samples {
        let result = prog.test_run(TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..Default::default()
        })?;
        ns.push(result.duration.as_nanos() as f64);
    }
    Ok(Dist::of(&ns))
}
