//! The webhook through the real binary: standalone over plain HTTP (its queue worker lands
//! what was accepted), `kill -9` in the middle of 200 deliveries loses no acknowledged push,
//! and the host front door's envelopes (HTTP in, queue message in) do the same work.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{TimeDelta, Utc};
use serde_json::{json, Value};
use truecontext_bridge::store::local;

use crate::harness::host;
use crate::harness::truecontext::{TrueContextSim, KEY_ID, KEY_SECRET};
use crate::harness::{client, free_port, Server};

const PASSWORD: &str = "process-push-password-0123456789";

fn settings(base: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TRUECONTEXT_BASE_URL", base.to_owned()),
        ("TRUECONTEXT_AUTH", "basic".into()),
        ("TRUECONTEXT_API_KEY_ID", KEY_ID.into()),
        ("TRUECONTEXT_API_KEY_SECRET", KEY_SECRET.into()),
        ("WEBHOOK_AUTH", "basic".into()),
        ("WEBHOOK_BASIC_USERNAME", "tc".into()),
        ("WEBHOOK_BASIC_PASSWORD", PASSWORD.into()),
        ("WEBHOOK_RECOVERY_SECONDS", "1".into()),
        ("QUEUE_RETRY_DELAY_SECONDS", "0".into()),
        // The schedule never fires during a test: only pushes land.
        ("SYNC_SCHEDULE", "0 0 0 1 1 *".into()),
    ]
}

fn pairs<'a>(owned: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    owned.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn authorization() -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("tc:{PASSWORD}")))
}

/// Posts a push; its status, or `None` when the connection failed (the server is gone).
async fn deliver(http: &reqwest::Client, server_url: &str, body: &[u8]) -> Option<u16> {
    let response = http
        .post(format!("{server_url}/api/webhook"))
        .header("authorization", authorization())
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// Landed submissions, read from the store the server uses (SQLite takes readers from other processes).
async fn landed(store: &std::path::Path) -> Vec<truecontext_bridge::landing::Listed> {
    let stores = local::open(store, None).unwrap();
    truecontext_bridge::landing::list(&stores, "default").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_200_deliveries_loses_no_acknowledged_push() {
    let sim = TrueContextSim::start();
    let ids = sim.add_records(200, "form-1", Utc::now() - TimeDelta::minutes(30));
    let documents: Vec<Vec<u8>> = ids.iter().map(|id| sim.record(id).unwrap().document).collect();
    let owned = settings(&sim.base_url());
    let port = free_port();
    let args = ["serve", "--standalone", "--port", &port.to_string()];
    let server = Server::start(&args, port, &pairs(&owned));
    let url = server.url("");
    let http = client();

    // 8 senders; the server is killed once 80 deliveries are acknowledged.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = {
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            while acknowledged.lock().unwrap().len() < 80 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            server.kill()
        })
    };
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (http, url, next, acknowledged, documents) =
            (http.clone(), url.clone(), next.clone(), acknowledged.clone(), documents.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= documents.len() {
                    return;
                }
                match deliver(&http, &url, &documents[i]).await {
                    Some(200 | 202) => {
                        acknowledged.lock().unwrap().insert(i);
                    }
                    _ => return,
                }
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let dir = killer.await.unwrap();
    let acked: BTreeSet<usize> = acknowledged.lock().unwrap().clone();
    assert!(acked.len() >= 80 && acked.len() < 200, "the kill came mid-way: {} acknowledged", acked.len());

    // Restart on the same store; TrueContext retries what got no 2xx (and, harmlessly, may resend the rest).
    let port = free_port();
    let args = ["serve", "--standalone", "--port", &port.to_string()];
    let server = Server::start_in(dir, &args, port, &pairs(&owned));
    let url = server.url("");
    for (i, document) in documents.iter().enumerate() {
        if !acked.contains(&i) || i % 10 == 0 {
            let status = deliver(&http, &url, document).await;
            assert!(matches!(status, Some(200 | 202)), "redelivery {i}: {status:?}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let store = server.store_dir();
    loop {
        let listed = landed(&store).await;
        if listed.len() == 200 {
            assert!(listed.iter().all(|l| l.row.version == 1), "one version each");
            break;
        }
        assert!(Instant::now() < deadline, "{} of 200 landed:\n{}", listed.len(), server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stores = local::open(&store, None).unwrap();
    let mut events = std::collections::BTreeMap::<String, usize>::new();
    loop {
        let batch = stores.queues.dequeue("landed-submissions", 32, Duration::from_secs(600)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for message in batch {
            let event: Value = serde_json::from_str(&message.body).unwrap();
            *events.entry(format!("{}@v{}", event["id"].as_str().unwrap(), event["version"])).or_default() += 1;
        }
    }
    assert_eq!(events.len(), 200, "a landed event for every submission, all of version 1");
    // At least once: a landing killed between its event and the row's note of it sends it again
    // (consumers dedupe on id and version); only the landings in flight at the kill (a batch).
    let repeated: Vec<_> = events.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.len() <= 16, "{repeated:?}");
    eprintln!("kill -9 after {} of 200 acknowledged: all 200 landed once", acked.len());
}

#[tokio::test]
async fn the_host_front_door_accepts_a_push_and_processes_its_message() {
    let sim = TrueContextSim::start();
    let id = sim.add_records(1, "form-1", Utc::now() - TimeDelta::minutes(5)).remove(0);
    let document = String::from_utf8(sim.record(&id).unwrap().document).unwrap();
    let owned = settings(&sim.base_url());
    let server = Server::host(&pairs(&owned));
    let auth = authorization();
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    for method in ["POST", "PUT"] {
        let envelope = host::http_envelope("webhook", method, &[], &headers, Some(&document));
        let reply = host::invoke(&server, "webhook", &envelope).await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        let res = &reply.json["Outputs"]["res"];
        let body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
        let expected = if method == "POST" { (202, "accepted") } else { (200, "duplicate") };
        assert_eq!(
            (res["statusCode"].as_u64().unwrap(), body["status"].as_str().unwrap()),
            (expected.0, expected.1),
            "{res}"
        );
    }
    let refused = host::http_envelope("webhook", "POST", &[], &[("Content-Type", "application/json")], Some(&document));
    let reply = host::invoke(&server, "webhook", &refused).await;
    assert_eq!(reply.json["Outputs"]["res"]["statusCode"], 401, "{}", reply.json);

    // The host would trigger `process` with the queued message: take it and hand it over.
    let stores = local::open(&server.store_dir(), None).unwrap();
    let messages = stores.queues.dequeue("incoming-submissions", 8, Duration::from_secs(60)).await.unwrap();
    assert_eq!(messages.len(), 1);
    let envelope = host::queue_envelope(json!(messages[0].body), &[]);
    let reply = host::invoke(&server, "process", &envelope).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.json, server.log());
    let listed = landed(&server.store_dir()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
}
