//! `skb:kfree_skb`: every packet the kernel frees with a drop reason. The rungs of the hook
//! ladder share one body: tp_btf where the kernel offers BTF-typed tracepoints, kprobes on the
//! freeing function (`sk_skb_reason_drop` since 6.11, `kfree_skb_reason` before, `kfree_skb`
//! before 5.17), the raw tracepoint last.
//!
//! Before 5.17 the tracepoint has no `reason` argument (skb, location only), and a program
//! that reads one is refused: those kernels get the `_noreason` programs, chosen by user space
//! from the tracepoint's arguments in BTF. Their frees are `NOT_SPECIFIED`, except a packet
//! whose checksum the stack computed in software and found wrong (see [`csum_failed`]).

use aya_ebpf::{
    macros::{btf_tracepoint, kprobe, raw_tracepoint},
    programs::{BtfTracePointContext, ProbeContext, RawTracePointContext},
};
use vxprobe_common::{
    DropEvent, EventKind, KernelOffsets,
    event::{ABSENT, REASONLESS_CSUM, REASONLESS_TOO_BIG},
};

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

#[btf_tracepoint(function = "kfree_skb")]
pub fn vxprobe_kfree_skb_btf_noreason(ctx: BtfTracePointContext) -> i32 {
    let skb = ctx.arg(0);
    on_kfree_skb(skb, ctx.arg(1), reasonless(skb));
    0
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn vxprobe_kfree_skb_raw_noreason(ctx: RawTracePointContext) -> i32 {
    let skb = ctx.arg(0);
    on_kfree_skb(skb, ctx.arg(1), reasonless(skb));
    0
}

/// `void kfree_skb(struct sk_buff *skb)`, a function before 5.17.
#[kprobe]
pub fn vxprobe_kfree_skb_kprobe(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    on_kfree_skb(skb, caller(&ctx), reasonless(skb));
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

/// The reason a kernel without drop reasons did not give: a size drop where this CPU just
/// sent fragmentation needed for this very packet (the frag_needed hook marks it; the mark
/// lasts until this CPU's next free), a checksum failure where the packet says so.
#[inline(always)]
fn reasonless(skb: *const u8) -> u32 {
    if let Some(slot) = crate::pmtu::TOO_BIG.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs on one CPU do not preempt each other.
        let marked = unsafe { core::mem::replace(&mut *slot, 0) };
        if marked != 0 && marked == skb as u64 {
            return REASONLESS_TOO_BIG;
        }
    }
    if csum_failed(skb, &kernel::offsets()) {
        REASONLESS_CSUM
    } else {
        kernel::offsets().reason_not_specified
    }
}

const CHECKSUM_COMPLETE: u32 = 2;

/// The stack computed the packet's checksum in software (`__skb_checksum_complete`) and found
/// it wrong: it leaves `ip_summed` CHECKSUM_COMPLETE, `csum_complete_sw` set and `csum_valid`
/// clear. That is how UDP, TCP and ICMP validate a checksum the device did not, and the packet
/// is then freed (`__udp4_lib_rcv`, `tcp_v4_rcv`...) with nothing else to say why.
#[inline(always)]
fn csum_failed(skb: *const u8, o: &KernelOffsets) -> bool {
    if o.skb_ip_summed_bit == ABSENT
        || o.skb_csum_valid_bit == ABSENT
        || o.skb_csum_sw_bit == ABSENT
    {
        return false;
    }
    bits(skb, o.skb_ip_summed_bit, 2) == CHECKSUM_COMPLETE
        && bits(skb, o.skb_csum_sw_bit, 1) == 1
        && bits(skb, o.skb_csum_valid_bit, 1) == 0
}

/// `width` bits of a bitfield at bit offset `bit` of a little-endian struct.
#[inline(always)]
fn bits(base: *const u8, bit: u32, width: u32) -> u32 {
    let word = kernel::read::<u16>(base, bit / 8).unwrap_or(0);
    (u32::from(word) >> (bit % 8)) & ((1 << width) - 1)
}

#[inline(always)]
fn on_kfree_skb(skb: *const u8, location: u64, reason: u32) {
    let offsets = kernel::offsets();
    // SKB_NOT_DROPPED_YET and SKB_CONSUMED are not drops, where the kernel has them (their
    // values come from its enum; ABSENT otherwise, which no reason equals).
    if reason == offsets.reason_not_dropped || reason == offsets.reason_consumed {
        return;
    }
    let Some(mut entry) = events::reserve::<DropEvent>(EventKind::Drop) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring-buffer record of the right
    // size; every field is written before submit.
    unsafe {
        (*event).location = location;
        (*event).reason = reason;
        (*event)._pad = 0;
        (*event).packet._pad = 0;
        (*event).header.netns = kernel::fill_packet_info(skb, &mut (*event).packet, &offsets);
    }
    events::submit(entry);
}
