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
    /// `self - before`, for the additive fields; gauges (max_len, outer) are kept.
    fn since(&self, before: &Self) -> Self;
    fn packets(&self) -> u64;
}

impl Counters for HopCounters {
    fn merge(&mut self, other: &Self) {
        HopCounters::merge(self, other);
    }

    fn since(&self, before: &Self) -> Self {
        HopCounters {
            packets: self.packets.saturating_sub(before.packets),
            bytes: self.bytes.saturating_sub(before.bytes),
            segs: self.segs.saturating_sub(before.segs),
            fragments: self.fragments.saturating_sub(before.fragments),
            oversize: self.oversize.saturating_sub(before.oversize),
            max_len: self.max_len,
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

    fn since(&self, before: &Self) -> Self {
        FlowCounters {
            packets: self.packets.saturating_sub(before.packets),
            bytes: self.bytes.saturating_sub(before.bytes),
            segs: self.segs.saturating_sub(before.segs),
            fragments: self.fragments.saturating_sub(before.fragments),
            oversize: self.oversize.saturating_sub(before.oversize),
            max_len: self.max_len,
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

    /// What each key counted since the previous call; keys that counted nothing are left out.
    /// Keys gone from the map (LRU eviction) are forgotten.
    pub fn interval(&mut self) -> anyhow::Result<BTreeMap<K, V>> {
        let totals = self.totals()?;
        let deltas = totals
            .iter()
            .filter_map(|(key, now)| {
                let delta = match self.last.get(key) {
                    Some(before) => now.since(before),
                    None => *now,
                };
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
