#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vxprobe::fuzz::text(data));
