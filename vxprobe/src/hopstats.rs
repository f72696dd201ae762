//! Counters the TC programs keep in per-CPU maps, summed over CPUs and turned into interval
//! deltas: per hop (an array, by the slot each device is given here), and per flow at each
//! hop (the flow map, merged with the flow cache in front of it: [`crate::flowcache`]).
//!
//! Maps are read in batches (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+: one system call per few
//! thousand entries instead of two per entry), with key-by-key iteration where the kernel has
//! no batch operations. Per-flow deltas are handed out as they are computed, never all
//! collected (at 100,000 flows, 300,000 entries over three hops, that cost hundreds of MiB):
//! only those of flows holding a cache slot wait, at most the cache's size.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash, Hasher as _},
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use crate::flowcache::{FlowCache, Pending};
use anyhow::Context as _;
use aya::{
    Pod,
    maps::{IterableMap as _, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use vxprobe_common::{
    Direction, FlowCounters, FlowKey, HopCounters, HopKey, MAX_DEVICES, hop_index, names,
};

/// Counter structs that can be summed over CPUs.
pub trait Counters: Pod + Default + Copy {
    fn merge(&mut self, other: &Self);
}

impl Counters for HopCounters {
    fn merge(&mut self, other: &Self) {
        HopCounters::merge(self, other);
    }
}

impl Counters for FlowCounters {
    fn merge(&mut self, other: &Self) {
        FlowCounters::merge(self, other);
    }
}

/// `now - before`; the maximum is kept only if it belongs to `epoch`.
fn hop_delta(now: &HopCounters, before: &HopCounters, epoch: u32) -> HopCounters {
    HopCounters {
        packets: now.packets.saturating_sub(before.packets),
        bytes: now.bytes.saturating_sub(before.bytes),
        segs: now.segs.saturating_sub(before.segs),
        fragments: now.fragments.saturating_sub(before.fragments),
        oversize: now.oversize.saturating_sub(before.oversize),
        max_len: if now.max_epoch == epoch {
            now.max_len
        } else {
            0
        },
        max_epoch: epoch,
    }
}

/// `BPF_MAP_LOOKUP_BATCH` over a per-CPU hash map, into buffers reused between reads.
struct BatchReader<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
    cpus: usize,
    /// Entries asked for per call.
    chunk: usize,
    /// Cleared when the kernel refuses batch operations: iterate key by key from then on.
    supported: bool,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

impl<K: Pod, V: Pod + Default> BatchReader<K, V> {
    fn new() -> Self {
        let cpus = aya::util::nr_cpus().unwrap_or(1).max(1);
        Self {
            keys: Vec::new(),
            values: Vec::new(),
            cpus,
            chunk: 4096,
            // Per-CPU values come padded to 8 bytes each; ours need no padding.
            supported: size_of::<V>().is_multiple_of(8),
        }
    }

    /// Calls `f` with each chunk of keys and their per-CPU values (`cpus` values per key, key
    /// by key). Returns false, having called nothing, when the kernel has no batch lookups for
    /// this map.
    fn for_each_chunk(&mut self, fd: RawFd, mut f: impl FnMut(&[K], &[V])) -> anyhow::Result<bool> {
        if !self.supported {
            return Ok(false);
        }
        // The kernel's batch position for hash maps is a bucket number.
        let (mut position, mut next) = (0u64, 0u64);
        let mut first = true;
        loop {
            self.keys.clear();
            self.values.clear();
            self.keys.resize(self.chunk, K::default_zeroed());
            self.values.resize(self.chunk * self.cpus, V::default());
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    (&raw const position) as u64
                },
                out_batch: (&raw mut next) as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: self.chunk as u32,
                map_fd: fd as u32,
                ..Default::default()
            };
            // SAFETY: bpf(2) with a BPF_MAP_LOOKUP_BATCH attribute whose buffers we own: the
            // kernel writes at most `count` keys and `count * cpus` values (each value is a
            // multiple of 8 bytes, checked in `new`), and one u32 bucket number at out_batch.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &raw mut attr,
                    size_of::<BatchAttr>() as libc::c_uint,
                )
            };
            let errno = (rc < 0).then(io::Error::last_os_error);
            let got = (attr.count as usize).min(self.chunk);
            match errno.as_ref().and_then(io::Error::raw_os_error) {
                None | Some(libc::ENOENT) => {}
                // One bucket holds more entries than a chunk: ask for more at once.
                Some(libc::ENOSPC) if self.chunk < 1 << 20 => {
                    self.chunk *= 4;
                    continue;
                }
                Some(libc::EINVAL | libc::ENOTSUP | libc::EOPNOTSUPP | 524) if first => {
                    self.supported = false;
                    return Ok(false);
                }
                Some(_) => {
                    return Err(errno.unwrap_or_else(|| io::Error::other("bpf")))
                        .context("BPF_MAP_LOOKUP_BATCH");
                }
            }
            f(&self.keys[..got], &self.values[..got * self.cpus]);
            if errno.is_some() {
                // ENOENT: that was the last chunk.
                break;
            }
            first = false;
            position = next;
        }
        // Keep the buffers for the next read, but not a burst's worth of them.
        if self.keys.capacity() > 4 * 4096 {
            self.keys = Vec::new();
            self.values = Vec::new();
            self.chunk = 4096;
        }
        Ok(true)
    }
}

