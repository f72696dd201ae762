//! Measurement 7: `top` at 10,000 flows. The feed path (an interval report with 10k flows at
//! three hops each, turned into the UI's message by `TuiFeed` and applied by `App`) and the
//! frame (`tui::render_once` into an off-screen buffer), timed in wall and thread CPU time.
//! No terminal and no kernel: the kernel side of the same load is measurement 5.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use vxprobe::{
    node::devices::Role,
    observe::interval::{HopCount, Interval},
    observe::packet::{Flow, Outer},
    observe::pipeline::Sink as _,
    observe::report::{FlowReport, IntervalEnd, IntervalReport, MetaHop, mean_segment},
    sinks::tui::{App, feed::TuiFeed, render_once},
};
use vxprobe_common::{Counters, Direction, FlowCounters};

use crate::{Ctx, procfs::thread_cpu_time, stats::Dist};

pub const FLOWS: u32 = 10_000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Frame {
    pub width: u16,
    pub height: u16,
    pub frames: usize,
    pub frame_ms: Dist,
    pub frame_cpu_ms: Dist,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Render {
    pub flows: u32,
    pub intervals: usize,
    /// Per interval: `TuiFeed::interval` (report -> message), in thread CPU ms.
    pub feed_cpu_ms: Dist,
    /// Per interval: `App::handle_event` on that message (merge, evict, sort), CPU ms.
    pub apply_cpu_ms: Dist,
    pub frames: Vec<Frame>,
    /// The UI side's CPU at a 1 s interval: one feed + apply and two frames (one after the
    /// data, one on the 1 s tick) of the larger size, in % of one core.
    pub ui_cpu_pct_at_1s: f64,
}

fn hop(name: &str, ifindex: u32, role: Role) -> MetaHop {
    MetaHop::new(name, ifindex, role, 1450)
}

/// An interval of the lab's sending node with `n` TCP flows, each at cali0 ingress,
/// vxlan.calico egress and eth0 egress; every 7th flow loses packets at eth0.
fn report(n: u32, interval_no: u64) -> (IntervalReport, Vec<FlowReport>) {
    let cali = hop("cali0", 5, Role::Pod);
    let vxlan = hop("vxlan.calico", 4, Role::Overlay);
    let eth0 = hop("eth0", 2, Role::Underlay);
    let counters = |packets: u64| Counters {
        packets,
        bytes: packets * 900,
        segs: packets,
        max_len: 1464,
        max_epoch: interval_no as u32,
        ..Default::default()
    };
    let hops = [&cali, &vxlan, &eth0]
        .into_iter()
        .flat_map(|h| [Direction::Ingress, Direction::Egress].map(|d| (h, d)))
        .map(|(h, dir)| HopCount {
            hop: h.clone(),
            dir,
            counters: counters(u64::from(n) * 10),
        })
        .collect();
    let outer = Outer {
        src: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        dst: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
        sport: 40000,
        dport: 4789,
        vni: 4096,
    };
    let mut flows = Vec::with_capacity(n as usize * 3);
    for k in 0..n {
        let flow = Flow {
            proto: 6,
            src: IpAddr::V4(Ipv4Addr::new(198, 19, 1, 2)),
            dst: IpAddr::V4(Ipv4Addr::new(198, 19, 2, (k % 250) as u8)),
            sport: (1024 + k % 60_000) as u16,
            dport: 443 + (k / 60_000) as u16,
        };
        let packets = 10 + u64::from(k % 97);
        for (h, dir, outer) in [
            (&cali, Direction::Ingress, None),
            (&vxlan, Direction::Egress, None),
            (&eth0, Direction::Egress, Some(outer.clone())),
        ] {
            let c = counters(packets);
            flows.push(FlowReport {
                hop: h.clone(),
                dir,
                flow: flow.clone(),
                outer,
                mean_segment: mean_segment(c.bytes, c.segs),
                counters: FlowCounters {
                    counters: c,
                    ..Default::default()
                },
            });
        }
    }
    // The interval model completes the hops' reports, as in the pipeline.
    let report = Interval::new(0, HashMap::new()).close(
        SystemTime::now(),
        Duration::from_secs(1),
        hops,
        Vec::new(),
    );
    (report, flows)
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Render> {
    let (intervals, frames) = if ctx.quick { (5, 50) } else { (10, 200) };
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let mut feed = TuiFeed::new(tx, Duration::from_secs(1), HashMap::new());
    let mut app = App::new();
    let (mut feed_cpu, mut apply_cpu) = (Vec::new(), Vec::new());
    for i in 0..intervals {
        let (report, flows) = report(FLOWS, i as u64);
        let t0 = thread_cpu_time();
        // As the pipeline hands it over: the hops, the flows in batches, the end.
        feed.interval(&report)?;
        for batch in flows.chunks(1024) {
            feed.flows(batch)?;
        }
        feed.interval_end(&IntervalEnd::default())?;
        let t1 = thread_cpu_time();
        while let Ok(message) = rx.try_recv() {
            app.handle_event(message);
        }
        let t2 = thread_cpu_time();
        feed_cpu.push(ms(t1 - t0));
        apply_cpu.push(ms(t2 - t1));
    }
    anyhow::ensure!(
        app.flow_count() == FLOWS as usize,
        "the UI holds {} flows, not {FLOWS}",
        app.flow_count()
    );
    let mut out = Render {
        flows: FLOWS,
        intervals,
        feed_cpu_ms: Dist::of(&feed_cpu),
        apply_cpu_ms: Dist::of(&apply_cpu),
        ..Default::default()
    };
    for (width, height) in [(120u16, 40u16), (200, 60)] {
        for _ in 0..5 {
            render_once(&app, width, height);
        }
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..frames {
            let t0 = thread_cpu_time();
            wall.push(ms(render_once(&app, width, height)));
            cpu.push(ms(thread_cpu_time() - t0));
        }
        out.frames.push(Frame {
            width,
            height,
            frames,
            frame_ms: Dist::of(&wall),
            frame_cpu_ms: Dist::of(&cpu),
        });
    }
    let big = out.frames.last().map_or(0.0, |f| f.frame_cpu_ms.median);
    out.ui_cpu_pct_at_1s =
        (out.feed_cpu_ms.median + out.apply_cpu_ms.median + 2.0 * big) / 1000.0 * 100.0;
    ctx.log(&format!(
        "  feed {} ms, apply {} ms, frame 200x60 {} ms per interval",
        out.feed_cpu_ms.show(1.0, 2),
        out.apply_cpu_ms.show(1.0, 2),
        out.frames
            .last()
            .map_or("n/a".into(), |f| f.frame_ms.show(1.0, 2))
    ));
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
