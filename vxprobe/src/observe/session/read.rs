//! A session's reads, each interval: the event ring drained and enriched, the hop and flow
//! counters read (a read that fails after retries is said, never fatal: the next interval's
//! read covers it), and the interval closed in the kernel.

use anyhow::Context as _;
use vxprobe_common::{Direction, FlowCounters, FlowKey, HopKey};

use super::{DRAIN_BATCH, Session};
use crate::observe::{
    anomaly::Anomaly,
    decode::{self, KernelEvent},
    interval::HopCount,
    report::{LostEvents, MetaHop},
};

impl Session {
    /// Whether the last drain stopped at its batch limit with records waiting.
    pub fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// Waits until the kernel wakes us for new events (at once when a drain left some).
    pub async fn events_ready(&mut self) -> anyhow::Result<()> {
        if self.backlog {
            // Let the timer, signals and device changes in between two batches.
            tokio::task::yield_now().await;
            self.backlog = false;
            return Ok(());
        }
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .context("waiting on the ring buffer")?;
        guard.clear_ready();
        Ok(())
    }

    /// Decodes the records waiting in the ring buffer (at most [`DRAIN_BATCH`] per call, so a
    /// flood cannot starve the interval timer) and hands each anomaly that passes the flow
    /// filter to `out`.
    pub fn drain(
        &mut self,
        mut out: impl FnMut(Anomaly) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.backlog = false;
        let pods = self.pods.snapshot();
        let own_netns = self.meta.netns;
        let ring = self.ring.get_mut();
        let mut taken = 0;
        while let Some(record) = ring.next() {
            taken += 1;
            let decoded = decode::decode(&record);
            drop(record);
            let anomaly = match decoded {
                Ok(KernelEvent::Drop(event)) => Some(self.enricher.drop_event(&event)),
                Ok(KernelEvent::Retransmit(event)) => Some(self.enricher.retransmit(&event)),
                Ok(KernelEvent::SendError(event)) => Some(self.enricher.send_error(&event)),
                Ok(KernelEvent::Hop(event)) => Some(self.enricher.hop_event(&event)),
                Ok(KernelEvent::FragNeeded(event)) => Some(self.enricher.frag_needed(&event)),
                Ok(KernelEvent::Csum(event)) => Some(self.enricher.csum(&event)),
                Err(e) => {
                    eprintln!("vxprobe: skipping a kernel record: {e}");
                    None
                }
            };
            if let Some(mut anomaly) = anomaly
                && self.selector.matches(&anomaly)
                && (self.all_drops || !anomaly.is_benign())
            {
                anomaly.pod = pods.pod_of_event(own_netns, anomaly.netns, anomaly.ifindex);
                out(anomaly)?;
            }
            // Every record counts against the budget, those filtered out too: a flood of
            // other flows' events must not hold the loop either.
            if taken >= DRAIN_BATCH {
                self.backlog = true;
                break;
            }
        }
        Ok(())
    }

    /// Reads what each hop (observed, or vanished in this interval) counted since the last
    /// interval, both directions, quiet ones included, and the events lost meanwhile. The
    /// interval ends when this is called: everything is read after it.
    pub fn read_hops(&mut self) -> anyhow::Result<(Vec<HopCount>, LostEvents)> {
        self.ending = self.epoch.current();
        let slots = &self.probes.hop_slots;
        let devices = self
            .hops
            .iter()
            .chain(&self.gone)
            .filter_map(|hop| Some((hop.device.ifindex, slots.get(hop.device.ifindex)?)));
        let deltas = self.hop_stats.interval(self.ending, devices)?;
        let pods = self.pods.snapshot();
        let mut counts = Vec::with_capacity((self.hops.len() + self.gone.len()) * 2);
        for hop in self.hops.iter().chain(&self.gone) {
            for dir in [Direction::Ingress, Direction::Egress] {
                let key = HopKey::new(hop.device.ifindex, dir);
                counts.push(HopCount {
                    hop: MetaHop::of(hop, &pods),
                    dir,
                    counters: deltas.get(&key).copied().unwrap_or_default(),
                });
            }
        }
        // Events lost: read all or none; a failed read leaves them for the next interval.
        let lost = self.lost.since_last().unwrap_or_else(|e| {
            self.read_errors.push(format!("{e:#}"));
            Vec::new()
        });
        Ok((counts, lost))
    }

    /// What could not be read (or written) in the kernel's maps since the last call, after
    /// retries; the run went on without it.
    pub fn take_read_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.read_errors)
    }

    /// Hands `out` each flow that moved at an observed hop since the last interval, as the
    /// flow table is read (never all held). Returns the flow entries the kernel created so
    /// far, for [`Session::end_interval`].
    pub fn read_flows(
        &mut self,
        mut out: impl FnMut(&MetaHop, &FlowKey, &FlowCounters, bool) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let created = self.evictions.created()?;
        let pods = self.pods.snapshot();
        let hops: Vec<MetaHop> = self
            .hops
            .iter()
            .chain(&self.gone)
            .map(|hop| MetaHop::of(hop, &pods))
            .collect();
        self.flow_stats
            .interval(self.ending, |key, counters, new_entry| {
                match hops.iter().find(|h| h.ifindex == key.ifindex) {
                    Some(hop) => out(hop, key, counters, new_entry).map(|()| true),
                    // Not taken: when its hop comes, it is new to the distinct count still.
                    None => Ok(false),
                }
            })?;
        Ok(created)
    }

    /// Ends the interval: counts the flow entries the full table evicted (given what was
    /// `created` before the flow table was read; `None` when it could not be read: they are
    /// counted next time), starts the next epoch, and lets go of the devices that vanished.
    /// What fails here is kept for [`Session::take_read_errors`]; the run goes on.
    pub fn end_interval(&mut self, created: Option<u64>) -> anyhow::Result<u64> {
        self.evictions.deleted(self.flow_stats.take_deleted());
        let evicted = created.map_or(0, |created| {
            self.evictions.since_last(created, self.flow_stats.len())
        });
        self.enricher.devices.new_interval();
        if let Err(e) = self.epoch.advance() {
            self.read_errors.push(format!("{e:#}"));
        }
        // Vanished devices had their last count: free their slots in the kernel's maps.
        for hop in std::mem::take(&mut self.gone) {
            let ifindex = hop.device.ifindex;
            if let Some(slot) = self.probes.hop_slots.get(ifindex) {
                match self.hop_stats.forget(ifindex, slot) {
                    Ok(()) => {
                        self.probes.hop_slots.release(ifindex);
                    }
                    // Not cleared, so not given to another device.
                    Err(e) => self.read_errors.push(format!(
                        "{e:#}: {}'s counter slot stays taken",
                        hop.device.name
                    )),
                }
            }
            self.flow_stats.forget_device(ifindex);
            self.enricher.hops.remove(&ifindex);
        }
        // Reading a large flow table frees megabytes of buffers each interval.
        crate::memory::release_freed();
        Ok(evicted)
    }

    /// Runs of our programs the kernel skipped (one of them already running on that CPU).
    pub fn recursion_misses(&mut self) -> u64 {
        crate::kernel::counters::recursion_misses(self.probes.ebpf_mut())
    }
}
