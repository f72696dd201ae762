//! The TC programs' per-CPU flow cache ([`CachedFlow`]), read through a shared mapping, and
//! the merge of what its slots count with the flow map's entries.
//!
//! A flow counts in its cache slot while it holds it; when another flow takes the slot, the
//! kernel first adds the holder's counters to the holder's entry in the flow map, stamping
//! the entry (this CPU's value) with the slot's generation, and then writes the new holder
//! with the next generation. So, per flow and CPU, the flow map's generation says which of
//! the slot's holders are already in the map, and the sum is exact:
//!
//! - a slot seen here whose generation the map entry already has is counted by the map (the
//!   handover happened between the two reads): the slot copy is dropped;
//! - what was reported from a slot before its holder was handed over is subtracted from the
//!   map's delta once the map has that generation.
//!
//! The cache is read first, the map second: a handover the cache read missed has its
//! counters in the map by the time the map is read.
//!
//! Limits: where the LRU evicts a flow's entry after a handover, the counts of that holder
//! not yet reported are lost (as any evicted entry's are), and what the cache had reported
//! of it may be taken off the counts of the entry created next: losses only where the map is
//! already evicting (`evicted` says so). Weakly ordered CPUs: see [`read_slot`].

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::{self, NonNull},
    sync::atomic::{Ordering, fence},
};

use anyhow::Context as _;
use aya::maps::MapData;
use vxprobe_common::{CachedFlow, FlowCounters, FlowKey, flow_cache_slot};

use super::seen::FlowSeen;

