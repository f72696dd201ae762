//! Map reads that fail for a moment (EINTR, EAGAIN, ENOMEM under memory pressure...) are
//! tried again at once, a few times, and counted: the pipeline reports the count as a
//! `warning` line. A read that still fails is the caller's to skip; nothing here ends a run.
//! Every counter vxprobe reads is cumulative in the kernel, so a read skipped for an interval
//! is caught up by the next one.

use std::sync::atomic::{AtomicU64, Ordering};

/// Attempts per read.
pub const ATTEMPTS: u32 = 3;

/// Failed attempts since [`take_failures`] (one process, one pipeline: a counter of its own).
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// Runs `read` up to [`ATTEMPTS`] times until it succeeds; each failure is counted.
pub fn read<T, E>(mut read: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let mut attempt = 1;
    loop {
        match read() {
            Ok(value) => return Ok(value),
            Err(e) => {
                FAILURES.fetch_add(1, Ordering::Relaxed);
                if attempt == ATTEMPTS {
                    return Err(e);
                }
                attempt += 1;
            }
        }
    }
}

/// Counts a failed attempt made elsewhere (the batch reader's system calls).
pub fn count_failure() {
    FAILURES.fetch_add(1, Ordering::Relaxed);
}

/// Failed attempts since the last call.
pub fn take_failures() -> u64 {
    FAILURES.swap(0, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_tried_again_and_counted() {
        take_failures();
        let mut left = 2;
        let got: Result<u32, &str> = read(|| {
            if left > 0 {
                left -= 1;
                Err("EAGAIN")
            } else {
                Ok(7)
            }
        });
        assert_eq!(got, Ok(7));
        let never: Result<u32, &str> = read(|| Err("EPERM"));
        assert_eq!(never, Err("EPERM"));
        assert_eq!(take_failures(), 2 + u64::from(ATTEMPTS));
        assert_eq!(take_failures(), 0);
    }
}
