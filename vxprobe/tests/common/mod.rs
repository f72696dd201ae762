//! Shared pieces of the root integration tests: running vxprobe inside a lab namespace and
//! reading what it wrote.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod agent;
pub mod containerd;
pub mod pods;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const VXPROBE: &str = env!("CARGO_BIN_EXE_vxprobe");

/// Root tests need root; say why they did nothing instead of failing somewhere obscure.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("skipped: needs root (CAP_BPF, CAP_NET_ADMIN) to load eBPF and build namespaces");
    }
    euid == 0
}

/// A `vxprobe record` running inside a namespace, stopped with SIGTERM. Its JSON lines are
/// read as they come, so a test waits for the line, event or count it needs (`wait_*`) with a
/// deadline instead of sleeping a fixed time.
pub struct Recorder {
    child: Child,
    ready: PathBuf,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

fn drain(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

impl Recorder {
    pub fn start(netns: &str, args: &[&str]) -> Recorder {
        Self::start_with_env(netns, args, &[])
    }

    /// Like [`Recorder::start`], with extra environment variables for vxprobe.
    pub fn start_with_env(netns: &str, args: &[&str], env: &[(&str, &str)]) -> Recorder {
        let ready =
            std::env::temp_dir().join(format!("vxprobe-ready-{}-{}", std::process::id(), netns));
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, VXPROBE, "record", "--ready-file"])
            .arg(&ready)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning vxprobe record");
        // Read stdout and stderr as they come, so a chatty vxprobe never blocks on a full pipe.
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        let stderr = drain(child.stderr.take().unwrap());
        let mut recorder = Recorder {
            child,
            ready,
            lines,
            reader: Some(reader),
            stderr: Some(stderr),
        };
        recorder.wait_ready();
        recorder
    }

