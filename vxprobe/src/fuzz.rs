//! The fuzz targets' bodies, here so the targets (`fuzz/`, run by `cargo xtask fuzz`) and the
//! regression tests that replay their saved inputs (`tests/fuzz_regressions.rs`) run the same
//! code. Each takes arbitrary bytes and must not panic; where a result can be checked (the
//! pcapng evidence reads back, a clap error is one line) it is.

use std::{collections::HashMap, ffi::OsString, io::Cursor};

use pcap_file::pcapng::{Block, PcapNgReader, blocks::enhanced_packet::EnhancedPacketOption};
use rtnetlink::packet_core::Parseable as _;
use vxprobe_common::Direction;

use crate::{
    cli::{self, Cli},
    kernel::kallsyms::Kallsyms,
    kernel::stale,
    node::devices::{self, Device},
    node::facts::KernelRelease,
    node::watch::Tracker,
    observe::anomaly::{Anomaly, AnomalyKind, Enricher, Evidence, Link},
    observe::decode::{self, KernelEvent},
    observe::filter::FlowSelector,
    observe::packet::{self, Flow, Outer},
    sinks::pcap::EvidenceFile,
};

/// A fuzz target's body: arbitrary bytes in, a panic is a finding.
pub type Target = fn(&[u8]);

/// Every target by name: the name is its file in `fuzz/fuzz_targets/` and its directory of
/// saved inputs in `fuzz/seeds/` and `fuzz/regressions/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("decode", decode),
    ("packet", packet),
    ("pcap", pcap),
    ("cli", cli),
    ("netlink", netlink),
    ("text", text),
];

const KALLSYMS: &str = "ffffffff81000000 T _stext\nffffffff81a00000 t ip_rcv_core\n\
                        ffffffff81a01000 T kfree_skb_reason\nffffffff81b00000 T ip_fragment\n";

/// A ring-buffer record, as the kernel would hand it over: decoded, turned into an anomaly
/// (names, flow, hop), serialized as its JSON line, its packet written as evidence.
pub fn decode(data: &[u8]) {
    let Ok(event) = decode::decode(data) else {
        return;
    };
    let mut enricher = Enricher {
        reasons: Default::default(),
        kallsyms: Kallsyms::parse(KALLSYMS),
        netns: 4026531840,
        hops: HashMap::from([
            (2, ("eth0".to_owned(), Link::Ethernet)),
            (3, ("tun0".to_owned(), Link::Ip)),
        ]),
        devices: crate::node::netns::DeviceNames::new(4026531840),
    };
    let anomaly = match event {
        KernelEvent::Drop(e) => enricher.drop_event(&e),
        KernelEvent::Retransmit(e) => enricher.retransmit(&e),
        KernelEvent::Hop(e) => enricher.hop_event(&e),
        KernelEvent::FragNeeded(e) => enricher.frag_needed(&e),
        KernelEvent::Csum(e) => enricher.csum(&e),
        KernelEvent::SendError(mut e) => {
            // Stay off /proc and other namespaces: a send without a device names none, and
            // the device of one with an ifindex is already known.
            if e.addr_family == 0 && e.addr_ifindex == 0 {
                e.addr_family = 2;
            }
            enricher.devices.insert(
                u64::from(e.header.netns),
                e.addr_ifindex,
                Some(("tap0".to_owned(), 1500)),
            );
            enricher.send_error(&e)
        }
    };
    let _ = anomaly.is_benign();
    let _ = FlowSelector {
        host: Some([198, 19, 2, 2].into()),
        port: Some(4789),
        proto: None,
    }
    .matches(&anomaly);
    serde_json::to_string(&anomaly).expect("an anomaly serializes");
    write_and_read_back(128, &[anomaly]);
}