/// A key type with an all-zero value (every bit pattern of a `Pod` key is valid).
trait Zeroed: Pod {
    fn default_zeroed() -> Self {
        // SAFETY: Pod types are plain integers and byte arrays, valid as all zeros.
        unsafe { std::mem::zeroed() }
    }
}

impl<K: Pod> Zeroed for K {}

/// Sums one entry's per-CPU values.
fn sum<V: Counters>(per_cpu: &[V]) -> V {
    let mut total = V::default();
    for value in per_cpu {
        total.merge(value);
    }
    total
}

/// Reads every entry of a per-CPU counter map, with its per-CPU values, batch by batch where
/// the kernel can.
fn read_all<K: Pod, V: Counters>(
    map: &PerCpuHashMap<MapData, K, V>,
    batch: &mut BatchReader<K, V>,
    mut f: impl FnMut(&K, &[V]),
) -> anyhow::Result<()> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let cpus = batch.cpus;
    if batch.for_each_chunk(fd, |keys, values| {
        for (key, per_cpu) in keys.iter().zip(values.chunks_exact(cpus)) {
            f(key, per_cpu);
        }
    })? {
        return Ok(());
    }
    for entry in map.iter() {
        let (key, per_cpu): (K, PerCpuValues<V>) = entry.context("reading a counter map")?;
        f(&key, &per_cpu);
    }
    Ok(())
}

/// Which slot of the kernel's per-hop counter array each observed device counts in. A slot
/// stays taken until its device's last interval was reported ([`HopStats::forget`]).
#[derive(Debug, Default)]
pub struct HopSlots {
    by_ifindex: BTreeMap<u32, u32>,
    /// Slots given back, lowest first; `next` has never been used.
    free: BTreeSet<u32>,
    next: u32,
}

impl HopSlots {
    /// The device's slot, taken now if it has none.
    pub fn take(&mut self, ifindex: u32) -> anyhow::Result<u32> {
        if let Some(&slot) = self.by_ifindex.get(&ifindex) {
            return Ok(slot);
        }
        let slot = match self.free.pop_first() {
            Some(slot) => slot,
            None if self.next < MAX_DEVICES => {
                self.next += 1;
                self.next - 1
            }
            None => anyhow::bail!(
                "more than {MAX_DEVICES} devices observed at once: name fewer with -i"
            ),
        };
        self.by_ifindex.insert(ifindex, slot);
        Ok(slot)
    }

    pub fn get(&self, ifindex: u32) -> Option<u32> {
        self.by_ifindex.get(&ifindex).copied()
    }

    /// Gives the device's slot back; returns it.
    pub fn release(&mut self, ifindex: u32) -> Option<u32> {
        let slot = self.by_ifindex.remove(&ifindex)?;
        self.free.insert(slot);
        Some(slot)
    }
}

/// The per-hop counter array and the totals last seen (two entries per device).
pub struct HopStats {
    map: PerCpuArray<MapData, HopCounters>,
    last: BTreeMap<HopKey, HopCounters>,
}

