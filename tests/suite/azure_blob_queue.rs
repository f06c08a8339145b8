//! The storage conformance suite's blob and queue checks against Blob and Queue storage
//! (Azurite), through `azure_storage_blob` / `azure_storage_queue` 1.x with an account SAS;
//! plus what the Functions host needs of our queue messages, and what our errors may say.

use crate::{common, harness};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::conformance as c;
use harness::azurite::{Azurite, DEV_KEY};
use truecontext_bridge::store::azure::blobs::AzureBlobs;
use truecontext_bridge::store::azure::connection::StorageAccount;
use truecontext_bridge::store::azure::queues::AzureQueues;
use truecontext_bridge::store::{local, BlobStore, StoreError, Stores, MAX_QUEUE_MESSAGE_BYTES};

fn connection_string(key: &str, blob_port: u16, queue_port: u16, table_port: u16) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};\
         BlobEndpoint=http://127.0.0.1:{blob_port}/devstoreaccount1;\
         QueueEndpoint=http://127.0.0.1:{queue_port}/devstoreaccount1;\
         TableEndpoint=http://127.0.0.1:{table_port}/devstoreaccount1;"
    )
}

/// Blobs and queues from `account`; tables and secrets from an embedded store in `dir` (they
/// have their own suites).
fn stores_for(account: &StorageAccount, dir: &std::path::Path) -> Stores {
    let mut stores = local::open(dir, None).unwrap();
    stores.blobs = Arc::new(AzureBlobs::new(account, None).unwrap());
    stores.queues = Arc::new(AzureQueues::new(account, None).unwrap());
    stores
}

