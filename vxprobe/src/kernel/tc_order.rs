//! Where vxprobe's TC programs run among the programs and filters already on a hook, and
//! what runs ahead of them. A program or filter ahead of ours that returns a verdict (TCX_PASS
//! or TC_ACT_OK, a drop, a redirect) ends processing there, and vxprobe never sees the packet:
//! behind a CNI's own TC programs its hop counters would read zero and say nothing. So vxprobe
//! goes first, and names whatever it could not go ahead of.
//!
//! - TCX (Linux 6.6+): the link is created `BPF_F_BEFORE` with no anchor, at the head of the
//!   chain, ahead of every program already there. TCX programs also run before every clsact
//!   filter of the device.
//! - clsact: filters run by priority, lowest number first; 1 is the lowest a filter can have (0
//!   asks the kernel to choose). vxprobe takes one less than the lowest priority on the hook.
//!   Where priority 1 is taken, it can still share it with a `bpf` filter of every protocol:
//!   cls_bpf puts a new filter at the head of its group, so ours runs first. Any other filter
//!   at 1 (u32, matchall, flower, or a `bpf` one of a single protocol, which the kernel will
//!   not group with ours) stays ahead, and is named. On an empty hook the kernel chooses
//!   (49152), as before. And on 6.6+ every TCX program of the device runs before any filter.
//!
//! What is found when a hop is attached goes into `meta` (each hop's `ahead`), the `device`
//! line of a hop attached later, a line on stderr, and `vxprobe probes`.

use std::io;

use aya::programs::{SchedClassifier, TcAttachType};
use rtnetlink::{
    packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};
use serde::Serialize;

use crate::{kernel::probes::TcMode, kernel::stale::TC_PROGRAM_PREFIX};

/// `ETH_P_ALL`: a filter of every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// A program or filter that runs ahead of vxprobe's on a hook and can end processing there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ahead {
    pub ifname: String,
    /// `ingress` or `egress`.
    pub dir: &'static str,
    /// `tcx` (a TCX link) or `clsact` (a filter).
    pub attach: &'static str,
    /// The classifier (`u32`, `matchall`, `flower`, `bpf`...); `bpf` for a TCX program.
    pub kind: String,
    /// A filter's priority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prio: Option<u16>,
    /// A filter's protocol (ETH_P_*), when not every protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u16>,
    /// A BPF program's name and id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prog_id: Option<u32>,
    /// A BPF filter in direct-action mode (its return value is the verdict).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub direct_action: bool,
}

impl Ahead {
    /// One line for stderr: what it is, and what it costs.
    pub fn describe(&self) -> String {
        let mut what = format!("{} {} {}", self.ifname, self.dir, self.attach);
        if self.attach == "tcx" {
            what += " program";
        } else {
            what += &format!(" {} filter", self.kind);
            if self.direct_action {
                what += " (direct-action)";
            }
        }
        if let Some(prio) = self.prio {
            what += &format!(" prio {prio}");
        }
        if let Some(protocol) = self.protocol {
            what += &format!(" protocol 0x{protocol:04x}");
        }
        if let Some(program) = &self.program {
            what += &format!(" {program}");
        }
        if let Some(id) = self.prog_id {
            what += &format!(" id {id}");
        }
        format!(
            "{what} runs before vxprobe's program and can end processing: packets it passes, \
             drops or redirects are not counted at this hop"
        )
    }
}

/// One entry of a clsact hook's filter dump, in the kernel's order (the order they run in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub prio: u16,
    /// ETH_P_* in host order.
    pub protocol: u16,
    pub kind: String,
    /// 0 for the message that stands for a whole group (one priority and protocol).
    pub handle: u32,
    /// A BPF filter's program name and id, and whether it is direct-action.
    pub bpf: Option<(String, u32, bool)>,
}

impl Filter {
    fn is_vxprobe(&self) -> bool {
        self.bpf
            .as_ref()
            .is_some_and(|(name, _, _)| name.starts_with(TC_PROGRAM_PREFIX))
    }
}

/// The priority for vxprobe's filter on a hook with `filters`: 0 (the kernel chooses) on an
/// empty hook; else one less than the lowest; else the lowest one it can share (a `bpf` group
/// of every protocol) or that is free.
pub fn plan_priority(filters: &[Filter]) -> u16 {
    let Some(lowest) = filters.iter().map(|f| f.prio).min() else {
        return 0;
    };
    if lowest > 1 {
        return lowest - 1;
    }
    (1..=u16::MAX)
        .find(|&prio| {
            filters
                .iter()
                .filter(|f| f.prio == prio)
                .all(|f| f.kind == "bpf" && f.protocol == ETH_P_ALL)
        })
        .unwrap_or(0)
}

