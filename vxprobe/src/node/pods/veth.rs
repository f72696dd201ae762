//! A host-side device's pod: the pod whose network namespace holds the device's peer.
//!
//! A veth (Calico's `cali*`, Cilium's `lxc*`, `veth*`, Antrea's ports, netkit) whose peer lives
//! in another namespace carries `IFLA_LINK_NETNSID`: that namespace's id *as seen from ours*.
//! Ids are turned into namespaces by asking the kernel (RTM_GETNSID) for the id of each pod
//! namespace, opened through one of its processes or its bind mount; names play no part, so
//! any CNI's devices are covered. Devices are read whole once, then kept up from link
//! notifications (RTNLGRP_LINK; a new veth costs one message, not a dump of a thousand), and
//! read whole again every [`RESYNC_EVERY`] and when notifications were lost. Ids of live
//! namespaces never change: each namespace is asked for once (again only while it has none).

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    time::{Duration, Instant},
};

use futures_util::{FutureExt as _, StreamExt as _, stream::BoxStream};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkExtentMask, LinkMessage},
        nsid::{NsidAttribute, NsidMessage},
    },
};

use super::Found;

/// Every device is read again this often, in case a notification was lost unannounced.
const RESYNC_EVERY: Duration = Duration::from_secs(60);

type Notifications = BoxStream<
    'static,
    (
        NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    ),
>;

/// The devices of the calling thread's namespace whose peer is in a pod's namespace.
pub(super) struct Devices {
    handle: Handle,
    notifications: Notifications,
    /// Namespace inode -> its id here (`None`: none assigned yet; one is when a device links
    /// the two namespaces, which a link notification announces).
    nsids: HashMap<u64, Option<i32>>,
    /// Every device with a peer in another namespace: ifindex -> that namespace's id.
    links: HashMap<u32, i32>,
    links_changed: bool,
    resync_at: Option<Instant>,
    /// Device ifindex -> pod namespace inode: what the snapshot publishes.
    by_device: HashMap<u32, u64>,
}

/// The peer namespace's id of a device, if its peer is in another namespace.
fn peer_nsid(link: &LinkMessage) -> Option<i32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) if *id >= 0 => Some(*id),
        _ => None,
    })
}

impl Devices {
    /// Opens a netlink socket in the calling thread's namespace, listening to link changes.
    /// Needs a tokio runtime (the connection runs as a task on it).
    pub(super) fn new() -> std::io::Result<Self> {
        let (connection, handle, notifications) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            notifications: notifications.boxed(),
            nsids: HashMap::new(),
            links: HashMap::new(),
            links_changed: false,
            resync_at: None,
            by_device: HashMap::new(),
        })
    }

    /// Waits for a link notification and takes it in (cancel-safe; used beside a timer).
    pub(super) async fn changed(&mut self) {
        match self.notifications.next().await {
            Some((message, _)) => self.apply(message),
            // The connection is gone: never wake the caller again for it.
            None => std::future::pending::<()>().await,
        }
    }

    fn apply(&mut self, message: NetlinkMessage<RouteNetlinkMessage>) {
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                let ifindex = link.header.index;
                let before = match peer_nsid(&link) {
                    Some(id) => self.links.insert(ifindex, id),
                    None => self.links.remove(&ifindex),
                };
                self.links_changed |= before != self.links.get(&ifindex).copied();
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                self.links_changed |= self.links.remove(&link.header.index).is_some();
            }
            // Notifications were lost: read every device again.
            NetlinkPayload::Overrun(_) => self.resync_at = None,
            _ => {}
        }
    }

    /// Device ifindex -> pod namespace inode, for the pods in `found`.
    pub(super) fn by_device(&self) -> &HashMap<u32, u64> {
        &self.by_device
    }

    /// Brings the devices up to date with `found` (`pods_changed`: it differs from the last
    /// call's); says whether [`Devices::by_device`] changed.
    pub(super) async fn refresh(
        &mut self,
        found: &BTreeMap<u64, Found>,
        pods_changed: bool,
    ) -> Result<bool, String> {
        while let Some(Some((message, _))) = self.notifications.next().now_or_never() {
            self.apply(message);
        }
        if self.resync_at.is_none_or(|at| at.elapsed() >= RESYNC_EVERY) {
            // Blocking, on the index's own thread: a dump takes milliseconds.
            let links = peer_links().map_err(|e| format!("listing devices: {e}"))?;
            self.links_changed |= links != self.links;
            self.links = links;
            self.resync_at = Some(Instant::now());
        }
        let mut ids_changed = false;
        if pods_changed {
            let before = self.nsids.len();
            self.nsids.retain(|netns, _| found.contains_key(netns));
            ids_changed |= self.nsids.len() != before;
        }
        for (netns, entry) in found {
            // Ask for new namespaces, and again for those without an id once links changed.
            let ask = match self.nsids.get(netns) {
                None => true,
                Some(None) => self.links_changed,
                Some(Some(_)) => false,
            };
            if ask {
                let id = self.nsid_of(entry).await;
                ids_changed |= self.nsids.insert(*netns, id).flatten() != id;
            }
        }
        if !(ids_changed || self.links_changed) {
            return Ok(false);
        }
        self.links_changed = false;
        let by_id: HashMap<i32, u64> = self
            .nsids
            .iter()
            .filter_map(|(netns, id)| Some(((*id)?, *netns)))
            .collect();
        let by_device: HashMap<u32, u64> = self
            .links
            .iter()
            .filter_map(|(ifindex, id)| Some((*ifindex, *by_id.get(id)?)))
            .collect();
        let changed = by_device != self.by_device;
        self.by_device = by_device;
        Ok(changed)
    }

    /// This namespace's id for a pod's namespace, if one is assigned.
    async fn nsid_of(&mut self, entry: &Found) -> Option<i32> {
        let file = fs::File::open(&entry.ns_path).ok()?;
        // The path names a process's namespace: make sure the process is still the one we
        // saw (a reused pid would name another namespace).
        if file.metadata().ok()?.ino() != entry.netns {
            return None;
        }
        let mut message = NsidMessage::default();
        message
            .attributes
            .push(NsidAttribute::Fd(file.as_raw_fd() as u32));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(message));
        request.header.flags = NLM_F_REQUEST;
        let mut replies = self.handle.request(request).ok()?;
        let mut id = None;
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(msg)) = reply.payload {
                id = msg.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                });
            }
        }
        // The file stays open until the kernel has answered.
        drop(file);
        id
    }
}

/// Every device of the calling thread's namespace whose peer is in another one, from a link
/// dump read one message at a time on a socket of its own: rtnetlink's stream decodes a whole
/// dump before handing it over, and a thousand veths' parsed messages hold megabytes.
fn peer_links() -> std::io::Result<HashMap<u32, i32>> {
    use rtnetlink::{
        packet_core::NLM_F_DUMP,
        sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
    };
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut link = LinkMessage::default();
    // Without statistics: a thousand veths' counters are most of a dump's bytes.
    link.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(link));
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    // Larger than any part of a dump the kernel sends at once (32 KiB).
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = HashMap::new();
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..n])
                .map_err(|e| invalid(e.to_string()))?;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(invalid(format!("{e:?}"))),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    if let Some(id) = peer_nsid(&link) {
                        out.insert(link.header.index, id);
                    }
                }
                _ => {}
            }
            let len = message.header.length as usize;
            if len == 0 {
                break;
            }
            // Messages are 4-byte aligned.
            offset += (len + 3) & !3;
        }
    }
}
