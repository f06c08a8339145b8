//! The token lifecycle against a real authorization server that rotates refresh tokens and
//! revokes the whole grant when a used one comes back (node-oidc-provider): exactly one
//! token-endpoint call per expiry however many callers and instances ask, the newest refresh
//! token always used, and failures that end in the right state with one alert.
//!
//! "Instances" here are separate `App`s on one store: each has its own token cache, its own
//! single-flight locks and its own store handle, so they share only what separate processes
//! share. tests/suite/token_processes.rs does the same with real `tcbridge` processes.

use crate::harness;
use std::time::Duration;

use harness::connected::{assert_all_same_token, Connected, Options};
use serde_json::{json, Value};
use truecontext_bridge::connections::{self, ConnectionState};
use truecontext_bridge::handlers::{App, StatusReport, TimerInfo};
use truecontext_bridge::store::{Table, TypedTable};
use truecontext_bridge::tokens::{AccessToken, TokenError, TokenSource};

/// Due for refresh: past a one-hour token's refresh time.
const PAST_REFRESH: i64 = 3100;

async fn concurrent(instances: &[App], callers: usize) -> Vec<Result<AccessToken, TokenError>> {
    harness::connected::concurrent(instances, callers, "default").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_callers_in_one_process_make_one_call_per_expiry_for_fifty_cycles() {
    let bridge = Connected::start(Options::default()).await;
    let app = bridge.instance();
    // The consent's token is good: no call at all.
    let first = app.tokens().access_token("default").await.unwrap();
    assert_eq!(first.source, TokenSource::Store);
    assert_eq!(bridge.refresh_calls().await, 0);
    for cycle in 1..=50u64 {
        bridge.advance(PAST_REFRESH);
        let results = concurrent(std::slice::from_ref(&app), 20).await;
        assert_all_same_token(&results);
        assert_eq!(bridge.refresh_calls().await, cycle, "cycle {cycle}: exactly one token-endpoint call");
        let refreshed = results.iter().filter(|r| r.as_ref().unwrap().source == TokenSource::TokenEndpoint).count();
        assert_eq!(refreshed, 1);
    }
    // The grant survived: every refresh succeeded and presented the token the one before issued.
    let calls = bridge.calls("refresh_token").await;
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:#?}");
    assert_chain(&calls);
    let record = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
    assert_eq!(record.state, ConnectionState::Active);
    assert_eq!(record.token_generation, 51, "the consent's token set, then fifty refreshes");
}

/// Each refresh presents the refresh token the previous one issued (rotation followed).
fn assert_chain(calls: &[serde_json::Value]) {
    for pair in calls.windows(2) {
        if pair[0]["issued_refresh_token"].is_string() {
            assert_eq!(pair[1]["presented_refresh_token"], pair[0]["issued_refresh_token"], "{pair:#?}");
        } else {
            // No refresh token in the response: the old one is kept and presented again.
            assert_eq!(pair[1]["presented_refresh_token"], pair[0]["presented_refresh_token"], "{pair:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_one_embedded_store_make_one_call_per_expiry() {
    let bridge = Connected::start(Options::default()).await;
    let instances: Vec<App> = (0..3).map(|_| bridge.instance()).collect();
    for cycle in 1..=50u64 {
        bridge.advance(PAST_REFRESH);
        let results = concurrent(&instances, 21).await;
        assert_all_same_token(&results);
        assert_eq!(bridge.refresh_calls().await, cycle, "cycle {cycle}");
    }
    let calls = bridge.calls("refresh_token").await;
    assert!(calls.iter().all(|c| c["ok"] == true));
    assert_chain(&calls);
    // One secret-store write per refresh: the consent's version plus one per cycle.
    let app = &instances[0];
    let record = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
    assert_eq!(app.stores.secrets.versions(&record.token_set_secret).await.unwrap().len(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_refreshes_use_the_newest_refresh_token_and_keep_it_when_none_comes_back() {
    let bridge = Connected::start(Options::default()).await;
    let app = bridge.instance();
    for _ in 0..3 {
        let token = app.tokens().refresh_now("default").await.unwrap();
        assert_eq!(token.source, TokenSource::TokenEndpoint);
    }
    // A response without refresh_token (the server did not rotate): the old one stays and works.
    bridge.provider.token_faults(vec![json!({ "omit_refresh_token": true })]).await;
    app.tokens().refresh_now("default").await.unwrap();
    app.tokens().refresh_now("default").await.unwrap();
    let calls = bridge.calls("refresh_token").await;
    assert_eq!(calls.len(), 5);
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:#?}");
    assert!(calls[3]["issued_refresh_token"].is_null());
    assert_chain(&calls);

    // expires_in as a string is honoured; a missing one assumes an hour and says so.
    bridge.provider.token_faults(vec![json!({ "expires_in_as_string": true })]).await;
    let token = app.tokens().refresh_now("default").await.unwrap();
    assert!(!token.expires_in_assumed);
    assert_eq!((token.expires_at - token.issued_at).num_seconds(), 3600);
    bridge.provider.token_faults(vec![json!({ "omit_expires_in": true })]).await;
    let token = app.tokens().refresh_now("default").await.unwrap();
    assert!(token.expires_in_assumed);
    assert_eq!((token.expires_at - token.issued_at).num_seconds(), 3600);
    let record = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
    assert!(record.expires_in_assumed);
}

/// Receives alert webhook POSTs on loopback.
struct AlertSink {
    url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl AlertSink {
    async fn start() -> AlertSink {
        let received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let sink = received.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        AlertSink { url, received }
    }

    /// A connected bridge that posts its alerts here.
    async fn bridge(&self, mut settings: Vec<(&'static str, String)>) -> Connected {
        settings.push(("ALERT_WEBHOOK_URL", self.url.clone()));
        Connected::start(Options { settings, ..Default::default() }).await
    }

    fn alerts(&self) -> Vec<serde_json::Value> {
        self.received.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_grant_needs_reauth_once_with_one_alert_and_reconsent_restores_it() {
    let sink = AlertSink::start().await;
    let bridge = sink.bridge(Vec::new()).await;
    let instances: Vec<App> = (0..3).map(|_| bridge.instance()).collect();
    // A sync cursor, which must survive the whole episode.
    let cursors = TypedTable::new(instances[0].stores.tables.as_ref(), Table::Cursors);
    cursors.upsert("default", "submissions", &json!({ "after": "2026-11-30T00:00:00Z" })).await.unwrap();

    assert!(bridge.provider.revoke_grants().await >= 1);
    bridge.advance(PAST_REFRESH);
    let results = concurrent(&instances, 12).await;
    for result in &results {
        match result {
            Err(TokenError::NeedsReauth { connection, reason }) => {
                assert_eq!(connection, "default");
                assert!(reason.contains("invalid_grant"), "{reason}");
            }
            other => panic!("expected needs_reauth, got {other:?}"),
        }
    }
    assert_eq!(bridge.refresh_calls().await, 1, "one call finds the grant revoked; nobody else tries");

    // Later runs: no call, no new alert. The sync skips the connection.
    for app in &instances {
        let sync = truecontext_bridge::functions::by_name("sync").unwrap();
        app.timer(sync, TimerInfo::default()).await.unwrap();
        assert!(matches!(app.tokens().access_token("default").await, Err(TokenError::NeedsReauth { .. })));
    }
    bridge.advance(86_400);
    assert!(matches!(instances[0].tokens().keep_alive("default").await, Err(TokenError::NeedsReauth { .. })));
    assert_eq!(bridge.refresh_calls().await, 1, "no retry storm");
    let alerts = sink.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["alert"], "connection_needs_reauth");
    assert_eq!(alerts[0]["connection"], "default");
    assert_eq!(alerts[0]["class"], "needs_reauth");
    assert_eq!(alerts[0]["error_code"], "invalid_grant");
    assert!(alerts[0]["text"].as_str().unwrap().contains("default"));

    let report = StatusReport::gather(&instances[0]).await.unwrap();
    assert!(!report.healthy);
    assert_eq!(report.summary.status, 424);
    let status = &report.connections[0];
    assert_eq!(status.state, ConnectionState::NeedsReauth);
    assert_eq!(status.alerts, vec!["connection_needs_reauth".to_owned()]);
    assert!(status.reason.as_deref().unwrap().contains("invalid_grant"));
    assert!(report.summary.attention[0].starts_with("default: needs re-consent"), "{:?}", report.summary);

    // Re-consent: active again, same id, cursors intact, alerts cleared, tokens flow.
    bridge.consent("default").await;
    let record = connections::get(&instances[0].stores, "default").await.unwrap().unwrap().value;
    assert_eq!(record.state, ConnectionState::Active);
    assert_eq!(record.consecutive_failures, 0);
    let cursor = cursors.get::<serde_json::Value>("default", "submissions").await.unwrap().unwrap();
    assert_eq!(cursor.value["after"], "2026-11-30T00:00:00Z");
    let report = StatusReport::gather(&instances[1]).await.unwrap();
    assert!(report.healthy, "{:?}", report.summary);
    assert!(report.connections[0].alerts.is_empty());
    bridge.advance(PAST_REFRESH);
    assert_all_same_token(&concurrent(&instances, 9).await);
    assert_eq!(bridge.refresh_calls().await, 2);
    // A second revocation alerts again (the first alert was cleared by the re-consent).
    bridge.provider.revoke_grants().await;
    bridge.advance(PAST_REFRESH);
    assert!(instances[2].tokens().access_token("default").await.is_err());
    assert_eq!(sink.alerts().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_in_the_call_and_across_calls() {
    let bridge = Connected::start(Options::default()).await;
    let app = bridge.instance();
    bridge.advance(PAST_REFRESH);

    // A short Retry-After: waited out inside the call, then the refresh goes through.
    bridge.provider.token_faults(vec![json!({ "status": 503, "retry_after": "2" })]).await;
    let token = app.tokens().access_token("default").await.expect("refreshed after the wait");
    assert_eq!(token.source, TokenSource::TokenEndpoint);
    let calls = bridge.calls("refresh_token").await;
    assert_eq!(calls.len(), 2);
    let waited = calls[1]["at"].as_i64().unwrap() - calls[0]["at"].as_i64().unwrap();
    assert!(waited >= 2000, "the second try came {waited} ms after a Retry-After of 2 s");

    // A long one: the call fails as transient, and nobody calls before it passes.
    bridge.advance(PAST_REFRESH);
    bridge
        .provider
        .token_faults(vec![
            json!({ "status": 503, "retry_after": "120", "body": { "error": "temporarily_unavailable" } }),
        ])
        .await;
    let before = bridge.now();
    match app.tokens().access_token("default").await {
        Err(TokenError::Unavailable { retry_not_before, reason, .. }) => {
            assert!(reason.contains("temporarily_unavailable"), "{reason}");
            let pause = (retry_not_before - before).num_seconds();
            assert!((119..=130).contains(&pause), "paused {pause} s");
        }
        other => panic!("expected transient, got {other:?}"),
    }
    let other = bridge.instance();
    for app in [&app, &other] {
        assert!(matches!(app.tokens().access_token("default").await, Err(TokenError::Unavailable { .. })));
    }
    assert_eq!(bridge.refresh_calls().await, 3, "no call inside the Retry-After");
    let record = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
    assert_eq!(record.state, ConnectionState::Active, "transient failures do not touch the state");
    assert_eq!(record.consecutive_failures, 1);
    assert_eq!(record.last_error_class.as_deref(), Some("transient"));
    bridge.advance(121);
    let token = other.tokens().access_token("default").await.unwrap();
    assert_eq!(token.source, TokenSource::TokenEndpoint);
    let record = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
    assert_eq!(record.consecutive_failures, 0);
    assert!(record.last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_token_endpoint_is_cut_off_and_the_refresh_token_survives() {
    let bridge = Connected::start(Options {
        settings: vec![("TOKEN_ENDPOINT_TIMEOUT_SECONDS", "2".into()), ("TOKEN_REFRESH_LEASE_SECONDS", "10".into())],
        ..Default::default()
    })
    .await;
    let app = bridge.instance();
    bridge.advance(PAST_REFRESH);
    // One hang: cut off after TOKEN_ENDPOINT_TIMEOUT_SECONDS, then tried again in the same call.
    bridge.provider.token_faults(vec![json!({ "hang": true })]).await;
    let token = app.tokens().access_token("default").await.expect("the second try goes through");
    assert_eq!(token.source, TokenSource::TokenEndpoint);
    let calls = bridge.calls("refresh_token").await;
    assert_eq!(calls[0]["fault"], "abandoned", "{calls:#?}");
    assert_eq!(calls[1]["ok"], true);
    let waited = calls[1]["at"].as_i64().unwrap() - calls[0]["at"].as_i64().unwrap();
    assert!(waited >= 2000, "the first call was cut off after {waited} ms, before its timeout");

    // A server that keeps hanging: three tries, then a transient failure with a backoff.
    bridge.advance(PAST_REFRESH);
    bridge.provider.token_faults(vec![json!({ "hang": true }), json!({ "hang": true }), json!({ "hang": true })]).await;
    match app.tokens().access_token("default").await {
        Err(e @ TokenError::Unavailable { .. }) => assert!(e.to_string().contains("did not answer in time"), "{e}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The provider records an abandoned call once it notices the closed connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut calls = bridge.calls("refresh_token").await;
    let settled = |calls: &[Value]| calls.len() >= 5 && calls[2..].iter().all(|c| c["fault"] == "abandoned");
    while !settled(&calls) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        calls = bridge.calls("refresh_token").await;
    }
    assert_eq!(calls.len(), 5);
    assert!(calls[2..].iter().all(|c| c["fault"] == "abandoned"), "{calls:#?}");
    bridge.advance(60);
    let token = app.tokens().access_token("default").await.expect("the refresh token was not burned");
    assert_eq!(token.source, TokenSource::TokenEndpoint);
    assert_chain(&calls.into_iter().filter(|c| c["ok"] == true).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_app_credentials_alert_once_at_app_level_and_leave_connections_alone() {
    let sink = AlertSink::start().await;
    let bridge = sink.bridge(Vec::new()).await;
    let app = bridge.instance();
    bridge.consent("second").await;
    bridge.advance(PAST_REFRESH);
    let invalid_client = json!({ "status": 401, "error": "invalid_client",
        "error_description": "AADSTS7000222: The provided client secret keys are expired.", "error_codes": [7000222] });
    bridge.provider.token_faults(vec![invalid_client.clone(), invalid_client]).await;
    for id in ["default", "second"] {
        match app.tokens().access_token(id).await {
            Err(e @ TokenError::AppCredentials { .. }) => assert!(e.to_string().contains("AADSTS7000222"), "{e}"),
            other => panic!("expected app_credentials, got {other:?}"),
        }
        // The identical 400 is not sent again for a minute.
        assert!(matches!(app.tokens().access_token(id).await, Err(TokenError::AppCredentials { .. })));
    }
    assert_eq!(bridge.refresh_calls().await, 2);
    let alerts = sink.alerts();
    assert_eq!(alerts.len(), 1, "one app-level alert, not one per connection: {alerts:#?}");
    assert_eq!(alerts[0]["alert"], "app_credentials_rejected");
    assert!(alerts[0]["connection"].is_null());
    for id in ["default", "second"] {
        let record = connections::get(&app.stores, id).await.unwrap().unwrap().value;
        assert_eq!(record.state, ConnectionState::Active);
    }
    let report = StatusReport::gather(&app).await.unwrap();
    assert_eq!(report.summary.status, 424);
    assert_eq!(report.app_alerts.len(), 1);
    // Fixed (the faults are used up): the next attempt after the pause works and clears it.
    bridge.advance(61);
    app.tokens().access_token("default").await.unwrap();
    let report = StatusReport::gather(&app).await.unwrap();
    assert!(report.app_alerts.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_loop_detection_backs_off_hard() {
    let bridge = Connected::start(Options::default()).await;
    let app = bridge.instance();
    bridge.advance(PAST_REFRESH);
    bridge
        .provider
        .token_faults(vec![json!({ "status": 400, "error": "invalid_request",
            "error_description": "AADSTS50196: The server terminated an operation because it encountered a client request loop.",
            "error_codes": [50196] })])
        .await;
    let before = bridge.now();
    match app.tokens().access_token("default").await {
        Err(TokenError::Unavailable { retry_not_before, .. }) => {
            assert!(retry_not_before - before >= chrono::TimeDelta::minutes(15));
        }
        other => panic!("expected a hard backoff, got {other:?}"),
    }
    bridge.advance(600);
    assert!(app.tokens().access_token("default").await.is_err());
    assert_eq!(bridge.refresh_calls().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_refreshed_by_the_keep_alive() {
    // Access tokens that live two days (Entra's CAE tokens live 20-28 h): without the keep-alive
    // the refresh token would sit unused.
    let bridge = Connected::start(Options { access_token_ttl: 2 * 86_400, ..Default::default() }).await;
    let app = bridge.instance();
    let sync = truecontext_bridge::functions::by_name("sync").unwrap();
    app.timer(sync, TimerInfo::default()).await.unwrap();
    assert_eq!(bridge.refresh_calls().await, 0, "fresh consent: nothing to do");
    bridge.advance(21 * 3600);
    assert_eq!(app.tokens().access_token("default").await.unwrap().source, TokenSource::Memory);
    assert_eq!(bridge.refresh_calls().await, 0);
    app.timer(sync, TimerInfo::default()).await.unwrap();
    assert_eq!(bridge.refresh_calls().await, 1, "older than TOKEN_KEEPALIVE_HOURS (20): refreshed");
    app.timer(sync, TimerInfo::default()).await.unwrap();
    assert_eq!(bridge.refresh_calls().await, 1);
}

/// A timer tick that finds the sync running elsewhere still keeps the tokens alive: the run
/// may be busy for minutes, and a refresh a crash interrupted is accepted again only within
/// the server's reuse grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_finds_the_sync_running_elsewhere_still_keeps_the_tokens_alive() {
    let bridge = Connected::start(Options::default()).await;
    let app = bridge.instance();
    let ttl = Duration::from_secs(60);
    let tables = app.stores.tables.as_ref();
    let running = truecontext_bridge::store::lease::acquire(tables, "sync", "the running instance", ttl)
        .await
        .unwrap()
        .expect("the sync lease is free");
    bridge.advance(PAST_REFRESH);
    let sync = truecontext_bridge::functions::by_name("sync").unwrap();
    app.timer(sync, TimerInfo::default()).await.unwrap();
    assert_eq!(bridge.refresh_calls().await, 1, "the due token was refreshed by the skipped tick");
    let last_run = TypedTable::new(tables, Table::Runs).get::<Value>("sync", "last").await.unwrap();
    assert!(last_run.is_none(), "the skipped tick is not recorded as a run: {last_run:?}");
    app.timer(sync, TimerInfo::default()).await.unwrap();
    assert_eq!(bridge.refresh_calls().await, 1, "a fresh token is not refreshed again");
    truecontext_bridge::store::lease::release(tables, running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2c_connections_warn_ahead_of_the_sliding_window() {
    let sink = AlertSink::start().await;
    let bridge =
        sink.bridge(vec![("B2C_REFRESH_WINDOW_DAYS", "20".into()), ("B2C_REAUTH_WARNING_DAYS", "7".into())]).await;
    let app = bridge.instance();
    // Mark the connection as a B2C one consented 15 days ago (the sign-in ran against an OIDC server).
    let table = TypedTable::new(app.stores.tables.as_ref(), Table::Connections);
    let mut record = table.get::<connections::Connection>(connections::PARTITION, "default").await.unwrap().unwrap();
    record.value.provider = "b2c".into();
    record.value.consented_at -= chrono::TimeDelta::days(15);
    table
        .update(connections::PARTITION, "default", &record.value, truecontext_bridge::store::IfMatch::ETag(record.etag))
        .await
        .unwrap();

    let report = StatusReport::gather(&app).await.unwrap();
    let deadline = report.connections[0].reconsent_deadline.expect("a B2C deadline");
    assert_eq!(deadline, record.value.consented_at + chrono::TimeDelta::days(20));
    assert_eq!(report.summary.status, 424);
    assert!(report.summary.attention[0].contains("consent again before"), "{:?}", report.summary);
    let sync = truecontext_bridge::functions::by_name("sync").unwrap();
    for _ in 0..3 {
        app.timer(sync, TimerInfo::default()).await.unwrap();
    }
    let alerts = sink.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["alert"], "reconsent_due");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_only_tokens_are_cached_and_shared_across_instances() {
    let bridge = Connected::start(Options {
        settings: vec![("OAUTH_GRANT", "client_credentials".into()), ("OAUTH_SCOPES", "profile".into())],
        consent: false,
        ..Default::default()
    })
    .await;
    let instances: Vec<App> = (0..3).map(|_| bridge.instance()).collect();
    for cycle in 1..=5u64 {
        assert_all_same_token(&harness::connected::concurrent(&instances, 21, "app").await);
        assert_eq!(bridge.provider.token_request_count("client_credentials").await, cycle);
        bridge.advance(PAST_REFRESH);
    }
    assert!(matches!(instances[0].tokens().access_token("default").await, Err(TokenError::InvalidConnection(_))));
    let report = StatusReport::gather(&instances[0]).await.unwrap();
    assert_eq!(report.connections[0].access, "app_only");
    assert!(report.connections[0].last_refresh_success.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_other_refusal_pauses_a_minute_and_alerts_once() {
    let sink = AlertSink::start().await;
    let bridge = sink.bridge(Vec::new()).await;
    let app = bridge.instance();
    bridge.advance(PAST_REFRESH);
    bridge
        .provider
        .token_faults(vec![
            json!({ "status": 400, "error": "invalid_scope", "error_description": "scope profile2 unknown" }),
        ])
        .await;
    for _ in 0..3 {
        match app.tokens().access_token("default").await {
            Err(TokenError::Rejected { reason, .. }) => assert!(reason.contains("invalid_scope"), "{reason}"),
            other => panic!("expected rejected, got {other:?}"),
        }
    }
    assert_eq!(bridge.refresh_calls().await, 1, "the identical 400 is not sent again within a minute");
    bridge.advance(30);
    assert!(app.tokens().access_token("default").await.is_err());
    assert_eq!(bridge.refresh_calls().await, 1);
    let alerts = sink.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["alert"], "token_refresh_rejected");
    assert_eq!(alerts[0]["class"], "rejected");
    let report = StatusReport::gather(&app).await.unwrap();
    assert_eq!(report.summary.status, 424, "a refusal is the operator's to look at");
    assert_eq!(report.connections[0].state, ConnectionState::Active);
    // A minute later it is asked again; it works, and the alert ends.
    bridge.advance(31);
    assert_eq!(app.tokens().access_token("default").await.unwrap().source, TokenSource::TokenEndpoint);
    let report = StatusReport::gather(&app).await.unwrap();
    assert!(report.healthy, "{:?}", report.summary);
    assert!(report.connections[0].alerts.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_alert_once_after_five_in_a_row() {
    let sink = AlertSink::start().await;
    let bridge = sink.bridge(Vec::new()).await;
    let app = bridge.instance();
    bridge.advance(PAST_REFRESH);
    let unavailable = json!({ "status": 503, "retry_after": "30" });
    bridge.provider.token_faults(vec![unavailable; 6]).await;
    for failure in 1..=6u32 {
        assert!(matches!(app.tokens().access_token("default").await, Err(TokenError::Unavailable { .. })));
        let record = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
        assert_eq!(record.consecutive_failures, failure);
        let report = StatusReport::gather(&app).await.unwrap();
        assert_eq!(report.healthy, failure < 5, "failure {failure}: {:?}", report.summary);
        bridge.advance(20 * 60); // past any backoff
    }
    assert_eq!(bridge.refresh_calls().await, 6, "a Retry-After of 30 s is not waited out inside a call");
    let alerts = sink.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["alert"], "token_refresh_failing");
    app.tokens().access_token("default").await.unwrap();
    assert!(StatusReport::gather(&app).await.unwrap().healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_overtaken_by_a_reconsent_leaves_the_new_grant_in_force() {
    let bridge = Connected::start(Options::default()).await;
    let app = bridge.instance();
    let before = connections::get(&app.stores, "default").await.unwrap().unwrap().value.token_generation;
    // The token endpoint sits on this refresh while an administrator consents again.
    bridge.provider.token_faults(vec![json!({ "delay_ms": 1500 })]).await;
    let refreshing = {
        let app = app.clone();
        tokio::spawn(async move { app.tokens().refresh_now("default").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    bridge.consent("default").await;
    let consented = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
    assert!(consented.token_generation > before);
    let token = refreshing.await.unwrap().expect("the new grant's token");
    assert_eq!(token.source, TokenSource::Store, "the consent's token, not the old grant's");
    assert_eq!(token.generation, consented.token_generation);
    let record = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
    assert_eq!(record.token_set_version, consented.token_set_version, "the refresh did not overwrite it");
    assert_eq!(record.consecutive_failures, 0);

    // The next refresh presents the consent's refresh token.
    app.tokens().refresh_now("default").await.unwrap();
    let log = bridge.provider.token_request_log().await;
    let consent = log.iter().rev().find(|r| r["grant_type"] == "authorization_code").unwrap();
    let last = log.last().unwrap();
    assert_eq!(last["grant_type"], "refresh_token");
    assert_eq!(last["ok"], true);
    assert_eq!(last["presented_refresh_token"], consent["issued_refresh_token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_answer_keeps_the_refresh_token_it_carried() {
    let bridge = Connected::start(Options::default()).await;
    let app = bridge.instance();
    bridge.advance(PAST_REFRESH);
    // A 200 with a new refresh token and a token type we cannot use.
    bridge
        .provider
        .token_faults(vec![json!({ "status": 200, "body": { "access_token": "at", "token_type": "DPoP", "refresh_token": "rt-from-odd-answer", "expires_in": 3600 } })])
        .await;
    assert!(matches!(app.tokens().access_token("default").await, Err(TokenError::Rejected { .. })));
    let record = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
    let stored =
        app.stores.secrets.get(&record.token_set_secret, record.token_set_version.as_deref()).await.unwrap().unwrap();
    let bundle = truecontext_bridge::connections::TokenSet::from_secret(&stored.value, stored.created).unwrap();
    assert_eq!(bundle.refresh_token.unwrap().expose(), "rt-from-odd-answer", "the refresh token it carried is kept");
    assert!(bundle.access_token.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_set_stored_by_a_refresh_that_died_is_adopted() {
    use truecontext_bridge::connections::TokenSet;
    use truecontext_bridge::secret::SecretString;
    let bridge = Connected::start(Options::default()).await;
    let app = bridge.instance();
    // A refresh that used the refresh token, stored the new set, and died before the record.
    let record = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
    let named =
        app.stores.secrets.get(&record.token_set_secret, record.token_set_version.as_deref()).await.unwrap().unwrap();
    let current = TokenSet::from_secret(&named.value, named.created).unwrap();
    let answer: serde_json::Value = harness::client()
        .post(format!("{}/token", bridge.provider.issuer()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", current.refresh_token.as_ref().unwrap().expose()),
            ("client_id", harness::connected::CLIENT_ID),
            ("client_secret", harness::connected::CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rotated = answer["refresh_token"].as_str().expect("a rotated refresh token").to_owned();
    let orphan = TokenSet {
        generation: current.generation + 1,
        refresh_token: Some(SecretString::new(rotated)),
        access_token: None,
        expires_at: None,
        refresh_at: None,
        scopes: current.scopes.clone(),
        issued_at: chrono::Utc::now(),
        supersedes: record.token_set_version.clone(),
    };
    app.stores.secrets.set(&record.token_set_secret, &orphan.to_secret()).await.unwrap();

    // The next refresh finds it and uses its refresh token; the spent one is never presented.
    bridge.advance(PAST_REFRESH);
    let token = app.tokens().access_token("default").await.expect("the orphaned set's refresh token works");
    assert_eq!(token.source, TokenSource::TokenEndpoint);
    let calls = bridge.calls("refresh_token").await;
    assert_eq!(calls.len(), 2);
    assert_chain(&calls);
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:#?}");
    let after = connections::get(&app.stores, "default").await.unwrap().unwrap().value;
    assert_eq!(after.token_generation, current.generation + 2);
}
