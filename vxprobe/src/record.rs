//! `vxprobe record`: attach, then write JSON lines until the duration ends or a signal comes.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};
use vxprobe_common::{Direction, HopCounters, HopKey};

use crate::{
    caps,
    cli::RecordArgs,
    devices::{self, Hop},
    error::UsageError,
    hopstats::HopStats,
    output::{HopLine, JsonLines, timestamp},
    probes::{Probes, TcMode},
};

pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    let devices = devices::list_devices()
        .await
        .context("listing network devices over rtnetlink")?;
    let hops = devices::select(&devices, &args.selection.ifaces)?;
    if hops.is_empty() {
        return Err(UsageError::new(
            "no device to observe here (no VXLAN/Geneve, tun/tap or physical NIC): name some with -i",
        )
        .into());
    }
    let mut sink = JsonLines::open(&args.output)
        .map_err(|e| UsageError::new(format!("cannot write to {}: {e}", args.output)))?;
    let missing = caps::missing();
    if !missing.is_empty() {
        anyhow::bail!(
            "vxprobe needs {} (run as root, or grant them with setcap or a securityContext)",
            missing.join(", ")
        );
    }

    let mut probes = Probes::load(TcMode::choose(args.tc_attach))?;
    probes.attach_tc(&hops)?;
    let mut stats = HopStats::new(probes.ebpf_mut())?;
    let netns = own_netns()?;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"ready\n")
            .with_context(|| format!("writing the ready file {}", path.display()))?;
    }

    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut ticker =
        tokio::time::interval_at(Instant::now() + args.stats_interval, args.stats_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut interval_start = Instant::now();

    loop {
        let stop = tokio::select! {
            _ = ticker.tick() => false,
            _ = sigterm.recv() => true,
            _ = sigint.recv() => true,
            _ = sleep_until(deadline) => true,
        };
        let now = Instant::now();
        let interval = now - interval_start;
        interval_start = now;
        write_hops(&mut sink, &hops, netns, &stats.interval()?, interval)?;
        sink.flush().context("writing JSON lines")?;
        if stop {
            break;
        }
    }
    drop(probes);
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn own_netns() -> anyhow::Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")
        .context("reading /proc/self/ns/net")?
        .ino())
}

/// One `hop` line per selected device and direction, zero counts included, so a hop that goes
/// quiet is visible as such.
fn write_hops(
    sink: &mut JsonLines,
    hops: &[Hop],
    netns: u64,
    deltas: &BTreeMap<HopKey, HopCounters>,
    interval: Duration,
) -> anyhow::Result<()> {
    let ts = timestamp(SystemTime::now());
    for hop in hops {
        for direction in [Direction::Ingress, Direction::Egress] {
            let key = HopKey {
                ifindex: hop.device.ifindex,
                direction: direction as u32,
            };
            let counters = deltas.get(&key).copied().unwrap_or_default();
            sink.write(&HopLine {
                kind: "hop",
                ts: &ts,
                ifname: &hop.device.name,
                ifindex: hop.device.ifindex,
                netns,
                dir: direction.as_str(),
                role: hop.role,
                packets: counters.packets,
                bytes: counters.bytes,
                drops: 0,
                loss_pct: 0.0,
                interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            })
            .context("writing JSON lines")?;
        }
    }
    Ok(())
}