    fn wait_ready(&mut self) {
        let limit = Duration::from_secs(20) * time_scale();
        let deadline = Instant::now() + limit;
        while !self.ready.exists() {
            self.assert_running();
            if Instant::now() >= deadline {
                // What it was doing is in its stderr: kill it to read all of it.
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.take().unwrap().join().unwrap();
                panic!(
                    "vxprobe not ready after {limit:?}; its stderr:\n{}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The lines written so far (whole intervals: the recorder flushes at each one's end).
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Panics with vxprobe's stderr if it exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("polling vxprobe") {
            let stderr = self.stderr.take().unwrap().join().unwrap();
            panic!(
                "vxprobe exited ({status}): {}",
                String::from_utf8_lossy(&stderr)
            );
        }
    }

    /// Waits until the lines so far satisfy `done`. `limit` is what a real machine needs at
    /// most, generously; it is scaled for emulated ones ([`time_scale`]). On timeout, panics
    /// naming `what`, with the lines that are not `hop` or `flow` lines.
    pub fn wait_until(&mut self, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) {
        let limit = limit * time_scale();
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.lines.lock().unwrap()) {
                return;
            }
            self.assert_running();
            if Instant::now() >= deadline {
                let lines = self.lines();
                let events: Vec<String> = lines
                    .iter()
                    .filter(|l| l["kind"] != "hop" && l["kind"] != "flow")
                    .map(Value::to_string)
                    .collect();
                panic!(
                    "waited {limit:?} for {what}; {} lines, besides hop and flow lines:\n{}",
                    lines.len(),
                    events.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a line matching `matches`; returns it.
    pub fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_until(what, limit, |lines| lines.iter().any(&matches));
        self.lines().into_iter().find(|l| matches(l)).unwrap()
    }

    /// Waits until `n` intervals that ended after `after` (a [`ts_now`]) have their `hop`
    /// lines written. An interval reads the kernel's counters after its `ts`, and its lines are
    /// written at once when it closes: with `n = 2`, everything the kernel counted before
    /// `after` is in the lines, and the interval that counted it was wholly reported (its end,
    /// device removals included, done).
    pub fn wait_intervals_after(&mut self, after: &str, n: usize) {
        self.wait_until(
            &format!("{n} intervals ending after {after}"),
            Duration::from_secs(10),
            |lines| intervals_after(lines, after) >= n,
        );
    }

    /// Waits until the sum of `field` over the lines matching `filter` reaches `at_least`.
    pub fn wait_total(
        &mut self,
        what: &str,
        field: &str,
        at_least: u64,
        filter: impl Fn(&Value) -> bool,
    ) {
        self.wait_until(
            &format!("{what}: {field} >= {at_least}"),
            Duration::from_secs(10),
            |lines| {
                lines
                    .iter()
                    .filter(|l| filter(l))
                    .map(|l| l[field].as_u64().unwrap_or(1))
                    .sum::<u64>()
                    >= at_least
            },
        );
    }

    /// Waits until the `hop` lines of `ifname` `dir` add up to `at_least` in `field`.
    pub fn wait_hop(&mut self, ifname: &str, dir: &str, field: &str, at_least: u64) {
        self.wait_total(&format!("{ifname} {dir}"), field, at_least, |l| {
            l["kind"] == "hop" && l["ifname"] == ifname && l["dir"] == dir
        });
    }

    /// Sends `signal`, waits for the exit, and returns the status code and the JSON lines.
    pub fn stop_with(mut self, signal: i32) -> (i32, Vec<Value>) {
        // SAFETY: kill(2) on our own child's pid; it cannot touch memory.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().expect("waiting for vxprobe");
        let _ = std::fs::remove_file(&self.ready);
        self.reader.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        let stderr = String::from_utf8_lossy(&stderr);
        let code = status
            .code()
            .unwrap_or_else(|| panic!("vxprobe killed by a signal: {status:?}\n{stderr}"));
        assert!(code == 0, "vxprobe exited {code}: {stderr}");
        (code, self.lines())
    }

    pub fn stop(self) -> Vec<Value> {
        self.stop_with(libc::SIGTERM).1
    }

    /// SIGTERM; insists on exit status 0; returns every line and stderr.
    pub fn stop_with_stderr(mut self) -> (Vec<Value>, String) {
        self.assert_running();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("waiting for vxprobe");
        let _ = std::fs::remove_file(&self.ready);
        self.reader.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        assert_eq!(status.code(), Some(0), "vxprobe: {stderr}");
        (self.lines(), stderr)
    }

    /// SIGKILL: no chance to detach anything. Returns once the process is gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.ready);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `done` holds, polling every 20 ms; `limit` is scaled as the recorder's waits
/// are. On timeout, panics naming `what` and what `done`'s last look saw.
pub fn wait_until<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut look: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let limit = limit * time_scale();
    let deadline = Instant::now() + limit;
    loop {
        let seen = look();
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {what}; last saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Now, as the lines' `ts` write it (RFC 3339, UTC, microseconds): such stamps compare as
/// strings.
pub fn ts_now() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// Intervals with `hop` lines whose `ts` is later than `after` (every hop line of an interval
/// has the interval's `ts`).
pub fn intervals_after(lines: &[Value], after: &str) -> usize {
    let mut stamps: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "hop")
        .filter_map(|l| l["ts"].as_str())
        .filter(|ts| *ts > after)
        .collect();
    stamps.dedup();
    stamps.len()
}

/// Sum of a numeric field of the `hop` lines, per (ifname, dir).
pub fn hop_totals(lines: &[Value], field: &str) -> BTreeMap<(String, String), u64> {
    let mut totals = BTreeMap::new();
    for line in lines.iter().filter(|l| l["kind"] == "hop") {
        let key = (
            line["ifname"].as_str().unwrap().to_owned(),
            line["dir"].as_str().unwrap().to_owned(),
        );
        *totals.entry(key).or_default() += line[field].as_u64().unwrap();
    }
    totals
}

/// Runs a command in a namespace and insists it succeeds.
pub fn must(netns: &str, program: &str, args: &[&str]) -> String {
    let out = vxprobe::lab::Lab::exec(netns, program, args).expect("running a lab command");
    assert!(
        out.status.success(),
        "{program} {args:?} in {netns} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The running kernel's (major, minor) release.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    let mut next = || numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// `count` pings from `netns` to `dst`, 10 ms apart; panics unless every one was answered.
pub fn ping(netns: &str, count: u64, dst: &str) {
    let count = count.to_string();
    must(
        netns,
        "ping",
        &["-q", "-c", &count, "-i", "0.01", "-W", "2", dst],
    );
}

/// A device's ifindex and MAC address, from `ip -j link show` in `netns`.
pub fn ifindex_and_mac(netns: &str, dev: &str) -> (u32, String) {
    let out = must(netns, "ip", &["-j", "link", "show", dev]);
    let links: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    (
        links[0]["ifindex"].as_u64().unwrap() as u32,
        links[0]["address"].as_str().unwrap().to_owned(),
    )
}

/// Whether this kernel has TCX links (Linux 6.6); when not, says so.
pub fn has_tcx() -> bool {
    let yes = kernel_version() >= (6, 6);
    if !yes {
        eprintln!("no TCX before Linux 6.6: clsact only here");
    }
    yes
}

/// Whether this kernel can attach kprobes (CONFIG_KPROBES); when not, says so.
pub fn has_kprobes() -> bool {
    let yes = std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    if !yes {
        eprintln!("skipped: this kernel has no kprobes (cargo xtask vm-test runs kernels that do)");
    }
    yes
}

/// The inode of a named network namespace: what events carry as `netns`. Kernel-wide hooks see
/// every namespace of the node, and the tests of one binary (one process id) run side by side,
/// each with a lab of its own: their events are told apart by namespace.
pub fn netns_inode(name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("netns {name}: {e}"))
        .ino()
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens the tap `name` (created if it does not exist) with `flags` (IFF_TAP, IFF_NO_PI,
/// IFF_VNET_HDR...), as the program behind a tap does; in the calling thread's namespace.
/// Closing the file detaches it.
pub fn open_tap(name: &str, flags: libc::c_int) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let tun = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // struct ifreq: the name, then ifr_flags (a short) at offset 16; 40 bytes in all.
    let mut ifreq = [0u8; 40];
    ifreq[..name.len()].copy_from_slice(name.as_bytes());
    ifreq[16..18].copy_from_slice(&(flags as libc::c_short).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifreq` is large enough for,
    // on a tun fd we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(tun)
}

/// The hook `signal` used in a recording, from its `meta` line.
pub fn hook_of(lines: &[Value], signal: &str) -> String {
    assert_eq!(lines[0]["kind"], "meta", "the first line is meta");
    lines[0]["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["signal"] == signal)
        .and_then(|h| h["hook"].as_str())
        .unwrap_or("UNAVAILABLE")
        .to_owned()
}

/// How much slower than a real machine this one is: VXPROBE_TEST_TIME_SCALE (default 1) scales
/// the tests' waits. `cargo xtask vm-test` sets it for its emulated (TCG) guests, where the
/// unoptimized vxprobe takes seconds to parse the kernel's BTF and load its programs.
pub fn time_scale() -> u32 {
    std::env::var("VXPROBE_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// Loaded BPF programs named vxprobe_*: (id, name, pids holding them). Other vxprobe
/// instances may run on this machine: tests look at the ids of the instances they started.
pub fn vxprobe_programs() -> Vec<(u64, String, Vec<u64>)> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .unwrap();
    let programs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    programs
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("vxprobe_"))
        })
        .map(|p| {
            let pids = p["pids"]
                .as_array()
                .map(|pids| pids.iter().filter_map(|x| x["pid"].as_u64()).collect())
                .unwrap_or_default();
            (
                p["id"].as_u64().unwrap(),
                p["name"].as_str().unwrap().to_owned(),
                pids,
            )
        })
        .collect()
}

/// The ids of the BPF programs process `pid` holds open (its /proc fdinfo; Debian's bpftool
/// is built without the skeleton that names a program's holders).
pub fn programs_of(pid: i32) -> Vec<u64> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.as_os_str() != "anon_inode:bpf-prog" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        ids.extend(vxprobe::kernel::stale::prog_id(&info).map(u64::from));
    }
    assert!(!ids.is_empty(), "process {pid} holds no BPF program");
    ids
}

/// The runs of process `pid`'s BPF programs the kernel skipped (one of them already running
/// on that CPU): `recursion_misses` summed over their fdinfo.
pub fn recursion_misses_of(pid: i32) -> u64 {
    let mut misses = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.as_os_str() != "anon_inode:bpf-prog" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        misses += vxprobe::kernel::counters::fdinfo_field(&info, "recursion_misses").unwrap_or(0);
    }
    misses
}

/// The id of the BPF map named `name` that process `pid` holds open (its /proc fdinfo, as in
/// [`programs_of`]): other vxprobe instances have maps of the same names.
pub fn map_of(pid: u32, name: &str) -> u64 {
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.as_os_str() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id.to_string()])
            .output()
            .unwrap();
        let map: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if map["name"] == name {
            return id;
        }
    }
    panic!("process {pid} holds no map {name}");
}

/// Every entry of a BPF map as (key bytes, value bytes), from `bpftool map dump`; per-CPU
/// maps give one value per CPU, each an entry of its own here.
pub fn map_entries(id: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &id.to_string()])
        .output()
        .unwrap();
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool map dump id {id}: {e}"));
    let bytes = |v: &Value| -> Vec<u8> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect()
    };
    let mut out = Vec::new();
    for e in &entries {
        let key = bytes(&e["key"]);
        if let Some(values) = e["values"].as_array() {
            out.extend(values.iter().map(|v| (key.clone(), bytes(&v["value"]))));
        } else {
            out.push((key, bytes(&e["value"])));
        }
    }
    out
}

/// Which of `ids` are loaded now.
pub fn loaded(ids: &[u64]) -> Vec<(u64, String, Vec<u64>)> {
    vxprobe_programs()
        .into_iter()
        .filter(|(id, _, _)| ids.contains(id))
        .collect()
}

/// Which of `ids` are still loaded, after waiting up to 5 s for them to go (detached
/// programs are freed after an RCU grace period).
pub fn still_loaded(ids: &[u64]) -> Vec<(u64, String, Vec<u64>)> {
    let mut left = Vec::new();
    for _ in 0..50 {
        left = loaded(ids);
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    left
}
