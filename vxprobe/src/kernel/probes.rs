//! Loading vxprobe's kernel programs and attaching them: the only module that touches aya's
//! program API. For each kernel-wide signal it walks a ladder of hooks, best first, keeps the
//! first that loads and attaches, and records the choice (and why the others failed) for
//! `meta` lines and `vxprobe probes`. Everything attached is detached when [`Probes`] drops.

use std::collections::HashMap;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, LinkOrder, RawTracePoint, SchedClassifier,
        TcAttachType, TracePoint,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
    util::KernelVersion,
};
use serde::Serialize;
use vxprobe_common::{DeviceInfo, FlowFilter, KernelOffsets, LOW_IFINDEXES, names};

use crate::{
    error::UsageError,
    kernel::hops::HopSlots,
    node::devices::{DeviceKind, Hop},
};

/// The kernel programs, built by build.rs and embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vxprobe"));

/// How TC programs attach: TCX links (Linux >= 6.6) or clsact filters; `auto` picks TCX
/// where the kernel has it (`--tc-attach`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    Auto,
    Tcx,
    Clsact,
}

/// How TC programs are attached on this kernel.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcMode {
    /// TCX links (Linux >= 6.6): owned by this process, gone when it exits, even on SIGKILL.
    Tcx,
    /// A clsact qdisc with direct-action filters over netlink (older kernels).
    Clsact,
}

impl TcMode {
    pub fn choose(requested: TcAttach) -> Self {
        match requested {
            TcAttach::Tcx => TcMode::Tcx,
            TcAttach::Clsact => TcMode::Clsact,
            TcAttach::Auto => match KernelVersion::current() {
                Ok(v) if v >= KernelVersion::new(6, 6, 0) => TcMode::Tcx,
                _ => TcMode::Clsact,
            },
        }
    }

    /// `--tc-attach tcx` where the kernel has no TCX (before 6.6) is bad input for this node.
    pub fn check(requested: TcAttach, kernel: Option<KernelVersion>) -> Result<(), UsageError> {
        match kernel {
            Some(v) if requested == TcAttach::Tcx && v < KernelVersion::new(6, 6, 0) => {
                Err(UsageError::new(format!(
                    "--tc-attach tcx needs Linux 6.6 or later (this kernel is {v}): use \
                     --tc-attach clsact or auto"
                )))
            }
            _ => Ok(()),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            TcMode::Tcx => "tcx",
            TcMode::Clsact => "clsact",
        }
    }
}

/// The hooks of the ladder, in order of preference.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HookType {
    Fentry,
    Fexit,
    TpBtf,
    Kprobe,
    RawTracepoint,
    Tracepoint,
}

impl HookType {
    pub const fn as_str(self) -> &'static str {
        match self {
            HookType::Fentry => "fentry",
            HookType::Fexit => "fexit",
            HookType::TpBtf => "tp_btf",
            HookType::Kprobe => "kprobe",
            HookType::RawTracepoint => "raw_tracepoint",
            HookType::Tracepoint => "tracepoint",
        }
    }
}

/// One rung of a ladder: a hook type and the programs (with their targets) it needs, all of
/// which must attach.
struct Rung {
    hook: HookType,
    programs: &'static [(&'static str, &'static str)],
}

