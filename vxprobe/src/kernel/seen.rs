//! What was seen of a flow's counters at the last read: enough to turn the next read into a
//! delta, kept compact (40 bytes) for every flow entry and every flow cache slot.

use vxprobe_common::FlowCounters;

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
}

impl FlowSeen {
    pub fn of(c: &FlowCounters, read: u32) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            segs: c.segs,
            fragments: c.fragments as u32,
            oversize: c.oversize as u32,
            read,
        }
    }

    /// What the entry counted since it was seen: `now` minus what was seen, or all of `now`
    /// when the entry cannot be the one seen (the LRU evicted it and the kernel created it
    /// again): a counter went down, or more fragments or oversized packets came than packets
    /// (each packet adds at most one of each). Without that check a recreated entry with fewer
    /// fragments than seen read as four billion of them.
    pub fn since(&self, now: &FlowCounters, epoch: u32) -> FlowCounters {
        let delta = self.delta(now, epoch);
        let continues = now.packets >= self.packets
            && now.bytes >= self.bytes
            && now.segs >= self.segs
            && delta.fragments <= delta.packets
            && delta.oversize <= delta.packets;
        if continues {
            delta
        } else {
            Self::default().delta(now, epoch)
        }
    }

    /// `now` minus what was seen, with `now`'s gauges; the maximum only if it is `epoch`'s.
    pub fn delta(&self, now: &FlowCounters, epoch: u32) -> FlowCounters {
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
    pub fn take_off(&self, delta: &mut FlowCounters) {
        delta.packets = delta.packets.saturating_sub(self.packets);
        delta.bytes = delta.bytes.saturating_sub(self.bytes);
        delta.segs = delta.segs.saturating_sub(self.segs);
        delta.fragments = delta.fragments.saturating_sub(u64::from(self.fragments));
        delta.oversize = delta.oversize.saturating_sub(u64::from(self.oversize));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A flow's counters for tests: `packets` of 100 bytes, one segment each, the largest
    /// 1500 bytes in epoch 7.
    pub(in crate::kernel) fn counters(packets: u64, fragments: u64) -> FlowCounters {
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
        let seen = FlowSeen::of(&counters(10, 2), 1);
        let d = seen.delta(&counters(15, 3), 7);
        assert_eq!((d.packets, d.bytes, d.segs, d.fragments), (5, 500, 5, 1));
        assert_eq!(d.max_len, 1500, "the maximum of this epoch");
        assert_eq!(
            seen.delta(&counters(15, 3), 8).max_len,
            0,
            "an older maximum"
        );
        // The low 32 bits kept of the fragments still give the delta across a wrap.
        let seen = FlowSeen::of(&counters(10, u64::from(u32::MAX)), 1);
        assert_eq!(seen.delta(&counters(11, 1 << 32), 7).fragments, 1);
    }
    #[test]
    fn a_recreated_entry_counts_from_zero() {
        let seen = FlowSeen::of(&counters(10, 5), 1);
        // Fewer packets: evicted and created again, all it holds is new.
        assert_eq!(seen.since(&counters(4, 1), 7).packets, 4);
        // More packets than seen but fewer fragments: created again, not 2^32 - 4 fragments.
        let d = seen.since(&counters(12, 1), 7);
        assert_eq!((d.packets, d.fragments), (12, 1));
        // The same entry, counting on.
        let d = seen.since(&counters(12, 6), 7);
        assert_eq!((d.packets, d.fragments), (2, 1));
        // More oversized packets than packets since: not the entry seen.
        let mut now = counters(11, 5);
        now.oversize = 3;
        assert_eq!(seen.since(&now, 7).oversize, 3);
    }

    #[test]
    fn seen_is_small() {
        assert_eq!(size_of::<FlowSeen>(), 40);
    }
}
