//! A live observation: devices selected, kernel programs loaded and attached, the maps and the
//! ring buffer in hand. `record` and `top` both run one; dropping it detaches everything.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt as _, path::PathBuf, time::SystemTime};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use vxprobe_common::{Direction, EventKind, HopKey};

use crate::{
    anomaly::{Anomaly, Enricher, Link, flow_of, outer_of},
    caps,
    cli::{ProbeOptions, Selection, TcAttach},
    decode::{self, KernelEvent},
    devices::{self, DeviceKind, Hop, Role},
    error::UsageError,
    filter::FlowSelector,
    hopstats::{self, Epoch, Evictions, FlowStats, HopStats},
    kallsyms::Kallsyms,
    kbtf::KernelBtf,
    packet::{Flow, Outer},
    probes::{HookChoice, HookType, Probes, Tables, TcMode},
};

/// How to observe, from the command line.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub selection: Selection,
    pub tc_attach: TcAttach,
    pub skip_hook: Vec<HookType>,
    pub max_flows: u32,
    /// `None`: [`crate::probes::default_flow_cache_slots`].
    pub flow_cache_slots: Option<u32>,
    pub ring_size: u32,
    /// Also report drops that are not losses ([`Anomaly::is_benign`]).
    pub all_drops: bool,
}

impl SessionConfig {
    /// What `record` and `top` ask for on their command lines.
    pub fn from_cli(selection: &Selection, probe: &ProbeOptions) -> Self {
        Self {
            selection: selection.clone(),
            tc_attach: probe.tc_attach,
            skip_hook: probe.skip_hook.clone(),
            max_flows: probe.max_flows,
            flow_cache_slots: probe.flow_cache,
            ring_size: probe.ring_size,
            all_drops: probe.all_drops,
        }
    }
}

/// What this session watches, with which hooks: the `meta` line, the TUI's status line.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub vxprobe_version: &'static str,
    pub kernel: String,
    pub netns: u64,
    pub tc_attach: &'static str,
    /// Capacity of the kernel's flow table (`--max-flows`).
    pub max_flows: u32,
    /// Slots per CPU of the flow cache in front of it (`--flow-cache`).
    pub flow_cache_slots: u32,
    pub hooks: Vec<HookChoice>,
    /// Signals observed with less than usual on this kernel, and what they lose (btf_needs).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub degraded: BTreeMap<&'static str, Vec<String>>,
    pub hops: Vec<MetaHop>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetaHop {
    pub ifname: String,
    pub ifindex: u32,
    pub role: Role,
    pub mtu: u32,
    /// Programs and filters that run before vxprobe's on this device and can end processing
    /// there (tc_order): what they pass, drop or redirect is not counted at the hop.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<crate::tc_order::Ahead>,
}

/// A hop that started (a device appeared) or stopped (it vanished) being observed.
#[derive(Debug, Clone)]
pub struct HopChange {
    pub ts: SystemTime,
    pub added: bool,
    pub hop: MetaHop,
}

impl HopChange {
    pub fn added(hop: MetaHop) -> Self {
        Self {
            ts: SystemTime::now(),
            added: true,
            hop,
        }
    }

    pub fn removed(hop: MetaHop) -> Self {
        Self {
            ts: SystemTime::now(),
            added: false,
            hop,
        }
    }
}

/// One hop over one interval.
#[derive(Debug, Clone)]
pub struct HopReport {
    pub hop: MetaHop,
    pub dir: Direction,
    pub counters: vxprobe_common::HopCounters,
    /// Faults charged to this hop: drops, checksum failures, refused sends.
    pub drops: u64,
}

impl HopReport {
    /// The share of the hop's packets that died there, in percent. At ingress the TC program
    /// counts a packet before the stack can drop it, so drops are part of `packets`; at egress
    /// the stack drops before TC sees the packet, so they come on top.
    pub fn loss_pct(&self) -> f64 {
        let (lost, total) = match self.dir {
            Direction::Ingress => (self.drops.min(self.counters.packets), self.counters.packets),
            Direction::Egress => (self.drops, self.counters.packets + self.drops),
        };
        if total == 0 {
            0.0
        } else {
            (lost as f64 * 100.0 / total as f64 * 100.0).round() / 100.0
        }
    }
}

