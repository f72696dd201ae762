//! What /proc says about a process and the machine: CPU time, memory, load.

use std::{fs, time::Duration};

use anyhow::Context as _;

/// Clock ticks per second of /proc/PID/stat's times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// CPU time a process has used so far, all its threads (those gone too), in nanoseconds:
/// its CPU-time clock. /proc/PID/stat's utime + stime count whole clock ticks (10 ms), as much
/// as record spends on an interval of 1,000 flows; they stand in where the clock cannot be
/// read.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    // One source for the whole run: differences of one figure from each would be nonsense.
    static CLOCK_WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *CLOCK_WORKS.get_or_init(|| process_clock(std::process::id()).is_ok()) {
        process_clock(pid)
    } else {
        cpu_ticks(pid)
    }
}

fn process_clock(pid: u32) -> anyhow::Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t, which we own.
    let error = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    anyhow::ensure!(error == 0, "clock_getcpuclockid({pid}): error {error}");
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which we own.
    let failed = unsafe { libc::clock_gettime(clock, &mut now) } != 0;
    anyhow::ensure!(
        !failed,
        "clock_gettime: {}",
        std::io::Error::last_os_error()
    );
    Ok(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// utime + stime of /proc/PID/stat.
fn cpu_ticks(pid: u32) -> anyhow::Result<Duration> {
    let stat =
        fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("pid {pid}"))?;
    // The command name is in parentheses and may contain spaces: count fields after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")": state is field 3 of stat(5), utime 14, stime 15.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok(Duration::from_secs_f64(
        (utime + stime) / ticks_per_second(),
    ))
}

/// Resident memory now and at its peak, in bytes (VmRSS, VmHWM of /proc/PID/status).
#[derive(Copy, Clone, Debug, Default)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
    /// The anonymous part of `rss` (heap, stacks); the rest is mapped files and shared
    /// mappings, such as the BPF ring buffer's pages.
    pub anon: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("pid {pid}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:")?,
    })
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// Busy and total jiffies of every CPU together (/proc/stat's `cpu` line), to tell how loaded
/// the machine was over a stretch of time.
#[derive(Copy, Clone, Debug, Default)]
pub struct CpuSnapshot {
    busy: u64,
    total: u64,
}

impl CpuSnapshot {
    pub fn take() -> Self {
        let text = fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
            return Self::default();
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let total: u64 = v.iter().take(8).sum();
        // idle and iowait are not busy.
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Self {
            busy: total - idle,
            total,
        }
    }

    /// Share of the machine's CPU time that was busy since `earlier`, 0..1.
    pub fn busy_since(&self, earlier: &CpuSnapshot) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return f64::NAN;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        let before = cpu_time(pid).unwrap();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(60) {}
        assert!(cpu_time(pid).unwrap() > before);
        let mem = memory(pid).unwrap();
        assert!(mem.rss > 0 && mem.hwm >= mem.rss);
        assert!(thread_cpu_time() > Duration::ZERO);
    }

    #[test]
    fn the_process_clock_is_finer_than_ticks_and_agrees_with_them() {
        let pid = std::process::id();
        let (clock, ticks) = (process_clock(pid).unwrap(), cpu_ticks(pid).unwrap());
        // Spin until this thread has run 3 ms (however busy the machine): the process clock
        // shows at least that; ticks move by 10 ms steps.
        let (thread, start) = (thread_cpu_time(), std::time::Instant::now());
        while thread_cpu_time() - thread < Duration::from_millis(3) {
            assert!(start.elapsed() < Duration::from_secs(60), "never ran 3 ms");
        }
        let spun = process_clock(pid).unwrap() - clock;
        assert!(spun >= Duration::from_millis(3), "{spun:?}");
        // Both count the same time: within a tick or two of each other.
        let (clock, ticks_now) = (process_clock(pid).unwrap(), cpu_ticks(pid).unwrap());
        assert!(ticks_now >= ticks);
        let apart = clock.abs_diff(ticks_now);
        assert!(
            apart < Duration::from_millis(50),
            "{clock:?} vs {ticks_now:?}"
        );
    }
}
