//! `cargo xtask fuzz [--seconds N] [--target NAME]`: every cargo-fuzz target of `fuzz/` for a
//! bounded time (libFuzzer, nightly, AddressSanitizer), with the committed seeds and
//! regressions as starting corpus. A crash is copied into `fuzz/regressions/TARGET/`, where
//! `cargo test --test fuzz_regressions` replays it from then on, and the task fails.

use std::{
    collections::VecDeque,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::setup;

/// Apart from the workspace's own target directory: other flags (ASan, sanitizer coverage)
/// and another toolchain would otherwise evict each other's artifacts.
const TARGET_DIR: &str = "target/fuzz";

pub struct Options {
    pub seconds: u64,
    pub target: Option<String>,
}

struct Outcome {
    target: String,
    execs: Option<u64>,
    elapsed: Duration,
    corpus: usize,
    crash: Option<PathBuf>,
}

pub fn run(env: &setup::BuildEnv, options: &Options) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace root")?
        .to_path_buf();
    ensure_cargo_fuzz()?;
    let mut targets = targets(&root.join("fuzz/fuzz_targets"))?;
    if let Some(only) = &options.target {
        if !targets.contains(only) {
            bail!("no fuzz target {only}: there are {}", targets.join(", "));
        }
        targets = vec![only.clone()];
    }
    // One build for every target (release, ASan, libFuzzer); the kernel programs are not
    // needed to fuzz user space, so their build is skipped.
    cargo_fuzz(env, &root, &["build", "--target-dir", TARGET_DIR])?;
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(fuzz_one(env, &root, target, options.seconds)?);
    }
    eprintln!(
        "\n{:<10} {:>8} {:>14} {:>10} {:>8}  result",
        "target", "seconds", "executions", "exec/s", "corpus"
    );
    for o in &outcomes {
        let secs = o.elapsed.as_secs_f64();
        let execs = o.execs.map_or("?".to_owned(), |n| n.to_string());
        let rate = o
            .execs
            .map_or("?".to_owned(), |n| format!("{:.0}", n as f64 / secs));
        let result = match &o.crash {
            Some(path) => format!("CRASH, saved as {}", path.display()),
            None => "ok".to_owned(),
        };
        eprintln!(
            "{:<10} {:>8.0} {:>14} {:>10} {:>8}  {result}",
            o.target, secs, execs, rate, o.corpus
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crash.is_some())
        .map(|o| o.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {} (the inputs are in fuzz/regressions/: commit them with the \
             fix; `cargo test --test fuzz_regressions` replays them)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// cargo-fuzz, installed when missing.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

fn targets(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

fn cargo_fuzz_command(env: &setup::BuildEnv, root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .env("PATH", &env.path)
        .env("AYA_BUILD_SKIP", "1")
        .args(["+nightly", "fuzz"]);
    cmd
}

fn cargo_fuzz(env: &setup::BuildEnv, root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = cargo_fuzz_command(env, root)
        .args(args)
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        bail!("cargo fuzz {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn fuzz_one(
    env: &setup::BuildEnv,
    root: &Path,
    target: &str,
    seconds: u64,
) -> anyhow::Result<Outcome> {
    let corpus = root.join("fuzz/corpus").join(target);
    let artifacts = root.join("fuzz/artifacts").join(target);
    fs::create_dir_all(&corpus)?;
    fs::create_dir_all(&artifacts)?;
    let mut dirs = vec![corpus.clone()];
    for kind in ["seeds", "regressions"] {
        let dir = root.join("fuzz").join(kind).join(target);
        if dir.is_dir() {
            dirs.push(dir);
        }
    }
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    let started = Instant::now();
    let since = SystemTime::now();
    let mut child = cargo_fuzz_command(env, root)
        .args(["run", target, "--target-dir", TARGET_DIR])
        .args(&dirs)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo fuzz run")?;
    // libFuzzer talks on stderr: keep its status lines, the stats, and the tail for a crash.
    let mut tail = VecDeque::new();
    let mut execs = None;
    let stderr = child.stderr.take().context("cargo fuzz's stderr")?;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            execs = n.trim().parse().ok();
        }
        if line.contains("pulse") || line.contains("DONE") || line.starts_with("stat::") {
            eprintln!("  {line}");
        }
        tail.push_back(line);
        if tail.len() > 80 {
            tail.pop_front();
        }
    }
    let status = child.wait()?;
    let elapsed = started.elapsed();
    let corpus_size = fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    let crash = if status.success() {
        None
    } else {
        for line in &tail {
            eprintln!("  | {line}");
        }
        let newest = newest_since(&artifacts, since).with_context(|| {
            format!("cargo fuzz run {target} failed ({status}) and left no artifact")
        })?;
        let saved_dir = root.join("fuzz/regressions").join(target);
        fs::create_dir_all(&saved_dir)?;
        let saved = saved_dir.join(newest.file_name().context("an artifact name")?);
        fs::copy(&newest, &saved)?;
        Some(saved.strip_prefix(root).unwrap_or(&saved).to_path_buf())
    };
    Ok(Outcome {
        target: target.to_owned(),
        execs,
        elapsed,
        corpus: corpus_size,
        crash,
    })
}

/// The newest file in `dir` written after `since`.
fn newest_since(dir: &Path, since: SystemTime) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let modified = e.metadata().ok()?.modified().ok()?;
            (modified >= since).then(|| (modified, e.path()))
        })
        .max()
        .map(|(_, path)| path)
}
