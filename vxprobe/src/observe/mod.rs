//! From kernel records to the plain reports every sink formats.
//!
//! - [`decode`] -> [`packet`] -> [`anomaly`]: ring-buffer records to typed, named anomalies;
//! - [`filter`]: `--host/--port/--proto` for what the kernel could not filter;
//! - [`session`]: one observation: hops selected, programs attached, counters read;
//! - [`interval`]: the one interval model: each anomaly charged to its hop and flow once,
//!   loss and the other judgments ([`judge`]) made once, into the plain [`report`] types;
//! - [`pipeline`]: the loop from the session through the model to the sinks;
//! - [`distinct`]: bounded distinct counts for the summary;
//! - [`fold`]: which anomalies of a flood become lines (`--event-lines`), the rest `count`;
//! - [`clock`]: the kernel's timestamps as wall time.

pub mod anomaly;
pub mod clock;
pub mod decode;
pub mod distinct;
pub mod filter;
pub mod fold;
pub mod interval;
pub mod judge;
pub mod packet;
pub mod pipeline;
pub mod report;
pub mod session;
