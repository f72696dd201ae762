//! The command line, per the contract: commands, flags, durations.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

pub use crate::kernel::probes::TcAttach;
use crate::{
    node::pods::{CriSocket, PodConfig},
    observe::{
        filter::FlowSelector,
        session::{DEFAULT_RING_SIZE, SessionConfig},
    },
};

#[derive(Debug, Parser)]
#[command(
    name = "vxprobe",
    version,
    about = "eBPF datapath observer: checksum failures, oversized drops, fragmentation and TCP retransmits, per hop and per flow"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export events as JSON lines (and evidence packets as pcapng).
    Record(RecordArgs),
    /// Live terminal UI of per-hop loss and the worst flows.
    Top(TopArgs),
    /// A throwaway lab with the incidents' faults injected one after another, watched by top.
    Demo(DemoArgs),
    /// Which kernel hook each signal uses here (and why the better ones are not used).
    Probes(ProbesArgs),
    /// Name the misconfiguration behind the numbers: MTUs, checksum/TSO/GSO offloads, kernel.
    Doctor(DoctorArgs),
    /// Node agent: the record pipeline as Prometheus metrics over HTTP, until SIGTERM.
    Agent(AgentArgs),
    /// One incident from both ends of the tunnel: recordings of several nodes joined, loss
    /// located per flow (at a hop, between hops, on the wire), as HTML, Markdown or JSON.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Recordings (`record`'s JSON lines), one per node.
    #[arg(value_name = "REC.jsonl", required = true)]
    pub recordings: Vec<PathBuf>,
    /// Evidence file (`record --pcap`) of a recording: NODE=FILE, or FILE for the recordings
    /// in the order given. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub pcap: Vec<String>,
    /// A `vxprobe doctor --json` document: NODE=FILE, or FILE (the node whose name the file
    /// name contains, or the document's `node`). Repeatable.
    #[arg(long, value_name = "FILE")]
    pub doctor: Vec<String>,
    /// Where the report goes; without it, JSON (or --format) to stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// html, md or json. Default: from OUT's extension (.html, .md, .json).
    #[arg(long, value_enum)]
    pub format: Option<crate::report::Format>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Device to report on, in vxprobe's network namespace; repeatable, shell globs allowed
    /// (`cali*`). Default: every device but `lo`. The rules always see every device.
    #[arg(short = 'i', long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,
    /// Print one JSON document (`{"devices": [...], "findings": [...]}`) instead of a report.
    #[arg(long)]
    pub json: bool,
    /// Judge the devices as if the kernel were RELEASE (e.g. 4.19.0), to check a node's
    /// settings against a kernel it will run or used to run.
    #[arg(long, value_name = "RELEASE", value_parser = parse_kernel_release)]
    pub assume_kernel: Option<String>,
    /// Also watch the live signals for this long (attaching like `record`) and add to each
    /// finding what its devices did meanwhile (`evidence.observed`).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub watch: Option<Duration>,
    #[command(flatten)]
    pub pods: PodOptions,
}

/// Parses a kernel release for `--assume-kernel`: it must start with MAJOR.MINOR.
pub fn parse_kernel_release(text: &str) -> Result<String, String> {
    match crate::node::facts::KernelRelease::parse(text).version {
        Some(_) => Ok(text.trim().to_owned()),
        None => Err(format!(
            "'{text}' is not a kernel release like 4.19.0 or 5.10"
        )),
    }
}

#[derive(Debug, Args)]
pub struct ProbesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Leave a hook type out of the ladder (repeatable).
    #[arg(long, value_enum, value_name = "HOOK")]
    pub skip_hook: Vec<crate::kernel::probes::HookType>,
    /// Also report frees that are not losses, such as NO_SOCKET in ping_rcv for echo replies
    /// a raw socket (root's ping) already received.
    #[arg(long)]
    pub all_drops: bool,
}

/// Which devices to observe, and which flows.
#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Device to observe, in vxprobe's network namespace; repeatable, shell globs allowed
    /// (`cali*`). Default: every VXLAN/Geneve device, its underlay, every tun/tap, every NIC.
    #[arg(short = 'i', long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,
    /// Only flows to or from this address (inner or outer header).
    #[arg(long, value_name = "IP")]
    pub host: Option<std::net::IpAddr>,
    /// Only flows with this source or destination port (inner or outer header).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<crate::observe::filter::Proto>,
}

