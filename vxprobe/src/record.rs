//! `vxprobe record`: attach, then write JSON lines until the duration ends or a signal comes.
//!
//! One loop owns the pipeline: ring-buffer records are decoded and enriched as they arrive
//! (batched wakeups), and every `--stats-interval` the hop counters, hop loss and lost-event
//! counts are written and everything is flushed.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};
use vxprobe_common::{Direction, EventKind, FlowCounters, FlowKey, HopCounters, HopKey};

use crate::{
    anomaly::{Anomaly, Enricher},
    anomaly::{flow_of, outer_of},
    caps,
    cli::RecordArgs,
    decode::{self, KernelEvent},
    devices::{self, Hop},
    error::UsageError,
    filter::FlowSelector,
    hopstats,
    kallsyms::Kallsyms,
    kbtf::KernelBtf,
    output::{FlowLine, HopLine, JsonLines, mean_segment, timestamp},
    probes::{HookChoice, Probes, TcMode},
};

pub const SCHEMA_VERSION: u32 = 1;

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
    let sink = JsonLines::open(&args.output)
        .map_err(|e| UsageError::new(format!("cannot write to {}: {e}", args.output)))?;
    let missing = caps::missing();
    if !missing.is_empty() {
        anyhow::bail!(
            "vxprobe needs {} (run as root, or grant them with setcap or a securityContext)",
            missing.join(", ")
        );
    }

    // Kernel-wide hooks need the running kernel's BTF; without it, say so and count hops only.
    let kernel = KernelBtf::load().and_then(|btf| {
        let reasons = btf.drop_reasons()?;
        let offsets = btf.kernel_offsets(&reasons)?;
        Ok((reasons, offsets))
    });
    let (offsets, reasons) = match kernel {
        Ok((reasons, offsets)) => (Some(offsets), reasons),
        Err(e) => {
            eprintln!("vxprobe: drops are not observed: {e}");
            (None, Default::default())
        }
    };

    let selector = args.selection.flows();
    let mut probes = Probes::load(
        TcMode::choose(args.tc_attach),
        offsets.as_ref(),
        &selector.to_kernel(),
        args.max_flows,
    )?;
    probes.attach_tc(&hops)?;
    if offsets.is_some() {
        for choice in probes.attach_signals(&args.skip_hook) {
            if choice.hook.is_none() {
                eprintln!(
                    "vxprobe: {} not observed: {}",
                    choice.signal,
                    choice.unavailable.join("; ")
                );
            }
        }
    }
    let mut hop_stats = hopstats::hop_stats(probes.ebpf_mut())?;
    let mut flow_stats = hopstats::flow_stats(probes.ebpf_mut())?;
    let mut epoch = hopstats::Epoch::take(probes.ebpf_mut())?;
    let (ring, lost) = probes.take_event_maps()?;
    // SAFETY: the AsyncFd owns the RingBuf, which owns the fd, so the fd stays open for as
    // long as it is registered.
    let mut ring = unsafe { AsyncFd::register(ring) }.context("watching the event ring buffer")?;
    let netns = own_netns()?;

    let mut pipeline = Pipeline {
        sink,
        hops: &hops,
        netns,
        enricher: Enricher {
            reasons,
            kallsyms: Kallsyms::load(),
            netns,
            hop_names: hops
                .iter()
                .map(|h| (h.device.ifindex, h.device.name.clone()))
                .collect(),
        },
        selector,
        lost: LostCounter::new(lost),
        hop_drops: BTreeMap::new(),
    };
    pipeline.write_meta(&probes)?;
    pipeline.sink.flush().context("writing JSON lines")?;
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
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                pipeline.drain(guard.get_inner_mut())?;
                guard.clear_ready();
                continue;
            }
            _ = ticker.tick() => false,
            _ = sigterm.recv() => true,
            _ = sigint.recv() => true,
            _ = sleep_until(deadline) => true,
        };
        // Records submitted without a wakeup are picked up here, before the interval closes.
        pipeline.drain(ring.get_mut())?;
        let now = Instant::now();
        let ending = epoch.current();
        let (hop_deltas, flow_deltas) = (hop_stats.interval(ending)?, flow_stats.interval(ending)?);
        epoch.advance()?;
        pipeline.write_interval(&hop_deltas, &flow_deltas, now - interval_start)?;
        interval_start = now;
        pipeline.sink.flush().context("writing JSON lines")?;
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

