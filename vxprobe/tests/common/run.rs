//! Running vxprobe (and other programs) to completion and reading what they printed.

use std::{
    path::Path,
    process::{Command, Output},
};

use serde_json::Value;

use super::VXPROBE;

/// `what` exited 0 (its stderr shown if not).
pub fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `command` to its end and asserts it exited 0.
pub fn output_ok(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert_ok(&format!("{command:?}"), &out);
    out
}

/// Every packet of the pcapng file `pcap`, as tshark reads it: the packet's `fields`, in order
/// (the last one keeps any `|` of its own).
pub fn tshark_fields(pcap: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut command = Command::new("tshark");
    command
        .arg("-r")
        .arg(pcap)
        .args(["-T", "fields", "-E", "separator=|"]);
    for field in fields {
        command.args(["-e", field]);
    }
    let out = output_ok(&mut command);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.splitn(fields.len(), '|').map(str::to_owned).collect())
        .collect()
}

/// The element of the JSON array `list` whose `field` is `value`; panics naming both without
/// one.
pub fn element<'a>(list: &'a Value, field: &str, value: &str) -> &'a Value {
    list.as_array()
        .and_then(|items| items.iter().find(|item| item[field] == value))
        .unwrap_or_else(|| panic!("no {field} {value} in {list}"))
}

/// `vxprobe record`, to be run inside `netns`.
pub fn record_command(netns: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, VXPROBE, "record"]);
    command
}

/// `vxprobe record ARGS` in `netns` to its end (its `--duration`), exit 0 asserted.
pub fn record_in(netns: &str, args: &[&str]) -> Output {
    output_ok(
        record_command(netns)
            .args(args)
            .stdin(std::process::Stdio::null()),
    )
}

/// The report of `vxprobe probes --json`, exit 0 asserted.
pub fn probes_json() -> Value {
    let out = output_ok(Command::new(VXPROBE).args(["probes", "--json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `record` arguments: 200 ms intervals on every hop of a lab node (its pods' veths, its VXLAN
/// device and its underlay).
pub const ALL_HOPS: &[&str] = &[
    "--stats-interval",
    "200ms",
    "-i",
    "cali*",
    "-i",
    vxprobe::lab::VXLAN_DEV,
    "-i",
    vxprobe::lab::UNDERLAY_DEV,
];

/// `out` is a usage error for `args`: exit 2 and one line on stderr naming `named`.
pub fn assert_usage_error(out: &Output, args: &[&str], named: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(
        stderr.contains(named),
        "{args:?} should name {named}: {stderr}"
    );
}
