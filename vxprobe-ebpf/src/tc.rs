//! TC classifiers: the per-hop view of the datapath. Attached at ingress and egress of every
//! selected device; they count per hop and per flow (inner flow for tunnel traffic), report
//! fragments and oversized packets, and always hand the packet on unchanged.
//!
//! Per packet: the device's entry (an array slot by ifindex), the headers parsed straight into
//! the flow key on the stack, the hop's per-CPU counters, the flow's per-CPU cache slot. What
//! happens to few packets (fragments, events, a flow taking a cache slot) is out of line, so
//! the common path keeps its registers.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use vxprobe_common::{
    Counters, DeviceInfo, Direction, EventKind, FlowCounters, FlowFilter, FlowKey, FragInfo,
    FragKey, HopEvent, LOW_IFINDEXES, MAX_DEVICES, MAX_HOPS, OuterHeader, SNAP_LEN, hop_index,
};

use crate::{
    events,
    flows::{self, store_outer},
    hint,
    parse::{self, Facts, Frag, Spill, copy_addr, set_proto_family},
};

/// Per hop, at [`hop_index`]: user space gives each device a slot.
#[map]
static HOP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_HOPS, 0);

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
    observe::<{ step::ALL }>(&ctx, Direction::Ingress);
    PASS_ON
}

#[classifier]
pub fn vxprobe_tc_egress(ctx: TcContext) -> i32 {
    observe::<{ step::ALL }>(&ctx, Direction::Egress);
    PASS_ON
}

/// How far [`observe`] goes: vxprobe's programs do it all; the benchmark's yardsticks
/// (`yardstick.rs`) stop after a step, to show what each step costs on the same packets.
pub mod step {
    /// Looks up the device and reads the packet's length and GSO segments.
    pub const DEVICE: u8 = 1;
    /// ... and parses the headers (and applies the filter).
    pub const PARSE: u8 = 2;
    /// ... and counts the hop.
    pub const HOP: u8 = 3;
    /// ... and counts the flow, and reports fragments and oversized packets: vxprobe.
    pub const ALL: u8 = 4;
}

