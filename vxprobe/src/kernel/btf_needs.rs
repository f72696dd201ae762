//! What each kernel-wide signal needs from the running kernel's BTF, resolved one item at a
//! time. A missing struct field, enum or tracepoint argument degrades the signal that needs it
//! (said once, in `meta` and `vxprobe probes`) or leaves that one signal unobserved with the
//! reason; it never takes the other signals down with it.
//!
//! Kernels differ in exactly such items: before 5.17 there is no `enum skb_drop_reason` and
//! `skb:kfree_skb` has no `reason` argument; `SKB_NOT_DROPPED_YET` (0) came in 5.19, before it 0
//! was `NOT_SPECIFIED`; `SKB_CONSUMED` came in 6.2, before it 1 was `NOT_SPECIFIED`.

use std::collections::BTreeMap;

use vxprobe_common::{
    KernelOffsets,
    event::{ABSENT, REASONLESS_NOT_SPECIFIED},
};

use crate::kernel::btf::{DropReasons, KernelBtf, KernelBtfError};

/// Signals whose programs read packets (`fill_packet_info`: the skb, its device, the
/// namespace of the device and of the current task).
const PACKET: &[&str] = &["drop", "frag_needed", "rx_csum_fault", "tcp_bad_csum"];
/// Signals whose programs read sockets (`read_sock`).
const SOCKET: &[&str] = &["retransmit", "retransmit_synack"];
/// Signals that need the current task's namespace.
const TASK: &[&str] = &[
    "drop",
    "frag_needed",
    "rx_csum_fault",
    "tcp_bad_csum",
    "send_emsgsize",
];

/// What the kernel programs get, and what it means for each signal.
#[derive(Debug, Clone)]
pub struct KernelFacts {
    pub offsets: KernelOffsets,
    pub reasons: DropReasons,
    /// Signals that cannot be observed here, with the first BTF item each one misses.
    pub unavailable: BTreeMap<&'static str, String>,
    /// Signals observed with less than usual here, and what they lose.
    pub degraded: BTreeMap<&'static str, Vec<String>>,
    /// `skb:kfree_skb` passes the drop reason (5.17+); else the `_noreason` programs run.
    pub kfree_skb_has_reason: bool,
}

struct Resolver<'a> {
    btf: &'a KernelBtf,
    facts: KernelFacts,
}

impl Resolver<'_> {
    /// A field every signal in `users` needs: without it they are unavailable.
    fn need(&mut self, users: &[&'static str], found: Result<u32, KernelBtfError>) -> u32 {
        match found {
            Ok(offset) => offset,
            Err(e) => {
                for signal in users {
                    self.facts
                        .unavailable
                        .entry(signal)
                        .or_insert_with(|| e.to_string());
                }
                0
            }
        }
    }

    /// A field whose absence costs `signal` what `loses` says.
    fn optional(
        &mut self,
        signal: &'static str,
        loses: &str,
        found: Result<u32, KernelBtfError>,
    ) -> Option<u32> {
        match found {
            Ok(offset) => Some(offset),
            Err(e) => {
                self.degrade(signal, format!("{loses} ({e})"));
                None
            }
        }
    }

    fn degrade(&mut self, signal: &'static str, what: String) {
        let notes = self.facts.degraded.entry(signal).or_default();
        if !notes.contains(&what) {
            notes.push(what);
        }
    }

    fn offset(&self, structure: &str, path: &[&str]) -> Result<u32, KernelBtfError> {
        self.btf.offset_of(structure, path)
    }
}