/// Every kernel-wide signal with its hooks, best first.
const LADDERS: &[(&str, &[Rung])] = &[
    (
        "drop",
        &[
            Rung {
                hook: HookType::TpBtf,
                programs: &[(names::KFREE_SKB_BTF, "kfree_skb")],
            },
            // The freeing function: sk_skb_reason_drop since 6.11, kfree_skb_reason before.
            Rung {
                hook: HookType::Kprobe,
                programs: &[(names::KFREE_SKB_KPROBE_SK, "sk_skb_reason_drop")],
            },
            Rung {
                hook: HookType::Kprobe,
                programs: &[(names::KFREE_SKB_KPROBE, "kfree_skb_reason")],
            },
            // Before 5.17 (no drop reasons) kfree_skb is the function.
            Rung {
                hook: HookType::Kprobe,
                programs: &[(names::KFREE_SKB_KPROBE_REASONLESS, "kfree_skb")],
            },
            Rung {
                hook: HookType::RawTracepoint,
                programs: &[(names::KFREE_SKB_RAW, "kfree_skb")],
            },
        ],
    ),
    (
        "retransmit",
        &[
            Rung {
                hook: HookType::TpBtf,
                programs: &[(names::RETRANSMIT_BTF, "tcp_retransmit_skb")],
            },
            // No kprobe rung: a kprobe on tcp_retransmit_skb sees every attempt, failed ones
            // too (-EBUSY while the original is still queued), and over-counted 3x on Debian
            // 6.1; the tracepoint sees what went out, and every kernel with BTF has it raw.
            Rung {
                hook: HookType::RawTracepoint,
                programs: &[(names::RETRANSMIT_RAW, "tcp_retransmit_skb")],
            },
        ],
    ),
    (
        "retransmit_synack",
        &[
            Rung {
                hook: HookType::TpBtf,
                programs: &[(names::RETRANSMIT_SYNACK_BTF, "tcp_retransmit_synack")],
            },
            Rung {
                hook: HookType::RawTracepoint,
                programs: &[(names::RETRANSMIT_SYNACK_RAW, "tcp_retransmit_synack")],
            },
        ],
    ),
    (
        "frag_needed",
        &[
            Rung {
                hook: HookType::TpBtf,
                programs: &[(names::ICMP_SEND_BTF, "icmp_send")],
            },
            Rung {
                hook: HookType::RawTracepoint,
                programs: &[(names::ICMP_SEND_RAW, "icmp_send")],
            },
            // Before 5.17 there is no icmp_send tracepoint: the function it sits in.
            Rung {
                hook: HookType::Fentry,
                programs: &[(names::ICMP_SEND_FENTRY, "__icmp_send")],
            },
            Rung {
                hook: HookType::Kprobe,
                programs: &[(names::ICMP_SEND_KPROBE, "__icmp_send")],
            },
        ],
    ),
    (
        // A device's CHECKSUM_COMPLETE value found wrong by the stack (no tracepoint exists).
        "rx_csum_fault",
        &[Rung {
            hook: HookType::Kprobe,
            programs: &[(names::RX_CSUM_FAULT_KPROBE, "netdev_rx_csum_fault")],
        }],
    ),
    (
        "send_emsgsize",
        &[
            Rung {
                hook: HookType::Fexit,
                programs: &[
                    (names::PACKET_SENDMSG_FEXIT, "packet_sendmsg"),
                    (names::UDP_SENDMSG_FEXIT, "udp_sendmsg"),
                ],
            },
            // The exits alone, where the kernel hands out the saved registers (5.15+): a send
            // that succeeds costs one compare, not a map update and a map lookup.
            Rung {
                hook: HookType::Tracepoint,
                programs: &[
                    (names::SENDTO_EXIT_REGS, "syscalls/sys_exit_sendto"),
                    (names::SENDMSG_EXIT_REGS, "syscalls/sys_exit_sendmsg"),
                ],
            },
            Rung {
                hook: HookType::Tracepoint,
                programs: &[
                    (names::SENDTO_ENTER, "syscalls/sys_enter_sendto"),
                    (names::SENDTO_EXIT, "syscalls/sys_exit_sendto"),
                    (names::SENDMSG_ENTER, "syscalls/sys_enter_sendmsg"),
                    (names::SENDMSG_EXIT, "syscalls/sys_exit_sendmsg"),
                ],
            },
        ],
    ),
];

/// Names signals to leave out, comma-separated.
pub const SKIP_SIGNALS_ENV: &str = "VXPROBE_SKIP_SIGNALS";

/// `tcp:tcp_bad_csum`, for kernels whose drops carry no reason.
const TCP_BAD_CSUM_LADDER: &[Rung] = &[
    Rung {
        hook: HookType::TpBtf,
        programs: &[(names::TCP_BAD_CSUM_BTF, "tcp_bad_csum")],
    },
    Rung {
        hook: HookType::RawTracepoint,
        programs: &[(names::TCP_BAD_CSUM_RAW, "tcp_bad_csum")],
    },
];

