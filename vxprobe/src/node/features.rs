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
    #[error("SIOCETHTOOL {what} failed: {source}")]
    Ioctl {
        what: String,
        #[source]
        source: std::io::Error,
    },
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

/// Features over the ethtool ioctl (`SIOCETHTOOL` with `ETHTOOL_GSSET_INFO`,
/// `ETHTOOL_GSTRINGS` and `ETHTOOL_GFEATURES`), for kernels without ethtool netlink: before
/// 5.6, which includes the < 5.7 kernels the VXLAN NAT checksum bug lives on. Same sets, same
/// meaning: changeable = available and not never-changed.
pub fn dump_ioctl<'a>(
    devices: impl IntoIterator<Item = (u32, &'a str)>,
) -> Result<HashMap<u32, Features>, FeaturesError> {
    let devices: Vec<(u32, &str)> = devices.into_iter().collect();
    let Some(&(_, first)) = devices.first() else {
        return Ok(HashMap::new());
    };
    let sock = ioctl::Socket::new().map_err(|source| FeaturesError::Ioctl {
        what: "socket".into(),
        source,
    })?;
    let names = sock
        .feature_names(first)
        .map_err(|source| FeaturesError::Ioctl {
            what: format!("ETHTOOL_GSTRINGS on {first}"),
            source,
        })?;
    let mut by_index = HashMap::new();
    for (ifindex, ifname) in devices {
        let blocks = match sock.features(ifname, names.len()) {
            Ok(blocks) => blocks,
            // A device that went away, or a driver without ethtool support: no features.
            Err(_) => continue,
        };
        let mut sets: [BTreeSet<String>; 4] = Default::default();
        for (bit, name) in names.iter().enumerate() {
            let Some(block) = blocks.get(bit / 32) else {
                break;
            };
            let mask = 1u32 << (bit % 32);
            let is = |word: u32| word & mask != 0;
            if is(block.available) && !is(block.never_changed) {
                sets[0].insert(name.clone());
            }
            if is(block.requested) {
                sets[1].insert(name.clone());
            }
            if is(block.active) {
                sets[2].insert(name.clone());
            }
            if is(block.never_changed) {
                sets[3].insert(name.clone());
            }
        }
        let [changeable, wanted, active, nochange] = &sets;
        by_index.insert(
            ifindex,
            Features::from_sets(changeable, wanted, active, nochange),
        );
    }
    Ok(by_index)
}

/// The few `SIOCETHTOOL` calls the fallback needs (`linux/ethtool.h`).
mod ioctl {
    use std::{
        io,
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    };

    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GSTRINGS: u32 = 0x1b;
    const ETHTOOL_GSSET_INFO: u32 = 0x37;
    const ETHTOOL_GFEATURES: u32 = 0x3a;
    const ETH_SS_FEATURES: u32 = 4;
    const ETH_GSTRING_LEN: usize = 32;

    /// `struct ethtool_get_features_block`.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct FeaturesBlock {
        pub available: u32,
        pub requested: u32,
        pub active: u32,
        pub never_changed: u32,
    }

    /// `struct ifreq` with `ifr_data`.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        _pad: [u8; 16],
    }

    pub struct Socket(OwnedFd);

    impl Socket {
        /// A datagram socket of the current network namespace, to address its devices.
        pub fn new() -> io::Result<Socket> {
            // SAFETY: socket(2) with constant arguments; the result is checked before use.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
        }

        /// `SIOCETHTOOL` on `ifname` with the command buffer `data` (which starts with `cmd`).
        fn call<T>(&self, ifname: &str, data: &mut [T]) -> io::Result<()> {
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                data: data.as_mut_ptr().cast(),
                _pad: [0; 16],
            };
            let bytes = ifname.as_bytes();
            if bytes.len() >= libc::IFNAMSIZ {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
            req.name[..bytes.len()].copy_from_slice(bytes);
            // SAFETY: SIOCETHTOOL reads the ifreq and the command buffer it points to; every
            // caller sizes `data` for its command's reply (counts set in the buffer itself), and
            // both outlive the call.
            let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        /// The names of the feature bits (`ethtool -k`'s names), in bit order.
        pub fn feature_names(&self, ifname: &str) -> io::Result<Vec<String>> {
            // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1].
            let mut info = [0u32; 5];
            info[0] = ETHTOOL_GSSET_INFO;
            let mask = 1u64 << ETH_SS_FEATURES;
            info[2] = mask as u32;
            info[3] = (mask >> 32) as u32;
            self.call(ifname, &mut info)?;
            let count = info[4] as usize;
            if count == 0 || count > 4096 {
                return Err(io::Error::other(format!("{count} feature names")));
            }
            // struct ethtool_gstrings: cmd, string_set, len, then len * 32 bytes.
            let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
            strings[0] = ETHTOOL_GSTRINGS;
            strings[1] = ETH_SS_FEATURES;
            strings[2] = count as u32;
            self.call(ifname, &mut strings)?;
            let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
            Ok(bytes
                .chunks(ETH_GSTRING_LEN)
                .map(|raw| {
                    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                    String::from_utf8_lossy(&raw[..end]).into_owned()
                })
                .collect())
        }

        /// The feature blocks of `ifname` (32 features each).
        pub fn features(&self, ifname: &str, count: usize) -> io::Result<Vec<FeaturesBlock>> {
            let blocks = count.div_ceil(32);
            // struct ethtool_gfeatures: cmd, size, then `size` blocks of four u32.
            let mut buf = vec![0u32; 2 + blocks * 4];
            buf[0] = ETHTOOL_GFEATURES;
            buf[1] = blocks as u32;
            self.call(ifname, &mut buf)?;
            Ok(buf[2..]
                .chunks_exact(4)
                .map(|b| FeaturesBlock {
                    available: b[0],
                    requested: b[1],
                    active: b[2],
                    never_changed: b[3],
                })
                .collect())
        }
    }
}

/// Offload features of a device, as `ethtool -k` shows them.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// `tx-checksumming` (any of `tx-checksum-ip-generic`, `-ipv4`, `-ipv6`).
    pub tx_csum: bool,
    /// `tcp-segmentation-offload`.
    pub tso: bool,
    /// `generic-segmentation-offload`.
    pub gso: bool,
}

impl Offload {
    /// From the features `doctor` reads over ethtool netlink; `None` when the device reports
    /// none of them.
    pub fn from_features(features: &Features) -> Option<Self> {
        let on = |name| features.get(name).map(|f| f.on);
        let tx_csum = features.tx_checksum().map(|f| f.on);
        let tso = on(TSO);
        let gso = on(GSO);
        (tx_csum.is_some() || tso.is_some() || gso.is_some()).then(|| Self {
            tx_csum: tx_csum.unwrap_or(false),
            tso: tso.unwrap_or(false),
            gso: gso.unwrap_or(false),
        })
    }
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
