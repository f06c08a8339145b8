//! The binary on the Azure backend: `tcbridge serve` (host mode) and `serve --standalone` with
//! `STORE=azure` against Azurite, so the same handlers run on Table, Blob and Queue storage.
//! (Key Vault is named but not needed by these paths; its own suite is tests/suite/azure_keyvault.rs.)

use crate::harness;
use std::time::{Duration, Instant};

use harness::azurite::Azurite;
use harness::host;
use harness::{client, Server, TEST_FUNCTION_KEY};
use serde_json::{json, Value};
use truecontext_bridge::store::azure::connection::StorageAccount;
use truecontext_bridge::store::azure::queues::AzureQueues;
use truecontext_bridge::store::QueueStore;

fn azure_settings(azurite: &Azurite) -> Vec<(&'static str, String)> {
    vec![
        ("STORE", "azure".into()),
        ("AzureWebJobsStorage", azurite.connection_string()),
        ("KEYVAULT_URI", "https://unused.vault.localhost".into()),
    ]
}

fn pairs<'a>(owned: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    owned.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn host_mode_records_sync_runs_in_table_storage() {
    let azurite = Azurite::start();
    let owned = azure_settings(&azurite);
    let server = Server::host(&pairs(&owned));
    let timer = host::timer_envelope(Value::Null, false);
    for _ in 0..2 {
        let reply = host::invoke(&server, "sync", &timer).await;
        assert_eq!(reply.status, 200, "{}", server.log());
    }
    let status = json!({ "Url": "https://x/api/status", "Method": "GET", "Headers": {} });
    let res = host::invoke_http(&server, "status", status.clone()).await;
    let report: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert_eq!(report["store"], "azure");
    assert_eq!(report["sync"]["last_run"]["count"], 2, "both runs recorded in Azurite");

    // A second instance on the same account sees the same state.
    let other = Server::host(&pairs(&owned));
    let res = host::invoke_http(&other, "status", status).await;
    let report: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert_eq!(report["sync"]["last_run"]["count"], 2);
}

#[tokio::test]
async fn standalone_mode_poisons_a_failing_message_in_queue_storage() {
    let azurite = Azurite::start();
    let mut owned = azure_settings(&azurite);
    owned.extend([
        ("QUEUE_MAX_DEQUEUE_COUNT", "2".to_owned()),
        ("QUEUE_RETRY_DELAY_SECONDS", "0".to_owned()),
        ("INCOMING_QUEUE_NAME", "incoming-e2e".to_owned()),
    ]);
    let server = Server::standalone(&pairs(&owned));
    let account = StorageAccount::from_connection_string(&azurite.connection_string()).unwrap();
    let queues = AzureQueues::new(&account, None).unwrap();
    queues.enqueue("incoming-e2e", r#"{"submission":"7"}"#, Duration::ZERO).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while queues.len("incoming-e2e-poison").await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "message never reached the poison queue:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let poisoned = queues.dequeue("incoming-e2e-poison", 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(poisoned[0].body, r#"{"submission":"7"}"#);
    let status =
        client().get(server.url("/api/status")).header("x-functions-key", TEST_FUNCTION_KEY).send().await.unwrap();
    let report: Value = status.json().await.unwrap();
    assert_eq!(report["store"], "azure");
}

#[test]
fn check_explains_an_azure_store_without_a_vault() {
    let dir = tempfile::tempdir().unwrap();
    let output =
        harness::command(dir.path(), &[("STORE", "azure"), ("AzureWebJobsStorage", "UseDevelopmentStorage=true")])
            .arg("check")
            .output()
            .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(text.contains("KEYVAULT_URI"), "{text}");
}

/// Hands every message on the incoming queue to `process`, as the host's queue trigger would;
/// answers how many there were.
async fn deliver_incoming(server: &Server, queues: &AzureQueues) -> usize {
    use truecontext_bridge::store::QueueStore;
    let messages = queues.dequeue("incoming-submissions", 32, std::time::Duration::from_secs(60)).await.unwrap();
    for message in &messages {
        let envelope = host::queue_envelope(serde_json::json!(message.body), &[]);
        let reply = host::invoke(server, "process", &envelope).await;
        assert_eq!(reply.status, 200, "{}", server.log());
        queues.delete_message("incoming-submissions", &message.id, &message.pop_receipt).await.unwrap();
    }
    messages.len()
}

/// The scheduled sync through the host's timer envelope, landing on Azurite: raw documents and
/// records in Blob storage, the index in Table storage, one landed event each in Queue storage;
/// the next tick lists once and lands nothing.
#[tokio::test]
async fn the_sync_timer_lands_submissions_in_blob_table_and_queue_storage() {
    use crate::harness::truecontext::{TrueContextSim, KEY_ID, KEY_SECRET};
    let azurite = Azurite::start();
    let sim = TrueContextSim::start();
    let ids = sim.add_records(120, "form-1", chrono::Utc::now() - chrono::TimeDelta::hours(2));
    let mut owned = azure_settings(&azurite);
    owned.extend([
        ("TRUECONTEXT_BASE_URL", sim.base_url()),
        ("TRUECONTEXT_AUTH", "basic".to_owned()),
        ("TRUECONTEXT_API_KEY_ID", KEY_ID.to_owned()),
        ("TRUECONTEXT_API_KEY_SECRET", KEY_SECRET.to_owned()),
    ]);
    let server = Server::host(&pairs(&owned));
    let timer = host::timer_envelope(Value::Null, false);
    let reply = host::invoke(&server, "sync", &timer).await;
    assert_eq!(reply.status, 200, "{}", server.log());

    let account = StorageAccount::from_connection_string(&azurite.connection_string()).unwrap();
    let queues = AzureQueues::new(&account, None).unwrap();
    // The tick queued the connection's sync; the host's queue trigger runs it.
    assert_eq!(deliver_incoming(&server, &queues).await, 1, "one sync queued");
    assert_eq!(queues.len("landed-submissions").await.unwrap(), 120, "one landed event each");
    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| harness::command(dir.path(), &pairs(&owned)).args(args).output().unwrap();
    let listed = cli(&["submissions", "list", "--json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let mut landed: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    landed.sort();
    assert_eq!(landed, ids, "every submission in the Table index");
    let raw = cli(&["submissions", "show", &ids[57], "--raw"]);
    assert_eq!(raw.stdout, sim.record(&ids[57]).unwrap().document, "the raw blob, byte for byte");
    let record: Value = serde_json::from_slice(&cli(&["submissions", "show", &ids[57]]).stdout).unwrap();
    assert_eq!(record["identifier"], ids[57].as_str());

    // The next tick: one list call, nothing landed again.
    let calls = sim.calls().len();
    let reply = host::invoke(&server, "sync", &timer).await;
    assert_eq!(reply.status, 200);
    assert_eq!(deliver_incoming(&server, &queues).await, 1, "queued again: its last run has finished");
    assert_eq!(sim.calls().len() - calls, 1, "one list call");
    assert_eq!(queues.len("landed-submissions").await.unwrap(), 120, "no second event");
}
