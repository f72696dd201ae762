//! `skb:kfree_skb`: every packet the kernel frees with a drop reason. The rungs of the hook
//! ladder share one body: tp_btf where the kernel offers BTF-typed tracepoints, kprobes on the
//! freeing function (`sk_skb_reason_drop` since 6.11, `kfree_skb_reason` before), the raw
//! tracepoint last.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, kprobe, raw_tracepoint},
    programs::{BtfTracePointContext, ProbeContext, RawTracePointContext},
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

#[kprobe]
pub fn vxprobe_sk_skb_reason_drop_kprobe(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    let reason: u64 = ctx.arg(2).unwrap_or(0);
    on_kfree_skb(skb, caller(&ctx), reason as u32);
    0
}

#[kprobe]
pub fn vxprobe_kfree_skb_reason_kprobe(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let reason: u64 = ctx.arg(1).unwrap_or(0);
    on_kfree_skb(skb, caller(&ctx), reason as u32);
    0
}

/// The return address at function entry: where the skb was freed from (what the tracepoint's
/// `location` holds). On x86_64 it is the word at the stack pointer.
#[inline(always)]
fn caller(ctx: &ProbeContext) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: ctx.regs is the pt_regs the kernel handed us; the stack word is read with
        // bpf_probe_read_kernel, which fails cleanly.
        let sp = unsafe { (*ctx.regs).rsp } as *const u8;
        kernel::read::<u64>(sp, 0).unwrap_or(0)
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        // SAFETY: ctx.regs is the pt_regs the kernel handed us; x30 is the link register.
        unsafe { (*ctx.regs).regs[30] }
    }
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    {
        let _ = ctx;
        0
    }
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
