//! The demo's story: traffic between the pods, then the failure modes of the incidents one
//! after another, each started, fed every second, and undone before the next.

use std::{
    io,
    process::{Child, Stdio},
};

use super::{Lab, POD_HOST_DEV, TAP_DEV, VXLAN_DEV, VXLAN_PORT, faults};

/// The phases of the demo, in order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Baseline,
    BadChecksums,
    MtuMismatch,
    TapOversize,
    RandomLoss,
    OffloadOff,
    /// Only with a switch between the nodes ([`super::LabOptions::switch`]).
    WireLoss,
}

/// UDP port the bad-checksum datagrams go to (a port nobody listens on, as the incident's
/// mangled packets belonged to no one's expectations).
pub const BAD_CSUM_PORT: u16 = 5555;
/// UDP port of the pod's steady datagrams (the "UDP between pods" traffic).
pub const UDP_PORT: u16 = 7000;

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Baseline,
        Phase::BadChecksums,
        Phase::MtuMismatch,
        Phase::TapOversize,
        Phase::RandomLoss,
        Phase::OffloadOff,
    ];

    /// Every phase, then loss on the wire between the nodes (a lab with a switch).
    pub const WITH_SWITCH: [Phase; 7] = {
        let mut phases = [Phase::WireLoss; 7];
        let mut i = 0;
        while i < Phase::ALL.len() {
            phases[i] = Phase::ALL[i];
            i += 1;
        }
        phases
    };

    /// What the person watching is told.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline: TCP bulk + UDP between the pods, no fault",
            Phase::BadChecksums => "fault: bad UDP checksums pod1 -> pod2 (csum_error, UDP_CSUM)",
            Phase::MtuMismatch => {
                "fault: MTU mismatch, pod1 and cali0 at 1500 over a 1450 overlay (oversize)"
            }
            Phase::TapOversize => {
                "fault: oversized AF_PACKET sends into tap0, TSO/GSO off (EMSGSIZE)"
            }
            Phase::RandomLoss => "fault: random loss of 1 in 10 packets on cali0 ingress (drop)",
            Phase::OffloadOff => {
                "fault: tx checksum offload off on vxlan.calico (underlay max packet falls to the MTU)"
            }
            Phase::WireLoss => {
                "fault: the switch between the nodes drops 1 in 20 tunnel packets (no node counts them)"
            }
        }
    }

    pub fn start(self, lab: &Lab) -> io::Result<()> {
        let [n1, _] = &lab.nodes;
        match self {
            Phase::Baseline | Phase::BadChecksums => Ok(()),
            Phase::MtuMismatch => {
                faults::set_mtu(&n1.pod.netns, "eth0", 1500)?;
                faults::set_mtu(&n1.netns, POD_HOST_DEV, 1500)
            }
            Phase::TapOversize => {
                faults::set_offload(&n1.netns, TAP_DEV, "tso", false)?;
                faults::set_offload(&n1.netns, TAP_DEV, "gso", false)
            }
            Phase::RandomLoss => faults::random_loss(&n1.netns, POD_HOST_DEV, 10),
            Phase::OffloadOff => faults::set_offload(&n1.netns, VXLAN_DEV, "tx", false),
            Phase::WireLoss => match &lab.switch {
                Some(sw) => faults::nft(
                    sw,
                    &format!(
                        "table bridge vxp_wire {{\n chain forward {{\n  type filter hook forward priority 0;\n  \
                         udp dport {VXLAN_PORT} numgen random mod 20 == 0 counter drop\n }}\n}}\n"
                    ),
                ),
                None => Ok(()),
            },
        }
    }

    /// Once a second while the phase lasts.
    pub fn tick(self, lab: &Lab) -> io::Result<()> {
        let [n1, n2] = &lab.nodes;
        // The steady UDP between the pods, in every phase.
        lab.pod_datagrams(UDP_PORT, 200, 20, faults::Df::Default)?;
        match self {
            Phase::BadChecksums => {
                faults::bad_udp_checksums(&n1.pod.netns, n2.pod.ip, BAD_CSUM_PORT, 5)
            }
            // Full-size datagrams with DF: too big for the overlay once forwarded.
            Phase::MtuMismatch => lab
                .pod_datagrams(UDP_PORT, 1472, 5, faults::Df::Default)
                .map(drop),
            Phase::TapOversize => faults::packet_sends(&n1.netns, TAP_DEV, 2000, 5).map(drop),
            Phase::Baseline | Phase::RandomLoss | Phase::OffloadOff | Phase::WireLoss => Ok(()),
        }
    }

    /// What shows that the phase's fault was seen: the demo holds a phase (up to a bound)
    /// until it has, so a slow machine still records every fault.
    pub fn evidence(self) -> Evidence {
        match self {
            // The baseline's and the offload's signatures are in the hop lines: a whole
            // interval after the change, and one more.
            // Loss on the wire shows only in the join of both nodes' recordings.
            Phase::Baseline | Phase::OffloadOff | Phase::WireLoss => Evidence::Intervals(3),
            Phase::BadChecksums => Evidence::Anomaly(Sign::CsumError),
            Phase::MtuMismatch => Evidence::Anomaly(Sign::SizeAtPodVeth),
            Phase::TapOversize => Evidence::Anomaly(Sign::RefusedSend),
            Phase::RandomLoss => Evidence::Anomaly(Sign::NetfilterDrop),
        }
    }

    pub fn stop(self, lab: &Lab) -> io::Result<()> {
        let [n1, _] = &lab.nodes;
        match self {
            Phase::Baseline | Phase::BadChecksums => Ok(()),
            Phase::MtuMismatch => {
                faults::set_mtu(&n1.netns, POD_HOST_DEV, 1450)?;
                faults::set_mtu(&n1.pod.netns, "eth0", 1450)?;
                // Forget the path MTU the pod learned.
                Lab::exec(&n1.pod.netns, "ip", &["route", "flush", "cache"]).map(drop)
            }
            Phase::TapOversize => Ok(()),
            Phase::RandomLoss => faults::nft(&n1.netns, "delete table inet vxp_loss\n"),
            Phase::OffloadOff => faults::set_offload(&n1.netns, VXLAN_DEV, "tx", true),
            Phase::WireLoss => match &lab.switch {
                Some(sw) => faults::nft(sw, "delete table bridge vxp_wire\n"),
                None => Ok(()),
            },
        }
    }
}

