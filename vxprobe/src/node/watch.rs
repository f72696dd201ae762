//! Device churn while vxprobe runs: pods, their veths and even `vxlan.calico` come and go on a
//! node during the weeks an agent runs. [`DeviceWatch`] follows rtnetlink's link notifications
//! (RTNLGRP_LINK) in vxprobe's network namespace and yields typed [`DeviceChange`]s for the
//! selection (`-i` globs, or the default: tunnels, their underlays, tun/tap, NICs); the
//! pipeline applies them to the [`Session`](crate::observe::session::Session). Data flows one way:
//! kernel -> watcher -> pipeline -> session; nothing here touches the kernel programs.
//!
//! - A device that appears and is selected is [`DeviceChange::Added`]; a selected device that
//!   vanishes (or is renamed) is [`DeviceChange::Removed`]. Selection is sticky: a hop stays
//!   until its device goes, so an underlay whose tunnel is deleted keeps its hop.
//! - A re-created device gets a new ifindex and so a fresh hop, even with the same name.
//! - When notifications are lost (the socket's buffer overran) or the socket fails, the watcher
//!   reconnects and re-reads every device, and every 30 s it re-reads them anyway: a change is
//!   never missed for long, and nothing here ever stops the recording.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use anyhow::Context as _;
use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::node::devices::{self, Device, Hop};

/// What changed in the set of observed devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// A device to observe appeared (or was selected when vxprobe's view caught up).
    Added(Hop),
    /// An observed device vanished, or was renamed (its new name may come back as `Added`).
    Removed { ifindex: u32, name: String },
    /// An observed device changed in a way the kernel programs need to know: its MTU.
    Updated(Hop),
    /// Every device was read again (and the changes found sent before this): the moment to
    /// try again what failed, on devices known to be there.
    Resynced,
}

/// How often every device is re-read, in case a notification was lost without the kernel
/// saying so.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Changes waiting for the pipeline; beyond this the watcher waits (and a burst that overruns
/// the netlink socket meanwhile is caught up by a resync).
const QUEUE: usize = 1024;

/// The selection over the namespace's devices: pure state, fed link messages, producing the
/// changes. Kept apart from the socket so its rules are tested without a kernel.
#[derive(Debug)]
pub struct Tracker {
    matchers: Vec<glob::Pattern>,
    /// Every device of the namespace, by ifindex.
    devices: BTreeMap<u32, Device>,
    /// The observed hops, by ifindex.
    selected: BTreeMap<u32, Hop>,
}

impl Tracker {
    /// `initial`: the hops the session already observes.
    pub fn new(matchers: Vec<glob::Pattern>, initial: &[Hop]) -> Self {
        Self {
            matchers,
            devices: initial
                .iter()
                .map(|h| (h.device.ifindex, h.device.clone()))
                .collect(),
            selected: initial
                .iter()
                .map(|h| (h.device.ifindex, h.clone()))
                .collect(),
        }
    }

    /// A link appeared or changed (RTM_NEWLINK).
    pub fn link_changed(&mut self, device: Device) -> Vec<DeviceChange> {
        self.devices.insert(device.ifindex, device);
        self.reselect()
    }

    /// A link vanished (RTM_DELLINK: deleted, or moved to another namespace).
    pub fn link_removed(&mut self, ifindex: u32) -> Vec<DeviceChange> {
        self.devices.remove(&ifindex);
        self.reselect()
    }

    /// Every device as a fresh dump shows them.
    pub fn resync(&mut self, devices: Vec<Device>) -> Vec<DeviceChange> {
        self.devices = devices.into_iter().map(|d| (d.ifindex, d)).collect();
        self.reselect()
    }

    /// The hops observed now.
    pub fn hops(&self) -> impl Iterator<Item = &Hop> {
        self.selected.values()
    }

    fn reselect(&mut self) -> Vec<DeviceChange> {
        let mut changes = Vec::new();
        // Hops whose device went away or was renamed end; MTU changes are passed on.
        let mut ended = Vec::new();
        for (ifindex, hop) in &mut self.selected {
            match self.devices.get(ifindex) {
                Some(device) if device.name == hop.device.name => {
                    if device.mtu != hop.device.mtu {
                        hop.device = device.clone();
                        changes.push(DeviceChange::Updated(hop.clone()));
                    }
                }
                _ => ended.push(*ifindex),
            }
        }
        for ifindex in ended {
            if let Some(hop) = self.selected.remove(&ifindex) {
                changes.push(DeviceChange::Removed {
                    ifindex,
                    name: hop.device.name,
                });
            }
        }
        let all: Vec<Device> = self.devices.values().cloned().collect();
        for hop in devices::selected(&all, &self.matchers, &devices::lower_devices(&all)) {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                self.selected.entry(hop.device.ifindex)
            {
                slot.insert(hop.clone());
                changes.push(DeviceChange::Added(hop));
            }
        }
        changes
    }
}