/// Per-CPU working memory for one program run: the flow key and what the parse found. Not
/// the stack: with misaligned loads allowed (vxprobe-ebpf's build.rs), LLVM merges stores of
/// neighbouring fields into wider ones at odd offsets, which the verifier accepts in a map
/// value and refuses on the stack.
struct Scratch {
    key: FlowKey,
    facts: Facts,
    spill: Spill,
    frag_key: FragKey,
    frag_info: FragInfo,
    /// A flow's counters when there is no cache slot to count them in.
    spare: FlowCounters,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Counts one packet at its hop: through the skb-hash shortcut when its flow has a hint
/// there ([`count_hinted`]), else through the parse ([`observe_parsed`]).
///
/// The parse is a subprogram of its own, called with the context and the direction alone:
/// every caller state is the same, whichever of the shortcut's checks failed before the
/// call, so the verifier can walk it once (inlined after checks that shared its skb reads,
/// it was walked once per check, and vxprobe's start took twice as long). Packets that take
/// the shortcut never make the call.
#[inline(always)]
pub fn observe<const UPTO: u8>(ctx: &TcContext, direction: Direction) {
    if UPTO == step::ALL {
        if !count_hinted(ctx, direction) {
            parse_and_count(ctx.skb.skb, direction);
        }
        return;
    }
    observe_parsed::<UPTO>(ctx, direction);
}

/// [`observe_parsed`] out of line: see [`observe`].
#[inline(never)]
fn parse_and_count(skb: *mut aya_ebpf::bindings::__sk_buff, direction: Direction) {
    observe_parsed::<{ step::ALL }>(&TcContext::new(skb), direction);
}

/// The parse, then the hop's and the flow's counters, events and the hint for the next
/// packet.
#[inline(always)]
fn observe_parsed<const UPTO: u8>(ctx: &TcContext, direction: Direction) {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed to this program; a plain field
    // of the context, readable by every TC program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len();
    // A device user space has let go of (its programs are being detached): flows only.
    let device = device_info(ifindex);
    if UPTO == step::DEVICE {
        // SAFETY: as above.
        let gso_segs = unsafe { (*ctx.skb.skb).gso_segs };
        core::hint::black_box(len ^ gso_segs ^ device.mtu ^ device.l3 ^ device.slot);
        return;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; programs on one CPU do not preempt each other, so no
    // one else uses it during this run.
    let scratch = unsafe { &mut *scratch };
    scratch.key.ifindex = ifindex;
    scratch.key.direction = direction as u8;
    let (key, facts) = (&mut scratch.key, &mut scratch.facts);
    let is_ip = parse::packet(ctx, device.l3 != 0, key, facts, &mut scratch.spill);
    let filter = filter();
    if filter.flags != 0 && !(is_ip && matches(&filter, key, &facts.outer)) {
        return;
    }
    if UPTO == step::PARSE {
        core::hint::black_box(u32::from(is_ip));
        return;
    }

    let fragment = is_ip
        && (facts.frag.is_fragment() || facts.outer.family != 0 && facts.outer_frag.is_fragment());
    // SAFETY: as above.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs };
    let oversize = is_ip && too_big(len, gso_segs, &device);
    let sample = sample(len, gso_segs, fragment, oversize);
    count_hop(&device, direction, &sample);
    if UPTO == step::HOP || !is_ip {
        return;
    }
    if fragment {
        remember_or_recall(scratch);
    }
    let (key, facts) = (&scratch.key, &scratch.facts);
    let counted = flows::count(key, &sample, &facts.outer, &mut scratch.spare);
    if let Some((slot, generation)) = counted
        && !fragment
    {
        // SAFETY: as above.
        let hash = unsafe { (*ctx.skb.skb).hash };
        hint::remember(hash, key, facts, slot, generation);
    }
    if fragment || oversize {
        let (kind, frag) = if oversize {
            (EventKind::HopOversize, Frag::default())
        } else if facts.frag.is_fragment() {
            (EventKind::Fragment, facts.frag)
        } else {
            (EventKind::Fragment, facts.outer_frag)
        };
        let what = Report {
            kind: kind as u32,
            len,
            mtu: device.mtu,
            gso_segs,
            frag_offset: frag.offset,
            frag_more: frag.more,
        };
        report(ctx, &what, key, &facts.outer);
    }
}

/// A packet whose skb hash names its flow's cache slot, its headers confirming it (`hint`),
/// counted without a parse; false: the caller parses it. Packets with something to report
/// (oversized ones) always take the parse.
///
/// It reads what it needs from the context itself, volatile, and looks up its device on its
/// own: nothing it learned reaches the parse after it (values shared with the parse, a
/// length or a packet pointer, would enter it with what each failed check had proved about
/// them).
#[inline(always)]
fn count_hinted(ctx: &TcContext, direction: Direction) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: plain fields of the context, as in `observe`. The hash is read as the skb has
    // it (0: none), never computed here.
    let (hash, ifindex, len, gso_segs) = unsafe {
        (
            core::ptr::read_volatile(&(*skb).hash),
            core::ptr::read_volatile(&(*skb).ifindex),
            core::ptr::read_volatile(&(*skb).len),
            core::ptr::read_volatile(&(*skb).gso_segs),
        )
    };
    if hash == 0 {
        return false;
    }
    let device = device_info(ifindex);
    if too_big(len, gso_segs, &device) {
        return false;
    }
    let Some(held) = hint::find(ctx, hash, ifindex, direction as u32) else {
        return false;
    };
    let sample = sample(len, gso_segs, false, false);
    count_hop(&device, direction, &sample);
    held.counters.counters.merge(&sample);
    true
}

/// A packet longer than the device's MTU allows that is not a GSO packet (which the stack
/// segments later).
#[inline(always)]
fn too_big(len: u32, gso_segs: u32, device: &DeviceInfo) -> bool {
    let link_header = if device.l3 != 0 { 0 } else { 14 };
    gso_segs <= 1 && device.mtu != 0 && len > device.mtu + link_header
}

/// One packet, as the counters add it.
#[inline(always)]
fn sample(len: u32, gso_segs: u32, fragment: bool, oversize: bool) -> Counters {
    Counters {
        packets: 1,
        bytes: u64::from(len),
        segs: u64::from(gso_segs.max(1)),
        fragments: u64::from(fragment),
        oversize: u64::from(oversize),
        max_len: len,
        max_epoch: EPOCH.get(0).copied().unwrap_or(0),
    }
}

/// Into the hop's per-CPU counters, if user space gave the device a slot.
#[inline(always)]
fn count_hop(device: &DeviceInfo, direction: Direction, sample: &Counters) {
    if device.known != 0
        && let Some(counters) = HOP_STATS.get_ptr_mut(hop_index(device.slot, direction))
    {
        // SAFETY: a per-CPU slot: only this CPU writes it while this program runs.
        unsafe { (*counters).merge(sample) };
    }
}

/// What user space said about the device (`known` 0: nothing).
#[inline(always)]
fn device_info(ifindex: u32) -> DeviceInfo {
    let found = if ifindex < LOW_IFINDEXES {
        DEVICE_INFO_LOW.get_ptr(ifindex)
    } else {
        DEVICE_INFO.get_ptr(&ifindex)
    };
    match found {
        // SAFETY: a value of a map only user space writes, copied out at once.
        Some(info) => unsafe { *info },
        None => DeviceInfo {
            mtu: 0,
            l3: 0,
            slot: 0,
            known: 0,
        },
    }
}

#[inline(always)]
fn filter() -> FlowFilter {
    // SAFETY: a plain read of a static; volatile so the compiler cannot fold the placeholder.
    unsafe { core::ptr::read_volatile(&FILTER) }
}

/// Four word compares: a `==` on the byte arrays would be a memcmp call, which BPF has not.
#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (a.as_ptr().cast::<u32>(), b.as_ptr().cast::<u32>());
    // SAFETY: as in parse's `copy_addr`: addresses sit 4-aligned in their structs.
    unsafe { (0..4).all(|i| a.add(i).read() == b.add(i).read()) }
}

