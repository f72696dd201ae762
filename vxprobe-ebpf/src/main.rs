//! vxprobe's kernel programs. One module per probe family; each entry point is a thin wrapper
//! around a function that does the work.
#![no_std]
#![no_main]

mod csum;
mod drops;
mod events;
mod flows;
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
