//! Re-sync: walk a past range of one connection again, on a cursor of its own, to land what
//! the regular sync never saw (a record processed behind its cursor, a landed copy lost) without
//! resetting anything.
//!
//! **Frugal.** A listed record is fetched only when the bridge cannot know it holds its current
//! version: none landed, a landed copy in another state, or, while the regular sync has not yet
//! walked past the range's end, a copy taken before that end. Over a range the regular sync
//! already walked, a re-sync costs its list pages and nothing else. (A record listed in the range
//! has its current processed date in the range; the regular cursor being past the range means
//! the window holding that date was walked, and the version it listed was landed.) A range is
//! cut at the regular sync's cursor: what lies beyond is that sync's next window.
//!
//! **Never starves the sync.** It stops for the day once the team's calls today reach
//! `RESYNC_BUDGET_SHARE_PERCENT` of the budget, and says how many days the rest needs; run again
//! (tomorrow), it resumes at the page it stopped at. TrueContext keeps data 365 days: a range
//! starting earlier is refused before any call.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::{land_documents, usable, Fetched, SyncError, SyncParts, SyncSummary};
use crate::naming::RecordId;
use crate::store::{lease, IfMatch, StoreError, Table, TypedTable, Versioned};
use crate::truecontext::ListQuery;

/// How far back TrueContext keeps submissions (docs/truecontext-api.md, "Retention").
pub const RETENTION: TimeDelta = TimeDelta::days(365);
const ROW_PREFIX: &str = "resync-";
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// What to walk again.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub from: DateTime<Utc>,
    /// `None`: up to when it first runs (the same command run again resumes, or says it is done).
    pub to: Option<DateTime<Utc>>,
    pub form: Option<String>,
}

/// A re-sync's cursor and tally (`cursors` table, the connection's partition), as status shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resync {
    pub connection: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub form: Option<String>,
    pub next_page: u32,
    /// The range's size at its first page (`totalNumberOfResults`).
    pub total: Option<u64>,
    pub pages: u32,
    pub landed: u32,
    pub unchanged: u32,
    pub gone: u32,
    pub quarantined: u32,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why the last run stopped before the end (`budget_share: …`, a TrueContext failure).
    pub stopped: Option<String>,
    /// Days of the re-sync's budget share the rest of the range needs (one list call per page
    /// of 100 and, at most, one call per record not yet listed).
    pub days_needed: Option<u64>,
}

impl Resync {
    /// Listed records so far, of the total.
    pub fn progress(&self) -> (u64, Option<u64>) {
        let listed = u64::from(self.next_page) * u64::from(crate::truecontext::PAGE_SIZE);
        (self.total.map_or(listed, |t| listed.min(t)), self.total)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error(
        "the range starts {0}, before TrueContext's retention (365 days: nothing older than {1} can be listed); start it later"
    )]
    BeyondRetention(String, String),
    #[error("the range is empty: --from ({0}) must be before --to ({1})")]
    Empty(String, String),
    #[error("another re-sync of this connection is running")]
    Busy,
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a range before any call: inside the retention, not empty, not in the future.
pub fn check(range: &Range, now: DateTime<Utc>) -> Result<(), ResyncError> {
    let oldest = now - RETENTION;
    if range.from < oldest {
        return Err(ResyncError::BeyondRetention(
            range.from.to_rfc3339(),
            oldest.format("%Y-%m-%d %H:%M UTC").to_string(),
        ));
    }
    let to = range.to.unwrap_or(now).min(now);
    if range.from >= to {
        return Err(ResyncError::Empty(range.from.to_rfc3339(), to.to_rfc3339()));
    }
    Ok(())
}

fn row(range: &Range) -> String {
    use sha2::Digest;
    let to = range.to.map_or("open".to_owned(), |t| t.to_rfc3339());
    let key = format!("{}|{to}|{}", range.from.to_rfc3339(), range.form.as_deref().unwrap_or(""));
    format!("{ROW_PREFIX}{}", crate::naming::hex_prefix(&sha2::Sha256::digest(key.as_bytes()), 16))
}

/// Runs (or resumes) the re-sync of `range` for `connection` until it is done, the day's share
/// of the budget is used, or something stops it; answers where it stands.
pub async fn run(
    parts: &SyncParts<'_>,
    connection: &str,
    range: &Range,
    now: DateTime<Utc>,
) -> Result<Resync, ResyncError> {
    check(range, now)?;
    let holder = lease::holder();
    let name = format!("resync:{connection}");
    let walked =
        lease::with_lease(&parts.stores.tables, &name, &holder, LEASE_TTL, walk(parts, connection, range, now));
    match walked.await? {
        Some(result) => result,
        None => Err(ResyncError::Busy),
    }
}

/// Fetches one submission's document again and lands it (one call): a copy the bridge holds
/// is replaced when TrueContext's differs, and one it lacks is landed.
pub async fn refetch(parts: &SyncParts<'_>, connection: &str, id: &RecordId) -> Result<Fetched, SyncError> {
    let slots = parts.client.keep_slots();
    let fetched = super::fetch_and_land_one(parts, connection, Utc::now(), id).await;
    slots.give_back().await;
    fetched
}

/// Every re-sync of `connection` on record, finished or not.
pub async fn list(stores: &crate::store::Stores, connection: &str) -> Result<Vec<Resync>, StoreError> {
    let range = crate::store::RowRange::prefix(ROW_PREFIX);
    let mut out = Vec::new();
    let mut continuation = None;
    loop {
        let page = stores.tables.query(Table::Cursors, connection, &range, 1000, continuation.as_deref()).await?;
        for entity in page.entities {
            out.push(crate::store::from_properties(entity.properties)?);
        }
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => return Ok(out),
        }
    }
}

