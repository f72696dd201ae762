//! Loading vxprobe's kernel programs: the object with this kernel's offsets, the maps sized,
//! the program variants this kernel needs. Attaching is in [`super::tc`] (the hops) and
//! [`super::ladder`] (the kernel-wide signals, hook by hook down a ladder). With
//! [`super::btf`], these are the only modules that touch aya's program API. Everything
//! attached is detached when [`Probes`] drops.

use std::collections::HashMap;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, tc::SchedClassifierLinkId},
};
use vxprobe_common::{FlowFilter, KernelOffsets, names};

use crate::kernel::{batch::take_map, hops::HopSlots};

/// The kernel programs, built by build.rs and embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vxprobe"));

pub use super::hooks::{HookChoice, HookType, TcAttach, TcMode};

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
    pub(super) ebpf: Ebpf,
    pub tc_mode: TcMode,
    /// Flow cache slots per CPU, as loaded.
    pub flow_cache_slots: u32,
    pub hooks: Vec<HookChoice>,
    /// The TC attachments of each hop, by ifindex.
    pub(super) tc_links: HashMap<u32, Vec<(&'static str, SchedClassifierLinkId)>>,
    /// Where each device counts in the kernel's per-hop array.
    pub hop_slots: HopSlots,
    /// The kernel's BTF as aya reads it, parsed once for every BTF-typed program.
    pub(super) btf: Option<aya::Btf>,
    /// Signals the kernel's BTF cannot serve here, with the item they miss.
    pub(super) btf_unavailable: std::collections::BTreeMap<&'static str, String>,
    /// `skb:kfree_skb` has no `reason` argument (before 5.17): its `_noreason` programs run.
    pub(super) reasonless_drops: bool,
    /// What runs ahead of our TC programs on each hop, by ifindex.
    pub(super) tc_ahead: HashMap<u32, Vec<crate::kernel::tc_order::Ahead>>,
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
        // The skb-hash hints to the cache's slots: as many, in the same shares.
        loader.map_max_entries(names::HINTS, (shares as u32).saturating_mul(slots));
        raise_memlock_limit();
        let mut ebpf = crate::interrupt::held_back(|| loader.load(EBPF_OBJECT)).map_err(|e| {
            let hint = refused_hint(&e);
            anyhow::Error::new(e).context(format!("loading vxprobe's eBPF object{hint}"))
        })?;
        for name in [names::TC_INGRESS, names::TC_EGRESS] {
            crate::interrupt::check()?;
            let program = program::<SchedClassifier>(&mut ebpf, name)?;
            crate::interrupt::held_back(|| program.load()).map_err(|e| {
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
    pub(super) fn variant(&self, name: &'static str) -> &'static str {
        match name {
            names::KFREE_SKB_BTF if self.reasonless_drops => names::KFREE_SKB_BTF_REASONLESS,
            names::KFREE_SKB_RAW if self.reasonless_drops => names::KFREE_SKB_RAW_REASONLESS,
            _ => name,
        }
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The event ring buffer and the per-kind loss counters, moved out for the reader.
    pub fn take_event_maps(
        &mut self,
    ) -> anyhow::Result<(RingBuf<MapData>, PerCpuArray<MapData, u64>)> {
        Ok((
            take_map(&mut self.ebpf, names::EVENTS)?,
            take_map(&mut self.ebpf, names::LOST)?,
        ))
    }
}

/// The kernel's BTF, read on first use.
pub(super) fn kernel_btf(cache: &mut Option<aya::Btf>) -> anyhow::Result<&aya::Btf> {
    if cache.is_none() {
        *cache = Some(aya::Btf::from_sys_fs().context("reading kernel BTF")?);
    }
    Ok(cache.as_ref().expect("just filled"))
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
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
pub(super) fn refused_hint(error: &(dyn std::error::Error + 'static)) -> &'static str {
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

#[cfg(test)]
mod tests {
    use aya::util::KernelVersion;

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

    /// Events lost to a full ring are counted in a per-CPU slot that a program nested on the
    /// same CPU (a softirq interrupting a program in process context) can count in too: every
    /// program that counts losses does it with an atomic add (BPF_STX | BPF_ATOMIC | BPF_DW,
    /// imm BPF_ADD), never a load, add and store.
    #[test]
    fn losses_are_counted_with_an_atomic_add() {
        use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionKind};
        const ATOMIC_DW: u8 = 0x03 | 0xc0 | 0x18;
        const BPF_ADD: i32 = 0x00;
        const BPF_FETCH: i32 = 0x01;
        let elf = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object");
        let mut counting = Vec::new();
        for section in elf.sections() {
            if section.kind() != SectionKind::Text {
                continue;
            }
            let uses_lost = section.relocations().any(|(_, reloc)| {
                matches!(reloc.target(), RelocationTarget::Symbol(index)
                    if elf.symbol_by_index(index).is_ok_and(|s| s.name() == Ok(names::LOST)))
            });
            if !uses_lost {
                continue;
            }
            let code = section.data().expect("program code");
            let atomic_adds = code
                .chunks_exact(8)
                .filter(|insn| {
                    let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
                    insn[0] == ATOMIC_DW && (imm == BPF_ADD || imm == BPF_ADD | BPF_FETCH)
                })
                .count();
            counting.push((section.name().unwrap_or("?").to_owned(), atomic_adds));
        }
        assert!(
            counting.len() >= 3,
            "programs that count losses: {counting:?}"
        );
        for (program, atomic_adds) in &counting {
            assert!(
                *atomic_adds >= 1,
                "{program} counts losses without an atomic add"
            );
        }
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
