//! `sync`: the scheduled tick. It takes the cluster-wide sync lease so ticks never overlap
//! (several instances, or a slow tick that meets the next), keeps the tokens alive, queues one
//! sync per due connection (the queue function runs them, spread over the instances), and
//! records the tick so `status` can say when the last one happened and how it went.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{App, InvocationError, TimerInfo};
use crate::connections::Source;
use crate::naming::ConnectionId;
use crate::store::{lease, Table, TypedTable};
use crate::sync::{RunOutcome, SyncSummary};
use crate::truecontext::Credentials;
use crate::webhook::IncomingMessage;

const RUNS_PARTITION: &str = "sync";
const LAST_RUN: &str = "last";
const LEASE_NAME: &str = "sync";
/// Kept alive while the run works ([`lease::Keeper`]), so a crashed run's lease frees itself
/// after this. It was once a flat 15 minutes "longer than any run": a `kill -9` then stopped
/// every instance's timer for 15 minutes, and with it every keep-alive refresh (found by the
/// chaos run).
const LEASE_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SyncRun {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub past_due: bool,
    pub connections: u32,
    pub outcome: String,
    /// Runs recorded since the store was created.
    pub count: u64,
}

pub async fn run(app: &App, info: TimerInfo) -> Result<(), InvocationError> {
    let started_at = Utc::now();
    let holder = lease::holder();
    let tick = lease::with_lease(&app.stores.tables, LEASE_NAME, &holder, LEASE_TTL, tick(app, info, started_at));
    let Some(ran) = tick.await? else {
        tracing::info!("sync skipped: another instance is running it");
        // The running one can be busy (an outage's retries) while no token is asked for. A
        // refresh a crash interrupted is accepted again only within the server's reuse grace
        // (Cognito: at most 60 s), so every tick checks the tokens; one connection's refresh
        // lease keeps that to one call cluster-wide.
        let sources = crate::connections::sources(&app.stores, &app.settings).await?;
        keep_alive(app, &sources.active).await;
        return Ok(());
    };
    ran
}

/// One timer tick's work, under the cluster-wide sync lease: housekeeping, one queued sync per
/// due connection, and the record of the tick for status.
async fn tick(app: &App, info: TimerInfo, started_at: DateTime<Utc>) -> Result<(), InvocationError> {
    if info.is_past_due {
        tracing::warn!("sync is running late (past due)");
    }
    app.housekeeping().await;
    let result = fan_out(app).await;
    let outcome = match &result {
        Ok(f) if f.sources == 0 && f.inactive == 0 => "no connections yet; nothing to sync".to_owned(),
        Ok(f) if f.sources == 0 => {
            format!("no active connection ({} need an administrator); nothing to sync", f.inactive)
        }
        Ok(f) => format!(
            "{} connection(s) checked; {} sync(s) queued, {} still queued or running, {} cannot sign in",
            f.sources, f.queued, f.not_due, f.not_ready
        ),
        Err(e) => format!("failed: {e}"),
    };
    tracing::info!(outcome = %outcome, "sync finished");
    let checked = result.as_ref().map_or(0, |f| f.sources);
    record_run(app, started_at, info.is_past_due, checked, outcome).await?;
    result.map(|_| ())
}

/// What one tick's fan-out did.
#[derive(Debug, Default)]
struct FanOut {
    sources: u32,
    inactive: u32,
    queued: u32,
    not_due: u32,
    not_ready: u32,
}

/// Makes sure every OAuth connection has a usable access token (refreshing it when due, and at
/// least every `TOKEN_KEEPALIVE_HOURS` even when idle), warns ahead of B2C re-consent deadlines,
/// then queues one `sync` message per due connection on the incoming queue: the queue function
/// runs each under its own lease, so the Functions host spreads the runs over its instances
/// (one timer walking every connection in turn never finished a round with hundreds of them).
/// Connections that need re-consent are skipped without a call.
async fn fan_out(app: &App) -> Result<FanOut, InvocationError> {
    let sources = crate::connections::sources(&app.stores, &app.settings).await?;
    for connection in sources.consented.iter().filter(|c| sources.find(&c.id).is_some()) {
        warn_before_reconsent_deadline(app, connection).await;
    }
    let ready = keep_alive(app, &sources.active).await;
    let now = Utc::now();
    let last = crate::sync::last_syncs(&app.stores).await?;
    let mut due = crate::sync::due(&app.stores, &ready, &last, now).await?;
    // The longest unsynced first (never synced before all): the queue hands messages out in
    // about the order they came, so when places are short the ones waiting longest get them.
    due.sort_by_key(|id| last.iter().find(|l| l.connection == id.as_str()).and_then(|l| l.finished_at));
    let mut fan = FanOut {
        sources: sources.active.len() as u32,
        inactive: sources.inactive.len() as u32,
        not_ready: (sources.active.len() - ready.len()) as u32,
        not_due: (ready.len() - due.len()) as u32,
        ..FanOut::default()
    };
    let queue = &app.settings.queues.incoming;
    for id in due {
        let body = IncomingMessage::Sync { connection: id.clone() }.to_body();
        // Marked before it is queued: a mark without its message is made good by
        // `QUEUED_STALE_AFTER`, a message without its mark would be queued twice. One
        // connection's failure here does not keep the others from being queued.
        let queued = async {
            crate::sync::mark_queued(&app.stores, &id, now).await?;
            app.stores.queues.enqueue(queue, &body, std::time::Duration::ZERO).await
        };
        match queued.await {
            Ok(_) => fan.queued += 1,
            Err(e) => tracing::warn!(connection = %id, error = %e, "this connection's sync could not be queued"),
        }
    }
    Ok(fan)
}