impl HopStats {
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(names::HOP_STATS)
            .context("map HOP_STATS missing from the eBPF object")?;
        Ok(Self {
            map: PerCpuArray::try_from(map)?,
            last: BTreeMap::new(),
        })
    }

    /// What each hop of `devices` (ifindex, slot) counted since the previous call; hops that
    /// counted nothing are left out. Two lookups per device: only the slots in use are read.
    pub fn interval(
        &mut self,
        epoch: u32,
        devices: impl IntoIterator<Item = (u32, u32)>,
    ) -> anyhow::Result<BTreeMap<HopKey, HopCounters>> {
        let mut totals = BTreeMap::new();
        for (ifindex, slot) in devices {
            for direction in [Direction::Ingress, Direction::Egress] {
                let index = hop_index(slot, direction);
                let per_cpu = self.map.get(&index, 0).context("reading HOP_STATS")?;
                let key = HopKey {
                    ifindex,
                    direction: direction as u32,
                };
                totals.insert(key, sum(&per_cpu));
            }
        }
        let deltas = totals
            .iter()
            .filter_map(|(key, now)| {
                let before = self.last.get(key).copied().unwrap_or_default();
                let delta = hop_delta(now, &before, epoch);
                (delta.packets > 0).then_some((*key, delta))
            })
            .collect();
        self.last = totals;
        Ok(deltas)
    }

    /// Clears a vanished device's counters in the kernel, so its slot can be given to another
    /// device, and forgets what was last seen of them.
    pub fn forget(&mut self, ifindex: u32, slot: u32) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for direction in [Direction::Ingress, Direction::Egress] {
            self.last.remove(&HopKey {
                ifindex,
                direction: direction as u32,
            });
            let zeros = PerCpuValues::try_from(vec![HopCounters::default(); cpus])?;
            self.map
                .set(hop_index(slot, direction), zeros, 0)
                .context("clearing a slot of HOP_STATS")?;
        }
        Ok(())
    }
}

/// What is kept of a flow entry between reads besides its key's hash (and of a flow cache
/// slot's holder, [`crate::flowcache`]): the additive counters, 40 bytes (a `FlowKey` and
/// `FlowCounters` are 148).
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct Seen {
    packets: u64,
    bytes: u64,
    segs: u64,
    /// Low 32 bits: a delta is right as long as fewer than 2^32 come in one interval.
    fragments: u32,
    oversize: u32,
    /// The read that last saw the entry.
    read: u32,
}

impl Seen {
    pub(crate) fn of(c: &FlowCounters, read: u32) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            segs: c.segs,
            fragments: c.fragments as u32,
            oversize: c.oversize as u32,
            read,
        }
    }

    /// `now` minus what was seen, with `now`'s gauges; the maximum only if it is `epoch`'s.
    pub(crate) fn delta(&self, now: &FlowCounters, epoch: u32) -> FlowCounters {
        FlowCounters {
            packets: now.packets.saturating_sub(self.packets),
            bytes: now.bytes.saturating_sub(self.bytes),
            segs: now.segs.saturating_sub(self.segs),
            fragments: u64::from((now.fragments as u32).wrapping_sub(self.fragments)),
            oversize: u64::from((now.oversize as u32).wrapping_sub(self.oversize)),
            max_len: if now.max_epoch == epoch {
                now.max_len
            } else {
                0
            },
            max_epoch: epoch,
            outer: now.outer,
            _pad: 0,
            generation: 0,
        }
    }

    /// Takes what was seen off a delta that includes it (additive counters only).
    pub(crate) fn take_off(&self, delta: &mut FlowCounters) {
        delta.packets = delta.packets.saturating_sub(self.packets);
        delta.bytes = delta.bytes.saturating_sub(self.bytes);
        delta.segs = delta.segs.saturating_sub(self.segs);
        delta.fragments = delta.fragments.saturating_sub(u64::from(self.fragments));
        delta.oversize = delta.oversize.saturating_sub(u64::from(self.oversize));
    }
}

