//! The sync walk (src/sync/) against the TrueContext simulator, checked against its ground truth:
//! many pages land every submission once at the minimum number of calls; a run with nothing new
//! makes one list call; records re-processed while a window is listed are neither skipped nor
//! lost (the window restarts, the edit lands on the next run); an edit between runs lands; a
//! document that 404s is counted and passed; malformed JSON stops the run naming the call with
//! the cursor where it was; our own daily budget stops a run mid-walk and the next UTC day
//! resumes it; a cursor that does not move for three runs raises one alert.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use truecontext_bridge::clock::{Clock, OffsetClock};
use truecontext_bridge::config::{RawSettings, Settings};
use truecontext_bridge::landing::{self, Landing};
use truecontext_bridge::secret::SecretString;
use truecontext_bridge::store::{local, Stores};
use truecontext_bridge::sync::{run_connection, sync_connection, RunOutcome, SyncParts, SyncSummary};
use truecontext_bridge::truecontext::{Credentials, TrueContextClient};

use crate::harness::truecontext::{Fault, TrueContextSim, KEY_ID, KEY_SECRET};

const CONNECTION: &str = "default";

struct Bench {
    sim: TrueContextSim,
    settings: Settings,
    stores: Stores,
    /// The client's clock (its budget days) and the runs' `now`.
    clock: Arc<OffsetClock>,
    client: TrueContextClient,
    secret: SecretString,
    _dir: tempfile::TempDir,
}

/// Windows end on whole seconds (src/sync), so what a test just added is seen once the clock has
/// passed the next one: the run starts there, as a real one starts after what it should see.
async fn next_second() {
    let now = Utc::now();
    let wait = 1_000_000_000 - u64::from(now.timestamp_subsec_nanos()) + 1_000_000;
    tokio::time::sleep(std::time::Duration::from_nanos(wait)).await;
}

impl Bench {
    fn new() -> Bench {
        Self::with(&[])
    }

    fn with(extra: &[(&str, &str)]) -> Bench {
        let sim = TrueContextSim::start();
        let base = sim.base_url();
        let mut pairs =
            vec![("TRUECONTEXT_BASE_URL", base.as_str()), ("TRUECONTEXT_AUTH", "basic"), ("SYNC_SETTLE_SECONDS", "0")];
        pairs.extend_from_slice(extra);
        let settings = Settings::load(&RawSettings::from_pairs(pairs)).unwrap_or_else(|p| panic!("{p:?}"));
        let dir = tempfile::tempdir().unwrap();
        let stores = local::open(dir.path(), None).unwrap();
        let clock = Arc::new(OffsetClock::default());
        let client = TrueContextClient::with_clock(&settings.truecontext, stores.clone(), clock.clone());
        Bench { sim, settings, stores, clock, client, secret: SecretString::new(KEY_SECRET), _dir: dir }
    }

    /// One plain walk ([`sync_connection`]).
    async fn run(&self) -> SyncSummary {
        next_second().await;
        let (landing, credentials) = (self.landing(), self.credentials());
        sync_connection(&self.parts(&landing, &credentials), CONNECTION, self.clock.utc()).await
    }

    /// One plain walk that may start no page after `limit` from now.
    async fn run_for(&self, limit: std::time::Duration) -> SyncSummary {
        next_second().await;
        let (landing, credentials) = (self.landing(), self.credentials());
        let parts = SyncParts { deadline: tokio::time::Instant::now() + limit, ..self.parts(&landing, &credentials) };
        sync_connection(&parts, CONNECTION, self.clock.utc()).await
    }

    /// One recorded run under the connection's lease, as the timer makes it ([`run_connection`]).
    async fn run_recorded(&self) -> SyncSummary {
        next_second().await;
        let (landing, credentials) = (self.landing(), self.credentials());
        match run_connection(&self.parts(&landing, &credentials), CONNECTION, self.clock.utc()).await.unwrap() {
            RunOutcome::Ran(summary) => summary,
            RunOutcome::Busy => panic!("nobody else holds the lease"),
        }
    }

