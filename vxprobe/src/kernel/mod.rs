//! The kernel side: the eBPF object loaded and attached, and its maps read.
//!
//! - [`probes`]: loading, TC attachment, the hook ladder of each kernel-wide signal;
//! - [`hopstats`]: per-hop and per-flow counters read from the maps as interval deltas;
//! - [`flowcache`]: the TC programs' per-CPU flow cache, mapped read-only and merged;
//! - [`btf`], [`kallsyms`]: offsets, drop-reason names and symbols of the running kernel;
//! - [`stale`]: clsact filters a killed vxprobe left behind;
//! - [`caps`]: the capabilities loading needs.

pub mod btf;
pub mod caps;
pub mod flowcache;
pub mod hopstats;
pub mod kallsyms;
pub mod probes;
pub mod stale;
