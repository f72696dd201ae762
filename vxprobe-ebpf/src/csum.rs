//! Checksum failures outside the drop-reason path: `tcp:tcp_bad_csum` for kernels whose
//! `kfree_skb` carries no reason (only attached when the drop ladder found no hook, so nothing
//! is counted twice), and `netdev_rx_csum_fault`, where the kernel finds a device's
//! CHECKSUM_COMPLETE value wrong (flagged, not necessarily dropped).

use aya_ebpf::{
    macros::{btf_tracepoint, kprobe, raw_tracepoint},
    programs::{BtfTracePointContext, ProbeContext, RawTracePointContext},
};
use vxprobe_common::{CsumEvent, CsumOrigin, EventKind};

use crate::{events, kernel};

#[btf_tracepoint(function = "tcp_bad_csum")]
pub fn vxprobe_tcp_bad_csum_btf(ctx: BtfTracePointContext) -> i32 {
    report(ctx.arg(0), CsumOrigin::TcpBadCsum);
    0
}

#[raw_tracepoint(tracepoint = "tcp_bad_csum")]
pub fn vxprobe_tcp_bad_csum_raw(ctx: RawTracePointContext) -> i32 {
    report(ctx.arg(0), CsumOrigin::TcpBadCsum);
    0
}

/// `void netdev_rx_csum_fault(struct net_device *dev, struct sk_buff *skb)`
#[kprobe]
pub fn vxprobe_rx_csum_fault_kprobe(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    report(skb, CsumOrigin::RxCsumFault);
    0
}

#[inline(always)]
fn report(skb: *const u8, origin: CsumOrigin) {
    let offsets = kernel::offsets();
    let Some(mut entry) = events::reserve::<CsumEvent>(EventKind::Csum) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring-buffer record; every field
    // is written before submit.
    unsafe {
        (*event).origin = origin as u32;
        (*event)._pad = 0;
        (*event).packet._pad = 0;
        (*event).header.netns = kernel::fill_packet_info(skb, &mut (*event).packet, &offsets);
    }
    events::submit(entry);
}
