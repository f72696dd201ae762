//! What was seen of a flow's counters at the last read: enough to turn the next read into a
//! delta, kept compact (40 bytes) for every flow entry and every flow cache slot.

use vxprobe_common::{Counters, FlowCounters};

/// What is kept of a flow entry between reads besides its key's hash (and of a flow cache
/// slot's holder, [`crate::kernel::flowcache`]): the additive counters, 40 bytes (a `FlowKey` and
/// `FlowCounters` are 148).
#[derive(Copy, Clone, Debug, Default)]
pub struct FlowSeen {
    pub(super) packets: u64,
    pub(super) bytes: u64,
    pub(super) segs: u64,
    /// Low 32 bits: a delta is right as long as fewer than 2^32 come in one interval.
    pub(super) fragments: u32,
    pub(super) oversize: u32,
    /// The read that last saw the entry.
    pub(super) read: u32,
    /// Handed out at least once (so counted among the run's distinct entries).
    pub(super) reported: bool,
}

impl FlowSeen {
    pub fn of(c: &FlowCounters, read: u32) -> Self {
        let c = &c.counters;
        Self {
            packets: c.packets,
            bytes: c.bytes,
            segs: c.segs,
            fragments: c.fragments as u32,
            oversize: c.oversize as u32,
            read,
            reported: false,
        }
    }

    /// What the entry counted since it was seen: `now` minus what was seen, or all of `now`
    /// when the entry cannot be the one seen (the LRU evicted it and the kernel created it
    /// again): a counter went down, or more fragments or oversized packets came than packets
    /// (each packet adds at most one of each). Without that check a recreated entry with fewer
    /// fragments than seen read as four billion of them.
    pub fn since(&self, now: &FlowCounters, epoch: u32) -> FlowCounters {
        let c = &now.counters;
        let continues = c.packets >= self.packets
            && c.bytes >= self.bytes
            && c.segs >= self.segs
            && low_since(self.fragments, c.fragments) <= c.packets - self.packets
            && low_since(self.oversize, c.oversize) <= c.packets - self.packets;
        if continues {
            self.delta(now, epoch)
        } else {
            Self::default().delta(now, epoch)
        }
    }

    /// What was seen, as counters next to `now`: the rarely counted fragments and oversize
    /// are kept as their low 32 bits, taken back to full width under `now`'s.
    fn before(&self, now: &Counters) -> Counters {
        let widen = |low: u32, now: u64| now.saturating_sub(low_since(low, now));
        Counters {
            packets: self.packets,
            bytes: self.bytes,
            segs: self.segs,
            fragments: widen(self.fragments, now.fragments),
            oversize: widen(self.oversize, now.oversize),
            max_len: 0,
            max_epoch: 0,
        }
    }

    /// `now` minus what was seen ([`Counters::delta`]), with `now`'s tunnel header.
    pub fn delta(&self, now: &FlowCounters, epoch: u32) -> FlowCounters {
        FlowCounters {
            counters: now.counters.delta(&self.before(&now.counters), epoch),
            outer: now.outer,
            _pad: 0,
            generation: 0,
        }
    }

    /// Takes what was seen off a delta that includes it (additive counters only).
    pub fn take_off(&self, delta: &mut FlowCounters) {
        let epoch = delta.counters.max_epoch;
        let (max_len, before) = (delta.counters.max_len, self.before(&delta.counters));
        delta.counters = delta.counters.delta(&before, epoch);
        delta.counters.max_len = max_len;
    }
}

/// How much a counter kept as its low 32 bits (`low`) grew to `now`: right across a wrap, as
/// long as fewer than 2^32 came between.
fn low_since(low: u32, now: u64) -> u64 {
    u64::from((now as u32).wrapping_sub(low))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A flow's counters for tests: `packets` of 100 bytes, one segment each, the largest
    /// 1500 bytes in epoch 7.
    pub(in crate::kernel) fn counters(packets: u64, fragments: u64) -> FlowCounters {
        FlowCounters {
            counters: Counters {
                packets,
                bytes: packets * 100,
                segs: packets,
                fragments,
                oversize: 0,
                max_len: 1500,
                max_epoch: 7,
            },
            ..Default::default()
        }
    }

    #[test]
    fn deltas_from_what_was_seen() {
        let seen = FlowSeen::of(&counters(10, 2), 1);
        let d = seen.delta(&counters(15, 3), 7);
        let c = &d.counters;
        assert_eq!((c.packets, c.bytes, c.segs, c.fragments), (5, 500, 5, 1));
        assert_eq!(c.max_len, 1500, "the maximum of this epoch");
        assert_eq!(
            seen.delta(&counters(15, 3), 8).counters.max_len,
            0,
            "an older maximum"
        );
        // The low 32 bits kept of the fragments still give the delta across a wrap.
        let seen = FlowSeen::of(&counters(10, u64::from(u32::MAX)), 1);
        assert_eq!(seen.delta(&counters(11, 1 << 32), 7).counters.fragments, 1);
    }
    #[test]
    fn a_recreated_entry_counts_from_zero() {
        let seen = FlowSeen::of(&counters(10, 5), 1);
        // Fewer packets: evicted and created again, all it holds is new.
        assert_eq!(seen.since(&counters(4, 1), 7).counters.packets, 4);
        // More packets than seen but fewer fragments: created again, not 2^32 - 4 fragments.
        let d = seen.since(&counters(12, 1), 7).counters;
        assert_eq!((d.packets, d.fragments), (12, 1));
        // The same entry, counting on.
        let d = seen.since(&counters(12, 6), 7).counters;
        assert_eq!((d.packets, d.fragments), (2, 1));
        // More oversized packets than packets since: not the entry seen.
        let mut now = counters(11, 5);
        now.counters.oversize = 3;
        assert_eq!(seen.since(&now, 7).counters.oversize, 3);
    }

    #[test]
    fn seen_is_small() {
        assert_eq!(size_of::<FlowSeen>(), 40);
    }
}