    fn landing(&self) -> Landing<'_> {
        Landing::new(&self.stores, &self.settings.landing.container, &self.settings.landing.landed_queue)
    }

    fn credentials(&self) -> Credentials<'_> {
        Credentials::basic(KEY_ID, &self.secret)
    }

    fn parts<'a>(&'a self, landing: &'a Landing<'a>, credentials: &'a Credentials<'a>) -> SyncParts<'a> {
        SyncParts {
            client: &self.client,
            credentials,
            stores: &self.stores,
            landing,
            settings: &self.settings.sync,
            alert_webhook: None,
            progress: None,
            deadline: tokio::time::Instant::now() + self.settings.sync.max_run,
        }
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
#[tokio::test]
async fn submissions_arriving_while_a_window_is_listed_land_on_the_next_run() {
    let bench = Bench::new();
    bench.sim.add_records(250, "form-1", Utc::now() - TimeDelta::hours(2));
    bench.sim.arrive_after_list_calls(1, 20, "form-2");
    // They are processed around the window's end: those just before it join the window while
    // it is listed (its total grows, so it restarts), the others are the next run's.
    let first = bench.run().await;
    assert!(first.completed, "{first:?}");
    let second = bench.run().await;
    assert!(second.completed, "{second:?}");
    assert_eq!(first.documents_landed + second.documents_landed, 270, "{first:?} {second:?}");
    let landed = bench.landed().await;
    assert_eq!(landed.len(), 270);
    assert!(landed.iter().all(|l| l.row.version == 1), "none landed twice");
    assert_eq!(
        landed.iter().map(|l| l.id.clone()).collect::<std::collections::BTreeSet<_>>(),
        bench.sim.ids().into_iter().collect()
    );
}

#[tokio::test]
async fn what_the_overlap_lists_again_is_not_fetched_again() {
    let bench = Bench::new();
    bench.sim.add_records(5, "form-1", Utc::now() - TimeDelta::minutes(2));
    assert_eq!(bench.run().await.documents_landed, 5);
    let before = bench.sim.calls().len();
    let again = bench.run().await;
    assert!(again.completed, "{again:?}");
    let calls: Vec<String> = bench.sim.calls()[before..].iter().map(|c| c.path.clone()).collect();
    assert_eq!(calls, ["data.json", "data.json"], "the window, then the overlap once; no document");
    assert_eq!(bench.stores.queues.len(&bench.settings.landing.landed_queue).await.unwrap(), 5, "no second event");
}

/// A crash between a landed row and its event leaves the event owed; the sync does not land that
/// submission again (it has it), so it sends the owed event itself, once, without a document call.
#[tokio::test]
async fn an_event_a_crash_left_owed_is_sent_by_the_next_run_without_a_fetch() {
    let bench = Bench::new();
    let ids = bench.sim.add_records(3, "form-1", Utc::now() - TimeDelta::minutes(2));
    assert_eq!(bench.run().await.documents_landed, 3);
    let table = truecontext_bridge::store::TypedTable::new(
        bench.stores.tables.as_ref(),
        truecontext_bridge::store::Table::Submissions,
    );
    let current = table.get::<landing::IndexRow>(CONNECTION, &ids[1]).await.unwrap().unwrap();
    let owed = landing::IndexRow { event_pending: true, ..current.value };
    table.update(CONNECTION, &ids[1], &owed, truecontext_bridge::store::IfMatch::ETag(current.etag)).await.unwrap();
    let queue = &bench.settings.landing.landed_queue;
    let before = bench.calls("data/");
    let again = bench.run().await;
    assert!(again.completed, "{again:?}");
    assert_eq!(bench.calls("data/") - before, 0, "no document call");
    assert_eq!(bench.stores.queues.len(queue).await.unwrap(), 4, "the owed event, once");
    assert!(!table.get::<landing::IndexRow>(CONNECTION, &ids[1]).await.unwrap().unwrap().value.event_pending);
    bench.run().await;
    assert_eq!(bench.stores.queues.len(queue).await.unwrap(), 4, "and never again");
}

#[tokio::test]
async fn once_a_document_fetch_fails_no_new_fetch_of_the_page_starts() {
    let bench = Bench::new();
    bench.sim.add_records(100, "form-1", Utc::now() - TimeDelta::hours(1));
    bench.sim.outage_after_list_calls(1, 503);
    let stopped = bench.run().await;
    assert_eq!(stopped.stopped_class.as_deref(), Some("transient"), "{stopped:?}");
    // Each fetch in flight when the outage began tries 8 times; none starts after the first
    // gives up. Without that rule, all 100 would try 8 times each.
    let documents = bench.calls("data/");
    assert!(documents <= 6 * 8 + 6, "{documents} document calls");
    let cursor = truecontext_bridge::sync::cursor(&bench.stores, &bench.settings.sync, CONNECTION).await.unwrap();
    assert!(cursor.unwrap().walk.is_some_and(|w| w.next_page == 0), "the page is done again next run");
}

#[tokio::test]
async fn a_document_that_404s_is_counted_gone_and_the_walk_goes_on() {
    let bench = Bench::new();
    let ids = bench.sim.add_records(5, "form-1", Utc::now() - TimeDelta::hours(1));
    bench.sim.expire_document(&ids[1]);
    let summary = bench.run().await;
    assert!(summary.completed, "{summary:?}");
    assert_eq!((summary.documents_landed, summary.documents_gone), (4, 1), "{summary:?}");
    assert!(summary.cursor.is_some(), "the cursor moved past it");
    let landed: Vec<String> = bench.landed().await.into_iter().map(|l| l.id).collect();
    assert!(!landed.contains(&ids[1]) && landed.len() == 4, "{landed:?}");
}

