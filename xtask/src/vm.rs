//! `cargo xtask vm-test`: vxprobe's root integration tests inside other kernels.
//!
//! This machine's kernel lacks rungs of the hook ladder (no kprobes, no fentry), so the tests
//! also run in Debian's own kernels, booted under QEMU (TCG: the host's KVM cannot run stock
//! kernels). For each kernel of the matrix ([`FLAVORS`]):
//! 1. the newest package of that line is looked up with `apt-cache search`, fetched with
//!    `apt-get download` and unpacked with `dpkg -x` into `~/.cache/vxprobe/kernels/<package>`
//!    (modules get a `depmod`; the uncompressed vmlinux is extracted so QEMU boots it directly
//!    through its PVH entry, skipping the BIOS and the in-guest decompression);
//! 2. a small initramfs (static busybox, `vm/init.sh`, the 9p/overlay/virtio-console modules)
//!    mounts the host's root read-only over 9p with a tmpfs overlay, so the test binaries that
//!    `cargo test --no-run` built on the host run in place, as root, in the guest;
//! 3. the guest loads the modules the tests need, prints `vxprobe probes`, runs each selected
//!    test binary with `--test-threads=1` and reports the status through a shared directory.
//!
//! The guest has no network device at all: only the namespaces the tests build. A boot that
//! dies before the tests start (TCG flakes) is retried; a test that failed never is.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::setup::{self, BuildEnv};

mod apt;

/// A kernel line of the matrix.
pub struct Flavor {
    pub name: &'static str,
    /// `apt-cache search --names-only` pattern for its packages.
    search: &'static str,
    /// Package names are `<prefix><version>-amd64`.
    prefix: &'static str,
    /// A Debian suite other than the machine's own, read through a private apt state
    /// (`vm/apt.rs`); `None`: the machine's apt.
    suite: Option<&'static str>,
    /// What `vxprobe probes --json` reports there: `tc=<mode>` and `<signal>=<hook>` (a hook
    /// type alone, `tp_btf`, matches any target). Checked by `tests/kernel_hooks.rs` through
    /// VXPROBE_EXPECT_HOOKS; update it when the ladder changes.
    expect_hooks: &'static str,
    /// How much longer the tests wait there than on the host (VXPROBE_TEST_TIME_SCALE; a
    /// larger value set on the host wins): TCG is several times slower than the host, and
    /// older verifiers walk our programs more slowly still.
    time_scale: u32,
}

pub const FLAVORS: &[Flavor] = &[
    Flavor {
        name: "debian-5.10",
        search: r"^linux-image-5\.10\.0-[0-9]+-amd64$",
        prefix: "linux-image-5.10.0-",
        suite: Some("bullseye"),
        // No drop reasons, no icmp_send or tcp_bad_csum tracepoint, no TCX (see README's
        // kernel matrix); af_packet is built in, so fexit reaches packet_sendmsg.
        expect_hooks: "tc=clsact,drop=tp_btf:kfree_skb,retransmit=tp_btf:tcp_retransmit_skb,\
                       retransmit_synack=tp_btf:tcp_retransmit_synack,frag_needed=fentry:__icmp_send,\
                       rx_csum_fault=kprobe:netdev_rx_csum_fault,tcp_bad_csum=UNAVAILABLE,\
                       send_emsgsize=fexit:packet_sendmsg+udp_sendmsg",
        // The slowest guest: with three guests on two cores, agent's two instances starting
        // at once (each loads every program) were not both ready within 100 s (20 s x 5),
        // which 6.1 and 6.12 met.
        time_scale: 10,
    },
    Flavor {
        name: "debian-6.1",
        search: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        prefix: "linux-image-6.1.0-",
        suite: None,
        // tcp_bad_csum is a stand-in only attached when drops have no hook.
        expect_hooks: "tc=clsact,drop=tp_btf:kfree_skb,retransmit=tp_btf:tcp_retransmit_skb,\
                       retransmit_synack=tp_btf:tcp_retransmit_synack,frag_needed=tp_btf:icmp_send,\
                       rx_csum_fault=kprobe:netdev_rx_csum_fault,tcp_bad_csum=UNAVAILABLE,\
                       send_emsgsize=fexit:packet_sendmsg+udp_sendmsg",
        // As slow as 5.10 to start: with three guests and a host build on two cores, crash's
        // recorders (each removing a killed one's filters, then loading every program) were
        // not ready within 100 s (20 s x 5), twice in one run.
        time_scale: 10,
    },
    Flavor {
        name: "debian-6.12",
        search: r"^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64$",
        prefix: "linux-image-6.12.",
        suite: None,
        expect_hooks: "tc=tcx,drop=tp_btf:kfree_skb,retransmit=tp_btf:tcp_retransmit_skb,\
                       retransmit_synack=tp_btf:tcp_retransmit_synack,frag_needed=tp_btf:icmp_send,\
                       rx_csum_fault=kprobe:netdev_rx_csum_fault,tcp_bad_csum=UNAVAILABLE,\
                       send_emsgsize=fexit:packet_sendmsg+udp_sendmsg",
        time_scale: 5,
    },
];

