//! Measurement 8: what `vxprobe agent` costs a node. On a lab node's three hops (as
//! measurement 5's `record`):
//! - idle RSS: attached, no traffic;
//! - RSS and CPU at 10k live flows (measurement 5's flows: one UDP datagram per flow per second),
//!   with the default flags (no per-flow series);
//! - CPU per scrape at 10k series: `--flow-metrics 2500` while an nft rule drops half of the
//!   flows' datagrams at cali0, so 2500 lossy flows are exported with a drops series and a
//!   packets series at each hop they cross; back-to-back OpenMetrics scrapes (what Prometheus
//!   asks for), the agent's CPU over them less what it spends meanwhile without scrapes.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use vxprobe::lab::{Lab, LabOptions, POD_HOST_DEV, faults, http};

use crate::{
    Ctx,
    flows::MAX_FLOWS_ARG,
    procfs,
    recorder::node_hops,
    stats::Dist,
    traffic::{self, FLOW_PORT_BASE},
};

const FLOWS: u32 = 10_000;
/// Flows exported with `--flow-metrics`: 2500 lossy flows x (drops + packets at three hops).
const FLOW_METRICS: u32 = 2_500;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentCost {
    pub rounds: usize,
    pub window_seconds: f64,
    pub flows: u32,
    pub idle_rss_mib: Dist,
    pub idle_anon_mib: Dist,
    pub flows_rss_mib: Dist,
    pub flows_anon_mib: Dist,
    pub flows_cpu_pct: Dist,
    /// With `--flow-metrics`: series in one scrape, its size, the agent's RSS then.
    pub flow_metrics: u32,
    pub series: Dist,
    pub scrape_kib: Dist,
    pub series_rss_mib: Dist,
    pub scrapes: usize,
    /// Agent CPU per scrape, beyond what it spends meanwhile without scrapes.
    pub scrape_cpu_ms: Dist,
    pub scrape_wall_ms: Dist,
}

/// A running agent in a lab namespace.
struct Agent {
    child: Child,
    netns: String,
    addr: SocketAddr,
}

