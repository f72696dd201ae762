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
