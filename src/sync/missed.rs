//! Missing pushes: with the webhook configured, TrueContext should push every submission; one
//! that reaches the bridge by the sync alone means a push was lost (a Data Destination switched
//! off, a credential rotated on one side only, a failing endpoint TrueContext gave up on).
//! TrueContext says so only by mail to the FormSpace's problem contact, after about an hour.
//!
//! Each submission a sync run lands new (received within the last day) is *watched*: a row in
//! the `runs` table. After `MISSED_PUSH_GRACE_SECONDS` the housekeeping pass looks at its index
//! row: a push that landed it since is on the row's sources; none means missed, counted per form.
//! A sync run that lists a submission a push landed notes that its form's pushes arrive, which
//! zeroes the form's count since the last push. A form whose count reaches
//! `MISSED_PUSH_ALERT_THRESHOLD` raises one `pushes_missing` alert per connection naming the
//! forms; it clears (with a "resolved" message) once every form is below the threshold again.
//! The pass runs under a lease, so two instances never count one watch twice. Pushes cost
//! nothing here: only the sync's landings and listings write.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::SyncSummary;
use crate::alerts::{self, Alert, AlertKind};
use crate::config::{AlertWebhook, SyncSettings};
use crate::landing::{Landing, Source};
use crate::store::{lease, StoreError, Stores, Table, TypedTable};

const ALERT_CODE: &str = "pushes_missing";

fn watch_partition(connection: &str) -> String {
    format!("push-watch:{connection}")
}

fn forms_partition(connection: &str) -> String {
    format!("missed-pushes:{connection}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Watched {
    form: String,
    landed_at: DateTime<Utc>,
}

/// One form's pushes as the bridge has seen them (status: `missed_pushes`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FormPushes {
    pub form: String,
    /// Submissions landed by the sync that were never pushed, since pushes last arrived.
    pub missed_since_push: u64,
    pub missed_total: u64,
    pub last_missed_at: Option<DateTime<Utc>>,
    /// When a sync run last listed a submission of this form that a push had landed.
    pub last_pushed_at: Option<DateTime<Utc>>,
}

/// After a sync run: watch what it landed new, and zero the count of forms whose pushes arrive.
pub async fn note_run(
    stores: &Stores,
    connection: &str,
    run: &SyncSummary,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let table = TypedTable::new(stores.tables.as_ref(), Table::Runs);
    for (id, form) in &run.watch {
        table.upsert(&watch_partition(connection), id, &Watched { form: form.clone(), landed_at: now }).await?;
    }
    for form in &run.pushed_forms {
        zero_form(&table, connection, &form_key(form), now).await?;
    }
    Ok(())
}

