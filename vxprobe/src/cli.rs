//! The command line, per the contract: commands, flags, durations.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

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
    /// Which kernel hook each signal uses here (and why the better ones are not used).
    Probes(ProbesArgs),
}

#[derive(Debug, Args)]
pub struct ProbesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Leave a hook type out of the ladder (repeatable).
    #[arg(long, value_enum, value_name = "HOOK")]
    pub skip_hook: Vec<crate::probes::HookType>,
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
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<crate::filter::Proto>,
}

impl Selection {
    pub fn flows(&self) -> crate::filter::FlowSelector {
        crate::filter::FlowSelector {
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
    /// Stop after this long (500ms, 10s, 2m). Default: until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Where the JSON lines go; `-` is stdout.
    #[arg(long, short = 'o', value_name = "PATH", default_value = "-")]
    pub output: String,
    /// How often each hop's counters are written as a `hop` line.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub stats_interval: Duration,
    /// Capacity of the kernel's per-flow table (flows x hops x directions); beyond it the
    /// least recently seen entries are evicted.
    #[arg(long, value_name = "N", default_value_t = vxprobe_common::MAX_FLOWS, value_parser = clap::value_parser!(u32).range(64..=4_194_304))]
    pub max_flows: u32,
    /// How TC programs attach: TCX links (Linux >= 6.6) or clsact filters; `auto` picks TCX
    /// where the kernel has it.
    #[arg(long, value_enum, default_value_t = TcAttach::Auto)]
    pub tc_attach: TcAttach,
    /// Leave a hook type out of the ladder (repeatable), e.g. to use the raw tracepoint where
    /// tp_btf misbehaves.
    #[arg(long, value_enum, value_name = "HOOK")]
    pub skip_hook: Vec<crate::probes::HookType>,
    /// Created once every probe is attached (for scripts and tests that must not race the
    /// attach).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    Auto,
    Tcx,
    Clsact,
}

/// Parses DUR (`500ms`, `10s`, `2m`): a positive duration with a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration like 500ms, 10s or 2m ({e})"))?;
    if duration.is_zero() {
        return Err(format!("'{text}': the duration must be greater than zero"));
    }
    Ok(duration)
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
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
