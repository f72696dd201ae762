//! Measurement 4: anomaly events per second the pipeline sustains before `lost` appears.
//! Refused sends into the lab's tap (TSO/GSO off, frames above its MTU: EMSGSIZE, incident
//! #4) at offered rates that step up, each step against a fresh `vxprobe record` whose JSON
//! lines stream into a pipe the benchmark counts. Delivered = `oversize` lines of our sender;
//! lost = the `lost` lines' counts; the generator knows how many sends it made refused, so the
//! accounting (delivered + lost = generated) is checked, not assumed.

use std::time::{Duration, Instant};

use serde::Serialize;
use vxprobe::lab::{Lab, LabOptions, faults};

use crate::{
    Ctx,
    recorder::{Output, Recorder, node_hops},
    throughput::{human, pct},
    traffic::{self, Generated},
};

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// What was asked for (events/s), `None`: as fast as the sender threads go.
    pub offered: Option<f64>,
    pub threads: usize,
    /// Refused sends per second the generator achieved.
    pub generated_rate: f64,
    pub generated: u64,
    pub delivered: u64,
    pub lost: u64,
    /// lost / generated.
    pub lost_share: f64,
    /// (delivered + lost) / generated: 1.0 when every event is either delivered or counted.
    pub accounted: f64,
    /// Delivered events per second of generation.
    pub delivered_rate: f64,
    /// vxprobe's CPU over the generation, in % of one core.
    pub vxprobe_cpu_pct: f64,
    /// The summary line agrees with the lines counted.
    pub summary_events: Option<u64>,
    pub summary_lost: Option<u64>,
}