/// A running watcher: a task that owns the netlink socket and sends changes; dropping this
/// stops it.
pub struct DeviceWatch {
    rx: mpsc::Receiver<DeviceChange>,
    task: JoinHandle<()>,
    soon: mpsc::UnboundedSender<Duration>,
}

impl DeviceWatch {
    /// Subscribes to link notifications, then re-reads every device and reports what differs
    /// from `initial` (what changed since the session listed them). Must run inside the tokio
    /// runtime.
    pub fn spawn(patterns: &[String], initial: &[Hop]) -> anyhow::Result<Self> {
        let matchers = devices::matchers(patterns)?;
        let subscription = Subscription::open()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let tracker = Tracker::new(matchers, initial);
        let (soon, asked) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(tracker, subscription, tx, asked));
        Ok(Self { rx, task, soon })
    }

    /// Asks for a resync `after` this long rather than at the next periodic one (an attach
    /// failed: it is tried again then). The earliest of the times asked for wins.
    pub fn resync_in(&self, after: Duration) {
        // The task ends only with this handle (Drop): a send cannot fail before.
        let _ = self.soon.send(after);
    }

    /// The next change; `None` only if the watcher task ended (it does not on its own).
    pub async fn next(&mut self) -> Option<DeviceChange> {
        self.rx.recv().await
    }
}

impl Drop for DeviceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Messages = futures_util::stream::BoxStream<
    'static,
    (
        NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    ),
>;

/// A netlink route socket subscribed to link notifications, with its connection task.
struct Subscription {
    handle: rtnetlink::Handle,
    messages: Messages,
    connection: JoinHandle<()>,
}

