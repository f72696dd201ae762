//! A TC program that does nothing. vxprobe never attaches it: the benchmark attaches it beside
//! the real TC programs, on the same hooks and packets, so the cost per run the kernel reports
//! for it (its clock reads, the dispatch) can be told apart from the cost of vxprobe's work.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

#[classifier]
pub fn vxprobe_yardstick_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}