/// A packet from its IP header (kernel hooks) or its Ethernet header (TC hooks).
pub fn packet(data: &[u8]) {
    for ip in [Some(data), packet::parse_ethernet(data)]
        .into_iter()
        .flatten()
    {
        let Some(parsed) = packet::parse_ip(ip) else {
            continue;
        };
        if let Some(fragment) = &parsed.fragment
            && fragment.offset != 0
        {
            assert_eq!(
                (parsed.flow.sport, parsed.flow.dport),
                (0, 0),
                "a later fragment has no transport header"
            );
        }
        serde_json::to_string(&parsed.flow).expect("a flow serializes");
        if let Some(outer) = &parsed.outer {
            serde_json::to_string(outer).expect("an outer header serializes");
            assert!(outer.vni < 1 << 24, "a VNI has 24 bits");
        }
    }
}

/// Anomalies with arbitrary evidence through the pcapng writer, read back.
pub fn pcap(data: &[u8]) {
    let mut input = Input(data);
    let snaplen = u32::from(input.u16() % 300);
    let count = input.u8() % 6;
    let anomalies: Vec<Anomaly> = (0..count).map(|_| input.anomaly()).collect();
    write_and_read_back(snaplen, &anomalies);
}

/// Writes the anomalies' packets and checks the file: every packet with evidence is there,
/// cut at the snap length, with its comment, on an interface named after its hop.
fn write_and_read_back(snaplen: u32, anomalies: &[Anomaly]) {
    let mut file = EvidenceFile::from_writer(Vec::new(), snaplen).expect("a pcapng header");
    let mut expected = Vec::new();
    for anomaly in anomalies {
        match file.write(anomaly.kind.as_str(), anomaly) {
            Ok(true) => {
                let evidence = anomaly.evidence.as_ref().unwrap();
                let cut = evidence.bytes.len().min(snaplen as usize);
                let full = u32::try_from(evidence.bytes.len()).unwrap_or(u32::MAX);
                expected.push((
                    evidence.bytes[..cut].to_vec(),
                    evidence.original_len.max(full),
                ));
            }
            Ok(false) => assert!(anomaly.evidence.is_none()),
            Err(e) => panic!("writing evidence into memory failed: {e}"),
        }
    }
    let bytes = file.into_inner();
    let mut reader = PcapNgReader::new(Cursor::new(&bytes[..])).expect("the header reads back");
    let mut packets = Vec::new();
    let mut interfaces = 0usize;
    while let Some(block) = reader.next_block() {
        match block.expect("every block reads back") {
            Block::EnhancedPacket(packet) => {
                let comment = packet.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                    _ => None,
                });
                assert!(comment.is_some(), "every packet has its comment");
                assert!(
                    (packet.interface_id as usize) < interfaces,
                    "the packet's interface was described before it"
                );
                assert!(packet.original_len as usize >= packet.data.len());
                packets.push((packet.data.to_vec(), packet.original_len));
            }
            Block::InterfaceDescription(_) => interfaces += 1,
            other => panic!("a block the writer does not write: {other:?}"),
        }
    }
    assert_eq!(packets.len(), expected.len(), "one packet per evidence");
    for ((data, original), (want, want_original)) in packets.iter().zip(&expected) {
        assert_eq!(data, want);
        assert_eq!(original, want_original);
    }
}

/// A command line: NUL-separated arguments. Parsing never panics, and bad usage is one line.
pub fn cli(data: &[u8]) {
    use clap::Parser as _;
    use std::os::unix::ffi::OsStringExt as _;
    let args = data
        .split(|&b| b == 0)
        .take(24)
        .map(|a| OsString::from_vec(a.to_vec()));
    let argv = std::iter::once(OsString::from("vxprobe")).chain(args);
    match Cli::try_parse_from(argv) {
        Ok(parsed) => {
            let selection = match parsed.command {
                cli::Command::Record(args) => Some(args.selection),
                cli::Command::Top(args) => Some(args.selection),
                _ => None,
            };
            if let Some(selection) = selection {
                let _ = devices::matchers(&selection.ifaces);
                let _ = selection.flows().to_kernel();
            }
        }
        Err(e) if e.use_stderr() => {
            let line = crate::cli::usage_line(&e);
            assert!(!line.contains('\n'), "bad usage is one line: {line:?}");
            assert!(!line.is_empty());
        }
        Err(_) => {} // --help, --version
    }
}

