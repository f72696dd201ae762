//! The kernel's clock as wall time. Every event carries `bpf_ktime_get_ns()`, CLOCK_MONOTONIC
//! at the moment the kernel saw the packet; an anomaly's `ts` (and its pcapng block's time) is
//! that instant on the wall clock, not the moment user space read the record (wakeups are
//! batched: that can be an interval later). The offset between the two clocks is measured at
//! start and again at every interval, so NTP's steps and slews are followed.

use std::time::{Duration, SystemTime};

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: i128,
}

impl Default for WallClock {
    fn default() -> Self {
        Self::measured()
    }
}

impl WallClock {
    /// The offset as the clocks stand now.
    pub fn measured() -> Self {
        Self {
            offset_ns: boot_offset_ns(),
        }
    }

    /// A fixed offset (tests).
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Measures the offset again (the wall clock may have been stepped or slewed).
    pub fn remeasure(&mut self) {
        self.offset_ns = boot_offset_ns();
    }

    /// The wall time of a kernel timestamp (CLOCK_MONOTONIC nanoseconds).
    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        let wall = i128::from(ktime_ns) + self.offset_ns;
        let ns = u64::try_from(wall.max(0)).unwrap_or(u64::MAX);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
    }
}

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// REALTIME - MONOTONIC, from the tightest of a few REALTIME, MONOTONIC, REALTIME readings
/// (the monotonic reading taken against the middle of the two wall readings).
fn boot_offset_ns() -> i128 {
    let mut best = (i128::MAX, 0);
    for _ in 0..5 {
        let before = read(libc::CLOCK_REALTIME);
        let mono = read(libc::CLOCK_MONOTONIC);
        let after = read(libc::CLOCK_REALTIME);
        let spread = after - before;
        if spread < best.0 {
            best = (spread, (before + after) / 2 - mono);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_clock_now_is_the_wall_clock_now() {
        let clock = WallClock::measured();
        let wall = clock.wall(read(libc::CLOCK_MONOTONIC) as u64);
        let now = SystemTime::now();
        let apart = now.duration_since(wall).unwrap_or_else(|e| e.duration());
        assert!(apart < Duration::from_millis(1), "{apart:?} apart");
    }

    #[test]
    fn offsets_convert_exactly() {
        let clock = WallClock::with_offset(1_700_000_000_000_000_000);
        assert_eq!(
            clock.wall(5),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_005)
        );
    }
}