/// The first line: what produced this recording, where, and with which hooks.
#[derive(Serialize)]
struct MetaLine<'a> {
    kind: &'static str,
    ts: String,
    schema_version: u32,
    vxprobe_version: &'static str,
    kernel: String,
    netns: u64,
    tc_attach: &'static str,
    hooks: &'a [HookChoice],
    hops: Vec<MetaHop<'a>>,
}

#[derive(Serialize)]
struct MetaHop<'a> {
    ifname: &'a str,
    ifindex: u32,
    role: crate::devices::Role,
    mtu: u32,
}

/// An anomaly as a JSON line.
#[derive(Serialize)]
struct AnomalyLine<'a> {
    kind: &'static str,
    ts: &'a str,
    #[serde(flatten)]
    anomaly: &'a Anomaly,
}

#[derive(Serialize)]
struct LostLine<'a> {
    kind: &'static str,
    ts: &'a str,
    count: u64,
    event_kind: &'static str,
}

/// Events lost to a full ring buffer, as counted by the kernel per kind.
struct LostCounter {
    map: PerCpuArray<MapData, u64>,
    seen: [u64; EventKind::COUNT as usize],
}

impl LostCounter {
    fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self {
            map,
            seen: Default::default(),
        }
    }

    /// (kind, newly lost) for every kind that lost events since the last call.
    fn since_last(&mut self) -> anyhow::Result<Vec<(EventKind, u64)>> {
        let mut fresh = Vec::new();
        for kind in EventKind::ALL {
            let index = kind as u32;
            let total: u64 = self
                .map
                .get(&index, 0)
                .context("reading the LOST map")?
                .iter()
                .sum();
            let seen = &mut self.seen[index as usize];
            if total > *seen {
                fresh.push((kind, total - *seen));
                *seen = total;
            }
        }
        Ok(fresh)
    }
}

fn event_kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Drop => "drop",
        EventKind::Retransmit => "retransmit",
        EventKind::SendError => "oversize",
        EventKind::Fragment => "fragment",
        EventKind::HopOversize => "oversize",
    }
}

struct Pipeline<'a> {
    sink: JsonLines,
    hops: &'a [Hop],
    netns: u64,
    enricher: Enricher,
    /// `--host/--port/--proto` for events the kernel could not filter (kernel-wide hooks).
    selector: FlowSelector,
    lost: LostCounter,
    /// Faults charged to each hop in the current interval.
    hop_drops: BTreeMap<HopKey, u64>,
}

