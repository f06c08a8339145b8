//! Missing pushes, end to end in-process: pushes of one form stop arriving; the sync lands
//! those submissions anyway, the housekeeping pass counts them against their form, and past the
//! threshold one `pushes_missing` alert names that form (and only it) on the alert webhook and
//! in status. When that form's pushes resume, the alert clears and one "resolved" message goes
//! through the same outbox. A replayed poisoned push resolves its alert too.

use std::sync::{Arc, Mutex};

use chrono::{TimeDelta, Utc};
use serde_json::Value;
use truecontext_bridge::handlers::StatusReport;

use crate::harness::hook::Hook;

/// An alert webhook that keeps what it is sent.
struct Sink {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Sink {
    async fn start() -> Sink {
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let sink = received.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Sink { url, received }
    }

    fn messages(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

async fn sync(hook: &Hook) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let outcome = truecontext_bridge::handlers::pull(&hook.app, "default", None, deadline).await.unwrap();
    let truecontext_bridge::sync::RunOutcome::Ran(summary) = outcome else { panic!("busy") };
    assert!(summary.completed, "{summary:?}");
}

/// Pushes each submission's document, as TrueContext's HTTP Data Destination sends it.
async fn push_all(hook: &Hook, ids: &[String]) {
    for id in ids {
        let document = hook.sim.record(id).unwrap().document;
        assert!(hook.push(&document).await.status.is_success());
    }
    hook.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_dropped_for_one_form_raise_an_alert_naming_it_which_resolves_when_they_resume() {
    let sink = Sink::start().await;
    let hook = Hook::new(&[
        ("ALERT_WEBHOOK_URL", &sink.url),
        ("MISSED_PUSH_GRACE_SECONDS", "0"),
        ("MISSED_PUSH_ALERT_THRESHOLD", "3"),
    ]);
    // Submissions from before the first sync (its backfill) were never going to be pushed.
    hook.sim.add_records(3, "form-b", Utc::now() - TimeDelta::hours(5));
    sync(&hook).await;
    let now = Utc::now();
    let pushed = hook.sim.add_records(5, "form-a", now - TimeDelta::seconds(30));
    let dropped = hook.sim.add_records(4, "form-b", now - TimeDelta::seconds(20));
    push_all(&hook, &pushed).await;
    sync(&hook).await;
    hook.app.housekeeping().await;

    let report = StatusReport::gather(&hook.app).await.unwrap();
    let forms = &report.webhook.missed_pushes["default"];
    let form_b = forms.iter().find(|f| f.form == "form-b").expect("form-b counted");
    assert_eq!(form_b.missed_since_push, dropped.len() as u64, "{forms:?}");
    assert!(forms.iter().all(|f| f.form != "form-a" || f.missed_since_push == 0), "{forms:?}");
    assert_eq!(report.webhook.missed_pushes_since_push, 4);
    let attention = report.summary.attention.join("\n");
    assert!(
        attention.contains("pushes are missing for form(s) form-b") && !attention.contains("form-a"),
        "{attention}"
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0]["alert"], "pushes_missing");
    assert_eq!(messages[0]["resolved"], false);
    let reason = messages[0]["reason"].as_str().unwrap();
    assert!(reason.contains("form-b") && !reason.contains("form-a"), "{reason}");

    // More of form-b by sync alone: counted, no second alert.
    hook.sim.add_records(2, "form-b", Utc::now());
    sync(&hook).await;
    hook.app.housekeeping().await;
    assert_eq!(sink.messages().len(), 1, "one alert while the cause lasts");

    // Pushes of form-b resume: the next sync lists one a push landed, the count goes to zero,
    // and the next pass clears the alert with one resolved message.
    let resumed = hook.sim.add_records(2, "form-b", Utc::now());
    push_all(&hook, &resumed).await;
    sync(&hook).await;
    hook.app.housekeeping().await;
    let report = StatusReport::gather(&hook.app).await.unwrap();
    assert!(!report.summary.attention.iter().any(|a| a.contains("pushes are missing")), "{:?}", report.summary);
    let messages = sink.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert_eq!(messages[1]["alert"], "pushes_missing");
    assert_eq!(messages[1]["resolved"], true, "{}", messages[1]);
    assert!(messages[1]["text"].as_str().unwrap().contains("resolved"), "{}", messages[1]);
    let alerts = truecontext_bridge::alerts::list(&hook.stores, Some("default")).await.unwrap();
    assert!(alerts.is_empty(), "{alerts:?}");
    let owed = truecontext_bridge::alerts::undelivered(&hook.stores, &["default".to_owned()]).await.unwrap();
    assert!(owed.is_empty(), "the resolved message is not kept once posted: {owed:?}");
    // Nothing more to say on the next pass.
    hook.app.housekeeping().await;
    assert_eq!(sink.messages().len(), 2);
}