/// Whether a holder of `generation` is already in a map entry stamped `in_map` (generations
/// only grow, by one per handover, in 64 bits: they do not wrap).
fn handed_over(generation: u64, in_map: u64) -> bool {
    in_map != 0 && in_map >= generation
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
enum Status {
    /// Never taken, or not read.
    #[default]
    Empty,
    /// Changing hands at every read: left for the next interval.
    Torn,
    /// Its holder counts here.
    Held,
    /// Its holder was handed over to the map since the cache was read.
    InMap,
}

#[derive(Copy, Clone, Debug, Default)]
struct SlotSeen {
    slot: CachedFlow,
    status: Status,
}

/// What was reported from a slot's holder so far.
#[derive(Copy, Clone, Debug, Default)]
struct Reported {
    generation: u64,
    key: FlowKey,
    counters: FlowSeen,
    /// Cleared once the map has this holder (its counters reported through the map).
    live: bool,
}

/// The merge, apart from where the slots come from (so it can be tested on made-up reads).
#[derive(Default)]
pub struct CacheMerge {
    /// The possible CPUs' ids, in the order per-CPU map values come in.
    cpu_ids: Vec<usize>,
    slots: u32,
    seen: Vec<SlotSeen>,
    reported: Vec<Reported>,
}

impl CacheMerge {
    /// `cpu_ids`: the possible CPUs, ascending; the cache has a share for every id up to the
    /// last.
    pub fn new(cpu_ids: Vec<usize>, slots: u32) -> Self {
        let len = cpu_ids.last().map_or(0, |last| last + 1) * slots as usize;
        Self {
            cpu_ids,
            slots,
            seen: vec![SlotSeen::default(); len],
            reported: vec![Reported::default(); len],
        }
    }

    /// The cache slot of `key` on the CPU whose per-CPU value comes `position`-th.
    fn index(&self, key_slot: usize, position: usize) -> Option<usize> {
        let cpu = *self.cpu_ids.get(position)?;
        Some(cpu * self.slots as usize + key_slot).filter(|i| *i < self.seen.len())
    }

    /// Whether a map entry shows a handover of one of the flow's slots that happened after the
    /// cache was read: the kernel may have been writing the entry while it was copied, and the
    /// copy may have the new stamp with older counters (`FlowCounters::generation`). Read such
    /// an entry again before [`CacheMerge::settle`]. Handovers the cache read already saw were
    /// over before the map was read (the kernel fills the map before it gives the slot away).
    pub fn shows_handover(&self, key: &FlowKey, per_cpu: &[FlowCounters]) -> bool {
        let slot = flow_cache_slot(key, self.slots) as usize;
        per_cpu.iter().enumerate().any(|(position, value)| {
            let Some(index) = self.index(slot, position) else {
                return false;
            };
            let (reported, seen) = (&self.reported[index], &self.seen[index]);
            match seen.status {
                Status::Held => {
                    seen.slot.key == *key && handed_over(seen.slot.generation, value.generation)
                }
                // Not known when the holder changed: read again if the map has one of ours.
                Status::Torn => {
                    reported.live
                        && reported.key == *key
                        && handed_over(reported.generation, value.generation)
                }
                Status::Empty | Status::InMap => false,
            }
        })
    }

    /// Sets what the read of slot `index` found (`None`: torn at every try).
    fn see(&mut self, index: usize, slot: Option<CachedFlow>) {
        self.seen[index] = match slot {
            None => SlotSeen {
                status: Status::Torn,
                ..Default::default()
            },
            Some(slot) if slot.key.ifindex == 0 => SlotSeen::default(),
            Some(slot) => SlotSeen {
                slot,
                status: Status::Held,
            },
        };
    }

    /// Settles a flow map entry read after the cache: takes off `delta` (the entry's change
    /// since the last read) what the cache already reported of holders now in the map, and
    /// drops cache copies the map has meanwhile taken in. Returns whether the flow still
    /// holds a slot on some CPU: its delta then waits for [`CacheMerge::deltas`].
    pub fn settle(
        &mut self,
        key: &FlowKey,
        per_cpu: &[FlowCounters],
        delta: &mut FlowCounters,
    ) -> bool {
        let slot = flow_cache_slot(key, self.slots) as usize;
        let mut held = false;
        for (position, value) in per_cpu.iter().enumerate() {
            let Some(index) = self.index(slot, position) else {
                continue;
            };
            let reported = &mut self.reported[index];
            if reported.live
                && reported.key == *key
                && handed_over(reported.generation, value.generation)
            {
                reported.counters.take_off(delta);
                reported.live = false;
            }
            let seen = &mut self.seen[index];
            if seen.status == Status::Held && seen.slot.key == *key {
                if handed_over(seen.slot.generation, value.generation) {
                    seen.status = Status::InMap;
                } else {
                    held = true;
                }
            }
        }
        held
    }

    /// Whether a slot may hold a flow of device `ifindex`, as the last read of the cache saw
    /// them (a slot torn at every try may hold any).
    pub fn may_hold(&self, ifindex: u32) -> bool {
        self.seen.iter().any(|seen| match seen.status {
            Status::Torn => true,
            Status::Held => seen.slot.key.ifindex == ifindex,
            Status::Empty | Status::InMap => false,
        })
    }

    /// Hands `out` what each slot counted since it was last reported (several calls for a
    /// flow that holds slots on several CPUs).
    pub fn deltas(&mut self, epoch: u32, mut out: impl FnMut(&FlowKey, &FlowCounters)) {
        for (seen, reported) in self.seen.iter().zip(self.reported.iter_mut()) {
            match seen.status {
                // InMap: `settle` has already taken what was reported of it off the map's.
                Status::Empty | Status::Torn | Status::InMap => {}
                Status::Held => {
                    let slot = &seen.slot;
                    let same = reported.live
                        && reported.generation == slot.generation
                        && reported.key == slot.key;
                    let before = if same {
                        reported.counters
                    } else {
                        FlowSeen::default()
                    };
                    let delta = before.delta(&slot.counters, epoch);
                    *reported = Reported {
                        generation: slot.generation,
                        key: slot.key,
                        counters: FlowSeen::of(&slot.counters, 0),
                        live: true,
                    };
                    if delta.counters.packets > 0 {
                        out(&slot.key, &delta);
                    }
                }
            }
        }
    }
}

/// The kernel's flow cache, mapped read-only into this process.
pub struct FlowCache {
    base: NonNull<CachedFlow>,
    len: usize,
    bytes: usize,
    merge: CacheMerge,
}

// SAFETY: the mapping is plain shared memory owned by this value; nothing in it is tied to the
// thread that made it.
unsafe impl Send for FlowCache {}

impl FlowCache {
    /// Maps the cache (created `BPF_F_MMAPABLE`, a share of slots per possible CPU id).
    pub fn map(map: &MapData) -> anyhow::Result<Self> {
        let cpu_ids = possible_cpus()?;
        let shares = cpu_ids.last().map_or(1, |last| last + 1);
        let entries = map.info().context("the flow cache's size")?.max_entries() as usize;
        let slots = entries / shares;
        anyhow::ensure!(
            slots > 0 && slots.is_power_of_two() && slots * shares == entries,
            "the flow cache has {entries} entries, not a power of two for each of {shares} CPUs"
        );
        let len = entries;
        let page = 4096;
        let bytes = (len * size_of::<CachedFlow>()).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a read-only shared mapping of the map's values, `bytes` long (the kernel
        // checks that the map is that large and mmapable); unmapped in Drop.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the flow cache");
        }
        Ok(Self {
            base: NonNull::new(addr.cast()).context("mmap returned null")?,
            len,
            bytes,
            merge: CacheMerge::new(cpu_ids, slots as u32),
        })
    }

    /// Reads every slot; a slot changing hands during the read is read again, a few times.
    pub fn read(&mut self) {
        for index in 0..self.len {
            // SAFETY: index < len: inside the mapping, whose entries are CachedFlow values
            // laid out as the kernel's array (8-byte multiples, no gaps).
            let slot = unsafe { self.base.as_ptr().add(index) };
            self.merge.see(index, read_slot(slot));
        }
    }

    /// Slots in the cache, all CPUs.
    pub fn slots(&self) -> usize {
        self.len
    }

    pub fn merge(&mut self) -> &mut CacheMerge {
        &mut self.merge
    }
}

