//! Replays every committed fuzz input (`fuzz/corpus/<target>/`, seeds, what the fuzzer kept,
//! and each crash it found) through the same property the libFuzzer target checks
//! (`fuzz/props.rs`), on the stable toolchain: CI's smoke of the fuzz targets.

#[path = "../../fuzz/props.rs"]
pub mod props;

use std::path::Path;

fn corpus(target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_every_input_keeps_its_property() {
    truecontext_bridge::tls::install_crypto_provider();
    for (target, property) in props::TARGETS {
        let files = corpus(target);
        assert!(files.len() >= 3, "{target}: at least the seeds, found {}", files.len());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| property(&data));
            assert!(outcome.is_ok(), "{target}: {} breaks the property", file.display());
        }
    }
}

#[test]
fn the_jwt_property_accepts_a_genuine_token_and_refuses_it_altered() {
    let genuine = props::seed_jwt(0);
    props::jwt(genuine.as_bytes());
    // The claims changed under the same signature: refused, so the property holds.
    let mut parts: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    props::jwt(parts.join(".").as_bytes());
}