impl Agent {
    fn start(vxprobe: &Path, netns: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], vxprobe::cli::DEFAULT_PORT));
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(vxprobe)
            .args([
                "agent",
                "--listen",
                &addr.to_string(),
                "--stats-interval",
                "1s",
            ])
            .args(["--max-flows", &MAX_FLOWS_ARG.to_string()])
            .args(node_hops())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning vxprobe agent")?;
        let mut agent = Self {
            child,
            netns: netns.to_owned(),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = agent.child.try_wait()? {
                bail!("the agent exited before it was ready ({status})");
            }
            if agent.get("/readyz").is_ok_and(|r| r.status == 200) {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!("the agent was not ready after 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn get(&self, target: &str) -> std::io::Result<http::Response> {
        http::get(&self.netns, self.addr, target, None)
    }

    /// One scrape as Prometheus asks for it.
    fn scrape(&self) -> anyhow::Result<String> {
        let r = http::get(
            &self.netns,
            self.addr,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        )?;
        if r.status != 200 {
            bail!("/metrics answered {}", r.status);
        }
        Ok(r.body)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the agent exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn series_in(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

#[derive(Default)]
struct Samples {
    idle_rss: Vec<f64>,
    idle_anon: Vec<f64>,
    flows_rss: Vec<f64>,
    flows_anon: Vec<f64>,
    flows_cpu: Vec<f64>,
    series: Vec<f64>,
    scrape_kib: Vec<f64>,
    series_rss: Vec<f64>,
    scrape_cpu_ms: Vec<f64>,
    scrape_wall_ms: Vec<f64>,
}

pub fn run(ctx: &Ctx) -> anyhow::Result<AgentCost> {
    let lab = Lab::build(&LabOptions::default())?;
    let [n1, n2] = &lab.nodes;
    let (rounds, window, scrapes) = if ctx.quick {
        (1, 3.0, 10)
    } else {
        (2, 5.0, 20)
    };
    let sink = traffic::sink(
        &n2.pod.netns,
        FLOW_PORT_BASE as u16..(FLOW_PORT_BASE + 1) as u16,
    );
    let mut s = Samples::default();
    for _ in 0..rounds {
        // Default flags: idle, then 10k flows.
        let agent = Agent::start(&ctx.vxprobe, &n1.netns, &[])?;
        std::thread::sleep(Duration::from_secs(2));
        let idle = procfs::memory(agent.pid())?;
        s.idle_rss.push(idle.rss as f64 / MIB);
        s.idle_anon.push(idle.anon as f64 / MIB);
        let flows = start_flows(&n1.pod.netns, n2.pod.ip, window)?;
        let (cpu0, t0) = (procfs::cpu_time(agent.pid())?, Instant::now());
        std::thread::sleep(Duration::from_secs_f64(window));
        let cpu = procfs::cpu_time(agent.pid())? - cpu0;
        s.flows_cpu
            .push(cpu.as_secs_f64() * 100.0 / t0.elapsed().as_secs_f64());
        let at_flows = procfs::memory(agent.pid())?;
        s.flows_rss.push(at_flows.rss as f64 / MIB);
        s.flows_anon.push(at_flows.anon as f64 / MIB);
        flows.stop()?;
        agent.stop()?;
        ctx.log(&format!(
            "  idle RSS {:.1} MiB; at {FLOWS} flows RSS {:.1} MiB, CPU {:.1}%",
            idle.rss as f64 / MIB,
            at_flows.rss as f64 / MIB,
            s.flows_cpu.last().unwrap()
        ));

        // Per-flow series: half of the flows' datagrams dropped at cali0, the top 2500 lossy
        // flows exported.
        faults::nft(
            &n1.netns,
            &format!(
                "table inet vxp_bench_agent {{\n chain forward {{\n  type filter hook forward priority 0;\n  \
                 iifname \"{POD_HOST_DEV}\" udp dport {FLOW_PORT_BASE} numgen random mod 2 == 0 drop\n }}\n}}\n"
            ),
        )?;
        let agent = Agent::start(
            &ctx.vxprobe,
            &n1.netns,
            &["--flow-metrics", &FLOW_METRICS.to_string()],
        )?;
        let flows = start_flows(&n1.pod.netns, n2.pod.ip, window + 30.0)?;
        // Every exported flow has lost a packet and moved at every hop since.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut text = agent.scrape()?;
        while series_in(&text) < 10_000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            text = agent.scrape()?;
        }
        // Without scrapes, then with back-to-back scrapes.
        let (cpu0, t0) = (procfs::cpu_time(agent.pid())?, Instant::now());
        std::thread::sleep(Duration::from_secs_f64(window));
        let quiet_rate =
            (procfs::cpu_time(agent.pid())? - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
        let (cpu0, t0) = (procfs::cpu_time(agent.pid())?, Instant::now());
        let mut bytes = 0;
        let mut series = 0;
        for _ in 0..scrapes {
            let body = agent.scrape()?;
            bytes += body.len();
            series = series_in(&body);
        }
        let wall = t0.elapsed().as_secs_f64();
        let busy = (procfs::cpu_time(agent.pid())? - cpu0).as_secs_f64();
        let per_scrape = (busy - quiet_rate * wall).max(0.0) / scrapes as f64;
        s.scrape_cpu_ms.push(per_scrape * 1e3);
        s.scrape_wall_ms.push(wall * 1e3 / scrapes as f64);
        s.series.push(series as f64);
        s.scrape_kib.push(bytes as f64 / scrapes as f64 / 1024.0);
        let mem = procfs::memory(agent.pid())?;
        s.series_rss.push(mem.rss as f64 / MIB);
        flows.stop()?;
        agent.stop()?;
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &n1.netns,
                "nft",
                "delete",
                "table",
                "inet",
                "vxp_bench_agent",
            ])
            .status();
        ctx.log(&format!(
            "  {series} series ({:.0} KiB a scrape): {:.1} ms CPU, {:.1} ms wall per scrape; RSS {:.1} MiB",
            s.scrape_kib.last().unwrap(),
            per_scrape * 1e3,
            s.scrape_wall_ms.last().unwrap(),
            mem.rss as f64 / MIB
        ));
    }
    sink.stop()?;
    Ok(AgentCost {
        rounds,
        window_seconds: window,
        flows: FLOWS,
        idle_rss_mib: Dist::of(&s.idle_rss),
        idle_anon_mib: Dist::of(&s.idle_anon),
        flows_rss_mib: Dist::of(&s.flows_rss),
        flows_anon_mib: Dist::of(&s.flows_anon),
        flows_cpu_pct: Dist::of(&s.flows_cpu),
        flow_metrics: FLOW_METRICS,
        series: Dist::of(&s.series),
        scrape_kib: Dist::of(&s.scrape_kib),
        series_rss_mib: Dist::of(&s.series_rss),
        scrapes,
        scrape_cpu_ms: Dist::of(&s.scrape_cpu_ms),
        scrape_wall_ms: Dist::of(&s.scrape_wall_ms),
    })
}

/// 10k flows from pod 1, once every flow has sent (and an interval has closed since).
fn start_flows(
    netns: &str,
    dst: std::net::Ipv4Addr,
    seconds: f64,
) -> anyhow::Result<traffic::Background> {
    let flows = traffic::flows(
        netns,
        dst,
        FLOWS,
        Duration::from_secs(1),
        Duration::from_secs_f64(seconds + 30.0),
    );
    let warm = Instant::now();
    while flows.count.load(std::sync::atomic::Ordering::Relaxed) < u64::from(FLOWS)
        && warm.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2500));
    Ok(flows)
}
