//! The incremental sync of one connection: windows over `DataRecordProcessedDate`, listed page
//! by page, each new or changed submission fetched and landed, the cursor checkpointed after
//! every page so a crash resumes where it stopped.
//!
//! **Why no record is skipped.** A run walks one closed window `[start, end]` (`end` is
//! `SYNC_SETTLE_SECONDS` behind now, `start` is `SYNC_OVERLAP_SECONDS` before the cursor). Offset
//! paging over a live set can skip: a record re-processed while we page leaves the window (its
//! processed date becomes now, past `end`), every later record moves up one place, and one is
//! never listed. In a closed window records can only leave, so `totalNumberOfResults` drops;
//! every page is checked against the first page's total, and a change restarts the window from
//! page 0 (what was already landed is not fetched again, so a restart costs list pages only).
//! The record that left is listed by the next run's window, which covers its new date.
//!
//! **Which headers are fetched.** A landed row remembers when its copy was taken (its order):
//! the end of the window a pull landed it from, the time a push was received, or the time a
//! push's document was fetched. A copy taken at or after this window's end is current for every
//! record the window lists (each was processed by the end), so in the same state it is skipped.
//! One taken before this window started was processed since: fetched, its hash compared, landed
//! if changed. One taken inside this window (the previous run's pull, a push received since) is
//! ambiguous: the record may have been processed again after the copy. The overlap window
//! `[start, cursor]` is listed once, only when such a header appears: a record it still lists in
//! the same state was processed by the cursor, so a copy taken at or after the cursor is
//! current (and one taken earlier in the overlap was checked by the previous run, which listed
//! every record processed by the cursor). Anything else costs one document call: neither the
//! list nor a push tells the processed date. With `SYNC_TRUST_PUSHES` a pushed copy in the
//! listed state is taken as current (TrueContext pushes each version it processes).
//! So N new submissions cost ⌈N/100⌉ list pages and N documents.

pub mod missed;
pub mod resync;
mod runs;

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::delta;
use crate::config::SyncSettings;
use crate::landing::{quarantine, Arrival, Landing, LandingError, Outcome, Source};
use crate::naming::RecordId;
use crate::store::{IfMatch, StoreError, Stores, Table, TypedTable, Versioned};
use crate::truecontext::model::RecordHeader;
pub use crate::truecontext::StopClass;
use crate::truecontext::{Credentials, ListQuery, TrueContextClient, TrueContextError};

/// Ids a run keeps for the status page's latest list (as `webhook::counters` keeps).
const LATEST_KEPT: usize = 10;
/// Restarts of one window (its total kept changing) before the run gives up for now.
const MAX_RESTARTS: u32 = 10;

/// The cursor of one connection and filter set (`cursors` table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Every submission processed at or before this was landed (or is being, by `walk`).
    pub processed_until: Option<DateTime<Utc>>,
    /// A window in progress: resumed at `next_page`.
    pub walk: Option<Walk>,
}

