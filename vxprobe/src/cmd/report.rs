//! `vxprobe report`: recordings of several nodes joined into one incident ([`crate::report`]),
//! written as HTML, Markdown or JSON.

use std::io::Write as _;

use crate::{
    cli::ReportArgs,
    error::UsageError,
    report::{Format, Inputs, build, render},
};

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let format = match (args.format, &args.output) {
        (Some(f), _) => f,
        (None, None) => Format::Json,
        (None, Some(out)) => Format::of_path(out).ok_or_else(|| {
            UsageError::new(format!(
                "cannot tell the report's format from {}: name it .html, .md or .json, or give --format",
                out.display()
            ))
        })?,
    };
    let report = build(&Inputs {
        recordings: args.recordings,
        pcaps: args.pcap,
        doctor: args.doctor,
    })?;
    let text = render(&report, format);
    match &args.output {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| UsageError::new(format!("cannot write the report: {e}")))?;
        }
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|e| UsageError::new(format!("cannot write to {}: {e}", path.display())))?;
            let losing = report.flows.iter().filter(|f| f.lost > 0).count();
            eprintln!(
                "vxprobe: report of {} over {} s: {} flows, {losing} losing packets, {} findings: {}",
                report
                    .nodes
                    .iter()
                    .map(|n| n.node.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                report.window.duration_ms / 1000,
                report.flows.len(),
                report.findings.len(),
                path.display()
            );
        }
    }
    Ok(())
}