impl Selection {
    pub fn flows(&self) -> FlowSelector {
        FlowSelector {
            host: self.host,
            port: self.port,
            proto: self.proto,
        }
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// This node's name in the `meta` line, for `report` to join recordings of several nodes.
    /// Default: the hostname.
    #[arg(long, value_name = "NAME", value_parser = parse_node_name)]
    pub node: Option<String>,
    /// Stop after this long (500ms, 10s, 2m). Default: until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Where the JSON lines go; `-` is stdout.
    #[arg(long, short = 'o', value_name = "PATH", default_value = "-")]
    pub output: String,
    /// Write the packets behind drop/csum_error/oversize/fragment events to this pcapng file.
    #[arg(long, value_name = "PATH")]
    pub pcap: Option<PathBuf>,
    /// Bytes kept of each evidence packet, 1 to 128 (what the kernel captures). Default: up
    /// to the end of the innermost transport header, at most 128: headers, not payload.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..=128))]
    pub snaplen: Option<u32>,
    /// Lines per (kind, hop, flow, reason) and interval; the rest of a flood folds into one
    /// line with `count`. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = crate::observe::fold::DEFAULT_EVENT_LINES)]
    pub event_lines: u32,
    /// Most bytes the recording writes (--output and --pcap together; 64K to 1P, suffixes K, M,
    /// G, T, P in powers of 1024). Once reached, a `note` line says so and nothing more is
    /// written but the `summary`. Default: no limit.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_output_size: Option<u64>,
    /// How often each hop's counters are written as a `hop` line.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_interval)]
    pub stats_interval: Duration,
    #[command(flatten)]
    pub probe: ProbeOptions,
    #[command(flatten)]
    pub pods: PodOptions,
    /// Created once every probe is attached (for scripts and tests that must not race the
    /// attach).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// Where pod names come from.
#[derive(Debug, Clone, Default, Args)]
pub struct PodOptions {
    /// The container runtime's CRI socket, to name pods by their network namespaces
    /// (containerd's, CRI-O's...); `none`: name them from the node's layout only (cgroups and
    /// /var/log/pods). Default: the first of the usual sockets that answers.
    #[arg(long, value_name = "PATH", value_parser = parse_cri_socket)]
    pub cri_socket: Option<CriSocket>,
}

/// Kubelet's pod log directories, where the layout reads pod names, when not
/// `/var/log/pods` (a host mount elsewhere).
pub const POD_LOGS_ENV: &str = "VXPROBE_POD_LOGS";

impl PodOptions {
    /// The pod index's configuration.
    pub fn config(&self) -> PodConfig {
        let mut config = PodConfig {
            cri: self.cri_socket.clone().unwrap_or(CriSocket::Probe),
            ..PodConfig::default()
        };
        if let Some(logs) = std::env::var_os(POD_LOGS_ENV).filter(|v| !v.is_empty()) {
            config.pod_logs = logs.into();
        }
        config
    }
}

/// Parses `--cri-socket`: `none`, or a socket that exists.
pub fn parse_cri_socket(text: &str) -> Result<CriSocket, String> {
    use std::os::unix::fs::FileTypeExt as _;
    if text == "none" {
        return Ok(CriSocket::Off);
    }
    match std::fs::metadata(text) {
        Ok(m) if m.file_type().is_socket() => Ok(CriSocket::Path(text.into())),
        Ok(_) => Err(format!("{text} is not a socket")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("no such socket {text}")),
        Err(e) => Err(format!("{text}: {e}")),
    }
}

impl ProbeOptions {
    /// How `record`, `top` (and the agent) observe, as their command lines ask.
    pub fn session(&self, selection: &Selection, pods: &PodOptions) -> SessionConfig {
        SessionConfig {
            ifaces: selection.ifaces.clone(),
            flows: selection.flows(),
            tc_attach: self.tc_attach,
            skip_hook: self.skip_hook.clone(),
            max_flows: self.max_flows,
            flow_cache_slots: self.flow_cache,
            ring_size: self.ring_size,
            all_drops: self.all_drops,
            node: None,
            pods: Some(pods.config()),
        }
    }
}

/// The agent's port: outside Prometheus' exporter range 9100-9999 (every port there is
/// allocated to some exporter, and on a host-network pod a collision is a crash loop), outside
/// Kubernetes' own ports (6443, 10248-10260), the NodePort range (30000-32767) and Linux's
/// ephemeral range (32768-60999, where an outgoing connection could hold it), and in no
/// services list.
pub const DEFAULT_PORT: u16 = 19478;
pub const DEFAULT_LISTEN: &str = "0.0.0.0:19478";

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Where to serve /metrics, /healthz and /readyz: ADDR:PORT, e.g. 127.0.0.1:19478 or
    /// [::]:19478.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// The node's name, in `vxprobe_node_info{node}` (default: the hostname; in a DaemonSet,
    /// spec.nodeName through the downward API).
    #[arg(long, value_name = "NAME", value_parser = parse_node_name)]
    pub node: Option<String>,
    /// Also export per-flow series for the K flows with the most recent loss (1 to 10000;
    /// default: none). Each costs a series per hop it crosses, and one for its drops.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub flow_metrics: Option<u32>,
    /// How often the hop and flow counters are read from the kernel (and the metrics move).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_interval)]
    pub stats_interval: Duration,
    /// Add a `pod` label (namespace/name) to the hop series of pods' veths and to the
    /// node-wide drop, checksum and anomaly series, for at most 256 pods at a time (the rest
    /// are `other`).
    #[arg(long)]
    pub pod_labels: bool,
    #[command(flatten)]
    pub probe: ProbeOptions,
    #[command(flatten)]
    pub pods: PodOptions,
}

/// Parses `--listen`: an IPv4 or bracketed IPv6 address and a port other than 0.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        format!(
            "'{text}' is not an ADDR:PORT such as 127.0.0.1:{DEFAULT_PORT} or [::]:{DEFAULT_PORT}"
        )
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "'{text}': port 0 would be a different port every start; name one (default {DEFAULT_PORT})"
        ));
    }
    Ok(addr)
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// How often the screen's counters are refreshed.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    #[command(flatten)]
    pub probe: ProbeOptions,
    #[command(flatten)]
    pub pods: PodOptions,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("headless").args(["record", "report"]))]
