//! Azure Storage requests per push at the intake (before the answer) and per landed
//! submission, counted on the wire: the bridge talks to Azurite through a counting proxy per
//! service. The minimum a durable acknowledgement needs is two (the body, the queue message);
//! the intake makes three (the pending row carries dedupe, recovery, status and poison). The
//! figures are printed for the README; the test holds the intake to three.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::harness::azurite::Azurite;
use crate::harness::hook::Hook;

type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

#[derive(Clone)]
struct Proxy {
    service: &'static str,
    target: String,
    counts: Counts,
    http: reqwest::Client,
}

/// Forwards every request to Azurite as it came, counting it by service and method.
async fn forward(State(proxy): State<Proxy>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    *proxy.counts.lock().unwrap().entry(format!("{} {method}", proxy.service)).or_default() += 1;
    let url = format!("{}{}", proxy.target, uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut request = proxy.http.request(method, url).body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut out = HeaderMap::new();
            for (name, value) in answer.headers() {
                if name != "transfer-encoding" && name != "content-length" {
                    out.insert(name.clone(), value.clone());
                }
            }
            let body = answer.bytes().await.unwrap_or_default();
            (status, out, body).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// A proxy in front of `target` (`http://127.0.0.1:PORT`); answers its own base URL.
async fn proxy(service: &'static str, target: String, counts: Counts) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    truecontext_bridge::tls::install_crypto_provider();
    let state = Proxy { service, target, counts, http: reqwest::Client::new() };
    let router = axum::Router::new().fallback(forward).with_state(state);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// The connection string with each endpoint behind a counting proxy.
async fn proxied(connection: &str, counts: &Counts) -> String {
    let mut out = Vec::new();
    for part in connection.split(';') {
        let proxied = match part.split_once('=') {
            Some((key @ ("BlobEndpoint" | "QueueEndpoint" | "TableEndpoint"), url)) => {
                let (origin, path) = url.split_at(url.rfind('/').unwrap());
                let service = match key {
                    "BlobEndpoint" => "blob",
                    "QueueEndpoint" => "queue",
                    _ => "table",
                };
                format!("{key}={}{path}", proxy(service, origin.to_owned(), counts.clone()).await)
            }
            _ => part.to_owned(),
        };
        out.push(proxied);
    }
    out.join(";")
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

fn since(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).filter(|(_, v)| *v > 0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_requests_per_push_and_per_landing_on_azurite() {
    let azurite = Azurite::start();
    let counts: Counts = Arc::default();
    let connection = proxied(&azurite.connection_string(), &counts).await;
    let hook = Hook::azurite(&azurite, &[("AzureWebJobsStorage", connection.as_str())]);
    // Warm-up: the first push creates the tables, container and queues, and reads the connections.
    let warm = hook.sim.add_records(1, "form-1", chrono::Utc::now());
    assert!(hook.push(&hook.sim.record(&warm[0]).unwrap().document).await.status.is_success());
    hook.drain().await;

    const PUSHES: u64 = 20;
    let ids = hook.sim.add_records(PUSHES as usize, "form-1", chrono::Utc::now());
    let documents: Vec<Vec<u8>> = ids.iter().map(|id| hook.sim.record(id).unwrap().document).collect();
    let mut intake = BTreeMap::new();
    let mut per_push = Vec::new();
    for document in &documents {
        // The connections list is cached for a few seconds: what a push costs without it.
        hook.app.push_connections().await.unwrap();
        let before = counts.lock().unwrap().clone();
        assert_eq!(hook.push(document).await.status, StatusCode::ACCEPTED);
        let used = since(&before, &counts.lock().unwrap());
        per_push.push(total(&used));
        for (k, v) in used {
            *intake.entry(k).or_default() += v;
        }
    }
    let before = counts.lock().unwrap().clone();
    hook.drain().await;
    let landing = since(&before, &counts.lock().unwrap());
    let landed = truecontext_bridge::landing::list(&hook.stores, "default").await.unwrap().len() as u64;
    assert_eq!(landed, PUSHES + 1);

    let per = |m: &BTreeMap<String, u64>| {
        m.iter().map(|(k, v)| format!("{k} {:.1}", *v as f64 / PUSHES as f64)).collect::<Vec<_>>()
    };
    eprintln!(
        "storage requests per accepted push (before its 202): {:.1} [{}]; per landed push (processing, \
         the dequeue and delete included): {:.1} [{}]",
        total(&intake) as f64 / PUSHES as f64,
        per(&intake).join(", "),
        total(&landing) as f64 / PUSHES as f64,
        per(&landing).join(", ")
    );
    assert!(
        per_push.iter().all(|n| *n == 3),
        "the intake writes the body, the pending row and the message: {per_push:?} {intake:?}"
    );
}