async fn walk(
    parts: &SyncParts<'_>,
    connection: &str,
    range: &Range,
    now: DateTime<Utc>,
) -> Result<Resync, ResyncError> {
    let table = TypedTable::new(parts.stores.tables.as_ref(), Table::Cursors);
    let key = row(range);
    let mut stored = match table.get::<Resync>(connection, &key).await? {
        Some(found) => found,
        None => {
            let fresh = Resync {
                connection: connection.to_owned(),
                from: range.from,
                to: range.to.unwrap_or(now).min(now),
                form: range.form.clone(),
                started_at: now,
                updated_at: now,
                ..Resync::default()
            };
            let etag = table.insert(connection, &key, &fresh).await?;
            Versioned { value: fresh, etag }
        }
    };
    if stored.value.finished_at.is_some() {
        return Ok(stored.value);
    }
    // Past the regular sync's cursor is its next window's work, not the re-sync's: the range
    // ends there, and everything in it was walked by the regular sync.
    let regular = super::cursor(parts.stores, parts.settings, connection).await?.and_then(|c| c.processed_until);
    if let Some(cursor) = regular.filter(|c| *c > range.from && *c < stored.value.to) {
        stored.value.to = cursor;
    }
    let walked_past = regular.is_some_and(|cursor| cursor >= stored.value.to);
    let query = ListQuery {
        stime: Some(range.from),
        etime: Some(stored.value.to),
        form_ids: range.form.iter().cloned().collect(),
        ..ListQuery::default()
    };
    stored.value.stopped = None;
    let outcome = pages(parts, &table, (connection, &key), &query, walked_past, now, &mut stored).await;
    if let Err(e) = &outcome {
        stored.value.stopped = Some(format!("{}: {e}", e.class()));
    }
    stored.value.days_needed = days_needed(parts, &stored.value);
    checkpoint(&table, (connection, &key), &mut stored).await?;
    Ok(stored.value)
}

/// Writes where the re-sync stands (under its lease, so the compare-and-swap only guards
/// against a holder that lost it).
async fn checkpoint(
    table: &TypedTable<'_>,
    (connection, key): (&str, &str),
    stored: &mut Versioned<Resync>,
) -> Result<(), StoreError> {
    stored.value.updated_at = Utc::now();
    stored.etag = table.update(connection, key, &stored.value, IfMatch::ETag(stored.etag.clone())).await?;
    Ok(())
}

