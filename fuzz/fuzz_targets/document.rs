#![no_main]
//! See fuzz/props.rs, `document`.
#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::document(data));