fn key_hash(key: &FlowKey) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// What was seen of every flow entry at the last read, sorted by key hash: the hashes apart
/// from the counters, and every 16th hash apart again. A lookup searches that small index
/// (it stays in cache), then one 128-byte block of hashes, then reads one entry; a binary
/// search over 300,000 whole entries missed the cache a dozen times per lookup, and was most
/// of record's CPU at 100k flows.
#[derive(Default)]
struct Record {
    hashes: Vec<u64>,
    seen: Vec<Seen>,
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
    fn rebuild(&mut self, read: u32, fresh: &mut Vec<(u64, Seen)>) {
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
            self.seen.resize(total, Seen::default());
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
    /// deleted then.
    forgotten: BTreeSet<u32>,
    /// Keys of forgotten devices found in the last read, to delete.
    stale: Vec<FlowKey>,
    /// Entries deleted since [`FlowStats::take_deleted`].
    deleted: u64,
    /// Entries new in the current read, with their key hashes.
    fresh: Vec<(u64, Seen)>,
    read: u32,
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
        })
    }

    /// Hands `out` what each flow counted since the previous call, once per flow: map entries
    /// as the map is read, flows holding cache slots after it ([`crate::flowcache`]). Flows
    /// that counted nothing are left out, entries gone from the map (LRU eviction) are
    /// forgotten.
    pub fn interval(
        &mut self,
        epoch: u32,
        mut out: impl FnMut(&FlowKey, &FlowCounters) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.read = self.read.wrapping_add(1);
        let read = self.read;
        self.cache.read();
        let (record, fresh, pending) = (&mut self.record, &mut self.fresh, &mut self.pending);
        let (forgotten, stale, map) = (&self.forgotten, &mut self.stale, &self.map);
        let cache = self.cache.merge();
        let mut failed = None;
        read_all(map, &mut self.batch, |key, per_cpu| {
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
            let hash = key_hash(key);
            let delta = match record.find(hash) {
                Some(at) => {
                    let seen = &mut record.seen[at];
                    // Fewer packets than last time: the LRU evicted the entry and the
                    // kernel created it again, so all it holds is new.
                    let delta = if seen.packets <= now.packets {
                        seen.delta(now, epoch)
                    } else {
                        Seen::default().delta(now, epoch)
                    };
                    *seen = Seen::of(now, read);
                    delta
                }
                None => {
                    fresh.push((hash, Seen::of(now, read)));
                    Seen::default().delta(now, epoch)
                }
            };
            let mut delta = delta;
            if cache.settle(key, per_cpu, &mut delta) {
                pending.add(key, &delta);
            } else if delta.packets > 0
                && let Err(e) = out(key, &delta)
            {
                failed = Some(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        cache.deltas(epoch, |key, delta| {
            if !forgotten.contains(&key.ifindex) {
                pending.add(key, delta);
            }
        });
        for (key, delta) in pending.drain() {
            if delta.packets > 0 {
                out(&key, &delta)?;
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

fn take_map<K: Pod, V: Pod>(
    ebpf: &mut aya::Ebpf,
    name: &str,
) -> anyhow::Result<PerCpuHashMap<MapData, K, V>> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))?;
    Ok(PerCpuHashMap::try_from(map)?)
}

pub fn hop_stats(ebpf: &mut aya::Ebpf) -> anyhow::Result<HopStats> {
    HopStats::take(ebpf)
}

pub fn flow_stats(ebpf: &mut aya::Ebpf) -> anyhow::Result<FlowStats> {
    FlowStats::take(ebpf)
}

/// Flow entries the LRU evicted, from the kernel's count of entries it created: created minus
/// still there minus deleted by us. Exact once the map is quiet; while flows are created during
/// the read it can only lag behind, never run ahead (the creations are read first).
pub struct Evictions {
    inserts: aya::maps::PerCpuArray<MapData, u64>,
    /// Entries vxprobe deleted itself (those of vanished devices).
    deleted: u64,
    total: u64,
}

impl Evictions {
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(names::FLOW_INSERTS)
            .with_context(|| format!("map {} missing from the eBPF object", names::FLOW_INSERTS))?;
        Ok(Self {
            inserts: aya::maps::PerCpuArray::try_from(map)?,
            deleted: 0,
            total: 0,
        })
    }

    /// Entries created so far; read before the flow map is.
    pub fn created(&self) -> anyhow::Result<u64> {
        Ok(self
            .inserts
            .get(&0, 0)
            .context("reading FLOW_INSERTS")?
            .iter()
            .sum())
    }

    /// Evictions since the last call, given what was created before the flow map was read
    /// and how many entries it held.
    pub fn since_last(&mut self, created: u64, live: usize) -> u64 {
        let total = created.saturating_sub(live as u64 + self.deleted);
        let fresh = total.saturating_sub(self.total);
        self.total = self.total.max(total);
        fresh
    }

    pub fn deleted(&mut self, entries: u64) {
        self.deleted += entries;
    }

    /// All evictions so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// The interval number the TC programs stamp their maxima with.
pub struct Epoch {
    map: aya::maps::Array<MapData, u32>,
    current: u32,
}

impl Epoch {
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(names::EPOCH)
            .with_context(|| format!("map {} missing from the eBPF object", names::EPOCH))?;
        Ok(Self {
            map: aya::maps::Array::try_from(map)?,
            current: 0,
        })
    }

    /// The epoch that is ending.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Starts the next interval's epoch.
    pub fn advance(&mut self) -> anyhow::Result<()> {
        self.current = self.current.wrapping_add(1);
        self.map
            .set(0, self.current, 0)
            .context("writing the EPOCH map")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(packets: u64, fragments: u64) -> FlowCounters {
        FlowCounters {
            packets,
            bytes: packets * 100,
            segs: packets,
            fragments,
            max_len: 1500,
            max_epoch: 7,
            ..Default::default()
        }
    }

    #[test]
    fn deltas_from_what_was_seen() {
        let seen = Seen::of(&counters(10, 2), 1);
        let d = seen.delta(&counters(15, 3), 7);
        assert_eq!((d.packets, d.bytes, d.segs, d.fragments), (5, 500, 5, 1));
        assert_eq!(d.max_len, 1500, "the maximum of this epoch");
        assert_eq!(
            seen.delta(&counters(15, 3), 8).max_len,
            0,
            "an older maximum"
        );
        // The low 32 bits kept of the fragments still give the delta across a wrap.
        let seen = Seen::of(&counters(10, u64::from(u32::MAX)), 1);
        assert_eq!(seen.delta(&counters(11, 1 << 32), 7).fragments, 1);
    }

    #[test]
    fn the_record_finds_keeps_and_forgets() {
        let mut record = Record::default();
        let mut fresh: Vec<(u64, Seen)> = (0..1000u64)
            .rev()
            .map(|i| (i * 3, Seen::of(&counters(i, 0), 1)))
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
            (1, Seen::of(&counters(1, 0), 2)),
            (5000, Seen::of(&counters(2, 0), 2)),
        ];
        record.rebuild(2, &mut fresh);
        assert_eq!(record.len(), 502);
        assert!(record.hashes.is_sorted());
        assert_eq!(record.find(1), Some(1));
        assert_eq!(record.find(3), None);
        assert_eq!(record.find(6), Some(2));
        assert_eq!(record.find(5000), Some(501));
    }

    #[test]
    fn seen_is_small() {
        assert_eq!(size_of::<Seen>(), 40);
    }

    #[test]
    fn hop_slots_are_kept_reused_lowest_first_and_bounded() {
        let mut slots = HopSlots::default();
        assert_eq!(slots.take(10).unwrap(), 0);
        assert_eq!(slots.take(20).unwrap(), 1);
        assert_eq!(slots.take(30).unwrap(), 2);
        assert_eq!(slots.take(20).unwrap(), 1, "a device keeps its slot");
        assert_eq!(slots.release(20), Some(1));
        assert_eq!(slots.release(20), None);
        assert_eq!(slots.get(20), None);
        assert_eq!(slots.take(40).unwrap(), 1, "a released slot is reused");
        assert_eq!(slots.take(50).unwrap(), 3);
        for ifindex in 100..100 + MAX_DEVICES - 4 {
            slots.take(ifindex).unwrap();
        }
        let err = slots.take(1).unwrap_err().to_string();
        assert!(err.contains("2048 devices"), "{err}");
        assert_eq!(slots.get(10), Some(0));
    }
}
