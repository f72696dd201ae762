//! TC programs for the benchmark's yardsticks. vxprobe never attaches them: the benchmark
//! attaches them beside the real TC programs, on the same hooks and packets, so the cost per
//! run the kernel reports can be split into what any program pays (the no-op: its clock reads,
//! the dispatch), what the least per-hop counter pays, and what vxprobe's work adds.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};

#[classifier]
pub fn vxprobe_yardstick_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Packets and bytes per device (ifindex modulo the size).
#[map]
static YARDSTICK_COUNTS: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(256, 0);

/// The least a per-hop counter does: one per-CPU array slot by ifindex, packets and bytes.
#[classifier]
pub fn vxprobe_yardstick_count_tc(ctx: TcContext) -> i32 {
    // SAFETY: a plain field of the __sk_buff context the kernel handed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if let Some(counts) = YARDSTICK_COUNTS.get_ptr_mut(ifindex % 256) {
        // SAFETY: a per-CPU slot: only this CPU writes it while this program runs.
        unsafe {
            (*counts)[0] += 1;
            (*counts)[1] += u64::from(ctx.len());
        }
    }
    TC_ACT_UNSPEC
}

/// vxprobe's own TC program cut short after a step (`tc::step`): what the device lookup, the
/// parse and the hop's counters each add, on the same hooks and packets as the real one.
#[classifier]
pub fn vxprobe_step_device_tc(ctx: TcContext) -> i32 {
    crate::tc::observe::<{ crate::tc::step::DEVICE }>(&ctx, vxprobe_common::Direction::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn vxprobe_step_parse_tc(ctx: TcContext) -> i32 {
    crate::tc::observe::<{ crate::tc::step::PARSE }>(&ctx, vxprobe_common::Direction::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn vxprobe_step_hop_tc(ctx: TcContext) -> i32 {
    crate::tc::observe::<{ crate::tc::step::HOP }>(&ctx, vxprobe_common::Direction::Ingress);
    TC_ACT_UNSPEC
}
