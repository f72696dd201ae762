//! vxprobe: an eBPF datapath observer for Kubernetes nodes.
//!
//! Data flows one way: kernel maps and ring buffer -> decode -> aggregate -> sinks.
//! - [`devices`]: which devices to watch and the role of each (rtnetlink);
//! - [`probes`]: loading and attaching the kernel programs;
//! - [`kbtf`], [`kallsyms`]: names and offsets from the running kernel;
//! - [`hopstats`]: per-hop counters read from the kernel and turned into interval deltas;
//! - [`decode`] -> [`packet`] -> [`anomaly`]: ring-buffer records to typed, named events;
//! - [`output`]: JSON lines; [`pcap`]: pcapng evidence;
//! - [`session`]: one observation (selected hops, attached programs, maps, ring buffer);
//! - [`pipeline`]: the loop from kernel to sinks, shared by `record` and `top`;
//! - [`watch`]: device churn (rtnetlink link notifications) as typed changes for the pipeline;
//! - [`record`]: the `record` command;
//! - [`doctor`]: the `doctor` command: device facts to named misconfigurations;
//! - [`tui`]: the `top` terminal UI, fed typed messages;
//! - [`lab`]: network-namespace topologies for tests and `demo`.

pub mod anomaly;
pub mod btf_needs;
pub mod caps;
pub mod cli;
pub mod decode;
pub mod demo;
pub mod devices;
pub mod distinct;
pub mod doctor;
pub mod error;
pub mod filter;
pub mod flowcache;
pub mod fuzz;
pub mod hopstats;
pub mod kallsyms;
pub mod kbtf;
pub mod lab;
pub mod memory;
pub mod netns;
pub mod output;
pub mod packet;
pub mod pcap;
pub mod pipeline;
pub mod probes;
pub mod probes_cmd;
pub mod record;
pub mod session;
pub mod stale;
pub mod tc_order;
pub mod top;
pub mod tui;
pub mod watch;
