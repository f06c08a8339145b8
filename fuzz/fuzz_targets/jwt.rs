#![no_main]
//! See fuzz/props.rs, `jwt`.
#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::jwt(data));
