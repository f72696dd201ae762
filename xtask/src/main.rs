//! Developer tasks: `cargo xtask build | test`. Each installs what it needs first (idempotent,
//! no prompts), so a fresh machine needs nothing but this repository and rustup.

mod fuzz;
mod setup;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "vxprobe's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing, then build target/release/vxprobe (eBPF object embedded).
    Build,
    /// Install what is missing, then run every test: unit tests and root integration tests.
    Test {
        /// Extra arguments for `cargo test`, e.g. `--test hops` or a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what is missing, build, then run `vxprobe demo` (as root): a throwaway lab with
    /// the incidents' faults, watched by `top`.
    Demo {
        /// Extra arguments for `vxprobe demo`, e.g. `--record demo.json`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt check and clippy with warnings as errors.
    Lint,
    /// Fuzz the parsers of untrusted bytes with cargo-fuzz (installed if missing; nightly,
    /// libFuzzer): each target for a bounded time; a crash is saved in fuzz/regressions/.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (decode, packet, pcap, cli, netlink, text).
        #[arg(long)]
        target: Option<String>,
    },
    /// Only install what is missing (toolchain parts, bpf-linker, packages, mounts).
    Setup,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env = setup::ensure_all()?;
    match cli.task {
        Task::Setup => Ok(()),
        Task::Build => cargo(&env, &["build", "--release", "--package", "vxprobe"]),
        Task::Demo { args } => {
            cargo(&env, &["build", "--release", "--package", "vxprobe"])?;
            let status = Command::new("target/release/vxprobe")
                .arg("demo")
                .args(&args)
                .status()
                .context("running target/release/vxprobe demo")?;
            if !status.success() {
                bail!("vxprobe demo failed ({status})");
            }
            Ok(())
        }
        Task::Fuzz { seconds, target } => {
            setup::ensure_fuzz_packages()?;
            fuzz::run(&env, &fuzz::Options { seconds, target })
        }
        Task::Lint => {
            cargo(&env, &["fmt", "--all", "--check"])?;
            cargo(&env, &["clippy", "--all-targets", "--", "-D", "warnings"])
        }
        Task::Test { args } => {
            // Kernel state (devices, hooks, tracefs) is shared: one test at a time. The default
            // members leave out vxprobe-ebpf, which only builds for the bpf target.
            let mut cmd = vec!["test"];
            cmd.extend(args.iter().map(String::as_str));
            cmd.extend(["--", "--test-threads=1"]);
            cargo(&env, &cmd)
        }
    }
}

/// Runs cargo with bpf-linker on PATH.
fn cargo(env: &setup::BuildEnv, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .env("PATH", &env.path)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
