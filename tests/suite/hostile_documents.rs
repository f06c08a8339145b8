//! Issue 20: the property the landing keeps over any document, however hostile: it lands, or it
//! refuses with a typed error; it never panics (a French date once stopped processing). The
//! documents come from the structure-aware generator the `document_structured` fuzz target uses
//! (`fuzz/props.rs`, `hostile_document`): every question type, repeats, media with odd ids, text
//! with multi-byte and combining characters at every cut point, numbers JSON cannot hold, wrong
//! types where TrueContext puts objects.

use crate::fuzz_corpus::props;
use chrono::Utc;
use proptest::prelude::*;
use serde_json::Value;
use truecontext_bridge::landing::{Arrival, Landing, LandingError, Source};
use truecontext_bridge::store::local;

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_document_lands_or_is_refused_by_a_typed_error(data in prop::collection::vec(any::<u8>(), 0..1500)) {
        props::document_structured(&data);
        let raw = serde_json::to_vec(&props::hostile_document(&data)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stores = local::open(dir.path(), None).unwrap();
        let landing = Landing::new(&stores, "submissions", "landed-submissions");
        let arrival = Arrival { connection: "c1", source: Source::Webhook, raw: &raw, order: Utc::now(), processed_date: None };
        match runtime.block_on(landing.land(&arrival)) {
            Ok(landed) => {
                let path = format!("records/c1/{}.json", landed.id);
                let record = runtime.block_on(stores.blobs.get("submissions", &path)).unwrap();
                let record: Value = serde_json::from_slice(&record.expect("the record is stored").content).unwrap();
                prop_assert_eq!(record["sha256"].as_str(), Some(landed.sha256.as_str()));
            }
            Err(LandingError::Panicked(message)) => prop_assert!(false, "the landing panicked: {}", message),
            Err(e) => prop_assert!(e.is_permanent(), "a hostile document is refused for good, not retried: {}", e),
        }
    }
}

/// Each fragment of hostile text at each position of a Date answer: never a panic.
#[test]
fn every_cut_point_of_a_date_answer_is_safe() {
    use truecontext_bridge::landing::normalise;
    for wide in ["é", "日", "😀", "e\u{301}", "👩‍👩‍👧"] {
        for at in 0..=16 {
            let mut text: String = "2025-03-10T12:00:00Z".chars().take(at).collect();
            text.push_str(wide);
            text.push_str("2025-03-10");
            for kind in ["Date", "DateTime", "Number", "Location", "Image"] {
                let document = serde_json::json!({"identifier": "1", "pages": [{"answers": [
                    {"label": "A", "type": kind, "values": [text, {"provided": {"time": text}}]}]}]});
                normalise::normalise(&document, &|m| format!("media/{m}")).unwrap();
            }
        }
    }
}