/// The filters that run before the one whose program is `ours` (vxprobe's own excepted): the
/// entries before it in the kernel's order. Without `ours`, those that would run before a
/// filter added at `prio` (at the head of a group it shares).
pub fn filters_ahead(filters: &[Filter], ours: Option<u32>, prio: u16) -> Vec<&Filter> {
    let end = match ours {
        Some(id) => filters
            .iter()
            .position(|f| f.bpf.as_ref().is_some_and(|(_, fid, _)| *fid == id))
            .unwrap_or(filters.len()),
        None if prio == 0 => filters
            .iter()
            .position(|f| u32::from(f.prio) << 16 >= 0x8000_0000)
            .unwrap_or(filters.len()),
        None => filters
            .iter()
            .position(|f| f.prio >= prio)
            .unwrap_or(filters.len()),
    };
    let mut ahead: Vec<&Filter> = Vec::new();
    for f in &filters[..end] {
        if f.is_vxprobe() {
            continue;
        }
        // One entry per BPF program, one per group for other classifiers (their dump has a
        // message per group, hash table and node).
        let seen = ahead.iter().any(|a| {
            a.bpf.is_none() && f.bpf.is_none() && (a.prio, a.protocol) == (f.prio, f.protocol)
        });
        if f.kind == "bpf" && f.bpf.is_none() {
            continue; // the group's own message: its programs follow
        }
        if !seen {
            ahead.push(f);
        }
    }
    ahead
}

fn dir_name(attach_type: TcAttachType) -> &'static str {
    match attach_type {
        TcAttachType::Egress => "egress",
        _ => "ingress",
    }
}

/// The priority vxprobe's filter gets on a hook (0: the kernel chooses). A hook that cannot be
/// read gets 0, the kernel's choice, as before.
pub fn clsact_priority(ifindex: u32, attach_type: TcAttachType) -> u16 {
    match dump_filters(ifindex, attach_type == TcAttachType::Ingress) {
        Ok(filters) => plan_priority(&filters),
        Err(_) => 0,
    }
}

/// What runs ahead of vxprobe's program on a device's two hooks, found after attaching
/// (`ours`: our programs' ids, ingress then egress) or, for `vxprobe probes`, where it would
/// attach.
pub fn ahead(ifname: &str, ifindex: u32, mode: TcMode, ours: [Option<u32>; 2]) -> Vec<Ahead> {
    let mut found = Vec::new();
    for (attach_type, ours) in [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .zip(ours)
    {
        let dir = dir_name(attach_type);
        // TCX programs run before every filter: ahead of ours unless ours is one of them and
        // comes first.
        if let Ok((_, programs)) = SchedClassifier::query_tcx(ifname, attach_type) {
            let ids: Vec<(u32, String)> = programs
                .iter()
                .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_owned()))
                .collect();
            let end = match (mode, ours) {
                (TcMode::Tcx, Some(id)) => ids.iter().position(|(pid, _)| *pid == id),
                // Not attached yet: it goes to the head.
                (TcMode::Tcx, None) => Some(0),
                (TcMode::Clsact, _) => None,
            }
            .unwrap_or(ids.len());
            for (id, name) in &ids[..end] {
                if name.starts_with(TC_PROGRAM_PREFIX) {
                    continue;
                }
                found.push(Ahead {
                    ifname: ifname.to_owned(),
                    dir,
                    attach: "tcx",
                    kind: "bpf".to_owned(),
                    prio: None,
                    protocol: None,
                    program: Some(name.clone()),
                    prog_id: Some(*id),
                    direct_action: false,
                });
            }
        }
        if mode == TcMode::Tcx {
            continue; // clsact filters run after every TCX program
        }
        let Ok(filters) = dump_filters(ifindex, attach_type == TcAttachType::Ingress) else {
            continue;
        };
        let prio = plan_priority(&filters);
        for f in filters_ahead(&filters, ours, prio) {
            found.push(Ahead {
                ifname: ifname.to_owned(),
                dir,
                attach: "clsact",
                kind: f.kind.clone(),
                prio: Some(f.prio),
                protocol: (f.protocol != ETH_P_ALL).then_some(f.protocol),
                program: f.bpf.as_ref().map(|(name, _, _)| name.clone()),
                prog_id: f.bpf.as_ref().map(|(_, id, _)| *id),
                direct_action: f.bpf.as_ref().is_some_and(|(_, _, da)| *da),
            });
        }
    }
    found
}

