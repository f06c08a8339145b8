#![no_main]
//! See fuzz/props.rs, `list_page`.
#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::list_page(data));
