//! A live observation: devices selected, kernel programs loaded and attached, the maps and the
//! ring buffer in hand, the pod index started. `record` and `top` both run one; dropping it
//! detaches everything. Which pod an event, a hop or a flow belongs to is decided here, once
//! ([`Snapshot::pod_of_event`], [`MetaHop::pod`]), from the index's snapshot in hand: never waited on.

mod read;

use std::{os::unix::fs::MetadataExt as _, sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::{
    anomaly::{Enricher, Link},
    filter::FlowSelector,
    report::{Meta, MetaHop, PodsMeta},
};
use crate::{
    error::UsageError,
    interrupt::Interrupted,
    kernel::{
        btf::KernelBtf,
        caps,
        counters::{Epoch, Evictions, LostCounter},
        flows::FlowStats,
        hops::HopStats,
        kallsyms::Kallsyms,
        probes::{HookType, Probes, Tables, TcAttach, TcMode},
    },
    node::{
        devices::{self, Hop},
        features::{self, Offload},
        pods::{PodConfig, PodError, PodIndex, Snapshot, Source},
    },
};

/// How to observe.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `-i` patterns (shell globs); empty: the default selection.
    pub ifaces: Vec<String>,
    /// `--host/--port/--proto`.
    pub flows: FlowSelector,
    pub tc_attach: TcAttach,
    pub skip_hook: Vec<HookType>,
    pub max_flows: u32,
    /// `None`: [`crate::kernel::probes::default_flow_cache_slots`].
    pub flow_cache_slots: Option<u32>,
    pub ring_size: u32,
    /// Also report drops that are not losses ([`Anomaly::is_benign`]).
    pub all_drops: bool,
    /// The node's name in `meta` (`--node`); `None`: the hostname.
    pub node: Option<String>,
    /// Where pod names come from (`--cri-socket`); `None`: pods are not named.
    pub pods: Option<PodConfig>,
}

impl SessionConfig {
    /// Every default, watching `ifaces`.
    pub fn watching(ifaces: Vec<String>) -> Self {
        Self {
            ifaces,
            flows: FlowSelector::default(),
            tc_attach: TcAttach::Auto,
            skip_hook: Vec::new(),
            max_flows: vxprobe_common::MAX_FLOWS,
            flow_cache_slots: None,
            ring_size: DEFAULT_RING_SIZE,
            all_drops: false,
            node: None,
            pods: Some(PodConfig::default()),
        }
    }
}

/// The event ring buffer's size unless `--ring-size` says otherwise.
pub const DEFAULT_RING_SIZE: u32 = vxprobe_common::RING_SIZE;

/// How long start-up waits for the pod index's first look at the node, for `meta`: a runtime
/// that does not answer takes the index this long to give up on (then it reads the layout).
const POD_INDEX_WAIT: Duration = Duration::from_secs(6);

/// A live observation: the hops selected, the programs attached, the maps and the ring
/// buffer in hand. It reads what the kernel counted; [`super::interval`] makes the reports.
pub struct Session {
    probes: Probes,
    hops: Vec<Hop>,
    /// Hops whose device vanished during this interval: read one last time, then forgotten.
    gone: Vec<Hop>,
    /// `-i` patterns, for the device watcher.
    patterns: Vec<String>,
    /// The last drain stopped at its batch limit: records are waiting.
    backlog: bool,
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
    /// Offload features of the node's devices at start, by ifindex.
    offloads: std::collections::HashMap<u32, Offload>,
    /// The epoch of the interval being read ([`Session::read_hops`] to
    /// [`Session::end_interval`]).
    ending: u32,
    /// Pods by namespace and host-side device: looked up in its snapshots, never waited on.
    pods: PodIndex,
    /// Selected devices that could not be attached at start, for the pipeline.
    attach_failures: Vec<(Hop, String)>,
    /// Map reads that failed after retries since the pipeline last asked.
    read_errors: Vec<String>,
}

impl Session {
    /// Selects the devices, loads and attaches the programs, takes the maps. A SIGINT or
    /// SIGTERM meanwhile (with [`crate::interrupt::watch`]) ends it at the next step with
    /// [`Interrupted`], everything attached so far detached again. Program loads hold the
    /// signals back ([`crate::interrupt::held_back`]); any other step the signal cut short is
    /// the interruption too, not a failure.
    pub async fn start(config: &SessionConfig) -> anyhow::Result<Self> {
        let started = Self::start_steps(config).await;
        if crate::interrupt::requested() {
            return Err(Interrupted.into());
        }
        started
    }

