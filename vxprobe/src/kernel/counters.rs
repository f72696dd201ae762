//! The kernel's small counters: flow entries created (for evictions), the interval epoch the
//! TC programs stamp maxima with, events lost to a full ring buffer.

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray};
use vxprobe_common::{EventKind, names};

use super::batch::take_map;

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
        Ok(Self {
            inserts: take_map(ebpf, names::FLOW_INSERTS)?,
            deleted: 0,
            total: 0,
        })
    }

    /// Entries created so far; read before the flow map is.
    pub fn created(&self) -> anyhow::Result<u64> {
        Ok(super::retry::read(|| self.inserts.get(&0, 0))
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
        Ok(Self {
            map: take_map(ebpf, names::EPOCH)?,
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
        super::retry::read(|| self.map.set(0, self.current, 0)).context("writing the EPOCH map")
    }
}

/// Events lost to a full ring buffer, as counted by the kernel per kind.
pub struct LostCounter {
    map: PerCpuArray<MapData, u64>,
    seen: [u64; EventKind::COUNT as usize],
}

impl LostCounter {
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self {
            map,
            seen: Default::default(),
        }
    }

    /// (kind, newly lost) for every kind that lost events since the last call. All kinds or
    /// none: a read that fails leaves them all for the next call.
    pub fn since_last(&mut self) -> anyhow::Result<Vec<(EventKind, u64)>> {
        let mut totals = [0u64; EventKind::COUNT as usize];
        for kind in EventKind::ALL {
            let index = kind as u32;
            totals[index as usize] = super::retry::read(|| self.map.get(&index, 0))
                .context("reading the LOST map")?
                .iter()
                .sum();
        }
        let mut fresh = Vec::new();
        for kind in EventKind::ALL {
            let (total, seen) = (totals[kind as usize], &mut self.seen[kind as usize]);
            if total > *seen {
                fresh.push((kind, total - *seen));
                *seen = total;
            }
        }
        Ok(fresh)
    }
}

/// Runs of `ebpf`'s loaded programs the kernel skipped because one of them was already
/// running on that CPU (a softirq freeing an skb while a drop program runs in process context,
/// say): the `recursion_misses` of each program's fdinfo (Linux 5.12+; 0 before).
pub fn recursion_misses(ebpf: &aya::Ebpf) -> u64 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    ebpf.programs()
        .filter_map(|(_, program)| program.fd().ok())
        .filter_map(|fd| {
            let fd = fd.as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            fdinfo_field(&info, "recursion_misses")
        })
        .sum()
}

/// A numeric field of an fdinfo file (`name:\tvalue`).
pub fn fdinfo_field(fdinfo: &str, name: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fdinfo_fields_are_read_by_name() {
        let info = "prog_type:\t26\nrun_cnt:\t0\nrecursion_misses:\t12\nverified_insns:\t99\n";
        assert_eq!(super::fdinfo_field(info, "recursion_misses"), Some(12));
        assert_eq!(super::fdinfo_field(info, "misses"), None);
    }
}
