//! Per-flow counters at each hop: a per-CPU direct-mapped cache in front of a per-CPU LRU map.
//! Almost every packet belongs to a flow already in its cache slot: an array lookup the
//! verifier inlines and a key compare, where the LRU map's lookup hashed 44 bytes of key on
//! every packet (half the TC program's cost). The map holds what flows counted before they
//! lost their slot; user space reads both and merges them by generation (`CachedFlow`).

use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, LruPerCpuHashMap, PerCpuArray},
};
use vxprobe_common::{
    CachedFlow, Counters, FLOW_CACHE_SLOTS as DEFAULT_SLOTS, FlowCounters, FlowKey, MAX_FLOWS,
    OuterHeader, flow_cache_slot,
};

/// CPUs x `FLOW_CACHE_SLOTS`: sized by user space before load (possible CPUs x slots), and
/// mapped into its memory to be read without a system call per slot.
#[map]
static FLOW_CACHE: Array<CachedFlow> = Array::with_max_entries(DEFAULT_SLOTS, BPF_F_MMAPABLE);

const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Slots per CPU in FLOW_CACHE (a power of two), set at load time.
#[unsafe(no_mangle)]
static FLOW_CACHE_SLOTS: u32 = DEFAULT_SLOTS;

/// Resized by user space (`--max-flows`) before load.
#[map]
static FLOW_STATS: LruPerCpuHashMap<FlowKey, FlowCounters> =
    LruPerCpuHashMap::with_max_entries(MAX_FLOWS, 0);

