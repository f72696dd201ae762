//! `vxprobe-bench`: what vxprobe costs the node it observes, and what it costs itself. Run by
//! `cargo xtask bench` (which builds it and vxprobe first), as root: it builds network
//! namespace labs (`vxprobe::lab`, 198.18.0.0/15 only, deleted afterwards), runs every
//! measurement with repeated, interleaved runs, and writes a markdown and a JSON report.
//!
//! One module per measurement: [`throughput`] (1, 2), [`progcost`] (3), [`events`] (4),
//! [`flows`] (5), [`attach`] (6), [`render`] (7), [`agent`] (8), [`pods`] (9); [`report`] writes
//! the results.

mod agent;
mod attach;
mod events;
mod flows;
mod iperf;
mod pods;
mod procfs;
mod progcost;
mod recorder;
mod render;
mod report;
mod stats;
mod tcpdump;
mod throughput;
mod traffic;

use std::{
    path::PathBuf,
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(about = "vxprobe's benchmarks (run through `cargo xtask bench`)")]
struct Args {
    /// Fewer rounds and shorter runs (about a third of the time).
    #[arg(long)]
    quick: bool,
    /// The vxprobe binary to measure.
    #[arg(long, value_name = "PATH")]
    vxprobe: PathBuf,
    /// Where reports go: a timestamped pair and latest.md/latest.json.
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: PathBuf,
    /// A second vxprobe binary (another build: the "before" of a change) recording on the same
    /// hooks in the same windows, for measurement 3: its TC programs' cost and ratio to the
    /// no-op are reported beside the measured one's.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Run only these measurements (comma-separated); the report then has only them.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Measure>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Measure {
    Tcp,
    Udp,
    Progcost,
    Events,
    Flows,
    Attach,
    Render,
    Agent,
    Pods,
}

const NICE: i32 = -10;

/// What every measurement gets.
pub struct Ctx {
    pub vxprobe: PathBuf,
    pub baseline: Option<PathBuf>,
    pub quick: bool,
    started: Instant,
}

impl Ctx {
    pub fn log(&self, line: &str) {
        eprintln!("[{:>6.1}s] {line}", self.started.elapsed().as_secs_f64());
    }
}

fn main() -> anyhow::Result<()> {
    // The pod index measured in a process of its own (see `pods`).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("pods-child") {
        return pods::child(&argv[2..]);
    }
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load eBPF programs and build network namespaces: run as root");
    }
    let vxprobe = std::fs::canonicalize(&args.vxprobe)
        .with_context(|| format!("no vxprobe binary at {}", args.vxprobe.display()))?;
    let baseline = match &args.baseline {
        Some(path) => Some(
            std::fs::canonicalize(path)
                .with_context(|| format!("no baseline binary at {}", path.display()))?,
        ),
        None => None,
    };
    let ctx = Ctx {
        vxprobe,
        baseline,
        quick: args.quick,
        started: Instant::now(),
    };
    // Other work on this machine (builds, tests) competes for the CPUs; at nice -10 the
    // benchmark, and everything it starts (iperf3, vxprobe, tcpdump inherit it), is less at
    // its mercy. The arms compete with each other as they would on a node.
    // SAFETY: setpriority has no memory arguments.
    let reniced = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } == 0;
    vxprobe::lab::Lab::remove_stale()?;
    let selected = |m: Measure| args.only.is_empty() || args.only.contains(&m);

    let mut report = report::Report::begin(args.quick, SystemTime::now());
    report.nice = if reniced { NICE } else { 0 };
    let cpu_start = procfs::CpuSnapshot::take();
    ctx.log(&format!(
        "vxprobe-bench{}: load average {:?} on {} CPUs",
        if args.quick { " --quick" } else { "" },
        report.machine.load_before,
        report.machine.cpus
    ));
    macro_rules! measure {
        ($m:expr, $title:expr, $field:ident, $call:expr) => {
            if selected($m) {
                ctx.log($title);
                let t0 = Instant::now();
                match $call {
                    Ok(result) => report.$field = Some(result),
                    Err(e) => {
                        ctx.log(&format!("  failed: {e:#}"));
                        report
                            .errors
                            .insert(format!("{:?}", $m).to_lowercase(), format!("{e:#}"));
                    }
                }
                report.section_seconds.insert(
                    format!("{:?}", $m).to_lowercase(),
                    t0.elapsed().as_secs_f64(),
                );
            }
        };
    }
    measure!(
        Measure::Tcp,
        "1. TCP throughput: bare / vxprobe / tcpdump",
        tcp,
        throughput::tcp(&ctx)
    );
    measure!(
        Measure::Udp,
        "2. small-packet UDP: bare / vxprobe / tcpdump",
        udp,
        throughput::udp(&ctx)
    );
    measure!(
        Measure::Progcost,
        "3. ns per program run (bpf_stats)",
        prog_cost,
        progcost::run(&ctx)
    );
    measure!(
        Measure::Events,
        "4. anomaly events per second",
        events,
        events::run(&ctx)
    );
    measure!(
        Measure::Flows,
        "5. record's CPU and memory at 1k/10k/100k flows",
        flows,
        flows::run(&ctx)
    );
    measure!(
        Measure::Attach,
        "6. time to attach",
        attach,
        attach::run(&ctx)
    );
    measure!(
        Measure::Render,
        "7. top at 10k flows",
        render,
        render::run(&ctx)
    );
    measure!(
        Measure::Pods,
        "8. the pod index at 1,000 pods",
        pods,
        pods::run(&ctx)
    );

    measure!(
        Measure::Agent,
        "8. agent: idle RSS, RSS at 10k flows, CPU per scrape at 10k series",
        agent,
        agent::run(&ctx)
    );

    report.finish(SystemTime::now(), &cpu_start, ctx.started.elapsed());
    let written = report.write(&args.out)?;
    for path in written {
        ctx.log(&format!("wrote {}", path.display()));
    }
    if !report.errors.is_empty() {
        bail!("{} measurement(s) failed", report.errors.len());
    }
    Ok(())
}
