#![no_main]
//! See fuzz/props.rs, `document_structured`: the bytes steer a generator of hostile documents.
#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::document_structured(data));
