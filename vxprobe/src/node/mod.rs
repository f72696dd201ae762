//! The node as vxprobe finds it: devices and their roles, network namespaces, device churn,
//! the device facts (tunnels, routes, MTUs, offload features) that the session and `doctor`
//! both read, and which pod a namespace or a host-side veth belongs to ([`pods`]). Nothing
//! here touches the kernel programs.

pub mod devices;
pub mod facts;
pub mod features;
pub mod netns;
pub mod pods;
pub mod watch;

/// The node's hostname (vxprobe's UTS namespace's), the default node name.
pub fn hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_owned())
}
