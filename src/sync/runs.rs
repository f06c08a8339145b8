//! One run of a connection's sync as the timer and the first-sync message start it: under the
//! connection's own lease (so a first sync after consent and a timer tick never walk the same
//! cursor at once), recorded for `status`, and watched for a cursor that stops advancing.
//!
//! A run *progressed* when it completed, or when the cursor's position moved (a long walk
//! stopped by the budget still finished pages). [`STALL_RUNS`] runs in a row without progress raise one
//! `sync_stalled` alert; the next run that progresses clears it, so a later stall alerts again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{cursor, sync_connection, StopClass, SyncParts, SyncSummary};
use crate::alerts::{self, Alert, AlertKind};
use crate::store::{lease, RowRange, StoreError, Table, TypedTable};

/// Runs in a row that leave the cursor where it was before the connection's alert is raised.
pub const STALL_RUNS: u32 = 3;
const PARTITION: &str = "connection-sync";
const STALL_ALERT: AlertKind = AlertKind::SyncStalled;
/// Renewed while the run works (a long backfill outlives it); a crashed run's lease frees
/// itself after this.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// The last run of one connection's sync (`runs` table), as status shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastSync {
    pub connection: String,
    pub finished_at: Option<DateTime<Utc>>,
    pub completed: bool,
    pub stopped_reason: Option<String>,
    pub stopped_class: Option<StopClass>,
    pub documents_landed: u32,
    pub documents_unchanged: u32,
    pub api_calls: u64,
    pub cursor: Option<DateTime<Utc>>,
    /// Runs in a row that did not move the cursor.
    pub runs_without_progress: u32,
    /// Documents landed (new or changed) by the sync runs recorded so far: a run killed before
    /// it was recorded is not counted (what it landed is), and pushes are not counted here.
    pub landed_total: u64,
    pub runs: u64,
    /// Runs in a row that stopped on a failure (anything but completing, the run's time limit
    /// or a spent budget, which status reports apart).
    #[serde(default)]
    pub failed_runs_in_a_row: u32,
}

impl LastSync {
    /// Why an operator should look at this connection's sync, if they should: it failed its
    /// last runs, or the last one stopped on an internal error.
    pub fn attention(&self) -> Option<String> {
        let reason = self.stopped_reason.as_deref().unwrap_or("unknown");
        if self.stopped_class == Some(StopClass::Internal) && self.failed_runs_in_a_row > 0 {
            return Some(format!("the last sync run failed on an internal error (a bug; see the log): {reason}"));
        }
        (self.failed_runs_in_a_row >= FAILED_RUNS_ATTENTION)
            .then(|| format!("the sync failed its last {} runs; last stop: {reason}", self.failed_runs_in_a_row))
    }
}

/// Failed runs in a row after which status asks for attention.
pub const FAILED_RUNS_ATTENTION: u32 = 2;

/// What [`run_connection`] did.
#[derive(Debug)]
// One per run, moved once: boxing the summary would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum RunOutcome {
    Ran(SyncSummary),
    /// Another run of this connection holds its lease; it does the work.
    Busy,
}

/// Runs `connection`'s sync once, unless another instance is running it.
pub async fn run_connection(
    parts: &SyncParts<'_>,
    connection: &str,
    now: DateTime<Utc>,
) -> Result<RunOutcome, StoreError> {
    let holder = lease::holder();
    let name = format!("sync:{connection}");
    let run = lease::with_lease(&parts.stores.tables, &name, &holder, LEASE_TTL, run_held(parts, connection, now));
    match run.await? {
        Some(summary) => Ok(RunOutcome::Ran(summary?)),
        None => {
            tracing::info!(connection, "this connection's sync is running elsewhere; skipped");
            Ok(RunOutcome::Busy)
        }
    }
}

/// One run under the connection's lease: walked, then recorded for status.
async fn run_held(parts: &SyncParts<'_>, connection: &str, now: DateTime<Utc>) -> Result<SyncSummary, StoreError> {
    let before = cursor(parts.stores, parts.settings, connection).await?;
    // A panic stops this connection's run alone: recorded like any stop, the lease given back,
    // and the caller goes on to the next connection.
    let summary = match crate::telemetry::isolate(sync_connection(parts, connection, now)).await {
        Ok(summary) => summary,
        Err(panicked) => {
            // The run's slots were given back as it unwound (its `KeptSlots` guard).
            tracing::error!(connection, error = %panicked, "the sync run failed on an internal error");
            SyncSummary {
                connection: connection.to_owned(),
                stopped_reason: Some(format!("internal: {panicked}")),
                stopped_class: Some(StopClass::Internal),
                ..SyncSummary::default()
            }
        }
    };
    let after = cursor(parts.stores, parts.settings, connection).await?;
    let position = |c: &Option<super::Cursor>| c.as_ref().map_or((None, 0), super::Cursor::position);
    let progressed = summary.completed || position(&before) != position(&after);
    record(parts, &summary, progressed).await?;
    Ok(summary)
}

/// What [`wait_out_lease`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWait {
    /// Nobody holds it (any more): a run may start.
    Free,
    /// Its holder renewed it while we watched: a run is alive elsewhere.
    Alive,
}