#[inline(always)]
fn matches(filter: &FlowFilter, key: &FlowKey, outer: &OuterHeader) -> bool {
    let tunneled = outer.family != 0;
    if filter.flags & FlowFilter::HOST != 0 {
        let host = &filter.host;
        let inner = same_addr(&key.src, host) || same_addr(&key.dst, host);
        let outer_hit = tunneled && (same_addr(&outer.src, host) || same_addr(&outer.dst, host));
        if !(inner || outer_hit) {
            return false;
        }
    }
    if filter.flags & FlowFilter::PORT != 0 {
        let port = filter.port;
        let inner = key.sport == port || key.dport == port;
        let outer_hit = tunneled && (outer.sport == port || outer.dport == port);
        if !(inner || outer_hit) {
            return false;
        }
    }
    if filter.flags & FlowFilter::PROTO != 0 && key.proto != filter.proto {
        return false;
    }
    true
}

/// First fragments record their flow; later ones (no transport header) take it back. The
/// tunnel header is recorded only when the tunnel's own outer header is the fragmented one:
/// a later outer fragment carries no UDP header to find it in. An inner packet's fragments
/// are the same fragments at every hop, in the tunnel on the underlay and not on the pod's
/// veth: there they keep the tunnel header they have, or none. Out of line: fragments are
/// few, and their map work would take the common path's registers.
#[inline(never)]
fn remember_or_recall(scratch: &mut Scratch) {
    let Scratch {
        key,
        facts,
        frag_key,
        frag_info,
        ..
    } = scratch;
    // The fragmented header: the tunnel's outer one (a UDP datagram), or the flow's own.
    let outer_fragmented = facts.outer.family != 0 && facts.outer_frag.is_fragment();
    let frag = if outer_fragmented {
        frag_key.proto = vxprobe_common::wire::IPPROTO_UDP;
        frag_key.family = facts.outer.family;
        copy_addr(&mut frag_key.src, &facts.outer.src);
        copy_addr(&mut frag_key.dst, &facts.outer.dst);
        facts.outer_frag
    } else {
        frag_key.proto = key.proto;
        frag_key.family = key.family;
        copy_addr(&mut frag_key.src, &key.src);
        copy_addr(&mut frag_key.dst, &key.dst);
        facts.frag
    };
    frag_key.id = frag.id;
    frag_key._pad = 0;
    if frag.has_transport() {
        // The flow alone, not at a hop: later fragments are the same at every hop.
        frag_info.flow = *key;
        frag_info.flow.ifindex = 0;
        frag_info.flow.direction = 0;
        if outer_fragmented {
            store_outer(&mut frag_info.outer, &facts.outer);
        } else {
            store_outer(&mut frag_info.outer, &NO_TUNNEL);
        }
        let _ = FRAGMENTS.insert(frag_key, frag_info, 0);
    } else if let Some(stored) = FRAGMENTS.get_ptr(frag_key) {
        // SAFETY: a valid map value pointer for the duration of this program run.
        let info = unsafe { &*stored };
        set_proto_family(key, info.flow.proto, info.flow.family);
        key.sport = info.flow.sport;
        key.dport = info.flow.dport;
        copy_addr(&mut key.src, &info.flow.src);
        copy_addr(&mut key.dst, &info.flow.dst);
        if info.outer.family != 0 {
            store_outer(&mut facts.outer, &info.outer);
        }
    }
}

/// A tunnel header's family says there is none.
static NO_TUNNEL: OuterHeader = OuterHeader {
    family: 0,
    _pad: [0; 3],
    vni: 0,
    sport: 0,
    dport: 0,
    src: [0; 16],
    dst: [0; 16],
};

/// What a hop event says besides the flow and the tunnel header.
struct Report {
    kind: u32,
    len: u32,
    mtu: u32,
    gso_segs: u32,
    frag_offset: u32,
    frag_more: u32,
}

/// A fragment or an oversized packet, with its first bytes, into the ring buffer. Out of
/// line, as `remember_or_recall`.
#[inline(never)]
fn report(ctx: &TcContext, what: &Report, key: &FlowKey, outer: &OuterHeader) {
    let kind = if what.kind == EventKind::HopOversize as u32 {
        EventKind::HopOversize
    } else {
        EventKind::Fragment
    };
    let Some(mut entry) = events::reserve::<HopEvent>(kind) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring-buffer record whose header
    // `reserve` wrote; every other field is written before submit.
    unsafe {
        (*event).flow = *key;
        store_outer(&mut (*event).outer, outer);
        (*event).len = what.len;
        (*event).mtu = what.mtu;
        (*event).gso_segs = what.gso_segs;
        (*event).frag_offset = what.frag_offset;
        (*event).frag_more = what.frag_more;
        (*event).cap_len = copy_frame(ctx, &mut (*event).frame, what.len);
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
