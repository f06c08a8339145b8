#![no_main]
//! See fuzz/props.rs, `webhook_body`.
#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::webhook_body(data));