/// Entries this CPU created in FLOW_STATS. User space knows how many are left and how many it
/// deleted itself: the rest were evicted by the LRU (`evicted` in the output).
#[map]
static FLOW_INSERTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_NOEXIST`: create, never overwrite (another CPU may have created the flow meanwhile).
const NOEXIST: u64 = 1;

/// Counts one packet (`sample`) of `key`; `spare`: room for a map value, if one is needed.
/// Returns the cache slot it counted in (its index and generation), if it did.
#[inline(always)]
pub fn count(
    key: &FlowKey,
    sample: &Counters,
    outer: &OuterHeader,
    spare: &mut FlowCounters,
) -> Option<(u32, u64)> {
    let slots = slots();
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let index = cpu * slots + flow_cache_slot(key, slots);
    let Some(slot) = FLOW_CACHE.get_ptr_mut(index) else {
        // Only if user space sized the cache for fewer CPUs than run this program.
        count_uncached(key, sample, outer, spare);
        return None;
    };
    // SAFETY: slots of this CPU's share are written only by programs on this CPU, which do
    // not preempt each other; user space only reads them.
    let held = unsafe { &mut *slot };
    if same_flow(&held.key, key) {
        held.counters.counters.merge(sample);
        // A flow's packets at one hop share their tunnel header: stored when the flow takes
        // the slot, or later only if the slot has none yet (not 44 bytes copied per packet).
        if held.counters.outer.family == 0 && outer.family != 0 {
            held.counters.outer = *outer;
        }
        return Some((index, held.generation));
    }
    Some((index, take(held, key, sample, outer)))
}

/// Slots per CPU in the flow cache (a power of two).
#[inline(always)]
pub fn slots() -> u32 {
    // SAFETY: a plain read of a static; volatile so the compiler cannot fold the placeholder.
    unsafe { core::ptr::read_volatile(&FLOW_CACHE_SLOTS) }
}

/// The cache slot at `index` (this CPU's share: only this CPU's programs write it), if it
/// still has the holder whose generation's low half is `generation`: a slot changes
/// generation whenever it changes hands.
#[inline(always)]
pub fn slot_held(index: u32, generation: u32) -> Option<&'static mut CachedFlow> {
    let slot = FLOW_CACHE.get_ptr_mut(index)?;
    // SAFETY: as in `count`.
    let held = unsafe { &mut *slot };
    (held.generation as u32 == generation).then_some(held)
}

/// `key` takes the slot from its holder; returns its new generation. Out of line: a flow
/// takes a slot once, and then counts there.
#[inline(never)]
fn take(slot: &mut CachedFlow, key: &FlowKey, sample: &Counters, outer: &OuterHeader) -> u64 {
    if slot.key.ifindex != 0 {
        // Into the map before the slot changes hands: a reader that sees the new holder
        // finds the old one's counters in the map.
        slot.counters.generation = slot.generation;
        add_to_map(&slot.key, &slot.counters);
    }
    let generation = slot.generation + 1;
    // The order the reader relies on (CachedFlow): kept by the compiler, and by x86's
    // ordered stores; BPF has no store barrier for weaker CPUs.
    slot.generation_end = generation;
    compiler_barrier();
    slot.key = *key;
    first_count(&mut slot.counters, sample, outer);
    compiler_barrier();
    slot.generation = generation;
    generation
}

/// Without a cache slot: straight into the map.
#[inline(never)]
fn count_uncached(key: &FlowKey, sample: &Counters, outer: &OuterHeader, spare: &mut FlowCounters) {
    first_count(spare, sample, outer);
    add_to_map(key, spare);
}

/// A flow's counters from its first packet, field by field: LLVM makes a memset call (a byte
/// loop on the BPF target) of a struct literal's zeros.
#[inline(always)]
fn first_count(c: &mut FlowCounters, sample: &Counters, outer: &OuterHeader) {
    let to = &mut c.counters;
    to.packets = sample.packets;
    to.bytes = sample.bytes;
    to.segs = sample.segs;
    to.fragments = sample.fragments;
    to.oversize = sample.oversize;
    to.max_len = sample.max_len;
    to.max_epoch = sample.max_epoch;
    store_outer(&mut c.outer, outer);
    c._pad = 0;
    c.generation = 0;
}

/// Keeps the compiler from moving stores across it: LLVM's BPF backend cannot select a
/// fence, but a helper call is opaque to it. The cheapest helper (inlined by the verifier on
/// x86-64); only on the handover path.
#[inline(always)]
fn compiler_barrier() {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_smp_processor_id() };
}

/// Eleven word compares: a `==` on the byte arrays would be a memcmp call, which BPF has not.
#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    // SAFETY: FlowKey is #[repr(C)], 44 bytes of integers without padding, 4-aligned: eleven
    // u32, read in place.
    let (a, b) = unsafe {
        (
            &*(a as *const FlowKey).cast::<[u32; 11]>(),
            &*(b as *const FlowKey).cast::<[u32; 11]>(),
        )
    };
    let mut same = true;
    let mut i = 0;
    while i < 11 {
        same &= a[i] == b[i];
        i += 1;
    }
    same
}

/// Adds what a flow counted into its map entry (created if it has none), with the cache
/// generation it came from.
#[inline(always)]
fn add_to_map(key: &FlowKey, counted: &FlowCounters) {
    if let Some(entry) = FLOW_STATS.get_ptr_mut(key) {
        // SAFETY: a per-CPU value: only this CPU writes it while this program runs.
        merge(unsafe { &mut *entry }, counted);
        return;
    }
    // LRU: a full map evicts the least recently seen flow.
    if FLOW_STATS.insert(key, counted, NOEXIST).is_ok() {
        if let Some(inserts) = FLOW_INSERTS.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot, written only by this CPU while this program runs.
            unsafe { *inserts += 1 };
        }
    } else if let Some(entry) = FLOW_STATS.get_ptr_mut(key) {
        // Another CPU created it since the lookup: count into this CPU's value.
        // SAFETY: as above.
        merge(unsafe { &mut *entry }, counted);
    }
}

#[inline(always)]
fn merge(entry: &mut FlowCounters, counted: &FlowCounters) {
    // The stamp first (FlowCounters::generation): a reader that copies the entry mid-merge
    // may see the new stamp with old counters, which it detects and reads again, never the
    // new counters with the old stamp, which would count the holder twice. 0: counted
    // without the cache, which leaves the stamp as it was.
    if counted.generation != 0 {
        entry.generation = counted.generation;
        compiler_barrier();
    }
    entry.merge(counted);
}

/// Stores a tunnel header as it is kept: all zero when there is none (the scratch copy only
/// has its family cleared per packet). Word by word, into map or ring-buffer memory: a
/// temporary would be a stack copy, and a literal's zeros a memset call.
#[inline(always)]
pub fn store_outer(dst: &mut OuterHeader, outer: &OuterHeader) {
    if outer.family != 0 {
        // SAFETY: two distinct OuterHeaders; an explicit non-overlapping copy, where an
        // assignment between map values became a memmove call (a byte loop on BPF).
        unsafe { core::ptr::copy_nonoverlapping(outer, dst, 1) };
        return;
    }
    let zero = core::hint::black_box(0u32);
    let words = (dst as *mut OuterHeader).cast::<u32>();
    const WORDS: usize = core::mem::size_of::<OuterHeader>() / 4;
    let mut i = 0;
    while i < WORDS {
        // SAFETY: OuterHeader is #[repr(C)], 4-aligned, WORDS words of integers.
        unsafe { words.add(i).write(zero) };
        i += 1;
    }
}