/// Which hook a signal uses here, and what was tried before it.
#[derive(Clone, Debug, Serialize)]
pub struct HookChoice {
    pub signal: &'static str,
    /// `tp_btf:kfree_skb`; absent when no rung worked.
    pub hook: Option<String>,
    /// Rungs that failed, with the reason, best first.
    pub unavailable: Vec<String>,
}

/// Flow cache slots per CPU unless told: [`FLOW_CACHE_SLOTS`], fewer where many CPUs would
/// make the cache (and its reader's copy) large: 32768 slots in all at most, a power of two
/// per CPU. `cpus`: the CPU ids the cache has a share for.
///
/// [`FLOW_CACHE_SLOTS`]: vxprobe_common::FLOW_CACHE_SLOTS
pub fn default_flow_cache_slots(cpus: usize) -> u32 {
    const MOST_IN_ALL: u32 = 32768;
    let share = MOST_IN_ALL / (cpus.max(1) as u32).min(MOST_IN_ALL);
    // Largest power of two not above the share (at least 1).
    let share = 1 << (31 - share.max(1).leading_zeros());
    share.min(vxprobe_common::FLOW_CACHE_SLOTS)
}

/// Sizes of the kernel's tables, chosen at load.
#[derive(Debug, Clone, Copy)]
pub struct Tables {
    /// Entries of the per-CPU LRU flow map (`--max-flows`).
    pub max_flows: u32,
    /// Slots per CPU of the flow cache in front of it (a power of two); `None`:
    /// [`default_flow_cache_slots`].
    pub flow_cache_slots: Option<u32>,
    /// Bytes of the event ring buffer (`--ring-size`).
    pub ring_size: u32,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            max_flows: vxprobe_common::MAX_FLOWS,
            flow_cache_slots: None,
            ring_size: vxprobe_common::RING_SIZE,
        }
    }
}