/// The test binaries of `--quick`: the hook each signal uses, and the tests that prove each
/// rung counts what the kernel counts (drops, checksum errors, retransmits, EMSGSIZE).
pub const QUICK_TESTS: &[&str] = &["kernel_hooks", "drops", "signals"];

/// What the host needs to boot a kernel: QEMU, a static busybox for the initramfs, depmod,
/// and the decompressors for kernels and modules.
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "file",
    "xz-utils",
    "zstd",
    // signs every Debian suite, bullseye's too (vm/apt.rs)
    "debian-archive-keyring",
];

/// Modules the initramfs loads to reach the host's root (each with its dependencies; built-in
/// ones are skipped).
const INITRAMFS_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "overlay",
];

/// Modules the tests need, loaded in the guest before they run (request_module would load
/// most on demand; loading them first makes a missing one obvious).
const GUEST_MODULES: &[&str] = &[
    "veth",
    "vxlan",
    "tun",
    "sch_ingress",
    "cls_bpf",
    "af_packet",
    "nf_tables",
    "nft_numgen",
];

const BUSYBOX: &str = "/bin/busybox";
const QEMU: &str = "qemu-system-x86_64";
const INIT_SH: &str = include_str!("vm/init.sh");

pub struct Options {
    pub flavors: Vec<&'static Flavor>,
    /// Test binaries (integration test names) to run; empty: all of them.
    pub tests: Vec<String>,
    /// Passed to every test binary, after `--test-threads=1`.
    pub test_args: Vec<String>,
    pub cpus: u32,
    pub mem: String,
    /// For the tests, from the moment the guest is up.
    pub timeout: Duration,
    /// For the boot, until the guest is up.
    pub boot_timeout: Duration,
    pub boot_retries: u32,
    /// Copy the guest's kernel console to stderr.
    pub console: bool,
}

pub fn flavor(name: &str) -> Option<&'static Flavor> {
    FLAVORS.iter().find(|f| f.name == name)
}

/// Runs the tests in every kernel of `opts`; returns the exit status for xtask: 0 when every
/// kernel passed, else the first failure's (the tests' own status, 124 for a timeout, 125 for
/// a guest that never reported one).
pub fn run(env: &BuildEnv, opts: &Options) -> anyhow::Result<i32> {
    if setup::is_root() {
        setup::ensure_packages(VM_PACKAGES)?;
    }
    for tool in [QEMU, "dpkg", "apt-get"] {
        which(tool).with_context(|| format!("{tool} not found (run as root to install it)"))?;
    }
    let workspace = workspace_root();
    let build = build_tests(env, &workspace)?;
    let selected = select_tests(&build.tests, &opts.tests)?;

    let mut results = Vec::new();
    for flavor in &opts.flavors {
        let started = Instant::now();
        let (kernel, _in_use) = {
            // apt's lists and the kernel cache are shared with any other vm-test running
            let _turn = setup::install_turn()?;
            prepare_kernel(flavor)?
        };
        eprintln!(
            "vm-test: {}: {} ({}), prepared in {:.1} s",
            flavor.name,
            kernel.package,
            kernel.kver,
            started.elapsed().as_secs_f64()
        );
        let (run_dir, _claim) = claim_run_dir(&workspace.join("target/vm-test"), flavor.name)?;
        let script = guest_script(&workspace, &build.vxprobe, &selected, opts, flavor);
        let outcome = boot_and_test(&kernel, &run_dir, &script, opts)?;
        results.push((flavor.name, kernel.kver, outcome));
    }

    eprintln!("\nvm-test summary:");
    let mut status = 0;
    for (name, kver, outcome) in &results {
        eprintln!("  {name:<12} {kver:<24} {}", outcome.describe());
        if status == 0 {
            status = outcome.status();
        }
    }
    Ok(status)
}

/// A run directory of `flavor` no other vm-test uses: `<flavor>`, or `<flavor>-2`, `-3`...
/// while others run the same kernel from this checkout (each starts by clearing its own).
/// Held until the returned lock is dropped.
fn claim_run_dir(parent: &Path, flavor: &str) -> anyhow::Result<(PathBuf, fs::File)> {
    fs::create_dir_all(parent)?;
    for n in 1..=16 {
        let name = if n == 1 {
            flavor.to_owned()
        } else {
            format!("{flavor}-{n}")
        };
        let lock = setup::lock_file(&parent.join(format!("{name}.lock")))?;
        match lock.try_lock() {
            Ok(()) => {
                if n > 1 {
                    eprintln!("vm-test: another run of {flavor} is under way: this one in {name}");
                }
                return Ok((parent.join(name), lock));
            }
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking the run directory {name}"));
            }
        }
    }
    bail!("16 runs of {flavor} are under way from this checkout")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