/// Watches `connection`'s sync lease until it lapses or its holder shows it is alive by
/// renewing it (a live run renews every third of the lease's time). A holder killed outright
/// leaves its lease for up to `LEASE_TTL` (30 s); an operator's rerun right after a `kill -9` waits
/// that out instead of being told the sync is running elsewhere. `waiting` is told how long is
/// left, about every second.
pub async fn wait_out_lease(
    stores: &crate::store::Stores,
    connection: &str,
    waiting: &(dyn Fn(Duration) + Send + Sync),
) -> Result<LeaseWait, StoreError> {
    let name = format!("sync:{connection}");
    let Some((holder, expires_at)) = lease::peek(stores.tables.as_ref(), &name).await? else {
        return Ok(LeaseWait::Free);
    };
    loop {
        let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
        if left.is_zero() {
            return Ok(LeaseWait::Free);
        }
        waiting(left);
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        match lease::peek(stores.tables.as_ref(), &name).await? {
            None => return Ok(LeaseWait::Free),
            Some((now_holder, now_expires)) if now_holder != holder || now_expires != expires_at => {
                return Ok(LeaseWait::Alive)
            }
            Some(_) => {}
        }
    }
}

/// How long a queued sync may wait for its run before the timer queues another (a message
/// poisoned or lost; longer than any run should wait for a place on a busy queue).
pub const QUEUED_STALE_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(15);
const QUEUED_PARTITION: &str = "sync-queued";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Queued {
    at: DateTime<Utc>,
}

/// The connections of `ids` whose sync is due at `now`: none queued, or the one queued has run
/// since (or waited past [`QUEUED_STALE_AFTER`]). The timer queues one sync per due connection,
/// so a slow run or a long queue never piles up a second message for the same connection.
pub async fn due(
    stores: &crate::store::Stores,
    ids: &[crate::naming::ConnectionId],
    last: &[LastSync],
    now: DateTime<Utc>,
) -> Result<Vec<crate::naming::ConnectionId>, StoreError> {
    let queued = crate::store::query_partition(stores.tables.as_ref(), Table::Runs, QUEUED_PARTITION).await?;
    let queued_at = |id: &str| {
        queued
            .iter()
            .find(|e| e.row_key == id)
            .and_then(|e| crate::store::from_properties::<Queued>(e.properties.clone()).ok())
            .map(|q| q.at)
    };
    Ok(ids
        .iter()
        .filter(|id| {
            let Some(at) = queued_at(id) else { return true };
            let ran_since = last.iter().any(|l| l.connection == id.as_str() && l.finished_at.is_some_and(|f| f >= at));
            ran_since || now - at > QUEUED_STALE_AFTER
        })
        .cloned()
        .collect())
}

/// Notes that a sync of `connection` was queued at `at` (see [`due`]).
pub async fn mark_queued(stores: &crate::store::Stores, connection: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
    TypedTable::new(stores.tables.as_ref(), Table::Runs).upsert(QUEUED_PARTITION, connection, &Queued { at }).await?;
    Ok(())
}

/// Forgets that a sync of `connection` was queued: a queued run that found the connection's
/// lease held gives its turn back, so the next tick queues it again. (Without this, a run
/// killed outright, whose lease outlived it, left the connection unqueued until
/// [`QUEUED_STALE_AFTER`].)
pub async fn clear_queued(stores: &crate::store::Stores, connection: &str) -> Result<(), StoreError> {
    match stores.tables.delete(Table::Runs, QUEUED_PARTITION, connection, crate::store::IfMatch::Any).await {
        Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The last run of every connection that has synced, by connection id.
pub async fn last_syncs(stores: &crate::store::Stores) -> Result<Vec<LastSync>, StoreError> {
    let mut out = Vec::new();
    let mut continuation = None;
    loop {
        let page = stores.tables.query(Table::Runs, PARTITION, &RowRange::all(), 1000, continuation.as_deref()).await?;
        for entity in page.entities {
            out.push(crate::store::from_properties::<LastSync>(entity.properties)?);
        }
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => return Ok(out),
        }
    }
}

async fn record(parts: &SyncParts<'_>, summary: &SyncSummary, progressed: bool) -> Result<(), StoreError> {
    let table = TypedTable::new(parts.stores.tables.as_ref(), Table::Runs);
    let connection = summary.connection.as_str();
    let previous = table.get::<LastSync>(PARTITION, connection).await?.map(|v| v.value).unwrap_or_default();
    let runs_without_progress = if progressed { 0 } else { previous.runs_without_progress + 1 };
    let failed = !summary.completed && summary.stopped_class.is_none_or(StopClass::is_failure);
    let last = LastSync {
        connection: connection.to_owned(),
        finished_at: Some(Utc::now()),
        completed: summary.completed,
        stopped_reason: summary.stopped_reason.clone(),
        stopped_class: summary.stopped_class,
        documents_landed: summary.documents_landed,
        documents_unchanged: summary.documents_unchanged,
        api_calls: summary.api_calls,
        cursor: summary.cursor,
        runs_without_progress,
        landed_total: previous.landed_total + u64::from(summary.documents_landed),
        runs: previous.runs + 1,
        failed_runs_in_a_row: if failed { previous.failed_runs_in_a_row + 1 } else { 0 },
    };
    // Runs of one connection are serialised by its lease: a plain upsert loses no count.
    table.upsert(PARTITION, connection, &last).await?;
    if progressed && previous.runs_without_progress >= STALL_RUNS {
        alerts::clear_connection_named(parts.stores, connection, &[STALL_ALERT]).await?;
    } else if runs_without_progress == STALL_RUNS {
        let reason = format!(
            "the sync has not advanced for {STALL_RUNS} runs in a row; last stop: {}",
            summary.stopped_reason.as_deref().unwrap_or("none")
        );
        let class = summary.stopped_class.unwrap_or(StopClass::Unknown);
        let alert = Alert::new(STALL_ALERT, Some(connection), class.as_str(), "cursor_stalled", &reason);
        alerts::raise(parts.stores, parts.alert_webhook, alert).await?;
    }
    Ok(())
}
