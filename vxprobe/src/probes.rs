//! Loading vxprobe's kernel programs and attaching them: the only module that touches aya's
//! program API. For each kernel-wide signal it walks a ladder of hooks, best first, keeps the
//! first that loads and attaches, and records the choice (and why the others failed) for
//! `meta` lines and `vxprobe probes`. Everything attached is detached when [`Probes`] drops.

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, LinkOrder, RawTracePoint, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions, TcError},
    },
    util::KernelVersion,
};
use serde::Serialize;
use vxprobe_common::{KernelOffsets, names};

use crate::{cli::TcAttach, devices::Hop};

/// The kernel programs, built by build.rs and embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vxprobe"));

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
    TpBtf,
    RawTracepoint,
}

impl HookType {
    pub const fn as_str(self) -> &'static str {
        match self {
            HookType::TpBtf => "tp_btf",
            HookType::RawTracepoint => "raw_tracepoint",
        }
    }
}

/// Which hook a signal uses here, and what was tried before it.
#[derive(Clone, Debug, Serialize)]
pub struct HookChoice {
    pub signal: &'static str,
    /// `tp_btf:kfree_skb`; absent when no rung worked.
    pub hook: Option<String>,
    /// Rungs that failed, with the reason, best first.
    pub unavailable: Vec<String>,
}

/// The loaded programs and their attachments.
pub struct Probes {
    ebpf: Ebpf,
    pub tc_mode: TcMode,
    pub hooks: Vec<HookChoice>,
}

impl Probes {
    /// Loads the object with the kernel's struct offsets and the TC programs. Without
    /// `offsets` (no BTF), the kernel-wide hooks stay off and the TC counters still work.
    pub fn load(tc_mode: TcMode, offsets: Option<&KernelOffsets>) -> anyhow::Result<Self> {
        let mut loader = EbpfLoader::new();
        if let Some(offsets) = offsets {
            loader.override_global(names::OFFSETS, offsets, true);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading vxprobe's eBPF object")?;
        for name in [names::TC_INGRESS, names::TC_EGRESS] {
            program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name} into the kernel"))?;
        }
        Ok(Self {
            ebpf,
            tc_mode,
            hooks: Vec::new(),
        })
    }

    /// Attaches the TC programs at ingress and egress of every hop.
    pub fn attach_tc(&mut self, hops: &[Hop]) -> anyhow::Result<()> {
        for hop in hops {
            let ifname = hop.device.name.as_str();
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
            for (name, attach_type) in [
                (names::TC_INGRESS, TcAttachType::Ingress),
                (names::TC_EGRESS, TcAttachType::Egress),
            ] {
                let options = match self.tc_mode {
                    TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
                    TcMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
                };
                program::<SchedClassifier>(&mut self.ebpf, name)?
                    .attach_with_options(ifname, attach_type, options)
                    .with_context(|| {
                        format!(
                            "attaching {name} to {ifname} ({attach_type:?}, {})",
                            self.tc_mode.as_str()
                        )
                    })?;
            }
        }
        Ok(())
    }

    /// Drops (`skb:kfree_skb`): tp_btf, then the raw tracepoint. `skip` leaves rungs out (to
    /// exercise the fallback, or to avoid a hook known to misbehave).
    pub fn attach_drops(&mut self, skip: &[HookType]) -> &HookChoice {
        let mut choice = HookChoice {
            signal: "drop",
            hook: None,
            unavailable: Vec::new(),
        };
        for rung in [HookType::TpBtf, HookType::RawTracepoint] {
            let label = format!("{}:kfree_skb", rung.as_str());
            if skip.contains(&rung) {
                choice.unavailable.push(format!("{label}: skipped"));
                continue;
            }
            match self.try_attach_drop(rung) {
                Ok(()) => {
                    choice.hook = Some(label);
                    break;
                }
                Err(e) => choice.unavailable.push(format!("{label}: {e:#}")),
            }
        }
        self.hooks.push(choice);
        self.hooks.last().expect("just pushed")
    }

    fn try_attach_drop(&mut self, rung: HookType) -> anyhow::Result<()> {
        match rung {
            HookType::TpBtf => {
                let btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
                let prog = program::<BtfTracePoint>(&mut self.ebpf, names::KFREE_SKB_BTF)?;
                prog.load("kfree_skb", &btf).context("load")?;
                prog.attach().context("attach")?;
            }
            HookType::RawTracepoint => {
                let prog = program::<RawTracePoint>(&mut self.ebpf, names::KFREE_SKB_RAW)?;
                prog.load().context("load")?;
                prog.attach("kfree_skb").context("attach")?;
            }
        }
        Ok(())
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