#[tokio::test]
async fn a_listed_identifier_that_is_not_one_is_skipped_with_a_warning_and_the_walk_goes_on() {
    let bench = Bench::new();
    let processed = Utc::now() - TimeDelta::hours(1);
    let ids = bench.sim.add_records(3, "form-1", processed);
    // Found by fuzzing the list page: these parse, and each would have stopped every run at
    // this window (a `/` splits a table key and a path) before the fix.
    let odd = ["12/4567890", "..", "3000000000?x=1", &"9".repeat(65)];
    for id in odd {
        bench.sim.add_with_id(id, "form-1", processed);
    }
    let summary = bench.run().await;
    assert!(summary.completed, "{summary:?}");
    assert_eq!((summary.documents_landed, summary.records_refused), (3, 4), "{summary:?}");
    let landed: Vec<String> = bench.landed().await.into_iter().map(|l| l.id).collect();
    assert_eq!(landed.len(), 3, "{landed:?}");
    assert!(ids.iter().all(|id| landed.contains(id)), "{landed:?}");
    assert_eq!(bench.calls("data/"), 3, "no document call for an odd id");
    // The next run starts after this window: it is not held there.
    let cursor = truecontext_bridge::sync::cursor(&bench.stores, &bench.settings.sync, CONNECTION).await.unwrap();
    assert!(cursor.is_some_and(|c| c.walk.is_none() && c.processed_until.is_some()), "the window is closed");
}

#[tokio::test]
async fn malformed_json_stops_the_run_naming_the_call_and_leaves_the_cursor() {
    let bench = Bench::new();
    bench.sim.add_records(50, "form-1", Utc::now() - TimeDelta::hours(2));
    assert!(bench.run().await.completed);
    let cursor = || async {
        let found = truecontext_bridge::sync::cursor(&bench.stores, &bench.settings.sync, CONNECTION).await.unwrap();
        found.unwrap().processed_until
    };
    let before = cursor().await;
    // Processed after the first run, as new submissions are.
    bench.sim.add_spaced(150, "form-2", Utc::now(), TimeDelta::milliseconds(20));
    bench.sim.fault(Fault::Malformed);
    let stopped = bench.run().await;
    assert!(!stopped.completed);
    let reason = stopped.stopped_reason.clone().unwrap();
    assert!(reason.starts_with("malformed") && reason.contains("data.json page 0"), "{reason}");
    assert_eq!(cursor().await, before, "the cursor is where it was");
    let resumed = bench.run().await;
    assert!(resumed.completed, "{resumed:?}");
    assert_eq!(resumed.documents_landed, 150);
    assert_eq!(bench.landed().await.len(), 200, "each once");
}

#[tokio::test]
async fn our_own_budget_stops_a_run_mid_walk_and_the_next_utc_day_resumes_it() {
    let bench = Bench::with(&[("TRUECONTEXT_DAILY_CALL_BUDGET", "70")]);
    let ids = bench.sim.add_records(120, "form-1", Utc::now() - TimeDelta::hours(3));
    let first = bench.run().await;
    assert!(!first.completed);
    assert_eq!(first.stopped_class.as_deref(), Some("budget"), "{first:?}");
    assert_eq!(bench.sim.calls().len(), 70, "not one call past the budget");
    assert_eq!(first.budget_left, 0);
    let again = bench.run().await;
    assert_eq!(again.stopped_class.as_deref(), Some("budget"));
    assert_eq!(bench.sim.calls().len(), 70, "still none the same day");

    bench.clock.advance(std::time::Duration::from_secs(24 * 3600));
    let resumed = bench.run().await;
    assert!(resumed.completed, "{resumed:?}");
    let landed = bench.landed().await;
    assert_eq!(landed.len(), 120);
    assert!(landed.iter().all(|l| l.row.version == 1), "nothing landed twice");
    assert_eq!(bench.calls("data/"), ids.len(), "no document fetched twice");
    // Page 0 again (the resumed page), page 1, then the window from that one's end up to now:
    // a run goes on until it is current.
    assert_eq!(bench.calls("data.json"), 4, "the resumed page, the next, then the window up to now");
}

