//! vxprobe: an eBPF datapath observer for Kubernetes nodes.
//!
//! Data flows one way: kernel maps and ring buffer -> decode -> aggregate -> sinks.
//! - [`devices`]: which devices to watch and the role of each (rtnetlink);
//! - [`probes`]: loading and attaching the kernel programs;
//! - [`hopstats`]: per-hop counters read from the kernel and turned into interval deltas;
//! - [`output`]: JSON lines;
//! - [`record`]: the `record` command that ties them together;
//! - [`lab`]: network-namespace topologies for tests and `demo`.

pub mod caps;
pub mod cli;
pub mod devices;
pub mod error;
pub mod hopstats;
pub mod lab;
pub mod output;
pub mod probes;
pub mod record;