impl Pipeline<'_> {
    fn write_meta(&mut self, probes: &Probes) -> anyhow::Result<()> {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        self.sink.write(&MetaLine {
            kind: "meta",
            ts: timestamp(SystemTime::now()),
            schema_version: SCHEMA_VERSION,
            vxprobe_version: env!("CARGO_PKG_VERSION"),
            kernel,
            netns: self.netns,
            tc_attach: probes.tc_mode.as_str(),
            hooks: &probes.hooks,
            hops: self
                .hops
                .iter()
                .map(|h| MetaHop {
                    ifname: &h.device.name,
                    ifindex: h.device.ifindex,
                    role: h.role,
                    mtu: h.device.mtu,
                })
                .collect(),
        })?;
        Ok(())
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        let ts = timestamp(SystemTime::now());
        while let Some(record) = ring.next() {
            let anomaly = match decode::decode(&record) {
                Ok(KernelEvent::Drop(event)) => self.enricher.drop_event(&event),
                Ok(KernelEvent::Retransmit(event)) => self.enricher.retransmit(&event),
                Ok(KernelEvent::SendError(event)) => self.enricher.send_error(&event),
                Ok(KernelEvent::Hop(event)) => self.enricher.hop_event(&event),
                Err(e) => {
                    eprintln!("vxprobe: skipping a kernel record: {e}");
                    continue;
                }
            };
            if !self.selector.matches(&anomaly) {
                continue;
            }
            self.charge_hop(&anomaly);
            self.sink.write(&AnomalyLine {
                kind: anomaly.kind.as_str(),
                ts: &ts,
                anomaly: &anomaly,
            })?;
        }
        Ok(())
    }

    /// Counts a fault against the hop it happened at, when that hop is one of ours.
    fn charge_hop(&mut self, anomaly: &Anomaly) {
        let (Some(ifindex), Some(direction)) = (anomaly.ifindex, anomaly.hop_direction) else {
            return;
        };
        if !anomaly.dropped {
            return;
        }
        if anomaly.netns != self.netns || !self.hops.iter().any(|h| h.device.ifindex == ifindex) {
            return;
        }
        let key = HopKey {
            ifindex,
            direction: direction as u32,
        };
        *self.hop_drops.entry(key).or_default() += 1;
    }

    /// One `hop` line per selected device and direction, zero counts included (a hop that
    /// goes quiet is visible as such), then any `lost` lines.
    fn write_interval(
        &mut self,
        deltas: &BTreeMap<HopKey, HopCounters>,
        flows: &BTreeMap<FlowKey, FlowCounters>,
        interval: Duration,
    ) -> anyhow::Result<()> {
        let ts = timestamp(SystemTime::now());
        let drops = std::mem::take(&mut self.hop_drops);
        for hop in self.hops {
            for direction in [Direction::Ingress, Direction::Egress] {
                let key = HopKey {
                    ifindex: hop.device.ifindex,
                    direction: direction as u32,
                };
                let counters = deltas.get(&key).copied().unwrap_or_default();
                let dropped = drops.get(&key).copied().unwrap_or(0);
                self.sink.write(&HopLine {
                    kind: "hop",
                    ts: &ts,
                    ifname: &hop.device.name,
                    ifindex: hop.device.ifindex,
                    netns: self.netns,
                    dir: direction.as_str(),
                    role: hop.role,
                    packets: counters.packets,
                    bytes: counters.bytes,
                    drops: dropped,
                    loss_pct: loss_pct(counters.packets, dropped),
                    segs: counters.segs,
                    mean_segment: mean_segment(counters.bytes, counters.segs),
                    max_len: u64::from(counters.max_len),
                    fragments: counters.fragments,
                    oversize: counters.oversize,
                    interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
                })?;
            }
        }
        for (key, counters) in flows {
            let (Some(hop), Ok(direction), Some(flow)) = (
                self.hops.iter().find(|h| h.device.ifindex == key.ifindex),
                Direction::try_from(u32::from(key.direction)),
                flow_of(key),
            ) else {
                continue;
            };
            let outer = outer_of(&counters.outer);
            self.sink.write(&FlowLine {
                kind: "flow",
                ts: &ts,
                ifname: &hop.device.name,
                ifindex: key.ifindex,
                netns: self.netns,
                dir: direction.as_str(),
                role: hop.role,
                flow: &flow,
                outer: outer.as_ref(),
                packets: counters.packets,
                bytes: counters.bytes,
                segs: counters.segs,
                mean_segment: mean_segment(counters.bytes, counters.segs),
                max_len: u64::from(counters.max_len),
                fragments: counters.fragments,
                oversize: counters.oversize,
            })?;
        }
        for (kind, count) in self.lost.since_last()? {
            self.sink.write(&LostLine {
                kind: "lost",
                ts: &ts,
                count,
                event_kind: event_kind_name(kind),
            })?;
        }
        Ok(())
    }
}

/// drops / (packets seen + drops), in percent: a packet dropped at a hop may or may not have
/// been counted by the hop's TC program, depending on where in the device it died.
fn loss_pct(packets: u64, drops: u64) -> f64 {
    let total = packets + drops;
    if total == 0 {
        0.0
    } else {
        (drops as f64 * 100.0 / total as f64 * 100.0).round() / 100.0
    }
}
