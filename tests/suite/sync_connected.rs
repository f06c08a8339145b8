//! The sync of a consented connection (bearer tokens from the real OpenID Connect provider,
//! which the TrueContext simulator checks at the provider's userinfo endpoint): the first sync
//! runs right after consent, from the queue, with `SYNC_BACKFILL_DAYS` of history; a 401 from
//! TrueContext costs exactly one refresh, and the retried call succeeds.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use serde_json::Value;

use crate::harness::connected::{Connected, Options};
use crate::harness::truecontext::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sync_follows_consent_and_a_401_costs_one_refresh() {
    let bridge = Connected::start(Options {
        consent: false,
        settings: vec![("SYNC_SETTLE_SECONDS", "0".into()), ("SYNC_BACKFILL_DAYS", "30".into())],
        ..Default::default()
    })
    .await;
    let sim = &bridge.truecontext;
    let mut ids = sim.add_records(30, "form-1", Utc::now() - TimeDelta::days(3));
    let too_old = sim.add_records(1, "form-1", Utc::now() - TimeDelta::days(40));
    bridge.consent("default").await;

    // No timer runs (the schedule is far away): the consent queued the first sync.
    let app = bridge.instance();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let landed = truecontext_bridge::landing::list(&app.stores, "default").await.unwrap();
        if landed.len() >= 30 {
            let mut landed: Vec<String> = landed.into_iter().map(|l| l.id).collect();
            landed.sort();
            assert_eq!(landed, ids, "30 days of history, not the 40-day-old one ({too_old:?})");
            break;
        }
        assert!(Instant::now() < deadline, "the first sync did not run:\n{}", bridge.server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sim.calls().iter().all(|c| c.status == 200), "bearer tokens accepted: {:?}", sim.statuses());

    // TrueContext refuses the (still valid) token once: one refresh, one retry, success.
    let refreshes = bridge.refresh_calls().await;
    ids.extend(sim.add_records(2, "form-1", Utc::now()));
    sim.fault(Fault::Status { status: 401, code: "AuthenticationFailed", retry_after: None });
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the next whole second
    let output = bridge.command(&["sync", "--once", "--json"], &[]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["documents_landed"], 2, "{summary}");
    assert_eq!(bridge.refresh_calls().await, refreshes + 1, "exactly one refresh for the 401");
    assert_eq!(sim.statuses().get(&401), Some(&1));
    let landed = truecontext_bridge::landing::list(&app.stores, "default").await.unwrap();
    assert_eq!(landed.len(), 32);
}
