#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quantize_fuzz::stats(data));