/// The loaded programs and their attachments.
pub struct Probes {
    ebpf: Ebpf,
    pub tc_mode: TcMode,
    /// Flow cache slots per CPU, as loaded.
    pub flow_cache_slots: u32,
    pub hooks: Vec<HookChoice>,
    /// The TC attachments of each hop, by ifindex.
    tc_links: HashMap<u32, Vec<(&'static str, SchedClassifierLinkId)>>,
    /// Where each device counts in the kernel's per-hop array.
    pub hop_slots: HopSlots,
    /// The kernel's BTF as aya reads it, parsed once for every BTF-typed program.
    btf: Option<aya::Btf>,
    /// Signals the kernel's BTF cannot serve here, with the item they miss.
    btf_unavailable: std::collections::BTreeMap<&'static str, String>,
    /// `skb:kfree_skb` has no `reason` argument (before 5.17): its `_noreason` programs run.
    reasonless_drops: bool,
    /// What runs ahead of our TC programs on each hop, by ifindex.
    tc_ahead: HashMap<u32, Vec<crate::kernel::tc_order::Ahead>>,
}

impl Probes {
    /// Loads the object with the kernel's struct offsets and the TC programs. Without
    /// `offsets` (no BTF), the kernel-wide hooks stay off and the TC counters still work.
    pub fn load(
        tc_mode: TcMode,
        offsets: Option<&KernelOffsets>,
        filter: &FlowFilter,
        tables: Tables,
    ) -> anyhow::Result<Self> {
        if EBPF_OBJECT.is_empty() {
            anyhow::bail!(
                "this vxprobe was built without its kernel programs (AYA_BUILD_SKIP): build it \
                 with `cargo xtask build`"
            );
        }
        let mut loader = EbpfLoader::new();
        if let Some(offsets) = offsets {
            loader.override_global(names::OFFSETS, offsets, true);
        }
        loader.override_global(names::FILTER, filter, true);
        loader.map_max_entries(names::FLOW_STATS, tables.max_flows);
        loader.map_max_entries(names::EVENTS, tables.ring_size);
        // A share of the flow cache per CPU id up to the last possible one (the programs
        // index it by the id they run on).
        let shares = crate::kernel::flowcache::possible_cpus()?
            .last()
            .map_or(1, |last| last + 1);
        let slots = tables
            .flow_cache_slots
            .unwrap_or_else(|| default_flow_cache_slots(shares));
        loader.override_global(names::FLOW_CACHE_SLOTS, &slots, true);
        loader.map_max_entries(names::FLOW_CACHE, (shares as u32).saturating_mul(slots));
        raise_memlock_limit();
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            let hint = refused_hint(&e);
            anyhow::Error::new(e).context(format!("loading vxprobe's eBPF object{hint}"))
        })?;
        for name in [names::TC_INGRESS, names::TC_EGRESS] {
            program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|e| {
                    let hint = refused_hint(&e);
                    anyhow::Error::new(e)
                        .context(format!("loading program {name} into the kernel{hint}"))
                })?;
        }
        Ok(Self {
            ebpf,
            tc_mode,
            flow_cache_slots: slots,
            hooks: Vec::new(),
            tc_links: HashMap::new(),
            hop_slots: HopSlots::default(),
            btf: None,
            btf_unavailable: Default::default(),
            reasonless_drops: false,
            tc_ahead: HashMap::new(),
        })
    }

    /// What the kernel's BTF says about each signal (before [`Probes::attach_signals`]).
    pub fn use_kernel_facts(&mut self, facts: &crate::kernel::btf_needs::KernelFacts) {
        self.btf_unavailable = facts.unavailable.clone();
        self.reasonless_drops = !facts.kfree_skb_has_reason;
    }

    /// The program that stands for `name` on this kernel: the `_noreason` variants of
    /// `skb:kfree_skb` where it has no `reason` argument (reading one is refused).
    fn variant(&self, name: &'static str) -> &'static str {
        match name {
            names::KFREE_SKB_BTF if self.reasonless_drops => names::KFREE_SKB_BTF_REASONLESS,
            names::KFREE_SKB_RAW if self.reasonless_drops => names::KFREE_SKB_RAW_REASONLESS,
            _ => name,
        }
    }

    /// Programs and filters that run ahead of vxprobe's on a hop and can end processing
    /// there (found when it was attached).
    pub fn ahead_of(&self, ifindex: u32) -> Vec<crate::kernel::tc_order::Ahead> {
        self.tc_ahead.get(&ifindex).cloned().unwrap_or_default()
    }

    /// Attaches the TC programs at ingress and egress of every hop, after telling them each
    /// device's MTU and link type. A device that vanished since it was listed is skipped with
    /// a note (the device watcher catches up with it); any other failure is an error.
    pub fn attach_tc(&mut self, hops: &[Hop]) -> anyhow::Result<()> {
        for hop in hops {
            if let Err(e) = self.attach_hop(hop) {
                if device_index(&hop.device.name) != Some(hop.device.ifindex) {
                    eprintln!(
                        "vxprobe: {} vanished while vxprobe attached to it",
                        hop.device.name
                    );
                    continue;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Attaches the TC programs at ingress and egress of one hop, all or nothing.
    pub fn attach_hop(&mut self, hop: &Hop) -> anyhow::Result<()> {
        let ifindex = hop.device.ifindex;
        let had_slot = self.hop_slots.get(ifindex).is_some();
        self.set_device_info(hop)?;
        let attached = self.attach_hop_programs(hop);
        if attached.is_err() && !had_slot {
            // Nothing of a device that could not be attached stays behind.
            let _ = self.write_device_info(ifindex, None);
            self.hop_slots.release(ifindex);
        }
        attached
    }

    fn attach_hop_programs(&mut self, hop: &Hop) -> anyhow::Result<()> {
        let ifname = hop.device.name.as_str();
        let ifindex = hop.device.ifindex;
        // aya attaches by name: make sure the name still means this device (a pod's veth can
        // be deleted and its name reused in the time it takes to get here).
        if device_index(ifname) != Some(ifindex) {
            anyhow::bail!("{ifname} (ifindex {ifindex}) is gone");
        }
        if self.tc_mode == TcMode::Clsact {
            match tc::qdisc_add_clsact(ifname) {
                Ok(()) => {}
                // Another tool (or an earlier vxprobe) already added it: share it.
                Err(TcError::AlreadyAttached) => {}
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("adding clsact qdisc to {ifname}"));
                }
            }
        }
        let mut links = Vec::with_capacity(2);
        for (name, attach_type) in [
            (names::TC_INGRESS, TcAttachType::Ingress),
            (names::TC_EGRESS, TcAttachType::Egress),
        ] {
            // Ahead of every program already there (TCX), or of as many filters as the
            // kernel lets a filter precede (clsact: tc_order says how).
            let options = match self.tc_mode {
                TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
                TcMode::Clsact => TcAttachOptions::Netlink(NlOptions {
                    priority: crate::kernel::tc_order::clsact_priority(ifindex, attach_type),
                    ..NlOptions::default()
                }),
            };
            let attached = program::<SchedClassifier>(&mut self.ebpf, name)?
                .attach_with_options(ifname, attach_type, options)
                .with_context(|| {
                    format!(
                        "attaching {name} to {ifname} ({attach_type:?}, {})",
                        self.tc_mode.as_str()
                    )
                });
            match attached {
                Ok(link) => links.push((name, link)),
                Err(e) => {
                    self.detach_links(links);
                    return Err(e);
                }
            }
        }
        self.tc_links.insert(ifindex, links);
        let ours = [names::TC_INGRESS, names::TC_EGRESS].map(|name| {
            program::<SchedClassifier>(&mut self.ebpf, name)
                .ok()
                .and_then(|p| p.info().ok())
                .map(|info| info.id())
        });
        let ahead = crate::kernel::tc_order::ahead(ifname, ifindex, self.tc_mode, ours);
        for a in &ahead {
            eprintln!("vxprobe: {}", a.describe());
        }
        self.tc_ahead.insert(ifindex, ahead);
        Ok(())
    }

    /// Whether a hop's TC programs are attached.
    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.tc_links.contains_key(&ifindex)
    }

    /// Detaches the TC programs from a hop (best effort: its device may be gone already,
    /// which detached them in the kernel) and forgets its device facts. Its counter slot stays
    /// taken until its last interval is reported.
    pub fn detach_hop(&mut self, ifindex: u32) {
        if let Some(links) = self.tc_links.remove(&ifindex) {
            self.detach_links(links);
        }
        self.tc_ahead.remove(&ifindex);
        let _ = self.write_device_info(ifindex, None);
    }

    /// Tells the TC programs a device's MTU and link type (also when its MTU changes).
    pub fn set_device_info(&mut self, hop: &Hop) -> anyhow::Result<()> {
        let l3 = hop.device.kind == DeviceKind::Tun;
        self.describe_device(hop.device.ifindex, hop.device.mtu, l3)
    }

    /// Tells the TC programs about a device by ifindex, giving it a counter slot if it has
    /// none (also for benchmarks and tests that run the programs on crafted packets).
    pub fn describe_device(&mut self, ifindex: u32, mtu: u32, l3: bool) -> anyhow::Result<()> {
        let info = DeviceInfo {
            mtu,
            l3: u32::from(l3),
            slot: self.hop_slots.take(ifindex)?,
            known: 1,
        };
        self.write_device_info(ifindex, Some(info))
    }

    /// Describes a device to the TC programs (`None`: forgets it), in the array or the hash
    /// map, by its ifindex.
    fn write_device_info(&mut self, ifindex: u32, info: Option<DeviceInfo>) -> anyhow::Result<()> {
        let name = if ifindex < LOW_IFINDEXES {
            names::DEVICE_INFO_LOW
        } else {
            names::DEVICE_INFO
        };
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))?;
        if ifindex < LOW_IFINDEXES {
            aya::maps::Array::<_, DeviceInfo>::try_from(map)?
                .set(ifindex, info.unwrap_or_default(), 0)
                .with_context(|| format!("writing {name}"))
        } else {
            let mut devices = aya::maps::HashMap::<_, u32, DeviceInfo>::try_from(map)?;
            match info {
                Some(info) => devices.insert(ifindex, info, 0),
                None => devices.remove(&ifindex),
            }
            .with_context(|| format!("writing {name}"))
        }
    }

    fn detach_links(&mut self, links: Vec<(&'static str, SchedClassifierLinkId)>) {
        for (name, link) in links {
            if let Ok(program) = program::<SchedClassifier>(&mut self.ebpf, name) {
                let _ = program.detach(link);
            }
        }
    }

    /// Attaches every kernel-wide signal, each through the best rung of its ladder that works
    /// here. `skip` leaves hook types out (to exercise a fallback, or to avoid a hook known to
    /// misbehave on some kernel).
    pub fn attach_signals(&mut self, skip: &[HookType]) -> &[HookChoice] {
        // VXPROBE_SKIP_SIGNALS=drop,retransmit leaves whole signals out (a hook that
        // misbehaves on some kernel; the tests use it to exercise stand-ins).
        let skipped = std::env::var(SKIP_SIGNALS_ENV).unwrap_or_default();
        let skipped: Vec<&str> = skipped.split(',').map(str::trim).collect();
        for (signal, rungs) in LADDERS {
            if skipped.contains(signal) {
                self.hooks.push(HookChoice {
                    signal,
                    hook: None,
                    unavailable: vec![format!("skipped ({SKIP_SIGNALS_ENV})")],
                });
                continue;
            }
            if let Some(why) = self.btf_unavailable.get(signal) {
                self.hooks.push(HookChoice {
                    signal,
                    hook: None,
                    unavailable: vec![why.clone()],
                });
                continue;
            }
            self.attach_ladder(signal, rungs, skip);
        }
        // TCP checksum failures have their own tracepoint; it only stands in when drops (and
        // with them TCP_CSUM) have no hook, so nothing is counted twice.
        let drops_seen = self
            .hooks
            .iter()
            .any(|h| h.signal == "drop" && h.hook.is_some());
        if drops_seen {
            self.hooks.push(HookChoice {
                signal: "tcp_bad_csum",
                hook: None,
                unavailable: vec!["not needed: drops carry TCP_CSUM".to_owned()],
            });
        } else if let Some(why) = self.btf_unavailable.get("tcp_bad_csum") {
            self.hooks.push(HookChoice {
                signal: "tcp_bad_csum",
                hook: None,
                unavailable: vec![why.clone()],
            });
        } else {
            self.attach_ladder("tcp_bad_csum", TCP_BAD_CSUM_LADDER, skip);
        }
        // Every BTF-typed program is loaded: the parsed BTF (megabytes) is not needed again.
        self.btf = None;
        &self.hooks
    }

    /// Without the kernel's BTF no kernel-wide hook can be used: each signal says why (in the
    /// `meta` line and the UI's status line).
    pub fn signals_unavailable(&mut self, why: &str) {
        for (signal, _) in LADDERS {
            self.hooks.push(HookChoice {
                signal,
                hook: None,
                unavailable: vec![why.to_owned()],
            });
        }
    }

    fn attach_ladder(&mut self, signal: &'static str, rungs: &[Rung], skip: &[HookType]) {
        let mut choice = HookChoice {
            signal,
            hook: None,
            unavailable: Vec::new(),
        };
        for rung in rungs {
            let targets: Vec<&str> = rung.programs.iter().map(|(_, target)| *target).collect();
            let label = format!("{}:{}", rung.hook.as_str(), targets.join("+"));
            if skip.contains(&rung.hook) {
                choice.unavailable.push(format!("{label}: skipped"));
                continue;
            }
            let attached = rung.programs.iter().try_for_each(|&(program, target)| {
                let program = self.variant(program);
                self.try_attach(rung.hook, program, target)
                    .with_context(|| target.to_owned())
            });
            match attached {
                Ok(()) => {
                    choice.hook = Some(label);
                    break;
                }
                Err(e) => {
                    // A rung is all or nothing: what did attach must not double-count with
                    // the next rung.
                    for &(program, _) in rung.programs {
                        self.unload(rung.hook, self.variant(program));
                    }
                    choice.unavailable.push(format!("{label}: {e:#}"));
                }
            }
        }
        self.hooks.push(choice);
    }

    fn try_attach(
        &mut self,
        hook: HookType,
        program_name: &str,
        target: &str,
    ) -> anyhow::Result<()> {
        match hook {
            HookType::Fentry => {
                let btf = kernel_btf(&mut self.btf)?;
                let prog = program::<FEntry>(&mut self.ebpf, program_name)?;
                prog.load(target, btf).context("load")?;
                prog.attach().context("attach")?;
            }
            HookType::Fexit => {
                let btf = kernel_btf(&mut self.btf)?;
                let prog = program::<FExit>(&mut self.ebpf, program_name)?;
                prog.load(target, btf).context("load")?;
                prog.attach().context("attach")?;
            }
            HookType::TpBtf => {
                let btf = kernel_btf(&mut self.btf)?;
                let prog = program::<BtfTracePoint>(&mut self.ebpf, program_name)?;
                prog.load(target, btf).context("load")?;
                prog.attach().context("attach")?;
            }
            HookType::Kprobe => {
                let prog = program::<KProbe>(&mut self.ebpf, program_name)?;
                prog.load().context("load")?;
                prog.attach(target, 0).context("attach")?;
            }
            HookType::RawTracepoint => {
                let prog = program::<RawTracePoint>(&mut self.ebpf, program_name)?;
                prog.load().context("load")?;
                prog.attach(target).context("attach")?;
            }
            HookType::Tracepoint => {
                // The saved registers are read at offsets known for these two only.
                if [names::SENDTO_EXIT_REGS, names::SENDMSG_EXIT_REGS].contains(&program_name)
                    && !cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
                {
                    anyhow::bail!("system call registers are read on x86-64 and arm64 only");
                }
                ensure_tracefs()?;
                let (category, name) = target.split_once('/').context("category/name")?;
                let prog = program::<TracePoint>(&mut self.ebpf, program_name)?;
                prog.load().context("load")?;
                prog.attach(category, name).context("attach")?;
            }
        }
        Ok(())
    }

    /// Detaches and unloads a program, if it was loaded (best effort: used on a failed rung).
    fn unload(&mut self, hook: HookType, program_name: &str) {
        let _ = match hook {
            HookType::Fentry => program::<FEntry>(&mut self.ebpf, program_name).map(|p| p.unload()),
            HookType::Fexit => program::<FExit>(&mut self.ebpf, program_name).map(|p| p.unload()),
            HookType::TpBtf => {
                program::<BtfTracePoint>(&mut self.ebpf, program_name).map(|p| p.unload())
            }
            HookType::Kprobe => program::<KProbe>(&mut self.ebpf, program_name).map(|p| p.unload()),
            HookType::RawTracepoint => {
                program::<RawTracePoint>(&mut self.ebpf, program_name).map(|p| p.unload())
            }
            HookType::Tracepoint => {
                program::<TracePoint>(&mut self.ebpf, program_name).map(|p| p.unload())
            }
        };
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The event ring buffer and the per-kind loss counters, moved out for the reader.
    pub fn take_event_maps(
        &mut self,
    ) -> anyhow::Result<(RingBuf<MapData>, PerCpuArray<MapData, u64>)> {
        let events = self
            .ebpf
            .take_map(names::EVENTS)
            .context("map EVENTS missing from the eBPF object")?;
        let lost = self
            .ebpf
            .take_map(names::LOST)
            .context("map LOST missing from the eBPF object")?;
        Ok((RingBuf::try_from(events)?, PerCpuArray::try_from(lost)?))
    }
}

/// The kernel's BTF, read on first use.
fn kernel_btf(cache: &mut Option<aya::Btf>) -> anyhow::Result<&aya::Btf> {
    if cache.is_none() {
        *cache = Some(aya::Btf::from_sys_fs().context("reading kernel BTF")?);
    }
    Ok(cache.as_ref().expect("just filled"))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?;
    program
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose default (64 KiB or 8 MiB) is
/// too small for the ring buffer and the flow table: lift it (best effort; later kernels
/// account with memory cgroups and ignore it).
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one rlimit struct we own.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// When the kernel refused with EPERM although the capabilities are there, say where else
/// that comes from.
fn refused_hint(error: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return " (the kernel refused bpf(): capabilities in a user namespace do not count, \
                    and a seccomp or LSM policy (a container runtime's default profile) can \
                    forbid it)";
        }
        source = e.source();
    }
    ""
}