/// One flow at one hop over one interval.
#[derive(Debug, Clone)]
pub struct FlowReport {
    pub hop: MetaHop,
    pub dir: Direction,
    pub flow: Flow,
    pub outer: Option<Outer>,
    pub counters: vxprobe_common::FlowCounters,
}

/// What an interval produced besides the anomalies and the flows: the hops.
#[derive(Debug, Clone)]
pub struct IntervalReport {
    pub ts: SystemTime,
    pub interval: std::time::Duration,
    /// Every selected hop in both directions, quiet ones included.
    pub hops: Vec<HopReport>,
    /// Events the kernel could not hand over (ring buffer full), per kind.
    pub lost: Vec<(EventKind, u64)>,
}

/// What reading the flow table found, once the interval's flows are out.
#[derive(Debug, Clone, Default)]
pub struct IntervalEnd {
    /// Flow entries the kernel's full flow table evicted (least recently seen first) in this
    /// interval; their counts since the last read are missing from the flows (hops stay
    /// exact).
    pub evicted: u64,
}

/// A closing interval, piece by piece: the report, the flows that moved in batches, the end.
#[derive(Debug, Clone, Copy)]
pub enum IntervalPart<'a> {
    Report(&'a IntervalReport),
    Flows(&'a [FlowReport]),
    End(&'a IntervalEnd),
}

/// Flows handed to the sinks at a time.
const FLOW_BATCH: usize = 1024;

pub struct Session {
    probes: Probes,
    hops: Vec<Hop>,
    /// Hops whose device vanished during this interval: reported one last time, then
    /// forgotten.
    gone: Vec<Hop>,
    /// `-i` patterns, for the device watcher.
    patterns: Vec<String>,
    /// The last drain stopped at its batch limit: records are waiting.
    backlog: bool,
    netns: u64,
    meta: Meta,
    hop_stats: HopStats,
    flow_stats: FlowStats,
    evictions: Evictions,
    epoch: Epoch,
    ring: AsyncFd<RingBuf<MapData>>,
    lost: LostCounter,
    enricher: Enricher,
    /// `--host/--port/--proto` for events the kernel could not filter (kernel-wide hooks).
    selector: FlowSelector,
    all_drops: bool,
    /// Faults charged to each hop in the current interval.
    hop_drops: BTreeMap<HopKey, u64>,
}

impl Session {
    pub async fn start(config: &SessionConfig) -> anyhow::Result<Self> {
        let devices = devices::list_devices()
            .await
            .context("listing network devices over rtnetlink")?;
        // Tunnels without a lower device send through the device routing to their remote
        // VTEP: doctor's facts know it (routes, fdb, addresses).
        let underlays = match crate::doctor::facts::gather().await {
            Ok(facts) => crate::doctor::rules::underlays(&facts),
            Err(_) => devices
                .iter()
                .filter_map(|d| d.tunnel.as_ref()?.lower_ifindex)
                .collect(),
        };
        let hops = devices::select(&devices, &config.selection.ifaces, &underlays)?;
        if hops.is_empty() {
            return Err(UsageError::new(
                "no device to observe here (no VXLAN/Geneve, tun/tap or physical NIC): name some with -i",
            )
            .into());
        }
        let missing = caps::missing();
        if !missing.is_empty() {
            anyhow::bail!(
                "vxprobe needs {} (run as root, or grant them with setcap or a securityContext)",
                missing.join(", ")
            );
        }

        TcMode::check(config.tc_attach, aya::util::KernelVersion::current().ok())?;
        // A vxprobe killed in clsact mode left filters that run for no one: remove them (only
        // vxprobe's, and only those no running vxprobe holds).
        crate::stale::remove_stale_filters().await;

        // Kernel-wide hooks need the running kernel's BTF; without it, say so and count hops.
        // With it, each signal gets what it needs or says what it misses (btf_needs).
        let kernel = KernelBtf::load().map(|btf| crate::btf_needs::resolve(&btf));
        let (offsets, reasons, no_btf) = match &kernel {
            Ok(facts) => {
                for note in facts.degradations() {
                    eprintln!("vxprobe: {note}");
                }
                (Some(facts.offsets), facts.reasons.clone(), None)
            }
            Err(e) => {
                eprintln!("vxprobe: drops, retransmits and refused sends are not observed: {e}");
                (None, Default::default(), Some(e.to_string()))
            }
        };

        let selector = config.selection.flows();
        let mut probes = Probes::load(
            TcMode::choose(config.tc_attach),
            offsets.as_ref(),
            &selector.to_kernel(),
            Tables {
                max_flows: config.max_flows,
                flow_cache_slots: config.flow_cache_slots,
                ring_size: config.ring_size,
            },
        )?;
        probes.attach_tc(&hops)?;
        // Leave out what vanished while attaching; the device watcher catches up.
        let hops: Vec<Hop> = hops
            .into_iter()
            .filter(|h| probes.is_attached(h.device.ifindex))
            .collect();
        if let Some(why) = no_btf {
            probes.signals_unavailable(&why);
        } else {
            if let Ok(facts) = &kernel {
                probes.use_kernel_facts(facts);
            }
            for choice in probes.attach_signals(&config.skip_hook) {
                if choice.hook.is_none() {
                    eprintln!(
                        "vxprobe: {} not observed: {}",
                        choice.signal,
                        choice.unavailable.join("; ")
                    );
                }
            }
        }
        let hop_stats = hopstats::hop_stats(probes.ebpf_mut())?;
        let flow_stats = hopstats::flow_stats(probes.ebpf_mut())?;
        let evictions = Evictions::take(probes.ebpf_mut())?;
        let epoch = Epoch::take(probes.ebpf_mut())?;
        let (ring, lost) = probes.take_event_maps()?;
        // SAFETY: the AsyncFd owns the RingBuf, which owns the fd, so the fd stays open for
        // as long as it is registered.
        let ring = unsafe { AsyncFd::register(ring) }.context("watching the event ring buffer")?;
        let netns = std::fs::metadata("/proc/self/ns/net")
            .context("reading /proc/self/ns/net")?
            .ino();
        let meta = Meta {
            vxprobe_version: env!("CARGO_PKG_VERSION"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            netns,
            tc_attach: probes.tc_mode.as_str(),
            max_flows: config.max_flows,
            flow_cache_slots: probes.flow_cache_slots,
            hooks: probes.hooks.clone(),
            degraded: kernel
                .as_ref()
                .map(|facts| facts.degraded.clone())
                .unwrap_or_default(),
            hops: hops
                .iter()
                .map(|h| MetaHop {
                    ahead: probes.ahead_of(h.device.ifindex),
                    ..meta_hop(h)
                })
                .collect(),
        };
        let enricher = Enricher {
            reasons,
            kallsyms: Kallsyms::load(),
            netns,
            hops: hops
                .iter()
                .map(|h| (h.device.ifindex, (h.device.name.clone(), link_of(h))))
                .collect(),
            foreign_devices: Default::default(),
        };
        // Start-up parsed the kernel's BTF and loaded programs: megabytes freed mid-heap.
        crate::memory::release_freed();
        Ok(Self {
            probes,
            hops,
            gone: Vec::new(),
            patterns: config.selection.ifaces.clone(),
            backlog: false,
            netns,
            meta,
            hop_stats,
            flow_stats,
            evictions,
            epoch,
            ring,
            lost: LostCounter::new(lost),
            enricher,
            selector,
            all_drops: config.all_drops,
            hop_drops: BTreeMap::new(),
        })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The hops observed now.
    pub fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// The `-i` patterns the hops were selected by (empty: the default selection).
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Starts observing a device that appeared. `Ok(false)` when it is observed already.
    pub fn add_hop(&mut self, hop: Hop) -> anyhow::Result<bool> {
        let ifindex = hop.device.ifindex;
        if self.hops.iter().any(|h| h.device.ifindex == ifindex) {
            return Ok(false);
        }
        self.probes.attach_hop(&hop)?;
        self.flow_stats.remember_device(ifindex);
        self.enricher
            .hops
            .insert(ifindex, (hop.device.name.clone(), link_of(&hop)));
        self.meta.hops.push(MetaHop {
            ahead: self.probes.ahead_of(ifindex),
            ..meta_hop(&hop)
        });
        self.hops.push(hop);
        Ok(true)
    }

    /// Stops observing a device that vanished. Its counts of the current interval are still
    /// reported when the interval closes; then it is forgotten. `None` when it was not
    /// observed.
    pub fn remove_hop(&mut self, ifindex: u32) -> Option<MetaHop> {
        let at = self.hops.iter().position(|h| h.device.ifindex == ifindex)?;
        let hop = self.hops.remove(at);
        self.probes.detach_hop(ifindex);
        self.meta.hops.retain(|h| h.ifindex != ifindex);
        let gone = meta_hop(&hop);
        self.gone.push(hop);
        Some(gone)
    }

    /// An observed device changed its MTU: the kernel programs judge sizes by it.
    pub fn update_hop(&mut self, hop: &Hop) -> anyhow::Result<()> {
        let ifindex = hop.device.ifindex;
        let Some(known) = self.hops.iter_mut().find(|h| h.device.ifindex == ifindex) else {
            return Ok(());
        };
        known.device = hop.device.clone();
        self.probes.set_device_info(hop)?;
        for m in self.meta.hops.iter_mut().filter(|m| m.ifindex == ifindex) {
            m.mtu = hop.device.mtu;
        }
        Ok(())
    }

    /// Waits until the kernel wakes us for new events (at once when a drain left some).
    pub async fn events_ready(&mut self) -> anyhow::Result<()> {
        if self.backlog {
            // Let the timer, signals and device changes in between two batches.
            tokio::task::yield_now().await;
            self.backlog = false;
            return Ok(());
        }
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .context("waiting on the ring buffer")?;
        guard.clear_ready();
        Ok(())
    }

    /// Decodes the records waiting in the ring buffer (at most [`DRAIN_BATCH`] per call, so a
    /// flood cannot starve the interval timer), hands each anomaly that passes the flow filter
    /// to `out`, and charges drops to their hops.
    pub fn drain(
        &mut self,
        mut out: impl FnMut(Anomaly) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let ring = self.ring.get_mut();
        let mut taken = 0;
        while let Some(record) = ring.next() {
            taken += 1;
            if taken >= DRAIN_BATCH {
                self.backlog = true;
            }
            let anomaly = match decode::decode(&record) {
                Ok(KernelEvent::Drop(event)) => self.enricher.drop_event(&event),
                Ok(KernelEvent::Retransmit(event)) => self.enricher.retransmit(&event),
                Ok(KernelEvent::SendError(event)) => self.enricher.send_error(&event),
                Ok(KernelEvent::Hop(event)) => self.enricher.hop_event(&event),
                Ok(KernelEvent::FragNeeded(event)) => self.enricher.frag_needed(&event),
                Ok(KernelEvent::Csum(event)) => self.enricher.csum(&event),
                Err(e) => {
                    eprintln!("vxprobe: skipping a kernel record: {e}");
                    continue;
                }
            };
            drop(record);
            if !self.selector.matches(&anomaly) || (anomaly.is_benign() && !self.all_drops) {
                continue;
            }
            charge_hop(
                &mut self.hop_drops,
                self.hops.iter().chain(&self.gone),
                self.netns,
                &anomaly,
            );
            out(anomaly)?;
            if self.backlog {
                break;
            }
        }
        Ok(())
    }

    /// Closes the interval: counters since the last call, per hop and per flow. `out` gets
    /// the hops first ([`IntervalPart::Report`]), then the flows that moved, a batch at a
    /// time ([`IntervalPart::Flows`]): flows are never all held at once; then what reading
    /// the flow table found ([`IntervalPart::End`]).
    pub fn close_interval(
        &mut self,
        interval: std::time::Duration,
        mut out: impl FnMut(IntervalPart<'_>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let ending = self.epoch.current();
        let slots = &self.probes.hop_slots;
        let devices = self
            .hops
            .iter()
            .chain(&self.gone)
            .filter_map(|hop| Some((hop.device.ifindex, slots.get(hop.device.ifindex)?)));
        let hop_deltas = self.hop_stats.interval(ending, devices)?;
        let drops = std::mem::take(&mut self.hop_drops);
        let mut hops = Vec::with_capacity((self.hops.len() + self.gone.len()) * 2);
        for hop in self.hops.iter().chain(&self.gone) {
            for dir in [Direction::Ingress, Direction::Egress] {
                let key = HopKey {
                    ifindex: hop.device.ifindex,
                    direction: dir as u32,
                };
                hops.push(HopReport {
                    hop: meta_hop(hop),
                    dir,
                    counters: hop_deltas.get(&key).copied().unwrap_or_default(),
                    drops: drops.get(&key).copied().unwrap_or(0),
                });
            }
        }
        out(IntervalPart::Report(&IntervalReport {
            ts: SystemTime::now(),
            interval,
            hops,
            lost: self.lost.since_last()?,
        }))?;

        let created = self.evictions.created()?;
        let mut batch = Vec::with_capacity(FLOW_BATCH);
        let (hops, gone) = (&self.hops, &self.gone);
        self.flow_stats.interval(ending, |key, counters| {
            let Some(hop) = hops
                .iter()
                .chain(gone)
                .find(|h| h.device.ifindex == key.ifindex)
            else {
                return Ok(());
            };
            let (Ok(dir), Some(flow)) =
                (Direction::try_from(u32::from(key.direction)), flow_of(key))
            else {
                return Ok(());
            };
            batch.push(FlowReport {
                hop: meta_hop(hop),
                dir,
                flow,
                outer: outer_of(&counters.outer),
                counters: *counters,
            });
            if batch.len() == FLOW_BATCH {
                out(IntervalPart::Flows(&batch))?;
                batch.clear();
            }
            Ok(())
        })?;
        if !batch.is_empty() {
            out(IntervalPart::Flows(&batch))?;
        }
        self.evictions.deleted(self.flow_stats.take_deleted());
        let evicted = self.evictions.since_last(created, self.flow_stats.len());
        self.epoch.advance()?;
        // Vanished devices had their last line: free their slots in the kernel's maps.
        for hop in std::mem::take(&mut self.gone) {
            let ifindex = hop.device.ifindex;
            if self.hops.iter().any(|h| h.device.ifindex == ifindex) {
                continue; // back already (a device moved out and in again)
            }
            if let Some(slot) = self.probes.hop_slots.release(ifindex) {
                self.hop_stats.forget(ifindex, slot)?;
            }
            self.flow_stats.forget_device(ifindex);
            self.enricher.hops.remove(&ifindex);
        }
        // Reading a large flow table frees megabytes of buffers each interval.
        crate::memory::release_freed();
        out(IntervalPart::End(&IntervalEnd { evicted }))
    }

    /// Detaches everything (also what Drop does; explicit for the reader).
    pub fn stop(self) {
        drop(self.probes);
    }
}

fn meta_hop(hop: &Hop) -> MetaHop {
    MetaHop {
        ifname: hop.device.name.clone(),
        ifindex: hop.device.ifindex,
        role: hop.role,
        mtu: hop.device.mtu,
        ahead: Vec::new(),
    }
}

/// Records decoded per [`Session::drain`] call at most.
pub const DRAIN_BATCH: usize = 16 * 1024;

/// How a hop's frames start: tun devices carry IP packets, the others Ethernet frames.
fn link_of(hop: &Hop) -> Link {
    if hop.device.kind == DeviceKind::Tun {
        Link::Ip
    } else {
        Link::Ethernet
    }
}

/// Counts a fault against the hop it happened at, when that hop is one of ours.
fn charge_hop<'a>(
    drops: &mut BTreeMap<HopKey, u64>,
    mut hops: impl Iterator<Item = &'a Hop>,
    netns: u64,
    anomaly: &Anomaly,
) {
    let (Some(ifindex), Some(direction)) = (anomaly.ifindex, anomaly.hop_direction) else {
        return;
    };
    if !anomaly.dropped || anomaly.netns != netns || !hops.any(|h| h.device.ifindex == ifindex) {
        return;
    }
    let key = HopKey {
        ifindex,
        direction: direction as u32,
    };
    *drops.entry(key).or_default() += u64::from(anomaly.count.unwrap_or(1));
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

/// Checks `--ready-file` before anything is attached: its directory must exist and be
/// writable, and a ready file left by an earlier run is removed (a script waiting for it must
/// not see it before this run is ready).
pub fn check_ready_file(path: Option<&PathBuf>) -> Result<(), UsageError> {
    let Some(path) = path else {
        return Ok(());
    };
    let bad = |why: &str| UsageError::new(format!("--ready-file {}: {why}", path.display()));
    if path.is_dir() {
        return Err(bad("is a directory"));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(bad(&format!("no such directory {}", dir.display())));
    }
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| bad("contains a NUL byte"))?;
    // SAFETY: access(2) reads a NUL-terminated path we own.
    if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(bad(&format!("cannot write in {}: {e}", dir.display())));
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bad(&format!("cannot remove the old one: {e}"))),
    }
}

/// Where a ready file goes once everything is attached.
pub fn signal_ready(path: Option<&PathBuf>) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, b"ready\n")
            .with_context(|| format!("writing the ready file {}", path.display()))?;
    }
    Ok(())
}
