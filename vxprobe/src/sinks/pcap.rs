//! Evidence: the packets behind anomaly events as a pcapng file that tshark and Wireshark
//! open. One interface block per hop (device, namespace and link type), each packet cut at
//! the end of its headers (or `--snaplen`) and commented with its kind, reason, hop and flow;
//! its time is the anomaly's `ts` (the kernel's clock, [`crate::observe::clock`]).

use std::{
    borrow::Cow,
    collections::HashMap,
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};

use crate::{
    node::pods::PodId,
    observe::anomaly::{Anomaly, Link},
    observe::pipeline::Sink,
    observe::report::{IntervalReport, Summary},
};

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("pcapng: {0}")]
    Pcap(#[from] pcap_file::PcapError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    File(#[from] super::files::FileError),
}

/// How much of each packet the evidence keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snap {
    /// Without `--snaplen`: up to the end of the innermost transport header, at most
    /// [`SNAP_LEN`] bytes: headers, not the user's payload.
    Headers,
    /// `--snaplen N`: N bytes (at most what the kernel captured).
    Bytes(u32),
}

/// Bytes the kernel captures of a packet, and so the most evidence keeps.
pub const SNAP_LEN: u32 = vxprobe_common::SNAP_LEN as u32;

impl Snap {
    /// From `--snaplen`.
    pub fn from_flag(snaplen: Option<u32>) -> Self {
        snaplen.map_or(Snap::Headers, Snap::Bytes)
    }

    /// The snap length interface blocks announce.
    fn len(self) -> u32 {
        match self {
            Snap::Headers => SNAP_LEN,
            Snap::Bytes(n) => n,
        }
    }

    /// How many of a packet's bytes are kept.
    fn keep(self, evidence: &crate::observe::anomaly::Evidence) -> usize {
        let all = evidence.bytes.len();
        match self {
            Snap::Headers => evidence.headers.unwrap_or(all).min(SNAP_LEN as usize),
            Snap::Bytes(n) => n as usize,
        }
        .min(all)
    }
}

/// The evidence file; `W` is a `BufWriter<File>` except in tests and fuzzing.
pub struct EvidenceFile<W: Write = BufWriter<File>> {
    writer: PcapNgWriter<W>,
    /// Interface ids by (namespace, device name, link type).
    interfaces: HashMap<(u64, String, Link), u32>,
    snap: Snap,
    packets: u64,
    /// `--max-output-size`, shared with the JSON lines.
    budget: Option<std::sync::Arc<super::jsonl::Budget>>,
    /// Packets not written for want of room.
    unwritten: u64,
}

impl EvidenceFile {
    /// Creates the file (mode 0600, never through a link: [`super::files::create`]).
    pub fn create(path: &Path, snap: Snap) -> Result<Self, PcapError> {
        let file = super::files::create(path)?;
        Self::with_snap(BufWriter::new(file), snap)
    }

    /// The file's device and inode.
    pub fn identity(&mut self) -> Option<super::files::Identity> {
        super::files::identity(self.writer.get_mut().get_ref())
    }
}

impl<W: Write> EvidenceFile<W> {
    /// Packets cut at `snaplen` bytes.
    pub fn from_writer(writer: W, snaplen: u32) -> Result<Self, PcapError> {
        Self::with_snap(writer, Snap::Bytes(snaplen))
    }

    pub fn with_snap(writer: W, snap: Snap) -> Result<Self, PcapError> {
        Ok(Self {
            writer: PcapNgWriter::new(writer)?,
            interfaces: HashMap::new(),
            snap,
            packets: 0,
            budget: None,
            unwritten: 0,
        })
    }

