//! Loading vxprobe's kernel programs and attaching them: the only module that touches aya's
//! program API. Everything attached here is detached when [`Probes`] is dropped.

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions, TcError},
    },
    util::KernelVersion,
};
use serde::Serialize;
use vxprobe_common::names;

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

/// The loaded programs and their attachments.
pub struct Probes {
    ebpf: Ebpf,
    pub tc_mode: TcMode,
}

impl Probes {
    pub fn load(tc_mode: TcMode) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).context("loading vxprobe's eBPF object")?;
        for name in [names::TC_INGRESS, names::TC_EGRESS] {
            let program: &mut SchedClassifier = program(&mut ebpf, name)?;
            program
                .load()
                .with_context(|| format!("loading program {name} into the kernel"))?;
        }
        Ok(Self { ebpf, tc_mode })
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
                            "attaching {name} to {ifname} ({:?}, {})",
                            attach_type,
                            self.tc_mode.as_str()
                        )
                    })?;
            }
        }
        Ok(())
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
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