#[tokio::test]
async fn a_run_that_reaches_its_time_limit_stops_at_a_page_and_the_next_resumes_there() {
    let bench = Bench::new();
    bench.sim.latency(std::time::Duration::from_millis(30));
    let ids = bench.sim.add_records(250, "form-1", Utc::now() - TimeDelta::hours(5));
    let stopped = bench.run_for(std::time::Duration::from_millis(500)).await;
    assert_eq!(stopped.stopped_class.as_deref(), Some("deadline"), "{stopped:?}");
    assert_eq!((stopped.pages, stopped.documents_landed), (1, 100), "one page, then the limit: {stopped:?}");
    let resumed = bench.run().await;
    assert!(resumed.completed, "{resumed:?}");
    assert_eq!(resumed.documents_landed, 150, "from the next page on");
    assert_eq!(bench.calls("data/"), ids.len(), "no document fetched twice");
}

#[tokio::test]
async fn a_cursor_that_does_not_move_for_three_runs_raises_one_alert_until_it_moves() {
    let bench = Bench::new();
    bench.sim.add_records(3, "form-1", Utc::now() - TimeDelta::hours(1));
    let alerts = || async {
        truecontext_bridge::alerts::list(&bench.stores, Some(CONNECTION))
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.alert == "sync_stalled")
            .count()
    };
    for run in 1..=4 {
        bench.sim.fault(Fault::Malformed);
        let summary = bench.run_recorded().await;
        assert!(!summary.completed);
        assert_eq!(alerts().await, usize::from(run >= 3), "after run {run}");
    }
    let last = truecontext_bridge::sync::last_syncs(&bench.stores).await.unwrap();
    assert_eq!((last[0].runs_without_progress, last[0].runs), (4, 4), "{last:?}");
    let healthy = bench.run_recorded().await;
    assert!(healthy.completed, "{healthy:?}");
    assert_eq!(alerts().await, 0, "cleared once the cursor moves");
    let last = truecontext_bridge::sync::last_syncs(&bench.stores).await.unwrap();
    assert_eq!((last[0].runs_without_progress, last[0].landed_total), (0, 3));
}

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

mod walk_props {
    //! Any interleaving of edits and arrivals with the list calls of a walk loses nothing: once
    //! the runs are quiet, every submission the simulator holds has landed once, with its latest
    //! content, and no version was landed for a change that did not happen.

    use super::*;
    use proptest::prelude::*;

    /// A change made right after the `after`-th list call: an edit of record `index`, or
    /// `count` new arrivals.
    #[derive(Debug, Clone)]
    enum Change {
        Edit { after: usize, index: usize },
        Arrive { after: usize, count: usize },
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (1usize..8, 0usize..400).prop_map(|(after, index)| Change::Edit { after, index }),
            (1usize..8, 1usize..15).prop_map(|(after, count)| Change::Arrive { after, count }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_interleaving_of_edits_during_a_walk_loses_nothing(
            records in 1usize..260,
            changes in prop::collection::vec(change(), 0..6),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let bench = Bench::new();
                let ids = bench.sim.add_records(records, "form-1", Utc::now() - TimeDelta::hours(2));
                let mut edits = std::collections::BTreeMap::<String, u64>::new();
                for change in &changes {
                    match change {
                        Change::Edit { after, index } => {
                            let id = &ids[index % ids.len()];
                            bench.sim.reprocess_after_list_calls(*after, id);
                            *edits.entry(id.clone()).or_default() += 1;
                        }
                        Change::Arrive { after, count } => bench.sim.arrive_after_list_calls(*after, *count, "form-2"),
                    }
                }
                // Until a completed run that began after every change had happened (the latest
                // comes right after the 7th list call) lands nothing. A run that merely ended
                // after it proves nothing: the change may have come after its own list calls.
                let last_change = changes.iter().map(|c| match c { Change::Edit { after, .. } | Change::Arrive { after, .. } => *after }).max().unwrap_or(0);
                for _ in 0..12 {
                    let list_calls_before = bench.calls("data.json");
                    let summary = bench.run().await;
                    prop_assert!(summary.completed, "{:?}", summary);
                    if summary.documents_landed == 0 && list_calls_before >= last_change {
                        break;
                    }
                }
                let landed = bench.landed().await;
                let truth = bench.sim.ids();
                prop_assert_eq!(landed.len(), truth.len(), "every submission once");
                for listed in &landed {
                    prop_assert!(truth.contains(&listed.id));
                    let raw = bench.stores.blobs.get(&bench.settings.landing.container, &format!("raw/default/{}.json", listed.id)).await;
                    prop_assert_eq!(raw.unwrap().unwrap().content, bench.sim.record(&listed.id).unwrap().document, "the latest content of {}", &listed.id);
                    let most = 1 + edits.get(&listed.id).copied().unwrap_or(0);
                    prop_assert!(listed.row.version <= most, "{}: version {} for {} real changes", &listed.id, listed.row.version, most);
                }
                Ok(())
            })?;
        }
    }
}
