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
    /// Signals observed with less than usual on this kernel, and what they lose.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    degraded: std::collections::BTreeMap<&'static str, Vec<String>>,
    /// Programs and filters of this namespace's devices that would run before vxprobe's TC
    /// programs and can end processing there.
    tc_ahead: Vec<crate::kernel::tc_order::Ahead>,
}

pub fn run(args: ProbesArgs) -> anyhow::Result<()> {
    let missing = caps::missing();
    if !missing.is_empty() {
        anyhow::bail!(
            "vxprobe needs {} (run as root, or grant them with setcap or a securityContext)",
            missing.join(", ")
        );
    }
    let kernel = KernelBtf::load().map(|btf| crate::kernel::btf_needs::resolve(&btf));
    let tc_mode = TcMode::choose(TcAttach::Auto);
    let mut probes = Probes::load(
        tc_mode,
        kernel.as_ref().ok().map(|facts| &facts.offsets),
        &vxprobe_common::FlowFilter::NONE,
        crate::kernel::probes::Tables::default(),
    )?;
    let mut signals = Vec::new();
    match &kernel {
        Ok(facts) => {
            probes.use_kernel_facts(facts);
            signals.extend(probes.attach_signals(&args.skip_hook).iter().cloned());
        }
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
        degraded: kernel
            .as_ref()
            .map(|facts| facts.degraded.clone())
            .unwrap_or_default(),
        tc_ahead: devices_here()
            .into_iter()
            .flat_map(|(ifindex, ifname)| {
                crate::kernel::tc_order::ahead(&ifname, ifindex, tc_mode, [None, None])
            })
            .collect(),
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
            for what in report.degraded.get(s.signal).into_iter().flatten() {
                println!("{:<18}   degraded: {what}", "");
            }
        }
        if !report.tc_ahead.is_empty() {
            println!("ahead of vxprobe's TC programs ({}):", report.tc_attach);
            for ahead in &report.tc_ahead {
                println!("  {}", ahead.describe());
            }
        }
    }
    Ok(())
}

/// Every device of this namespace, (ifindex, name).
fn devices_here() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    // SAFETY: if_nameindex returns an array ending with a zero entry, freed below; the names
    // are NUL-terminated strings inside it.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return found;
        }
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name);
            found.push(((*entry).if_index, name.to_string_lossy().into_owned()));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    found
}
