//! Pushes from intake to landing, in-process on the embedded store: bad bodies are refused and
//! store nothing; each document format lands; a template body has its document fetched;
//! duplicates are harmless (50 identical at once: one record, one processing, one event);
//! a push whose processing keeps failing is retried, poisoned with one alert, replayed and
//! landed; a push stranded between its row and its message is queued by the recovery pass;
//! push and pull of one submission end as one record and one version.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use chrono::{TimeDelta, Utc};
use serde_json::{json, Value};
use truecontext_bridge::landing::{self, Source};
use truecontext_bridge::store::{Table, TypedTable};

use crate::harness::hook::{Hook, PASSWORD};
use crate::harness::truecontext::Fault;

fn status_of(response: &truecontext_bridge::handlers::HttpResponse) -> (StatusCode, Value) {
    (response.status, serde_json::from_str(&response.body).unwrap_or(Value::Null))
}

/// A submission of the simulator and its document exactly as TrueContext serves it.
fn submission(hook: &Hook) -> (String, Vec<u8>) {
    let id = hook.sim.add_records(1, "form-1", Utc::now() - TimeDelta::minutes(5)).remove(0);
    let document = hook.sim.record(&id).unwrap().document;
    (id, document)
}

#[tokio::test]
async fn bad_bodies_are_refused_with_their_reason_and_store_nothing() {
    bad_bodies_are_refused_with_their_reason_and_store_nothing_on(&Hook::new(&[("WEBHOOK_MAX_BODY_BYTES", "2048")]))
        .await;
}

pub async fn bad_bodies_are_refused_with_their_reason_and_store_nothing_on(hook: &Hook) {
    let auth = Hook::basic_auth(PASSWORD);
    let big = serde_json::to_vec(&json!({ "identifier": "1", "padding": "x".repeat(3000) })).unwrap();
    let (status, body) = status_of(&hook.send("", std::slice::from_ref(&auth), &big).await);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"]["message"].as_str().unwrap().contains("WEBHOOK_MAX_BODY_BYTES"), "{body}");

    let form = (header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
    let (status, body) = status_of(&hook.send("", &[auth.clone(), form], b"identifier=1").await);
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(body["error"]["code"], "not_json");

    let cases: [(&[u8], &str); 5] = [
        (b"{\"identifier\": \"1\",", "not JSON"),
        (b"", "empty"),
        (b"[{\"identifier\": \"1\"}]", "not a JSON object"),
        (b"{\"form\": \"Pump\"}", "names no submission"),
        (b"{\"identifier\": \"../../etc/passwd\"}", "not a TrueContext identifier"),
    ];
    for (bad, expected) in cases {
        let (status, body) = status_of(&hook.send("", std::slice::from_ref(&auth), bad).await);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{expected}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(expected), "{expected}: {body}");
    }
    let (status, body) =
        status_of(&hook.send("connection=other", std::slice::from_ref(&auth), b"{\"identifier\": \"1\"}").await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("no active connection \"other\""), "{body}");
    let (status, _) = status_of(&hook.send("connection=..%2Fx", &[auth], b"{\"identifier\": \"1\"}").await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    hook.assert_nothing_stored("bad bodies").await;
}

#[tokio::test]
async fn each_format_lands_and_a_template_has_its_document_fetched() {
    each_format_lands_and_a_template_has_its_document_fetched_on(&Hook::new(&[("WEBHOOK_ID_FIELD", "submission.id")]))
        .await;
}

pub async fn each_format_lands_and_a_template_has_its_document_fetched_on(hook: &Hook) {
    let (standard_id, standard) = submission(hook);
    let (wrapped_id, document) = submission(hook);
    let wrapped =
        serde_json::to_vec(&json!({ "dataRecord": serde_json::from_slice::<Value>(&document).unwrap() })).unwrap();
    let labels = serde_json::to_vec(&json!({
        "identifier": "777001", "referenceNumber": "20250304-777001", "state": "Complete",
        "form": { "identifier": "form-1", "name": "Pump" },
        "pages": [{ "Overview": { "Result": "Pass", "Units": 3, "Notes": ["a", "b"] } }]
    }))
    .unwrap();
    let (template_id, _) = submission(hook);
    let template = serde_json::to_vec(&json!({ "submission": { "id": template_id, "form": "Pump" } })).unwrap();

    for (body, id) in
        [(&standard, &standard_id), (&wrapped, &wrapped_id), (&labels, &"777001".to_owned()), (&template, &template_id)]
    {
        let (status, answer) = status_of(&hook.push(body).await);
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer, json!({ "identifier": id, "status": "accepted" }));
    }
    assert_eq!(hook.blobs("incoming/default/").await.len(), 4, "each body stored as received");
    let documents_before = hook.sim.calls().iter().filter(|c| c.path.ends_with("document.json")).count();
    hook.drain().await;
    let documents = hook.sim.calls().iter().filter(|c| c.path.ends_with("document.json")).count() - documents_before;
    assert_eq!(documents, 1, "only the template needed its document");

    let listed = landing::list(&hook.stores, "default").await.unwrap();
    assert_eq!(listed.len(), 4);
    let container = &hook.app.settings.landing.container;
    let raw = |id: &str| {
        let stores = hook.stores.clone();
        let (container, id) = (container.clone(), id.to_owned());
        async move { stores.blobs.get(&container, &format!("raw/default/{id}.json")).await.unwrap().unwrap().content }
    };
    assert_eq!(raw(&standard_id).await, standard, "the raw document exactly as pushed");
    assert_eq!(raw(&template_id).await, hook.sim.record(&template_id).unwrap().document, "the fetched document");
    let record: Value = serde_json::from_slice(
        &hook.stores.blobs.get(container, "records/default/777001.json").await.unwrap().unwrap().content,
    )
    .unwrap();
    assert_eq!(record["answers"]["Result"], "Pass", "{record}");
    assert_eq!(record["answers"]["Notes"], json!(["a", "b"]));
    assert_eq!(record["source"], "webhook");
    assert_eq!(hook.landed_events().await.len(), 4, "one landed event each");
    assert_eq!(hook.rows(Table::Incoming, "default").await, 0, "nothing left pending");
    assert_eq!(hook.rows(Table::Deliveries, "default").await, 4);
}

