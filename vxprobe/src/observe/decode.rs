//! Ring-buffer records to typed events: the one place kernel bytes are interpreted.

use vxprobe_common::{
    CsumEvent, DropEvent, EventHeader, EventKind, FragNeededEvent, HopEvent, RetransmitEvent,
    SendErrorEvent,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than its {needed}-byte {what}")]
    Short {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Drop(DropEvent),
    Retransmit(RetransmitEvent),
    SendError(SendErrorEvent),
    /// A fragment or an oversized packet at a TC hook.
    Hop(HopEvent),
    FragNeeded(FragNeededEvent),
    Csum(CsumEvent),
}

/// Copies a `T` out of `bytes` after checking the length.
fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let needed = size_of::<T>();
    if bytes.len() < needed {
        return Err(DecodeError::Short {
            what,
            needed,
            got: bytes.len(),
        });
    }
    // SAFETY: the length is checked above; T is one of vxprobe-common's #[repr(C)] event
    // structs made only of integers and byte arrays, so any bit pattern is a valid value, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read(bytes, "event header")?;
    match EventKind::try_from(header.kind).map_err(DecodeError::UnknownKind)? {
        EventKind::Drop => Ok(KernelEvent::Drop(read(bytes, "drop event")?)),
        EventKind::Retransmit => Ok(KernelEvent::Retransmit(read(bytes, "retransmit event")?)),
        EventKind::SendError => Ok(KernelEvent::SendError(read(bytes, "send error event")?)),
        EventKind::FragNeeded => Ok(KernelEvent::FragNeeded(read(bytes, "frag-needed event")?)),
        EventKind::Csum => Ok(KernelEvent::Csum(read(bytes, "checksum event")?)),
        EventKind::Fragment | EventKind::HopOversize => {
            Ok(KernelEvent::Hop(read(bytes, "hop event")?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[1, 0]), Err(DecodeError::Short { .. })));
        let mut header = [0u8; 16];
        header[0] = 99;
        assert_eq!(decode(&header), Err(DecodeError::UnknownKind(99)));
        header[0] = EventKind::Drop as u8;
        assert!(matches!(
            decode(&header),
            Err(DecodeError::Short {
                what: "drop event",
                ..
            })
        ));
    }

    #[test]
    fn a_drop_record_round_trips() {
        let mut bytes = vec![0u8; size_of::<DropEvent>()];
        bytes[0] = EventKind::Drop as u8;
        bytes[24..28].copy_from_slice(&11u32.to_ne_bytes()); // reason
        let Ok(KernelEvent::Drop(event)) = decode(&bytes) else {
            panic!("not a drop");
        };
        assert_eq!(event.reason, 11);
    }
}
