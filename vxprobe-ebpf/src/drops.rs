//! `skb:kfree_skb`: every packet the kernel frees with a drop reason. Two rungs of the hook
//! ladder share one body: tp_btf where the kernel offers BTF-typed tracepoints, the raw
//! tracepoint otherwise; both see the tracepoint's arguments (skb, location, reason, ...).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use vxprobe_common::{DropEvent, EventKind};

use crate::{events, kernel};

#[btf_tracepoint(function = "kfree_skb")]
pub fn vxprobe_kfree_skb_btf(ctx: BtfTracePointContext) -> i32 {
    on_kfree_skb(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn vxprobe_kfree_skb_raw(ctx: RawTracePointContext) -> i32 {
    on_kfree_skb(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

#[inline(always)]
fn on_kfree_skb(skb: *const u8, location: u64, reason: u32) {
    let offsets = kernel::offsets();
    // SKB_NOT_DROPPED_YET (0) and SKB_CONSUMED are not drops.
    if reason == 0 || reason == offsets.reason_consumed {
        return;
    }
    let Some(mut entry) = events::reserve::<DropEvent>(EventKind::Drop) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring-buffer record of the right
    // size; every field is written before submit.
    unsafe {
        (*event).header.kind = EventKind::Drop as u32;
        (*event).header.ktime_ns = bpf_ktime_get_ns();
        (*event).location = location;
        (*event).reason = reason;
        (*event)._pad = 0;
        (*event).packet._pad = 0;
        (*event).header.netns = kernel::fill_packet_info(skb, &mut (*event).packet, &offsets);
    }
    events::submit(entry);
}