impl Cursor {
    /// Where the sync stands: moves when a window completes or a page of one is done.
    pub fn position(&self) -> (Option<DateTime<Utc>>, u32) {
        (self.processed_until, self.walk.as_ref().map_or(0, |w| w.next_page))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Walk {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub next_page: u32,
    pub total: Option<u64>,
    pub restarts: u32,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncSummary {
    pub connection: String,
    pub windows: u32,
    pub pages: u32,
    pub restarts: u32,
    pub documents_landed: u32,
    pub documents_unchanged: u32,
    pub documents_older: u32,
    pub documents_gone: u32,
    /// Documents the landing refused for good, kept in quarantine (`tcbridge quarantine list`).
    pub documents_quarantined: u32,
    /// Listed records left out because their identifier is not one (`naming::is_record_id`).
    pub records_refused: u32,
    pub api_calls: u64,
    pub budget_left: u64,
    pub cursor: Option<DateTime<Utc>>,
    pub completed: bool,
    /// Why it stopped, as `class: detail` (None when completed).
    pub stopped_reason: Option<String>,
    /// Submissions this run landed new, with their form, received within the last day: with
    /// the webhook configured, each is watched for its push ([`missed`]).
    #[serde(skip)]
    pub watch: Vec<(String, String)>,
    /// Forms of listed submissions a push had landed: their pushes arrive.
    #[serde(skip)]
    pub pushed_forms: std::collections::BTreeSet<String>,
    /// Ids `land_documents` landed new (for the walk to give them their form).
    #[serde(skip)]
    pub landed_new: Vec<String>,
    /// The latest few ids the run landed new (the status page's latest list).
    #[serde(skip)]
    pub latest: Vec<String>,
    /// The stop's class alone.
    pub stopped_class: Option<StopClass>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    TrueContext(#[from] TrueContextError),
    #[error(transparent)]
    Landing(#[from] LandingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the window kept changing while it was listed ({0} restarts); the next run tries again")]
    Unstable(u32),
    #[error(
        "the run reached its time limit (SYNC_MAX_RUN_SECONDS) and stopped at a checkpoint; the next run resumes it"
    )]
    Deadline,
    #[error(
        "the re-sync's share of today's budget ({0} calls, RESYNC_BUDGET_SHARE_PERCENT) is used; the rest is the regular sync's. Run it again after 00:00 UTC to resume"
    )]
    ShareUsed(u64),
    #[error("{0}")]
    Configuration(String),
}

impl SyncError {
    pub fn class(&self) -> StopClass {
        match self {
            SyncError::TrueContext(e) => e.class(),
            SyncError::Landing(_) => StopClass::Landing,
            SyncError::Store(_) => StopClass::Store,
            SyncError::Unstable(_) => StopClass::Unstable,
            SyncError::Deadline => StopClass::Deadline,
            SyncError::ShareUsed(_) => StopClass::Budget,
            SyncError::Configuration(_) => StopClass::Configuration,
        }
    }
}

/// The parts a sync works with.
pub struct SyncParts<'a> {
    pub client: &'a TrueContextClient,
    pub credentials: &'a Credentials<'a>,
    pub stores: &'a Stores,
    pub landing: &'a Landing<'a>,
    pub settings: &'a SyncSettings,
    /// Where a stalled sync's alert is posted (`ALERT_WEBHOOK_URL`).
    pub alert_webhook: Option<&'a crate::config::AlertWebhook>,
    /// Told the running totals after every page (the CLI's progress bar).
    pub progress: Option<&'a Progress<'a>>,
    /// No page is started after this (the caller's run limit, from `SYNC_MAX_RUN_SECONDS`).
    pub deadline: tokio::time::Instant,
}

/// A watcher of a run's totals as they grow.
pub type Progress<'a> = dyn Fn(&SyncSummary) + Send + Sync + 'a;

/// One run for `connection` at `now`: walks until the window is done or something stops it.
pub async fn sync_connection(parts: &SyncParts<'_>, connection: &str, now: DateTime<Utc>) -> SyncSummary {
    let mut summary = SyncSummary { connection: connection.to_owned(), ..SyncSummary::default() };
    let before =
        parts.client.budget(parts.credentials.team(connection)).state(now).await.map(|s| s.calls_today).unwrap_or(0);
    let slots = parts.client.keep_slots();
    let result = walk_until_current(parts, connection, now, &mut summary).await;
    slots.give_back().await;
    if parts.settings.watch_pushes {
        if let Err(e) = missed::note_run(parts.stores, connection, &summary, now).await {
            tracing::warn!(connection, error = %e, "the push watch could not be noted");
        }
    }
    let budget = parts.client.budget(parts.credentials.team(connection)).state(now).await.ok();
    summary.api_calls = budget.as_ref().map_or(0, |b| b.calls_today.saturating_sub(before));
    summary.budget_left = budget.map_or(0, |b| b.budget_left);
    match result {
        Ok(()) => summary.completed = true,
        Err(e) => {
            let class = e.class();
            // `class` is what an Azure Monitor rule matches (`budget`, `call_count_expended`).
            tracing::warn!(connection, class = class.as_str(), error = %e, "the sync stopped");
            summary.stopped_reason = Some(format!("{class}: {e}"));
            summary.stopped_class = Some(class);
        }
    }
    summary
}

