//! Developer tasks: `cargo xtask build | test | lint | bench`. Each installs what it needs first (idempotent,
//! no prompts), so a fresh machine needs nothing but this repository and rustup.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

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
    /// rustfmt check and clippy with warnings as errors.
    Lint,
    /// Only install what is missing (toolchain parts, bpf-linker, packages, mounts).
    Setup,
    /// Build vxprobe and its benchmarks, then measure what observing costs (root): writes
    /// bench/results/latest.md and latest.json.
    Bench {
        /// Fewer rounds and shorter runs.
        #[arg(long)]
        quick: bool,
        /// Only these measurements, comma-separated: tcp,udp,progcost,events,flows,attach,render.
        #[arg(long, value_name = "LIST")]
        only: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env = setup::ensure_all()?;
    match cli.task {
        Task::Setup => Ok(()),
        Task::Build => cargo(&env, &["build", "--release", "--package", "vxprobe"]),
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
        Task::Bench { quick, only } => bench(&env, quick, only.as_deref()),
    }
}

/// Builds vxprobe and the benchmark binary (release), then runs the benchmarks from the
/// workspace root, so the reports land in bench/results/.
fn bench(env: &setup::BuildEnv, quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("the benchmarks load eBPF programs and build network namespaces: run as root");
    }
    cargo(
        env,
        &[
            "build",
            "--release",
            "--package",
            "vxprobe",
            "--package",
            "vxprobe-bench",
        ],
    )?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives inside the workspace")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release");
    let mut cmd = Command::new(target.join("vxprobe-bench"));
    cmd.current_dir(root)
        .arg("--vxprobe")
        .arg(target.join("vxprobe"))
        .args(["--out", "bench/results"]);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(only) = only {
        cmd.args(["--only", only]);
    }
    let status = cmd.status().context("running vxprobe-bench")?;
    if !status.success() {
        bail!("vxprobe-bench failed ({status})");
    }
    Ok(())
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
