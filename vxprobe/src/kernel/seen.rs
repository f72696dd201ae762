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
    fn seen_is_small() {
        assert_eq!(size_of::<FlowSeen>(), 40);
    }
}