/// Resolves every item the kernel programs need from `btf`, signal by signal.
pub fn resolve(btf: &KernelBtf) -> KernelFacts {
    let mut r = Resolver {
        btf,
        facts: KernelFacts {
            offsets: KernelOffsets::ZERO,
            reasons: DropReasons::default(),
            unavailable: BTreeMap::new(),
            degraded: BTreeMap::new(),
            kfree_skb_has_reason: false,
        },
    };
    let packet_and_task: Vec<&'static str> = PACKET.iter().chain(TASK).copied().collect();
    let with_netns: Vec<&'static str> = packet_and_task.iter().chain(SOCKET).copied().collect();
    let mut o = KernelOffsets::ZERO;
    o.skb_len = r.need(PACKET, r.offset("sk_buff", &["len"]));
    o.skb_dev = r.need(PACKET, r.offset("sk_buff", &["dev"]));
    o.skb_head = r.need(PACKET, r.offset("sk_buff", &["head"]));
    o.skb_tail = r.need(PACKET, r.offset("sk_buff", &["tail"]));
    o.skb_network_header = r.need(PACKET, r.offset("sk_buff", &["network_header"]));
    o.skb_iif = r.need(PACKET, r.offset("sk_buff", &["skb_iif"]));
    o.skb_protocol = r.need(PACKET, r.offset("sk_buff", &["protocol"]));
    o.dev_ifindex = r.need(PACKET, r.offset("net_device", &["ifindex"]));
    o.dev_name = r.need(PACKET, r.offset("net_device", &["name"]));
    o.dev_nd_net = r.need(PACKET, r.offset("net_device", &["nd_net", "net"]));
    o.net_ns_inum = r.need(&with_netns, r.offset("net", &["ns", "inum"]));
    o.task_nsproxy = r.need(TASK, r.offset("task_struct", &["nsproxy"]));
    o.nsproxy_net_ns = r.need(TASK, r.offset("nsproxy", &["net_ns"]));
    o.sk_family = r.need(SOCKET, r.offset("sock_common", &["skc_family"]));
    o.sk_num = r.need(SOCKET, r.offset("sock_common", &["skc_num"]));
    o.sk_dport = r.need(SOCKET, r.offset("sock_common", &["skc_dport"]));
    o.sk_rcv_saddr = r.need(SOCKET, r.offset("sock_common", &["skc_rcv_saddr"]));
    o.sk_daddr = r.need(SOCKET, r.offset("sock_common", &["skc_daddr"]));
    o.sk_net = r.need(SOCKET, r.offset("sock_common", &["skc_net", "net"]));
    o.sk_state = r.need(SOCKET, r.offset("sock_common", &["skc_state"]));
    // Kernels built without IPv6 have no v6 fields: IPv4 sockets still work.
    for (signal, field) in [
        ("retransmit", "skc_v6_rcv_saddr"),
        ("retransmit", "skc_v6_daddr"),
    ] {
        let found = r.offset("sock_common", &[field]);
        let offset = r
            .optional(signal, "IPv6 connections have no addresses", found)
            .unwrap_or(0);
        match field {
            "skc_v6_rcv_saddr" => o.sk_v6_rcv_saddr = offset,
            _ => o.sk_v6_daddr = offset,
        }
    }
    let gso_segs = r
        .offset("sk_buff", &["cb"])
        .and_then(|cb| Ok(cb + r.offset("tcp_skb_cb", &["tcp_gso_segs"])?));
    o.skb_tcp_gso_segs = r.need(&["retransmit"], gso_segs);

    // The device a bound AF_PACKET socket sends to, when a refused send names none: the
    // task's fd table to the socket, then `packet_sock` (af_packet's own BTF when a module).
    let bound_device = bound_device_offsets(btf);
    let bound_device = r.optional(
        "send_emsgsize",
        "refused sends on a bound AF_PACKET socket without a destination name no device",
        bound_device.map(|fields| {
            [
                o.task_files,
                o.files_fdt,
                o.fdt_max_fds,
                o.fdt_fd,
                o.file_private_data,
                o.socket_sk,
                o.packet_ifindex,
            ] = fields;
            fields[6]
        }),
    );
    if bound_device.is_none() {
        // 0 switches the lookup off in the programs.
        o.packet_ifindex = 0;
    }

    // Drop reasons: the enum's names and the values that are not drops.
    let arity = btf.tracepoint_arity("kfree_skb");
    r.facts.kfree_skb_has_reason = arity.as_ref().is_ok_and(|n| *n >= 3);
    match btf.drop_reasons() {
        Ok(reasons) => {
            let value = |name: &str| reasons.value_of(name).unwrap_or(ABSENT);
            o.reason_not_dropped = value("SKB_NOT_DROPPED_YET");
            o.reason_consumed = value("SKB_CONSUMED");
            o.reason_not_specified = reasons
                .value_of("SKB_DROP_REASON_NOT_SPECIFIED")
                .unwrap_or(REASONLESS_NOT_SPECIFIED);
            r.facts.reasons = reasons;
        }
        Err(e) => {
            o.reason_not_dropped = ABSENT;
            o.reason_consumed = ABSENT;
            o.reason_not_specified = REASONLESS_NOT_SPECIFIED;
            r.facts.reasons = DropReasons::reasonless();
            r.degrade(
                "drop",
                format!(
                    "no drop reasons ({e}): drops are NOT_SPECIFIED, told apart by their \
                     location; checksum failures by the packet's checksum state, size drops by \
                     the fragmentation-needed ICMP sent for them (frag_needed's hook)"
                ),
            );
        }
    }
    if !r.facts.kfree_skb_has_reason {
        // The `_noreason` programs tell checksum failures by these bits.
        let bits = ["ip_summed", "csum_valid", "csum_complete_sw"].map(|field| {
            let found = btf.bit_offset_of("sk_buff", field);
            r.optional(
                "drop",
                "bad checksums are NOT_SPECIFIED drops, not csum_error",
                found,
            )
            .unwrap_or(ABSENT)
        });
        [o.skb_ip_summed_bit, o.skb_csum_valid_bit, o.skb_csum_sw_bit] = bits;
    } else {
        [o.skb_ip_summed_bit, o.skb_csum_valid_bit, o.skb_csum_sw_bit] = [ABSENT; 3];
    }
    o.retransmit_has_err = u32::from(
        btf.tracepoint_arity("tcp_retransmit_skb")
            .is_ok_and(|n| n >= 3),
    );
    r.facts.offsets = o;
    r.facts
}