/// The filters of a clsact hook in the kernel's order, over a netlink socket of this thread's
/// namespace (synchronous: attaching is). A device without clsact has none.
pub fn dump_filters(ifindex: u32, ingress: bool) -> io::Result<Vec<Filter>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = TcHandle {
        major: 0xffff,
        minor: if ingress {
            TcHandle::MIN_INGRESS
        } else {
            TcHandle::MIN_EGRESS
        },
    };
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut filters = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        if data.is_empty() {
            return Ok(filters);
        }
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(filters),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        // No clsact qdisc on the device (EINVAL), or the device went.
                        Some(code) if [libc::EINVAL, libc::ENODEV].contains(&-code.get()) => {
                            Ok(Vec::new())
                        }
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        None => Ok(filters),
                    };
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(msg)) => {
                    filters.push(filter_of(&msg));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len.next_multiple_of(4);
        }
    }
}

fn filter_of(msg: &TcMessage) -> Filter {
    let mut filter = Filter {
        prio: (msg.header.info >> 16) as u16,
        protocol: u16::from_be((msg.header.info & 0xffff) as u16),
        kind: String::new(),
        handle: msg.header.handle.into(),
        bpf: None,
    };
    let (mut name, mut id, mut direct) = (None, None, false);
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(kind) => filter.kind = kind.clone(),
            TcAttribute::Options(options) => {
                for option in options {
                    match option {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                        TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                        TcOption::Bpf(TcFilterBpfOption::Flags(flags)) => {
                            direct = flags.contains(TcBpfFlags::DirectAction);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(id) = id {
        filter.bpf = Some((name.unwrap_or_default(), id, direct));
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(prio: u16, kind: &str, protocol: u16, bpf: Option<(&str, u32)>) -> Filter {
        Filter {
            prio,
            protocol,
            kind: kind.to_owned(),
            handle: u32::from(bpf.is_some()),
            bpf: bpf.map(|(n, id)| (n.to_owned(), id, true)),
        }
    }

    #[test]
    fn vxprobe_goes_one_below_the_lowest_priority() {
        assert_eq!(
            plan_priority(&[]),
            0,
            "the kernel's choice on an empty hook"
        );
        let hook = [
            filter(20, "u32", ETH_P_ALL, None),
            filter(30, "bpf", 0x0800, Some(("other", 7))),
        ];
        assert_eq!(plan_priority(&hook), 19);
        assert!(filters_ahead(&hook, None, 19).is_empty());
    }

    #[test]
    fn priority_one_is_shared_with_a_bpf_group_of_every_protocol_or_left_ahead() {
        let cilium_like = [
            filter(1, "bpf", ETH_P_ALL, None),
            filter(1, "bpf", ETH_P_ALL, Some(("cil_from_container", 9))),
        ];
        assert_eq!(plan_priority(&cilium_like), 1);
        assert!(filters_ahead(&cilium_like, None, 1).is_empty());
        // Where ours went to the head of the group, nothing is ahead of it.
        let after = [
            filter(1, "bpf", ETH_P_ALL, None),
            filter(1, "bpf", ETH_P_ALL, Some(("vxprobe_tc_ingress", 11))),
            filter(1, "bpf", ETH_P_ALL, Some(("cil_from_container", 9))),
        ];
        assert!(filters_ahead(&after, Some(11), 1).is_empty());

        let u32_first = [
            filter(1, "u32", ETH_P_ALL, None),
            filter(1, "u32", ETH_P_ALL, None),
            filter(3, "bpf", 0x0800, Some(("ipv4_only", 4))),
        ];
        assert_eq!(plan_priority(&u32_first), 2);
        let ahead = filters_ahead(&u32_first, None, 2);
        assert_eq!(ahead.len(), 1, "one per group: {ahead:?}");
        assert_eq!((ahead[0].prio, ahead[0].kind.as_str()), (1, "u32"));

        let ipv4_bpf = [filter(1, "bpf", 0x0800, Some(("ipv4_only", 4)))];
        assert_eq!(
            plan_priority(&ipv4_bpf),
            2,
            "a single-protocol group is not shared"
        );
        let ahead = filters_ahead(&ipv4_bpf, Some(12), 2);
        assert_eq!(ahead[0].bpf.as_ref().unwrap().1, 4);
    }

    #[test]
    fn other_vxprobes_are_never_ahead() {
        let hook = [filter(5, "bpf", ETH_P_ALL, Some(("vxprobe_tc_ingr", 3)))];
        assert_eq!(plan_priority(&hook), 4);
        assert!(filters_ahead(&hook, Some(99), 6).is_empty());
    }
}