impl Subscription {
    fn open() -> anyhow::Result<Self> {
        let (connection, handle, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
                .context("subscribing to link notifications (rtnetlink)")?;
        Ok(Self {
            handle,
            messages: messages.boxed(),
            connection: tokio::spawn(connection),
        })
    }

    async fn dump(&mut self) -> anyhow::Result<Vec<Device>> {
        let mut links = self.handle.link().get().execute();
        let mut devices = Vec::new();
        while let Some(msg) = links.try_next().await? {
            devices.extend(Device::from_message(&msg));
        }
        Ok(devices)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

async fn run(
    mut tracker: Tracker,
    first: Subscription,
    tx: mpsc::Sender<DeviceChange>,
    mut asked: mpsc::UnboundedReceiver<Duration>,
) {
    let mut subscription = Some(first);
    let mut warned = false;
    loop {
        let sub = match subscription.take() {
            Some(sub) => sub,
            None => match Subscription::open() {
                Ok(sub) => sub,
                Err(e) => {
                    if !warned {
                        eprintln!("vxprobe: device changes not followed for now: {e:#}");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        if follow(&mut tracker, sub, &tx, &mut asked).await.is_err() {
            return; // the pipeline is gone
        }
    }
}

/// Follows one subscription until its socket fails. `Err` when the receiver is gone.
async fn follow(
    tracker: &mut Tracker,
    mut sub: Subscription,
    tx: &mpsc::Sender<DeviceChange>,
    asked: &mut mpsc::UnboundedReceiver<Duration>,
) -> Result<(), ()> {
    let mut resync = true;
    let mut timer = tokio::time::interval(RESYNC_EVERY);
    timer.tick().await; // the first tick is immediate
    let mut early: Option<tokio::time::Instant> = None;
    loop {
        if resync {
            match sub.dump().await {
                Ok(devices) => {
                    send(tx, tracker.resync(devices)).await?;
                    send(tx, [DeviceChange::Resynced]).await?;
                    resync = false;
                    early = None;
                }
                // The socket is broken: start over with a new one.
                Err(_) => return Ok(()),
            }
        }
        let mut batch = VecDeque::new();
        tokio::select! {
            message = sub.messages.next() => match message {
                Some((message, _)) => match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        if let Some(device) = Device::from_message(&link) {
                            batch.extend(tracker.link_changed(device));
                        }
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                        batch.extend(tracker.link_removed(link.header.index));
                    }
                    // Notifications were lost: read everything again.
                    NetlinkPayload::Overrun(_) => resync = true,
                    _ => {}
                },
                None => return Ok(()),
            },
            _ = timer.tick() => resync = true,
            Some(after) = asked.recv() => {
                let at = tokio::time::Instant::now() + after;
                early = Some(early.map_or(at, |e| e.min(at)));
            }
            () = tokio::time::sleep_until(early.unwrap_or_else(tokio::time::Instant::now)),
                if early.is_some() => resync = true,
        }
        send(tx, batch).await?;
    }
}

async fn send(
    tx: &mpsc::Sender<DeviceChange>,
    changes: impl IntoIterator<Item = DeviceChange>,
) -> Result<(), ()> {
    for change in changes {
        tx.send(change).await.map_err(|_| ())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::devices::{DeviceKind, Role, TunnelInfo, test_device as dev};

    fn vxlan(ifindex: u32, lower: Option<u32>) -> Device {
        let mut d = dev(ifindex, "vxlan.calico", DeviceKind::Vxlan);
        d.tunnel = Some(TunnelInfo {
            lower_ifindex: lower,
            ..Default::default()
        });
        d
    }

    fn globs(patterns: &[&str]) -> Vec<glob::Pattern> {
        patterns
            .iter()
            .map(|p| glob::Pattern::new(p).unwrap())
            .collect()
    }

    fn start(matchers: Vec<glob::Pattern>, devices: &[Device]) -> Tracker {
        let initial = devices::selected(devices, &matchers, &devices::lower_devices(devices));
        let mut tracker = Tracker::new(matchers, &initial);
        assert_eq!(tracker.resync(devices.to_vec()), []);
        tracker
    }

    fn added(change: &DeviceChange) -> (u32, &str, Role) {
        match change {
            DeviceChange::Added(hop) => (hop.device.ifindex, hop.device.name.as_str(), hop.role),
            other => panic!("not an addition: {other:?}"),
        }
    }

    #[test]
    fn a_recreated_vxlan_device_is_a_new_hop() {
        let devices = [dev(2, "eth0", DeviceKind::Veth), vxlan(4, Some(2))];
        let mut tracker = start(Vec::new(), &devices);
        assert_eq!(tracker.hops().count(), 2);
        assert_eq!(
            tracker.link_removed(4),
            [DeviceChange::Removed {
                ifindex: 4,
                name: "vxlan.calico".into()
            }]
        );
        // The underlay keeps its hop while the tunnel is away.
        assert_eq!(tracker.hops().count(), 1);
        let changes = tracker.link_changed(vxlan(9, Some(2)));
        assert_eq!(changes.len(), 1);
        assert_eq!(added(&changes[0]), (9, "vxlan.calico", Role::Overlay));
    }

    #[test]
    fn new_pod_veths_matching_a_glob_are_added_and_others_are_not() {
        let mut tracker = start(globs(&["cali*"]), &[dev(3, "cali1", DeviceKind::Veth)]);
        let changes = tracker.link_changed(dev(7, "cali2", DeviceKind::Veth));
        assert_eq!(added(&changes[0]), (7, "cali2", Role::Pod));
        assert_eq!(tracker.link_changed(dev(8, "eth1", DeviceKind::Veth)), []);
        // A repeated notification (flags, carrier) changes nothing.
        assert_eq!(tracker.link_changed(dev(7, "cali2", DeviceKind::Veth)), []);
        // Unselected devices vanish silently.
        assert_eq!(tracker.link_removed(8), []);
    }

    #[test]
    fn a_tunnel_created_later_brings_its_underlay() {
        let mut tracker = start(Vec::new(), &[dev(2, "eth0", DeviceKind::Veth)]);
        assert_eq!(tracker.hops().count(), 0);
        let changes = tracker.link_changed(vxlan(5, Some(2)));
        let got: Vec<_> = changes.iter().map(added).collect();
        assert_eq!(
            got,
            [
                (2, "eth0", Role::Underlay),
                (5, "vxlan.calico", Role::Overlay)
            ]
        );
    }

    #[test]
    fn renames_end_the_hop_and_mtu_changes_update_it() {
        let mut tracker = start(globs(&["cali*"]), &[dev(3, "cali1", DeviceKind::Veth)]);
        let mut bigger = dev(3, "cali1", DeviceKind::Veth);
        bigger.mtu = 9000;
        match &tracker.link_changed(bigger)[..] {
            [DeviceChange::Updated(hop)] => assert_eq!(hop.device.mtu, 9000),
            other => panic!("{other:?}"),
        }
        let changes = tracker.link_changed(dev(3, "cali9", DeviceKind::Veth));
        assert_eq!(
            changes[0],
            DeviceChange::Removed {
                ifindex: 3,
                name: "cali1".into()
            }
        );
        assert_eq!(added(&changes[1]), (3, "cali9", Role::Pod));
    }

    #[test]
    fn a_resync_catches_up_with_lost_notifications() {
        let mut tracker = start(
            globs(&["cali*"]),
            &[
                dev(3, "cali1", DeviceKind::Veth),
                dev(4, "cali2", DeviceKind::Veth),
            ],
        );
        let changes = tracker.resync(vec![
            dev(4, "cali2", DeviceKind::Veth),
            dev(6, "cali3", DeviceKind::Veth),
        ]);
        assert_eq!(
            changes[0],
            DeviceChange::Removed {
                ifindex: 3,
                name: "cali1".into()
            }
        );
        assert_eq!(added(&changes[1]), (6, "cali3", Role::Pod));
        assert_eq!(changes.len(), 2);
    }
}
