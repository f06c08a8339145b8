//! `tcbridge resync` and `tcbridge refetch` as an operator runs them, against the simulator's
//! ground truth: a range the sync already landed costs its list pages and nothing else; a range
//! holding submissions the sync could not see (processed behind its cursor) lands exactly those;
//! a re-sync killed mid-way resumes at its checkpoint; its budget share is respected and the
//! days it still needs are said; a range beyond TrueContext's retention is refused before any
//! call; a refetch costs one call.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use serde_json::Value;
use truecontext_bridge::store::local;

use crate::harness::truecontext::{TrueContextSim, KEY_ID, KEY_SECRET};
use crate::harness::{self};

fn settings(sim: &TrueContextSim, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut all = vec![
        ("TRUECONTEXT_BASE_URL", sim.base_url()),
        ("TRUECONTEXT_AUTH", "basic".into()),
        ("TRUECONTEXT_API_KEY_ID", KEY_ID.into()),
        ("TRUECONTEXT_API_KEY_SECRET", KEY_SECRET.into()),
        ("SYNC_SETTLE_SECONDS", "0".into()),
        ("SYNC_BACKFILL_DAYS", "1".into()),
        ("TRUECONTEXT_TIMEOUT_SECONDS", "5".into()),
    ];
    all.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    all
}

