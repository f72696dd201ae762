//! Measurements 1 and 2: what observing costs the traffic. iperf3 pod to pod over the lab's
//! VXLAN, with nothing attached, with `vxprobe record` on every hop of the sending node (every
//! hook attached), and with `tcpdump -w` on the same devices; the arms interleave round by
//! round (the order rotates), and each round's observed/bare ratio is one sample.

use std::time::{Duration, Instant};

use serde::Serialize;
use vxprobe::lab::{Lab, LabOptions};

use crate::{
    Ctx,
    iperf::{self, Load},
    recorder::{Output, Recorder, node_hops},
    stats::{Dist, rotation},
    tcpdump::Tcpdump,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    Bare,
    Vxprobe,
    Tcpdump,
}

const ARMS: [Arm; 3] = [Arm::Bare, Arm::Vxprobe, Arm::Tcpdump];

/// One arm over every round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArmResult {
    /// TCP: bit/s received; UDP: datagrams/s received.
    pub rate: Dist,
    pub runs: Vec<f64>,
    /// CPU the observer used while traffic ran, in % of one core.
    pub observer_cpu_pct: Dist,
    /// UDP: share of the datagrams sent that never arrived.
    pub lost_share: Dist,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    pub load: String,
    pub unit: &'static str,
    pub rounds: usize,
    pub seconds_per_run: u32,
    pub bare: ArmResult,
    pub vxprobe: ArmResult,
    pub tcpdump: ArmResult,
    /// Per round: vxprobe / bare, tcpdump / bare.
    pub ratio_vxprobe: Dist,
    pub ratio_tcpdump: Dist,
    /// Events vxprobe reported lost (ring buffer full) over every run.
    pub vxprobe_lost_events: u64,
    /// Packets tcpdump said the kernel dropped before it could read them, over every run.
    pub tcpdump_dropped: u64,
    pub tcpdump_captured: u64,
    /// Runs whose order in the round, for the record: e.g. ["bare", "vxprobe", "tcpdump"].
    pub orders: Vec<Vec<Arm>>,
}

pub fn tcp(ctx: &Ctx) -> anyhow::Result<Throughput> {
    run(ctx, Load::Tcp, "iperf3 TCP, 1 stream", "bit/s")
}

pub fn udp(ctx: &Ctx) -> anyhow::Result<Throughput> {
    run(
        ctx,
        Load::Udp { len: 64 },
        "iperf3 UDP, 64-byte datagrams, -b 0",
        "datagrams/s received",
    )
}

fn run(ctx: &Ctx, load: Load, label: &str, unit: &'static str) -> anyhow::Result<Throughput> {
    let lab = Lab::build(&LabOptions::default())?;
    let [n1, n2] = &lab.nodes;
    let _server = iperf::Server::start(&n2.pod.netns)?;
    let (rounds, seconds) = if ctx.quick { (4, 2) } else { (10, 2) };
    let mut out = Throughput {
        load: label.to_owned(),
        unit,
        rounds,
        seconds_per_run: seconds,
        ..Default::default()
    };
    // A first run warms caches, ARP-free paths and the iperf3 binary; it is not counted.
    iperf::client(&n1.pod.netns, n2.pod.ip, load, 1)?;
    let mut by_arm: [Vec<(f64, f64, f64)>; 3] = Default::default();
    for round in 0..rounds {
        let order = rotation(&ARMS, round);
        for &arm in &order {
            let (rate, cpu, lost) = match arm {
                Arm::Bare => {
                    let r = iperf::client(&n1.pod.netns, n2.pod.ip, load, seconds)?;
                    (r.rate, 0.0, r.lost_share)
                }
                Arm::Vxprobe => {
                    let rec =
                        Recorder::start(&ctx.vxprobe, &n1.netns, &node_hops(), Output::DevNull)?;
                    let (cpu0, t0) = (rec.cpu_time()?, Instant::now());
                    let r = iperf::client(&n1.pod.netns, n2.pod.ip, load, seconds)?;
                    let cpu = pct(rec.cpu_time()? - cpu0, t0.elapsed());
                    let done = rec.stop()?;
                    out.vxprobe_lost_events += done.lines.lost;
                    (r.rate, cpu, r.lost_share)
                }
                Arm::Tcpdump => {
                    let dump = Tcpdump::start(&n1.netns, &["cali0", "vxlan.calico", "eth0"])?;
                    let (cpu0, t0) = (dump.cpu_time(), Instant::now());
                    let r = iperf::client(&n1.pod.netns, n2.pod.ip, load, seconds)?;
                    let cpu = pct(dump.cpu_time() - cpu0, t0.elapsed());
                    let stats = dump.stop()?;
                    out.tcpdump_dropped += stats.dropped_by_kernel;
                    out.tcpdump_captured += stats.captured;
                    (r.rate, cpu, r.lost_share)
                }
            };
            ctx.log(&format!(
                "  round {}/{rounds} {arm:?}: {} {unit}",
                round + 1,
                human(rate)
            ));
            by_arm[arm as usize].push((rate, cpu, lost));
        }
        out.orders.push(order);
    }
    let arm = |i: usize| {
        let runs: Vec<f64> = by_arm[i].iter().map(|r| r.0).collect();
        ArmResult {
            rate: Dist::of(&runs),
            runs,
            observer_cpu_pct: Dist::of(&by_arm[i].iter().map(|r| r.1).collect::<Vec<_>>()),
            lost_share: Dist::of(&by_arm[i].iter().map(|r| r.2).collect::<Vec<_>>()),
        }
    };
    out.bare = arm(Arm::Bare as usize);
    out.vxprobe = arm(Arm::Vxprobe as usize);
    out.tcpdump = arm(Arm::Tcpdump as usize);
    let ratios = |i: usize| -> Vec<f64> {
        (0..rounds)
            .map(|r| by_arm[i][r].0 / by_arm[Arm::Bare as usize][r].0)
            .collect()
    };
    out.ratio_vxprobe = Dist::of(&ratios(Arm::Vxprobe as usize));
    out.ratio_tcpdump = Dist::of(&ratios(Arm::Tcpdump as usize));
    Ok(out)
}

/// CPU time as a share of wall time, in % of one core.
pub fn pct(cpu: Duration, wall: Duration) -> f64 {
    100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
}

pub fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2} G", x / 1e9),
        x if x >= 1e6 => format!("{:.2} M", x / 1e6),
        x if x >= 1e3 => format!("{:.1} k", x / 1e3),
        x => format!("{x:.0}"),
    }
}
