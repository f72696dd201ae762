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
use serde::Serialize;
use serde_json::Value;
use vxprobe::lab::{Lab, LabOptions, faults};
use vxprobe_common::names;

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
    names::RETRANSMIT_KPROBE,
    names::SENDTO_ENTER,
    names::SENDTO_EXIT,
    names::SENDMSG_ENTER,
    names::SENDMSG_EXIT,
    names::PACKET_SENDMSG_FEXIT,
    names::UDP_SENDMSG_FEXIT,
    names::RETRANSMIT_SYNACK_BTF,
    names::RETRANSMIT_SYNACK_RAW,
    names::ICMP_SEND_BTF,
    names::ICMP_SEND_RAW,
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

fn snapshot(ids: &BTreeSet<u64>) -> anyhow::Result<Totals> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("running bpftool prog show")?;
    let progs: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let mut totals = Totals::new();
    for p in progs.as_array().into_iter().flatten() {
        let Some(id) = p["id"].as_u64() else { continue };
        if !ids.contains(&id) {
            continue;
        }
        let name = full_name(p["name"].as_str().unwrap_or("?"));
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

#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgCost {
    pub rounds: usize,
    pub seconds_per_window: u32,
    pub programs: Vec<ProgramCost>,
    /// Both TC programs together, per load: mean ns per run (one sample per window).
    pub tc: BTreeMap<String, Dist>,
}

pub fn run(ctx: &Ctx) -> anyhow::Result<ProgCost> {
    let lab = Lab::build(&LabOptions::default())?;
    let [n1, n2] = &lab.nodes;
    let _server = iperf::Server::start(&n2.pod.netns)?;
    let (rounds, seconds) = if ctx.quick { (2, 2) } else { (3, 3) };
    let _stats = StatsEnabled::new()?;
    let mut hops = node_hops();
    hops.extend(["-i".into(), "tap0".into()]);
    let rec = Recorder::start(&ctx.vxprobe, &n1.netns, &hops, Output::DevNull)?;
    let ids = prog_ids(rec.pid())?;
    // (load, program) -> per-window (ns per run, runs)
    let mut samples: BTreeMap<(String, String), Vec<(f64, u64)>> = BTreeMap::new();
    let mut tc: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for load in ["tcp", "udp64", "faults"] {
            let before = snapshot(&ids)?;
            match load {
                "tcp" => {
                    iperf::client(&n1.pod.netns, n2.pod.ip, Load::Tcp, seconds)?;
                }
                "udp64" => {
                    iperf::client(&n1.pod.netns, n2.pod.ip, Load::Udp { len: 64 }, seconds)?;
                }
                _ => {
                    // Refused sends into the tap (EMSGSIZE), bad UDP checksums dropped by
                    // the receiving pod, and fragments on every hop.
                    faults::packet_sends(&n1.netns, "tap0", 2000, 20_000)?;
                    faults::bad_udp_checksums(&n1.pod.netns, n2.pod.ip, 9, 5_000)?;
                    faults::udp_datagrams(
                        &n1.pod.netns,
                        n2.pod.ip.into(),
                        9,
                        4000,
                        2_000,
                        faults::Df::Clear,
                    )?;
                }
            }
            let after = snapshot(&ids)?;
            let (mut tc_ns, mut tc_runs) = (0u64, 0u64);
            for (name, (ns, cnt)) in &after {
                let (ns0, cnt0) = before.get(name).copied().unwrap_or_default();
                let (dns, dcnt) = (ns - ns0, cnt - cnt0);
                if name.starts_with("vxprobe_tc_") {
                    tc_ns += dns;
                    tc_runs += dcnt;
                }
                let per_run = if dcnt > 0 {
                    dns as f64 / dcnt as f64
                } else {
                    f64::NAN
                };
                samples
                    .entry((load.to_owned(), name.clone()))
                    .or_default()
                    .push((per_run, dcnt));
            }
            if tc_runs > 0 {
                tc.entry(load.to_owned())
                    .or_default()
                    .push(tc_ns as f64 / tc_runs as f64);
            }
            ctx.log(&format!(
                "  round {}/{rounds} {load}: TC {:.0} ns/run over {tc_runs} runs",
                round + 1,
                tc_ns as f64 / tc_runs.max(1) as f64
            ));
        }
    }
    rec.stop()?;
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
    Ok(ProgCost {
        rounds,
        seconds_per_window: seconds,
        programs: programs.into_values().collect(),
        tc: tc.into_iter().map(|(k, v)| (k, Dist::of(&v))).collect(),
    })
}
