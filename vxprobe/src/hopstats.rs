//! Per-hop counters: read from the kernel's per-CPU map, summed, turned into interval deltas.

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuHashMap};
use vxprobe_common::{HopCounters, HopKey, names};

/// Owns the kernel's hop map and the totals last seen, to report what changed since.
pub struct HopStats {
    map: PerCpuHashMap<MapData, HopKey, HopCounters>,
    last: BTreeMap<HopKey, HopCounters>,
}

impl HopStats {
    pub fn new(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(names::HOP_STATS)
            .with_context(|| format!("map {} missing from the eBPF object", names::HOP_STATS))?;
        Ok(Self {
            map: PerCpuHashMap::try_from(map)?,
            last: BTreeMap::new(),
        })
    }

    /// Totals since attach, summed over CPUs.
    fn totals(&self) -> anyhow::Result<BTreeMap<HopKey, HopCounters>> {
        let mut totals = BTreeMap::new();
        for entry in self.map.iter() {
            let (key, per_cpu) = entry.context("reading the hop map")?;
            let sum = per_cpu
                .iter()
                .fold(HopCounters::default(), |acc, c| HopCounters {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                });
            totals.insert(key, sum);
        }
        Ok(totals)
    }

    /// What each hop counted since the previous call.
    pub fn interval(&mut self) -> anyhow::Result<BTreeMap<HopKey, HopCounters>> {
        let totals = self.totals()?;
        let deltas = totals
            .iter()
            .map(|(key, now)| {
                let before = self.last.get(key).copied().unwrap_or_default();
                let delta = HopCounters {
                    packets: now.packets.saturating_sub(before.packets),
                    bytes: now.bytes.saturating_sub(before.bytes),
                };
                (*key, delta)
            })
            .collect();
        self.last = totals;
        Ok(deltas)
    }
}
