//! Counters the TC programs keep in per-CPU maps, summed over CPUs and turned into interval
//! deltas: per hop, and per flow at each hop.

use std::{collections::BTreeMap, hash::Hash};

use anyhow::Context as _;
use aya::{
    Pod,
    maps::{MapData, PerCpuHashMap, PerCpuValues},
};
use vxprobe_common::{FlowCounters, FlowKey, HopCounters, HopKey, names};

/// Counter structs that can be summed over CPUs and subtracted between intervals.
pub trait Counters: Pod + Default + Copy {
    fn merge(&mut self, other: &Self);
    /// `self - before`, for the additive fields; gauges (outer) are kept, and the maximum is
    /// kept only if it belongs to `epoch`.
    fn since(&self, before: &Self, epoch: u32) -> Self;
    fn packets(&self) -> u64;
}

impl Counters for HopCounters {
    fn merge(&mut self, other: &Self) {
        HopCounters::merge(self, other);
    }

    fn since(&self, before: &Self, epoch: u32) -> Self {
        HopCounters {
            packets: self.packets.saturating_sub(before.packets),
            bytes: self.bytes.saturating_sub(before.bytes),
            segs: self.segs.saturating_sub(before.segs),
            fragments: self.fragments.saturating_sub(before.fragments),
            oversize: self.oversize.saturating_sub(before.oversize),
            max_len: if self.max_epoch == epoch {
                self.max_len
            } else {
                0
            },
            max_epoch: epoch,
        }
    }

    fn packets(&self) -> u64 {
        self.packets
    }
}

impl Counters for FlowCounters {
    fn merge(&mut self, other: &Self) {
        FlowCounters::merge(self, other);
    }

    fn since(&self, before: &Self, epoch: u32) -> Self {
        FlowCounters {
            packets: self.packets.saturating_sub(before.packets),
            bytes: self.bytes.saturating_sub(before.bytes),
            segs: self.segs.saturating_sub(before.segs),
            fragments: self.fragments.saturating_sub(before.fragments),
            oversize: self.oversize.saturating_sub(before.oversize),
            max_len: if self.max_epoch == epoch {
                self.max_len
            } else {
                0
            },
            max_epoch: epoch,
            outer: self.outer,
            _pad: 0,
        }
    }

    fn packets(&self) -> u64 {
        self.packets
    }
}

/// One per-CPU counter map and the totals last seen.
pub struct CounterMap<K: Pod + Ord + Hash, V: Counters> {
    map: PerCpuHashMap<MapData, K, V>,
    last: BTreeMap<K, V>,
}

pub type HopStats = CounterMap<HopKey, HopCounters>;
pub type FlowStats = CounterMap<FlowKey, FlowCounters>;

impl<K: Pod + Ord + Hash, V: Counters> CounterMap<K, V> {
    pub fn take(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))?;
        Ok(Self {
            map: PerCpuHashMap::try_from(map)?,
            last: BTreeMap::new(),
        })
    }

    fn totals(&self) -> anyhow::Result<BTreeMap<K, V>> {
        let mut totals = BTreeMap::new();
        for entry in self.map.iter() {
            let (key, per_cpu): (K, PerCpuValues<V>) = entry.context("reading a counter map")?;
            let mut sum = V::default();
            for value in per_cpu.iter() {
                sum.merge(value);
            }
            totals.insert(key, sum);
        }
        Ok(totals)
    }

    /// Keys in the map at the last [`interval`](Self::interval).
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Deletes the keys `which` picks from the kernel map (a vanished device's), with what was
    /// last seen of them; returns how many.
    pub fn forget(&mut self, which: impl Fn(&K) -> bool) -> u64 {
        let keys: Vec<K> = self.last.keys().filter(|k| which(k)).copied().collect();
        let mut deleted = 0;
        for key in keys {
            self.last.remove(&key);
            if self.map.remove(&key).is_ok() {
                deleted += 1;
            }
        }
        deleted
    }

    /// What each key counted since the previous call; keys that counted nothing are left out.
    /// Keys gone from the map (LRU eviction) are forgotten.
    pub fn interval(&mut self, epoch: u32) -> anyhow::Result<BTreeMap<K, V>> {
        let totals = self.totals()?;
        let deltas = totals
            .iter()
            .filter_map(|(key, now)| {
                let before = match self.last.get(key) {
                    // Fewer packets than last time: the LRU evicted the entry and the kernel
                    // created it again, so all it holds is new.
                    Some(before) if before.packets() <= now.packets() => *before,
                    _ => V::default(),
                };
                let delta = now.since(&before, epoch);
                (delta.packets() > 0).then_some((*key, delta))
            })
            .collect();
        self.last = totals;
        Ok(deltas)
    }
}

pub fn hop_stats(ebpf: &mut aya::Ebpf) -> anyhow::Result<HopStats> {
    CounterMap::take(ebpf, names::HOP_STATS)
}

pub fn flow_stats(ebpf: &mut aya::Ebpf) -> anyhow::Result<FlowStats> {
    CounterMap::take(ebpf, names::FLOW_STATS)
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
