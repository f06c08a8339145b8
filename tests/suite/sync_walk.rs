//! The sync walk (src/sync/) against the TrueContext simulator, checked against its ground truth:
//! many pages land every submission once at the minimum number of calls; a run with nothing new
//! makes one list call; records re-processed while a window is listed are neither skipped nor
//! lost (the window restarts, the edit lands on the next run); an edit between runs lands.

use chrono::{TimeDelta, Utc};
use truecontext_bridge::config::{RawSettings, Settings};
use truecontext_bridge::landing::{self, Landing};
use truecontext_bridge::secret::SecretString;
use truecontext_bridge::store::{local, Stores};
use truecontext_bridge::sync::{sync_connection, SyncParts, SyncSummary};
use truecontext_bridge::truecontext::{Credentials, TrueContextClient};

use crate::harness::truecontext::{TrueContextSim, KEY_ID, KEY_SECRET};

const CONNECTION: &str = "default";

struct Bench {
    sim: TrueContextSim,
    settings: Settings,
    stores: Stores,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let sim = TrueContextSim::start();
        let base = sim.base_url();
        let pairs =
            [("TRUECONTEXT_BASE_URL", base.as_str()), ("TRUECONTEXT_AUTH", "basic"), ("SYNC_SETTLE_SECONDS", "0")];
        let settings = Settings::load(&RawSettings::from_pairs(pairs)).unwrap_or_else(|p| panic!("{p:?}"));
        let dir = tempfile::tempdir().unwrap();
        let stores = local::open(dir.path(), None).unwrap();
        Bench { sim, settings, stores, _dir: dir }
    }

    async fn run(&self) -> SyncSummary {
        let client = TrueContextClient::new(&self.settings.truecontext, self.stores.clone());
        let secret = SecretString::new(KEY_SECRET);
        let credentials = Credentials::Basic { key_id: KEY_ID, secret: &secret };
        let landing = Landing::new(&self.stores, &self.settings.landing.container, &self.settings.landing.landed_queue);
        let parts = SyncParts {
            client: &client,
            credentials: &credentials,
            stores: &self.stores,
            landing: &landing,
            settings: &self.settings.sync,
            alert_webhook: None,
            progress: None,
        };
        sync_connection(&parts, CONNECTION, Utc::now()).await
    }

    fn calls(&self, path_prefix: &str) -> usize {
        self.sim.calls().iter().filter(|c| c.path.starts_with(path_prefix)).count()
    }

    async fn landed(&self) -> Vec<landing::Listed> {
        landing::list(&self.stores, CONNECTION).await.unwrap()
    }
}

#[tokio::test]
async fn many_pages_land_every_submission_once_at_the_minimum_calls() {
    let bench = Bench::new();
    let ids = bench.sim.add_records(250, "form-1", Utc::now() - TimeDelta::hours(2));
    let summary = bench.run().await;
    assert!(summary.completed, "{summary:?}");
    assert_eq!(summary.documents_landed, 250);
    assert_eq!(bench.calls("data.json"), 3, "⌈250/100⌉ list pages");
    assert_eq!(bench.calls("data/"), 250, "one document each");
    assert_eq!(summary.api_calls, 253);
    let landed = bench.landed().await;
    let mut landed_ids: Vec<String> = landed.iter().map(|l| l.id.clone()).collect();
    landed_ids.sort();
    assert_eq!(landed_ids, ids, "every submission, once");
    assert!(landed.iter().all(|l| l.row.version == 1));
    assert_eq!(bench.stores.queues.len(&bench.settings.landing.landed_queue).await.unwrap(), 250, "one event each");
    for id in [&ids[0], &ids[137], &ids[249]] {
        let raw = bench.stores.blobs.get(&bench.settings.landing.container, &format!("raw/default/{id}.json")).await;
        assert_eq!(raw.unwrap().unwrap().content, bench.sim.record(id).unwrap().document);
    }

    // Nothing new: one list call, no document.
    let before = bench.sim.calls().len();
    let again = bench.run().await;
    assert!(again.completed);
    assert_eq!((again.documents_landed, again.documents_unchanged), (0, 0));
    assert_eq!(bench.sim.calls().len() - before, 1, "exactly one list call");
}