#[tokio::test]
async fn duplicates_are_harmless_and_an_edit_is_processed_again() {
    duplicates_are_harmless_and_an_edit_is_processed_again_on(&Hook::new(&[])).await;
}

pub async fn duplicates_are_harmless_and_an_edit_is_processed_again_on(hook: &Hook) {
    let (id, document) = submission(hook);
    assert_eq!(hook.push(&document).await.status, StatusCode::ACCEPTED);
    let (status, answer) = status_of(&hook.push(&document).await);
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({ "identifier": id, "status": "duplicate" })),
        "before processing"
    );
    assert_eq!(hook.queue_len().await, 1, "one processing queued");
    hook.drain().await;
    let (status, _) = status_of(&hook.push(&document).await);
    assert_eq!(status, StatusCode::OK, "after processing");
    assert_eq!(hook.queue_len().await, 0);

    hook.sim.edit(&id);
    let edited = hook.sim.record(&id).unwrap().document;
    assert_ne!(edited, document);
    assert_eq!(hook.push(&edited).await.status, StatusCode::ACCEPTED, "an edit is a new delivery");
    hook.drain().await;
    let row = landing::find(&hook.stores, &["default".into()], &id).await.unwrap().unwrap().row;
    assert_eq!(row.version, 2);
    assert_eq!(hook.landed_events().await.len(), 2, "one event per real change");
    let fetches = |hook: &Hook| hook.sim.calls().iter().filter(|c| c.path.ends_with("/document.json")).count();
    assert_eq!(fetches(hook), 1, "the edit would replace a landed version: the current one was fetched");

    // Another submission: its first version's deliveries failed (we were down), it was edited,
    // the edit was delivered; then TrueContext's retry of the first version gets through. It is
    // a new delivery, but the landed version stays the newest.
    let (other, first_version) = submission(hook);
    hook.sim.edit(&other);
    let second_version = hook.sim.record(&other).unwrap().document;
    assert_eq!(hook.push(&second_version).await.status, StatusCode::ACCEPTED);
    hook.drain().await;
    assert_eq!(fetches(hook), 1, "a first push costs no call");
    assert_eq!(hook.push(&first_version).await.status, StatusCode::ACCEPTED, "the late retry");
    hook.drain().await;
    let row = landing::find(&hook.stores, &["default".into()], &other).await.unwrap().unwrap().row;
    assert_eq!(row.version, 1, "the late retry did not replace the edit");
    let raw = hook.stores.blobs.get(&hook.app.settings.landing.container, &format!("raw/default/{other}.json")).await;
    assert_eq!(raw.unwrap().unwrap().content, second_version, "the latest content stays");
    assert_eq!(fetches(hook), 2, "one call to learn which version is current");
    assert_eq!(hook.landed_events().await.len(), 1, "one event: the second version's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_deliveries_identical_and_distinct() {
    fifty_concurrent_deliveries_on(std::sync::Arc::new(Hook::new(&[]))).await;
}

