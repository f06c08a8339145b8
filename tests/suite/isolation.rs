//! Issue 20: nothing from outside stops the bridge or hides that it stopped. A panic inside a
//! unit of work (a request, a queue message, a landing, a connection's sync run, a supervised
//! task) is that unit's failure: recorded, alerted and shown by status, while everything else
//! goes on. Documents the landing refuses for good are quarantined instead of blocking.
//! The panics come from stores that panic on cue (`harness::tripwire`), as a bug would.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use truecontext_bridge::functions;
use truecontext_bridge::handlers::{HttpRequest, StatusReport};
use truecontext_bridge::landing::quarantine;
use truecontext_bridge::store::{local, Table, TypedTable};
use truecontext_bridge::sync::RunOutcome;
use truecontext_bridge::webhook::Pending;

use crate::harness::hook::Hook;
use crate::harness::tripwire::Tripwire;
use crate::harness::truecontext::TrueContextSim;

fn hook(dir: &tempfile::TempDir, wires: &Tripwire) -> Hook {
    Hook::on(wires.wrap(local::open(dir.path(), None).unwrap()), &[])
}

fn push_body(id: &str) -> Vec<u8> {
    serde_json::to_vec(&TrueContextSim::standard_document(id, "f1", Utc::now())).unwrap()
}

async fn status(hook: &Hook) -> StatusReport {
    StatusReport::gather(&hook.app).await.unwrap()
}

async fn quarantined(hook: &Hook) -> Vec<quarantine::Entry> {
    quarantine::list(&hook.stores, &["default".to_owned()]).await.unwrap()
}

#[tokio::test]
async fn a_landing_that_panics_quarantines_its_push_and_the_rest_lands() {
    let dir = tempfile::tempdir().unwrap();
    let wires = Tripwire::default();
    let hook = hook(&dir, &wires);
    wires.arm(|w| w.blob_put.push("raw/default/666.".into()));
    let pushed = push_body("666");
    assert_eq!(hook.push(&pushed).await.status, 202);
    assert_eq!(hook.push(&push_body("667")).await.status, 202);
    hook.drain().await;
    assert_eq!(hook.poison_len().await, 0, "quarantined, not retried into poison");
    let landed: Vec<String> =
        truecontext_bridge::landing::list(&hook.stores, "default").await.unwrap().into_iter().map(|l| l.id).collect();
    assert_eq!(landed, ["667"], "the other push landed");
    let kept = quarantined(&hook).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].row.identifier, "666");
    assert!(kept[0].row.reason.contains("internal error"), "{}", kept[0].row.reason);
    let bytes = hook.stores.blobs.get(&hook.app.settings.landing.container, &kept[0].row.blob).await.unwrap();
    assert_eq!(bytes.unwrap().content, pushed, "kept exactly as received");
    assert_eq!(hook.rows(Table::Incoming, "default").await, 0, "the push is done: its record is the quarantine row");

    let report = status(&hook).await;
    assert!(!report.healthy);
    assert_eq!(report.summary.status, 424);
    assert!(report.summary.attention.iter().any(|a| a.contains("quarantine")), "{:?}", report.summary.attention);
    assert_eq!(report.quarantine.count, 1);
    assert_eq!(report.webhook.counters.quarantined, 1);
    let alerts = truecontext_bridge::alerts::list(&hook.stores, Some("default")).await.unwrap();
    assert_eq!(alerts.iter().filter(|a| a.alert == quarantine::ALERT).count(), 1);

    // After the fix, a retry lands it from the kept bytes, and status is well again.
    wires.disarm();
    let settings = &hook.app.settings;
    let landing = truecontext_bridge::landing::Landing::new(
        &hook.stores,
        &settings.landing.container,
        &settings.landing.landed_queue,
    );
    let retried = quarantine::retry(&landing, &kept).await.unwrap();
    assert!(matches!(retried[0].1, quarantine::Retried::Landed { .. }), "{retried:?}");
    assert!(quarantined(&hook).await.is_empty());
    let alerts = truecontext_bridge::alerts::list(&hook.stores, Some("default")).await.unwrap();
    assert!(alerts.iter().all(|a| a.alert != quarantine::ALERT), "the alert is cleared");
    let report = status(&hook).await;
    assert!(report.healthy, "{:?}", report.summary.attention);
}