impl Drop for FlowCache {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, with its length.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// One consistent copy of a slot: `generation` first, `generation_end` last, equal (the
/// kernel writes them the other way round around a handover). Counters updated in place by
/// packets of the holder may be read mid-update: each only grows, so a delta is at worst
/// one packet late.
///
/// The kernel's stores are ordered on x86-64 (TSO); BPF has no store barrier for weaker
/// CPUs, where a read racing a handover by nanoseconds can, rarely, pass the check.
fn read_slot(slot: *const CachedFlow) -> Option<CachedFlow> {
    for _ in 0..4 {
        // SAFETY: `slot` points into the live mapping; volatile, as the kernel writes it
        // concurrently, and every bit pattern is a valid CachedFlow.
        unsafe {
            let generation = ptr::read_volatile(&raw const (*slot).generation);
            fence(Ordering::Acquire);
            let key = ptr::read_volatile(&raw const (*slot).key);
            let counters = ptr::read_volatile(&raw const (*slot).counters);
            fence(Ordering::Acquire);
            let generation_end = ptr::read_volatile(&raw const (*slot).generation_end);
            if generation == generation_end {
                return Some(CachedFlow {
                    generation,
                    key,
                    _pad: 0,
                    counters,
                    generation_end,
                });
            }
        }
    }
    None
}

/// The ids of the possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-3` or `0-1,4`),
/// ascending: per-CPU map values come one per possible CPU in this order, and the flow cache
/// has a share per id up to the last.
pub fn possible_cpus() -> anyhow::Result<Vec<usize>> {
    const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
    let text = std::fs::read_to_string(POSSIBLE).with_context(|| format!("reading {POSSIBLE}"))?;
    parse_cpu_list(text.trim()).with_context(|| format!("{POSSIBLE}: '{}'", text.trim()))
}

fn parse_cpu_list(text: &str) -> anyhow::Result<Vec<usize>> {
    let mut ids = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (usize, usize) = (first.parse()?, last.parse()?);
        anyhow::ensure!(first <= last && last < 1 << 16, "bad CPU range {part}");
        ids.extend(first..=last);
    }
    ids.sort_unstable();
    ids.dedup();
    anyhow::ensure!(!ids.is_empty(), "no CPUs");
    Ok(ids)
}

/// Deltas of flows that hold a cache slot, merged with their map deltas before they go out.
#[derive(Default)]
pub struct Pending(HashMap<FlowKey, FlowCounters>);

impl Pending {
    /// `slots`: the cache's; a flow holding no slot never waits here.
    pub fn for_slots(slots: usize) -> Self {
        Self(HashMap::with_capacity(slots))
    }

    pub fn add(&mut self, key: &FlowKey, delta: &FlowCounters) {
        self.0
            .entry(*key)
            .and_modify(|d| d.merge(delta))
            .or_insert(*delta);
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (FlowKey, FlowCounters)> + '_ {
        self.0.drain()
    }
}

#[cfg(test)]
mod tests;
