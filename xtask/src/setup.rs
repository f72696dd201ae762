//! Installs whatever the build and the tests need, when it is missing: the nightly's rust-src,
//! bpf-linker built against the nightly's own libLLVM, Debian packages, tracefs and bpffs.
//! Every step checks first, so a second run costs a few process spawns.

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// What later cargo invocations need: PATH with bpf-linker in front.
pub struct BuildEnv {
    pub path: OsString,
}

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Packages the tests and the demo use (ip/bridge, nft, traffic, capture, tmux for `top`).
const PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "iperf3",
    "ethtool",
    "tcpdump",
    "tshark",
    "iputils-ping",
    "tmux",
    "bpftool",
    "procps",
    // setpriv and capsh: the tests run vxprobe without capabilities.
    "util-linux",
    "libcap2-bin",
    // The report's HTML is opened in headless Chromium by its test; a font to draw it with.
    "chromium",
    "fonts-dejavu-core",
    // protoc: the k8s-cri crate generates its CRI client at build time.
    "protobuf-compiler",
    // The pods tests: a real containerd with its CRI plugin and runc, CNI plugins for the
    // sandboxes' networks, and podman to build a local pause image from busybox-static.
    "containerd",
    "runc",
    "containernetworking-plugins",
    "podman",
    "busybox-static",
];

/// What `cargo xtask fuzz` needs besides: a C++ compiler for libFuzzer.
const FUZZ_PACKAGES: &[&str] = &["g++"];

pub fn ensure_all() -> anyhow::Result<BuildEnv> {
    // Two xtask commands started at once on a fresh machine (three `vm-test --kernel` runs,
    // say) would otherwise both install the toolchain parts, build bpf-linker into one
    // directory and race for dpkg's lock: they take turns.
    let _turn = install_turn()?;
    ensure_nightly()?;
    let linker_dir = ensure_bpf_linker()?;
    if is_root() {
        install_missing(PACKAGES)?;
        ensure_mount("tracefs", "/sys/kernel/tracing")?;
        ensure_mount("bpf", "/sys/fs/bpf")?;
    } else {
        eprintln!("xtask: not root: skipping packages and mounts (the root tests need them)");
    }
    let mut paths = vec![linker_dir];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    Ok(BuildEnv {
        path: env::join_paths(paths)?,
    })
}

pub fn is_root() -> bool {
    output("id", &["-u"]).is_ok_and(|uid| uid.trim() == "0")
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The nightly toolchain with rust-src (for -Z build-std=core on the bpf target).
fn ensure_nightly() -> anyhow::Result<()> {
    // A fresh RUSTUP_HOME would otherwise replace the rustup binary first.
    let _ = Command::new("rustup")
        .args(["set", "auto-self-update", "disable"])
        .output();
    let has_nightly = output("rustup", &["toolchain", "list"])?
        .lines()
        .any(|l| l.starts_with("nightly"));
    if !has_nightly {
        eprintln!("xtask: installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let sysroot = nightly_sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        output("rustc", &["+nightly", "--print", "sysroot"])?.trim(),
    ))
}

/// bpf-linker, built against the nightly's own libLLVM (no prebuilt binary and no system LLVM
/// is needed), cached per libLLVM so a new nightly gets a matching linker.
fn ensure_bpf_linker() -> anyhow::Result<PathBuf> {
    let sysroot = nightly_sysroot()?;
    let version = output("rustc", &["+nightly", "-vV"])?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in `rustc +nightly -vV`")?
        .to_owned();
    let lib_dir = sysroot.join("lib");
    // The versioned name is the soname the linker binary records.
    let libllvm = fs::read_dir(&lib_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;

    let cache = cache_dir().join(format!("bpf-linker-{BPF_LINKER_VERSION}-{libllvm}"));
    let bin_dir = cache.join("bin");
    if bin_dir.join("bpf-linker").is_file() {
        return Ok(bin_dir);
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {libllvm} (about a minute)");
    let prefix = cache.join("llvm-prefix");
    fs::create_dir_all(prefix.join("lib"))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix.join("lib").join(name);
        let _ = fs::remove_file(&link);
        symlink(lib_dir.join(&libllvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
            "--root",
        ])
        .arg(&cache)
        .env("LLVM_PREFIX", &prefix))?;
    Ok(bin_dir)
}

pub fn cache_dir() -> PathBuf {
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("vxprobe")
}

/// Installs those of `packages` that are missing (root only), in turn with other xtasks.
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    if missing_of(packages).is_empty() {
        return Ok(());
    }
    let _turn = install_turn()?;
    install_missing(packages)
}

/// The fuzz task's packages (as root; otherwise say what is missing, if anything).
pub fn ensure_fuzz_packages() -> anyhow::Result<()> {
    if is_root() {
        return ensure_packages(FUZZ_PACKAGES);
    }
    if Command::new("c++").arg("--version").output().is_err() {
        bail!("libFuzzer needs a C++ compiler: install g++ (or run as root)");
    }
    Ok(())
}

/// (With [`install_turn`] held: asked again once the turn is ours, what another xtask
/// installed meanwhile is not missing any more.)
fn install_missing(packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_of(packages);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .args(APT_WAITS)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(APT_WAITS)
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn missing_of<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|pkg| {
            !output("dpkg-query", &["-W", "-f=${Status}", pkg])
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

/// apt's own wait for its locks held by an apt outside xtask (seconds).
const APT_WAITS: &[&str] = &["-o", "DPkg::Lock::Timeout=600"];

/// An exclusive lock on a file in the cache, held while this process installs anything
/// (flock: released when the file is dropped, or the process dies). Not re-entrant: take it
/// once per install step.
pub fn install_turn() -> anyhow::Result<fs::File> {
    let dir = cache_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = lock_file(&dir.join("install.lock"))?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            eprintln!("xtask: waiting for another xtask's install to end");
        }
        Err(fs::TryLockError::Error(e)) => return Err(e).context("locking the install lock"),
    }
    file.lock().context("locking the install lock")?;
    Ok(file)
}

/// A file to flock, created if missing. Opened read-only where it is not ours to write (a
/// root run made it, say): a lock needs no write access.
pub fn lock_file(path: &Path) -> anyhow::Result<fs::File> {
    let writable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path);
    match writable {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => fs::File::open(path),
        other => other,
    }
    .with_context(|| format!("opening {}", path.display()))
}

fn ensure_mount(fstype: &str, target: &str) -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(target))
    {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", fstype, "nodev", target]))
}
