//! The per-flow counters: the kernel's flow cache and its LRU flow map, read as interval
//! deltas, merged by slot generation ([`super::flowcache`]), against a compact record of what
//! each map entry held at the last read. Deltas are handed out as they are computed, never
//! all collected (at 100,000 flows, 300,000 entries over three hops, that cost hundreds of
//! MiB): only those of flows holding a cache slot wait, at most the cache's size.

use std::{collections::BTreeSet, hash::BuildHasher as _};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use vxprobe_common::{FlowCounters, FlowKey, names};

use super::{
    batch::{BatchReader, read_all, sum, take_map},
    flowcache::{FlowCache, Pending},
    seen::FlowSeen,
};

/// The record's key hash: the same for a key throughout the process (the record is sorted by
/// it from one read to the next), seeded at random per process so that no one can make up
/// flows whose keys collide in it.
fn key_hash(hasher: &foldhash::quality::RandomState, key: &FlowKey) -> u64 {
    hasher.hash_one(key)
}

/// What was seen of every flow entry at the last read, sorted by key hash: the hashes apart
/// from the counters, and every 16th hash apart again. A lookup searches that small index
/// (it stays in cache), then one 128-byte block of hashes, then reads one entry; a binary
/// search over 300,000 whole entries missed the cache a dozen times per lookup, and was most
/// of record's CPU at 100k flows.
#[derive(Default)]
struct Record {
    hashes: Vec<u64>,
    seen: Vec<FlowSeen>,
    /// `hashes[i * BLOCK]`.
    top: Vec<u64>,
}

const BLOCK: usize = 16;

impl Record {
    fn len(&self) -> usize {
        self.hashes.len()
    }

    fn find(&self, hash: u64) -> Option<usize> {
        let blocks = self.top.partition_point(|&h| h <= hash);
        let start = blocks.checked_sub(1)? * BLOCK;
        let end = (start + BLOCK).min(self.hashes.len());
        self.hashes[start..end]
            .binary_search(&hash)
            .ok()
            .map(|i| start + i)
    }

    /// Keeps the entries the read `read` saw, adds `fresh` (emptied), rebuilds the index.
    fn rebuild(&mut self, read: u32, fresh: &mut Vec<(u64, FlowSeen)>) {
        let mut kept = 0;
        for i in 0..self.seen.len() {
            if self.seen[i].read == read {
                self.hashes[kept] = self.hashes[i];
                self.seen[kept] = self.seen[i];
                kept += 1;
            }
        }
        self.hashes.truncate(kept);
        self.seen.truncate(kept);
        if !fresh.is_empty() {
            // Merged in place from the back: no second copy of the record.
            fresh.sort_unstable_by_key(|&(hash, _)| hash);
            let total = kept + fresh.len();
            self.hashes.reserve_exact(fresh.len());
            self.seen.reserve_exact(fresh.len());
            self.hashes.resize(total, 0);
            self.seen.resize(total, FlowSeen::default());
            let (mut old, mut new) = (kept, fresh.len());
            for to in (0..total).rev() {
                if new == 0 {
                    break;
                }
                if old > 0 && self.hashes[old - 1] > fresh[new - 1].0 {
                    old -= 1;
                    self.hashes[to] = self.hashes[old];
                    self.seen[to] = self.seen[old];
                } else {
                    new -= 1;
                    (self.hashes[to], self.seen[to]) = fresh[new];
                }
            }
            fresh.clear();
        }
        self.top.clear();
        self.top.extend(self.hashes.iter().step_by(BLOCK).copied());
        // A table that shrank a lot gives its memory back.
        if self.hashes.capacity() > 2 * self.hashes.len() + 1024 {
            self.hashes.shrink_to_fit();
            self.seen.shrink_to_fit();
            self.top.shrink_to_fit();
        }
    }
}

