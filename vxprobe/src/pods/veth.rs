//! A host-side device's pod: the pod whose network namespace holds the device's peer.
//!
//! A veth (Calico's `cali*`, Cilium's `lxc*`, `veth*`, Antrea's ports, netkit) whose peer lives
//! in another namespace carries `IFLA_LINK_NETNSID`: that namespace's id *as seen from ours*.
//! Ids are turned into namespaces by asking the kernel (RTM_GETNSID) for the id of each pod
//! namespace, opened through one of its processes or its bind mount; names play no part, so
//! any CNI's devices are covered. Link notifications (RTNLGRP_LINK) say when to read the
//! devices again; ids of live namespaces never change, so each is asked for once.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
};

use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _, stream::BoxStream};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{LinkAttribute, LinkExtentMask},
        nsid::{NsidAttribute, NsidMessage},
    },
};

use super::Found;

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
    stale: bool,
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
            stale: true,
        })
    }

    /// Waits for a link notification (cancel-safe; used beside a timer).
    pub(super) async fn changed(&mut self) {
        if self.notifications.next().await.is_some() {
            self.stale = true;
        } else {
            // The connection is gone: never wake the caller again for it.
            std::future::pending::<()>().await;
        }
    }

    /// Device ifindex -> pod namespace inode, for the pods in `found`.
    pub(super) async fn refresh(
        &mut self,
        found: &BTreeMap<u64, Found>,
    ) -> Result<HashMap<u32, u64>, String> {
        while let Some(Some(_)) = self.notifications.next().now_or_never() {
            self.stale = true;
        }
        self.nsids.retain(|netns, _| found.contains_key(netns));
        for (netns, entry) in found {
            let known = self.nsids.get(netns).copied();
            // Ask for new namespaces, and again for those without an id once links changed.
            if known.is_none() || (known == Some(None) && self.stale) {
                let id = self.nsid_of(entry).await;
                self.nsids.insert(*netns, id);
            }
        }
        if self.stale {
            self.links = self.peer_links().await?;
            self.stale = false;
        }
        let by_id: HashMap<i32, u64> = self
            .nsids
            .iter()
            .filter_map(|(netns, id)| Some(((*id)?, *netns)))
            .collect();
        Ok(self
            .links
            .iter()
            .filter_map(|(ifindex, id)| Some((*ifindex, *by_id.get(id)?)))
            .collect())
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

    /// Every device of this namespace whose peer is in another one.
    async fn peer_links(&mut self) -> Result<HashMap<u32, i32>, String> {
        // Without statistics: a thousand veths' counters are most of a dump's bytes.
        let mut links = self
            .handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
            .execute();
        let mut out = HashMap::new();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(|e| format!("listing devices: {e}"))?
        {
            if let Some(id) = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkNetNsId(id) if *id >= 0 => Some(*id),
                _ => None,
            }) {
                out.insert(msg.header.index, id);
            }
        }
        Ok(out)
    }
}