fn account(azurite: &Azurite) -> StorageAccount {
    StorageAccount::from_connection_string(&azurite.connection_string()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_pass_the_conformance_suite_on_azurite() {
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let s = stores_for(&account(&azurite), dir.path());
    c::blobs_all(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queues_pass_the_conformance_suite_on_azurite() {
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let account = account(&azurite);
    let s = stores_for(&account, dir.path());
    c::queues_all(&s).await;
    // Two separate handles (two SDK clients) dequeuing from one queue, as two instances would.
    let pair = [stores_for(&account, dir.path()), stores_for(&account, dir.path())];
    c::queue_concurrent_dequeue(&pair).await;
}

/// What the Functions queue trigger reads: with bundle v4's default `messageEncoding: base64`,
/// the message text on the wire must be the base64 of the body. Peeked with a plain HTTP GET,
/// not through our store or the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_messages_are_base64_on_the_wire() {
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let account = account(&azurite);
    let s = stores_for(&account, dir.path());
    let sas = account.account_sas(chrono::Utc::now() + chrono::TimeDelta::hours(1)).unwrap().unwrap();
    let http = harness::client();

    let q = c::unique("q-wire-");
    let body = "{\"submission\":\"42\",\"text\":\"ünïcödé ✓ <xml> & \\n\"}";
    let id = s.queues.enqueue(&q, body, Duration::ZERO).await.unwrap();

    let url = format!("{}/{q}/messages?peekonly=true&numofmessages=32&{}", account.queue, sas.expose());
    let response = http.get(&url).header("x-ms-version", "2022-11-02").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let xml = response.text().await.unwrap();
    let texts = element_texts(&xml, "MessageText");
    assert_eq!(texts, [base64::engine::general_purpose::STANDARD.encode(body)], "{xml}");
    assert_eq!(element_texts(&xml, "MessageId"), [id]);

    // A message as the Functions output binding writes it (base64) is read back decoded, and
    // the largest body we accept (48 KiB) still fits Azure's 64 KiB once encoded.
    let largest = "é".repeat(MAX_QUEUE_MESSAGE_BYTES / 2);
    s.queues.enqueue(&q, &largest, Duration::ZERO).await.expect("a body at the limit");
    let got = s.queues.dequeue(&q, 32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), [body, largest.as_str()]);
    for m in &got {
        s.queues.delete_message(&q, &m.id, &m.pop_receipt).await.unwrap();
    }
    assert_eq!(s.queues.len(&q).await.unwrap(), 0);
}

/// Unreachable storage and refused credentials give errors that say so in plain words, name
/// the role a managed identity would need, and never carry the SAS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_problem_and_never_carry_the_sas() {
    let dir = tempfile::tempdir().unwrap();

    // Nothing listens on these ports: transport errors, retried, then reported.
    let (p1, p2, p3) = (harness::free_port(), harness::free_port(), harness::free_port());
    let closed = StorageAccount::from_connection_string(&connection_string(DEV_KEY, p1, p2, p3)).unwrap();
    let s = stores_for(&closed, dir.path());
    // All at once: each one retries (bounded) before it gives up.
    let (put, get, list, enqueue, dequeue) = tokio::join!(
        s.blobs.put("box", "doc.json", b"{}", "application/json", false),
        s.blobs.get("box", "doc.json"),
        s.blobs.list("box", ""),
        s.queues.enqueue("jobs", "x", Duration::ZERO),
        s.queues.dequeue("jobs", 1, Duration::from_secs(30)),
    );
    let errors = [put.map(|_| ()), get.map(|_| ()), list.map(|_| ()), enqueue.map(|_| ()), dequeue.map(|_| ())];
    for result in errors {
        let message = match result {
            Err(StoreError::Backend(message)) => message,
            other => panic!("expected a backend error, got {other:?}"),
        };
        assert!(message.contains("could not be reached"), "{message}");
        assert!(message.contains("127.0.0.1"), "the endpoint helps: {message}");
        for secret in ["sig=", "sv=", "se=", &DEV_KEY[..12]] {
            assert!(!message.contains(secret), "{secret:?} in {message}");
        }
    }

    // A running Azurite that refuses our signature: 403, which names the role assignment.
    let azurite = Azurite::start();
    let wrong_key = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
    let refused = StorageAccount::from_connection_string(&connection_string(
        &wrong_key,
        azurite.blob_port,
        azurite.queue_port,
        azurite.table_port,
    ))
    .unwrap();
    let s = stores_for(&refused, dir.path());
    let blob_error = s.blobs.put("box", "doc.json", b"{}", "application/json", false).await.unwrap_err().to_string();
    assert!(blob_error.contains("Storage Blob Data Contributor on account devstoreaccount1"), "{blob_error}");
    let queue_error = s.queues.enqueue("jobs", "x", Duration::ZERO).await.unwrap_err().to_string();
    assert!(queue_error.contains("Storage Queue Data Contributor on account devstoreaccount1"), "{queue_error}");
    for message in [&blob_error, &queue_error] {
        assert!(message.contains("403"), "{message}");
        assert!(!message.contains("sig="), "{message}");
    }
}

/// The text of every `<name>…</name>` element, in order.
fn element_texts(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let end = after.find(&close).expect("closing tag");
        out.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    out
}

/// Throttling and busy answers are retried by azure_core's policy as we configured it: the
/// server's `Retry-After` is waited out, every try carries the SAS exactly once, and a server
/// that keeps refusing gets a bounded number of tries and then a plain error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_honouring_retry_after_and_bounded() {
    use axum::http::{StatusCode, Uri};
    use axum::response::IntoResponse;
    use std::sync::Mutex;

    type Log = Arc<Mutex<Vec<String>>>;
    async fn fake(axum::extract::State(log): axum::extract::State<Log>, uri: Uri) -> axum::response::Response {
        let mut log = log.lock().unwrap();
        log.push(uri.to_string());
        let tries = log.iter().filter(|u| u.starts_with(uri.path())).count();
        if uri.path().contains("/busy/") && tries == 1 {
            return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "2"), ("x-ms-error-code", "ServerBusy")])
                .into_response();
        }
        if uri.path().contains("/throttled/") {
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1"), ("x-ms-error-code", "ServerBusy")])
                .into_response();
        }
        (StatusCode::CREATED, [("etag", "\"0x8DC0FFEE\""), ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")])
            .into_response()
    }

    let log: Log = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(fake).with_state(log.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let account = StorageAccount::from_connection_string(&connection_string(DEV_KEY, port, port, port)).unwrap();
    let blobs = AzureBlobs::new(&account, None).unwrap();

    let started = std::time::Instant::now();
    let etag = blobs.put("busy", "doc.json", b"{}", "application/json", false).await.expect("put after one 503");
    assert_eq!(etag.0, "\"0x8DC0FFEE\"");
    assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After: 2 was not honoured: {:?}", started.elapsed());

    let error = blobs.put("throttled", "doc.json", b"{}", "application/json", false).await.unwrap_err().to_string();
    assert!(error.contains("429"), "{error}");
    assert!(!error.contains("sig="), "{error}");

    let log = log.lock().unwrap();
    let busy = log.iter().filter(|u| u.contains("/busy/")).count();
    let throttled = log.iter().filter(|u| u.contains("/throttled/")).count();
    assert_eq!(busy, 2, "one 503, then success");
    assert_eq!(throttled, 5, "one try and four retries, then give up");
    for uri in log.iter() {
        assert_eq!(uri.matches("sig=").count(), 1, "each try carries the SAS once: {uri}");
    }
}