#[tokio::test]
async fn a_panic_outside_the_landing_is_retried_then_poisoned_with_its_row_counter_and_alert() {
    let dir = tempfile::tempdir().unwrap();
    let wires = Tripwire::default();
    let hook = hook(&dir, &wires);
    wires.arm(|w| w.blob_get.push("incoming/default/777/".into()));
    assert_eq!(hook.push(&push_body("777")).await.status, 202);
    hook.drain().await;
    assert_eq!(hook.poison_len().await, 1, "poisoned after every allowed delivery");
    let table = TypedTable::new(hook.stores.tables.as_ref(), Table::Incoming);
    let rows = truecontext_bridge::webhook::pending_of(&hook.stores, "default").await.unwrap();
    assert_eq!(rows.len(), 1);
    let row: Pending = table.get::<Pending>("default", &rows[0].0).await.unwrap().unwrap().value;
    assert!(row.poisoned);
    assert_eq!(row.attempts, hook.app.settings.queues.max_dequeue_count);
    assert!(row.last_error.as_deref().unwrap_or("").contains("internal error"), "{:?}", row.last_error);
    let alerts = truecontext_bridge::alerts::list(&hook.stores, Some("default")).await.unwrap();
    assert!(alerts.iter().any(|a| a.alert == "push_poisoned"));

    // The worker is alive: the next push lands.
    assert_eq!(hook.push(&push_body("778")).await.status, 202);
    hook.drain().await;
    assert_eq!(truecontext_bridge::landing::list(&hook.stores, "default").await.unwrap().len(), 1);
    let report = status(&hook).await;
    assert_eq!(report.webhook.counters.poisoned, 1);
    assert_eq!(report.summary.status, 424);
}

#[tokio::test]
async fn hostile_documents_in_the_sync_are_landed_or_quarantined_and_the_walk_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let wires = Tripwire::default();
    let hook = hook(&dir, &wires);
    let now = Utc::now();
    let ordinary = hook.sim.add_spaced(30, "f1", now - TimeDelta::minutes(1), TimeDelta::seconds(20));
    let at = now - TimeDelta::minutes(5);
    let mut french = TrueContextSim::standard_document("9001", "f1", at);
    french["pages"][0]["sections"][0]["answers"] = json!([{"label": "Jour", "type": "Date", "values": ["7 décembre 2026"]}, {"label": "日付", "type": "Date", "values": ["2026年12月7日"]}]);
    hook.sim.add_document("9001", "f1", at, serde_json::to_vec(&french).unwrap());
    hook.sim.add_document("9002", "f1", at, b"<html>Service Unavailable</html>".to_vec());
    hook.sim.add_document("9003", "f1", at, b"[1, 2, 3]".to_vec());
    hook.sim.add_document("9004", "f1", at, br#"{"identifier": "../../etc", "pages": []}"#.to_vec());
    hook.sim.add_document("9005", "f1", at, br#"{"pages": []}"#.to_vec());
    hook.sim.add_document(
        "9006",
        "f1",
        at,
        serde_json::to_vec(&TrueContextSim::standard_document("9006", "f1", at)).unwrap(),
    );
    wires.arm(|w| w.blob_put.push("raw/default/9006.".into()));

    let deadline = truecontext_bridge::handlers::run_deadline(&hook.app);
    let RunOutcome::Ran(summary) =
        truecontext_bridge::handlers::pull(&hook.app, "default", None, deadline).await.unwrap()
    else {
        panic!("busy")
    };
    assert!(summary.completed, "{summary:?}");
    assert_eq!(summary.documents_landed as usize, ordinary.len() + 1, "{summary:?}");
    assert_eq!(summary.documents_quarantined, 5, "{summary:?}");
    let kept = quarantined(&hook).await;
    let mut ids: Vec<&str> = kept.iter().map(|e| e.row.identifier.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["9002", "9003", "9004", "9005", "9006"]);
    for entry in &kept {
        let expected = match entry.row.identifier.as_str() {
            "9002" => "not JSON",
            "9003" => "not a JSON object",
            "9004" => "not a TrueContext identifier",
            "9005" => "no identifier",
            _ => "internal error",
        };
        assert!(entry.row.reason.contains(expected), "{}: {}", entry.row.identifier, entry.row.reason);
    }
    let record =
        hook.stores.blobs.get(&hook.app.settings.landing.container, "records/default/9001.json").await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(&record.unwrap().content).unwrap();
    assert_eq!(record["answers"]["Jour"], "7 décembre 2026", "a date in words is kept as entered");
    let report = status(&hook).await;
    assert!(report.summary.attention.iter().any(|a| a.contains("quarantine")), "{:?}", report.summary.attention);

    // The next run walks on from where this one ended: nothing blocks it.
    hook.sim.add_records(3, "f1", Utc::now() - TimeDelta::seconds(2));
    let RunOutcome::Ran(next) = truecontext_bridge::handlers::pull(&hook.app, "default", None, deadline).await.unwrap()
    else {
        panic!("busy")
    };
    assert!(next.completed && next.documents_landed >= 3, "{next:?}");
}

#[tokio::test]
async fn a_request_that_panics_answers_500_and_the_next_one_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let wires = Tripwire::default();
    let hook = hook(&dir, &wires);
    let status_fn = functions::by_name("status").unwrap();
    let request = || HttpRequest {
        method: axum::http::Method::GET,
        query: vec![],
        headers: axum::http::HeaderMap::new(),
        body: vec![],
        peer: None,
    };
    wires.arm(|w| w.table_get.push(Table::Connections));
    let failed = hook.app.http(status_fn, request()).await;
    assert_eq!(failed.status, 500);
    assert!(failed.body.contains("internal_error") && !failed.body.contains("tripwire"), "{}", failed.body);
    wires.disarm();
    let served = hook.app.http(status_fn, request()).await;
    assert!(served.status == 200 || served.status == 424, "{}", served.status);
}