/// The per-flow counters: the kernel's flow cache and flow map, and a compact record of what
/// each map entry held at the last read.
pub struct FlowStats {
    cache: FlowCache,
    map: PerCpuHashMap<MapData, FlowKey, FlowCounters>,
    batch: BatchReader<FlowKey, FlowCounters>,
    record: Record,
    /// Deltas of flows that hold cache slots, until the cache's part is added.
    pending: Pending,
    /// Devices whose flows were deleted ([`FlowStats::forget_device`]): their flows still
    /// holding cache slots reach the map again when another flow takes the slot, and are
    /// deleted then. A device leaves the set once no slot holds one of its flows.
    forgotten: BTreeSet<u32>,
    /// Keys of forgotten devices found in the last read, to delete.
    stale: Vec<FlowKey>,
    /// Entries deleted since [`FlowStats::take_deleted`].
    deleted: u64,
    /// Entries new in the current read, with their key hashes.
    fresh: Vec<(u64, FlowSeen)>,
    read: u32,
    hasher: foldhash::quality::RandomState,
}

impl FlowStats {
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let cache = ebpf
            .map(names::FLOW_CACHE)
            .with_context(|| format!("map {} missing from the eBPF object", names::FLOW_CACHE))?;
        let aya::maps::Map::Array(cache) = cache else {
            anyhow::bail!("map {} is not an array", names::FLOW_CACHE);
        };
        let cache = FlowCache::map(cache)?;
        Ok(Self {
            // Sized once, before the large buffers every read makes: grown in the middle of
            // them, it fragmented the heap (+3 MiB peak RSS at 100k flows).
            pending: Pending::for_slots(cache.slots()),
            cache,
            map: take_map(ebpf, names::FLOW_STATS)?,
            batch: BatchReader::new(),
            record: Record::default(),
            forgotten: BTreeSet::new(),
            stale: Vec::new(),
            deleted: 0,
            fresh: Vec::new(),
            read: 0,
            hasher: foldhash::quality::RandomState::default(),
        })
    }

    /// Hands `out` what each flow counted since the previous call, once per flow: map entries
    /// as the map is read, flows holding cache slots after it ([`crate::kernel::flowcache`]). Flows
    /// that counted nothing are left out, entries gone from the map (LRU eviction) are
    /// forgotten. The flag says the entry may not have been taken before (`out` answers
    /// whether it took it): repeats need not be counted again as distinct entries.
    pub fn interval(
        &mut self,
        epoch: u32,
        mut out: impl FnMut(&FlowKey, &FlowCounters, bool) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        self.read = self.read.wrapping_add(1);
        let read = self.read;
        self.cache.read();
        let (record, fresh, pending) = (&mut self.record, &mut self.fresh, &mut self.pending);
        let (forgotten, stale, map) = (&self.forgotten, &mut self.stale, &self.map);
        let hasher = &self.hasher;
        let cache = self.cache.merge();
        let mut failed = None;
        let read_all = read_all(map, &mut self.batch, |key, per_cpu| {
            if failed.is_some() {
                return;
            }
            if forgotten.contains(&key.ifindex) {
                stale.push(*key);
                return;
            }
            let settled;
            let per_cpu = if cache.shows_handover(key, per_cpu) {
                settled = read_settled(map, key);
                settled.as_ref().map_or(per_cpu, |v| &v[..])
            } else {
                per_cpu
            };
            let now = &sum(per_cpu);
            let hash = key_hash(hasher, key);
            let (mut delta, at, reported) = match record.find(hash) {
                Some(at) => {
                    let seen = &record.seen[at];
                    (seen.since(now, epoch), Some(at), seen.reported)
                }
                None => (FlowSeen::default().delta(now, epoch), None, false),
            };
            let mut taken = false;
            if cache.settle(key, per_cpu, &mut delta) {
                pending.add(key, &delta);
            } else if delta.counters.packets > 0 {
                match out(key, &delta, !reported) {
                    Ok(took) => taken = took,
                    Err(e) => failed = Some(e),
                }
            }
            let seen = FlowSeen {
                reported: reported || taken,
                ..FlowSeen::of(now, read)
            };
            match at {
                Some(at) => record.seen[at] = seen,
                None => fresh.push((hash, seen)),
            }
        });
        if let Err(e) = read_all {
            // The map failed midway (after retries): what was read is reported and recorded,
            // the rest stays as last seen, for the next read to report; flows holding cache
            // slots wait in `pending` for it too.
            for seen in &mut record.seen {
                seen.read = read;
            }
            record.rebuild(read, fresh);
            return Err(e);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        cache.deltas(epoch, |key, delta| {
            if !forgotten.contains(&key.ifindex) {
                pending.add(key, delta);
            }
        });
        // Flows holding cache slots (at most the cache's size): said new every time, which
        // the distinct count takes as it takes any repeat.
        for (key, delta) in pending.drain() {
            if delta.counters.packets > 0 {
                out(&key, &delta, true)?;
            }
        }
        record.rebuild(read, fresh);
        if fresh.capacity() > 65536 {
            *fresh = Vec::new();
        }
        for key in self.stale.drain(..) {
            if self.map.remove(&key).is_ok() {
                self.deleted += 1;
            }
        }
        // A vanished device whose flows no cache slot holds has none left to reach the map
        // (its programs are gone, no packet of it comes): forgotten for good, so the set does
        // not grow with every veth a node has had.
        let cache = self.cache.merge();
        self.forgotten.retain(|&ifindex| cache.may_hold(ifindex));
        Ok(())
    }

    /// Entries in the map at the last [`interval`](Self::interval).
    pub fn len(&self) -> usize {
        self.record.len()
    }

    pub fn is_empty(&self) -> bool {
        self.record.len() == 0
    }

    /// Forgets a vanished device: its entries are deleted from the kernel map as the next
    /// read finds them (it reads every entry anyway), and so are those that reach the map
    /// later (from cache slots), until the device's ifindex is observed again
    /// ([`FlowStats::remember_device`]). Walking the map's keys here instead took one system
    /// call per entry on the event loop: at 65,536 entries, longer than an interval.
    pub fn forget_device(&mut self, ifindex: u32) {
        self.forgotten.insert(ifindex);
    }

    /// A device is observed at `ifindex` (again): its flows count from now on.
    pub fn remember_device(&mut self, ifindex: u32) {
        self.forgotten.remove(&ifindex);
    }

    /// Entries vxprobe deleted itself since the last call.
    pub fn take_deleted(&mut self) -> u64 {
        std::mem::take(&mut self.deleted)
    }
}

