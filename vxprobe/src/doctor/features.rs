//! Offload features of every device (what `ethtool -k` shows), with their fixed/changeable state,
//! read over ethtool netlink (`ETHTOOL_MSG_FEATURES_GET`, Linux >= 5.6) with the `ethtool` crate.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ethtool::{EthtoolAttr, EthtoolFeatureAttr, EthtoolHeader};
use futures_util::TryStreamExt as _;
use serde::Serialize;

/// Features `doctor` reads and reports; the rest of the ~60 are left out of its output.
pub const REPORTED: &[&str] = &[
    TX_CSUM_IPV4,
    TX_CSUM_IP_GENERIC,
    TX_CSUM_IPV6,
    TSO,
    TSO6,
    GSO,
    GRO,
    "tx-udp_tnl-segmentation",
    "tx-udp_tnl-csum-segmentation",
];

pub const TX_CSUM_IPV4: &str = "tx-checksum-ipv4";
pub const TX_CSUM_IP_GENERIC: &str = "tx-checksum-ip-generic";
pub const TX_CSUM_IPV6: &str = "tx-checksum-ipv6";
/// The features behind ethtool's `tx-checksumming` that matter for TCP/UDP.
pub const TX_CSUM: [&str; 3] = [TX_CSUM_IPV4, TX_CSUM_IP_GENERIC, TX_CSUM_IPV6];
pub const TSO: &str = "tx-tcp-segmentation";
pub const TSO6: &str = "tx-tcp6-segmentation";
pub const GSO: &str = "tx-generic-segmentation";
pub const GRO: &str = "rx-gro";

/// One feature of one device.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeatureState {
    /// Active now.
    pub on: bool,
    /// Cannot be changed with `ethtool -K` (ethtool's `[fixed]`): not in the device's
    /// changeable set, or in its "no change" set.
    pub fixed: bool,
    /// What the user (or the driver's default) asked for; differs from `on` when the kernel
    /// could not honour it (ethtool's `[requested on]`), e.g. TSO without checksum offload.
    pub requested: bool,
}

/// A device's offload features by ethtool name (`tx-checksum-ip-generic`, `rx-gro`...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Features(pub BTreeMap<String, FeatureState>);

impl Features {
    /// Builds the reported features from ethtool's four sets (names of the features in each).
    pub fn from_sets(
        changeable: &BTreeSet<String>,
        wanted: &BTreeSet<String>,
        active: &BTreeSet<String>,
        nochange: &BTreeSet<String>,
    ) -> Features {
        // The kernel lists a feature only in the sets it belongs to: one in none of them is
        // "off [fixed]" for this device, as ethtool shows it.
        Features(
            REPORTED
                .iter()
                .map(|&name| {
                    let state = FeatureState {
                        on: active.contains(name),
                        fixed: !changeable.contains(name) || nochange.contains(name),
                        requested: wanted.contains(name),
                    };
                    (name.to_owned(), state)
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<FeatureState> {
        self.0.get(name).copied()
    }

    /// ethtool's `tx-checksumming` for TCP/UDP: on when any of the IPv4, generic or IPv6
    /// checksum features is on; fixed when none of them can be changed.
    pub fn tx_checksum(&self) -> Option<FeatureState> {
        let parts: Vec<FeatureState> = TX_CSUM.iter().filter_map(|n| self.get(n)).collect();
        if parts.is_empty() {
            return None;
        }
        Some(FeatureState {
            on: parts.iter().any(|p| p.on),
            fixed: parts.iter().all(|p| p.fixed),
            requested: parts.iter().any(|p| p.requested),
        })
    }

    /// Names of the features of `names` that are on, for evidence.
    pub fn on_names(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .filter(|n| self.get(n).is_some_and(|s| s.on))
            .map(|n| (*n).to_owned())
            .collect()
    }
}

/// Why features could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error("cannot open a generic netlink socket for ethtool: {0}")]
    Socket(#[source] std::io::Error),
    #[error("ethtool netlink (ETHTOOL_MSG_FEATURES_GET) failed: {0}")]
    Netlink(#[source] ethtool::EthtoolError),
}

/// Features of every device of this network namespace, by ifindex, in one ethtool netlink dump.
///
/// The `ethtool` crate (0.3) reads the four feature bitsets in their verbose form, with names.
/// It skips a bit whose index is 0 (`tx-scatter-gather`), which doctor does not use.
pub async fn dump_netlink() -> Result<HashMap<u32, Features>, FeaturesError> {
    let (connection, mut handle, _) = ethtool::new_connection().map_err(FeaturesError::Socket)?;
    let task = tokio::spawn(connection);
    let result = async {
        let mut replies = handle
            .feature()
            .get(None)
            .execute()
            .await
            .map_err(FeaturesError::Netlink)?;
        let mut by_index = HashMap::new();
        while let Some(reply) = replies.try_next().await.map_err(FeaturesError::Netlink)? {
            let mut ifindex = None;
            let mut sets: [BTreeSet<String>; 4] = Default::default();
            for attr in &reply.payload.nlas {
                let EthtoolAttr::Feature(attr) = attr else {
                    continue;
                };
                let (slot, bits) = match attr {
                    EthtoolFeatureAttr::Header(header) => {
                        ifindex = header.iter().find_map(|h| match h {
                            EthtoolHeader::DevIndex(i) => Some(*i),
                            _ => None,
                        });
                        continue;
                    }
                    EthtoolFeatureAttr::Hw(bits) => (0, bits),
                    EthtoolFeatureAttr::Wanted(bits) => (1, bits),
                    EthtoolFeatureAttr::Active(bits) => (2, bits),
                    EthtoolFeatureAttr::NoChange(bits) => (3, bits),
                    _ => continue,
                };
                // Members carry `value: true`; the changeable set comes with a mask (every
                // feature listed, the changeable ones with a value), the others without one.
                sets[slot].extend(bits.iter().filter(|b| b.value).map(|b| b.name.clone()));
            }
            if let Some(ifindex) = ifindex {
                let [hw, wanted, active, nochange] = &sets;
                by_index.insert(ifindex, Features::from_sets(hw, wanted, active, nochange));
            }
        }
        Ok(by_index)
    }
    .await;
    task.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn fixed_means_not_changeable_or_nochange() {
        let f = Features::from_sets(
            &set(&[TX_CSUM_IP_GENERIC, TSO, GRO]),
            &set(&[TX_CSUM_IP_GENERIC, TSO, GSO, GRO]),
            &set(&[GSO, GRO]),
            &set(&[GRO]),
        );
        // Changeable, wanted, off: "off [requested on]".
        assert_eq!(
            f.get(TSO),
            Some(FeatureState {
                on: false,
                fixed: false,
                requested: true
            })
        );
        // Active but not changeable: "on [fixed]".
        assert!(f.get(GSO).unwrap().fixed && f.get(GSO).unwrap().on);
        // Changeable but in the no-change set: fixed too.
        assert!(f.get(GRO).unwrap().fixed);
        // In no set at all: "off [fixed]".
        assert_eq!(
            f.get(TX_CSUM_IPV4),
            Some(FeatureState {
                on: false,
                fixed: true,
                requested: false
            })
        );
        assert_eq!(
            f.tx_checksum().map(|s| (s.on, s.fixed)),
            Some((false, false))
        );
    }
}