// ------------------------------------------------------------------------------------ build

struct Build {
    /// target/debug/vxprobe, the binary the integration tests run.
    vxprobe: PathBuf,
    /// Integration test binaries by test name.
    tests: BTreeMap<String, PathBuf>,
}

/// `cargo test --no-run` for vxprobe, reading the binaries from cargo's JSON messages.
fn build_tests(env: &BuildEnv, workspace: &Path) -> anyhow::Result<Build> {
    eprintln!("vm-test: building the test binaries on the host");
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "--package",
            "vxprobe",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace)
        .env("PATH", &env.path)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let mut build = Build {
        vxprobe: PathBuf::new(),
        tests: BTreeMap::new(),
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let kinds = &msg["target"]["kind"];
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        let is_test = msg["profile"]["test"] == true;
        if is_test && kinds == &serde_json::json!(["test"]) {
            build.tests.insert(name.to_owned(), exe.into());
        } else if !is_test && name == "vxprobe" && kinds == &serde_json::json!(["bin"]) {
            build.vxprobe = exe.into();
        }
    }
    if build.vxprobe.as_os_str().is_empty() || build.tests.is_empty() {
        bail!("cargo test --no-run named no vxprobe binary or no integration test");
    }
    Ok(build)
}

/// The binaries to run, `kernel_hooks` first (it says in a second whether the ladder picked
/// what the matrix expects), the others in name order.
fn select_tests(
    all: &BTreeMap<String, PathBuf>,
    wanted: &[String],
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut selected: Vec<(String, PathBuf)> = if wanted.is_empty() {
        all.iter().map(|(n, p)| (n.clone(), p.clone())).collect()
    } else {
        wanted
            .iter()
            .map(|name| {
                all.get(name)
                    .map(|p| (name.clone(), p.clone()))
                    .with_context(|| {
                        format!(
                            "no integration test {name} (there are: {})",
                            all.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    selected.sort_by_key(|(name, _)| (name != "kernel_hooks", name.clone()));
    selected.dedup_by(|a, b| a.0 == b.0);
    Ok(selected)
}

// ----------------------------------------------------------------------------------- kernel

struct Kernel {
    package: String,
    kver: String,
    /// The modules directory (`.../lib/modules/<kver>`), bind-mounted in the guest.
    moddir: PathBuf,
    config: Option<PathBuf>,
    /// What QEMU boots: the extracted vmlinux (PVH entry) or the vmlinuz.
    boot_image: PathBuf,
    pvh: bool,
}

fn kernels_dir() -> PathBuf {
    setup::cache_dir().join("kernels")
}

/// The newest package of `flavor`, downloaded and prepared once (cached by package name),
/// with a shared lock that keeps another run from pruning it while it boots. Called with the
/// install turn held.
fn prepare_kernel(flavor: &Flavor) -> anyhow::Result<(Kernel, fs::File)> {
    let package = resolve_package(flavor)?;
    let dir = kernels_dir().join(&package);
    if !dir.is_dir() {
        let partial = kernels_dir().join(format!("{package}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial)?;
        unpack_kernel(&apt::Apt::for_suite(flavor.suite)?, &package, &partial)
            .with_context(|| format!("preparing kernel package {package}"))?;
        fs::rename(&partial, &dir)?;
        prune_older(flavor, &package);
    }
    let in_use = setup::lock_file(&kernel_lock(&package))?;
    in_use
        .lock_shared()
        .context("locking the kernel in the cache")?;
    Ok((load_kernel(&package, &dir)?, in_use))
}

/// Locked shared by each run booting `package`, exclusively by a prune.
fn kernel_lock(package: &str) -> PathBuf {
    kernels_dir().join(format!("{package}.lock"))
}

/// Asks apt for the newest package of the line; without an answer (no package lists, no
/// network) falls back to the newest one already prepared in the cache.
fn resolve_package(flavor: &Flavor) -> anyhow::Result<String> {
    let apt = apt::Apt::for_suite(flavor.suite)?;
    let search = || -> Vec<String> {
        apt.command("apt-cache")
            .args(["search", "--names-only", flavor.search])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut names = search();
    if newest(flavor, &names).is_none() && setup::is_root() {
        eprintln!(
            "vm-test: apt knows no {} package: apt-get update{}",
            flavor.name,
            flavor
                .suite
                .map(|s| format!(" (private {s} lists)"))
                .unwrap_or_default()
        );
        let _ = apt.update();
        names = search();
    }
    if let Some(name) = newest(flavor, &names) {
        return Ok(name);
    }
    let cached: Vec<String> = fs::read_dir(kernels_dir())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if let Some(name) = newest(flavor, &cached) {
        eprintln!(
            "vm-test: apt has no {} package; using the cached {name}",
            flavor.name
        );
        return Ok(name);
    }
    bail!(
        "no {} kernel package: `apt-cache search --names-only '{}'` finds none",
        flavor.name,
        flavor.search
    )
}

/// The newest `<prefix><version>-amd64` name: versions compare as their number groups
/// (`56`, `117+deb12`); the cloud, rt, dbg and unsigned variants do not match.
fn newest(flavor: &Flavor, names: &[String]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| {
            let version = name.strip_prefix(flavor.prefix)?.strip_suffix("-amd64")?;
            let valid = version.starts_with(|c: char| c.is_ascii_digit())
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+');
            valid.then(|| {
                let key: Vec<u64> = version
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse().ok())
                    .collect();
                (key, name.clone())
            })
        })
        .max()
        .map(|(_, name)| name)
}

fn unpack_kernel(apt: &apt::Apt, package: &str, dir: &Path) -> anyhow::Result<()> {
    eprintln!("vm-test: apt-get download {package}");
    let download = || {
        setup::run(
            apt.command("apt-get")
                .args(["download", "-q", package])
                // root downloads into a directory _apt cannot write: say it is fine
                .args(["-o", "APT::Sandbox::User=root"])
                .current_dir(dir),
        )
    };
    if download().is_err() {
        // stale package lists name a file the mirror no longer has
        eprintln!("vm-test: download failed: apt-get update, then once more");
        apt.update()?;
        download()?;
    }
    let deb = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let root = dir.join("root");
    setup::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    fs::remove_file(&deb)?;

    let kver = kernel_version(&root)?;
    // depmod -b ROOT wants ROOT/lib/modules; newer packages ship usr/lib/modules only
    if !root.join("lib/modules").exists() && root.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    }
    if !root
        .join("lib/modules")
        .join(&kver)
        .join("modules.dep")
        .is_file()
    {
        let depmod = which("depmod").context("depmod not found (package kmod)")?;
        setup::run(
            Command::new(depmod)
                .args(["-a", "-b"])
                .arg(&root)
                .arg(&kver),
        )?;
    }
    let config = root.join(format!("boot/config-{kver}"));
    let pvh = fs::read_to_string(&config).is_ok_and(|c| c.lines().any(|l| l == "CONFIG_PVH=y"));
    if pvh {
        let vmlinuz = root.join(format!("boot/vmlinuz-{kver}"));
        match extract_vmlinux(&vmlinuz) {
            Ok(elf) => fs::write(dir.join("vmlinux"), elf)?,
            Err(e) => eprintln!("vm-test: booting the bzImage ({e:#})"),
        }
    }
    Ok(())
}

fn kernel_version(root: &Path) -> anyhow::Result<String> {
    fs::read_dir(root.join("boot"))?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .context("no boot/vmlinuz-* in the package")
}

fn load_kernel(package: &str, dir: &Path) -> anyhow::Result<Kernel> {
    let root = dir.join("root");
    let kver = kernel_version(&root)?;
    let moddir = fs::canonicalize(root.join("lib/modules").join(&kver))
        .with_context(|| format!("no modules for {kver} in {}", root.display()))?;
    let config = Some(root.join(format!("boot/config-{kver}"))).filter(|c| c.is_file());
    let vmlinux = dir.join("vmlinux");
    let pvh = vmlinux.is_file();
    let boot_image = if pvh {
        vmlinux
    } else {
        root.join(format!("boot/vmlinuz-{kver}"))
    };
    Ok(Kernel {
        package: package.to_owned(),
        kver,
        moddir,
        config,
        boot_image,
        pvh,
    })
}

/// Removes older packages of the same line from the cache, except those another run is
/// booting.
fn prune_older(flavor: &Flavor, keep: &str) {
    for entry in fs::read_dir(kernels_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == keep || newest(flavor, std::slice::from_ref(&name)).is_none() {
            continue;
        }
        let Ok(lock) = setup::lock_file(&kernel_lock(&name)) else {
            continue;
        };
        if lock.try_lock().is_err() {
            eprintln!("vm-test: keeping the older {name}: another run uses it");
            continue;
        }
        eprintln!("vm-test: removing the older {name} from the cache");
        let _ = fs::remove_dir_all(entry.path());
        let _ = fs::remove_file(kernel_lock(&name));
    }
}

/// The uncompressed kernel ELF inside a bzImage: the setup header locates the compressed
/// payload (whose last 4 bytes are the uncompressed size).
fn extract_vmlinux(bzimage: &Path) -> anyhow::Result<Vec<u8>> {
    let data = fs::read(bzimage)?;
    let u32_at = |off: usize| -> anyhow::Result<usize> {
        let bytes = data.get(off..off + 4).context("short bzImage")?;
        Ok(u32::from_le_bytes(bytes.try_into()?) as usize)
    };
    if data.get(0x202..0x206) != Some(b"HdrS") {
        bail!("{} is not a bzImage", bzimage.display());
    }
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let payload = data
        .get(start..start + u32_at(0x24c)?)
        .context("payload outside the bzImage")?;
    let (compressed, size) = payload.split_at(payload.len() - 4);
    let size = u32::from_le_bytes(size.try_into()?) as usize;
    let tool: &[&str] = match compressed {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => &["xz", "-dc", "--single-stream"],
        [0x28, 0xb5, 0x2f, 0xfd, ..] => &["zstd", "-dcq"],
        [0x1f, 0x8b, ..] => &["gzip", "-dc"],
        _ => bail!("unknown compression of the kernel payload"),
    };
    let elf = filter(tool, compressed)?;
    if elf.len() != size || !elf.starts_with(b"\x7fELF") {
        bail!("the payload did not decompress to a {size}-byte ELF");
    }
    Ok(elf)
}

/// Pipes `input` through a command and returns its output.
fn filter(cmd: &[&str], input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", cmd[0]))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!("{} failed ({})", cmd.join(" "), out.status);
    }
    Ok(out.stdout)
}

// -------------------------------------------------------------------------------- initramfs

/// A newc cpio archive: busybox, the init script, the modules that reach the host's root.
fn initramfs(kernel: &Kernel) -> anyhow::Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX).context("reading the static busybox (busybox-static)")?;
    let mut cpio = Cpio::default();
    for dir in [
        "bin", "dev", "proc", "sys", "lower", "upper", "newroot", "modules",
    ] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file(
        "init",
        0o755,
        format!("#!/bin/busybox sh\n{INIT_SH}").as_bytes(),
    );
    let mut order = Vec::new();
    for path in module_load_order(&kernel.moddir, INITRAMFS_MODULES)? {
        let name = module_name(&path);
        let full = kernel.moddir.join(&path);
        let bytes = match path.rsplit_once('.') {
            Some((_, "xz")) => filter(&["xz", "-dc"], &fs::read(&full)?)?,
            Some((_, "zst")) => filter(&["zstd", "-dcq"], &fs::read(&full)?)?,
            Some((_, "gz")) => filter(&["gzip", "-dc"], &fs::read(&full)?)?,
            _ => fs::read(&full)?,
        };
        cpio.file(&format!("modules/{name}.ko"), 0o644, &bytes);
        order.push(format!("{name}.ko\n"));
    }
    cpio.file("modules.list", 0o644, order.concat().as_bytes());
    Ok(cpio.finish())
}

/// `kernel/fs/9p/9p.ko.xz` -> `9p`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The module files (relative to the modules directory) to insmod, dependencies first, for
/// `wanted` (built-in modules are not in modules.dep and need nothing).
fn module_load_order(moddir: &Path, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let deps = fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", moddir.display()))?;
    let mut order: Vec<String> = Vec::new();
    for want in wanted {
        let Some((module, needs)) = deps.lines().find_map(|line| {
            let (module, needs) = line.split_once(':')?;
            (module_name(module) == *want).then_some((module, needs))
        }) else {
            continue;
        };
        // modules.dep lists the whole closure, the one to load first last
        for path in needs.split_whitespace().rev().chain([module]) {
            if !order.iter().any(|p| p == path) {
                order.push(path.to_owned());
            }
        }
    }
    Ok(order)
}

#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, body: &[u8]) {
        self.entry(name, 0o100_000 | perm, (0, 0), body);
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

// ------------------------------------------------------------------------------------ guest

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's command: modules, `vxprobe probes`, then each test binary.
fn guest_script(
    workspace: &Path,
    vxprobe: &Path,
    tests: &[(String, PathBuf)],
    opts: &Options,
    flavor: &Flavor,
) -> String {
    let host_path = std::env::var("PATH").unwrap_or_default();
    let mut s = String::from("# written by cargo xtask vm-test\n");
    s += &format!(
        "export PATH={}\n",
        sh_quote(&format!(
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{host_path}"
        ))
    );
    s += "export HOME=/root TMPDIR=/tmp LANG=C.UTF-8\n";
    // TCG is several times slower than the host: the tests' waits stretch by this much
    // A larger scale from the host (a busier machine) wins; a smaller one does not.
    let scale = std::env::var("VXPROBE_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(flavor.time_scale, |host| host.max(flavor.time_scale));
    s += &format!("export VXPROBE_TEST_TIME_SCALE={scale}\n");
    s += &format!(
        "export VXPROBE_EXPECT_HOOKS={} VXPROBE_VM_KERNEL={}\n",
        sh_quote(&flavor.expect_hooks.split_whitespace().collect::<String>()),
        flavor.name
    );
    for var in ["RUST_BACKTRACE", "RUST_LOG", "VXPROBE_VERBOSE"] {
        if let Ok(value) = std::env::var(var) {
            s += &format!("export {var}={}\n", sh_quote(&value));
        }
    }
    s += &format!("cd {}\n", sh_quote(&workspace.to_string_lossy()));
    s += "echo \"vm-test: guest up: Linux $(uname -r), $(nproc) CPUs, \
          $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB\"\n";
    s += &format!(
        "for m in {}; do modprobe \"$m\" || echo \"vm-test: warning: cannot load module $m\"; done\n",
        GUEST_MODULES.join(" ")
    );
    s += &format!(
        "{} probes || echo 'vm-test: warning: vxprobe probes failed'\n",
        sh_quote(&vxprobe.to_string_lossy())
    );
    // Each binary's status and time, and at the end the passed ones with their times and
    // the failed ones by name (what a matrix run's report needs, without reading the log).
    s += "rc=0 passed= failed=\n\
          run() {\n\
          \x20 name=$1; shift\n\
          \x20 echo; echo \"vm-test: ==== $name\"\n\
          \x20 start=$(date +%s)\n\
          \x20 \"$@\"; r=$?\n\
          \x20 t=$(( $(date +%s) - start ))\n\
          \x20 echo \"vm-test: ==== $name: exit $r after $t s\"\n\
          \x20 if [ $r = 0 ]; then passed=\"$passed $name $t,\"; else failed=\"$failed $name\"; rc=$r; fi\n\
          }\n";
    let args: String = opts
        .test_args
        .iter()
        .map(|a| format!(" {}", sh_quote(a)))
        .collect();
    for (name, binary) in tests {
        s += &format!(
            "run {name} {} --test-threads=1{args}\n",
            sh_quote(&binary.to_string_lossy())
        );
    }
    s += "echo; echo \"vm-test: passed (s):${passed%,}\"\n\
          [ -z \"$failed\" ] || echo \"vm-test: failed:$failed\"\n\
          exit $rc\n";
    s
}

// ------------------------------------------------------------------------------------- qemu

enum Outcome {
    /// The tests ran; their status.
    Finished {
        status: i32,
        boot: Duration,
        tests: Duration,
    },
    /// The guest was up but never reported a status (a crash during the tests).
    NoStatus { boot: Duration, tests: Duration },
    /// The tests did not finish in time.
    TimedOut { boot: Duration },
    /// The guest never came up, retries included.
    NoBoot { attempts: u32 },
}

impl Outcome {
    fn status(&self) -> i32 {
        match self {
            Outcome::Finished { status, .. } => *status,
            Outcome::TimedOut { .. } => 124,
            Outcome::NoStatus { .. } | Outcome::NoBoot { .. } => 125,
        }
    }

    fn describe(&self) -> String {
        match self {
            Outcome::Finished {
                status,
                boot,
                tests,
            } => format!(
                "{} (exit {status}); boot {:.1} s, tests {:.1} s",
                if *status == 0 { "PASSED" } else { "FAILED" },
                boot.as_secs_f64(),
                tests.as_secs_f64()
            ),
            Outcome::NoStatus { boot, tests } => format!(
                "GUEST DIED during the tests after {:.1} s (boot {:.1} s)",
                tests.as_secs_f64(),
                boot.as_secs_f64()
            ),
            Outcome::TimedOut { boot } => {
                format!("TIMED OUT (boot {:.1} s)", boot.as_secs_f64())
            }
            Outcome::NoBoot { attempts } => format!("DID NOT BOOT ({attempts} attempts)"),
        }
    }
}

/// What one QEMU run ended with.
enum Attempt {
    Done(Outcome),
    /// Died or hung before the tests started: worth another boot.
    EarlyDeath(String),
    /// Killed by a signal from outside (Ctrl-C): stop.
    Interrupted(ExitStatus),
}

fn boot_and_test(
    kernel: &Kernel,
    run_dir: &Path,
    script: &str,
    opts: &Options,
) -> anyhow::Result<Outcome> {
    let _ = fs::remove_dir_all(run_dir);
    fs::create_dir_all(run_dir)?;
    let run_dir = fs::canonicalize(run_dir)?;
    fs::write(run_dir.join("initramfs.cpio"), initramfs(kernel)?)?;
    fs::write(run_dir.join("cmd.sh"), script)?;
    let mut env = format!("MODDIR={}\n", sh_quote(&kernel.moddir.to_string_lossy()));
    if let Some(config) = &kernel.config {
        env += &format!("KCONFIG={}\n", sh_quote(&config.to_string_lossy()));
    }
    fs::write(run_dir.join("env.sh"), env)?;

    let attempts = opts.boot_retries + 1;
    for attempt in 1..=attempts {
        match boot_once(kernel, &run_dir, opts)? {
            Attempt::Done(outcome) => return Ok(outcome),
            Attempt::Interrupted(status) => bail!("QEMU was stopped from outside ({status})"),
            Attempt::EarlyDeath(why) => {
                eprintln!("vm-test: the guest died before the tests started ({why})");
                print_tail(&run_dir.join("console.log"), 25);
                print_tail(&run_dir.join("qemu.log"), 10);
                if attempt < attempts {
                    eprintln!("vm-test: booting again ({}/{attempts})", attempt + 1);
                }
            }
        }
    }
    Ok(Outcome::NoBoot { attempts })
}

fn boot_once(kernel: &Kernel, run_dir: &Path, opts: &Options) -> anyhow::Result<Attempt> {
    for file in ["rc", "started", "output.log", "console.log", "qemu.log"] {
        let _ = fs::remove_file(run_dir.join(file));
    }
    // created here so the copier can open it before QEMU does
    fs::write(run_dir.join("output.log"), "")?;
    let path = |name: &str| run_dir.join(name).to_string_lossy().into_owned();
    let mut append =
        String::from("console=ttyS0 panic=-1 oops=panic quiet loglevel=4 rdinit=/init");
    if kernel.pvh {
        // the PVH entry skips the decompressor, which is where KASLR happens
        append += " nokaslr";
    }
    let mut cmd = Command::new(QEMU);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
    ])
    .args(["-machine", "pc", "-accel", "tcg", "-cpu", "max"])
    .args(["-smp", &opts.cpus.to_string(), "-m", &opts.mem])
    // no -netdev/-nic: with -nodefaults the guest has no network device at all
    .args([
        "-chardev",
        &format!("file,id=con,path={}", path("console.log")),
    ])
    .args(["-serial", "chardev:con"])
    .args([
        "-chardev",
        &format!("file,id=out,path={}", path("output.log")),
    ])
    .args(["-device", "virtio-serial-pci,id=vser"])
    .args([
        "-device",
        "virtserialport,bus=vser.0,chardev=out,name=vxvm.out",
    ])
    .args([
        "-fsdev",
        "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
    ])
    .args(["-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"])
    .args([
        "-fsdev",
        &format!("local,id=vxrun,path={},security_model=none", path("")),
    ])
    .args(["-device", "virtio-9p-pci,fsdev=vxrun,mount_tag=vxrun"])
    .arg("-kernel")
    .arg(&kernel.boot_image)
    .args(["-initrd", &path("initramfs.cpio"), "-append", &append])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(fs::File::create(run_dir.join("qemu.log"))?);
    // SAFETY: prctl in the forked child before exec; async-signal-safe, touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            // QEMU goes when xtask goes, even on SIGKILL: no stray guests
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let start = Instant::now();
    let mut qemu = Guard(cmd.spawn().context("starting QEMU")?);
    let copier = Copier::start(
        run_dir.join("output.log"),
        opts.console.then(|| path("console.log").into()),
    );

    let mut boot = None;
    let status = loop {
        if let Some(status) = qemu.0.try_wait()? {
            break Some(status);
        }
        if boot.is_none() && run_dir.join("started").exists() {
            boot = Some(start.elapsed());
        }
        match boot {
            None if start.elapsed() > opts.boot_timeout => break None,
            Some(b) if start.elapsed() > b + opts.timeout => break None,
            _ => thread::sleep(Duration::from_millis(100)),
        }
    };
    if status.is_none() {
        let _ = qemu.0.kill();
        let _ = qemu.0.wait();
    }
    copier.stop();
    let elapsed = start.elapsed();
    if boot.is_none() && run_dir.join("started").exists() {
        boot = Some(elapsed);
    }
    let rc = fs::read_to_string(run_dir.join("rc"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    Ok(match (status, boot, rc) {
        (_, Some(boot), Some(status)) => Attempt::Done(Outcome::Finished {
            status,
            boot,
            tests: elapsed - boot,
        }),
        (Some(s), _, _) if matches!(s.signal(), Some(libc::SIGINT | libc::SIGTERM)) => {
            Attempt::Interrupted(s)
        }
        (None, Some(boot), None) => {
            eprintln!(
                "vm-test: the tests did not finish in {} s",
                opts.timeout.as_secs()
            );
            print_tail(&run_dir.join("console.log"), 25);
            Attempt::Done(Outcome::TimedOut { boot })
        }
        (Some(_), Some(boot), None) => {
            print_tail(&run_dir.join("console.log"), 40);
            Attempt::Done(Outcome::NoStatus {
                boot,
                tests: elapsed - boot,
            })
        }
        (None, None, _) => {
            Attempt::EarlyDeath(format!("not up after {} s", opts.boot_timeout.as_secs()))
        }
        (Some(s), None, _) => Attempt::EarlyDeath(format!("QEMU {s}")),
    })
}

/// Kills QEMU if xtask leaves early (an error, a panic).
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn print_tail(file: &Path, lines: usize) {
    let Ok(text) = fs::read(file) else { return };
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return;
    }
    eprintln!("---- {} (last {lines} lines)", file.display());
    for line in &all[all.len().saturating_sub(lines)..] {
        eprintln!("{line}");
    }
    eprintln!("----");
}

/// Streams what the guest writes (its test output, and optionally its console) to ours while
/// QEMU runs.
struct Copier {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Copier {
    fn start(output: PathBuf, console: Option<PathBuf>) -> Copier {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = vec![];
        for (file, to_stderr) in [(Some(output), false), (console, true)] {
            let Some(file) = file else { continue };
            let stop = stop.clone();
            threads.push(thread::spawn(move || {
                let mut offset = 0;
                loop {
                    // read the flag first: a last pass after it is set drains the file
                    let last = stop.load(Ordering::SeqCst);
                    if let Ok(mut f) = fs::File::open(&file) {
                        let mut buf = Vec::new();
                        if f.seek(SeekFrom::Start(offset)).is_ok()
                            && f.read_to_end(&mut buf).is_ok()
                        {
                            offset += buf.len() as u64;
                            if to_stderr {
                                let _ = std::io::stderr().write_all(&buf);
                            } else {
                                let mut out = std::io::stdout().lock();
                                let _ = out.write_all(&buf);
                                let _ = out.flush();
                            }
                        }
                    }
                    if last {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }));
        }
        Copier { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_picks_the_highest_plain_amd64_package() {
        let names: Vec<String> = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-56-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-57-rt-amd64",
            "linux-image-6.1.0-55-amd64",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            newest(flavor("debian-6.1").unwrap(), &names).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        let names: Vec<String> = [
            "linux-image-6.12.99+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
            "linux-image-6.12-amd64",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            newest(flavor("debian-6.12").unwrap(), &names).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64")
        );
        let names: Vec<String> = [
            "linux-image-5.10.0-30-amd64",
            "linux-image-5.10.0-32-amd64",
            "linux-image-5.10.0-32-cloud-amd64",
            "linux-image-5.10.0-32-rt-amd64",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            newest(flavor("debian-5.10").unwrap(), &names).as_deref(),
            Some("linux-image-5.10.0-32-amd64")
        );
        assert_eq!(flavor("debian-5.10").unwrap().suite, Some("bullseye"));
    }

    #[test]
    fn module_names_drop_the_path_and_the_compression() {
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio_pci.ko"),
            "virtio_pci"
        );
        assert_eq!(
            module_name("kernel/net/9p/9pnet-virtio.ko.zst"),
            "9pnet_virtio"
        );
    }

    #[test]
    fn sh_quote_survives_single_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    /// The guest script's test loop, run by the host's sh on stand-in binaries: each binary's
    /// line, then the passed ones with their times, the failed ones, and the worst status.
    #[test]
    fn the_guest_script_sums_up_passed_and_failed_binaries() {
        let opts = Options {
            flavors: vec![],
            tests: vec![],
            test_args: vec![],
            cpus: 1,
            mem: "1G".into(),
            timeout: Duration::from_secs(1),
            boot_timeout: Duration::from_secs(1),
            boot_retries: 0,
            console: false,
        };
        let tests = [
            ("good".to_owned(), PathBuf::from("true")),
            ("bad".to_owned(), PathBuf::from("false")),
            ("fine".to_owned(), PathBuf::from("true")),
        ];
        let script = guest_script(
            Path::new("/"),
            Path::new("true"),
            &tests,
            &opts,
            &FLAVORS[0],
        );
        // From the loop on: what comes before it loads modules, which the host must not.
        let start = script.find("rc=0").expect("the test loop");
        let out = Command::new("sh")
            .args(["-c", &script[start..]])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.contains("vm-test: ==== bad: exit 1 after 0 s"),
            "{stdout}"
        );
        assert!(
            stdout.contains("vm-test: passed (s): good 0, fine 0\n"),
            "{stdout}"
        );
        assert!(stdout.contains("vm-test: failed: bad\n"), "{stdout}");
    }

    /// A second run of a kernel gets its own directory while the first holds its claim, and
    /// the first name again once that claim is gone.
    #[test]
    fn runs_of_one_kernel_claim_their_own_directories() {
        let parent = std::env::temp_dir().join(format!("vm-test-claims-{}", std::process::id()));
        let first = claim_run_dir(&parent, "k").unwrap();
        let second = claim_run_dir(&parent, "k").unwrap();
        assert_eq!(first.0, parent.join("k"));
        assert_eq!(second.0, parent.join("k-2"));
        drop(first);
        let again = claim_run_dir(&parent, "k").unwrap();
        assert_eq!(again.0, parent.join("k"));
        drop((second, again));
        fs::remove_dir_all(&parent).unwrap();
    }
}
