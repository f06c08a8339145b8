//! `sync`: the scheduled run. It takes the cluster-wide sync lease so runs never overlap
//! (several instances, or a slow run that meets the next tick), walks the connections, and
//! records the run so `status` can say when the last one happened and how it went.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{App, InvocationError, TimerInfo};
use crate::config::TrueContextAuth;
use crate::store::{lease, Table, TypedTable};
use crate::sync::{RunOutcome, SyncSummary};
use crate::truecontext::Credentials;

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
    let holder = format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 4]>()));
    let tick = lease::with_lease(&app.stores.tables, LEASE_NAME, &holder, LEASE_TTL, tick(app, info, started_at));
    let Some(ran) = tick.await? else {
        tracing::info!("sync skipped: another instance is running it");
        // The running one can be busy for minutes (a long walk, an outage's retries) while no
        // token is asked for. A refresh a crash interrupted is accepted again only within the
        // server's reuse grace (Cognito: at most 60 s), so every tick checks the tokens; one
        // connection's refresh lease keeps that to one call cluster-wide.
        let (ids, _) = active_connections(app).await?;
        keep_alive(app, &ids).await;
        return Ok(());
    };
    ran
}

/// One timer tick's work, under the cluster-wide sync lease: housekeeping, every connection's
/// run, and the record of the tick for status.
async fn tick(app: &App, info: TimerInfo, started_at: DateTime<Utc>) -> Result<(), InvocationError> {
    if info.is_past_due {
        tracing::warn!("sync is running late (past due)");
    }
    app.housekeeping().await;
    let result = sync_connections(app).await;
    let outcome = match &result {
        Ok((0, 0)) => "no connections yet; nothing to sync".to_owned(),
        Ok((0, inactive)) => format!("no active connection ({inactive} need an administrator); nothing to sync"),
        Ok((n, _)) => format!("{n} connection(s) checked"),
        Err(e) => format!("failed: {e}"),
    };
    tracing::info!(outcome = %outcome, "sync finished");
    let checked = result.as_ref().map_or(0, |(checked, _)| *checked);
    record_run(app, started_at, info.is_past_due, checked, outcome).await?;
    result.map(|_| ())
}

/// Makes sure every active connection has a usable access token (refreshing it when due, and
/// at least every `TOKEN_KEEPALIVE_HOURS` even when idle), warns ahead of B2C re-consent
/// deadlines, then pulls each connection's new and changed submissions. Connections that need
/// re-consent are skipped without a call; one connection's failure never stops the others.
/// Answers how many connections were checked and how many were skipped as not active.
async fn sync_connections(app: &App) -> Result<(u32, u32), InvocationError> {
    let (ids, inactive) = active_connections(app).await?;
    let ready = keep_alive(app, &ids).await;
    // With an API key, the configured connection is the one TrueContext is read as; with
    // bearer tokens, every connection whose token is ready.
    let pulled = match app.settings.truecontext.auth {
        TrueContextAuth::Basic => vec![app.settings.truecontext.connection.clone()],
        TrueContextAuth::Bearer => ready,
    };
    // One limit for the whole run: the host's functionTimeout bounds the invocation.
    let deadline = run_deadline(app);
    for id in &pulled {
        match pull(app, id, None, deadline).await {
            Ok(RunOutcome::Ran(summary)) => log_summary(&summary),
            Ok(RunOutcome::Busy) => {}
            Err(e) => tracing::warn!(connection = %id, error = %e, "the sync could not be recorded"),
        }
    }
    Ok((ids.len().max(pulled.len()) as u32, inactive))
}

/// The connections to keep alive and sync (the app itself under client credentials), each
/// warned about when its B2C window is about to close, and how many were not active.
async fn active_connections(app: &App) -> Result<(Vec<String>, u32), InvocationError> {
    if app.settings.oauth.grant == crate::config::OAuthGrant::ClientCredentials {
        return Ok((vec![crate::connections::APP_ONLY_CONNECTION.to_owned()], 0));
    }
    let mut ids = Vec::new();
    let mut inactive = 0;
    for connection in crate::connections::list(&app.stores).await? {
        if connection.state != crate::connections::ConnectionState::Active {
            inactive += 1;
            continue;
        }
        warn_before_reconsent_deadline(app, &connection).await;
        ids.push(connection.id);
    }
    Ok((ids, inactive))
}

/// Makes sure each connection has a usable access token (the keep-alive rule); answers those
/// that have one.
async fn keep_alive(app: &App, ids: &[String]) -> Vec<String> {
    let mut ready = Vec::new();
    for id in ids {
        match app.tokens().keep_alive(id).await {
            Ok(token) => {
                tracing::info!(connection = %id, source = ?token.source, expires_at = %token.expires_at, "access token ready");
                ready.push(id.clone());
            }
            Err(e) => {
                tracing::warn!(connection = %id, class = e.class().as_str(), error = %e, "no access token this run")
            }
        }
    }
    if ready.len() < ids.len() {
        tracing::warn!(ready = ready.len(), total = ids.len(), "some connections have no access token this run");
    }
    ready
}

/// When a run that starts now must stop starting pages (`SYNC_MAX_RUN_SECONDS`).
pub fn run_deadline(app: &App) -> tokio::time::Instant {
    tokio::time::Instant::now() + app.settings.sync.max_run
}

fn log_summary(summary: &SyncSummary) {
    let connection = summary.connection.as_str();
    let (landed, calls, left) = (summary.documents_landed, summary.api_calls, summary.budget_left);
    match &summary.stopped_reason {
        None => tracing::info!(connection, landed, calls, budget_left = left, "submissions synced"),
        Some(reason) => {
            let class = summary.stopped_class.unwrap_or(crate::sync::StopClass::Unknown).as_str();
            tracing::warn!(connection, class, landed, calls, budget_left = left, reason = %reason, "the sync stopped")
        }
    }
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

/// One sync run of `connection` with this app's parts (the TrueContext client, the credentials
/// `TRUECONTEXT_AUTH` names, the landing), under the connection's sync lease and recorded for
/// status. The timer, the first sync after consent and `tcbridge sync --once` all run it.
pub async fn pull(
    app: &App,
    connection: &str,
    progress: Option<&crate::sync::Progress<'_>>,
    deadline: tokio::time::Instant,
) -> Result<RunOutcome, crate::store::StoreError> {
    let settings = &app.settings;
    let client = app.truecontext();
    let tokens = app.tokens();
    let Some(credentials) = Credentials::from_settings(&settings.truecontext, &tokens) else {
        return Ok(RunOutcome::Ran(SyncSummary {
            connection: connection.to_owned(),
            stopped_reason: Some(format!("configuration: {}", crate::truecontext::MISSING_API_KEY)),
            stopped_class: Some(crate::sync::StopClass::Configuration),
            ..Default::default()
        }));
    };
    let landing = app.landing();
    let parts = crate::sync::SyncParts {
        client,
        credentials: &credentials,
        stores: &app.stores,
        landing: &landing,
        settings: &settings.sync,
        alert_webhook: settings.tokens.alert_webhook.as_ref(),
        progress,
        deadline,
    };
    crate::sync::run_connection(&parts, connection, Utc::now()).await
}
