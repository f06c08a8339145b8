//! The standalone front door: the same handlers as plain HTTP, the function key, the
//! in-process timer and queue.

use crate::harness;
use std::time::{Duration, Instant};

use harness::{client, Server, TEST_FUNCTION_KEY};
use serde_json::Value;
use truecontext_bridge::store::local;

async fn status(server: &Server) -> Value {
    let (code, report) = server.status().await;
    assert_eq!(code, 200, "{report:#}");
    report
}

/// Polls `probe` until it returns Some, or fails after `limit` (a functional deadline, not a
/// speed target).
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn status_answers_with_the_key_in_a_header_or_the_code_parameter() {
    let server = Server::standalone(&[]);
    let body = status(&server).await;
    assert_eq!(body["service"], "truecontext-bridge");
    assert_eq!(body["mode"], "standalone");
    assert_eq!(body["store"], "local");
    assert_eq!(body["connections"], serde_json::json!([]));

    let by_code = client().get(server.url(&format!("/api/status?code={TEST_FUNCTION_KEY}"))).send().await.unwrap();
    assert_eq!(by_code.status(), 200);
    assert_eq!(by_code.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn function_level_routes_refuse_a_missing_or_wrong_key() {
    let server = Server::standalone(&[]);
    for request in [
        client().get(server.url("/api/status")),
        client().get(server.url("/api/status")).header("x-functions-key", "wrong-key-wrong-key-wrong"),
        client().get(server.url("/api/status?code=wrong")),
        client().get(server.url(&format!("/api/status?code={}", &TEST_FUNCTION_KEY[..10]))),
        client().get(server.url("/api/authorize?connection=default")),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "function_key_required");
    }
    // Anonymous routes need no key (callback and webhook check their callers themselves).
    let callback = client().get(server.url("/api/callback")).send().await.unwrap();
    assert_ne!(callback.status(), 401);
}

#[tokio::test]
async fn routes_match_case_insensitively_and_unknown_ones_are_404() {
    let server = Server::standalone(&[]);
    let upper =
        client().get(server.url("/api/STATUS")).header("x-functions-key", TEST_FUNCTION_KEY).send().await.unwrap();
    assert_eq!(upper.status(), 200);
    let unknown = client().get(server.url("/api/nothing-here")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let wrong_method =
        client().post(server.url("/api/status")).header("x-functions-key", TEST_FUNCTION_KEY).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "GET");
}

/// Each route takes its own size of body, refused before it is read: the anonymous callback a
/// sign-in response's worth, status and authorize none, and the webhook nothing at all before
/// its caller is verified.
#[tokio::test]
async fn an_oversized_body_is_refused_with_413_before_it_is_read() {
    let server = Server::standalone(&[
        ("WEBHOOK_AUTH", "basic"),
        ("WEBHOOK_BASIC_USERNAME", "tc"),
        ("WEBHOOK_BASIC_PASSWORD", "push-password-0123456789"),
        ("WEBHOOK_MAX_BODY_BYTES", "2048"),
    ]);
    let form = "application/x-www-form-urlencoded";
    let callback = client().post(server.url("/api/callback")).header("content-type", form);
    let response = callback.body(vec![b'a'; 32 * 1024]).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large");
    let status = client().get(server.url("/api/status")).header("x-functions-key", TEST_FUNCTION_KEY);
    let response = status.body("x").send().await.unwrap();
    assert_eq!(response.status(), 413);
    let anonymous_push = client().post(server.url("/api/webhook")).body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(anonymous_push.status(), 401, "the caller first, before any byte of its body");
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("tc:push-password-0123456789");
    let push = client().post(server.url("/api/webhook")).header("authorization", format!("Basic {basic}"));
    let response = push.body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("WEBHOOK_MAX_BODY_BYTES"), "{body}");
}