fn tcbridge(dir: &Path, settings: &[(&'static str, String)], args: &[&str]) -> Output {
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    harness::command(dir, &pairs).args(args).output().unwrap()
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}\n{}", String::from_utf8_lossy(&output.stdout), stderr(output)))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn document_calls(sim: &TrueContextSim) -> usize {
    sim.calls().iter().filter(|c| c.path.starts_with("data/")).count()
}

fn list_calls(sim: &TrueContextSim) -> usize {
    sim.calls().iter().filter(|c| c.path == "data.json").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_lists_a_landed_range_for_free_and_lands_exactly_what_the_sync_missed() {
    let sim = TrueContextSim::start();
    let now = Utc::now();
    sim.add_records(150, "form-1", now - TimeDelta::hours(2));
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(&sim, &[]);
    let synced = tcbridge(dir.path(), &settings, &["sync", "--once", "--json"]);
    assert!(synced.status.success(), "{}", stderr(&synced));

    // Already landed: list pages only.
    let from = (now - TimeDelta::hours(6)).to_rfc3339();
    let (documents, lists) = (document_calls(&sim), list_calls(&sim));
    let first = tcbridge(dir.path(), &settings, &["resync", "--connection", "default", "--from", &from, "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let state = json_of(&first);
    assert_eq!(state["landed"], 0, "{state}");
    assert_eq!(state["unchanged"], 0, "nothing was even fetched: {state}");
    assert!(state["finished_at"].is_string(), "{state}");
    assert_eq!(document_calls(&sim), documents, "no document call over a landed range");
    assert_eq!(list_calls(&sim) - lists, 2, "two pages of 100");

    // Submissions processed behind the sync's cursor (it will never list them): a re-sync of a
    // new range lands exactly those, and the regular sync does not.
    let missed = sim.add_records(30, "form-2", now - TimeDelta::hours(4));
    let after = tcbridge(dir.path(), &settings, &["sync", "--once", "--json"]);
    assert_eq!(json_of(&after)["documents_landed"], 0, "the sync cannot see them");
    let documents = document_calls(&sim);
    let from = (now - TimeDelta::hours(5)).to_rfc3339();
    let second = tcbridge(dir.path(), &settings, &["resync", "--connection", "default", "--from", &from, "--json"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(json_of(&second)["landed"], 30, "{}", json_of(&second));
    assert_eq!(document_calls(&sim) - documents, 30, "one document call per missed submission");
    let stores = local::open(&dir.path().join("store"), None).unwrap();
    let landed = truecontext_bridge::landing::list(&stores, "default").await.unwrap();
    drop(stores);
    assert_eq!(landed.len(), 180);
    assert!(missed.iter().all(|id| landed.iter().any(|l| &l.id == id)));
    assert!(landed.iter().all(|l| l.row.version == 1), "nothing landed twice");

    // The same range again: finished, nothing more (its cursor says so).
    let calls = sim.calls().len();
    let again = tcbridge(dir.path(), &settings, &["resync", "--connection", "default", "--from", &from, "--json"]);
    assert!(again.status.success());
    assert_eq!(sim.calls().len(), calls, "a finished re-sync costs nothing");

    // Status lists both re-syncs with their progress.
    let status = tcbridge(dir.path(), &settings, &["status"]);
    let report = json_of(&status);
    let resyncs = report["truecontext"][0]["resyncs"].as_array().unwrap();
    assert_eq!(resyncs.len(), 2, "{resyncs:?}");
    assert!(resyncs.iter().all(|r| r["finished_at"].is_string() && r["days_needed"] == 0), "{resyncs:?}");

    // One submission fetched again: one call; unchanged, so nothing new lands.
    let calls = sim.calls().len();
    let refetched = tcbridge(dir.path(), &settings, &["refetch", &missed[3]]);
    assert!(refetched.status.success(), "{}", stderr(&refetched));
    assert!(String::from_utf8_lossy(&refetched.stdout).contains("unchanged"), "{refetched:?}");
    assert_eq!(sim.calls().len() - calls, 1, "one call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_keeps_to_its_budget_share_refuses_old_ranges_and_resumes_after_a_kill() {
    let sim = TrueContextSim::start();
    sim.latency(Duration::from_millis(10));
    let now = Utc::now();
    let dir = tempfile::tempdir().unwrap();
    // Budget 100, share 30 %: 30 calls a day for re-syncs.
    let settings = settings(&sim, &[("TRUECONTEXT_DAILY_CALL_BUDGET", "100"), ("RESYNC_BUDGET_SHARE_PERCENT", "30")]);

    // Beyond retention: refused before any call.
    let old = tcbridge(dir.path(), &settings, &["resync", "--connection", "default", "--from", "2020-01-01"]);
    assert_eq!(old.status.code(), Some(2), "{}", stderr(&old));
    assert!(stderr(&old).contains("retention"), "{}", stderr(&old));
    assert!(sim.calls().is_empty(), "no call for a refused range");

    // 250 submissions the sync never saw: the share (30 calls) stops the re-sync with an estimate.
    let ids = sim.add_records(250, "form-1", now - TimeDelta::hours(3));
    let from = (now - TimeDelta::hours(8)).to_rfc3339();
    let args = ["resync", "--connection", "default", "--from", &from, "--json"];
    let stopped = tcbridge(dir.path(), &settings, &args);
    assert_eq!(stopped.status.code(), Some(3), "{}", stderr(&stopped));
    let state = json_of(&stopped);
    assert!(state["stopped"].as_str().unwrap().contains("RESYNC_BUDGET_SHARE_PERCENT"), "{state}");
    assert!(state["days_needed"].as_u64().unwrap() >= 2, "{state}");
    assert!(sim.calls_today_of("") <= 30, "{} calls against a share of 30", sim.calls_today_of(""));

    // A new day's budget (a larger share stands in for it), then a kill mid-way and a rerun.
    let settings = settings_with_share(&settings, "100");
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut child =
        harness::command(dir.path(), &pairs).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = document_calls(&sim);
    let deadline = Instant::now() + Duration::from_secs(60);
    while document_calls(&sim) < start + 60 {
        assert!(child.try_wait().unwrap().is_none(), "it finished before the kill");
        assert!(Instant::now() < deadline, "it never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let finished = loop {
        let output = tcbridge(dir.path(), &settings, &args);
        if output.status.code() != Some(6) {
            break output;
        }
        assert!(Instant::now() < deadline, "the killed re-sync's lease never lapsed");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(finished.status.success(), "{}", stderr(&finished));
    assert!(json_of(&finished)["finished_at"].is_string());
    let stores = local::open(&dir.path().join("store"), None).unwrap();
    let landed = truecontext_bridge::landing::list(&stores, "default").await.unwrap();
    let mut landed_ids: Vec<String> = landed.iter().map(|l| l.id.clone()).collect();
    landed_ids.sort();
    assert_eq!(landed_ids, ids, "every submission of the range");
    assert!(landed.iter().all(|l| l.row.version == 1), "nothing landed twice");
    // Resumed, not restarted: at most a page's worth fetched twice.
    let documents = document_calls(&sim);
    assert!(documents <= 250 + 100, "{documents} document calls for 250 submissions");
}

fn settings_with_share(settings: &[(&'static str, String)], share: &str) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = settings
        .iter()
        .filter(|(k, _)| *k != "RESYNC_BUDGET_SHARE_PERCENT" && *k != "TRUECONTEXT_DAILY_CALL_BUDGET")
        .cloned()
        .collect();
    out.push(("RESYNC_BUDGET_SHARE_PERCENT", share.to_owned()));
    out.push(("TRUECONTEXT_DAILY_CALL_BUDGET", "100000".to_owned()));
    out
}