#[tokio::test]
async fn a_supervised_task_that_stops_is_started_again_and_status_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let wires = Tripwire::default();
    let hook = hook(&dir, &wires);
    let starts = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let counted = starts.clone();
    let task_stop = stop.clone();
    let supervisor = tokio::spawn(truecontext_bridge::standalone::supervise(
        hook.app.clone(),
        "test task",
        stop.clone(),
        move || {
            let start = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let stop = task_stop.clone();
            async move {
                match start {
                    1 => panic!("the first run breaks"),
                    2 => {}
                    // Like the server's tasks, it ends when told to stop.
                    _ => stop.cancelled().await,
                }
            }
        },
    ));
    for _ in 0..100 {
        if starts.load(Ordering::SeqCst) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(starts.load(Ordering::SeqCst), 3, "started again after a panic and after an end");
    let report = status(&hook).await;
    assert_eq!(report.supervision.task_restarts.get("test task"), Some(&2));
    let last = report.supervision.last_restart.as_ref().unwrap();
    assert_eq!(last.reason, "it ended");
    assert!(report.summary.attention.iter().any(|a| a.contains("test task")), "{:?}", report.summary.attention);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), supervisor).await.unwrap().unwrap();
}

/// Found by the outside review: a push without its document, for an id TrueContext does not
/// have, spent a call on each of its five deliveries and ended in the poison queue; three
/// hundred of them spent the day's budget. A 404 is final: one call, and it is gone.
#[tokio::test]
async fn a_template_push_for_an_id_truecontext_lacks_costs_one_call_and_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let wires = Tripwire::default();
    let hook = hook(&dir, &wires);
    let body = serde_json::to_vec(&json!({ "identifier": "8800000000", "template": "x" })).unwrap();
    assert_eq!(hook.push(&body).await.status, 202);
    hook.drain().await;
    assert_eq!(hook.poison_len().await, 0);
    assert_eq!(hook.rows(Table::Incoming, "default").await, 0, "done with");
    let fetches = hook.sim.calls().iter().filter(|c| c.path.contains("8800000000")).count();
    assert_eq!(fetches, 1, "one call, not one per delivery");
    let report = status(&hook).await;
    assert_eq!(report.webhook.counters.gone, 1);
    assert!(report.summary.attention.iter().any(|a| a.contains("does not have")), "{:?}", report.summary.attention);
}

/// Found by the outside review: pushes refused after their caller was verified (a destination
/// sending the wrong body or naming no connection) left status healthy.
#[tokio::test]
async fn a_verified_caller_whose_pushes_are_refused_shows_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let wires = Tripwire::default();
    let hook = hook(&dir, &wires);
    assert!(status(&hook).await.healthy);
    assert_eq!(hook.push(b"not json").await.status, 400);
    let report = status(&hook).await;
    assert!(!report.healthy);
    let attention = report.summary.attention.join("\n");
    assert!(attention.contains("invalid_body") && attention.contains("Data Destination"), "{attention}");
}
