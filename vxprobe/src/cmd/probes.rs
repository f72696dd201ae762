//! `vxprobe probes`: which kernel hook each signal uses on this kernel, found the same way
//! `record` finds it (load and attach each rung of the ladder, keep the first that works), then
//! everything is detached again.

use serde::Serialize;

use crate::{
    cli::{ProbesArgs, TcAttach},
    kernel::btf::KernelBtf,
    kernel::caps,
    kernel::probes::{HookChoice, Probes, TcMode},
};

#[derive(Serialize)]
struct Report {
    kernel: String,
    btf: bool,
    tc_attach: &'static str,
    signals: Vec<HookChoice>,
}

pub fn run(args: ProbesArgs) -> anyhow::Result<()> {
    let missing = caps::missing();
    if !missing.is_empty() {
        anyhow::bail!(
            "vxprobe needs {} (run as root, or grant them with setcap or a securityContext)",
            missing.join(", ")
        );
    }
    let kernel = KernelBtf::load().and_then(|btf| {
        let reasons = btf.drop_reasons()?;
        btf.kernel_offsets(&reasons)
    });
    let tc_mode = TcMode::choose(TcAttach::Auto);
    let mut probes = Probes::load(
        tc_mode,
        kernel.as_ref().ok(),
        &vxprobe_common::FlowFilter::NONE,
        crate::kernel::probes::Tables::default(),
    )?;
    let mut signals = Vec::new();
    match &kernel {
        Ok(_) => signals.extend(probes.attach_signals(&args.skip_hook).iter().cloned()),
        Err(e) => signals.push(HookChoice {
            signal: "drop",
            hook: None,
            unavailable: vec![e.to_string()],
        }),
    }
    let report = Report {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        btf: kernel.is_ok(),
        tc_attach: tc_mode.as_str(),
        signals,
    };
    drop(probes);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "kernel {} (BTF: {})",
            report.kernel,
            if report.btf { "yes" } else { "no" }
        );
        println!("{:<18} tc {}", "hops", report.tc_attach);
        for s in &report.signals {
            println!(
                "{:<18} {}",
                s.signal,
                match (&s.hook, s.unavailable.first()) {
                    (Some(hook), _) => hook.as_str(),
                    (None, Some(why)) if why.starts_with("not needed") => "not needed",
                    (None, _) => "UNAVAILABLE",
                }
            );
            for why in &s.unavailable {
                println!("{:<18}   not used: {why}", "");
            }
        }
    }
    Ok(())
}