pub struct DemoArgs {
    /// Run headless and write the recording (JSON lines) here instead of opening top.
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,
    /// With --record: also write the evidence packets here (pcapng).
    #[arg(long, value_name = "PATH", requires = "record")]
    pub pcap: Option<PathBuf>,
    /// How long each fault lasts at least; a phase whose fault has not shown yet (a slow
    /// machine) goes on until it has, up to ten times this (at least a minute).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub phase: Duration,
    /// With --record or --report: stop after this long (default: every phase once).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "headless")]
    pub duration: Option<Duration>,
    /// Run headless with a switch between the nodes (and a phase of loss on it), record both
    /// nodes and write their recordings, evidence and the report (html, md, json) into DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "record")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub pods: PodOptions,
}

/// How the kernel side is set up; the defaults suit almost everyone.
#[derive(Debug, Clone, Args)]
pub struct ProbeOptions {
    /// Size of the kernel-to-user event ring buffer: a power of two, 4 KiB to 1 GiB. Events
    /// that find it full are counted and reported as `lost`.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_SIZE, value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Capacity of the kernel's per-flow table (flows x hops x directions); beyond it the
    /// least recently seen entries are evicted.
    #[arg(long, value_name = "N", default_value_t = vxprobe_common::MAX_FLOWS, value_parser = clap::value_parser!(u32).range(64..=4_194_304))]
    pub max_flows: u32,
    /// Slots per CPU of the flow cache in front of that table: a power of two, 1 to 65536.
    /// A flow in its slot costs the TC programs an array lookup instead of a hash lookup;
    /// flows that share a slot take turns, the table keeps what each counted. Default: 1024,
    /// fewer on machines with more than 32 CPUs (32768 slots in all).
    #[arg(long, value_name = "N", value_parser = parse_flow_cache)]
    pub flow_cache: Option<u32>,
    /// How TC programs attach: TCX links (Linux >= 6.6) or clsact filters; `auto` picks TCX
    /// where the kernel has it.
    #[arg(long, value_enum, default_value_t = TcAttach::Auto)]
    pub tc_attach: TcAttach,
    /// Leave a hook type out of the ladder (repeatable), e.g. to use the raw tracepoint where
    /// tp_btf misbehaves.
    #[arg(long, value_enum, value_name = "HOOK")]
    pub skip_hook: Vec<crate::kernel::probes::HookType>,
    /// Also report frees that are not losses, such as NO_SOCKET in ping_rcv for echo replies
    /// a raw socket (root's ping) already received.
    #[arg(long)]
    pub all_drops: bool,
}

/// A clap error as one line: its message with the missing argument, tip or possible values
/// that clap puts on the lines below, without the usage and help text after them.
pub fn usage_line(e: &clap::Error) -> String {
    use clap::{CommandFactory as _, error::ErrorKind};
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
    ) {
        let commands: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .filter(|name| name != "help")
            .collect();
        return format!(
            "a command is needed: {} (vxprobe --help describes them)",
            commands.join(", ")
        );
    }
    let rendered = e.render().to_string();
    let mut parts = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.trim_start_matches("error: "));
        }
    }
    if parts.is_empty() {
        "bad usage (vxprobe --help)".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Parses DUR (`500ms`, `10s`, `2m`): a positive duration with a unit, at most 100 years
/// (beyond that, deadlines overflow the clock: run without `--duration` instead).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration like 500ms, 10s or 2m ({e})"))?;
    if duration.is_zero() {
        return Err(format!("'{text}': the duration must be greater than zero"));
    }
    if duration > MAX_DURATION {
        return Err(format!(
            "'{text}' is too long: at most 100 years (no --duration runs until stopped)"
        ));
    }
    Ok(duration)
}

