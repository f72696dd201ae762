//! `tcp:tcp_retransmit_skb`: TCP retransmits per flow, from tp_btf or the raw tracepoint
//! (both get sk, skb, ...). No kprobe: one on `tcp_retransmit_skb` sees attempts, failed
//! ones included.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use vxprobe_common::{EventKind, RetransmitEvent};

use crate::{events, kernel};

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn vxprobe_retransmit_btf(ctx: BtfTracePointContext) -> i32 {
    let offsets = kernel::offsets();
    // Newer kernels pass `err` and fire on failed retransmits too: count the ones that went out.
    let err: i32 = if offsets.retransmit_has_err != 0 {
        ctx.arg(2)
    } else {
        0
    };
    if err == 0 {
        on_retransmit(ctx.arg(0), ctx.arg(1));
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn vxprobe_retransmit_raw(ctx: RawTracePointContext) -> i32 {
    let offsets = kernel::offsets();
    let err: i64 = if offsets.retransmit_has_err != 0 {
        ctx.arg(2)
    } else {
        0
    };
    if err as i32 == 0 {
        on_retransmit(ctx.arg(0), ctx.arg(1));
    }
    0
}

/// SYN-ACKs the server sends again because the client's ACK did not arrive: the request
/// socket starts with a `sock_common`, so the same offsets read its addresses.
#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn vxprobe_retransmit_synack_btf(ctx: BtfTracePointContext) -> i32 {
    on_retransmit(ctx.arg(1), core::ptr::null());
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn vxprobe_retransmit_synack_raw(ctx: RawTracePointContext) -> i32 {
    on_retransmit(ctx.arg(1), core::ptr::null());
    0
}

#[inline(always)]
fn on_retransmit(sk: *const u8, skb: *const u8) {
    let offsets = kernel::offsets();
    let Some(mut entry) = events::reserve::<RetransmitEvent>(EventKind::Retransmit) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring-buffer record; every field
    // is written before submit.
    unsafe {
        (*event).header.netns = kernel::read_sock(sk, &mut (*event).flow, &offsets);
        (*event).state = u32::from(kernel::read::<u8>(sk, offsets.sk_state).unwrap_or(0));
        (*event).segs =
            u32::from(kernel::read::<u16>(skb, offsets.skb_tcp_gso_segs).unwrap_or(1)).max(1);
    }
    events::submit(entry);
}