/// Netlink messages as the kernel sends them: a link (device facts, the watcher's input) or
/// a TC filter (the stale-filter cleanup's input). The first byte picks which.
pub fn netlink(data: &[u8]) {
    let Some((&which, message)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        let Ok(link) = rtnetlink::packet_route::link::LinkMessage::parse(message) else {
            return;
        };
        let Some(device) = Device::from_message(&link) else {
            return;
        };
        let matchers = devices::matchers(&["cali*".to_owned()]).unwrap();
        for matchers in [Vec::new(), matchers] {
            let devices = std::slice::from_ref(&device);
            let _ = devices::selected(devices, &matchers, &devices::lower_devices(devices));
            let mut tracker = Tracker::new(matchers, &[]);
            let _ = tracker.link_changed(device.clone());
            let _ = tracker.link_removed(device.ifindex);
        }
    } else {
        let Ok(filter) = rtnetlink::packet_route::tc::TcMessage::parse(message) else {
            return;
        };
        let _ = stale::bpf_program(&filter);
    }
}

/// Text vxprobe reads from the kernel or the user: /proc/kallsyms, fdinfo, kernel releases,
/// durations and sizes.
pub fn text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let syms = Kallsyms::parse(&text);
    let addr = data
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    let _ = syms.name(addr);
    let _ = stale::prog_id(&text);
    let _ = KernelRelease::parse(&text);
    if let Ok(d) = cli::parse_duration(&text) {
        assert!(!d.is_zero());
    }
    if let Ok(d) = cli::parse_interval(&text) {
        assert!(d >= std::time::Duration::from_millis(10));
    }
    if let Ok(size) = cli::parse_ring_size(&text) {
        assert!(size.is_power_of_two());
    }
    let _ = cli::parse_kernel_release(&text);
}

/// Reads fields off the fuzzer's bytes; past the end everything is zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// A length-prefixed byte string (the length's high byte can make it long).
    fn bytes(&mut self) -> Vec<u8> {
        let n = usize::from(self.u16());
        self.take(n).to_vec()
    }

    fn text(&mut self) -> Option<String> {
        (self.u8() & 1 == 1).then(|| String::from_utf8_lossy(&self.bytes()).into_owned())
    }

    fn ip(&mut self) -> std::net::IpAddr {
        if self.u8() & 1 == 0 {
            std::net::Ipv4Addr::from(self.u32()).into()
        } else {
            std::net::Ipv6Addr::from(u128::from(self.u64()) << 64 | u128::from(self.u64())).into()
        }
    }

    fn anomaly(&mut self) -> Anomaly {
        const KINDS: [AnomalyKind; 5] = [
            AnomalyKind::Drop,
            AnomalyKind::CsumError,
            AnomalyKind::Oversize,
            AnomalyKind::Retransmit,
            AnomalyKind::Fragment,
        ];
        let mut a = Anomaly::new(KINDS[usize::from(self.u8()) % KINDS.len()], 0);
        a.netns = self.u64();
        a.ifname = self.text();
        a.ifindex = Some(self.u32());
        let flags = self.u8();
        a.dir = (flags & 1 != 0).then_some(Direction::Egress.as_str());
        a.reason = self.text();
        a.location = self.text();
        if flags & 2 != 0 {
            a.flow = Some(Flow {
                proto: self.u8(),
                src: self.ip(),
                dst: self.ip(),
                sport: self.u16(),
                dport: self.u16(),
            });
        }
        if flags & 4 != 0 {
            a.outer = Some(Outer {
                src: self.ip(),
                dst: self.ip(),
                sport: self.u16(),
                dport: self.u16(),
                vni: self.u32(),
            });
        }
        if flags & 8 != 0 {
            let link = if flags & 16 != 0 {
                Link::Ip
            } else {
                Link::Ethernet
            };
            a.evidence = Some(Evidence::new(link, self.bytes(), self.u32()));
            a.ktime_ns = self.u64();
        }
        a
    }
}
