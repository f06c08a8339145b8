//! Alerts as an outbox: an alert is on record as owed before its POST; a failed POST is retried
//! with backoff until the alert webhook takes it; two instances do not both post it; an alert
//! whose raiser died before posting is posted by the next delivery pass; status lists what is
//! undelivered; both formats (`text`, `adaptive-card`) have the shape their receivers expect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use truecontext_bridge::alerts::{self, Alert};
use truecontext_bridge::config::{AlertFormat, AlertWebhook};
use truecontext_bridge::store::{local, Stores, Table, TypedTable};

struct Receiver {
    url: url::Url,
    /// POSTs to refuse with 500 before taking them.
    failures_left: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Value>>>,
    attempts: Arc<AtomicUsize>,
}

async fn receiver(failures: usize) -> Receiver {
    let failures_left = Arc::new(AtomicUsize::new(failures));
    let received = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (f, r, a) = (failures_left.clone(), received.clone(), attempts.clone());
    let app = Router::new().route(
        "/hook",
        post(move |axum::Json(body): axum::Json<Value>| {
            let (f, r, a) = (f.clone(), r.clone(), a.clone());
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                if f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                r.lock().unwrap().push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}/hook", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, failures_left, received, attempts }
}

fn alert(code: &str) -> Alert {
    Alert::new(
        truecontext_bridge::alerts::AlertKind::ConnectionNeedsReauth,
        Some("c1"),
        "needs_reauth",
        code,
        "the grant was revoked",
    )
}

/// As if the backoff had passed: the row's next attempt moved into the past.
async fn backoff_over(stores: &Stores) {
    let table = TypedTable::new(stores.tables.as_ref(), Table::Alerts);
    let page = stores
        .tables
        .query(Table::Alerts, "c-c1", &truecontext_bridge::store::RowRange::all(), 100, None)
        .await
        .unwrap();
    for entity in page.entities {
        let current = table.get::<Alert>("c-c1", &entity.row_key).await.unwrap().unwrap();
        let moved =
            Alert { next_attempt_at: Some(chrono::Utc::now() - chrono::TimeDelta::seconds(1)), ..current.value };
        table
            .update("c-c1", &entity.row_key, &moved, truecontext_bridge::store::IfMatch::ETag(current.etag))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_failed_post_is_retried_until_taken_and_then_never_again() {
    let dir = tempfile::tempdir().unwrap();
    let stores = local::open(dir.path(), None).unwrap();
    let hook = receiver(2).await;
    let webhook = AlertWebhook { url: hook.url.clone(), format: AlertFormat::AdaptiveCard };
    let connections = vec!["c1".to_owned()];

    assert!(alerts::raise(&stores, Some(&webhook), alert("invalid_grant")).await.unwrap());
    assert!(!alerts::raise(&stores, Some(&webhook), alert("invalid_grant")).await.unwrap(), "raised once");
    let owed = alerts::undelivered(&stores, &connections).await.unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].delivery_attempts, 1);
    assert!(owed[0].last_delivery_error.as_deref().unwrap().contains("500"), "{:?}", owed[0].last_delivery_error);
    assert!(!owed[0].last_delivery_error.as_deref().unwrap().contains("127.0.0.1"), "the URL is a credential");

    // Not before its backoff.
    assert_eq!(alerts::deliver_pending(&stores, &webhook, &connections).await.unwrap(), 0);
    assert_eq!(hook.attempts.load(Ordering::SeqCst), 1);
    backoff_over(&stores).await;
    assert_eq!(alerts::deliver_pending(&stores, &webhook, &connections).await.unwrap(), 0, "refused again");
    backoff_over(&stores).await;
    assert_eq!(alerts::deliver_pending(&stores, &webhook, &connections).await.unwrap(), 1);
    assert!(alerts::undelivered(&stores, &connections).await.unwrap().is_empty());
    backoff_over(&stores).await;
    assert_eq!(alerts::deliver_pending(&stores, &webhook, &connections).await.unwrap(), 0);
    assert_eq!(hook.attempts.load(Ordering::SeqCst), 3, "two refused, one taken, none after");
    assert_eq!(hook.failures_left.load(Ordering::SeqCst), 0);

    let received = hook.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let card = &received[0];
    assert_eq!(card["type"], "message");
    assert_eq!(card["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
    let content = &card["attachments"][0]["content"];
    assert_eq!(content["type"], "AdaptiveCard");
    assert!(content["body"][1]["text"].as_str().unwrap().contains("revoked"), "{card}");
}

#[tokio::test]
async fn an_alert_whose_raiser_died_before_posting_is_posted_once_by_racing_instances() {
    let dir = tempfile::tempdir().unwrap();
    let stores = local::open(dir.path(), None).unwrap();
    let hook = receiver(0).await;
    let webhook = AlertWebhook { url: hook.url.clone(), format: AlertFormat::Text };
    // The raiser wrote the owed row and died before its POST (raised without a webhook, then owed).
    alerts::raise(&stores, None, alert("invalid_grant")).await.unwrap();
    let table = TypedTable::new(stores.tables.as_ref(), Table::Alerts);
    let page = stores
        .tables
        .query(Table::Alerts, "c-c1", &truecontext_bridge::store::RowRange::all(), 10, None)
        .await
        .unwrap();
    let row = &page.entities[0].row_key;
    let current = table.get::<Alert>("c-c1", row).await.unwrap().unwrap();
    let owed = Alert { delivery_owed: true, ..current.value };
    table.update("c-c1", row, &owed, truecontext_bridge::store::IfMatch::ETag(current.etag)).await.unwrap();

    let connections = vec!["c1".to_owned()];
    let (a, b) = tokio::join!(
        alerts::deliver_pending(&stores, &webhook, &connections),
        alerts::deliver_pending(&stores, &webhook, &connections)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 1);
    assert_eq!(hook.attempts.load(Ordering::SeqCst), 1, "one POST for two instances");
    let received = hook.received.lock().unwrap().clone();
    assert!(received[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("truecontext-bridge: connection_needs_reauth for connection c1"));
    assert_eq!(received[0]["error_code"], "invalid_grant");
}
