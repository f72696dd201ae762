//! The report: one JSON document (everything measured, every run) and a markdown page
//! (medians with their spread, the targets and whether each holds), written as a timestamped
//! pair and as `latest.json`/`latest.md`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    agent::AgentCost, attach::Attach, events::Events, flows::Flows, procfs, progcost::ProgCost,
    render::Render, throughput::Throughput,
};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    /// Load averages (1, 5, 15 min) when the run started and ended.
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    /// Share of the machine's CPU time that was busy during the run (the benchmarks
    /// included): other work on the machine shows as the part the benchmarks do not explain.
    pub busy_share: f64,
    /// `uptime` when the run started and ended.
    pub uptime: String,
    pub uptime_after: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: &'static str,
    pub goal: &'static str,
    pub measured: String,
    /// `None`: not measured in this run.
    pub holds: Option<bool>,
    /// What this run's other figures say about a target that does not hold.
    pub why_not: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub schema: u32,
    pub started: String,
    pub finished: String,
    pub wall_seconds: f64,
    pub quick: bool,
    /// The benchmark's nice value (its children inherit it).
    pub nice: i32,
    pub git: String,
    pub machine: Machine,
    pub targets: Vec<Target>,
    pub tcp: Option<Throughput>,
    pub udp: Option<Throughput>,
    pub prog_cost: Option<ProgCost>,
    pub events: Option<Events>,
    pub flows: Option<Flows>,
    pub attach: Option<Attach>,
    pub render: Option<Render>,
    pub agent: Option<AgentCost>,
    pub pods: Option<crate::pods::Pods>,
    pub section_seconds: BTreeMap<String, f64>,
    pub errors: BTreeMap<String, String>,
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl Report {
    pub fn begin(quick: bool, now: SystemTime) -> Self {
        let dirty =
            !command_line("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        Self {
            schema: 1,
            started: rfc3339(now),
            quick,
            git: format!(
                "{}{}",
                command_line("git", &["rev-parse", "--short=12", "HEAD"]),
                if dirty { "+uncommitted" } else { "" }
            ),
            machine: Machine {
                cpus: procfs::online_cpus(),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                load_before: procfs::load_average(),
                uptime: command_line("uptime", &[]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub fn finish(&mut self, now: SystemTime, cpu_start: &procfs::CpuSnapshot, wall: Duration) {
        self.finished = rfc3339(now);
        self.wall_seconds = wall.as_secs_f64();
        self.machine.load_after = procfs::load_average();
        self.machine.uptime_after = command_line("uptime", &[]);
        self.machine.busy_share = procfs::CpuSnapshot::take().busy_since(cpu_start);
        self.targets = self.targets();
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        t.push(Target {
            name: "throughput",
            goal: "TCP throughput with everything attached >= 0.98 of bare",
            measured: self.tcp.as_ref().map_or("-".into(), |x| {
                format!(
                    "{} (median of per-round ratios)",
                    x.ratio_vxprobe.show(1.0, 3)
                )
            }),
            holds: self.tcp.as_ref().map(|x| x.ratio_vxprobe.median >= 0.98),
            why_not: self.tcp.as_ref().map(|x| {
                format!(
                    "rounds spread {:.3}-{:.3}: the bare arm varies as much as the ratio misses by",
                    x.ratio_vxprobe.min, x.ratio_vxprobe.max
                )
            }),
        });
        t.push(self.tc_ratio_target());
        t.push(self.kernel_wide_target());
        t.push(Target {
            name: "events",
            goal: ">= 1 M anomaly events/s on 2 cores, every loss counted",
            measured: self.events.as_ref().map_or("-".into(), |e| {
                format!(
                    "{:.0} k/s without loss; every loss counted: {}",
                    e.sustained_rate / 1e3,
                    if e.every_loss_counted { "yes" } else { "no" }
                )
            }),
            holds: self
                .events
                .as_ref()
                .map(|e| e.sustained_rate >= 1e6 && e.every_loss_counted),
            why_not: self.events.as_ref().map(|e| {
                let one_sender = e
                    .steps
                    .iter()
                    .find(|s| s.offered.is_none() && s.threads == 1)
                    .map_or("-".into(), |s| format!("{:.0} k/s", s.generated_rate / 1e3));
                let drain = e.drain.as_ref().map_or("-".into(), |d| {
                    format!(
                        "{:.0} k/s ({:.2} us of CPU per event)",
                        d.rate / 1e3,
                        d.cpu_us_per_event
                    )
                });
                format!(
                    "one sender thread makes at most {one_sender} refused sends and vxprobe keeps \
                     up with it; the pipeline alone drains {drain}; two sender threads take both \
                     cores from it"
                )
            }),
        });
        let at_100k = self
            .flows
            .as_ref()
            .and_then(|f| f.points.iter().find(|p| p.flows == 100_000));
        t.push(Target {
            name: "memory",
            goal: "RSS <= 64 MiB at 100k flows",
            measured: at_100k.map_or("-".into(), |p| {
                format!(
                    "peak {} MiB, at the end {} MiB",
                    p.hwm_mib.show(1.0, 1),
                    p.rss_mib.show(1.0, 1)
                )
            }),
            holds: at_100k.map(|p| p.hwm_mib.max <= 64.0),
            why_not: None,
        });
        t.push(Target {
            name: "attach",
            goal: "every hook attached < 1 s",
            measured: self
                .attach
                .as_ref()
                .map_or("-".into(), |a| format!("{} ms", a.attach_ms.show(1.0, 0))),
            holds: self.attach.as_ref().map(|a| a.attach_ms.median < 1000.0),
            why_not: None,
        });
        t
    }

    /// vxprobe's TC programs against the no-op on the same hooks and packets: under load (both
    /// loads, the median of per-window ratios) and alone (every crafted packet).
    fn tc_ratio_target(&self) -> Target {
        let target = crate::progcost::RATIO_TARGET;
        let Some(p) = &self.prog_cost else {
            return Target {
                name: "tc_ratio",
                goal: "TC programs <= 1.8x a no-op on the same hooks and packets (bpf_stats, \
                       under iperf3 load: TCP and 64-byte UDP; alone: BPF_PROG_TEST_RUN)",
                measured: "-".into(),
                holds: None,
                why_not: None,
            };
        };
        let mut parts = Vec::new();
        let mut holds = true;
        for load in ["tcp", "udp64"] {
            match (p.ratio.get(load), p.tc.get(load), p.floor.get(load)) {
                (Some(r), Some(tc), Some(noop)) => {
                    holds &= r.median <= target;
                    parts.push(format!(
                        "{load} {} ({:.0} against {:.0} ns)",
                        r.show(1.0, 2),
                        tc.median,
                        noop.median
                    ));
                }
                _ => holds = false,
            }
        }
        if let Some(i) = &p.isolated {
            let worst = i.ratio.values().copied().fold(0.0, f64::max);
            holds &= worst <= target;
            parts.push(format!(
                "alone {} (no-op {:.0} ns)",
                i.ratio
                    .iter()
                    .map(|(packet, r)| format!("{r:.2} {packet}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                i.floor.median
            ));
        }
        Target {
            name: "tc_ratio",
            goal: "TC programs <= 1.8x a no-op on the same hooks and packets (bpf_stats, under \
                   iperf3 load: TCP and 64-byte UDP; alone: BPF_PROG_TEST_RUN)",
            measured: parts.join("; "),
            holds: Some(holds),
            why_not: Some("see the decomposition in section 3".into()),
        }
    }

    /// The kernel-wide programs: a drop and a retransmit at most 300 ns a run, a send that
    /// succeeds at most 150 ns (its enter and exit hooks together).
    fn kernel_wide_target(&self) -> Target {
        let goal = "kernel-wide programs: <= 300 ns per drop (kfree_skb, faults) and per \
                    retransmit (tcp), <= 150 ns per send that succeeds (enter + exit, sends)";
        let Some(p) = &self.prog_cost else {
            return Target {
                name: "kernel_wide",
                goal,
                measured: "-".into(),
                holds: None,
                why_not: None,
            };
        };
        let ns = |program: &str, load: &str| {
            p.programs
                .iter()
                .find(|c| c.program == program)
                .and_then(|c| c.loads.get(load))
                .filter(|w| w.runs > 0)
                .map(|w| w.ns_per_run.median)
        };
        use vxprobe_common::names;
        let drop = ns(names::KFREE_SKB_BTF, "faults");
        let retransmit = ns(names::RETRANSMIT_BTF, "tcp");
        let send = [
            names::SENDTO_ENTER,
            names::SENDTO_EXIT,
            names::SENDTO_EXIT_REGS,
        ]
        .iter()
        .filter_map(|p| ns(p, "sends"))
        .reduce(|a, b| a + b);
        let show = |v: Option<f64>| v.map_or("not run".into(), |v| format!("{v:.0} ns"));
        let holds = drop.is_none_or(|v| v <= 300.0)
            && retransmit.is_none_or(|v| v <= 300.0)
            && send.is_none_or(|v| v <= 150.0);
        Target {
            name: "kernel_wide",
            goal,
            measured: format!(
                "drop {}, retransmit {}, send that succeeds {}",
                show(drop),
                show(retransmit),
                show(send)
            ),
            holds: Some(holds),
            why_not: Some(
                "a drop or a retransmit is a ring-buffer record filled from kernel memory \
                 through helper calls, each a cache miss away; see section 3"
                    .into(),
            ),
        }
    }

    /// Writes `<stamp>.json`/`.md` and `latest.json`/`.md` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stamp = self.started.replace([':', '-'], "");
        let json = serde_json::to_string_pretty(self)? + "\n";
        let md = self.markdown();
        let mut written = Vec::new();
        for name in [format!("run-{stamp}"), "latest".to_owned()] {
            for (ext, text) in [("json", &json), ("md", &md)] {
                let path = dir.join(format!("{name}.{ext}"));
                // Written whole, then renamed: a reader never sees half a report.
                let tmp = dir.join(format!("{name}.{ext}.tmp"));
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, &path)?;
                written.push(path);
            }
        }
        Ok(written)
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "# vxprobe benchmark report\n");
        let _ = writeln!(
            md,
            "`cargo xtask bench{}` at {} (vxprobe {}), {:.0} s. Machine: {} CPUs, Linux {}. \
             Load average {:.2} / {:.2} / {:.2} at the start, {:.2} / {:.2} / {:.2} at the end; \
             the CPUs were {:.0}% busy over the run (the benchmark included).\n",
            if self.quick { " --quick" } else { "" },
            self.started,
            self.git,
            self.wall_seconds,
            m.cpus,
            m.kernel,
            m.load_before[0],
            m.load_before[1],
            m.load_before[2],
            m.load_after[0],
            m.load_after[1],
            m.load_after[2],
            m.busy_share * 100.0
        );
        let _ = writeln!(
            md,
            "`uptime` at the start: `{}`; at the end: `{}`\n",
            m.uptime, m.uptime_after
        );
        let _ = writeln!(
            md,
            "Figures are medians, with (min-max) over the repeated runs; arms interleave, with the \
             order rotating every round. The benchmark and all it starts ran at nice {} so the \
             other work on the machine disturbs them less; CPU-time figures do not depend on it.\n",
            self.nice
        );
        let _ = writeln!(md, "## Targets\n");
        let _ = writeln!(md, "| target | measured | holds |\n| --- | --- | --- |");
        for t in &self.targets {
            let holds = match (t.holds, &t.why_not) {
                (Some(true), _) => "yes".to_owned(),
                (Some(false), Some(why)) => format!("**no**: {why}"),
                (Some(false), None) => "**no**".to_owned(),
                (None, _) => "not measured".to_owned(),
            };
            let _ = writeln!(md, "| {} | {} | {holds} |", t.goal, t.measured);
        }
        md.push('\n');
        for (title, t) in [
            ("1. TCP throughput pod to pod over VXLAN", &self.tcp),
            ("2. Small-packet UDP", &self.udp),
        ] {
            if let Some(t) = t {
                throughput_md(&mut md, title, t);
            }
        }
        if let Some(p) = &self.prog_cost {
            prog_cost_md(&mut md, p);
        }
        if let Some(e) = &self.events {
            events_md(&mut md, e);
        }
        if let Some(f) = &self.flows {
            flows_md(&mut md, f);
        }
        if let Some(a) = &self.attach {
            let _ = writeln!(md, "## 6. Time to attach\n");
            let _ = writeln!(
                md,
                "`vxprobe record` on cali0, vxlan.calico and eth0 of a lab node with every hook \
                 ({}), started through `ip netns exec`, {} runs.\n\n\
                 | | ms |\n| --- | --- |\n\
                 | start to `--ready-file` (everything attached) | {} |\n\
                 | of it recorder CPU (user + system) | {} |\n\
                 | SIGTERM to exit (drain, flush, detach) | {} |\n\n\
                 | | MiB |\n| --- | --- |\n\
                 | peak RSS by the time it is attached | {} |\n\
                 | RSS once settled, idle | {} |\n",
                a.hooks.join(", "),
                a.runs,
                a.attach_ms.show(1.0, 0),
                a.attach_cpu_ms.show(1.0, 0),
                a.stop_ms.show(1.0, 0),
                a.attach_hwm_mib.show(1.0, 1),
                a.idle_rss_mib.show(1.0, 1)
            );
        }
        if let Some(r) = &self.render {
            render_md(&mut md, r);
        }
        if let Some(a) = &self.agent {
            agent_md(&mut md, a);
        }
        if let Some(p) = &self.pods {
            pods_md(&mut md, p);
        }
        if !self.errors.is_empty() {
            let _ = writeln!(md, "## Failed measurements\n");
            for (name, e) in &self.errors {
                let _ = writeln!(md, "- {name}: {e}");
            }
            md.push('\n');
        }
        let _ = writeln!(md, "Seconds per measurement: {}.", {
            self.section_seconds
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        md
    }
}

fn throughput_md(md: &mut String, title: &str, t: &Throughput) {
    let (scale, unit, digits) = if t.unit == "bit/s" {
        (1e-9, "Gbit/s", 2)
    } else {
        (1e-3, "k datagrams/s received", 1)
    };
    let _ = writeln!(md, "## {title}\n");
    let _ = writeln!(
        md,
        "{}, {} rounds of {} s runs (after a 1 s warm-up each). vxprobe: `record -i 'cali*' -i \
         vxlan.calico -i eth0 -o /dev/null` on the sending node, every hook attached. tcpdump: \
         `tcpdump -i DEV -w /dev/null` on the same three devices.\n",
        t.load, t.rounds, t.seconds_per_run
    );
    let _ = writeln!(
        md,
        "| arm | {unit} | ratio to bare | observer CPU (% of a core) |\n| --- | --- | --- | --- |"
    );
    let _ = writeln!(
        md,
        "| nothing attached | {} | 1 | - |",
        t.bare.rate.show(scale, digits)
    );
    for (arm, run, ratio) in [
        ("vxprobe record", &t.vxprobe, &t.ratio_vxprobe),
        ("tcpdump -w", &t.tcpdump, &t.ratio_tcpdump),
    ] {
        let _ = writeln!(
            md,
            "| {arm} | {} | {} | {} |",
            run.rate.show(scale, digits),
            ratio.show(1.0, 3),
            run.observer_cpu_pct.show(1.0, 1)
        );
    }
    let _ = writeln!(
        md,
        "\nvxprobe lost {} events; tcpdump captured {} packets and the kernel dropped {} before \
         tcpdump read them.\n",
        t.vxprobe_lost_events, t.tcpdump_captured, t.tcpdump_dropped
    );
}

fn prog_cost_md(md: &mut String, p: &ProgCost) {
    let _ = writeln!(md, "## 3. Cost per program run\n");
    let _ = writeln!(
        md,
        "From `kernel.bpf_stats_enabled=1` (restored afterwards) and `bpftool prog show` \
         (run_time_ns / run_cnt) for the programs of the benchmark's own recorder, over {} \
         rounds of windows: `tcp` and `udp64` are iperf3 runs of {} s; `faults` injects \
         refused sends into the tap, bad UDP checksums and fragments; `sends` is 20,000 \
         64-byte UDP sends that succeed (to a closed port: the receiver drops them). Mean ns per run (min-max \
         over windows), runs counted in all windows.\n",
        p.rounds, p.seconds_per_window
    );
    let loads = crate::progcost::LOADS;
    let _ = writeln!(
        md,
        "| program | {} |\n| --- |{}",
        loads.join(" | "),
        " --- |".repeat(loads.len())
    );
    let cell = |w: Option<&crate::progcost::WindowCost>| match w {
        Some(w) if w.runs > 0 => format!("{} ns ({} runs)", w.ns_per_run.show(1.0, 0), w.runs),
        _ => "not run".into(),
    };
    for prog in &p.programs {
        let _ = writeln!(
            md,
            "| {} | {} |",
            prog.program,
            loads
                .iter()
                .map(|l| cell(prog.loads.get(*l)))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(
        md,
        "| **both TC programs** | {} |\n",
        loads
            .iter()
            .map(|l| p
                .tc
                .get(*l)
                .map_or("-".into(), |d| format!("{} ns", d.show(1.0, 0))))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    if !p.baseline_tc.is_empty() {
        let row = |m: &BTreeMap<String, crate::stats::Dist>, digits: usize, unit: &str| {
            loads
                .iter()
                .map(|l| {
                    m.get(*l)
                        .map_or("-".into(), |d| format!("{}{unit}", d.show(1.0, digits)))
                })
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let _ = writeln!(
            md,
            "A baseline build (`--baseline`) recorded on the same hooks in the same windows \
             (attached first, so it runs after the measured one on every packet):\n\n\
             | | {} |\n| --- |{}\n| baseline: both TC programs | {} |\n\
             | baseline: over the no-op | {} |\n| measured: over the no-op | {} |\n",
            loads.join(" | "),
            " --- |".repeat(loads.len()),
            row(&p.baseline_tc, 0, " ns"),
            row(&p.baseline_ratio, 2, ""),
            row(&p.ratio, 2, ""),
        );
    }
    let _ = writeln!(
        md,
        "`{}` is a TC program that does nothing, attached after vxprobe's on the same hooks \
         for these windows: what bpf_stats reports for a run before any work is done. `{}`, \
         beside it, is the least a per-hop counter does (one per-CPU array slot by ifindex: \
         packets and bytes; no parse, no flow).\n",
        vxprobe_common::names::YARDSTICK_TC,
        vxprobe_common::names::YARDSTICK_COUNT_TC
    );
    decomposition_md(md, p);
    if let Some(i) = &p.isolated {
        let _ = writeln!(
            md,
            "The TC ingress program alone, on crafted packets through `BPF_PROG_TEST_RUN` (the \
             kernel repeats it {} times per sample; the device described as an attached one \
             is): mean ns per run, median (min-max) over samples.\n\n| packet | ns per run |\n\
             | --- | --- |",
            i.repeat
        );
        for (packet, d) in &i.ns_per_run {
            let _ = writeln!(md, "| {packet} | {} |", d.show(1.0, 0));
        }
        let _ = writeln!(
            md,
            "| the no-op program (tcp over ipv4) | {} |\n| the least per-hop counter (tcp over ipv4) | {} |",
            i.floor.show(1.0, 0),
            i.least_counter.show(1.0, 0)
        );
        md.push('\n');
    }
}

/// Where each nanosecond goes: each program of the ladder does a step more than the one
/// before, on the same hooks and packets (under load) and alone; the last row is vxprobe's.
fn decomposition_md(md: &mut String, p: &ProgCost) {
    use crate::progcost::{FULL_STEP, LADDER};
    let loads = ["tcp", "udp64"];
    let _ = writeln!(
        md,
        "Where the time goes: programs that each do a step more than the one before, attached \
         after vxprobe's on the same hooks for the same windows (mean ns per run, median \
         (min-max) over windows; times the no-op in the same windows), and alone \
         (BPF_PROG_TEST_RUN, the pod's TCP segment).\n\n\
         | the program does | tcp | udp64 | alone |\n| --- | --- | --- | --- |"
    );
    let noop = |load: &str| {
        p.steps
            .get(LADDER[0].0)
            .and_then(|s| s.get(load))
            .map(|d| d.median)
    };
    let cell = |d: Option<&crate::stats::Dist>, load: &str| match (d, noop(load)) {
        (Some(d), Some(n)) if d.n > 0 => {
            format!("{} ns ({:.2}x)", d.show(1.0, 0), d.median / n.max(1e-9))
        }
        _ => "-".into(),
    };
    let alone = |d: Option<&crate::stats::Dist>| {
        let floor = p.isolated.as_ref().map(|i| i.floor.median);
        match (d, floor) {
            (Some(d), Some(f)) if d.n > 0 => {
                format!("{} ns ({:.2}x)", d.show(1.0, 0), d.median / f.max(1e-9))
            }
            _ => "-".into(),
        }
    };
    for (program, label) in LADDER {
        let by_load = p.steps.get(*program);
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} |",
            cell(by_load.and_then(|s| s.get(loads[0])), loads[0]),
            cell(by_load.and_then(|s| s.get(loads[1])), loads[1]),
            alone(p.isolated.as_ref().and_then(|i| i.steps.get(*program)))
        );
    }
    let _ = writeln!(
        md,
        "| {FULL_STEP} | {} | {} | {} |\n",
        cell(p.tc.get(loads[0]), loads[0]),
        cell(p.tc.get(loads[1]), loads[1]),
        alone(
            p.isolated
                .as_ref()
                .and_then(|i| i.ns_per_run.get("tcp over ipv4 (pod veth)"))
        )
    );
}

fn events_md(md: &mut String, e: &Events) {
    let _ = writeln!(md, "## 4. Anomaly events per second\n");
    let _ = writeln!(
        md,
        "Refused sends into the lab's tap (TSO/GSO off, 2000-byte frames: EMSGSIZE, one \
         `oversize` event each), offered at rising rates for {} s each, against a fresh `record` \
         (every hop and the tap, `--ring-size {}`) whose JSON lines stream into a pipe the \
         benchmark counts. Generated: sends the kernel refused; delivered: `oversize` lines of \
         our sender; lost: the `lost` lines' counts.\n",
        e.seconds_per_step, e.ring_size
    );
    let _ = writeln!(
        md,
        "| offered | generated | delivered | lost | accounted (delivered+lost)/generated | vxprobe CPU |\n| --- | --- | --- | --- | --- | --- |"
    );
    for s in &e.steps {
        let offered = s.offered.map_or_else(
            || {
                format!(
                    "max, {} sender thread{}",
                    s.threads,
                    if s.threads > 1 { "s" } else { "" }
                )
            },
            |r| format!("{:.0} k/s", r / 1e3),
        );
        let _ = writeln!(
            md,
            "| {offered} | {:.0} k/s | {:.0} k/s | {} ({:.2}%) | {:.4} | {:.0}% |",
            s.generated_rate / 1e3,
            s.delivered_rate / 1e3,
            s.lost,
            s.lost_share * 100.0,
            s.accounted,
            s.vxprobe_cpu_pct
        );
    }
    let _ = writeln!(
        md,
        "\nSustained without loss: **{:.0} k events/s**. Every loss counted: {}.\n",
        e.sustained_rate / 1e3,
        if e.every_loss_counted {
            "yes"
        } else {
            "**no**"
        }
    );
    if let Some(d) = &e.drain {
        let _ = writeln!(
            md,
            "The pipeline alone: {} events queued while the recorder was stopped (SIGSTOP, \
             `--ring-size {}`), then drained with no sender running: {:.0} k events/s of wall \
             time, **{:.2} us of recorder CPU per event** ({:.2} M events per CPU-second), {} \
             lost.\n",
            d.events,
            d.ring_size,
            d.rate / 1e3,
            d.cpu_us_per_event,
            d.rate_per_cpu_second / 1e6,
            d.lost
        );
    }
}

fn flows_md(md: &mut String, f: &Flows) {
    let _ = writeln!(md, "## 5. `record` at 1k, 10k and 100k live flows\n");
    let _ = writeln!(
        md,
        "One UDP datagram per flow per second from pod 1 (a raw socket, a port pair per flow) \
         to pod 2, `record` on the sending node's three hops with `--max-flows {}`, JSON lines \
         into a counting pipe. CPU over a {} s window once every flow is in the table; {} \
         round(s).\n",
        f.max_flows_arg, f.window_seconds, f.rounds
    );
    let _ = writeln!(
        md,
        "| flows | flow lines per interval | datagrams/s sent | CPU (% of a core) | CPU ms per interval | interval (s) | RSS at end (MiB) | of it anonymous | peak RSS (MiB) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for p in &f.points {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.flows,
            p.flow_lines_per_interval.show(1.0, 0),
            p.sent_rate.show(1.0, 0),
            p.cpu_pct.show(1.0, 1),
            p.cpu_ms_per_interval.show(1.0, 0),
            p.interval_s.show(1.0, 2),
            p.rss_mib.show(1.0, 1),
            p.anon_mib.show(1.0, 1),
            p.hwm_mib.show(1.0, 1)
        );
    }
    let _ = writeln!(
        md,
        "\nRSS counts the event ring buffer's pages twice (the kernel maps its data area twice, \
         so records can wrap): the default 8 MiB ring is 16 MiB of RSS from the first moment. \
         A slow sender on a busy machine sends less than a round a second; flows then show up in \
         fewer intervals, not fewer in the table. An interval longer than 1 s means the recorder \
         could not close intervals as fast as `--stats-interval` asks.\n"
    );
}

fn render_md(md: &mut String, r: &Render) {
    let _ = writeln!(md, "## 7. `top` at {} flows\n", r.flows);
    let _ = writeln!(
        md,
        "In process, no terminal: {} intervals of {} flows x 3 hops through `TuiFeed` and \
         `App::handle_event`, then `tui::render_once` into an off-screen buffer.\n",
        r.intervals, r.flows
    );
    let _ = writeln!(
        md,
        "| step | CPU ms |\n| --- | --- |\n| interval report -> UI message (`TuiFeed`) | {} |\n| message applied (`App`) | {} |",
        r.feed_cpu_ms.show(1.0, 2),
        r.apply_cpu_ms.show(1.0, 2)
    );
    for f in &r.frames {
        let _ = writeln!(
            md,
            "| frame {}x{} ({} frames; wall {} ms) | {} |",
            f.width,
            f.height,
            f.frames,
            f.frame_ms.show(1.0, 2),
            f.frame_cpu_ms.show(1.0, 2)
        );
    }
    let _ = writeln!(
        md,
        "\nUI side at a 1 s interval (one interval applied, two frames): {:.1}% of a core. The \
         kernel-map side of the same load is `record`'s CPU at 10k flows above.\n",
        r.ui_cpu_pct_at_1s
    );
}

fn agent_md(md: &mut String, a: &AgentCost) {
    let _ = writeln!(md, "## 8. `agent`: memory, and CPU per scrape\n");
    let _ = writeln!(
        md,
        "`vxprobe agent` on a lab node's three hops (`--stats-interval 1s`, `--max-flows {}`); \
         {} round(s), {} s windows. Flows as in 5. For the scrape cost, `--flow-metrics {}` \
         while nft drops half of the flows' datagrams at cali0, and {} back-to-back OpenMetrics \
         scrapes; CPU per scrape is the agent's CPU over them less what it spends over as long \
         without scrapes.\n",
        crate::flows::MAX_FLOWS_ARG,
        a.rounds,
        a.window_seconds,
        a.flow_metrics,
        a.scrapes
    );
    let _ = writeln!(
        md,
        "| | |\n| --- | --- |\n\
         | idle RSS (MiB) | {} (anonymous {}) |\n\
         | RSS at {} flows (MiB) | {} (anonymous {}) |\n\
         | CPU at {} flows (% of a core) | {} |\n\
         | series per scrape | {} |\n\
         | scrape size (KiB) | {} |\n\
         | CPU per scrape (ms) | {} |\n\
         | wall per scrape (ms) | {} |\n\
         | RSS with those series (MiB) | {} |\n",
        a.idle_rss_mib.show(1.0, 1),
        a.idle_anon_mib.show(1.0, 1),
        a.flows,
        a.flows_rss_mib.show(1.0, 1),
        a.flows_anon_mib.show(1.0, 1),
        a.flows,
        a.flows_cpu_pct.show(1.0, 1),
        a.series.show(1.0, 0),
        a.scrape_kib.show(1.0, 0),
        a.scrape_cpu_ms.show(1.0, 1),
        a.scrape_wall_ms.show(1.0, 1),
        a.series_rss_mib.show(1.0, 1)
    );
}

fn pods_md(md: &mut String, p: &crate::pods::Pods) {
    let _ = writeln!(md, "## 9. The pod index at {} pods\n", p.pods);
    let _ = writeln!(
        md,
        "From the node's layout (no CRI socket): {} processes in {} pod network namespaces and \
         kubelet-shaped cgroups (v1) and log directories, one veth per pod on a lab node (set \
         up in {:.0} s). A fresh process starts the index in the node's namespace, {} runs.\n\n\
         | | |\n| --- | --- |\n\
         | start to every pod and veth named | {} ms |\n\
         | of it CPU (user + system) | {} ms |\n\
         | RSS once built | {} MiB |\n\
         | of it the index (RSS before the start subtracted) | {} MiB |\n\
         | RSS after `malloc_trim` (the allocator's free pages returned) | {} MiB |\n\
         | CPU per refresh (1 s), nothing changing (a full run's window holds one 30 s \
         verification) | {} ms |\n\n\
         `vxprobe record -i vp0` in that namespace, with the layout's pods ({} named in \
         `meta`) and, interleaved, without a pod source, {} runs each:\n\n\
         | | with the pods | without |\n| --- | --- | --- |\n\
         | spawn to ready (attached, the index's first look taken) | {} ms | {} ms |\n\
         | RSS two intervals in | {} MiB | {} MiB |\n\
         | peak RSS | {} MiB | {} MiB |\n",
        p.processes,
        p.pods,
        p.setup_seconds,
        p.runs,
        p.startup_ms.show(1.0, 0),
        p.startup_cpu_ms.show(1.0, 0),
        p.rss_mib.show(1.0, 1),
        p.index_rss_mib.show(1.0, 1),
        p.trimmed_rss_mib.show(1.0, 1),
        p.refresh_cpu_ms.show(1.0, 2),
        p.record.named,
        p.record.runs,
        p.record.startup_ms.show(1.0, 0),
        p.record.startup_ms_without.show(1.0, 0),
        p.record.rss_mib.show(1.0, 1),
        p.record.rss_mib_without.show(1.0, 1),
        p.record.hwm_mib.show(1.0, 1),
        p.record.hwm_mib_without.show(1.0, 1)
    );
}