#[tokio::test]
async fn records_reprocessed_mid_walk_are_neither_skipped_nor_lost() {
    let bench = Bench::new();
    let ids = bench.sim.add_records(250, "form-1", Utc::now() - TimeDelta::hours(2));
    // Once the second page is listed (the first page's documents already landed), two records of
    // the first page are re-processed: every later record moves up two places, and plain offset
    // paging would never list two of them.
    bench.sim.reprocess_after_list_calls(2, &ids[3]);
    bench.sim.reprocess_after_list_calls(2, &ids[40]);
    let first = bench.run().await;
    assert!(first.completed, "{first:?}");
    assert!(first.restarts >= 1, "the change of total was noticed: {first:?}");
    let landed = bench.landed().await;
    assert_eq!(landed.len(), 250, "none skipped");

    // The next run's window covers their new processed dates: the edits land.
    let second = bench.run().await;
    assert!(second.completed, "{second:?}");
    assert_eq!(second.documents_landed, 2, "{second:?}");
    for id in [&ids[3], &ids[40]] {
        let raw = bench.stores.blobs.get(&bench.settings.landing.container, &format!("raw/default/{id}.json")).await;
        assert_eq!(raw.unwrap().unwrap().content, bench.sim.record(id).unwrap().document, "the latest content of {id}");
    }
    let landed = bench.landed().await;
    let versions: Vec<u64> = landed.iter().map(|l| l.row.version).collect();
    assert_eq!(versions.iter().filter(|v| **v == 2).count(), 2);
    assert_eq!(versions.iter().filter(|v| **v == 1).count(), 248, "nothing landed twice");
    assert_eq!(
        bench.stores.queues.len(&bench.settings.landing.landed_queue).await.unwrap(),
        252,
        "one event per real change"
    );
}

#[tokio::test]
async fn an_edit_after_a_run_and_a_new_submission_land_on_the_next_run() {
    let bench = Bench::new();
    let ids = bench.sim.add_records(5, "form-1", Utc::now() - TimeDelta::hours(1));
    let first = bench.run().await;
    assert_eq!(first.documents_landed, 5);
    bench.sim.edit(&ids[2]);
    bench.sim.add_records(1, "form-1", Utc::now());
    let second = bench.run().await;
    assert!(second.completed, "{second:?}");
    assert_eq!(second.documents_landed, 2, "the edit and the new one: {second:?}");
    let landed = bench.landed().await;
    assert_eq!(landed.len(), 6);
    assert_eq!(landed.iter().find(|l| l.id == ids[2]).unwrap().row.version, 2);
}

/// `tcbridge sync --once --json` as an operator runs it, then `submissions list`.
#[test]
fn the_binary_syncs_once_and_says_why_it_stopped() {
    let sim = TrueContextSim::start();
    sim.add_records(120, "form-1", Utc::now() - TimeDelta::hours(3));
    let dir = tempfile::tempdir().unwrap();
    let base = sim.base_url();
    let settings = [
        ("TRUECONTEXT_BASE_URL", base.as_str()),
        ("TRUECONTEXT_AUTH", "basic"),
        ("TRUECONTEXT_API_KEY_ID", KEY_ID),
        ("TRUECONTEXT_API_KEY_SECRET", KEY_SECRET),
        ("SYNC_SETTLE_SECONDS", "0"),
    ];
    let run = |args: &[&str]| crate::harness::command(dir.path(), &settings).args(args).output().unwrap();
    let output = run(&["sync", "--once", "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for field in
        ["api_calls", "documents_landed", "documents_unchanged", "pages", "budget_left", "completed", "stopped_reason"]
    {
        assert!(summary.get(field).is_some(), "{field} in {summary}");
    }
    assert_eq!(summary["documents_landed"], 120);
    assert_eq!(summary["api_calls"], 122, "2 list pages + 120 documents");
    assert_eq!(summary["completed"], true);
    assert!(!stderr.contains(KEY_SECRET));
    let listed = run(&["submissions", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 120);
    let status: serde_json::Value = serde_json::from_slice(&run(&["status"]).stdout).unwrap();
    let tc = &status["truecontext"][0];
    assert_eq!((tc["connection"].as_str(), tc["calls_today"].as_u64()), (Some("default"), Some(122)), "{status}");
    assert!(tc["cursor"].is_string() && tc["budget_stopped_until"].is_null(), "{status}");

    // TrueContext's daily count runs out: the run stops at once, non-zero, saying why.
    sim.add_records(3, "form-1", Utc::now());
    sim.daily_limit(sim.calls().len() as u64 + 1);
    let stopped = run(&["sync", "--once", "--json"]);
    assert!(!stopped.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&stopped.stdout).unwrap();
    assert_eq!(summary["completed"], false);
    assert!(summary["stopped_reason"].as_str().unwrap().starts_with("call_count_expended"), "{summary}");
    let calls = sim.calls().len();
    let again = run(&["sync", "--once"]);
    assert!(!again.status.success());
    assert_eq!(sim.calls().len(), calls, "no call until 00:00 UTC");
    let status = run(&["status"]);
    assert!(!status.status.success(), "a 402 stop needs attention");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["truecontext"][0]["budget_stopped_until"].is_string(), "{status}");
}
