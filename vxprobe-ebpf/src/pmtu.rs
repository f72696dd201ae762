//! `icmp:icmp_send`: the node answering a packet with ICMP "fragmentation needed" (type 3,
//! code 4), the path-MTU half of an MTU mismatch. tp_btf first, the raw tracepoint next; both
//! get (skb, type, code). Before 5.17 there is no such tracepoint: fentry (or a kprobe) on
//! `__icmp_send(skb, type, code, info, opt)`, which the tracepoint sits in. Fragmentation
//! needed is never rate-limited (icmpv4_mask_allow, icmpv4_xrlim_allow), so a call is a send.

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe, map, raw_tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext},
};
use vxprobe_common::{EventKind, FragNeededEvent};

use crate::{events, kernel};

const ICMP_DEST_UNREACH: i32 = 3;
const ICMP_FRAG_NEEDED: i32 = 4;

#[btf_tracepoint(function = "icmp_send")]
pub fn vxprobe_icmp_send_btf(ctx: BtfTracePointContext) -> i32 {
    let (icmp_type, code): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    on_icmp_send(ctx.arg(0), icmp_type, code);
    0
}

#[raw_tracepoint(tracepoint = "icmp_send")]
pub fn vxprobe_icmp_send_raw(ctx: RawTracePointContext) -> i32 {
    let (icmp_type, code): (i64, i64) = (ctx.arg(1), ctx.arg(2));
    on_icmp_send(ctx.arg(0), icmp_type as i32, code as i32);
    0
}

#[fentry(function = "__icmp_send")]
pub fn vxprobe_icmp_send_fentry(ctx: FEntryContext) -> i32 {
    let (icmp_type, code): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    on_icmp_send(ctx.arg(0), icmp_type, code);
    0
}

#[kprobe]
pub fn vxprobe_icmp_send_kprobe(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let icmp_type: u64 = ctx.arg(1).unwrap_or(0);
    let code: u64 = ctx.arg(2).unwrap_or(0);
    on_icmp_send(skb, icmp_type as i32, code as i32);
    0
}

/// The packet this CPU last answered with fragmentation needed: on kernels without drop
/// reasons, its free right after (`ip_forward`, `ip_fragment`) is a size drop (drops.rs).
#[map]
pub static TOO_BIG: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn on_icmp_send(skb: *const u8, icmp_type: i32, code: i32) {
    if icmp_type != ICMP_DEST_UNREACH || code != ICMP_FRAG_NEEDED {
        return;
    }
    if let Some(slot) = TOO_BIG.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs on one CPU do not preempt each other.
        unsafe { *slot = skb as u64 };
    }
    let offsets = kernel::offsets();
    let Some(mut entry) = events::reserve::<FragNeededEvent>(EventKind::FragNeeded) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring-buffer record; every field
    // is written before submit.
    unsafe {
        (*event).packet._pad = 0;
        (*event).header.netns = kernel::fill_packet_info(skb, &mut (*event).packet, &offsets);
    }
    events::submit(entry);
}