pub use runs::{
    clear_queued, due, last_syncs, mark_queued, run_connection, wait_out_lease, LastSync, LeaseWait, RunOutcome,
    QUEUED_STALE_AFTER, STALL_RUNS,
};

/// The cursor of `connection` for the configured filter set, if a sync has run.
pub async fn cursor(stores: &Stores, settings: &SyncSettings, connection: &str) -> Result<Option<Cursor>, StoreError> {
    let table = TypedTable::new(stores.tables.as_ref(), Table::Cursors);
    Ok(table.get::<Cursor>(connection, &cursor_row(settings)).await?.map(|c| c.value))
}

fn cursor_row(settings: &SyncSettings) -> String {
    // One cursor per filter set, so changing SYNC_FORM_IDS starts a walk of its own.
    let mut filter = settings.form_ids.join(",");
    filter.push('|');
    filter.push_str(&settings.formspace_ids.join(","));
    use sha2::Digest;
    format!("processed-{}", crate::naming::hex_prefix(&sha2::Sha256::digest(filter.as_bytes()), 16))
}

/// Which window a walk took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// One an earlier run began and was stopped in (a crash, the budget, the time limit): it
    /// ends where that run's `now` was, so finishing it is not yet being current.
    Resumed,
    /// One that ends at this run's `now` (less the settle time).
    Fresh,
    /// Nothing to walk: the cursor is already within the settle time of `now`.
    Current,
}

/// Walks window after window until the cursor is current for `now` (a window that began at
/// this run has been walked) or something stops it. Before, a run that found an interrupted
/// window finished only that one and said "completed" while newer submissions waited.
async fn walk_until_current(
    parts: &SyncParts<'_>,
    connection: &str,
    now: DateTime<Utc>,
    summary: &mut SyncSummary,
) -> Result<(), SyncError> {
    while walk(parts, connection, now, summary).await? == Window::Resumed {}
    Ok(())
}

/// Where a run starts: the stored cursor, and the window to walk (the one an earlier run left
/// unfinished, or a new one from the cursor to now less the settle time).
struct Start {
    stored: Versioned<Cursor>,
    walk: Walk,
    previous_end: Option<DateTime<Utc>>,
    resumed: bool,
}

/// Reads (or creates) the cursor (into `summary` too) and opens the window to walk; `None` when
/// there is nothing to walk yet (the cursor is within the settle time of now).
async fn start_window(
    parts: &SyncParts<'_>,
    table: &TypedTable<'_>,
    row: &str,
    connection: &str,
    now: DateTime<Utc>,
    summary: &mut SyncSummary,
) -> Result<Option<Start>, SyncError> {
    let mut stored = match table.get::<Cursor>(connection, row).await? {
        Some(found) => found,
        None => {
            let etag = table.insert(connection, row, &Cursor::default()).await?;
            Versioned { value: Cursor::default(), etag }
        }
    };
    let previous_end = stored.value.processed_until;
    summary.cursor = previous_end;
    if let Some(walk) = stored.value.walk.clone() {
        return Ok(Some(Start { stored, walk, previous_end, resumed: true }));
    }
    // Whole seconds: the bound TrueContext filters on is exactly the cursor stored. A cursor
    // finer than the `etime` sent would pass over records between the two.
    let end = (now - delta(parts.settings.settle)).trunc_subsecs(0);
    let start = match previous_end {
        Some(cursor) => cursor - delta(parts.settings.overlap),
        None => now - delta(parts.settings.backfill),
    };
    if end <= start {
        return Ok(None);
    }
    let walk = Walk { start, end, next_page: 0, total: None, restarts: 0 };
    // Stored before the first call, so a run stopped anywhere in the window (budget, crash)
    // resumes this window, and what it landed is recognised and not fetched again.
    let next = Cursor { walk: Some(walk.clone()), ..stored.value.clone() };
    stored.etag = table.update(connection, row, &next, IfMatch::ETag(stored.etag.clone())).await?;
    stored.value = next;
    Ok(Some(Start { stored, walk, previous_end, resumed: false }))
}