/// Pages from `next_page` to the end, checkpointing after each.
async fn pages(
    parts: &SyncParts<'_>,
    table: &TypedTable<'_>,
    (connection, key): (&str, &str),
    query: &ListQuery,
    walked_past: bool,
    now: DateTime<Utc>,
    stored: &mut Versioned<Resync>,
) -> Result<(), SyncError> {
    let to = stored.value.to;
    let mut restarts = 0;
    loop {
        if tokio::time::Instant::now() >= parts.deadline {
            return Err(SyncError::Deadline);
        }
        let mut left = share_left(parts, connection, now).await?;
        let state = &mut stored.value;
        let page = parts.client.list(parts.credentials, connection, query, state.next_page).await?;
        left = left.saturating_sub(1);
        state.pages += 1;
        if let Some(step_back) = moved(state, page.total_number_of_results) {
            // Records left the range since it was listed (edited: their processed date is now).
            // In a past range nothing can enter, so the records not yet listed moved up by at
            // most that many places: step back that many pages, not to the top (a range that
            // takes days would otherwise start again every day and never end).
            restarts += 1;
            if restarts > super::MAX_RESTARTS {
                return Err(SyncError::Unstable(restarts));
            }
            state.next_page = state.next_page.saturating_sub(step_back);
            state.total = None;
            continue;
        }
        state.total = Some(page.total_number_of_results);
        let mut summary = SyncSummary::default();
        let mut wanted = Vec::new();
        for (id, header) in usable(connection, &page.page_data, &mut summary) {
            let landed = parts.landing.landed_row(connection, &id).await?;
            let current =
                landed.is_some_and(|row| row.state == header.summary.state && (walked_past || row.order >= to));
            if !current {
                wanted.push(id);
            }
        }
        // No more fetches than the share has left: the rest of the page waits for tomorrow
        // (listed again then; what landed today is current and costs nothing).
        let cut_short = wanted.len() as u64 > left;
        wanted.truncate(usize::try_from(left).unwrap_or(usize::MAX));
        let result = land_documents(parts, connection, now, &wanted, &mut summary).await;
        parts.client.release_slots().await;
        state.landed += summary.documents_landed;
        state.unchanged += summary.documents_unchanged + summary.documents_older;
        state.gone += summary.documents_gone;
        state.quarantined += summary.documents_quarantined;
        result?;
        if cut_short {
            checkpoint(table, (connection, key), stored).await?;
            return Err(SyncError::ShareUsed(share(parts)));
        }
        let done = page.page_data.is_empty() || u64::from(state.next_page) + 1 >= page.total_number_of_pages;
        state.next_page += 1;
        if done {
            state.finished_at = Some(Utc::now());
            return Ok(());
        }
        // Checkpointed after every page, so a killed re-sync resumes at the next one.
        checkpoint(table, (connection, key), stored).await?;
    }
}

/// Pages to step back when the range's size is not what it was when its walk began (`None`: it
/// is, or nothing was listed yet). Fewer records: one page per hundred gone, rounded up; more
/// (not possible in a past range, but then nothing is assumed): from the top.
fn moved(state: &Resync, total_now: u64) -> Option<u32> {
    let before = state.total?;
    if state.next_page == 0 || before == total_now {
        return None;
    }
    let gone = before.checked_sub(total_now).unwrap_or(u64::MAX);
    let pages = gone.div_ceil(u64::from(crate::truecontext::PAGE_SIZE));
    Some(u32::try_from(pages).unwrap_or(u32::MAX))
}

fn share(parts: &SyncParts<'_>) -> u64 {
    parts.client.daily_budget() * parts.settings.resync_share_percent / 100
}

/// The calls the re-sync may still make today: its share less the team's calls so far (the
/// regular sync's count too, so a busy day leaves the re-sync less). None left stops it.
async fn share_left(parts: &SyncParts<'_>, connection: &str, now: DateTime<Utc>) -> Result<u64, SyncError> {
    let budget = parts.client.budget(parts.credentials.team(connection)).state(now).await?;
    let share = share(parts).min(budget.budget);
    if budget.calls_today >= share {
        return Err(SyncError::ShareUsed(share));
    }
    Ok(share - budget.calls_today)
}

/// Days of the re-sync's share the rest needs (pages left, and at most a call per record left).
fn days_needed(parts: &SyncParts<'_>, state: &Resync) -> Option<u64> {
    if state.finished_at.is_some() {
        return Some(0);
    }
    let total = state.total?;
    let (listed, _) = state.progress();
    let left = total.saturating_sub(listed);
    let calls = left.div_ceil(u64::from(crate::truecontext::PAGE_SIZE)) + left;
    let per_day = share(parts).max(1);
    Some(calls.div_ceil(per_day).max(1))
}