pub async fn fifty_concurrent_deliveries_on(hook: std::sync::Arc<Hook>) {
    let (id, document) = submission(&hook);
    let identical: Vec<_> = (0..50)
        .map(|_| {
            let (hook, document) = (hook.clone(), document.clone());
            tokio::spawn(async move { hook.push(&document).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in identical {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 49, "{statuses:?}");
    assert_eq!(hook.drain().await, 1, "one processing");
    assert_eq!(landing::list(&hook.stores, "default").await.unwrap().len(), 1);
    assert_eq!(hook.landed_events().await.len(), 1, "one landed event for {id}");

    let ids = hook.sim.add_records(50, "form-2", Utc::now() - TimeDelta::minutes(2));
    let distinct: Vec<_> = ids
        .iter()
        .map(|id| {
            let (hook, document) = (hook.clone(), hook.sim.record(id).unwrap().document);
            tokio::spawn(async move { hook.push(&document).await.status })
        })
        .collect();
    for task in distinct {
        assert_eq!(task.await.unwrap(), StatusCode::ACCEPTED);
    }
    assert_eq!(hook.drain().await, 50);
    assert_eq!(landing::list(&hook.stores, "default").await.unwrap().len(), 51);
    assert_eq!(hook.landed_events().await.len(), 50);
}

#[tokio::test]
async fn failing_processing_is_retried_poisoned_alerted_once_then_replayed_and_landed() {
    failing_processing_is_retried_poisoned_alerted_once_then_replayed_and_landed_on(&Hook::new(&[(
        "QUEUE_MAX_DEQUEUE_COUNT",
        "3",
    )]))
    .await;
}

pub async fn failing_processing_is_retried_poisoned_alerted_once_then_replayed_and_landed_on(hook: &Hook) {
    let (id, _) = submission(hook);
    let template = serde_json::to_vec(&json!({ "identifier": id, "note": "template without pages" })).unwrap();
    for _ in 0..3 {
        hook.sim.fault(Fault::Status { status: 400, code: "InvalidRequestDataFormat", retry_after: None });
    }
    assert_eq!(hook.push(&template).await.status, StatusCode::ACCEPTED);
    let worker = hook.worker();
    for _ in 0..50 {
        worker.poll_once(hook.stores.queues.as_ref()).await.unwrap();
        if hook.poison_len().await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hook.poison_len().await, 1, "moved to the poison queue after 3 deliveries");
    assert_eq!(hook.queue_len().await, 0);
    let alerts = truecontext_bridge::alerts::list(&hook.stores, Some("default")).await.unwrap();
    assert_eq!(alerts.iter().filter(|a| a.alert == "push_poisoned").count(), 1, "{alerts:?}");
    let listed = truecontext_bridge::ops::poison::list(&hook.app).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].submission.as_deref(), Some(id.as_str()));
    assert_eq!(listed[0].attempts, Some(3));
    assert!(listed[0].last_error.as_deref().unwrap().contains("400"), "{:?}", listed[0].last_error);
    let report = truecontext_bridge::handlers::StatusReport::gather(&hook.app).await.unwrap();
    assert_eq!((report.webhook.counters.retried, report.webhook.counters.poisoned), (2, 1));
    assert_eq!(report.webhook.poison_queue_depth, 1);
    assert!(report.summary.attention.iter().any(|a| a.contains("poison")), "{:?}", report.summary.attention);

    // The cause has gone (the faults are spent); the replay lands it.
    let replayed = truecontext_bridge::ops::poison::replay(&hook.app, Some(&id)).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!((hook.poison_len().await, hook.queue_len().await), (0, 1));
    let alerts = truecontext_bridge::alerts::list(&hook.stores, Some("default")).await.unwrap();
    assert!(!alerts.iter().any(|a| a.alert == "push_poisoned"), "the replay resolved its alert: {alerts:?}");
    hook.drain().await;
    assert_eq!(landing::list(&hook.stores, "default").await.unwrap().len(), 1);
    assert_eq!(hook.rows(Table::Incoming, "default").await, 0);
}

#[tokio::test]
async fn a_push_stranded_before_its_message_is_queued_by_the_recovery_pass() {
    a_push_stranded_before_its_message_is_queued_by_the_recovery_pass_on(&Hook::new(&[(
        "WEBHOOK_RECOVERY_SECONDS",
        "1",
    )]))
    .await;
}

pub async fn a_push_stranded_before_its_message_is_queued_by_the_recovery_pass_on(hook: &Hook) {
    let (id, document) = submission(hook);
    // As if the process died after the pending row and before the enqueue.
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&document));
    let key = truecontext_bridge::webhook::delivery_key(&id, &sha);
    let blob = truecontext_bridge::webhook::blob_path("default", &id, &sha);
    hook.stores.blobs.put("submissions", &blob, &document, "application/json", true).await.unwrap();
    let pending = truecontext_bridge::webhook::Pending {
        identifier: id.clone(),
        sha256: sha,
        blob,
        format: truecontext_bridge::webhook::payload::PushFormat::Standard,
        received_at: Utc::now() - TimeDelta::seconds(5),
        queued: false,
        queued_at: None,
        poisoned: false,
        requeues: 0,
        attempts: 0,
        last_error: None,
    };
    TypedTable::new(hook.stores.tables.as_ref(), Table::Incoming).insert("default", &key, &pending).await.unwrap();
    let report = truecontext_bridge::handlers::StatusReport::gather(&hook.app).await.unwrap();
    assert_eq!((report.webhook.backlog.unprocessed, report.webhook.backlog.stranded), (1, 1));
    assert!(report.webhook.backlog.oldest_unprocessed_age_seconds.unwrap() >= 5);

    hook.app.housekeeping().await;
    assert_eq!(hook.queue_len().await, 1, "queued by the recovery pass");
    hook.app.housekeeping().await;
    assert_eq!(hook.queue_len().await, 1, "and only once");
    hook.drain().await;
    assert_eq!(landing::list(&hook.stores, "default").await.unwrap().len(), 1);
    assert_eq!(hook.landed_events().await.len(), 1);
}