/// task->files->fdt->fd[fd]->private_data (a socket)->sk, then `packet_sock`'s ifindex (and
/// the socket's family, which tells an AF_PACKET one).
fn bound_device_offsets(btf: &KernelBtf) -> Result<[u32; 7], KernelBtfError> {
    btf.offset_of("sock_common", &["skc_family"])?;
    Ok([
        btf.offset_of("task_struct", &["files"])?,
        btf.offset_of("files_struct", &["fdt"])?,
        btf.offset_of("fdtable", &["max_fds"])?,
        btf.offset_of("fdtable", &["fd"])?,
        btf.offset_of("file", &["private_data"])?,
        btf.offset_of("socket", &["sk"])?,
        btf.packet_sock_ifindex()?,
    ])
}

impl KernelFacts {
    /// One line per degraded signal, for stderr and `vxprobe probes`.
    pub fn degradations(&self) -> impl Iterator<Item = String> + '_ {
        self.degraded
            .iter()
            .flat_map(|(signal, notes)| notes.iter().map(move |n| format!("{signal}: {n}")))
    }
}

/// Where a kernel frees a UDP datagram with no reason (5.10; 6.1 too, which names none there)
/// only for a checksum found wrong while copying it to the reader (`csum_copy_err`; the only
/// other free there is a copy fault, EFAULT, from a bad user buffer).
const CSUM_COPY_LOCATIONS: &[&str] = &["udp_recvmsg", "udpv6_recvmsg"];

/// Functions of a kernel without drop reasons whose only free is for one reason:
/// `nf_hook_slow` frees a packet only on a netfilter verdict of NF_DROP.
const ONLY_FREES_FOR: &[(&str, &str)] = &[("nf_hook_slow", "NETFILTER_DROP")];

