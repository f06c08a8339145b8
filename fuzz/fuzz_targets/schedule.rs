#![no_main]
//! See fuzz/props.rs, `schedule`.
#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::schedule(data));
