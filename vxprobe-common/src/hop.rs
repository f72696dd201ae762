//! Per-hop counters: a hop is one device in one direction.

/// Direction of a TC hook, as seen by the device.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl TryFrom<u32> for Direction {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(Direction::Ingress),
            1 => Ok(Direction::Egress),
            other => Err(other),
        }
    }
}

/// Key of the per-CPU hop map. `direction` holds a [`Direction`] as `u32` so the key has no
/// padding and no invalid bit patterns.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HopKey {
    pub ifindex: u32,
    pub direction: u32,
}

/// Counters of one hop on one CPU. Only the CPU that owns the slot writes it, so plain adds
/// are race-free; user space sums the CPUs.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct HopCounters {
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

impl HopCounters {
    /// Adds `other` (another CPU's slot, or a later interval).
    pub fn merge(&mut self, other: &HopCounters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.segs += other.segs;
        self.fragments += other.fragments;
        self.oversize += other.oversize;
        // The newest epoch wins; within one epoch, the largest packet.
        if (other.max_epoch, other.max_len) > (self.max_epoch, self.max_len) {
            self.max_epoch = other.max_epoch;
            self.max_len = other.max_len;
        }
    }
}

const _: () = assert!(core::mem::size_of::<HopKey>() == 8);
const _: () = assert!(core::mem::size_of::<HopCounters>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are #[repr(C)] with only integer fields and no padding (sizes asserted
    // above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::HopKey {}
    unsafe impl aya::Pod for super::HopCounters {}
}