/// The name of a free the kernel gave no reason for (every free before 5.17, the plain
/// `kfree_skb` ones after; a no-op for other names): a `NOT_SPECIFIED` free where only one
/// reason frees is that reason; `CSUM` (the `_noreason` programs' mark of a checksum the stack
/// found wrong) and a `NOT_SPECIFIED` free where only a checksum failure frees become
/// `UDP_CSUM`, `TCP_CSUM`, `ICMP_CSUM`... after the protocol of the packet's IP header (`ip`:
/// the packet from it, when captured).
pub fn reasonless_name(name: String, location: &str, ip: Option<&[u8]>) -> String {
    if name == "NOT_SPECIFIED"
        && let Some((_, reason)) = ONLY_FREES_FOR.iter().find(|(at, _)| *at == location)
    {
        return (*reason).to_owned();
    }
    // An echo reply no ping socket wanted (root's ping got its copy on a raw socket): 5.10
    // frees it in icmp_rcv, where later kernels say NO_SOCKET in ping_rcv.
    if name == "NOT_SPECIFIED"
        && location == "icmp_rcv"
        && let Some(&[first, ..]) = ip
        && first >> 4 == 4
        && ip.and_then(|p| p.get(9)) == Some(&1)
        && ip.and_then(|p| p.get(usize::from(first & 0x0f) * 4)) == Some(&0)
    {
        return "NO_SOCKET".to_owned();
    }
    let checksum =
        name == "CSUM" || (name == "NOT_SPECIFIED" && CSUM_COPY_LOCATIONS.contains(&location));
    if !checksum {
        return name;
    }
    let protocol = match ip {
        Some([0x40..=0x4f, rest @ ..]) => rest.get(8).copied(),
        Some([0x60..=0x6f, rest @ ..]) => rest.get(5).copied(),
        _ => None,
    };
    match protocol {
        Some(6) => "TCP_CSUM",
        Some(17) => "UDP_CSUM",
        Some(1) => "ICMP_CSUM",
        Some(58) => "ICMP6_CSUM",
        _ if name == "CSUM" => "CSUM",
        _ => "UDP_CSUM",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These read the BTF of the kernel the tests run on: the point is that they are not
    /// baked in.
    fn kernel() -> Option<KernelBtf> {
        let btf = KernelBtf::load().ok();
        if btf.is_none() {
            eprintln!("skipped: no readable {}", crate::kernel::btf::VMLINUX_BTF);
        }
        btf
    }

    #[test]
    fn offsets_resolve_through_anonymous_unions() {
        let Some(btf) = kernel() else { return };
        let facts = resolve(&btf);
        assert!(facts.unavailable.is_empty(), "{:?}", facts.unavailable);
        let offsets = facts.offsets;
        // `dev` sits in a union inside an anonymous struct at the very start of sk_buff, after
        // next/prev; `len` comes later.
        assert_eq!(offsets.skb_dev, 16);
        assert!(offsets.skb_len > offsets.skb_dev);
        assert!(offsets.skb_network_header > offsets.skb_len);
        // skc_daddr is the first field of sock_common.
        assert_eq!(offsets.sk_daddr, 0);
    }

    /// The values that are not drops come from the enum; where it has none, nothing is
    /// skipped (on 6.1 `1` is NOT_SPECIFIED, a drop: no SKB_CONSUMED fallback to it).
    #[test]
    fn not_a_drop_values_come_from_the_kernels_enum() {
        let Some(btf) = kernel() else { return };
        let facts = resolve(&btf);
        let Ok(reasons) = btf.drop_reasons() else {
            assert_eq!(facts.offsets.reason_consumed, ABSENT);
            assert_eq!(facts.offsets.reason_not_dropped, ABSENT);
            return;
        };
        let value = |name| reasons.value_of(name).unwrap_or(ABSENT);
        assert_eq!(facts.offsets.reason_consumed, value("SKB_CONSUMED"));
        assert_eq!(
            facts.offsets.reason_not_dropped,
            value("SKB_NOT_DROPPED_YET")
        );
        let not_specified = value("SKB_DROP_REASON_NOT_SPECIFIED");
        assert_eq!(facts.offsets.reason_not_specified, not_specified);
        assert_ne!(facts.offsets.reason_consumed, not_specified);
        assert_ne!(facts.offsets.reason_not_dropped, not_specified);
    }

    #[test]
    fn reasonless_checksum_failures_are_named_by_protocol() {
        let mut udp = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17];
        udp.resize(28, 0);
        let mut tcp6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        tcp6.resize(60, 0);
        let name = |n: &str, at: &str, ip: Option<&[u8]>| reasonless_name(n.to_owned(), at, ip);
        assert_eq!(name("CSUM", "__udp4_lib_rcv", Some(&udp)), "UDP_CSUM");
        assert_eq!(name("CSUM", "tcp_v6_rcv", Some(&tcp6)), "TCP_CSUM");
        assert_eq!(name("CSUM", "tcp_v6_rcv", None), "CSUM");
        assert_eq!(name("NOT_SPECIFIED", "udp_recvmsg", Some(&udp)), "UDP_CSUM");
        assert_eq!(name("NOT_SPECIFIED", "udp_recvmsg", None), "UDP_CSUM");
        assert_eq!(
            name("NOT_SPECIFIED", "__udp4_lib_rcv", Some(&udp)),
            "NOT_SPECIFIED"
        );
        assert_eq!(
            name("NOT_SPECIFIED", "nf_hook_slow", None),
            "NETFILTER_DROP"
        );
        let mut echo_reply = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1];
        echo_reply.resize(28, 0);
        assert_eq!(
            name("NOT_SPECIFIED", "icmp_rcv", Some(&echo_reply)),
            "NO_SOCKET"
        );
        echo_reply[20] = 8; // an echo request
        assert_eq!(
            name("NOT_SPECIFIED", "icmp_rcv", Some(&echo_reply)),
            "NOT_SPECIFIED"
        );
    }

    #[test]
    fn bitfields_have_bit_offsets() {
        let Some(btf) = kernel() else { return };
        let valid = btf.bit_offset_of("sk_buff", "csum_valid").unwrap();
        let sw = btf.bit_offset_of("sk_buff", "csum_complete_sw").unwrap();
        let summed = btf.bit_offset_of("sk_buff", "ip_summed").unwrap();
        // Neighbours in one group of flag bits, none of them byte-aligned fields.
        assert!(valid.abs_diff(sw) < 16 && summed.abs_diff(valid) < 32);
        assert_eq!(
            btf.bit_offset_of("sk_buff", "len").unwrap(),
            btf.offset_of("sk_buff", &["len"]).unwrap() * 8
        );
    }
}
