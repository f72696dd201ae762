//! The judgments vxprobe makes from the counts, each defined once: what loss means at a hop
//! and along a flow's path, the order of a node's hops on a packet's way, where a path loses
//! packets, which hop loses most, and the signature of a tunnel's offloads being off. Sinks
//! show what these decide.

use std::cmp::Reverse;

use vxprobe_common::{Direction, HopKey};

use crate::node::{devices::Role, features::Offload};

/// The share of a hop's packets that died there, in percent (two decimals). At ingress the TC
/// program counts a packet before the stack can drop it, so drops are part of `packets`; at
/// egress the stack drops before TC sees the packet, so they come on top.
pub fn hop_loss_pct(dir: Direction, packets: u64, drops: u64) -> f64 {
    let (lost, total) = match dir {
        Direction::Ingress => (drops.min(packets), packets),
        Direction::Egress => (drops, packets.saturating_add(drops)),
    };
    percent(lost, total)
}

/// The share of a flow's packets that died anywhere on its path, in percent: `dropped` of
/// the packets it `sent` (counted at the first hop it crossed). Packets that died before any
/// hop counted them (a refused send, a drop in the sender's namespace) were sent too, so a
/// flow all of whose packets died reads 100%, never more.
pub fn flow_loss_pct(sent: u64, dropped: u64) -> f64 {
    percent(dropped, sent.max(dropped))
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64 * 100.0).round() / 100.0
    }
}

/// Where a hop comes on a packet's way through the node: in from the wire (underlay, then
/// tunnel), to the local ends (pods, taps), out to the wire (tunnel, then underlay). Outbound
/// `cali0 ingress -> vxlan.calico egress -> eth0 egress` and inbound `eth0 ingress ->
/// vxlan.calico ingress -> cali0 egress` both sort in order.
pub fn path_rank(role: Role, dir: Direction) -> u8 {
    let outer = match role {
        Role::Physical | Role::Underlay => 0,
        Role::Overlay => 1,
        Role::Pod | Role::Tap | Role::Other => 2,
    };
    match dir {
        Direction::Ingress => outer,
        Direction::Egress => 5 - outer,
    }
}

/// A flow's counts at one hop of its path, or over the whole path ([`path_totals`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathCounts {
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
    pub csum_errors: u64,
    pub oversize: u64,
    pub fragments: u64,
    pub retransmits: u64,
}

impl PathCounts {
    /// Adds `other` (saturating: a bogus count from the feed must not bring the UI down).
    pub fn add(&mut self, other: &PathCounts) {
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.packets, other.packets);
        add(&mut self.bytes, other.bytes);
        add(&mut self.drops, other.drops);
        add(&mut self.csum_errors, other.csum_errors);
        add(&mut self.oversize, other.oversize);
        add(&mut self.fragments, other.fragments);
        add(&mut self.retransmits, other.retransmits);
    }

    /// Drops (checksum errors and oversize included), retransmits and fragments: what makes a
    /// flow worth looking at.
    pub fn trouble(&self) -> u64 {
        self.drops
            .saturating_add(self.retransmits)
            .saturating_add(self.fragments)
    }
}

/// A flow's counts over its path, from its counts at each hop in path order: packets and bytes
/// as it sent them (at its first hop); fragments and packets over the MTU as many as the hop
/// that saw most (one packet is seen at several hops); faults added up (each anomaly was
/// charged to one hop).
pub fn path_totals(hops: &[PathCounts]) -> PathCounts {
    let mut total = PathCounts::default();
    if let Some(first) = hops.first() {
        total.packets = first.packets;
        total.bytes = first.bytes;
    }
    for hop in hops {
        total.fragments = total.fragments.max(hop.fragments);
        total.oversize = total.oversize.max(hop.oversize);
        total.drops = total.drops.saturating_add(hop.drops);
        total.csum_errors = total.csum_errors.saturating_add(hop.csum_errors);
        total.retransmits = total.retransmits.saturating_add(hop.retransmits);
    }
    total
}

/// The hop of a flow's path where it loses packets, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathVerdict {
    /// No drop and no hop where the bytes fall.
    Clean,
    /// Drops counted at this hop (index into the path).
    DropsAt(usize),
    /// No drop counted, but this hop saw far fewer bytes than the one before it.
    VanishesBefore(usize),
    /// Packets died beyond the path's hops (in a pod's namespace, at a socket, before any
    /// hop saw them): this many.
    DropsElsewhere(u64),
}

