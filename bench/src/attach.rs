//! Measurement 6: how long `vxprobe record` takes from its start until every program is
//! attached (the `--ready-file` handshake: spawn to file), with every hop of a node and every
//! hook; and how long it takes to stop (SIGTERM to exit: last drain, flush, detach). The
//! start goes through `ip netns exec`, as a user would run it.

use std::time::Duration;

use serde::Serialize;
use vxprobe::lab::{Lab, LabOptions};

use crate::{
    Ctx,
    recorder::{Output, Recorder, node_hops},
    stats::Dist,
};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Attach {
    pub runs: usize,
    /// Programs attached: 2 TC programs x hops, plus the kernel-wide hooks.
    pub hops: usize,
    pub attach_ms: Dist,
    /// CPU time (user + system) the recorder used until it was attached: the part of the
    /// attach time that does not depend on how busy the machine is.
    pub attach_cpu_ms: Dist,
    /// Peak resident memory by then (VmHWM): parsing the kernel's BTF and symbols.
    pub attach_hwm_mib: Dist,
    pub stop_ms: Dist,
    /// Resident memory of a freshly attached, idle recorder.
    pub idle_rss_mib: Dist,
    pub hooks: Vec<String>,
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Attach> {
    let lab = Lab::build(&LabOptions::default())?;
    let n1 = &lab.nodes[0];
    let runs = if ctx.quick { 5 } else { 10 };
    let (mut attach, mut stop, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu, mut hwm) = (Vec::new(), Vec::new());
    let mut hooks = Vec::new();
    for _ in 0..runs {
        let rec = Recorder::start(
            &ctx.vxprobe,
            &n1.netns,
            &node_hops(),
            Output::Counted { marker: None },
        )?;
        attach.push(ms(rec.attach_time));
        cpu.push(ms(rec.cpu_time()?));
        let mem = rec.memory()?;
        hwm.push(mem.hwm as f64 / (1024.0 * 1024.0));
        // Settled: what an idle recorder holds.
        std::thread::sleep(Duration::from_millis(300));
        rss.push(rec.memory()?.rss as f64 / (1024.0 * 1024.0));
        let done = rec.stop()?;
        stop.push(ms(done.stop_time));
        if let Some(meta) = &done.lines.meta {
            hooks = std::iter::once(format!("tc:{}", meta["tc_attach"].as_str().unwrap_or("?")))
                .chain(meta["hooks"].as_array().into_iter().flatten().map(|h| {
                    h["hook"]
                        .as_str()
                        .map_or_else(|| format!("{}:none", h["signal"]), str::to_owned)
                }))
                .collect();
        }
    }
    let out = Attach {
        runs,
        hops: 3,
        attach_ms: Dist::of(&attach),
        attach_cpu_ms: Dist::of(&cpu),
        attach_hwm_mib: Dist::of(&hwm),
        stop_ms: Dist::of(&stop),
        idle_rss_mib: Dist::of(&rss),
        hooks,
    };
    ctx.log(&format!(
        "  attach {} ms ({} ms of CPU, peak {} MiB), idle RSS {} MiB, stop {} ms",
        out.attach_ms.show(1.0, 0),
        out.attach_cpu_ms.show(1.0, 0),
        out.attach_hwm_mib.show(1.0, 1),
        out.idle_rss_mib.show(1.0, 1),
        out.stop_ms.show(1.0, 0)
    ));
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
