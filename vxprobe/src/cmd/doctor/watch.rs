//! `doctor --watch DUR`: run the observation pipeline for a while and tie each finding to
//! what the devices it names actually did: oversized packets on the tap, the largest packets
//! on the underlay, fragments and fragmentation-needed messages, checksum failures.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use serde_json::Value;

use super::rules::Finding;
use crate::{
    node::facts::Facts,
    observe::{
        anomaly::{Anomaly, AnomalyKind},
        pipeline::{self, Sink},
        report::{IntervalReport, Meta},
        session::{Session, SessionConfig},
    },
};

/// What one direction of a device did during the watch.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DirectionSeen {
    pub packets: u64,
    pub bytes: u64,
    /// The largest packet seen (GSO packets count whole).
    pub max_len: u32,
    pub fragments: u64,
    pub oversize: u64,
    pub drops: u64,
}

/// What a device did during the watch.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DeviceSeen {
    pub ingress: DirectionSeen,
    pub egress: DirectionSeen,
    /// Anomaly events naming this device, by kind (in vxprobe's namespace).
    pub events: BTreeMap<&'static str, u64>,
}

/// What the devices did, from the interval reports: counts and the faults charged to each.
#[derive(Default)]
struct Observed {
    devices: BTreeMap<String, DeviceSeen>,
}

impl Sink for Observed {
    fn meta(&mut self, _meta: &Meta) -> anyhow::Result<()> {
        Ok(())
    }

    fn anomaly(&mut self, _anomaly: &Anomaly) -> anyhow::Result<()> {
        Ok(())
    }

    fn interval(&mut self, report: &IntervalReport) -> anyhow::Result<()> {
        for hop in &report.hops {
            let seen = self.devices.entry(hop.hop.ifname.clone()).or_default();
            for kind in AnomalyKind::ALL {
                let n = hop.faults.count(kind);
                if n > 0 {
                    *seen.events.entry(kind.as_str()).or_default() += n;
                }
            }
            let dir = match hop.dir {
                vxprobe_common::Direction::Ingress => &mut seen.ingress,
                vxprobe_common::Direction::Egress => &mut seen.egress,
            };
            let c = &hop.counters;
            dir.packets += c.packets;
            dir.bytes += c.bytes;
            dir.max_len = dir.max_len.max(c.max_len);
            dir.fragments += c.fragments;
            dir.oversize += c.oversize;
            dir.drops += hop.drops();
        }
        Ok(())
    }
}

/// Watches every device but `lo` for `duration`, then adds to each finding's evidence an
/// `observed` object: what its device (and, for tunnels, the underlay) did meanwhile.
pub async fn observe(
    facts: &Facts,
    findings: &mut [Finding],
    duration: Duration,
) -> anyhow::Result<()> {
    let ifaces = facts
        .devices
        .iter()
        .filter(|d| d.name != "lo")
        .map(|d| d.name.clone())
        .collect();
    let mut session = Session::start(&SessionConfig {
        max_flows: 4096,
        ..SessionConfig::watching(ifaces)
    })
    .await?;
    let mut observed = Observed::default();
    let mut sinks: [&mut dyn Sink; 1] = [&mut observed];
    let stop = tokio::time::sleep(duration);
    pipeline::run(
        &mut session,
        &mut sinks,
        Duration::from_millis(500),
        false,
        None,
        stop,
    )
    .await?;
    session.stop();
    for finding in findings {
        let mut seen = serde_json::Map::new();
        let mut names = vec![finding.ifname.clone()];
        // A tunnel's trouble shows on its underlay (MTU-sized packets, outer fragments).
        if let Some((underlay, _)) = facts
            .by_name(&finding.ifname)
            .and_then(|device| crate::node::facts::underlay(facts, device))
        {
            names.push(underlay.name.clone());
        }
        for name in names {
            if let Some(device) = observed.devices.get(&name) {
                seen.insert(name, serde_json::to_value(device)?);
            }
        }
        if let Value::Object(evidence) = &mut finding.evidence {
            evidence.insert("observed_for_s".into(), duration.as_secs_f64().into());
            evidence.insert("observed".into(), Value::Object(seen));
        }
    }
    Ok(())
}
