//! The kernel-wide signals' hook ladders: for each, hooks in order of preference; the first
//! that loads and attaches is kept (a rung is all or nothing), and the choice, with why the
//! better rungs were not taken, is recorded for `meta` and `vxprobe probes`.

use anyhow::Context as _;
use aya::programs::{BtfTracePoint, FEntry, FExit, KProbe, RawTracePoint, TracePoint};
use vxprobe_common::names;

use super::hooks::{HookChoice, HookType};
use super::probes::{Probes, kernel_btf, program};

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

impl Probes {
    /// Attaches every kernel-wide signal, each through the best rung of its ladder that works
    /// here. `skip` leaves hook types out (to exercise a fallback, or to avoid a hook known to
    /// misbehave on some kernel).
    pub fn attach_signals(&mut self, skip: &[HookType]) -> &[HookChoice] {
        // VXPROBE_SKIP_SIGNALS=drop,retransmit leaves whole signals out (a hook that
        // misbehaves on some kernel; the tests use it to exercise stand-ins).
        let skipped = std::env::var(SKIP_SIGNALS_ENV).unwrap_or_default();
        let skipped: Vec<&str> = skipped.split(',').map(str::trim).collect();
        for (signal, rungs) in LADDERS {
            // A signal while starting: the session gives up after this step.
            if crate::interrupt::requested() {
                return &self.hooks;
            }
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
            // Stopping: the session gives up after this step; no choice is said.
            if crate::interrupt::requested() {
                return;
            }
            let targets: Vec<&str> = rung.programs.iter().map(|(_, target)| *target).collect();
            let label = format!("{}:{}", rung.hook.as_str(), targets.join("+"));
            if skip.contains(&rung.hook) {
                choice.unavailable.push(format!("{label}: skipped"));
                continue;
            }
            let attached = rung.programs.iter().try_for_each(|&(program, target)| {
                let program = self.variant(program);
                crate::interrupt::held_back(|| self.try_attach(rung.hook, program, target))
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
