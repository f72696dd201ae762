//! Where observations go. Sinks only format or forward what [`crate::observe`] hands them.
//!
//! - [`jsonl`]: the `record` lines;
//! - [`pcap`]: the packets behind anomalies, as pcapng;
//! - [`tui`]: `top`'s terminal UI;
//! - [`metrics`]: the agent's Prometheus metrics.

pub mod files;
pub mod jsonl;
pub mod metrics;
pub mod pcap;
pub mod tui;