    async fn start_steps(config: &SessionConfig) -> anyhow::Result<Self> {
        // The pod index looks at the node on a thread of its own, in this thread's namespace
        // (whose veths it names): started first, it has done so by the time we are attached.
        let mut pods = match &config.pods {
            Some(pods) => PodIndex::start(pods.clone()).map_err(|e| match e {
                PodError::NoSocket(_) => anyhow::Error::from(UsageError::new(e.to_string())),
                PodError::Thread(_) => anyhow::Error::from(e),
            })?,
            None => PodIndex::disabled(),
        };
        // Read while everything else starts: the kernel writes its symbol table slowly.
        let kallsyms = Kallsyms::load();
        let devices = devices::list_devices()
            .await
            .context("listing network devices over rtnetlink")?;
        // Tunnels without a lower device send through the device routing to their remote
        // VTEP: doctor's facts know it (routes, fdb, addresses).
        let underlays = match crate::node::facts::gather().await {
            Ok(facts) => crate::node::facts::underlays(&facts),
            Err(_) => devices
                .iter()
                .filter_map(|d| d.tunnel.as_ref()?.lower_ifindex)
                .collect(),
        };
        let hops = devices::select(&devices, &config.ifaces, &underlays)?;
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
        // vxprobe's, and only those no running vxprobe holds), under the lock other instances
        // take for their cleanup and attach too (held until ours are attached).
        let tc_lock = crate::kernel::stale::TcLock::take();
        crate::interrupt::check()?;
        crate::kernel::stale::remove_stale_filters(&tc_lock).await;
        crate::interrupt::check()?;

        // Kernel-wide hooks need the running kernel's BTF; without it, say so and count hops.
        // With it, each signal gets what it needs or says what it misses (btf_needs).
        let kernel = KernelBtf::load().map(|btf| crate::kernel::btf_needs::resolve(&btf));
        crate::interrupt::check()?;
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

        let selector = config.flows;
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
        crate::interrupt::check()?;
        let attach_failures = probes.attach_tc(&hops);
        drop(tc_lock);
        crate::interrupt::check()?;
        // Nothing attached where something should have been: that is the run's failure.
        if let Some((_, e)) = attach_failures.first()
            && !hops.iter().any(|h| probes.is_attached(h.device.ifindex))
        {
            return Err(anyhow::anyhow!("{e:#}"));
        }
        let attach_failures: Vec<(Hop, String)> = attach_failures
            .into_iter()
            .map(|(hop, e)| (hop, format!("{e:#}")))
            .collect();
        // Leave out what vanished or failed while attaching; the device watcher catches up
        // with the former, the pipeline tries the latter again.
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
        crate::interrupt::check()?;
        let hop_stats = HopStats::take(probes.ebpf_mut())?;
        let flow_stats = FlowStats::take(probes.ebpf_mut())?;
        let evictions = Evictions::take(probes.ebpf_mut())?;
        let epoch = Epoch::take(probes.ebpf_mut())?;
        let (ring, lost) = probes.take_event_maps()?;
        // SAFETY: the AsyncFd owns the RingBuf, which owns the fd, so the fd stays open for
        // as long as it is registered.
        let ring = unsafe { AsyncFd::register(ring) }.context("watching the event ring buffer")?;
        let netns = std::fs::metadata("/proc/self/ns/net")
            .context("reading /proc/self/ns/net")?
            .ino();
        crate::interrupt::check()?;
        let (first_pods, pods_meta) = first_pods(&mut pods).await;
        let meta = Meta {
            node: config
                .node
                .clone()
                .unwrap_or_else(|| crate::node::hostname().unwrap_or_default()),
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
                    ..MetaHop::of(h, &first_pods)
                })
                .collect(),
            pods: pods_meta,
        };
        // The devices' offloads name the cause of the offload signature.
        let offloads = match features::dump_netlink().await {
            Ok(by_index) => by_index
                .iter()
                .filter_map(|(ifindex, f)| Some((*ifindex, Offload::from_features(f)?)))
                .collect(),
            Err(_) => Default::default(),
        };
        let enricher = Enricher {
            reasons,
            kallsyms,
            netns,
            hops: hops
                .iter()
                .map(|h| (h.device.ifindex, (h.device.name.clone(), Link::of(h))))
                .collect(),
            devices: crate::node::netns::DeviceNames::new(netns),
        };
        // Start-up parsed the kernel's BTF and loaded programs: megabytes freed mid-heap.
        crate::memory::release_freed();
        Ok(Self {
            probes,
            hops,
            gone: Vec::new(),
            patterns: config.ifaces.clone(),
            backlog: false,
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
            offloads,
            ending: 0,
            pods,
            attach_failures,
            read_errors: Vec::new(),
        })
    }

    /// The selected devices that could not be attached at start, with why (once).
    pub fn take_attach_failures(&mut self) -> Vec<(Hop, String)> {
        std::mem::take(&mut self.attach_failures)
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The pod index the session names pods by.
    pub fn pods(&self) -> &PodIndex {
        &self.pods
    }

    /// The hops observed now.
    pub fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// Whether `ifindex` is observed now.
    pub fn is_observed(&self, ifindex: u32) -> bool {
        self.hops.iter().any(|h| h.device.ifindex == ifindex)
    }

    /// The devices' offload features at start, by ifindex.
    pub fn offloads(&self) -> &std::collections::HashMap<u32, Offload> {
        &self.offloads
    }

    /// The `-i` patterns the hops were selected by (empty: the default selection).
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Starts observing a device that appeared; returns its hop, `None` when it is observed
    /// already.
    pub fn add_hop(&mut self, hop: Hop) -> anyhow::Result<Option<MetaHop>> {
        let ifindex = hop.device.ifindex;
        if self.is_observed(ifindex) {
            return Ok(None);
        }
        self.probes.attach_hop(&hop)?;
        self.flow_stats.remember_device(ifindex);
        self.enricher
            .hops
            .insert(ifindex, (hop.device.name.clone(), Link::of(&hop)));
        let added = MetaHop {
            ahead: self.probes.ahead_of(ifindex),
            ..MetaHop::of(&hop, &self.pods.snapshot())
        };
        self.meta.hops.push(added.clone());
        // Back within the interval it vanished in (moved out of the namespace and in again):
        // one hop, counted once, not a vanished one beside a new one.
        self.gone.retain(|g| g.device.ifindex != ifindex);
        self.hops.push(hop);
        Ok(Some(added))
    }

    /// A device as the lines describe it (with its pod), observed or not.
    pub fn describe(&self, hop: &Hop) -> MetaHop {
        MetaHop::of(hop, &self.pods.snapshot())
    }

    /// Stops observing a device that vanished. Its counts of the current interval are still
    /// read when the interval closes; then it is forgotten. `None` when it was not observed.
    pub fn remove_hop(&mut self, ifindex: u32) -> Option<MetaHop> {
        let at = self.hops.iter().position(|h| h.device.ifindex == ifindex)?;
        let hop = self.hops.remove(at);
        self.probes.detach_hop(ifindex);
        self.meta.hops.retain(|h| h.ifindex != ifindex);
        let gone = MetaHop::of(&hop, &self.pods.snapshot());
        self.gone.push(hop);
        Some(gone)
    }

    /// An observed device changed its MTU: the kernel programs judge sizes by it.
    /// The MTU it had before, and the device as lines describe it now; `None` when it is not
    /// observed or its MTU is the same.
    pub fn update_hop(&mut self, hop: &Hop) -> anyhow::Result<Option<(u32, MetaHop)>> {
        let ifindex = hop.device.ifindex;
        let Some(at) = self.hops.iter().position(|h| h.device.ifindex == ifindex) else {
            return Ok(None);
        };
        // The kernel first: if it refuses, the old MTU stays known, and the next change is
        // told and tried again.
        self.probes.set_device_info(hop)?;
        let was = std::mem::replace(&mut self.hops[at].device, hop.device.clone()).mtu;
        for m in self.meta.hops.iter_mut().filter(|m| m.ifindex == ifindex) {
            m.mtu = hop.device.mtu;
        }
        Ok((was != hop.device.mtu).then(|| {
            let now = MetaHop {
                ahead: self.probes.ahead_of(ifindex),
                ..self.describe(hop)
            };
            (was, now)
        }))
    }

    /// Detaches everything (also what Drop does; explicit for the reader).
    pub fn stop(self) {
        drop(self.probes);
    }
}

/// The index's first look at the node, and what `meta` says of it; a source that takes longer
/// than [`POD_INDEX_WAIT`] is said to be none yet (pods it names later are still named).
async fn first_pods(pods: &mut PodIndex) -> (Arc<Snapshot>, PodsMeta) {
    match tokio::time::timeout(POD_INDEX_WAIT, pods.ready()).await {
        Ok(first) => {
            if let Some(error) = first.error() {
                eprintln!("vxprobe: pods ({} source): {error}", first.source());
            }
            let meta = PodsMeta::of(&first);
            (first, meta)
        }
        Err(_) => {
            let error = format!(
                "the pod index had not looked at the node after {POD_INDEX_WAIT:?}; pods it names later are named"
            );
            eprintln!("vxprobe: {error}");
            let meta = PodsMeta {
                source: Source::None,
                runtime: None,
                count: 0,
                error: Some(error),
            };
            (pods.snapshot(), meta)
        }
    }
}

/// Records decoded per [`Session::drain`] call at most.
pub const DRAIN_BATCH: usize = 16 * 1024;
