//! The hops' TC programs attached (TCX links, or clsact filters over netlink), first on each
//! device as far as the kernel allows ([`super::tc_order`]), and each device described to
//! them (MTU, link type, counter slot).

use anyhow::Context as _;
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
};
use vxprobe_common::{DeviceInfo, LOW_IFINDEXES, names};

use super::hooks::TcMode;
use super::probes::{Probes, program};
use crate::node::devices::{DeviceKind, Hop};

impl Probes {
    /// Programs and filters that run ahead of vxprobe's on a hop and can end processing
    /// there (found when it was attached).
    pub fn ahead_of(&self, ifindex: u32) -> Vec<crate::kernel::tc_order::Ahead> {
        self.tc_ahead.get(&ifindex).cloned().unwrap_or_default()
    }

    /// Attaches the TC programs at ingress and egress of every hop, after telling them each
    /// device's MTU and link type. A device that vanished since it was listed is skipped with
    /// a note (the device watcher catches up with it); any other failure is an error.
    pub fn attach_tc(&mut self, hops: &[Hop]) -> anyhow::Result<()> {
        for hop in hops {
            if let Err(e) = self.attach_hop(hop) {
                if device_index(&hop.device.name) != Some(hop.device.ifindex) {
                    eprintln!(
                        "vxprobe: {} vanished while vxprobe attached to it",
                        hop.device.name
                    );
                    continue;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Attaches the TC programs at ingress and egress of one hop, all or nothing.
    pub fn attach_hop(&mut self, hop: &Hop) -> anyhow::Result<()> {
        let ifindex = hop.device.ifindex;
        let had_slot = self.hop_slots.get(ifindex).is_some();
        self.set_device_info(hop)?;
        let attached = self.attach_hop_programs(hop);
        if attached.is_err() && !had_slot {
            // Nothing of a device that could not be attached stays behind.
            let _ = self.write_device_info(ifindex, None);
            self.hop_slots.release(ifindex);
        }
        attached
    }

    fn attach_hop_programs(&mut self, hop: &Hop) -> anyhow::Result<()> {
        let ifname = hop.device.name.as_str();
        let ifindex = hop.device.ifindex;
        // aya attaches by name: make sure the name still means this device (a pod's veth can
        // be deleted and its name reused in the time it takes to get here).
        if device_index(ifname) != Some(ifindex) {
            anyhow::bail!("{ifname} (ifindex {ifindex}) is gone");
        }
        if self.tc_mode == TcMode::Clsact {
            match tc::qdisc_add_clsact(ifname) {
                Ok(()) => {}
                // Another tool (or an earlier vxprobe) already added it: share it.
                Err(TcError::AlreadyAttached) => {}
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("adding clsact qdisc to {ifname}"));
                }
            }
        }
        let mut links = Vec::with_capacity(2);
        for (name, attach_type) in [
            (names::TC_INGRESS, TcAttachType::Ingress),
            (names::TC_EGRESS, TcAttachType::Egress),
        ] {
            // Ahead of every program already there (TCX), or of as many filters as the
            // kernel lets a filter precede (clsact: tc_order says how).
            let options = match self.tc_mode {
                TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
                TcMode::Clsact => TcAttachOptions::Netlink(NlOptions {
                    priority: crate::kernel::tc_order::clsact_priority(ifindex, attach_type),
                    ..NlOptions::default()
                }),
            };
            let attached = program::<SchedClassifier>(&mut self.ebpf, name)?
                .attach_with_options(ifname, attach_type, options)
                .with_context(|| {
                    format!(
                        "attaching {name} to {ifname} ({attach_type:?}, {})",
                        self.tc_mode.as_str()
                    )
                });
            match attached {
                Ok(link) => links.push((name, link)),
                Err(e) => {
                    self.detach_links(links);
                    return Err(e);
                }
            }
        }
        self.tc_links.insert(ifindex, links);
        let ours = [names::TC_INGRESS, names::TC_EGRESS].map(|name| {
            program::<SchedClassifier>(&mut self.ebpf, name)
                .ok()
                .and_then(|p| p.info().ok())
                .map(|info| info.id())
        });
        let ahead = crate::kernel::tc_order::ahead(ifname, ifindex, self.tc_mode, ours);
        for a in &ahead {
            eprintln!("vxprobe: {}", a.describe());
        }
        self.tc_ahead.insert(ifindex, ahead);
        Ok(())
    }

    /// Whether a hop's TC programs are attached.
    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.tc_links.contains_key(&ifindex)
    }

    /// Detaches the TC programs from a hop (best effort: its device may be gone already,
    /// which detached them in the kernel) and forgets its device facts. Its counter slot stays
    /// taken until its last interval is reported.
    pub fn detach_hop(&mut self, ifindex: u32) {
        if let Some(links) = self.tc_links.remove(&ifindex) {
            self.detach_links(links);
        }
        self.tc_ahead.remove(&ifindex);
        let _ = self.write_device_info(ifindex, None);
    }

    /// Tells the TC programs a device's MTU and link type (also when its MTU changes).
    pub fn set_device_info(&mut self, hop: &Hop) -> anyhow::Result<()> {
        let l3 = hop.device.kind == DeviceKind::Tun;
        self.describe_device(hop.device.ifindex, hop.device.mtu, l3)
    }

    /// Tells the TC programs about a device by ifindex, giving it a counter slot if it has
    /// none (also for benchmarks and tests that run the programs on crafted packets).
    pub fn describe_device(&mut self, ifindex: u32, mtu: u32, l3: bool) -> anyhow::Result<()> {
        let info = DeviceInfo {
            mtu,
            l3: u32::from(l3),
            slot: self.hop_slots.take(ifindex)?,
            known: 1,
        };
        self.write_device_info(ifindex, Some(info))
    }

    /// Describes a device to the TC programs (`None`: forgets it), in the array or the hash
    /// map, by its ifindex.
    fn write_device_info(&mut self, ifindex: u32, info: Option<DeviceInfo>) -> anyhow::Result<()> {
        let name = if ifindex < LOW_IFINDEXES {
            names::DEVICE_INFO_LOW
        } else {
            names::DEVICE_INFO
        };
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))?;
        if ifindex < LOW_IFINDEXES {
            aya::maps::Array::<_, DeviceInfo>::try_from(map)?
                .set(ifindex, info.unwrap_or_default(), 0)
                .with_context(|| format!("writing {name}"))
        } else {
            let mut devices = aya::maps::HashMap::<_, u32, DeviceInfo>::try_from(map)?;
            match info {
                Some(info) => devices.insert(ifindex, info, 0),
                None => devices.remove(&ifindex),
            }
            .with_context(|| format!("writing {name}"))
        }
    }

    fn detach_links(&mut self, links: Vec<(&'static str, SchedClassifierLinkId)>) {
        for (name, link) in links {
            if let Ok(program) = program::<SchedClassifier>(&mut self.ebpf, name) {
                let _ = program.detach(link);
            }
        }
    }
}

/// The ifindex a device name stands for right now, if any.
pub fn device_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
