//! The status page in Chromium: `GET /api/status` from a browser (function key as a header)
//! against a running bridge with connections in several states. The page renders with its
//! style (nothing refused by its policy), says what the JSON says, and a screenshot is kept
//! (`target/status-page.png`) and checked to be a real picture.

use crate::harness::browser::BrowserRun;
use crate::harness::connected::{Connected, Options};
use crate::harness::{client, TEST_FUNCTION_KEY};
use serde_json::Value;
use truecontext_bridge::alerts::{self, Alert};
use truecontext_bridge::connections::{self, Connection, ConnectionState};
use truecontext_bridge::store::{IfMatch, Table, TypedTable};

#[tokio::test]
async fn the_status_page_renders_the_json_for_people() {
    let bridge = Connected::start(Options::default()).await;
    bridge.consent("paused").await;
    bridge.consent("broken").await;
    let (code, said) = {
        let output = bridge.command(&["connection", "disable", "paused"], &[]).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    assert_eq!(code, Some(0), "{said}");
    // `broken` lost its grant: what a refused refresh leaves, and its alert.
    let app = bridge.instance();
    let table = TypedTable::new(app.stores.tables.as_ref(), Table::Connections);
    let mut record = connections::get(&app.stores, "broken").await.unwrap().unwrap();
    record.value.state = ConnectionState::NeedsReauth;
    record.value.reason = Some("invalid_grant: the grant was revoked".into());
    table
        .update::<Connection>(connections::PARTITION, "broken", &record.value, IfMatch::ETag(record.etag))
        .await
        .unwrap();
    let alert = Alert::new(
        truecontext_bridge::alerts::AlertKind::ConnectionNeedsReauth,
        Some("broken"),
        "needs_reauth",
        "invalid_grant",
        "grant revoked",
    );
    alerts::raise(&app.stores, None, alert).await.unwrap();

    let fetch = || async {
        let response = client()
            .get(bridge.server.url("/api/status"))
            .header("x-functions-key", TEST_FUNCTION_KEY)
            .send()
            .await
            .unwrap();
        response.json::<Value>().await.unwrap()
    };
    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    // The first syncs the consents queued may still be calling TrueContext: compare the page
    // with JSON read just before and just after it, and take a view the two agree on.
    let calls_of = |json: &Value| json["truecontext"].to_string();
    let mut attempt = 0;
    let (json, seen) = loop {
        attempt += 1;
        let before = fetch().await;
        let _ = std::fs::remove_file(&screenshot);
        let mut run = BrowserRun::new(&bridge.server.url("/api/status"), "/api/status");
        run.host_resolver_rules = None;
        run.screenshot = Some(screenshot.clone());
        run.headers = vec![("x-functions-key".into(), TEST_FUNCTION_KEY.into())];
        let seen = tokio::task::spawn_blocking(move || run.run()).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        let after = fetch().await;
        if calls_of(&before) == calls_of(&after) && before["connections"] == after["connections"] {
            break (after, seen);
        }
        assert!(attempt < 20, "the status never held still: {before}\n{after}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };

    assert_eq!(seen.status, Some(424), "something needs attention, as the JSON says: {}", seen.text);
    assert_eq!(json["summary"]["status"], 424);
    assert!(seen.console.iter().all(|m| !m.contains("Refused")), "the policy refused something: {:?}", seen.console);
    assert_eq!(seen.stylesheets, 1, "the page's style applies");
    for connection in json["connections"].as_array().unwrap() {
        let id = connection["id"].as_str().unwrap();
        let state = connection["state"].as_str().unwrap();
        // A table row's cells are tab-separated in innerText (the banner's items are not).
        let line = seen
            .text
            .lines()
            .find(|l| l.starts_with(&format!("{id}\t")))
            .unwrap_or_else(|| panic!("{id} missing:\n{}", seen.text));
        assert!(line.contains(state), "{id} shows {state}: {line}");
    }
    for state in ["active", "disabled", "needs_reauth"] {
        assert!(seen.text.contains(state), "{state}:\n{}", seen.text);
    }
    for usage in json["truecontext"].as_array().unwrap() {
        let figures = format!("{} of {}", usage["calls_today"], usage["budget"]);
        assert!(seen.text.contains(&figures), "{figures}:\n{}", seen.text);
    }
    let calls: Vec<f64> =
        json["truecontext"].as_array().unwrap().iter().map(|t| t["calls_today"].as_f64().unwrap()).collect();
    let meters: Vec<f64> = seen.meters.iter().map(|m| m.value).collect();
    assert_eq!(meters, calls, "one bar per connection, at its calls");
    assert!(seen.meters.iter().all(|m| m.max == 2000.0), "{:?}", seen.meters);
    assert!(seen.text.contains("connection_needs_reauth"), "{}", seen.text);
    assert!(
        seen.text.contains("tcbridge consent-url --connection broken"),
        "the alert says what to do:\n{}",
        seen.text
    );
    for attention in json["summary"]["attention"].as_array().unwrap() {
        assert!(seen.text.contains(attention.as_str().unwrap()), "{attention}:\n{}", seen.text);
    }

    let png = std::fs::read(&screenshot).expect("a screenshot was written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (width, height) =
        (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert!(width >= 600 && height >= 400, "a page-sized picture: {width}x{height}");
    assert!(png.len() > 20_000, "a rendered page, not a blank one: {} bytes", png.len());
}
