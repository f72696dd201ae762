//! The per-hop counters: an array in which each observed device counts at the slot it is
//! given here (two entries, ingress and egress), read as interval deltas.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use vxprobe_common::{Counters, Direction, HopKey, MAX_DEVICES, hop_index, names};

use super::batch::{sum, take_map};

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
    map: PerCpuArray<MapData, Counters>,
    last: BTreeMap<HopKey, Counters>,
}

impl HopStats {
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        Ok(Self {
            map: take_map(ebpf, names::HOP_STATS)?,
            last: BTreeMap::new(),
        })
    }

    /// What each hop of `devices` (ifindex, slot) counted since the previous call; hops that
    /// counted nothing are left out. Two lookups per device: only the slots in use are read.
    pub fn interval(
        &mut self,
        epoch: u32,
        devices: impl IntoIterator<Item = (u32, u32)>,
    ) -> anyhow::Result<BTreeMap<HopKey, Counters>> {
        let mut totals = BTreeMap::new();
        for (ifindex, slot) in devices {
            for direction in [Direction::Ingress, Direction::Egress] {
                let index = hop_index(slot, direction);
                let per_cpu =
                    super::retry::read(|| self.map.get(&index, 0)).context("reading HOP_STATS")?;
                let key = HopKey::new(ifindex, direction);
                totals.insert(key, sum(&per_cpu));
            }
        }
        let deltas = totals
            .iter()
            .filter_map(|(key, now)| {
                let before = self.last.get(key).copied().unwrap_or_default();
                let delta = now.delta(&before, epoch);
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
            self.last.remove(&HopKey::new(ifindex, direction));
            let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])?;
            self.map
                .set(hop_index(slot, direction), zeros, 0)
                .context("clearing a slot of HOP_STATS")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
