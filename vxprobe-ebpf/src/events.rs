//! The ring buffer every event goes through, with loss counted per kind in the kernel.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    TASK_COMM_LEN,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use vxprobe_common::{Event, EventHeader, EventKind, RING_SIZE};

/// Resized by user space (`--ring-size`) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_SIZE, 0);

/// Events that found the ring buffer full, per kind (index: `EventKind as u32`).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(EventKind::COUNT, 0);

/// Records submitted on this CPU; every 64th wakes the reader, the rest are picked up with
/// it or at the next interval, so a flood costs one wakeup per 64 events, not one each.
#[map]
static SUBMITTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const WAKEUP_EVERY: u64 = 64;

/// Reserves room for a `T` and writes its header (`kind`, the time, no namespace yet), or
/// counts the loss against `kind`.
#[inline(always)]
pub fn reserve<T: Event + 'static>(kind: EventKind) -> Option<RingBufEntry<T>> {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        if let Some(lost) = LOST.get_ptr_mut(kind as u32) {
            // A per-CPU slot, but not one program's alone: a program in process context (a
            // send refused, a socket freeing an skb) can be interrupted on its CPU by a
            // softirq whose program finds the ring full too. A plain load-add-store would
            // lose one of the two counts; the atomic add (BPF_ATOMIC | BPF_ADD without
            // fetch, which every kernel since 3.18 has as XADD) loses none.
            // (The BPF target has no compare-and-swap, so core's atomic types offer no
            // fetch_add: the intrinsic they are built on, whose unused result LLVM lowers to
            // that add.)
            // SAFETY: `lost` points at a live, aligned u64 of the map for as long as this
            // program runs, and is only ever accessed atomically or by user space's reads.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(lost, 1) };
        }
        return None;
    };
    let header = entry.as_mut_ptr().cast::<EventHeader>();
    // SAFETY: a reserved, exclusively owned record of a `T`, which starts with its header
    // (`Event`'s contract).
    unsafe {
        (*header).kind = kind as u32;
        (*header).netns = 0;
        (*header).ktime_ns = bpf_ktime_get_ns();
    }
    Some(entry)
}

/// (The count of submissions stays a plain add: a lost increment only moves a wakeup, and an
/// atomic add whose result is used needs BPF_FETCH, Linux 5.12.)
#[inline(always)]
pub fn submit<T>(entry: RingBufEntry<T>) {
    let mut flags = u64::from(BPF_RB_NO_WAKEUP);
    if let Some(count) = SUBMITTED.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, written only by this CPU while this program runs.
        unsafe {
            *count += 1;
            if *count % WAKEUP_EVERY == 0 {
                flags = u64::from(BPF_RB_FORCE_WAKEUP);
            }
        }
    }
    entry.submit(flags);
}

/// The current task's name, written straight into an event: through a stack copy, its bytes
/// may be read back as words at odd offsets, which the verifier refuses (kernel.rs'
/// `read_bytes`). Zeros if the helper fails.
#[inline(always)]
pub fn current_comm(comm: &mut [u8; TASK_COMM_LEN]) {
    // SAFETY: the helper writes at most TASK_COMM_LEN bytes into `comm`.
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(
            comm.as_mut_ptr().cast(),
            TASK_COMM_LEN as u32,
        )
    };
}