/// The ifindex a device name stands for right now, if any.
pub fn device_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Classic tracepoints are found through tracefs; a fresh node may not have it mounted.
fn ensure_tracefs() -> anyhow::Result<()> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    for dir in [TRACEFS, "/sys/kernel/debug/tracing"] {
        if std::path::Path::new(dir).join("events").is_dir() {
            return Ok(());
        }
    }
    let target = std::ffi::CString::new(TRACEFS)?;
    let fstype = std::ffi::CString::new("tracefs")?;
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        anyhow::bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {} (mount it with \
             `mount -t tracefs nodev {TRACEFS}`, or grant CAP_SYS_ADMIN)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLVM makes a call to memset/memcpy/memmove of some zeroings and copies, where the BPF
    /// target links a byte loop (compiler_builtins'): a 40-byte clear is 40 iterations. The
    /// calls are relocations in the object, in every program, whatever the verifier names.
    #[test]
    fn the_kernel_programs_call_no_byte_loops() {
        use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionKind};
        let elf = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object");
        let mut code = Vec::new();
        let mut calls = Vec::new();
        for section in elf.sections() {
            let name = section.name().unwrap_or("?");
            if section.kind() == SectionKind::Text {
                code.push(name);
            }
            for (_, reloc) in section.relocations() {
                let RelocationTarget::Symbol(index) = reloc.target() else {
                    continue;
                };
                let symbol = elf.symbol_by_index(index).expect("a relocation's symbol");
                let target = symbol.name().unwrap_or("?");
                if ["memset", "memcpy", "memmove"].contains(&target) {
                    calls.push(format!("{name} calls {target}"));
                }
            }
        }
        assert!(
            code.contains(&"classifier") && code.contains(&"tp_btf/kfree_skb"),
            "not vxprobe's programs: {code:?}"
        );
        assert!(calls.is_empty(), "byte loops: {calls:#?}");
    }

    #[test]
    fn many_cpus_share_a_bounded_cache() {
        assert_eq!(default_flow_cache_slots(2), 1024);
        assert_eq!(default_flow_cache_slots(32), 1024);
        assert_eq!(default_flow_cache_slots(48), 512);
        assert_eq!(default_flow_cache_slots(64), 512);
        assert_eq!(default_flow_cache_slots(240), 128);
        assert_eq!(default_flow_cache_slots(100_000), 1);
    }

    #[test]
    fn tcx_on_an_old_kernel_is_bad_input_naming_the_way_out() {
        let old = Some(KernelVersion::new(5, 15, 0));
        let err = TcMode::check(TcAttach::Tcx, old).unwrap_err().to_string();
        assert!(err.contains("6.6") && err.contains("5.15.0") && err.contains("clsact"));
        assert!(TcMode::check(TcAttach::Auto, old).is_ok());
        assert!(TcMode::check(TcAttach::Tcx, Some(KernelVersion::new(6, 6, 0))).is_ok());
    }

    #[test]
    fn eperm_gets_a_hint_and_other_errors_none() {
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        assert!(refused_hint(&eperm).contains("seccomp"));
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(refused_hint(&enoent), "");
    }
}