    /// Within `budget` (`--max-output-size`).
    pub fn within(mut self, budget: std::sync::Arc<super::jsonl::Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The writer, with everything written so far.
    pub fn into_inner(self) -> W {
        self.writer.into_inner()
    }

    /// Writes the anomaly's packet, if it has one; returns whether it did.
    pub fn write(&mut self, kind: &str, anomaly: &Anomaly) -> Result<bool, PcapError> {
        let Some(evidence) = &anomaly.evidence else {
            return Ok(false);
        };
        let hop = anomaly
            .ifname
            .clone()
            .unwrap_or_else(|| "(socket)".to_owned());
        let pod = anomaly.pod.as_ref().map(|p| &p.id);
        let data = &evidence.bytes[..self.snap.keep(evidence)];
        let comment = bounded(comment(kind, anomaly));
        if let Some(budget) = &self.budget {
            // The enhanced packet block, its comment, and an interface block if it is new.
            let pad = |n: usize| n.div_ceil(4) as u64 * 4;
            if !budget.take(32 + pad(data.len()) + pad(comment.len()) + 8 + 64) {
                self.unwritten += 1;
                return Ok(false);
            }
        }
        let interface_id = self.interface(anomaly.netns, &hop, evidence.link, pod)?;
        // A packet is never shorter than what was captured of it (readers reject such a
        // block); trust the bytes over a length field that says otherwise.
        let original_len = evidence
            .original_len
            .max(u32::try_from(evidence.bytes.len()).unwrap_or(u32::MAX));
        let timestamp = anomaly
            .ts
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.writer.write_pcapng_block(EnhancedPacketBlock {
            interface_id,
            timestamp,
            original_len,
            data: Cow::Borrowed(data),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
        })?;
        self.packets += 1;
        Ok(true)
    }

    /// The interface block of a hop, written at its first packet; its description names the
    /// namespace and the pod (of the namespace, or at the device's other end).
    fn interface(
        &mut self,
        netns: u64,
        hop: &str,
        link: Link,
        pod: Option<&PodId>,
    ) -> Result<u32, PcapError> {
        let key = (netns, hop.to_owned(), link);
        if let Some(id) = self.interfaces.get(&key) {
            return Ok(*id);
        }
        let id = self.interfaces.len() as u32;
        self.writer.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: match link {
                Link::Ethernet => DataLink::ETHERNET,
                Link::Ip => DataLink::RAW,
            },
            snaplen: self.snap.len(),
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(bounded(hop.to_owned()))),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(bounded(match pod {
                    Some(pod) => format!("netns {netns} pod={pod}"),
                    None => format!("netns {netns}"),
                }))),
                // Timestamps are written in nanoseconds.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
        self.interfaces.insert(key, id);
        Ok(id)
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.get_mut().flush()
    }
}

/// Longest option text written. A pcapng option's length is 16 bits and pcap-file truncates a
/// longer one silently, which corrupts the file; nothing vxprobe writes comes near this.
const MAX_OPTION: usize = 4096;

/// `text` cut to [`MAX_OPTION`] bytes at a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_OPTION {
        let mut end = MAX_OPTION;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `csum_error reason=UDP_CSUM hop=eth0/ingress netns=4026532290 pod=shop/web-0 udp
/// 198.19.1.2:40000 > 198.19.2.2:5555`
fn comment(kind: &str, a: &Anomaly) -> String {
    let mut text = kind.to_owned();
    if let Some(reason) = &a.reason {
        text.push_str(&format!(" reason={reason}"));
    }
    if let Some(location) = &a.location {
        text.push_str(&format!(" location={location}"));
    }
    let hop = a.ifname.as_deref().unwrap_or("-");
    match a.dir {
        Some(dir) => text.push_str(&format!(" hop={hop}/{dir}")),
        None => text.push_str(&format!(" hop={hop}")),
    }
    text.push_str(&format!(" netns={}", a.netns));
    if let Some(pod) = &a.pod {
        text.push_str(&format!(" pod={}", pod.id));
    }
    if let Some(f) = &a.flow {
        text.push_str(&format!(
            " {} {}:{} > {}:{}",
            f.proto_name(),
            f.src,
            f.sport,
            f.dst,
            f.dport
        ));
    }
    if let Some(o) = &a.outer {
        text.push_str(&format!(" vni={}", o.vni));
    }
    text
}

impl<W: Write> Sink for EvidenceFile<W> {
    fn anomaly(&mut self, anomaly: &Anomaly) -> anyhow::Result<()> {
        self.write(anomaly.kind.as_str(), anomaly)?;
        Ok(())
    }

    fn interval(&mut self, _report: &IntervalReport) -> anyhow::Result<()> {
        Ok(self.flush()?)
    }

    fn finish(&mut self, summary: &mut Summary) -> anyhow::Result<()> {
        self.flush()?;
        summary.evidence_packets = Some(self.packets);
        if self.budget.is_some() {
            summary.unwritten_packets = Some(self.unwritten);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_longer_than_16_bits_are_cut_and_the_file_reads_back() {
        let mut anomaly =
            crate::observe::anomaly::Anomaly::new(crate::observe::anomaly::AnomalyKind::Drop, 1);
        anomaly.reason = Some("é".repeat(40_000));
        anomaly.ifname = Some("x".repeat(70_000));
        anomaly.evidence = Some(crate::observe::anomaly::Evidence::new(
            Link::Ip,
            vec![0x45; 60],
            10,
        ));
        let mut file = EvidenceFile::from_writer(Vec::new(), 128).unwrap();
        assert!(file.write("drop", &anomaly).unwrap());
        let bytes = file.into_inner();
        let mut reader = pcap_file::pcapng::PcapNgReader::new(&bytes[..]).unwrap();
        let mut packets = 0;
        while let Some(block) = reader.next_block() {
            if let pcap_file::pcapng::Block::EnhancedPacket(p) = block.unwrap() {
                assert_eq!(p.original_len, 60, "never shorter than the captured bytes");
                packets += 1;
            }
        }
        assert_eq!(packets, 1);
        assert!(bounded("é".repeat(3000)).len() <= MAX_OPTION);
    }
}
