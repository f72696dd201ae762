//! TC classifiers: the per-hop view of the datapath. Attached at ingress and egress of every
//! selected device; they count per hop and per flow (inner flow for tunnel traffic), report
//! fragments and oversized packets, and always hand the packet on unchanged.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use vxprobe_common::{
    DeviceInfo, Direction, EventKind, FlowCounters, FlowFilter, FlowKey, FragInfo, FragKey,
    HopCounters, HopEvent, LOW_IFINDEXES, MAX_DEVICES, MAX_HOPS, OuterHeader, SNAP_LEN, hop_index,
};

use crate::{
    events,
    flows::{self, clean},
    parse::{self, Ip, Packet, Spill, addr_bytes, addr_words},
};

/// Per hop, at [`hop_index`]: user space gives each device a slot.
#[map]
static HOP_STATS: PerCpuArray<HopCounters> = PerCpuArray::with_max_entries(MAX_HOPS, 0);

/// What the first fragment of a packet told, for the fragments after it.
#[map]
static FRAGMENTS: LruHashMap<FragKey, FragInfo> = LruHashMap::with_max_entries(8192, 0);

/// MTU, link type and counter slot per ifindex, filled in by user space before it attaches:
/// here for ifindexes from [`LOW_IFINDEXES`] on,
#[map]
static DEVICE_INFO: HashMap<u32, DeviceInfo> = HashMap::with_max_entries(MAX_DEVICES, 0);

/// ... here, at their ifindex, below it.
#[map]
static DEVICE_INFO_LOW: Array<DeviceInfo> = Array::with_max_entries(LOW_IFINDEXES, 0);

/// The stats interval number, bumped by user space: per-interval maxima restart with it.
#[map]
static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// `--host/--port/--proto`, set at load time.
#[unsafe(no_mangle)]
static FILTER: FlowFilter = FlowFilter::NONE;

/// TC_ACT_UNSPEC (TCX_NEXT on TCX): "no verdict", so the next program on the hook (Cilium's,
/// Calico's) still runs and decides. An observer never ends classification.
const PASS_ON: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn vxprobe_tc_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Ingress);
    PASS_ON
}

#[classifier]
pub fn vxprobe_tc_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Egress);
    PASS_ON
}

/// Per-CPU working memory for one program run (the BPF stack is 512 bytes).
struct Scratch {
    packet: Packet,
    spill: Spill,
    frag: FragInfo,
    flow: FlowCounters,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn observe(ctx: &TcContext, direction: Direction) {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed to this program; these are plain
    // fields of the context, readable by every TC program.
    let (ifindex, gso_segs) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).gso_segs) };
    let len = ctx.len();
    let known = device_info(ifindex);
    // A device user space has let go of (its programs are being detached): flows only.
    let device = known.unwrap_or_default();
    let hop = known.map(|d| hop_index(d.slot, direction));
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; programs on one CPU do not preempt each other, so no
    // one else uses it during this run.
    let scratch = unsafe { &mut *scratch };
    let is_ip = parse::packet(ctx, device.l3 != 0, &mut scratch.packet, &mut scratch.spill);
    let filter = filter();
    if filter.flags != 0 && !(is_ip && matches(&filter, &scratch.packet)) {
        return;
    }

    let segs = u64::from(gso_segs.max(1));
    let link_header = if device.l3 != 0 { 0 } else { 14 };
    let oversize = is_ip && gso_segs <= 1 && device.mtu != 0 && len > device.mtu + link_header;
    let fragment = is_ip && is_fragment(&scratch.packet);
    // Every field from a value computed above: LLVM merges runs of constant zero stores into
    // memset calls, which the BPF target turns into a byte-by-byte loop.
    let sample = HopCounters {
        packets: 1,
        bytes: u64::from(len),
        segs,
        fragments: u64::from(fragment),
        oversize: u64::from(oversize),
        max_len: len,
        max_epoch: EPOCH.get(0).copied().unwrap_or(0),
    };
    if !is_ip {
        count_hop(hop, &sample);
        return;
    }
    if fragment {
        let ip = fragment_of(&scratch.packet);
        remember_or_recall(&ip, &mut scratch.packet, &mut scratch.frag);
    }
    let packet = &scratch.packet;
    count_hop(hop, &sample);

    let key = flow_key(ifindex, direction as u8, &packet.flow);
    flows::count(&key, &sample, &packet.outer, &mut scratch.flow);

    if fragment || oversize {
        let kind = if oversize {
            EventKind::HopOversize
        } else {
            EventKind::Fragment
        };
        let frag = if fragment {
            fragment_of(packet)
        } else {
            packet.flow
        };
        report(
            ctx,
            kind,
            &key,
            &packet.outer,
            len,
            device.mtu,
            gso_segs,
            &frag,
        );
    }
}

