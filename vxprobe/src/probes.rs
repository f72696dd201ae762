//! Loading vxprobe's kernel programs and attaching them: the only module that touches aya's
//! program API. For each kernel-wide signal it walks a ladder of hooks, best first, keeps the
//! first that loads and attaches, and records the choice (and why the others failed) for
//! `meta` lines and `vxprobe probes`. Everything attached is detached when [`Probes`] drops.

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, LinkOrder, RawTracePoint, SchedClassifier,
        TcAttachType, TracePoint,
        tc::{self, NlOptions, TcAttachOptions, TcError},
    },
    util::KernelVersion,
};
use serde::Serialize;
use vxprobe_common::{DeviceInfo, FlowFilter, KernelOffsets, names};

use crate::{
    cli::TcAttach,
    devices::{DeviceKind, Hop},
};

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
            Rung {
                hook: HookType::Kprobe,
                programs: &[(names::RETRANSMIT_KPROBE, "tcp_retransmit_skb")],
            },
            Rung {
                hook: HookType::RawTracepoint,
                programs: &[(names::RETRANSMIT_RAW, "tcp_retransmit_skb")],
            },
        ],
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
    /// The kernel's BTF as aya reads it, parsed once for every BTF-typed program.
    btf: Option<aya::Btf>,
}

impl Probes {
    /// Loads the object with the kernel's struct offsets and the TC programs. Without
    /// `offsets` (no BTF), the kernel-wide hooks stay off and the TC counters still work.
    pub fn load(
        tc_mode: TcMode,
        offsets: Option<&KernelOffsets>,
        filter: &FlowFilter,
        max_flows: u32,
        ring_size: u32,
    ) -> anyhow::Result<Self> {
        let mut loader = EbpfLoader::new();
        if let Some(offsets) = offsets {
            loader.override_global(names::OFFSETS, offsets, true);
        }
        loader.override_global(names::FILTER, filter, true);
        loader.map_max_entries(names::FLOW_STATS, max_flows);
        loader.map_max_entries(names::EVENTS, ring_size);
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
            btf: None,
        })
    }

    /// Attaches the TC programs at ingress and egress of every hop, after telling them each
    /// device's MTU and link type.
    pub fn attach_tc(&mut self, hops: &[Hop]) -> anyhow::Result<()> {
        let mut devices: aya::maps::HashMap<_, u32, DeviceInfo> = aya::maps::HashMap::try_from(
            self.ebpf
                .map_mut(names::DEVICE_INFO)
                .context("map DEVICE_INFO missing from the eBPF object")?,
        )?;
        for hop in hops {
            let info = DeviceInfo {
                mtu: hop.device.mtu,
                l3: u32::from(hop.device.kind == DeviceKind::Tun),
            };
            devices
                .insert(hop.device.ifindex, info, 0)
                .context("writing DEVICE_INFO")?;
        }
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

    /// Attaches every kernel-wide signal, each through the best rung of its ladder that works
    /// here. `skip` leaves hook types out (to exercise a fallback, or to avoid a hook known to
    /// misbehave on some kernel).
    pub fn attach_signals(&mut self, skip: &[HookType]) -> &[HookChoice] {
        for (signal, rungs) in LADDERS {
            self.attach_ladder(signal, rungs, skip);
        }
        // Every BTF-typed program is loaded: the parsed BTF (megabytes) is not needed again.
        self.btf = None;
        &self.hooks
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
                        self.unload(rung.hook, program);
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
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