/// Where a path loses packets: the hop with the most drops (the first of equals); else, when
/// the flow lost packets elsewhere (`flow_drops` is all of its drops), there; else the first
/// hop that saw less than 80% of the bytes of the one before it (bytes grow by tunnel headers
/// and shrink by nothing else on a healthy path). `hops`: (drops, bytes) of each hop in path
/// order.
pub fn path_verdict(hops: &[(u64, u64)], flow_drops: u64) -> PathVerdict {
    let worst = hops
        .iter()
        .enumerate()
        .filter(|(_, (drops, _))| *drops > 0)
        .max_by_key(|(at, (drops, _))| (*drops, Reverse(*at)));
    if let Some((at, _)) = worst {
        return PathVerdict::DropsAt(at);
    }
    if flow_drops > 0 {
        return PathVerdict::DropsElsewhere(flow_drops);
    }
    hops.windows(2)
        .position(|w| u128::from(w[1].1) * 5 < u128::from(w[0].1) * 4)
        .map_or(PathVerdict::Clean, |at| PathVerdict::VanishesBefore(at + 1))
}

/// What the judgments over an interval's hops read of each hop: a
/// [`super::report::HopReport`] has it, and so has whatever stands in for one (the TUI's
/// scenario).
pub trait HopView {
    fn key(&self) -> HopKey;
    fn ifname(&self) -> &str;
    fn role(&self) -> Role;
    fn mtu(&self) -> u32;
    fn packets(&self) -> u64;
    fn bytes(&self) -> u64;
    fn segs(&self) -> u64;
    /// The interval's largest packet; 0 when not measured.
    fn max_len(&self) -> u64;
    fn drops(&self) -> u64;
    fn loss_pct(&self) -> f64;
    fn dir(&self) -> Direction {
        Direction::try_from(self.key().direction).unwrap_or(Direction::Ingress)
    }
}

