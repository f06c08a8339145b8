//! The TrueContext client against the simulator (harness/truecontext.rs): typed calls, the
//! documents exactly as served, errors by status and `X-ProntoForms-ErrorCode`, retries that
//! honour `Retry-After`, the daily budget and the 402 stop shared through the store, and the
//! cluster-wide cap of 3 calls in flight held by two clients on one store.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use truecontext_bridge::clock::{Clock, OffsetClock};
use truecontext_bridge::config::{RawSettings, Settings, TrueContextSettings};
use truecontext_bridge::secret::SecretString;
use truecontext_bridge::store::{local, Stores};
use truecontext_bridge::truecontext::{next_midnight, Credentials, ListQuery, TrueContextClient, TrueContextError};

use crate::harness::truecontext::{Fault, TrueContextSim, KEY_ID, KEY_SECRET};

const CONNECTION: &str = "default";

fn settings(sim: &TrueContextSim, extra: &[(&str, &str)]) -> TrueContextSettings {
    let base = sim.base_url();
    let mut pairs = vec![("TRUECONTEXT_BASE_URL", base.as_str()), ("TRUECONTEXT_AUTH", "basic")];
    pairs.extend_from_slice(extra);
    Settings::load(&RawSettings::from_pairs(pairs)).unwrap_or_else(|p| panic!("{p:?}")).truecontext
}

fn secret() -> SecretString {
    SecretString::new(KEY_SECRET)
}

fn basic(secret: &SecretString) -> Credentials<'_> {
    Credentials::basic(KEY_ID, secret)
}

fn store(dir: &tempfile::TempDir) -> Stores {
    local::open(dir.path(), None).unwrap()
}

