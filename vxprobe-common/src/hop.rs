//! Hops: a hop is one device in one direction. What a hop counts is a
//! [`Counters`](crate::Counters), as for a flow at a hop.

/// Direction of a TC hook, as seen by the device. Stored as `u8` in every key
/// (`direction as u8`; [`Direction::try_from`] back).
#[repr(u8)]
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

impl TryFrom<u8> for Direction {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(Direction::Ingress),
            1 => Ok(Direction::Egress),
            other => Err(other),
        }
    }
}

/// A hop: a device and a direction. `direction` holds a [`Direction`] as `u8`, as in
/// `FlowKey`, so the key has no invalid bit patterns.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HopKey {
    pub ifindex: u32,
    pub direction: u8,
    pub _pad: [u8; 3],
}

impl HopKey {
    pub fn new(ifindex: u32, direction: Direction) -> Self {
        Self {
            ifindex,
            direction: direction as u8,
            _pad: [0; 3],
        }
    }
}

const _: () = assert!(core::mem::size_of::<HopKey>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] with only integer fields and no padding (size asserted above), so
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::HopKey {}
}