/// What a phase waits for before it may end.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// This many intervals closed since the phase began.
    Intervals(u32),
    /// An anomaly of this sign since the phase began.
    Anomaly(Sign),
}

/// The anomalies that show the demo's faults.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Sign {
    /// A checksum failure (the bad UDP checksums).
    CsumError,
    /// An oversized packet or a fragment at the pod's veth (the MTU mismatch).
    SizeAtPodVeth,
    /// A send refused with EMSGSIZE (the tap).
    RefusedSend,
    /// A netfilter drop (the random loss).
    NetfilterDrop,
}

/// TCP bulk from pod 1 to pod 2 (iperf3), for as long as the value lives; the lab's cleanup
/// kills it too.
pub struct Traffic {
    server: Child,
    client: Child,
    udp_sink: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Traffic {
    pub fn start(lab: &Lab) -> io::Result<Self> {
        let [n1, n2] = &lab.nodes;
        let mut server = Lab::command(&n2.pod.netns, "iperf3")
            .args(["-s", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        faults::wait_tcp_listening(
            &n2.pod.netns,
            5201,
            &mut server,
            std::time::Duration::from_secs(10),
        )?;
        let client = faults::iperf3_client(
            &n1.pod.netns,
            n2.pod.ip.into(),
            5201,
            &["-t", "86400", "-b", "50M"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
        let udp_sink = faults::udp_sink(&n2.pod.netns, UDP_PORT)?;
        Ok(Self {
            server,
            client,
            udp_sink,
        })
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.udp_sink
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for child in [&mut self.client, &mut self.server] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
