//! The kernel side: the eBPF object loaded and attached, and its maps read.
//!
//! - [`hooks`]: how TC programs attach and which hook a signal uses (the shared choices);
//! - [`probes`]: loading the object; [`tc`]: the hops' TC programs attached; [`ladder`]: the
//!   hook ladder of each kernel-wide signal;
//! - [`hops`], [`flows`]: per-hop and per-flow counters read from the maps as interval
//!   deltas ([`batch`] reads maps whole, [`seen`] keeps what the last read saw);
//! - [`flowcache`]: the TC programs' per-CPU flow cache, mapped read-only and merged;
//! - [`counters`]: flow entries created, the interval epoch, events lost;
//! - [`btf`], [`kallsyms`]: offsets, drop-reason names and symbols of the running kernel;
//!   [`btf_needs`]: what each signal needs of the BTF, so a gap costs only that signal;
//! - [`tc_order`]: what runs ahead of vxprobe's TC programs on a device;
//! - [`stale`]: clsact filters a killed vxprobe left behind;
//! - [`caps`]: the capabilities loading needs.

pub mod batch;
pub mod btf;
pub mod btf_needs;
pub mod caps;
pub mod counters;
pub mod flowcache;
pub mod flows;
pub mod hooks;
pub mod hops;
pub mod kallsyms;
pub mod ladder;
pub mod probes;
pub mod seen;
pub mod stale;
pub mod tc;
pub mod tc_order;