/// Zeroes a form's count since its last push, under compare-and-swap: the housekeeping pass may
/// be counting a miss of the same form on another instance, and neither write may undo the other.
/// Written only when it changes something status shows (a count to zero, or an hour on).
async fn zero_form(table: &TypedTable<'_>, connection: &str, key: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    let stale = |c: &FormPushes| c.last_pushed_at.is_none_or(|at| now - at > chrono::TimeDelta::hours(1));
    for _ in 0..5 {
        let Some(current) = table.get::<FormPushes>(&forms_partition(connection), key).await? else { return Ok(()) };
        if current.value.missed_since_push == 0 && !stale(&current.value) {
            return Ok(());
        }
        let zeroed = FormPushes { missed_since_push: 0, last_pushed_at: Some(now), ..current.value };
        let condition = crate::store::IfMatch::ETag(current.etag);
        match table.update(&forms_partition(connection), key, &zeroed, condition).await {
            Ok(_) => return Ok(()),
            Err(StoreError::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A form id as a row key: as it is when it is an id (TrueContext's are digits), hashed
/// otherwise (a key cannot hold `/`, `#`, `?`); `unknown` when the listing did not say.
fn form_key(form: &str) -> String {
    if form.is_empty() {
        "unknown".to_owned()
    } else if crate::naming::RecordId::parse(form).is_ok() {
        form.to_owned()
    } else {
        use sha2::Digest;
        format!("h-{}", crate::naming::hex_prefix(&sha2::Sha256::digest(form.as_bytes()), 16))
    }
}

/// Every form's push tally of `connection`.
pub async fn per_form(stores: &Stores, connection: &str) -> Result<Vec<FormPushes>, StoreError> {
    let rows = crate::store::query_partition(stores.tables.as_ref(), Table::Runs, &forms_partition(connection)).await?;
    rows.into_iter().map(|e| crate::store::from_properties(e.properties)).collect()
}

/// The housekeeping pass for `connections`: watched submissions past the grace are decided
/// (pushed, or missed and counted), and each connection's alert raised or cleared. Answers how
/// many were found missed.
pub async fn check(
    landing: &Landing<'_>,
    webhook: Option<&AlertWebhook>,
    settings: &SyncSettings,
    connections: &[String],
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let stores = landing.stores();
    let holder = lease::holder();
    let pass = async {
        let mut missed = 0;
        for connection in connections {
            // One connection's trouble (a store error) does not stop the others' pass.
            let decided = async {
                let found = decide(landing, connection, settings, now).await?;
                alert(stores, webhook, settings, connection).await?;
                Ok::<u64, StoreError>(found)
            };
            match decided.await {
                Ok(found) => missed += found,
                Err(e) => tracing::warn!(connection, error = %e, "the missed-push pass failed for this connection"),
            }
        }
        missed
    };
    let ttl = std::time::Duration::from_secs(30);
    Ok(lease::with_lease(&stores.tables, "missed-pushes", &holder, ttl, pass).await?.unwrap_or(0))
}

async fn decide(
    landing: &Landing<'_>,
    connection: &str,
    settings: &SyncSettings,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let stores = landing.stores();
    let watched =
        crate::store::query_partition(stores.tables.as_ref(), Table::Runs, &watch_partition(connection)).await?;
    let grace = crate::clock::delta(settings.missed_push_grace);
    let table = TypedTable::new(stores.tables.as_ref(), Table::Runs);
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut missed = 0;
    for entity in watched {
        let id = entity.row_key.clone();
        let Ok(watch) = crate::store::from_properties::<Watched>(entity.properties) else { continue };
        if watch.landed_at + grace > now {
            continue;
        }
        let pushed = landing.landed_row(connection, &id).await?.is_some_and(|r| r.sources.contains(&Source::Webhook));
        let tally = tallies.entry(form_key(&watch.form)).or_insert_with(|| Tally::new(&watch.form));
        if pushed {
            tally.pushed = true;
            tally.since_push = 0;
        } else {
            missed += 1;
            tally.missed += 1;
            tally.since_push += 1;
            tracing::warn!(connection, id = %id, form = %watch.form, "a submission the sync landed was never pushed");
        }
        match stores.tables.delete(Table::Runs, &watch_partition(connection), &id, crate::store::IfMatch::Any).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    for (key, tally) in tallies {
        tally.apply(&table, connection, &key, now).await?;
    }
    Ok(missed)
}

/// What one pass found for one form.
struct Tally {
    form: String,
    /// A push arrived for one of its watched submissions.
    pushed: bool,
    /// Missed since the last one pushed (all of them if none was).
    since_push: u64,
    missed: u64,
}

impl Tally {
    fn new(form: &str) -> Self {
        Tally { form: form.to_owned(), pushed: false, since_push: 0, missed: 0 }
    }

    /// Adds this pass's findings to the form's row under compare-and-swap: a sync run may be
    /// zeroing the same row ([`note_run`]), and neither write may undo the other.
    async fn apply(
        &self,
        table: &TypedTable<'_>,
        connection: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let partition = forms_partition(connection);
        for _ in 0..5 {
            let current = table.get::<FormPushes>(&partition, key).await?;
            let mut form = current
                .as_ref()
                .map_or_else(|| FormPushes { form: self.form.clone(), ..FormPushes::default() }, |c| c.value.clone());
            if self.pushed {
                form.missed_since_push = 0;
                form.last_pushed_at = Some(now);
            }
            form.missed_since_push += self.since_push;
            form.missed_total += self.missed;
            if self.missed > 0 {
                form.last_missed_at = Some(now);
            }
            let written = match current {
                Some(c) => table.update(&partition, key, &form, crate::store::IfMatch::ETag(c.etag)).await,
                None => table.insert(&partition, key, &form).await,
            };
            match written {
                Ok(_) => return Ok(()),
                Err(StoreError::PreconditionFailed { .. } | StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Backend("a form's missed-push row is too contended to update".into()))
    }
}

/// Raises the connection's alert naming the forms at or past the threshold, or clears it.
async fn alert(
    stores: &Stores,
    webhook: Option<&AlertWebhook>,
    settings: &SyncSettings,
    connection: &str,
) -> Result<(), StoreError> {
    let forms = per_form(stores, connection).await?;
    let failing: Vec<String> = forms
        .iter()
        .filter(|f| f.missed_since_push >= settings.missed_push_threshold)
        .map(|f| format!("{} ({} missed)", f.form, f.missed_since_push))
        .collect();
    if failing.is_empty() {
        let raised = alerts::list(stores, Some(connection)).await?.iter().any(|a| a.alert == ALERT_CODE);
        if raised {
            alerts::clear_connection_named(stores, connection, &[AlertKind::PushesMissing]).await?;
        }
        return Ok(());
    }
    let reason = format!(
        "submissions of form(s) {} reached the bridge by the sync only, never by push; check those forms' HTTP \
         Data Destination in TrueContext, its credential, and the FormSpace problem contact's mail",
        failing.join(", ")
    );
    let alert = Alert::new(AlertKind::PushesMissing, Some(connection), "missed_push", ALERT_CODE, &reason);
    alerts::raise(stores, webhook, alert).await?;
    Ok(())
}