async fn walk(
    parts: &SyncParts<'_>,
    connection: &str,
    now: DateTime<Utc>,
    summary: &mut SyncSummary,
) -> Result<Window, SyncError> {
    let table = TypedTable::new(parts.stores.tables.as_ref(), Table::Cursors);
    let row = cursor_row(parts.settings);
    let Some(Start { mut stored, mut walk, previous_end, resumed }) =
        start_window(parts, &table, &row, connection, now, summary).await?
    else {
        return Ok(Window::Current);
    };
    summary.windows += 1;
    let query = ListQuery {
        stime: Some(walk.start),
        etime: Some(walk.end),
        form_ids: parts.settings.form_ids.clone(),
        formspace_ids: parts.settings.formspace_ids.clone(),
        ..ListQuery::default()
    };
    let mut overlap: Option<HashMap<String, Option<String>>> = None;
    loop {
        if tokio::time::Instant::now() >= parts.deadline {
            return Err(SyncError::Deadline);
        }
        let page = parts.client.list(parts.credentials, connection, &query, walk.next_page).await?;
        summary.pages += 1;
        if walk.next_page > 0 && walk.total != Some(page.total_number_of_results) {
            // Records left the window under us: an offset may have skipped one. From the top.
            walk.restarts += 1;
            summary.restarts += 1;
            if walk.restarts > MAX_RESTARTS {
                return Err(SyncError::Unstable(walk.restarts));
            }
            tracing::info!(
                connection,
                total = page.total_number_of_results,
                "the window changed while listed; restarting it"
            );
            walk.next_page = 0;
            walk.total = None;
            continue;
        }
        walk.total = Some(page.total_number_of_results);
        let mut wanted = Vec::new();
        for (id, header) in usable(connection, &page.page_data, summary) {
            if needs_document(parts, connection, &walk, previous_end, header, &mut overlap, summary).await? {
                wanted.push(id);
            }
        }
        let landed = land_documents(parts, connection, walk.end, &wanted, summary).await;
        // The first run's backfill was never going to be pushed: only a later window's are.
        watch_landed(&page.page_data, previous_end.map(|_| walk.start), summary);
        // Other instances get a turn at TrueContext between pages.
        parts.client.release_slots().await;
        landed?;
        if let Some(progress) = parts.progress {
            progress(summary);
        }
        let done = page.page_data.is_empty() || u64::from(walk.next_page) + 1 >= page.total_number_of_pages;
        walk.next_page += 1;
        let next = if done {
            Cursor { processed_until: Some(walk.end), walk: None }
        } else {
            Cursor { walk: Some(walk.clone()), ..stored.value.clone() }
        };
        stored.etag = table.update(connection, &row, &next, IfMatch::ETag(stored.etag.clone())).await?;
        stored.value = next;
        if done {
            summary.cursor = Some(walk.end);
            return Ok(if resumed { Window::Resumed } else { Window::Fresh });
        }
    }
}

/// Moves the ids landed new to the watch list with their form, when TrueContext received them
/// since `since` (the window's start; `None`, the first run's backfill: none is watched, as
/// submissions from before the webhook was set up were never going to be pushed).
fn watch_landed(listed: &[RecordHeader], since: Option<DateTime<Utc>>, summary: &mut SyncSummary) {
    let landed = std::mem::take(&mut summary.landed_new);
    summary.latest.extend(landed.iter().cloned());
    let excess = summary.latest.len().saturating_sub(LATEST_KEPT);
    summary.latest.drain(..excess);
    for id in landed {
        let Some(header) = listed.iter().find(|h| h.summary.identifier == id) else { continue };
        if since.is_some_and(|since| header.server_receive_date.is_some_and(|at| at >= since)) {
            summary.watch.push((id, header.form_id.clone().unwrap_or_default()));
        }
    }
}

