#![no_main]
//! See fuzz/props.rs, `callback_params`.
#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::callback_params(data));
