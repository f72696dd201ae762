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
        }
    }

    /// What was seen, as counters next to `now`: the rarely counted fragments and oversize
    /// are kept as their low 32 bits, taken back to full width under `now`'s.
    fn before(&self, now: &Counters) -> Counters {
        let widen =
            |low: u32, now: u64| now.saturating_sub(u64::from((now as u32).wrapping_sub(low)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(packets: u64, fragments: u64) -> FlowCounters {
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
    fn seen_is_small() {
        assert_eq!(size_of::<FlowSeen>(), 40);
    }
}