/// Makes sure each OAuth source has a usable access token (the keep-alive rule); answers the
/// sources ready to sync (API-key ones need no token).
async fn keep_alive(app: &App, sources: &[Source]) -> Vec<ConnectionId> {
    let mut ready = Vec::new();
    let mut missing = 0;
    for source in sources {
        if let Some(reason) = source.missing_secret(&app.settings.truecontext) {
            // Not queued: its run could only stop on this, and status says so.
            missing += 1;
            tracing::warn!(connection = %source.id, reason = %reason, "this connection cannot sign in; not synced");
            continue;
        }
        if !source.is_oauth() {
            ready.push(source.id.clone());
            continue;
        }
        let id = source.id.as_str();
        match app.tokens().keep_alive(id).await {
            Ok(token) => {
                tracing::info!(connection = %id, source = ?token.source, expires_at = %token.expires_at, "access token ready");
                ready.push(source.id.clone());
            }
            Err(e) => {
                missing += 1;
                tracing::warn!(connection = %id, class = e.class().as_str(), error = %e, "no access token this run")
            }
        }
    }
    if missing > 0 {
        tracing::warn!(missing, total = sources.len(), "some connections cannot sign in this run");
    }
    ready
}

/// When a run that starts now must stop starting pages (`SYNC_MAX_RUN_SECONDS`).
pub fn run_deadline(app: &App) -> tokio::time::Instant {
    tokio::time::Instant::now() + app.settings.sync.max_run
}

/// Logs how a run went; answers its stop's class.
pub(super) fn log_summary(summary: &SyncSummary) -> Option<crate::sync::StopClass> {
    let connection = summary.connection.as_str();
    let (landed, calls, left) = (summary.documents_landed, summary.api_calls, summary.budget_left);
    match &summary.stopped_reason {
        None => tracing::info!(connection, landed, calls, budget_left = left, "submissions synced"),
        Some(reason) => {
            let class = summary.stopped_class.unwrap_or(crate::sync::StopClass::Unknown).as_str();
            tracing::warn!(connection, class, landed, calls, budget_left = left, reason = %reason, "the sync stopped")
        }
    }
    summary.stopped_class
}

/// One alert per connection when its B2C window is about to close.
async fn warn_before_reconsent_deadline(app: &App, connection: &crate::connections::Connection) {
    let settings = &app.settings.tokens;
    let Some(deadline) = crate::tokens::reconsent_due(connection, settings, Utc::now()) else { return };
    let reason = format!(
        "the Azure AD B2C refresh-token window closes at {}; an administrator must consent again before then",
        deadline.format("%Y-%m-%d %H:%M UTC")
    );
    let code = format!("deadline-{}", deadline.timestamp());
    let alert = crate::alerts::Alert::new(
        crate::alerts::AlertKind::ReconsentDue,
        Some(&connection.id),
        "reconsent_due",
        &code,
        &reason,
    );
    if let Err(e) = crate::alerts::raise(&app.stores, settings.alert_webhook.as_ref(), alert).await {
        tracing::warn!(connection = %connection.id, error = %e, "the re-consent alert could not be recorded");
    }
}

async fn record_run(
    app: &App,
    started_at: DateTime<Utc>,
    past_due: bool,
    connections: u32,
    outcome: String,
) -> Result<(), InvocationError> {
    let table = TypedTable::new(app.stores.tables.as_ref(), Table::Runs);
    let previous = table.get::<SyncRun>(RUNS_PARTITION, LAST_RUN).await?;
    let run = SyncRun {
        started_at,
        finished_at: Utc::now(),
        past_due,
        connections,
        outcome,
        count: previous.map_or(0, |p| p.value.count) + 1,
    };
    // Runs are serialised by the lease, so a plain upsert cannot lose a count.
    table.upsert(RUNS_PARTITION, LAST_RUN, &run).await?;
    Ok(())
}

