//! vxprobe: an eBPF datapath observer for Kubernetes nodes.
//!
//! Data flows one way, down the folders:
//! - [`kernel`]: the eBPF programs loaded and attached (the hook ladders), their maps read
//!   (per-hop counters, the flow cache and flow map, the ring buffer), names and offsets from
//!   the running kernel's BTF and symbols;
//! - [`node`]: the node's devices, namespaces and device churn, and the device facts (MTU,
//!   tunnels, offloads) the session and `doctor` both read;
//! - [`observe`]: ring-buffer records decoded and named, then one interval model that
//!   charges every anomaly to its hop and flow once and defines loss; the loop that drives it;
//! - [`sinks`]: JSON lines, pcapng evidence, the terminal UI: they only format what
//!   `observe` hands them;
//! - [`cmd`]: the commands, each wiring a session to its sinks.
//!
//! Imports point down this list. Beside it, [`report`] is the offline pipeline of `vxprobe
//! report`: recordings of several nodes (what the JSON-lines sink wrote) joined into one
//! incident. [`lab`] builds the network-namespace labs of the tests and `demo`.

pub mod cli;
pub mod cmd;
pub mod error;
pub mod fuzz;
pub mod interrupt;
pub mod kernel;
pub mod lab;
pub mod memory;
pub mod node;
pub mod observe;
pub mod report;
pub mod sinks;