#[tokio::test]
async fn without_function_key_one_is_generated_printed_once_and_kept() {
    // The store outlives both servers, as a local store does across restarts.
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().to_str().unwrap();
    let start = || {
        let port = harness::free_port();
        Server::start(&["serve", "--standalone", "--port", &port.to_string()], port, &[("LOCAL_STORE_PATH", store)])
    };
    let mut first = start();
    let log = first.wait_for_log("x-functions-key");
    let key = log
        .lines()
        .skip_while(|l| !l.contains("x-functions-key"))
        .nth(1)
        .map(str::trim)
        .expect("the generated key is printed")
        .to_owned();
    assert!(key.len() >= 40, "a 256-bit key, got {} characters", key.len());
    let ok = client().get(first.url("/api/status")).header("x-functions-key", &key).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let refused = client().get(first.url("/api/status")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    // Printed once on the terminal, never in a log line.
    assert_eq!(first.log().matches(&key).count(), 1, "printed exactly once:\n{log}");
    drop(first);

    // A restart on the same store reuses it without printing it again.
    let second = start();
    let ok = client().get(second.url("/api/status")).header("x-functions-key", &key).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(!second.log().contains(&key));
}

#[tokio::test]
async fn the_sync_timer_fires_on_its_schedule() {
    let server = Server::standalone(&[("SYNC_SCHEDULE", "* * * * * *")]);
    let count = eventually(Duration::from_secs(20), "two timer runs", || async {
        let count = status(&server).await["sync"]["last_run"]["count"].as_u64()?;
        (count >= 2).then_some(count)
    })
    .await;
    assert!(count >= 2);
    let body = status(&server).await;
    assert_eq!(body["sync"]["schedule"], "* * * * * *");
    assert!(body["sync"]["last_run"]["outcome"].as_str().unwrap().contains("no connections"));
    assert!(body["sync"]["next_run"].is_string());
}

#[tokio::test]
async fn a_failing_queue_message_is_redelivered_then_poisoned() {
    let server = Server::standalone(&[
        ("QUEUE_MAX_DEQUEUE_COUNT", "3"),
        ("QUEUE_RETRY_DELAY_SECONDS", "0"),
        ("INCOMING_QUEUE_NAME", "incoming-test"),
    ]);
    // A second handle on the same store, as another instance would have.
    let stores = local::open(&server.store_dir(), None).unwrap();
    stores.queues.enqueue("incoming-test", r#"{"submission":"1"}"#, Duration::ZERO).await.unwrap();
    let queues = stores.queues.clone();
    // The poison copy is written before the original is deleted (a crash duplicates, never
    // loses), so the move is over only when both hold.
    eventually(Duration::from_secs(30), "the message moved to the poison queue", || {
        let queues = queues.clone();
        async move {
            let moved = queues.len("incoming-test-poison").await.unwrap() == 1
                && queues.len("incoming-test").await.unwrap() == 0;
            moved.then_some(())
        }
    })
    .await;
    assert_eq!(stores.queues.len("incoming-test").await.unwrap(), 0);
    let poisoned = stores.queues.dequeue("incoming-test-poison", 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(poisoned[0].body, r#"{"submission":"1"}"#);
    let log = server.log();
    assert_eq!(log.matches("retrying in").count(), 2, "two retries before the poison queue:\n{log}");
    assert!(log.contains("moving it to incoming-test-poison"));
}

#[tokio::test]
async fn app_only_access_is_a_connection_from_configuration_without_consent() {
    let server = Server::standalone(&[
        ("OAUTH_GRANT", "client_credentials"),
        ("OAUTH_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
        ("OAUTH_SCOPES", "api://truecontext/.default"),
    ]);
    let body = status(&server).await;
    let connection = &body["connections"][0];
    assert_eq!(connection["id"], "app");
    assert_eq!(connection["access"], "app_only");
    assert_eq!(connection["state"], "active");
    assert_eq!(connection["scopes"], serde_json::json!(["api://truecontext/.default"]));
    assert!(connection["consented_at"].is_null());
    let authorize =
        client().get(server.url("/api/authorize")).header("x-functions-key", TEST_FUNCTION_KEY).send().await.unwrap();
    assert_eq!(authorize.status(), 409);
    assert!(authorize.text().await.unwrap().contains("nothing to consent"));
}

#[tokio::test]
async fn a_browser_without_the_key_gets_a_page_and_a_script_gets_json() {
    let server = Server::standalone(&[]);
    let browser = client()
        .get(server.url("/api/authorize?connection=default"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 401);
    assert!(browser.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(browser.text().await.unwrap().contains("function key"));
    let script = client().get(server.url("/api/authorize?connection=default")).send().await.unwrap();
    assert_eq!(script.status(), 401);
    let body: Value = script.json().await.unwrap();
    assert_eq!(body["error"]["code"], "function_key_required");
}
