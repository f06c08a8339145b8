#![no_main]
//! See fuzz/props.rs, `token_response`.
#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::token_response(data));
