//! `vxprobe doctor`: names the misconfiguration behind the numbers, from the node's device
//! facts ([`crate::node::facts`], [`crate::node::features`]).
//!
//! - [`rules`]: pure functions from facts to findings, each with a stable code;
//! - [`render`]: the JSON document and the short report;
//! - [`watch`]: `--watch`, what the devices of each finding did meanwhile.

pub mod render;
pub mod rules;
pub mod watch;

use std::collections::BTreeSet;

use crate::{cli::DoctorArgs, error::UsageError, node::facts};

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let mut facts = facts::gather().await?;
    if let Some(release) = &args.assume_kernel {
        facts.kernel = facts::KernelRelease::parse(release);
    }
    let names: Vec<&str> = facts.devices.iter().map(|d| d.name.as_str()).collect();
    let selected = select(&names, &args.ifaces)?;
    let mut findings: Vec<rules::Finding> = rules::diagnose(&facts)
        .into_iter()
        .filter(|f| selected.as_ref().is_none_or(|s| s.contains(&f.ifname)))
        .collect();
    if let Some(duration) = args.watch {
        watch::observe(&facts, &mut findings, duration, args.pods.config()).await?;
    }
    let report = render::Report::new(&facts, &findings, |d| {
        selected.as_ref().is_none_or(|s| s.contains(&d.name))
    });
    if args.json {
        println!("{}", report.to_json()?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// The device names `-i` patterns select (`None`: no pattern, every device). Unlike `record`,
/// the default is every device: pod veths and bridges have findings too. The rules always see
/// every device (an overlay's MTU depends on its underlay, selected or not).
fn select(names: &[&str], patterns: &[String]) -> Result<Option<BTreeSet<String>>, UsageError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut selected = BTreeSet::new();
    for pattern in patterns {
        let matcher = glob::Pattern::new(pattern)
            .map_err(|e| UsageError::new(format!("invalid interface pattern '{pattern}': {e}")))?;
        let mut matched = false;
        for name in names.iter().filter(|n| matcher.matches(n)) {
            matched = true;
            selected.insert((*name).to_owned());
        }
        if !matched {
            return Err(UsageError::new(format!(
                "no such interface: {pattern} (in this network namespace)"
            )));
        }
    }
    Ok(Some(selected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_select_and_unmatched_ones_are_usage_errors() {
        let names = ["lo", "eth0", "cali0", "cali1", "vxlan.calico"];
        assert_eq!(select(&names, &[]).unwrap(), None);
        let got = select(&names, &["cali*".into(), "eth0".into()]).unwrap();
        assert_eq!(
            got.unwrap().into_iter().collect::<Vec<_>>(),
            ["cali0", "cali1", "eth0"]
        );
        let err = select(&names, &["nosuch".into()]).unwrap_err();
        assert!(
            err.to_string().contains("no such interface: nosuch"),
            "{err}"
        );
    }
}