/// The listed records whose identifier can go into an API path, a blob path and a table key.
/// Any other is left out with a warning and counted, not treated as a failure: TrueContext's
/// ids are digits, and a run that stopped on one odd record would stop on it at every run and
/// hold the whole connection at that window for ever.
fn usable<'p>(
    connection: &str,
    listed: &'p [RecordHeader],
    summary: &mut SyncSummary,
) -> impl Iterator<Item = (RecordId, &'p RecordHeader)> {
    let mut good = Vec::with_capacity(listed.len());
    for header in listed {
        match RecordId::parse(&header.summary.identifier) {
            Ok(id) => good.push((id, header)),
            Err(_) => {
                summary.records_refused += 1;
                let id = crate::telemetry::printable(&header.summary.identifier, 64);
                tracing::warn!(
                    connection,
                    id,
                    "a listed submission's identifier is not a TrueContext identifier; skipped"
                );
            }
        }
    }
    good.into_iter()
}

/// Decides whether one listed header needs its document fetched.
async fn needs_document(
    parts: &SyncParts<'_>,
    connection: &str,
    walk: &Walk,
    previous_end: Option<DateTime<Utc>>,
    header: &RecordHeader,
    overlap: &mut Option<HashMap<String, Option<String>>>,
    summary: &mut SyncSummary,
) -> Result<bool, SyncError> {
    let landed = parts.landing.landed_row(connection, &header.summary.identifier).await?;
    // Its form's pushes arrive: a push landed this copy, lately (a push of an old version,
    // last month's, says nothing about today's destination).
    if landed.as_ref().is_some_and(|row| row.landed_by == Some(Source::Webhook) && row.order >= walk.start) {
        summary.pushed_forms.insert(header.form_id.clone().unwrap_or_default());
    }
    let fetch = match &landed {
        None => true,
        // The copy was taken at or after this window's end: nothing in the window is newer.
        Some(row) if row.order >= walk.end && row.state == header.summary.state => false,
        // Opt-in: TrueContext pushes every version it processes, so a pushed copy is current.
        Some(row)
            if parts.settings.trust_pushes
                && row.landed_by == Some(Source::Webhook)
                && row.state == header.summary.state =>
        {
            false
        }
        Some(row) if previous_end.is_some() && row.order >= walk.start => {
            // Listed again by the overlap, or edited since? The overlap listing tells.
            if overlap.is_none() {
                *overlap =
                    Some(list_overlap(parts, connection, walk.start, previous_end.expect("checked"), summary).await?);
            }
            let in_overlap = overlap.as_ref().and_then(|o| o.get(&header.summary.identifier));
            !matches!(in_overlap, Some(state) if *state == row.state && *state == header.summary.state)
        }
        Some(_) => true,
    };
    if !fetch && landed.is_some_and(|row| row.event_pending) {
        // Not landed again, so its owed event (a crash came between row and event) is sent here.
        parts.landing.send_owed_event(connection, &header.summary.identifier).await?;
    }
    Ok(fetch)
}

/// What became of one fetched document.
#[derive(Debug)]
pub enum Fetched {
    Landed(Outcome),
    /// 404: retention expired, or a passthrough form.
    Gone,
    /// Not tried: another fetch of the page had already failed.
    Skipped,
    /// The landing refused it for good: kept in quarantine.
    Quarantined,
}