/// One entry's per-CPU values read again, until two reads agree (a handover in progress is
/// over within nanoseconds); `None` if the entry is gone.
fn read_settled(
    map: &PerCpuHashMap<MapData, FlowKey, FlowCounters>,
    key: &FlowKey,
) -> Option<PerCpuValues<FlowCounters>> {
    let mut last = map.get(key, 0).ok()?;
    for _ in 0..3 {
        let again = map.get(key, 0).ok()?;
        let same = last.iter().zip(again.iter()).all(|(a, b)| a == b);
        last = again;
        if same {
            break;
        }
    }
    Some(last)
}

pub fn flow_stats(ebpf: &mut aya::Ebpf) -> anyhow::Result<FlowStats> {
    FlowStats::take(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::seen::tests::counters;

    #[test]
    fn the_record_finds_keeps_and_forgets() {
        let mut record = Record::default();
        let mut fresh: Vec<(u64, FlowSeen)> = (0..1000u64)
            .rev()
            .map(|i| (i * 3, FlowSeen::of(&counters(i, 0), 1)))
            .collect();
        record.rebuild(1, &mut fresh);
        assert!(fresh.is_empty());
        assert_eq!(record.len(), 1000);
        for hash in 0..3100u64 {
            let want = (hash % 3 == 0 && hash < 3000).then_some((hash / 3) as usize);
            assert_eq!(record.find(hash), want, "hash {hash}");
        }
        // Read 2 sees every other entry and two new ones: the rest is forgotten.
        for i in (0..1000).step_by(2) {
            record.seen[i].read = 2;
        }
        let mut fresh = vec![
            (1, FlowSeen::of(&counters(1, 0), 2)),
            (5000, FlowSeen::of(&counters(2, 0), 2)),
        ];
        record.rebuild(2, &mut fresh);
        assert_eq!(record.len(), 502);
        assert!(record.hashes.is_sorted());
        assert_eq!(record.find(1), Some(1));
        assert_eq!(record.find(3), None);
        assert_eq!(record.find(6), Some(2));
        assert_eq!(record.find(5000), Some(501));
    }
}
