//! SIGINT and SIGTERM while starting. Loading the programs takes a second here and minutes on
//! an emulated CPU; a signal in that time must end the run within one step, not after every
//! program is loaded and attached. The commands that stop on a signal set this flag with
//! their handlers ([`watch`]); start-up checks it between its slow steps ([`check`]).

use std::sync::{
    Arc, LazyLock, Once,
    atomic::{AtomicBool, Ordering},
};

static REQUESTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// A signal came while starting: nothing is observed, whatever was attached is detached.
#[derive(Debug, thiserror::Error)]
#[error("stopped by a signal while starting: nothing was observed")]
pub struct Interrupted;

/// Sets the flag on SIGINT and SIGTERM from now on (beside the command's own handlers, which
/// end a running session). Idempotent.
pub fn watch() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&REQUESTED)) {
                result = Err(e);
            }
        }
    });
    result
}

/// Runs `load` (a program's verification) with the asynchronous signals held back from this
/// thread (SIGINT, SIGTERM, but also a terminal's SIGWINCH or SIGTSTP); they are delivered
/// when it returns, or meanwhile to another thread. A signal in the middle
/// of a verification makes the verifier give up (EAGAIN), and aya answers any failed load by
/// loading again with the verifier's log on: on kernels before 6.4, whose full log fails the
/// load (ENOSPC), that is load after load with ever larger logs, tens of minutes under an
/// emulated CPU where one load takes seconds. Held back, the load finishes and start-up stops
/// at its next step.
pub fn held_back<T>(load: impl FnOnce() -> T) -> T {
    let _held = Held::new();
    load()
}

/// This thread's signal mask with every signal blocked but those a fault raises (which
/// cannot wait), restored when dropped.
struct Held {
    before: Option<libc::sigset_t>,
}

impl Held {
    fn new() -> Self {
        // SAFETY: the sets are plain values owned here; sigfillset/sigdelset only write them,
        // and pthread_sigmask changes this thread's mask alone (restored by Drop). On failure
        // nothing is changed and nothing is restored.
        unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            let mut before: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut block);
            for fault in [
                libc::SIGSEGV,
                libc::SIGBUS,
                libc::SIGFPE,
                libc::SIGILL,
                libc::SIGTRAP,
            ] {
                libc::sigdelset(&mut block, fault);
            }
            let held = libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut before) == 0;
            Self {
                before: held.then_some(before),
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(before) = &self.before {
            // SAFETY: restores the mask saved in `new` for this same thread.
            unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, before, std::ptr::null_mut());
            }
        }
    }
}

/// Whether a watched signal has come.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err` once a watched signal has come: the caller stops starting.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}
