//! Developer tasks: `cargo xtask build | test`. Each installs what it needs first (idempotent,
//! no prompts), so a fresh machine needs nothing but this repository and rustup.

mod fuzz;
mod image;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
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
    /// Run the root integration tests inside Debian's kernels under QEMU (TCG): the kernel
    /// matrix. Exits with the tests' status (124: timed out, 125: the guest did not report).
    VmTest {
        /// Which kernel: debian-5.10, debian-6.1, debian-6.12 or all.
        #[arg(long, default_value = "all", value_parser = kernel_names())]
        kernel: String,
        /// Only the tests that prove each rung of the hook ladder (kernel_hooks, drops,
        /// signals): the CI subset.
        #[arg(long, conflicts_with = "test")]
        quick: bool,
        /// Run this integration test binary (repeatable), e.g. `--test hops`.
        #[arg(long, value_name = "NAME")]
        test: Vec<String>,
        /// Guest CPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Guest memory (QEMU's -m).
        #[arg(long, default_value = "2G")]
        mem: String,
        /// Seconds the tests may take once the guest is up (the 26 binaries took 2,200 s in
        /// 6.12 and over 3,600 s in 5.10 on a loaded 2-core machine).
        #[arg(long, default_value_t = 7200)]
        timeout: u64,
        /// Seconds a boot may take before it counts as failed (and is retried).
        #[arg(long, default_value_t = 300)]
        boot_timeout: u64,
        /// Boots retried when the guest dies before the tests start.
        #[arg(long, default_value_t = 2)]
        boot_retries: u32,
        /// Copy the guest's kernel console to stderr.
        #[arg(long)]
        console: bool,
        /// Arguments for every test binary, e.g. a test name filter.
        #[arg(last = true)]
        test_args: Vec<String>,
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
    /// The soak (as root): `record` over the lab for N minutes of traffic, faults and device
    /// churn (release build); prints RSS and open descriptors over time, fails if they grow.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
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
    /// Build the agent's OCI image (FROM scratch, a static musl vxprobe; nothing is pulled):
    /// localhost/vxprobe:<version> and localhost/vxprobe:latest, with podman (root).
    Image,
    /// Build vxprobe and its benchmarks, then measure what observing costs (root): writes
    /// bench/results/latest.md and latest.json.
    Bench {
        /// Fewer rounds and shorter runs.
        #[arg(long)]
        quick: bool,
        /// Only these measurements, comma-separated: tcp,udp,progcost,events,flows,attach,render,agent.
        #[arg(long, value_name = "LIST")]
        only: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env = setup::ensure_all()?;
    match cli.task {
        Task::Setup => image::ensure_agent_tools(),
        Task::Image => image::build(&env, workspace_root()?).map(|_| ()),
        Task::Bench { quick, only } => bench(&env, quick, only.as_deref()),
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
        Task::Soak { minutes } => {
            let secs = (minutes * 60).to_string();
            let status = Command::new(env!("CARGO"))
                .args([
                    "test",
                    "--release",
                    "--package",
                    "vxprobe",
                    "--test",
                    "soak",
                ])
                .args(["--", "--ignored", "--nocapture"])
                .env("PATH", &env.path)
                .env("VXPROBE_SOAK_SECS", &secs)
                .status()
                .context("running the soak")?;
            if !status.success() {
                bail!("the soak failed ({status})");
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
        Task::VmTest {
            kernel,
            quick,
            test,
            cpus,
            mem,
            timeout,
            boot_timeout,
            boot_retries,
            console,
            test_args,
        } => {
            let flavors = match kernel.as_str() {
                "all" => vm::FLAVORS.iter().collect(),
                name => vec![vm::flavor(name).expect("clap checked the name")],
            };
            let tests = if quick {
                vm::QUICK_TESTS.iter().map(|t| t.to_string()).collect()
            } else {
                test
            };
            let status = vm::run(
                &env,
                &vm::Options {
                    flavors,
                    tests,
                    test_args,
                    cpus,
                    mem,
                    timeout: Duration::from_secs(timeout),
                    boot_timeout: Duration::from_secs(boot_timeout),
                    boot_retries,
                    console,
                },
            )?;
            std::process::exit(status)
        }
        Task::Test { args } => {
            // Kernel state (devices, hooks, tracefs) is shared: one test at a time. The default
            // members leave out vxprobe-ebpf, which only builds for the bpf target. Every test
            // binary runs, whatever failed before it; cargo names the failed ones at the end.
            // The agent's tests run Prometheus, promtool, kubernetes-validate; tests/image.rs
            // runs the image.
            image::ensure_agent_tools()?;
            if setup::is_root() && image::tests_need_image(&args) {
                image::build(&env, workspace_root()?)?;
            }
            let mut cmd = vec!["test", "--no-fail-fast"];
            cmd.extend(args.iter().map(String::as_str));
            cmd.extend(["--", "--test-threads=1"]);
            cargo(&env, &cmd)
        }
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
    let root = workspace_root()?;
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

fn workspace_root() -> anyhow::Result<&'static Path> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives inside the workspace")
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

fn kernel_names() -> clap::builder::PossibleValuesParser {
    let mut names: Vec<&str> = vm::FLAVORS.iter().map(|f| f.name).collect();
    names.push("all");
    clap::builder::PossibleValuesParser::new(names)
}