pub async fn last_run(app: &App) -> Result<Option<SyncRun>, crate::store::StoreError> {
    let table = TypedTable::new(app.stores.tables.as_ref(), Table::Runs);
    Ok(table.get::<SyncRun>(RUNS_PARTITION, LAST_RUN).await?.map(|v| v.value))
}

/// One sync run of `connection` with this app's parts (the TrueContext client, the
/// connection's credentials and team, the landing), under the connection's sync lease and
/// recorded for status. The queued sync, the first sync after consent and `tcbridge sync --once`
/// all run it.
pub async fn pull(
    app: &App,
    connection: &str,
    progress: Option<&crate::sync::Progress<'_>>,
    deadline: tokio::time::Instant,
) -> Result<RunOutcome, crate::store::StoreError> {
    let (sources, tokens, landing) =
        (crate::connections::sources(&app.stores, &app.settings).await?, app.tokens(), app.landing());
    let credentials = match credentials_of(app, &sources, &tokens, connection) {
        Ok(credentials) => credentials,
        Err(reason) => {
            return Ok(RunOutcome::Ran(SyncSummary {
                connection: connection.to_owned(),
                stopped_reason: Some(format!("configuration: {reason}")),
                stopped_class: Some(crate::sync::StopClass::Configuration),
                ..Default::default()
            }))
        }
    };
    let parts = sync_parts(app, &credentials, &landing, progress, deadline);
    crate::sync::run_connection(&parts, connection, Utc::now()).await
}

/// `tcbridge resync`: the range's re-sync for `connection`, run (or resumed) until done, its
/// budget share is used, or the run's time limit.
pub async fn resync(
    app: &App,
    connection: &str,
    range: &crate::sync::resync::Range,
) -> Result<crate::sync::resync::Resync, crate::sync::resync::ResyncError> {
    use crate::sync::resync::{self, ResyncError};
    let (sources, tokens, landing) =
        (crate::connections::sources(&app.stores, &app.settings).await?, app.tokens(), app.landing());
    let credentials = credentials_of(app, &sources, &tokens, connection)
        .map_err(|reason| ResyncError::Sync(crate::sync::SyncError::Configuration(reason)))?;
    let parts = sync_parts(app, &credentials, &landing, None, run_deadline(app));
    resync::run(&parts, connection, range, Utc::now()).await
}

/// `tcbridge refetch`: one submission fetched again and landed (one call).
pub async fn refetch(
    app: &App,
    connection: &str,
    id: &crate::naming::RecordId,
) -> Result<crate::sync::Fetched, crate::sync::SyncError> {
    let sources = crate::connections::sources(&app.stores, &app.settings).await?;
    let (tokens, landing) = (app.tokens(), app.landing());
    let credentials =
        credentials_of(app, &sources, &tokens, connection).map_err(crate::sync::SyncError::Configuration)?;
    let parts = sync_parts(app, &credentials, &landing, None, run_deadline(app));
    crate::sync::resync::refetch(&parts, connection, id).await
}

/// The credentials `connection` reads TrueContext with, or why it has none.
fn credentials_of<'a>(
    app: &'a App,
    sources: &'a crate::connections::Sources,
    tokens: &'a crate::tokens::Tokens<'a>,
    connection: &str,
) -> Result<Credentials<'a>, String> {
    match sources.find(connection) {
        Some(source) => Credentials::of_source(source, &app.settings.truecontext, tokens),
        None => Err(not_a_source(sources, connection)),
    }
}

fn sync_parts<'a>(
    app: &'a App,
    credentials: &'a Credentials<'a>,
    landing: &'a crate::landing::Landing<'a>,
    progress: Option<&'a crate::sync::Progress<'a>>,
    deadline: tokio::time::Instant,
) -> crate::sync::SyncParts<'a> {
    crate::sync::SyncParts {
        client: app.truecontext(),
        credentials,
        stores: &app.stores,
        landing,
        settings: &app.settings.sync,
        alert_webhook: app.settings.tokens.alert_webhook.as_ref(),
        progress,
        deadline,
    }
}

/// Why `connection` is not read: it needs an administrator, or the bridge does not know it.
fn not_a_source(sources: &crate::connections::Sources, connection: &str) -> String {
    match sources.inactive.iter().find(|c| c.id == connection) {
        Some(c) => format!(
            "connection {connection} is not active ({}); {}",
            serde_json::to_value(c.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            c.reason.as_deref().unwrap_or("an administrator must consent again or enable it")
        ),
        None => format!(
            "no connection {connection}: consent one (tcbridge consent-url), add an API-key connection \
             (tcbridge connection add), or set TRUECONTEXT_AUTH=basic with TRUECONTEXT_CONNECTION"
        ),
    }
}
