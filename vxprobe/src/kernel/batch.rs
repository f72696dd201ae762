//! Per-CPU counter maps read whole: `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+: one system call per
//! few thousand entries instead of two per entry) into buffers reused between reads, with
//! key-by-key iteration where the kernel has no batch operations; per-CPU values summed.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use anyhow::Context as _;
use aya::{
    Pod,
    maps::{IterableMap as _, MapData, PerCpuHashMap, PerCpuValues},
};
use vxprobe_common::FlowCounters;

/// Counter structs that can be summed over CPUs.
pub trait Counters: Pod + Default + Copy {
    fn merge(&mut self, other: &Self);
}

impl Counters for vxprobe_common::Counters {
    fn merge(&mut self, other: &Self) {
        vxprobe_common::Counters::merge(self, other);
    }
}

impl Counters for FlowCounters {
    fn merge(&mut self, other: &Self) {
        FlowCounters::merge(self, other);
    }
}

/// `BPF_MAP_LOOKUP_BATCH` over a per-CPU hash map, into buffers reused between reads.
pub(super) struct BatchReader<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
    pub(super) cpus: usize,
    /// Entries asked for per call.
    chunk: usize,
    /// Cleared when the kernel refuses batch operations: iterate key by key from then on.
    supported: bool,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

impl<K: Pod, V: Pod + Default> BatchReader<K, V> {
    pub(super) fn new() -> Self {
        let cpus = aya::util::nr_cpus().unwrap_or(1).max(1);
        Self {
            keys: Vec::new(),
            values: Vec::new(),
            cpus,
            chunk: 4096,
            // Per-CPU values come padded to 8 bytes each; ours need no padding.
            supported: size_of::<V>().is_multiple_of(8),
        }
    }

    /// Calls `f` with each chunk of keys and their per-CPU values (`cpus` values per key, key
    /// by key). Returns false, having called nothing, when the kernel has no batch lookups for
    /// this map.
    fn for_each_chunk(&mut self, fd: RawFd, mut f: impl FnMut(&[K], &[V])) -> anyhow::Result<bool> {
        if !self.supported {
            return Ok(false);
        }
        // The kernel's batch position for hash maps is a bucket number.
        let (mut position, mut next) = (0u64, 0u64);
        let mut first = true;
        let mut attempt = 1;
        loop {
            self.keys.clear();
            self.values.clear();
            self.keys.resize(self.chunk, K::default_zeroed());
            self.values.resize(self.chunk * self.cpus, V::default());
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    (&raw const position) as u64
                },
                out_batch: (&raw mut next) as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: self.chunk as u32,
                map_fd: fd as u32,
                ..Default::default()
            };
            // SAFETY: bpf(2) with a BPF_MAP_LOOKUP_BATCH attribute whose buffers we own: the
            // kernel writes at most `count` keys and `count * cpus` values (each value is a
            // multiple of 8 bytes, checked in `new`), and one u32 bucket number at out_batch.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &raw mut attr,
                    size_of::<BatchAttr>() as libc::c_uint,
                )
            };
            let errno = (rc < 0).then(io::Error::last_os_error);
            let got = (attr.count as usize).min(self.chunk);
            match errno.as_ref().and_then(io::Error::raw_os_error) {
                None | Some(libc::ENOENT) => {}
                // One bucket holds more entries than a chunk: ask for more at once.
                Some(libc::ENOSPC) if self.chunk < 1 << 20 => {
                    self.chunk *= 4;
                    continue;
                }
                Some(libc::EINVAL | libc::ENOTSUP | libc::EOPNOTSUPP | 524) if first => {
                    self.supported = false;
                    return Ok(false);
                }
                // Failed for a moment, maybe: the same chunk again, a few times.
                Some(_) if attempt < super::retry::ATTEMPTS => {
                    super::retry::count_failure();
                    attempt += 1;
                    continue;
                }
                Some(_) => {
                    super::retry::count_failure();
                    return Err(errno.unwrap_or_else(|| io::Error::other("bpf")))
                        .context("BPF_MAP_LOOKUP_BATCH");
                }
            }
            attempt = 1;
            f(&self.keys[..got], &self.values[..got * self.cpus]);
            if errno.is_some() {
                // ENOENT: that was the last chunk.
                break;
            }
            first = false;
            position = next;
        }
        // Keep the buffers for the next read, but not a burst's worth of them.
        if self.keys.capacity() > 4 * 4096 {
            self.keys = Vec::new();
            self.values = Vec::new();
            self.chunk = 4096;
        }
        Ok(true)
    }
}

/// A key type with an all-zero value (every bit pattern of a `Pod` key is valid).
trait Zeroed: Pod {
    fn default_zeroed() -> Self {
        // SAFETY: Pod types are plain integers and byte arrays, valid as all zeros.
        unsafe { std::mem::zeroed() }
    }
}

impl<K: Pod> Zeroed for K {}

/// Sums one entry's per-CPU values.
pub(super) fn sum<V: Counters>(per_cpu: &[V]) -> V {
    let mut total = V::default();
    for value in per_cpu {
        total.merge(value);
    }
    total
}

/// Reads every entry of a per-CPU counter map, with its per-CPU values, batch by batch where
/// the kernel can.
pub(super) fn read_all<K: Pod, V: Counters>(
    map: &PerCpuHashMap<MapData, K, V>,
    batch: &mut BatchReader<K, V>,
    mut f: impl FnMut(&K, &[V]),
) -> anyhow::Result<()> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let cpus = batch.cpus;
    if batch.for_each_chunk(fd, |keys, values| {
        for (key, per_cpu) in keys.iter().zip(values.chunks_exact(cpus)) {
            f(key, per_cpu);
        }
    })? {
        return Ok(());
    }
    for entry in map.iter() {
        let (key, per_cpu): (K, PerCpuValues<V>) = entry.context("reading a counter map")?;
        f(&key, &per_cpu);
    }
    Ok(())
}

/// The map `name`, moved out of `ebpf` as the aya map type `T`.
pub(super) fn take_map<T>(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))?;
    Ok(T::try_from(map)?)
}
