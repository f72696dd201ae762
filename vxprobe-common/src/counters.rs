//! What the TC programs count, per hop and per flow at a hop: one struct for both, one merge,
//! one delta.

/// Counters of a hop, or of a flow at a hop, on one CPU (or summed, or as an interval's
/// delta).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Segments the packets stand for: `gso_segs` of GSO packets, 1 for the others.
    pub segs: u64,
    /// IP fragments (inner or outer).
    pub fragments: u64,
    /// Non-GSO packets longer than the device MTU allows.
    pub oversize: u64,
    /// Largest packet (skb length) seen in epoch `max_epoch`; user space bumps the epoch
    /// every interval, so this is the largest packet of the interval.
    pub max_len: u32,
    pub max_epoch: u32,
}

impl Counters {
    /// Adds `other`: another CPU's value, a later interval, or one packet (its length as
    /// the maximum, stamped with the current epoch). The newest epoch's maximum wins; within
    /// one epoch, the largest packet.
    #[inline(always)]
    pub fn merge(&mut self, other: &Counters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.segs += other.segs;
        self.fragments += other.fragments;
        self.oversize += other.oversize;
        if other.max_epoch != self.max_epoch {
            // Epochs only grow (one per interval, u32: no wrap in practice).
            if other.max_epoch > self.max_epoch {
                self.max_epoch = other.max_epoch;
                self.max_len = other.max_len;
            }
        } else if other.max_len > self.max_len {
            self.max_len = other.max_len;
        }
    }

    /// `self - before`, the additive counters (never below zero); the maximum is kept only if
    /// it belongs to `epoch`, which the delta is stamped with.
    pub fn delta(&self, before: &Counters, epoch: u32) -> Counters {
        Counters {
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
}

const _: () = assert!(core::mem::size_of::<Counters>() == 48);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers only, no padding (size asserted above).
unsafe impl aya::Pod for Counters {}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(packets: u64, max_len: u32, max_epoch: u32) -> Counters {
        Counters {
            packets,
            bytes: packets * 10,
            segs: packets,
            fragments: 0,
            oversize: 0,
            max_len,
            max_epoch,
        }
    }

    #[test]
    fn merge_adds_and_keeps_the_newest_epochs_maximum() {
        let mut a = c(1, 1500, 3);
        a.merge(&c(2, 100, 3));
        assert_eq!((a.packets, a.max_len, a.max_epoch), (3, 1500, 3));
        a.merge(&c(1, 64, 4));
        assert_eq!(
            (a.packets, a.max_len, a.max_epoch),
            (4, 64, 4),
            "a new epoch starts over"
        );
        a.merge(&c(1, 9000, 2));
        assert_eq!(
            (a.max_len, a.max_epoch),
            (64, 4),
            "an older epoch's maximum is not kept"
        );
    }

    #[test]
    fn delta_is_the_difference_with_this_epochs_maximum() {
        let d = c(10, 1500, 7).delta(&c(4, 0, 6), 7);
        assert_eq!(
            (d.packets, d.bytes, d.max_len, d.max_epoch),
            (6, 60, 1500, 7)
        );
        assert_eq!(c(10, 1500, 6).delta(&c(4, 0, 6), 7).max_len, 0);
        assert_eq!(
            c(1, 0, 0).delta(&c(4, 0, 0), 0).packets,
            0,
            "never below zero"
        );
    }
}
