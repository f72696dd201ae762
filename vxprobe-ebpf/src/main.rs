//! vxprobe's kernel programs. One module per probe family; each entry point is a thin wrapper
//! around a function that does the work.
#![no_std]
#![no_main]
// The one atomic add vxprobe needs (events.rs: core's atomics offer none on a target without
// compare-and-swap). The kernel programs build with nightly only, through aya-build.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics: atomic_xadd, see events.rs"
)]

mod csum;
mod drops;
mod events;
mod flows;
mod hint;
mod kernel;
mod parse;
mod pmtu;
mod retransmit;
mod send_errors;
mod tc;
mod yardstick;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
