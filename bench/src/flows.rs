//! Measurement 5: user-space CPU and memory of `vxprobe record` at 1k, 10k and 100k live
//! flows. Pod 1 sends one UDP datagram per flow per second from a raw socket (flow k: its own
//! source/destination port pair), pod 2 reads them; `record` watches every hop of the sending
//! node (each flow is an entry at cali0 ingress, vxlan.calico egress and eth0 egress) with a
//! flow table big enough for all of them. CPU is utime+stime over a steady window; memory is
//! VmRSS at its end and VmHWM (the peak since start).

use std::time::{Duration, Instant};

use serde::Serialize;
use vxprobe::lab::{Lab, LabOptions};

use crate::{
    Ctx,
    recorder::{Output, Recorder, node_hops},
    stats::{Dist, rotation},
    throughput::pct,
    traffic::{self, FLOW_PORT_BASE},
};

/// Flow table entries: every flow at three hops, and room to spare.
pub const MAX_FLOWS_ARG: u32 = 524_288;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Point {
    pub flows: u32,
    /// `flow` lines per interval `record` wrote (each flow once per hop it crossed).
    pub flow_lines_per_interval: Dist,
    /// Datagrams per second the pods exchanged during the window.
    pub sent_rate: Dist,
    pub received_rate: Dist,
    pub cpu_pct: Dist,
    /// Recorder CPU per interval closed during the window.
    pub cpu_ms_per_interval: Dist,
    /// Wall time per interval closed during the window (1 s asked for).
    pub interval_s: Dist,
    pub rss_mib: Dist,
    pub hwm_mib: Dist,
    /// The anonymous part of RSS (the heap); the rest is mostly the ring buffer's mapping.
    pub anon_mib: Dist,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Flows {
    pub max_flows_arg: u32,
    pub window_seconds: f64,
    pub rounds: usize,
    pub points: Vec<Point>,
}

struct Sample {
    lines_per_interval: f64,
    sent_rate: f64,
    received_rate: f64,
    cpu_pct: f64,
    cpu_ms_per_interval: f64,
    interval_s: f64,
    rss: f64,
    hwm: f64,
    anon: f64,
}

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(ctx: &Ctx) -> anyhow::Result<Flows> {
    let lab = Lab::build(&LabOptions::default())?;
    let [n1, n2] = &lab.nodes;
    let (rounds, window) = if ctx.quick { (1, 3.0) } else { (2, 5.0) };
    let counts = [1_000u32, 10_000, 100_000];
    let mut args = node_hops();
    args.extend(["--max-flows".into(), MAX_FLOWS_ARG.to_string()]);
    let mut samples: Vec<Vec<Sample>> = counts.iter().map(|_| Vec::new()).collect();
    let ports = FLOW_PORT_BASE as u16..(FLOW_PORT_BASE + 3) as u16;
    let sink = traffic::sink(&n2.pod.netns, ports);
    for round in 0..rounds {
        for i in rotation(&[0usize, 1, 2], round) {
            let n = counts[i];
            let rec = Recorder::start(
                &ctx.vxprobe,
                &n1.netns,
                &args,
                // Hop lines mark the intervals: six per interval (three hops, two ways).
                Output::Counted {
                    marker: Some("{\"kind\":\"hop\"".into()),
                },
            )?;
            let period = Duration::from_secs(1);
            let limit = Duration::from_secs_f64(window + 30.0);
            let flows = traffic::flows(&n1.pod.netns, n2.pod.ip, n, period, limit);
            // Every flow has sent at least once (the generator may be slower than one round a
            // second on a busy machine), and the recorder has closed an interval since.
            let warm = Instant::now();
            while flows.count.load(relaxed()) < u64::from(n)
                && warm.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Two intervals closed since every flow sent (six hop lines each): the window
            // starts with the flows in the kernel's tables and in the recorder's record.
            let hops_warm = rec.marked();
            let wait = Instant::now();
            while rec.marked() < hops_warm + 12 && wait.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let (sent0, recv0) = (flows.count.load(relaxed()), sink.count.load(relaxed()));
            let (cpu0, t0, hops0) = (rec.cpu_time()?, Instant::now(), rec.marked());
            std::thread::sleep(Duration::from_secs_f64(window));
            let cpu_time = rec.cpu_time()? - cpu0;
            let cpu = pct(cpu_time, t0.elapsed());
            let closed = (rec.marked() - hops0) as f64 / 6.0;
            let wall = t0.elapsed().as_secs_f64();
            let sent = flows.count.load(relaxed()) - sent0;
            let received = sink.count.load(relaxed()) - recv0;
            let mem = rec.memory()?;
            let flows_total = flows.stop()?;
            let done = rec.stop()?;
            let intervals = done.lines.kind("hop") as f64 / 6.0;
            ctx.log(&format!(
                "    {intervals} intervals, {} flow lines, {flows_total} datagrams sent in all",
                done.lines.kind("flow"),
            ));
            let sample = Sample {
                lines_per_interval: done.lines.kind("flow") as f64 / intervals.max(1.0),
                sent_rate: sent as f64 / wall,
                received_rate: received as f64 / wall,
                cpu_pct: cpu,
                cpu_ms_per_interval: cpu_time.as_secs_f64() * 1e3 / closed.max(1.0),
                interval_s: if closed > 0.0 {
                    wall / closed
                } else {
                    f64::NAN
                },
                rss: mem.rss as f64 / MIB,
                hwm: mem.hwm as f64 / MIB,
                anon: mem.anon as f64 / MIB,
            };
            ctx.log(&format!(
                "  {n:>6} flows: {:.0} flow lines/interval, sent {:.0}/s, CPU {:.1}%, RSS {:.1} MiB (anon {:.1}), peak {:.1} MiB",
                sample.lines_per_interval, sample.sent_rate, cpu, sample.rss, sample.anon, sample.hwm
            ));
            samples[i].push(sample);
        }
    }
    sink.stop()?;
    let dist = |v: &[Sample], f: fn(&Sample) -> f64| Dist::of(&v.iter().map(f).collect::<Vec<_>>());
    Ok(Flows {
        max_flows_arg: MAX_FLOWS_ARG,
        window_seconds: window,
        rounds,
        points: counts
            .iter()
            .zip(&samples)
            .map(|(&flows, s)| Point {
                flows,
                flow_lines_per_interval: dist(s, |s| s.lines_per_interval),
                sent_rate: dist(s, |s| s.sent_rate),
                received_rate: dist(s, |s| s.received_rate),
                cpu_pct: dist(s, |s| s.cpu_pct),
                cpu_ms_per_interval: dist(s, |s| s.cpu_ms_per_interval),
                interval_s: dist(s, |s| s.interval_s),
                rss_mib: dist(s, |s| s.rss),
                hwm_mib: dist(s, |s| s.hwm),
                anon_mib: dist(s, |s| s.anon),
            })
            .collect(),
    })
}

fn relaxed() -> std::sync::atomic::Ordering {
    std::sync::atomic::Ordering::Relaxed
}
