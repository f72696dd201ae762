//! The node as vxprobe finds it: devices and their roles, network namespaces, device churn,
//! and the device facts (tunnels, routes, MTUs, offload features) that the session and
//! `doctor` both read. Nothing here touches the kernel programs.

pub mod devices;
pub mod facts;
pub mod features;
pub mod netns;
pub mod watch;
