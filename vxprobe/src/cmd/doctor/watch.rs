//! `doctor --watch DUR`: run the observation pipeline for a while and tie each finding to
//! what the devices it names actually did: oversized packets on the tap, the largest packets
//! on the underlay, fragments and fragmentation-needed messages, checksum failures.
//!
//! Devices are watched by their exact names (a name holding `[` or `*` is itself, not a
//! pattern); a device that vanished before it was attached (a pod deleted meanwhile) is left
//! out; SIGINT and SIGTERM end the watch early, detach everything and still print the report.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;

use super::rules::Finding;
use crate::{
    error::UsageError,
    interrupt::Interrupted,
    node::{devices, facts::Facts},
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
    /// The pod at the device's other end (a host-side veth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::node::pods::PodId>,
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
            if let Some(pod) = &hop.hop.pod {
                seen.pod = Some(pod.id.clone());
            }
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

/// Watches every device but `lo` for `duration` (or until SIGINT or SIGTERM), then adds to
/// each finding's evidence an `observed` object: what its device (and, for tunnels, the
/// underlay) did meanwhile.
pub async fn observe(
    facts: &Facts,
    findings: &mut [Finding],
    duration: Duration,
    pods: crate::node::pods::PodConfig,
) -> anyhow::Result<()> {
    // Handlers first: a signal while attaching ends the watch as soon as it starts.
    let stop = crate::cmd::record::stop_signal(Some(duration))?;
    let started = tokio::time::Instant::now();
    let mut session = match start(facts, pods).await {
        Ok(Some(session)) => session,
        Ok(None) => return Ok(()), // every device vanished: nothing to watch
        // The report without what it would have watched.
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            eprintln!("vxprobe: {e}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut observed = Observed::default();
    let mut sinks: [&mut dyn Sink; 1] = [&mut observed];
    pipeline::run(
        &mut session,
        &mut sinks,
        Duration::from_millis(500),
        false,
        None,
        stop,
    )
    .await?;
    // Cut short by a signal, or the whole duration (attaching came before it started).
    let watched = started.elapsed().min(duration);
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
            evidence.insert("observed_for_s".into(), watched.as_secs_f64().into());
            evidence.insert("observed".into(), Value::Object(seen));
        }
    }
    Ok(())
}

/// Times the devices are listed again when one vanished between the listing and the
/// selection.
const START_ATTEMPTS: usize = 3;

/// A session on the devices the facts name (but `lo`) that are still there, by their exact
/// names; `None` when none is left.
async fn start(
    facts: &Facts,
    pods: crate::node::pods::PodConfig,
) -> anyhow::Result<Option<Session>> {
    let wanted: BTreeSet<&str> = facts
        .devices
        .iter()
        .map(|d| d.name.as_str())
        .filter(|name| *name != "lo")
        .collect();
    for attempt in 1..=START_ATTEMPTS {
        let present: Vec<String> = devices::list_devices()
            .await?
            .into_iter()
            .filter(|d| wanted.contains(d.name.as_str()))
            .map(|d| glob::Pattern::escape(&d.name))
            .collect();
        if present.is_empty() {
            return Ok(None);
        }
        match Session::start(&SessionConfig {
            max_flows: 4096,
            pods: Some(pods.clone()),
            ..SessionConfig::watching(present)
        })
        .await
        {
            Ok(session) => return Ok(Some(session)),
            // "no such interface": one vanished since the listing (nothing is attached yet).
            Err(e) if attempt < START_ATTEMPTS && e.downcast_ref::<UsageError>().is_some() => {}
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}
