//! The choices the kernel side is made of, shared by loading, TC attachment and the hook
//! ladders: how TC programs attach, and which hook a signal uses.

use aya::util::KernelVersion;
use serde::Serialize;

use crate::error::UsageError;

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

/// Which hook a signal uses here, and what was tried before it.
#[derive(Clone, Debug, Serialize)]
pub struct HookChoice {
    pub signal: &'static str,
    /// `tp_btf:kfree_skb`; absent when no rung worked.
    pub hook: Option<String>,
    /// Rungs that failed, with the reason, best first.
    pub unavailable: Vec<String>,
}