#[tokio::test]
async fn lists_a_page_and_serves_documents_exactly_as_sent() {
    let sim = TrueContextSim::start();
    let ids = sim.add_records(3, "form-1", Utc::now() - TimeDelta::hours(1));
    let dir = tempfile::tempdir().unwrap();
    let client = TrueContextClient::new(&settings(&sim, &[]), store(&dir));
    let key = secret();
    let query = ListQuery {
        stime: Some(Utc::now() - TimeDelta::days(1)),
        etime: Some(Utc::now()),
        form_ids: vec!["form-1".into()],
        ..ListQuery::default()
    };
    let page = client.list(&basic(&key), CONNECTION, &query, 0).await.unwrap();
    assert_eq!(page.total_number_of_results, 3);
    assert_eq!(page.page_data.iter().map(|h| h.summary.identifier.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(page.page_data[0].form_id.as_deref(), Some("form-1"));

    let document = client.document(&basic(&key), CONNECTION, &ids[1]).await.unwrap();
    assert_eq!(document.bytes, sim.record(&ids[1]).unwrap().document, "the bytes exactly as served");
    assert_eq!(document.json().unwrap()["identifier"], ids[1].as_str());
    let metadata = client.metadata(&basic(&key), CONNECTION, &ids[1]).await.unwrap();
    assert_eq!(
        metadata.processed_timestamp.map(|t| t.timestamp()),
        Some(sim.record(&ids[1]).unwrap().processed.timestamp())
    );

    let formspaces = client.formspaces(&basic(&key), CONNECTION, 0).await.unwrap();
    assert_eq!(formspaces.page_data[0].identifier, "fs-1");
    let forms = client.forms(&basic(&key), CONNECTION, "fs-1", 0).await.unwrap();
    assert_eq!(forms.page_data[0].identifier, "form-1");

    let calls = sim.calls();
    let list = &calls[0];
    assert_eq!(list.query["p"], "0", "pages are 0-based");
    assert_eq!(list.query["s"], "100");
    assert_eq!(list.query["ftime"], "DataRecordProcessedDate");
    assert_eq!(list.query["fids"], "form-1");
    assert!(list.query["stime"].ends_with('Z'));
    let state = client.budget(CONNECTION).state(Utc::now()).await.unwrap();
    assert_eq!(state.calls_today, 5, "every call that reached TrueContext counts");
}

#[tokio::test]
async fn errors_are_typed_by_status_and_name_the_call() {
    let sim = TrueContextSim::start();
    let ids = sim.add_records(1, "form-1", Utc::now());
    let dir = tempfile::tempdir().unwrap();
    let client = TrueContextClient::new(&settings(&sim, &[]), store(&dir));
    let key = secret();

    let missing = client.document(&basic(&key), CONNECTION, "999").await.unwrap_err();
    assert!(matches!(&missing, TrueContextError::NotFound { code, .. } if code == "ObjectNotFound"), "{missing}");
    assert_eq!(missing.class(), "not_found");

    sim.fault(Fault::Status { status: 403, code: "AccessDenied", retry_after: None });
    let denied = client.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap_err();
    assert_eq!(denied.class(), "auth");
    assert!(denied.to_string().contains("AccessDenied"), "{denied}");

    sim.fault(Fault::Status { status: 400, code: "InvalidRequestDataFormat", retry_after: None });
    let rejected = client.list(&basic(&key), CONNECTION, &ListQuery::default(), 0).await.unwrap_err();
    assert_eq!(rejected.class(), "rejected");

    sim.fault(Fault::Malformed);
    let malformed = client.list(&basic(&key), CONNECTION, &ListQuery::default(), 3).await.unwrap_err();
    assert_eq!(malformed.class(), "malformed");
    assert!(malformed.to_string().contains("data.json page 3"), "names the call: {malformed}");

    let wrong = SecretString::new("not-the-secret");
    let refused = client.list(&basic(&wrong), CONNECTION, &ListQuery::default(), 0).await.unwrap_err();
    assert!(matches!(refused, TrueContextError::Unauthorized { .. }), "{refused}");
    assert!(!refused.to_string().contains("not-the-secret"));
    // Each of these reached TrueContext once: no retries of a refusal.
    assert_eq!(sim.calls().len(), 5);

    let bad_id = client.document(&basic(&key), CONNECTION, "../formspaces").await.unwrap_err();
    assert_eq!(bad_id.class(), "rejected");
    assert_eq!(sim.calls().len(), 5, "an invalid id is refused before any call");
}

#[tokio::test]
async fn transient_answers_are_retried_honouring_retry_after() {
    let sim = TrueContextSim::start();
    let ids = sim.add_records(1, "form-1", Utc::now());
    let dir = tempfile::tempdir().unwrap();
    let client = TrueContextClient::new(&settings(&sim, &[]), store(&dir));
    let key = secret();
    sim.fault(Fault::Status { status: 429, code: "TooManyRequests", retry_after: Some(1) });
    sim.fault(Fault::Status { status: 503, code: "ServerError", retry_after: None });
    let started = std::time::Instant::now();
    let document = client.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap();
    assert_eq!(document.json().unwrap()["identifier"], ids[0].as_str());
    assert!(started.elapsed() >= Duration::from_millis(1900), "waited 1 s (Retry-After) then 2 s");
    assert_eq!(sim.calls().iter().map(|c| c.status).collect::<Vec<_>>(), [429, 503, 200]);
    assert_eq!(client.budget(CONNECTION).state(Utc::now()).await.unwrap().calls_today, 3);

    // A Retry-After longer than a call may wait fails the call at once, saying when.
    sim.fault(Fault::Status { status: 503, code: "ServerError", retry_after: Some(3600) });
    let unavailable = client.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap_err();
    assert!(
        matches!(unavailable, TrueContextError::Unavailable { retry_after, .. } if retry_after == Duration::from_secs(3600))
    );
}

#[tokio::test]
async fn the_daily_budget_is_shared_and_spent_calls_never_reach_truecontext() {
    let sim = TrueContextSim::start();
    let ids = sim.add_records(1, "form-1", Utc::now());
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let settings = settings(&sim, &[("TRUECONTEXT_DAILY_CALL_BUDGET", "4")]);
    // Two instances on one store share the count.
    let one = TrueContextClient::with_clock(&settings, store(&dir), clock.clone());
    let two = TrueContextClient::with_clock(&settings, store(&dir), clock.clone());
    let key = secret();
    for client in [&one, &two, &one, &two] {
        client.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap();
    }
    let spent = two.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap_err();
    assert!(matches!(spent, TrueContextError::BudgetSpent { budget: 4, .. }), "{spent}");
    assert_eq!(sim.calls().len(), 4);
    let state = one.budget(CONNECTION).state(clock.utc()).await.unwrap();
    assert_eq!((state.calls_today, state.budget_left), (4, 0));
    // A new UTC day has a new budget.
    let to_midnight = (next_midnight(clock.utc()) - clock.utc()).to_std().unwrap();
    clock.advance(to_midnight + Duration::from_secs(1));
    one.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap();
    assert_eq!(sim.calls().len(), 5);
}

#[tokio::test]
async fn a_402_stops_every_instance_until_midnight_utc() {
    let sim = TrueContextSim::start();
    let ids = sim.add_records(1, "form-1", Utc::now());
    sim.daily_limit(2);
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let settings = settings(&sim, &[]);
    let one = TrueContextClient::with_clock(&settings, store(&dir), clock.clone());
    let two = TrueContextClient::with_clock(&settings, store(&dir), clock.clone());
    let key = secret();
    one.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap();
    one.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap();
    let expended = one.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap_err();
    let midnight = next_midnight(clock.utc());
    assert!(matches!(expended, TrueContextError::CallCountExpended { until } if until == midnight), "{expended}");
    // The other instance makes no call either.
    let stopped = two.list(&basic(&key), CONNECTION, &ListQuery::default(), 0).await.unwrap_err();
    assert_eq!(stopped.class(), "call_count_expended");
    assert_eq!(sim.calls().len(), 3, "no call after the 402");
    assert_eq!(two.budget(CONNECTION).state(clock.utc()).await.unwrap().stopped_until, Some(midnight));
    // After 00:00 UTC the calls resume.
    let to_midnight = (midnight - clock.utc()).to_std().unwrap();
    clock.advance(to_midnight + Duration::from_secs(1));
    sim.daily_limit(100);
    two.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap();
    assert_eq!(two.budget(CONNECTION).state(clock.utc()).await.unwrap().stopped_until, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_never_have_more_than_three_calls_in_flight() {
    let sim = TrueContextSim::start();
    let ids = sim.add_records(4, "form-1", Utc::now());
    sim.latency(Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(&sim, &[]);
    let clients = [TrueContextClient::new(&settings, store(&dir)), TrueContextClient::new(&settings, store(&dir))];
    let mut tasks = Vec::new();
    for i in 0..12 {
        let client = clients[i % 2].clone();
        let id = ids[i % ids.len()].clone();
        tasks.push(tokio::spawn(async move {
            let key = secret();
            client.document(&basic(&key), CONNECTION, &id).await.map(|d| d.bytes.len())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(sim.max_in_flight() <= 3, "at most 3 in flight, saw {}", sim.max_in_flight());
    assert!(sim.calls().iter().all(|c| c.status == 200), "no 429: the cap held");
    assert_eq!(sim.calls().len(), 12);
}

#[tokio::test]
async fn a_hanging_call_is_cut_off_at_the_timeout_and_retried() {
    let sim = TrueContextSim::start();
    let ids = sim.add_records(1, "form-1", Utc::now());
    let dir = tempfile::tempdir().unwrap();
    let client = TrueContextClient::new(&settings(&sim, &[("TRUECONTEXT_TIMEOUT_SECONDS", "1")]), store(&dir));
    let key = secret();
    sim.fault(Fault::Delay(Duration::from_secs(30)));
    let started = std::time::Instant::now();
    let document = client.document(&basic(&key), CONNECTION, &ids[0]).await.unwrap();
    assert_eq!(document.json().unwrap()["identifier"], ids[0].as_str());
    assert!(started.elapsed() < Duration::from_secs(10), "cut off at 1 s, not 30: {:?}", started.elapsed());
    let statuses: Vec<u16> = sim.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [0, 200], "the abandoned call, then the retry");
    assert_eq!(client.budget(CONNECTION).state(Utc::now()).await.unwrap().calls_today, 2, "both reached it");
}

/// Issue 20: calls that had reserved their budget and were waiting for a call slot went out
/// after another call met TrueContext's 402. Now the budget is reserved once the slot is held,
/// so after the first 402 only the calls already in flight can meet another.
#[tokio::test]
async fn after_the_first_402_no_new_call_starts() {
    let sim = TrueContextSim::start();
    let ids = sim.add_records(1, "form-1", Utc::now());
    sim.daily_limit(4);
    sim.latency(Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let client = TrueContextClient::new(&settings(&sim, &[("TRUECONTEXT_CONCURRENCY", "3")]), store(&dir));
    let key = secret();
    let credentials = basic(&key);
    let calls = (0..24).map(|_| client.document(&credentials, CONNECTION, &ids[0]));
    let results = futures::future::join_all(calls).await;
    let expended = results.iter().filter(|r| matches!(r, Err(TrueContextError::CallCountExpended { .. }))).count();
    assert_eq!(expended, 20, "every call past the limit is refused, most without a call");
    let answered_402 = sim.calls().iter().filter(|c| c.status == 402).count();
    assert!(
        answered_402 <= 3,
        "{answered_402} calls reached TrueContext after its first 402 (at most the 3 in flight)"
    );
    assert_eq!(sim.calls().len(), 4 + answered_402);
}
