//! TC classifiers: the per-hop view of the datapath. Attached at ingress and egress of every
//! selected device; they only observe and always hand the packet on unchanged.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};
use vxprobe_common::{Direction, HopCounters, HopKey, MAX_HOPS};

#[map]
static HOP_STATS: PerCpuHashMap<HopKey, HopCounters> = PerCpuHashMap::with_max_entries(MAX_HOPS, 0);

/// TC_ACT_UNSPEC (TCX_NEXT on TCX): "no verdict", so the next program on the hook (Cilium's,
/// Calico's) still runs and decides. An observer never ends classification.
const PASS_ON: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn vxprobe_tc_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Ingress);
    PASS_ON
}

#[classifier]
pub fn vxprobe_tc_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Egress);
    PASS_ON
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: Direction) {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed to this program; ifindex is a
    // plain field of its context struct, readable for every TC program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = HopKey {
        ifindex,
        direction: direction as u32,
    };
    count_hop(&key, ctx.len());
}

#[inline(always)]
fn count_hop(key: &HopKey, len: u32) {
    match HOP_STATS.get_ptr_mut(key) {
        Some(counters) => {
            // SAFETY: a per-CPU slot: only this CPU writes it while this program runs, and the
            // pointer stays valid for the whole program run.
            unsafe {
                (*counters).packets += 1;
                (*counters).bytes += u64::from(len);
            }
        }
        None => {
            let first = HopCounters {
                packets: 1,
                bytes: u64::from(len),
            };
            // A full map loses this packet's count; MAX_HOPS is far above any node's devices.
            let _ = HOP_STATS.insert(key, &first, 0);
        }
    }
}