/// Fetches and lands the page's wanted documents, twice as many at a time as the call cap: the
/// client lets only the cap's worth call TrueContext at once, and the others land what they
/// fetched meanwhile, so no call slot waits on a store write. Every fetch runs to its end before
/// the first failure is returned, so nothing is abandoned half-landed and the tally is exact;
/// after a failure no new fetch starts (a TrueContext that is down, or a spent budget, would
/// otherwise be tried once per remaining document).
async fn land_documents(
    parts: &SyncParts<'_>,
    connection: &str,
    order: DateTime<Utc>,
    wanted: &[RecordId],
    summary: &mut SyncSummary,
) -> Result<(), SyncError> {
    use futures::StreamExt;
    // The futures are made before they become a stream: a stream that maps through a closure
    // over borrowed ids trips rustc's higher-ranked `Send` inference (rust-lang/rust#102211).
    let failed = std::sync::atomic::AtomicBool::new(false);
    let landed_new = std::sync::Mutex::new(Vec::new());
    let fetches: Vec<_> =
        wanted.iter().map(|id| fetch_and_land(parts, connection, order, id, &failed, &landed_new)).collect();
    let results: Vec<Result<Fetched, SyncError>> =
        futures::stream::iter(fetches).buffer_unordered(parts.client.concurrency() * 2).collect().await;
    summary.landed_new.extend(landed_new.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let mut first_error = None;
    for result in results {
        match result {
            Ok(Fetched::Landed(Outcome::New | Outcome::Changed)) => summary.documents_landed += 1,
            Ok(Fetched::Landed(Outcome::Unchanged)) => summary.documents_unchanged += 1,
            Ok(Fetched::Landed(Outcome::Older)) => summary.documents_older += 1,
            Ok(Fetched::Gone) => summary.documents_gone += 1,
            Ok(Fetched::Skipped) => {}
            Ok(Fetched::Quarantined) => summary.documents_quarantined += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn fetch_and_land(
    parts: &SyncParts<'_>,
    connection: &str,
    order: DateTime<Utc>,
    id: &str,
    failed: &std::sync::atomic::AtomicBool,
    landed_new: &std::sync::Mutex<Vec<String>>,
) -> Result<Fetched, SyncError> {
    use std::sync::atomic::Ordering;
    if failed.load(Ordering::SeqCst) {
        return Ok(Fetched::Skipped);
    }
    let landed = fetch_and_land_one(parts, connection, order, id).await;
    match &landed {
        Err(_) => failed.store(true, Ordering::SeqCst),
        Ok(Fetched::Landed(Outcome::New)) => {
            landed_new.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(id.to_owned())
        }
        Ok(_) => {}
    }
    landed
}

async fn fetch_and_land_one(
    parts: &SyncParts<'_>,
    connection: &str,
    order: DateTime<Utc>,
    id: &str,
) -> Result<Fetched, SyncError> {
    let document = match parts.client.document(parts.credentials, connection, id).await {
        Ok(document) => document,
        Err(TrueContextError::NotFound { .. }) => {
            // Nothing to land, and a 404 submission is not listed again.
            tracing::warn!(connection, id, "a listed submission's document is gone (404); skipped");
            return Ok(Fetched::Gone);
        }
        Err(e) => return Err(e.into()),
    };
    let arrival = Arrival { connection, source: Source::Sync, raw: &document.bytes, order, processed_date: None };
    match parts.landing.land(&arrival).await {
        Ok(landed) => Ok(Fetched::Landed(landed.outcome)),
        Err(e) if e.is_permanent() => {
            // Kept with the reason; the walk goes on. Stopping here would stop every run at
            // this page, and nothing processed after it would ever arrive.
            quarantine::keep(parts.landing, parts.alert_webhook, &arrival, id, &e).await?;
            Ok(Fetched::Quarantined)
        }
        Err(e) => Err(e.into()),
    }
}

/// The ids (and states) the overlap window `[start, previous_end]` lists now.
async fn list_overlap(
    parts: &SyncParts<'_>,
    connection: &str,
    start: DateTime<Utc>,
    previous_end: DateTime<Utc>,
    summary: &mut SyncSummary,
) -> Result<HashMap<String, Option<String>>, SyncError> {
    let query = ListQuery {
        stime: Some(start),
        etime: Some(previous_end),
        form_ids: parts.settings.form_ids.clone(),
        formspace_ids: parts.settings.formspace_ids.clone(),
        ..ListQuery::default()
    };
    let mut out = HashMap::new();
    let mut page = 0;
    loop {
        let listed = parts.client.list(parts.credentials, connection, &query, page).await?;
        summary.pages += 1;
        out.extend(listed.page_data.iter().map(|h| (h.summary.identifier.clone(), h.summary.state.clone())));
        page += 1;
        if listed.page_data.is_empty() || u64::from(page) >= listed.total_number_of_pages {
            return Ok(out);
        }
    }
}
