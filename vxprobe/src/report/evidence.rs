//! Evidence files (`record --pcap`) read back: how many packets, and each one's comment, so the
//! report's anomaly tables name the frame and say what it holds.

use std::path::Path;

use pcap_file::pcapng::{Block, PcapNgReader, blocks::enhanced_packet::EnhancedPacketOption};

#[derive(Clone, Debug)]
pub struct Evidence {
    /// The file as given.
    pub file: String,
    pub frames: u64,
    /// Comment of frame N at N-1.
    comments: Vec<String>,
}

impl Evidence {
    /// The comment of a frame (1-based, as Wireshark numbers them).
    pub fn comment(&self, frame: u64) -> Option<&str> {
        let index = usize::try_from(frame.checked_sub(1)?).ok()?;
        self.comments.get(index).map(String::as_str)
    }
}

/// Reads a pcapng evidence file; the error is one line naming it.
pub fn read(path: &Path) -> Result<Evidence, String> {
    let file = path.display().to_string();
    let handle = std::fs::File::open(path).map_err(|e| format!("cannot read {file}: {e}"))?;
    let mut reader = PcapNgReader::new(std::io::BufReader::new(handle))
        .map_err(|e| format!("{file} is not a pcapng file: {e}"))?;
    let mut comments = Vec::new();
    while let Some(block) = reader.next_block() {
        match block {
            Ok(Block::EnhancedPacket(packet)) => comments.push(
                packet
                    .options
                    .iter()
                    .find_map(|o| match o {
                        EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                        _ => None,
                    })
                    .unwrap_or_default(),
            ),
            Ok(_) => {}
            // A recorder killed mid-write leaves a cut last block: keep what was read.
            Err(_) => break,
        }
    }
    Ok(Evidence {
        file,
        frames: comments.len() as u64,
        comments,
    })
}