/// `flow`'s key at the hop of `ifindex` and `direction`.
#[inline(always)]
fn flow_key(ifindex: u32, direction: u8, flow: &Ip) -> FlowKey {
    FlowKey {
        ifindex,
        direction,
        proto: flow.proto,
        family: flow.family,
        _pad: 0,
        sport: flow.sport,
        dport: flow.dport,
        src: addr_bytes(&flow.src),
        dst: addr_bytes(&flow.dst),
    }
}

/// What user space said about the device, if it described it.
#[inline(always)]
fn device_info(ifindex: u32) -> Option<DeviceInfo> {
    if ifindex < LOW_IFINDEXES {
        return DEVICE_INFO_LOW
            .get(ifindex)
            .copied()
            .filter(|d| d.known != 0);
    }
    // SAFETY: a lookup in a map only user space writes; the value is copied out at once.
    unsafe { DEVICE_INFO.get(&ifindex) }.copied()
}

#[inline(always)]
fn filter() -> FlowFilter {
    // SAFETY: a plain read of a static; volatile so the compiler cannot fold the placeholder.
    unsafe { core::ptr::read_volatile(&FILTER) }
}

#[inline(always)]
fn matches(filter: &FlowFilter, p: &Packet) -> bool {
    let outer = &p.outer;
    let tunneled = outer.family != 0;
    if filter.flags & FlowFilter::HOST != 0 {
        let host = &filter.host;
        let words = addr_words(host);
        let inner = p.flow.src == words || p.flow.dst == words;
        let outer_hit = tunneled && (outer.src == *host || outer.dst == *host);
        if !(inner || outer_hit) {
            return false;
        }
    }
    if filter.flags & FlowFilter::PORT != 0 {
        let port = filter.port;
        let inner = p.flow.sport == port || p.flow.dport == port;
        let outer_hit = tunneled && (outer.sport == port || outer.dport == port);
        if !(inner || outer_hit) {
            return false;
        }
    }
    if filter.flags & FlowFilter::PROTO != 0 && p.flow.proto != filter.proto {
        return false;
    }
    true
}

/// Whether the packet is an IP fragment: its outer header (tunnel packets split on the
/// underlay) or the flow's own.
#[inline(always)]
fn is_fragment(packet: &Packet) -> bool {
    is_outer_fragment(packet) || packet.flow.is_fragment()
}

/// Whether the fragmented header is a tunnel packet's outer one (split on the underlay).
#[inline(always)]
fn is_outer_fragment(packet: &Packet) -> bool {
    packet.outer_ip.family != 0 && packet.outer_ip.is_fragment()
}

/// The IP header that is fragmented (of a packet [`is_fragment`] said is one).
#[inline(always)]
fn fragment_of(packet: &Packet) -> Ip {
    if is_outer_fragment(packet) {
        packet.outer_ip
    } else {
        packet.flow
    }
}

