//! `serve --standalone --demo`, both roads: the simulator's submissions are synced, and new
//! ones are also pushed to the webhook as TrueContext's HTTP Data Destination would, except
//! those of form 1003, whose destination is broken on purpose. Within a minute status shows
//! pushes accepted, the submissions landed, and at least one missed push the sync caught up;
//! the status page, loaded in Chromium, shows it with its two inline SVG charts and nothing
//! refused by its policy.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::browser::BrowserRun;
use crate::harness::truecontext::KEY_SECRET;
use crate::harness::{self, client, Server, TEST_FUNCTION_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_both_roads_and_a_missed_push_within_a_minute() {
    let port = harness::free_port();
    let mut server = Server::start(
        &["serve", "--standalone", "--demo", "--port", &port.to_string()],
        port,
        &[("FUNCTION_KEY", TEST_FUNCTION_KEY)],
    );
    let started = Instant::now();
    let report = loop {
        let (_, status) = server.status().await;
        let w = &status["webhook"];
        let landed = status["truecontext"][0]["landed_total"].as_u64().unwrap_or(0);
        let (accepted, missed) =
            (w["accepted"].as_u64().unwrap_or(0), w["missed_pushes_since_push"].as_u64().unwrap_or(0));
        if accepted >= 1 && missed >= 1 && landed >= 300 {
            break status;
        }
        assert!(
            server.alive() && started.elapsed() < Duration::from_secs(60),
            "after {:?}: {accepted} pushes accepted, {missed} missed, {landed} landed:\n{status:#}\n{}",
            started.elapsed(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let took = started.elapsed();
    let missed = &report["webhook"]["missed_pushes"]["demo"];
    assert!(missed.as_array().unwrap().iter().all(|f| f["form"] == "1003"), "only the broken form misses: {missed}");
    let demo = &report["truecontext"][0];
    assert_eq!((demo["connection"].as_str(), demo["access"].as_str()), (Some("demo"), Some("configured_api_key")));

    let html = client()
        .get(server.url("/api/status"))
        .header("x-functions-key", TEST_FUNCTION_KEY)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(html.matches("<svg").count(), 2, "the landings chart and the calls chart");
    assert!(html.contains("id=\"chart-landings\"") && html.contains("id=\"chart-calls\""));
    assert!(!html.contains("<script") && !html.contains("style=\""), "no script, no inline style");

    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/demo-status-page.png");
    let mut run = BrowserRun::new(&server.url("/api/status"), "/api/status");
    run.host_resolver_rules = None;
    run.screenshot = Some(screenshot.clone());
    run.headers = vec![("x-functions-key".into(), TEST_FUNCTION_KEY.into())];
    let seen = tokio::task::spawn_blocking(move || run.run()).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert!(seen.console.iter().all(|m| !m.contains("Refused")), "the policy refused something: {:?}", seen.console);
    assert_eq!(seen.stylesheets, 1);
    for shown in
        ["Activity", "Latest landed submissions", "Missed (sync only)", "demo (configured api key)", "push", "sync"]
    {
        assert!(seen.text.contains(shown), "{shown}:\n{}", seen.text);
    }
    let png = std::fs::read(&screenshot).expect("a screenshot was written");
    assert!(png.len() > 20_000, "a rendered page: {} bytes", png.len());

    let log = server.log();
    assert!(!log.contains(KEY_SECRET), "the API key secret never reaches the log");
    let password =
        log.lines().skip_while(|l| !l.contains("with password:")).nth(1).unwrap_or_default().trim().to_owned();
    assert_eq!(password.len(), 24, "the demo's push credential is printed once: {log}");
    assert_eq!(log.matches(&password).count(), 1, "and never logged");
    server.kill();
    eprintln!(
        "the demo after {took:?}: {} pushes accepted, {} landed, missed {}",
        report["webhook"]["accepted"],
        demo["landed_total"],
        Value::to_string(missed)
    );
}
