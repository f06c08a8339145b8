//! Property tests of the landing rules (src/landing/): whatever order the versions of one
//! submission arrive in, from the sync and the webhook, however many times each, the store
//! ends at the newest version delivered, holds one record, and sent one landed event per real
//! change, in rising version order.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use truecontext_bridge::landing::{self, Arrival, Landing, Outcome, Source};
use truecontext_bridge::store::local;

const CONTAINER: &str = "submissions";
const QUEUE: &str = "landed-submissions";
const ID: &str = "4242";

fn order(version: usize) -> DateTime<Utc> {
    "2026-11-30T08:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::minutes(version as i64)
}

/// Version `v` of the submission; `compact` lays the same content out differently.
fn document(version: usize, compact: bool) -> Vec<u8> {
    let doc = json!({
        "identifier": ID, "referenceNumber": format!("r-{ID}"), "state": "Complete",
        "form": { "identifier": "f1", "name": "Pump", "version": 2 },
        "serverReceiveDate": order(version).to_rfc3339(),
        "pages": [{ "sections": [{ "answers": [{ "label": "Reading", "type": "Integer", "values": [version] }] }] }]
    });
    if compact {
        serde_json::to_vec(&doc).unwrap()
    } else {
        serde_json::to_vec_pretty(&doc).unwrap()
    }
}

/// A delivery: which version, through which door, laid out how.
fn delivery() -> impl Strategy<Value = (usize, bool, bool)> {
    (0usize..5, any::<bool>(), any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_order_and_any_duplicates_end_at_the_newest_version_once(deliveries in prop::collection::vec(delivery(), 1..30)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let stores = local::open(dir.path(), None).unwrap();
            let landing = Landing::new(&stores, CONTAINER, QUEUE);
            let mut newest_so_far: Option<usize> = None;
            let mut real_changes = 0;
            for &(version, pushed, compact) in &deliveries {
                let raw = document(version, compact);
                let source = if pushed { Source::Webhook } else { Source::Sync };
                let arrival = Arrival { connection: "c1", source, raw: &raw, order: order(version), processed_date: None };
                let landed = landing.land(&arrival).await.unwrap();
                let expected = match newest_so_far {
                    None => Outcome::New,
                    Some(n) if version > n => Outcome::Changed,
                    Some(n) if version == n => Outcome::Unchanged,
                    Some(_) => Outcome::Older,
                };
                prop_assert_eq!(landed.outcome, expected, "version {} after {:?}", version, newest_so_far);
                if matches!(expected, Outcome::New | Outcome::Changed) {
                    real_changes += 1;
                    newest_so_far = Some(version);
                }
            }
            let newest = deliveries.iter().map(|d| d.0).max().unwrap();
            let listed = landing::list(&stores, "c1").await.unwrap();
            prop_assert_eq!(listed.len(), 1, "one record");
            prop_assert_eq!(listed[0].row.version, real_changes as u64);
            let record: Value = serde_json::from_slice(
                &stores.blobs.get(CONTAINER, &Landing::record_path("c1", ID)).await.unwrap().unwrap().content,
            ).unwrap();
            prop_assert_eq!(&record["answers"]["Reading"], &json!(newest), "the newest content");
            let events = stores.queues.dequeue(QUEUE, 32, Duration::from_secs(60)).await.unwrap();
            prop_assert_eq!(events.len(), real_changes, "one event per real change");
            let versions: Vec<u64> = events.iter().map(|m| serde_json::from_str::<Value>(&m.body).unwrap()["version"].as_u64().unwrap()).collect();
            prop_assert!(versions.windows(2).all(|w| w[0] < w[1]), "events in rising version order: {:?}", versions);
            Ok(())
        })?;
    }
}