/// The hop that lost most in an interval: the most drops, then the highest loss.
pub fn worst_hop<H: HopView>(hops: &[H]) -> Option<HopKey> {
    hops.iter()
        .filter(|h| h.drops() > 0)
        .max_by(|a, b| {
            (a.drops(), a.loss_pct())
                .partial_cmp(&(b.drops(), b.loss_pct()))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(HopView::key)
}

/// The signature of segmentation/checksum offload being off on a tunnel device: it (or its
/// underlay) transmits MTU-sized packets while a pod veth carries GSO super-packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffloadHint {
    /// The hop sending MTU-sized packets: the tunnel device, or its underlay.
    pub small: HopKey,
    pub small_ifname: String,
    /// Its packet size, and how it was measured (`largest` or `mean`).
    pub small_size: u64,
    pub measure: &'static str,
    pub pod: HopKey,
    pub pod_ifname: String,
    pub pod_size: u64,
    /// The likely cause, e.g. `TX checksum and TSO off on vxlan.calico`.
    pub cause: String,
}

/// A pod hop whose packets are at least this big carries GSO super-packets.
const GSO_SIZE: u64 = 16 * 1024;
/// Hops with fewer packets are too few to judge sizes by.
const MIN_PACKETS_FOR_SIZE: u64 = 10;

/// The size a hop's packets are judged by: the interval's largest packet where the TC
/// programs measured it, else the mean segment.
fn size_signal<H: HopView>(hop: &H) -> Option<(u64, &'static str)> {
    if hop.max_len() > 0 {
        return Some((hop.max_len(), "largest"));
    }
    let per = if hop.segs() > 0 {
        hop.segs()
    } else {
        hop.packets()
    };
    hop.bytes().checked_div(per).map(|m| (m, "mean"))
}

/// Finds the offload-off signature in an interval's hops (see [`OffloadHint`]); `offloads`
/// gives a device's features by ifindex, to name the cause.
///
/// At a TC egress hook a packet is seen before the device's own software segmentation, so
/// with TSO off on the tunnel the small packets may show only on the tunnel's underlay: a
/// small underlay egress counts too, charged to the tunnel device.
pub fn offload_hint<H: HopView>(
    hops: &[H],
    offloads: impl Fn(u32) -> Option<Offload>,
) -> Option<OffloadHint> {
    let (pod, (pod_size, _)) = hops
        .iter()
        .filter(|h| h.role() == Role::Pod && h.packets() >= MIN_PACKETS_FOR_SIZE)
        .filter_map(|h| size_signal(h).map(|s| (h, s)))
        .filter(|(_, (size, _))| *size >= GSO_SIZE)
        .max_by_key(|(h, _)| h.bytes())?;
    // The small packets must carry most of the pod's bytes, or they are other traffic.
    let small_egress = |role: Role| {
        hops.iter()
            .filter(|h| {
                h.role() == role
                    && h.dir() == Direction::Egress
                    && h.packets() >= MIN_PACKETS_FOR_SIZE
                    && u128::from(h.bytes()) * 2 >= u128::from(pod.bytes())
            })
            .filter_map(|h| size_signal(h).map(|s| (h, s)))
            .filter(|(h, (size, _))| *size <= u64::from(h.mtu()) + 64)
            .max_by_key(|(h, _)| h.bytes())
    };
    let (small, (small_size, measure)) =
        small_egress(Role::Overlay).or_else(|| small_egress(Role::Underlay))?;
    // The tunnel device: the small hop itself, or the busiest overlay egress above it.
    let tunnel = if small.role() == Role::Overlay {
        Some(small)
    } else {
        hops.iter()
            .filter(|h| h.role() == Role::Overlay && h.dir() == Direction::Egress)
            .max_by_key(|h| h.bytes())
    };
    let off: Vec<&str> = match tunnel.and_then(|t| offloads(t.key().ifindex)) {
        Some(o) => [
            (!o.tx_csum, "TX checksum"),
            (!o.tso, "TSO"),
            (!o.gso, "GSO"),
        ]
        .into_iter()
        .filter_map(|(off, name)| off.then_some(name))
        .collect(),
        None => Vec::new(),
    };
    let cause = match (tunnel, off.is_empty()) {
        (Some(t), false) => format!("{} off on {}", off.join(" and "), t.ifname()),
        (Some(t), true) => format!("segmentation offload looks off on {}", t.ifname()),
        (None, _) => format!("segmented in software before {}", small.ifname()),
    };
    Some(OffloadHint {
        small: small.key(),
        small_ifname: small.ifname().to_owned(),
        small_size,
        measure,
        pod: pod.key(),
        pod_ifname: pod.ifname().to_owned(),
        pod_size,
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_at_a_hop_counts_by_direction() {
        // Ingress: TC counted the packets the stack then dropped.
        assert_eq!(hop_loss_pct(Direction::Ingress, 100, 10), 10.0);
        assert_eq!(hop_loss_pct(Direction::Ingress, 5, 10), 100.0);
        // Egress: the stack dropped them before TC saw them.
        assert_eq!(hop_loss_pct(Direction::Egress, 90, 10), 10.0);
        assert_eq!(hop_loss_pct(Direction::Egress, 0, 5), 100.0);
        assert_eq!(hop_loss_pct(Direction::Egress, 0, 0), 0.0);
        assert_eq!(hop_loss_pct(Direction::Ingress, 3, 1), 33.33);
    }

    #[test]
    fn a_flow_all_of_whose_packets_died_lost_everything() {
        // 50 datagrams counted at the node's hops, all dropped at the receiver.
        assert_eq!(flow_loss_pct(50, 50), 100.0);
        // Refused before any hop counted them.
        assert_eq!(flow_loss_pct(0, 7), 100.0);
        assert_eq!(flow_loss_pct(10, 1), 10.0);
        assert_eq!(flow_loss_pct(0, 0), 0.0);
    }

    #[test]
    fn paths_lose_where_drops_are_or_where_bytes_fall() {
        assert_eq!(path_verdict(&[], 0), PathVerdict::Clean);
        assert_eq!(
            path_verdict(&[(0, 1000), (0, 1050), (0, 1050)], 0),
            PathVerdict::Clean
        );
        assert_eq!(
            path_verdict(&[(0, 1000), (3, 900), (3, 900)], 6),
            PathVerdict::DropsAt(1)
        );
        assert_eq!(
            path_verdict(&[(0, 1000), (0, 500), (0, 500)], 0),
            PathVerdict::VanishesBefore(1)
        );
        // 50 datagrams crossed the node whole, then died of bad checksums in the receiving
        // pod: they are lost beyond these hops, not at the first of them.
        assert_eq!(
            path_verdict(&[(0, 1000), (0, 1050)], 50),
            PathVerdict::DropsElsewhere(50)
        );
    }

    #[test]
    fn a_paths_totals_count_each_packet_once() {
        let hop = |packets, fragments, drops| PathCounts {
            packets,
            bytes: packets * 100,
            fragments,
            drops,
            ..PathCounts::default()
        };
        // Three fragments seen at the three hops of a node: three fragments, not nine.
        let total = path_totals(&[hop(3, 3, 0), hop(3, 3, 1), hop(2, 3, 0)]);
        assert_eq!(
            (total.packets, total.bytes, total.fragments, total.drops),
            (3, 300, 3, 1)
        );
    }

    #[test]
    fn hops_sort_along_a_packets_way() {
        let out = [
            (Role::Pod, Direction::Ingress),
            (Role::Overlay, Direction::Egress),
            (Role::Underlay, Direction::Egress),
        ];
        let into = [
            (Role::Underlay, Direction::Ingress),
            (Role::Overlay, Direction::Ingress),
            (Role::Pod, Direction::Egress),
        ];
        for path in [out, into] {
            let ranks: Vec<u8> = path.iter().map(|(r, d)| path_rank(*r, *d)).collect();
            assert!(ranks.is_sorted(), "{path:?}: {ranks:?}");
        }
    }
}