/// 100 years as humantime counts them (365.25 days each).
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);
/// Intervals shorter than this would spend the CPU on reading maps, not on the traffic.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Parses an interval (`--stats-interval`, `--interval`): a DUR from 10ms to 24h.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(format!(
            "'{text}': an interval must be between 10ms and 24h"
        ));
    }
    Ok(interval)
}

/// A ring buffer size the kernel accepts: a power of two and a multiple of the page size.
pub fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size: u32 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of bytes"))?;
    if !size.is_power_of_two() || !(4096..=1 << 30).contains(&size) {
        return Err(format!(
            "{size} is not a power of two between 4096 and 1073741824"
        ));
    }
    Ok(size)
}

/// A node name for `--node`: what `report` shows and joins by.
pub fn parse_node_name(text: &str) -> Result<String, String> {
    let name = text.trim();
    if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
        return Err(format!(
            "'{text}' is not a node name (1 to 253 printable characters)"
        ));
    }
    Ok(name.to_owned())
}

/// Parses a size in bytes (`--max-output-size`): a number with an optional K, M, G, T or P
/// (powers of 1024, `KiB`/`KB`/`K` alike), from 64 KiB to 1 PiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("'{text}' is not a size like 512M or 2G (bytes, or K, M, G, T, P)");
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let number: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit = t[digits..].trim().to_ascii_uppercase();
    let unit = unit.trim_end_matches('B').trim_end_matches('I');
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(bad()),
    };
    let bytes = number.checked_mul(1 << shift).ok_or_else(bad)?;
    if !(64 << 10..=1 << 50).contains(&bytes) {
        return Err(format!("'{text}': the size must be between 64K and 1P"));
    }
    Ok(bytes)
}

/// Parses `--flow-cache`: a power of two, 1 to 65536.
pub fn parse_flow_cache(text: &str) -> Result<u32, String> {
    let slots: u32 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of slots"))?;
    if !slots.is_power_of_two() || slots > 65536 {
        return Err(format!("{slots} is not a power of two between 1 and 65536"));
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_of_the_contract_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in ["", "10", "ten seconds", "0s", "-1s", "5x"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn durations_and_intervals_have_bounds() {
        assert!(parse_duration("100y").is_ok());
        for bad in ["101y", "100000000000y", "18446744073709551615s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_interval("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_interval("24h"), Ok(Duration::from_secs(86400)));
        for bad in ["1ns", "9ms", "25h", "0s"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ring_sizes_are_powers_of_two_in_range() {
        assert_eq!(parse_ring_size("65536"), Ok(65536));
        for bad in ["0", "1000", "2048", "3000000", "big"] {
            assert!(parse_ring_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            parse_listen("127.0.0.1:19478"),
            Ok("127.0.0.1:19478".parse().unwrap())
        );
        assert!(parse_listen("[::]:9").is_ok());
        for bad in [
            "19478",
            "localhost:19478",
            "1.2.3.4",
            "1.2.3.4:0",
            "1.2.3.4:70000",
            "",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cri_sockets_exist_and_are_sockets() {
        assert_eq!(parse_cri_socket("none"), Ok(CriSocket::Off));
        let dir = std::env::temp_dir().join(format!("vxprobe-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("cri.sock");
        let _ = std::fs::remove_file(&socket);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let text = socket.to_str().unwrap();
        assert_eq!(parse_cri_socket(text), Ok(CriSocket::Path(socket.clone())));
        let dir_text = dir.to_str().unwrap();
        assert_eq!(
            parse_cri_socket(dir_text),
            Err(format!("{dir_text} is not a socket"))
        );
        assert!(parse_cri_socket("/nonexistent/cri.sock").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sizes_have_units_and_bounds() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        for bad in ["", "M", "1000", "2X", "-1G", "2P", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_names_are_printable() {
        assert_eq!(parse_node_name("node-1\n"), Ok("node-1".into()));
        assert!(parse_node_name(" ").is_err());
        assert!(parse_node_name("a\u{7}b").is_err());
        assert!(parse_node_name(&"n".repeat(254)).is_err());
    }
}
