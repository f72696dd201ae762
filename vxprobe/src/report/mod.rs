//! `vxprobe report`: one incident from both ends of the tunnel. Recordings of several nodes
//! ([`read`]) are joined ([`join`]: clocks aligned by [`skew`], flows matched, each flow's path
//! across the nodes with its losses located), findings derived ([`findings`]), and the whole
//! written as JSON ([`json`]), Markdown ([`md`]) or one self-contained HTML page ([`html`],
//! with [`plot`]'s SVG charts). Nothing here needs the kernel or privileges.

pub mod evidence;
pub mod findings;
pub mod html;
pub mod join;
pub mod json;
pub mod md;
pub mod model;
pub mod plot;
pub mod read;
pub mod skew;
pub mod text;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use crate::error::UsageError;

pub use join::Report;

/// The report's forms.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Html,
    Md,
    Json,
}

impl Format {
    /// The form a file name asks for.
    pub fn of_path(path: &Path) -> Option<Format> {
        match path
            .extension()?
            .to_string_lossy()
            .to_ascii_lowercase()
            .as_str()
        {
            "html" | "htm" => Some(Format::Html),
            "md" | "markdown" => Some(Format::Md),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// What a report is made of.
#[derive(Debug, Default)]
pub struct Inputs {
    pub recordings: Vec<PathBuf>,
    /// `NODE=FILE` or `FILE` (in the recordings' order).
    pub pcaps: Vec<String>,
    pub doctor: Vec<String>,
}

/// The report in one form.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Html => html::render(report),
        Format::Md => md::render(report),
        Format::Json => json::render(report),
    }
}

/// Reads the inputs and joins them. Bad input is a [`UsageError`] (one line, exit 2); a cut
/// last line is not: it is read up to where it breaks, and said on stderr.
pub fn build(inputs: &Inputs) -> anyhow::Result<Report> {
    let mut recordings = Vec::new();
    for path in &inputs.recordings {
        let rec = read::read_file(path).map_err(|e| UsageError::new(e.to_string()))?;
        if let Some(t) = &rec.truncated {
            eprintln!(
                "vxprobe: {}: line {} is cut short (a killed recorder?): read up to it",
                rec.file, t.line
            );
        }
        recordings.push(rec);
    }
    let nodes: Vec<String> = recordings.iter().map(|r| r.node.clone()).collect();
    let pcaps = assign(&inputs.pcaps, &nodes, "--pcap")?;
    let mut evidence = Vec::new();
    for pcap in pcaps {
        evidence.push(match pcap {
            Some(path) => Some(evidence::read(&path).map_err(UsageError::new)?),
            None => None,
        });
    }
    let mut doctor = Vec::new();
    for spec in &inputs.doctor {
        doctor.push(read_doctor(spec, &nodes)?);
    }
    let mut report =
        join::join(recordings, evidence).map_err(|e| UsageError::new(e.to_string()))?;
    report.findings = findings::derive(&report, &doctor);
    Ok(report)
}

/// Splits `NODE=FILE`; a plain FILE has no node.
fn split_spec<'a>(spec: &'a str, nodes: &[String]) -> (Option<&'a str>, &'a str) {
    match spec.split_once('=') {
        Some((node, file)) if nodes.iter().any(|n| n == node) => (Some(node), file),
        _ => (None, spec),
    }
}

/// Files for each recording: `NODE=FILE` to that node, plain files to the others in order.
fn assign(specs: &[String], nodes: &[String], flag: &str) -> anyhow::Result<Vec<Option<PathBuf>>> {
    let mut out: Vec<Option<PathBuf>> = vec![None; nodes.len()];
    let mut plain = Vec::new();
    for spec in specs {
        match split_spec(spec, nodes) {
            (Some(node), file) => {
                let i = nodes.iter().position(|n| n == node).unwrap_or(0);
                if out[i].is_some() {
                    return Err(
                        UsageError::new(format!("{flag}: two files for node {node}")).into(),
                    );
                }
                out[i] = Some(PathBuf::from(file));
            }
            (None, file) => plain.push(PathBuf::from(file)),
        }
    }
    let mut free = (0..nodes.len())
        .filter(|&i| out[i].is_none())
        .collect::<Vec<_>>()
        .into_iter();
    for file in plain {
        let Some(i) = free.next() else {
            return Err(UsageError::new(format!(
                "{flag} {}: more files than recordings",
                file.display()
            ))
            .into());
        };
        out[i] = Some(file);
    }
    Ok(out)
}

/// A `doctor --json` document and its node: NODE=FILE, the document's `node`, or the node
/// whose name the file name contains.
fn read_doctor(spec: &str, nodes: &[String]) -> anyhow::Result<findings::DoctorDoc> {
    #[derive(serde::Deserialize)]
    struct Doc {
        node: Option<String>,
        findings: Vec<findings::DoctorFinding>,
    }
    let (node, file) = split_spec(spec, nodes);
    let text = std::fs::read_to_string(file)
        .map_err(|e| UsageError::new(format!("cannot read {file}: {e}")))?;
    let doc: Doc = serde_json::from_str(&text).map_err(|e| {
        UsageError::new(format!(
            "{file} is not a `vxprobe doctor --json` document: {e}"
        ))
    })?;
    let stem = Path::new(file)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let node = node.map(str::to_owned).or(doc.node).or_else(|| {
        nodes
            .iter()
            .filter(|n| stem.contains(n.as_str()))
            .max_by_key(|n| n.len())
            .cloned()
    });
    Ok(findings::DoctorDoc {
        node,
        file: file.to_owned(),
        findings: doc.findings,
    })
}