/// The pipeline alone: a backlog of events made while the recorder was stopped (SIGSTOP),
/// then drained after SIGCONT with no generator running.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Drain {
    pub ring_size: u32,
    pub events: u64,
    pub lost: u64,
    /// Events delivered per second of wall time while draining.
    pub rate: f64,
    /// Events per second of the recorder's CPU time (user + system) while draining.
    pub rate_per_cpu_second: f64,
    /// Microseconds of recorder CPU per event.
    pub cpu_us_per_event: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Events {
    pub drain: Option<Drain>,
    pub ring_size: u32,
    pub seconds_per_step: f64,
    pub steps: Vec<Step>,
    /// The highest generated rate at which nothing was lost.
    pub sustained_rate: f64,
    /// Whether every step accounted for every event (delivered + lost = generated, +-0.1%).
    pub every_loss_counted: bool,
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Events> {
    let lab = Lab::build(&LabOptions::default())?;
    let n1 = &lab.nodes[0];
    // Incident #4's tap: segmentation off, so frames above its MTU are refused.
    faults::set_offload(&n1.netns, "tap0", "tso", false)?;
    faults::set_offload(&n1.netns, "tap0", "gso", false)?;
    let seconds = if ctx.quick { 2.0 } else { 3.0 };
    let steps: &[(Option<f64>, usize)] = if ctx.quick {
        &[
            (Some(100e3), 1),
            (Some(400e3), 1),
            (Some(1e6), 1),
            (None, 2),
        ]
    } else {
        &[
            (Some(100e3), 1),
            (Some(200e3), 1),
            (Some(400e3), 1),
            (Some(600e3), 1),
            (Some(800e3), 1),
            (Some(1e6), 1),
            (None, 1),
            (None, 2),
        ]
    };
    let ring_size: u32 = 8 << 20;
    let mut hops = node_hops();
    hops.extend(["-i", "tap0", "--ring-size"].map(String::from));
    hops.push(ring_size.to_string());
    // Our sender's events name our process.
    let marker = format!("\"pid\":{},", std::process::id());
    let mut out = Events {
        ring_size,
        seconds_per_step: seconds,
        ..Default::default()
    };
    for &(offered, threads) in steps {
        let rec = Recorder::start(
            &ctx.vxprobe,
            &n1.netns,
            &hops,
            Output::Counted {
                marker: Some(marker.clone()),
            },
        )?;
        let cpu0 = rec.cpu_time()?;
        let t0 = Instant::now();
        let senders: Vec<_> = (0..threads)
            .map(|_| {
                let ns = n1.netns.clone();
                let rate = offered.map(|r| r / threads as f64);
                std::thread::spawn(move || {
                    traffic::refused_sends(
                        &ns,
                        "tap0",
                        2000,
                        rate,
                        Duration::from_secs_f64(seconds),
                    )
                })
            })
            .collect();
        let mut generated = Generated::default();
        for s in senders {
            let g = s.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
            generated.attempts += g.attempts;
            generated.refused += g.refused;
            generated.elapsed = generated.elapsed.max(g.elapsed);
        }
        let cpu = pct(rec.cpu_time()? - cpu0, t0.elapsed());
        // Stopping drains what is still in the ring before the last line.
        let done = rec.stop()?;
        let lines = &done.lines;
        let (delivered, lost) = (lines.marked, lines.lost);
        let g = generated.refused.max(1) as f64;
        let step = Step {
            offered,
            threads,
            generated_rate: generated.refused as f64 / generated.elapsed.as_secs_f64(),
            generated: generated.refused,
            delivered,
            lost,
            lost_share: lost as f64 / g,
            accounted: (delivered + lost) as f64 / g,
            delivered_rate: delivered as f64 / generated.elapsed.as_secs_f64(),
            vxprobe_cpu_pct: cpu,
            summary_events: lines.summary_events("oversize"),
            summary_lost: lines.summary_lost(),
        };
        ctx.log(&format!(
            "  offered {:>8}/s x{threads}: generated {}/s, delivered {}/s, lost {:.2}%, accounted {:.4}, vxprobe {:.0}% CPU",
            offered.map_or("max".into(), human),
            human(step.generated_rate),
            human(step.delivered_rate),
            step.lost_share * 100.0,
            step.accounted,
            cpu
        ));
        out.steps.push(step);
    }
    out.drain = Some(drain(ctx, &n1.netns, &marker)?);
    out.sustained_rate = out
        .steps
        .iter()
        .filter(|s| s.lost == 0)
        .map(|s| s.generated_rate)
        .fold(0.0, f64::max);
    out.every_loss_counted = out.steps.iter().all(|s| (s.accounted - 1.0).abs() <= 0.001);
    Ok(out)
}

/// Fills a large ring while the recorder is stopped, then times the drain.
fn drain(ctx: &Ctx, netns: &str, marker: &str) -> anyhow::Result<Drain> {
    let ring_size: u32 = 256 << 20;
    let events: u64 = if ctx.quick { 500_000 } else { 1_500_000 };
    let mut args = node_hops();
    args.extend(["-i", "tap0", "--ring-size"].map(String::from));
    args.push(ring_size.to_string());
    let rec = Recorder::start(
        &ctx.vxprobe,
        netns,
        &args,
        Output::Counted {
            marker: Some(marker.to_owned()),
        },
    )?;
    rec.signal(libc::SIGSTOP);
    let mut generated = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while generated < events && Instant::now() < deadline {
        let senders: Vec<_> = (0..2)
            .map(|_| {
                let ns = netns.to_owned();
                std::thread::spawn(move || {
                    traffic::refused_sends(&ns, "tap0", 2000, None, Duration::from_millis(500))
                })
            })
            .collect();
        for s in senders {
            generated += s
                .join()
                .map_err(|_| anyhow::anyhow!("sender panicked"))??
                .refused;
        }
    }
    let cpu0 = rec.cpu_time()?;
    let t0 = Instant::now();
    rec.signal(libc::SIGCONT);
    // The last few KiB of lines wait for the interval's flush: stop the clock at 99.9%.
    let target = generated - generated / 1000;
    while rec.marked() < target && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let wall = t0.elapsed();
    let cpu = rec.cpu_time()? - cpu0;
    let done = rec.stop()?;
    let delivered = done.lines.marked;
    let out = Drain {
        ring_size,
        events: generated,
        lost: done.lines.lost,
        rate: target as f64 / wall.as_secs_f64(),
        rate_per_cpu_second: target as f64 / cpu.as_secs_f64().max(1e-9),
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / target as f64,
    };
    ctx.log(&format!(
        "  drain of {generated} events ({delivered} delivered, {} lost): {}/s, {:.2} us of CPU each",
        out.lost,
        human(out.rate),
        out.cpu_us_per_event
    ));
    Ok(out)
}