/// First fragments record their flow; later ones (no transport header) take it back. The
/// tunnel header is recorded only when the tunnel's own outer header is the fragmented one:
/// a later outer fragment carries no UDP header to find it in. An inner packet's fragments
/// are the same fragments at every hop, in the tunnel on the underlay and not on the pod's
/// veth: there they keep the tunnel header they have, or none.
#[inline(always)]
fn remember_or_recall(ip: &Ip, packet: &mut Packet, info: &mut FragInfo) {
    let key = FragKey {
        id: ip.frag_id,
        proto: ip.proto,
        family: ip.family,
        _pad: 0,
        src: addr_bytes(&ip.src),
        dst: addr_bytes(&ip.dst),
    };
    if ip.has_transport() {
        // The flow alone, not at a hop: later fragments are the same at every hop.
        info.flow = flow_key(0, 0, &packet.flow);
        info.outer = if is_outer_fragment(packet) {
            clean(&packet.outer)
        } else {
            OuterHeader::default()
        };
        let _ = FRAGMENTS.insert(&key, info, 0);
    } else if let Some(stored) = FRAGMENTS.get_ptr(&key) {
        // SAFETY: a valid map value pointer for the duration of this program run.
        let info = unsafe { &*stored };
        packet.flow.proto = info.flow.proto;
        packet.flow.family = info.flow.family;
        packet.flow.sport = info.flow.sport;
        packet.flow.dport = info.flow.dport;
        packet.flow.src = addr_words(&info.flow.src);
        packet.flow.dst = addr_words(&info.flow.dst);
        if info.outer.family != 0 {
            // SAFETY: two distinct OuterHeaders (a map value, this CPU's scratch); an explicit
            // non-overlapping copy, where an assignment between map values became a memmove
            // call (a byte loop on BPF).
            unsafe { core::ptr::copy_nonoverlapping(&info.outer, &mut packet.outer, 1) };
        }
    }
}

#[inline(always)]
fn count_hop(hop: Option<u32>, sample: &HopCounters) {
    let Some(counters) = hop.and_then(|index| HOP_STATS.get_ptr_mut(index)) else {
        return;
    };
    // SAFETY: a per-CPU slot: only this CPU writes it while this program runs.
    unsafe { add(&mut *counters, sample) }
}

#[inline(always)]
fn add(counters: &mut HopCounters, sample: &HopCounters) {
    counters.packets += sample.packets;
    counters.bytes += sample.bytes;
    counters.segs += sample.segs;
    counters.fragments += sample.fragments;
    counters.oversize += sample.oversize;
    raise_max(&mut counters.max_len, &mut counters.max_epoch, sample);
}

/// The largest packet of the current epoch: a new epoch starts over.
#[inline(always)]
pub fn raise_max(max_len: &mut u32, max_epoch: &mut u32, sample: &HopCounters) {
    if *max_epoch != sample.max_epoch {
        *max_epoch = sample.max_epoch;
        *max_len = sample.max_len;
    } else if sample.max_len > *max_len {
        *max_len = sample.max_len;
    }
}

#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "a flat record filled in one place"
)]
fn report(
    ctx: &TcContext,
    kind: EventKind,
    key: &FlowKey,
    outer: &OuterHeader,
    len: u32,
    mtu: u32,
    gso_segs: u32,
    frag: &Ip,
) {
    let Some(mut entry) = events::reserve::<HopEvent>(kind) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring-buffer record; every field
    // is written before submit.
    unsafe {
        (*event).header.kind = kind as u32;
        (*event).header.netns = 0;
        (*event).header.ktime_ns = bpf_ktime_get_ns();
        (*event).flow = *key;
        (*event).outer = clean(outer);
        (*event).len = len;
        (*event).mtu = mtu;
        (*event).gso_segs = gso_segs;
        (*event).frag_offset = frag.frag_offset;
        (*event).frag_more = u32::from(frag.frag_more);
        (*event).cap_len = copy_frame(ctx, &mut (*event).frame, len);
    }
    events::submit(entry);
}

/// Copies the first bytes of the packet into `frame`; returns how many.
#[inline(always)]
fn copy_frame(ctx: &TcContext, frame: &mut [u8; SNAP_LEN], len: u32) -> u32 {
    let n = if len < SNAP_LEN as u32 {
        len
    } else {
        SNAP_LEN as u32
    };
    // The verifier needs to see a length in 1..=SNAP_LEN.
    if n == 0 || n > SNAP_LEN as u32 {
        return 0;
    }
    // Older verifiers (Debian's 6.1) learn nothing from `n != 0` and reject a length that may
    // be 0: rebuild the range from arithmetic they track (SNAP_LEN is a power of two).
    let n = (core::hint::black_box(n - 1) & (SNAP_LEN as u32 - 1)) + 1;
    // SAFETY: bpf_skb_load_bytes writes at most `n` <= SNAP_LEN bytes into `frame`.
    let ret = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, frame.as_mut_ptr().cast(), n)
    };
    if ret == 0 { n } else { 0 }
}