/// Push and pull of one submission, both orders: one record, one version, one landed event, and
/// the sync spends a document call only where it cannot tell the pushed copy is the listed one.
#[tokio::test]
async fn push_and_pull_meet_in_one_record() {
    push_and_pull_meet_in_one_record_on(&Hook::new(&[])).await;
}

pub async fn push_and_pull_meet_in_one_record_on(hook: &Hook) {
    let document_calls = |hook: &Hook| hook.sim.calls().iter().filter(|c| c.path.ends_with("document.json")).count();

    // Pull first, then the push of the same version: nothing new.
    let (pulled, _) = submission(hook);
    sync_once(hook).await;
    let pushed_late = hook.sim.record(&pulled).unwrap().document;
    assert_eq!(hook.push(&pushed_late).await.status, StatusCode::ACCEPTED);
    hook.drain().await;
    let row = landing::find(&hook.stores, &["default".into()], &pulled).await.unwrap().unwrap().row;
    assert_eq!(row.version, 1);
    assert_eq!(row.sources, [Source::Sync, Source::Webhook]);

    // Push first (processed before the next window ends): the sync cannot tell whether the record
    // was processed again after the push, so it spends at most one document call on it.
    let (pushed, document) = submission(hook);
    assert_eq!(hook.push(&document).await.status, StatusCode::ACCEPTED);
    hook.drain().await;
    let before = document_calls(hook);
    sync_once(hook).await;
    assert!(document_calls(hook) - before <= 1, "at most one document call for the pushed submission");
    let row = landing::find(&hook.stores, &["default".into()], &pushed).await.unwrap().unwrap().row;
    assert_eq!(row.version, 1, "one version");
    assert_eq!(landing::list(&hook.stores, "default").await.unwrap().len(), 2);
    assert_eq!(hook.landed_events().await.len(), 2, "one landed event per submission");

    // A push received after the window's end is provably current: no document call at all.
    let (late, document) = submission(hook);
    let window_end = Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(hook.push(&document).await.status, StatusCode::ACCEPTED);
    hook.drain().await;
    let index = TypedTable::new(hook.stores.tables.as_ref(), Table::Submissions);
    let row = index.get::<landing::IndexRow>("default", &late).await.unwrap().unwrap().value;
    assert!(row.order > window_end);
    let before = document_calls(hook);
    sync_at(hook, window_end).await;
    assert_eq!(document_calls(hook) - before, 0, "the pushed copy was taken after the window's end");
}

async fn sync_once(hook: &Hook) {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sync_at(hook, Utc::now()).await;
}

async fn sync_at(hook: &Hook, now: chrono::DateTime<Utc>) {
    let app = &hook.app;
    let secret = truecontext_bridge::secret::SecretString::new(crate::harness::truecontext::KEY_SECRET);
    let credentials = truecontext_bridge::truecontext::Credentials::basic(crate::harness::truecontext::KEY_ID, &secret);
    let landing =
        landing::Landing::new(&hook.stores, &app.settings.landing.container, &app.settings.landing.landed_queue);
    let parts = truecontext_bridge::sync::SyncParts {
        client: app.truecontext(),
        credentials: &credentials,
        stores: &hook.stores,
        landing: &landing,
        settings: &app.settings.sync,
        alert_webhook: None,
        progress: None,
        deadline: tokio::time::Instant::now() + Duration::from_secs(60),
    };
    let summary = truecontext_bridge::sync::sync_connection(&parts, "default", now).await;
    assert!(summary.stopped_reason.is_none(), "{summary:?}");
}
