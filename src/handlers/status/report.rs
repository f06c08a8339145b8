//! `status`: what this instance is and how its connections and sync are doing.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::alerts::{self, Alert};
use crate::config::StoreKind;
use crate::config::{OAuthGrant, TokenSettings};
use crate::connections::{self, Connection, ConnectionState, APP_ONLY_CONNECTION, APP_ONLY_PARTITION};
use crate::handlers::sync::{last_run, SyncRun};
use crate::handlers::{App, Mode};
use crate::store::{StoreError, Table, TypedTable};

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub service: &'static str,
    pub version: &'static str,
    pub mode: Mode,
    pub store: StoreKind,
    /// True when nothing needs an operator's attention.
    pub healthy: bool,
    /// 200 when healthy, 424 when something needs attention (also the HTTP status), and why.
    pub summary: Summary,
    pub uptime_seconds: u64,
    /// One entry per connection.
    pub connections: Vec<ConnectionStatus>,
    pub sync: SyncStatus,
    /// App-level alerts in force (the app's own credentials refused, …).
    pub app_alerts: Vec<Alert>,
    /// Per connection: TrueContext calls today and the budget, and the sync cursor.
    pub truecontext: Vec<TrueContextStatus>,
    /// Pushes: what the webhook received and refused, what processing did, what is in hand.
    pub webhook: WebhookStatus,
    /// Submissions the landing refused for good, kept as received (`tcbridge quarantine list`).
    pub quarantine: QuarantineStatus,
    /// Restarts of the servers' supervised tasks (timer, queue worker, housekeeping, counters),
    /// summed over every instance, and the latest.
    pub supervision: SupervisionStatus,
    /// Alerts not yet delivered to `ALERT_WEBHOOK_URL` (retried with backoff).
    pub alerts_undelivered: Vec<Alert>,
    /// Settings that a feature still needs (names only, never values).
    pub configuration_missing: Vec<String>,
}

/// The webhook and the processing of pushes, summed over every instance.
#[derive(Debug, Serialize)]
pub struct WebhookStatus {
    /// `WEBHOOK_AUTH`, or `None` when unset (every push is refused).
    pub auth: Option<crate::config::WebhookAuth>,
    #[serde(flatten)]
    pub counters: crate::webhook::counters::Figures,
    #[serde(flatten)]
    pub backlog: crate::webhook::Backlog,
    /// Messages on the incoming queue (pushes and first syncs), visible or not.
    pub queue_depth: usize,
    pub poison_queue_depth: usize,
    /// With the webhook configured: per connection, each form's submissions that came by the
    /// sync alone (never pushed within `MISSED_PUSH_GRACE_SECONDS`).
    pub missed_pushes: std::collections::BTreeMap<String, Vec<crate::sync::missed::FormPushes>>,
    /// Their sum over every form's `missed_since_push`.
    pub missed_pushes_since_push: u64,
}

#[derive(Debug, Serialize)]
pub struct QuarantineStatus {
    pub count: usize,
    pub by_connection: std::collections::BTreeMap<String, usize>,
    /// The oldest few, with their reasons.
    pub oldest: Vec<crate::landing::quarantine::Entry>,
}

#[derive(Debug, Serialize)]
pub struct SupervisionStatus {
    pub task_restarts: std::collections::BTreeMap<String, u64>,
    pub last_restart: Option<crate::webhook::counters::Restart>,
}

/// A restart this recent makes status ask for attention (a task that keeps stopping restarts
/// at least every minute, so it stays this recent).
const RESTART_ATTENTION: chrono::TimeDelta = chrono::TimeDelta::minutes(15);
/// Quarantined submissions status shows in full.
const QUARANTINE_SHOWN: usize = 5;

/// One connection's use of TrueContext.
#[derive(Debug, Serialize)]
pub struct TrueContextStatus {
    pub connection: String,
    /// The TrueContext team the connection draws on: the calls and budget below are the team's
    /// (shared by every connection of the team). Undeclared: the connection's own id.
    pub team: String,
    /// How it signs in: `oauth`, `configured_api_key` (`TRUECONTEXT_AUTH=basic`), `api_key`
    /// (added with `tcbridge connection add`), or `none` (not read any more: data only).
    pub access: &'static str,
    pub calls_today: u64,
    pub budget: u64,
    pub budget_left: u64,
    /// After a 402 `CallCountExpended`: no call before this (00:00 UTC).
    pub budget_stopped_until: Option<DateTime<Utc>>,
    /// Everything processed up to here has been pulled.
    pub cursor: Option<DateTime<Utc>>,
    /// A window is being walked (a run stopped mid-way resumes it).
    pub walk_in_progress: bool,
    /// The last run: when, whether it completed, why it stopped, what it landed.
    pub last_sync: Option<crate::sync::LastSync>,
    /// Documents landed (new or changed) by the sync runs recorded so far: a run killed before
    /// it was recorded is not counted (what it landed is), and pushes are not counted here.
    pub landed_total: u64,
    /// Its re-syncs (`tcbridge resync`): range, progress, what stopped one, days of budget share
    /// the rest needs.
    pub resyncs: Vec<crate::sync::resync::Resync>,
    /// The names of its alerts in force (for a consented connection also under `connections`;
    /// for an API-key one only here).
    pub alerts: Vec<String>,
}

/// A connection as status shows it: never a token or a secret name.
#[derive(Debug, Serialize)]
pub struct ConnectionStatus {
    pub id: String,
    pub state: ConnectionState,
    pub reason: Option<String>,
    pub account: String,
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
    /// None for the app-only connection, which needs no consent.
    pub consented_at: Option<DateTime<Utc>>,
    /// `delegated` (an admin consented) or `app_only` (OAUTH_GRANT=client_credentials).
    pub access: &'static str,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    /// The server said nothing about the token's lifetime; an hour was assumed.
    pub access_token_lifetime_assumed: bool,
    pub last_refresh_success: Option<DateTime<Utc>>,
    pub last_refresh_failure: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    /// The last failure's class (`transient`, `rejected`, `app_credentials`, …) and reason.
    pub last_error_class: Option<String>,
    pub last_error: Option<String>,
    /// No token-endpoint call before this (backoff shared by all instances).
    pub retry_not_before: Option<DateTime<Utc>>,
    /// Azure AD B2C: the sliding refresh-token window closes here; consent again before.
    pub reconsent_deadline: Option<DateTime<Utc>>,
    /// Alerts in force for this connection (names).
    pub alerts: Vec<String>,
    /// Why an operator should look, when they should.
    pub attention: Option<String>,
}

/// Whether anything needs an operator, in one place for the HTTP status and the CLI exit.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub status: u16,
    pub attention: Vec<String>,
}

impl ConnectionStatus {
    fn from_record(c: Connection, access: &'static str, settings: &TokenSettings, now: DateTime<Utc>) -> Self {
        let deadline = crate::tokens::reconsent_deadline(&c, settings);
        let attention = attention(&c, settings, now);
        ConnectionStatus {
            account: c.display_account().to_owned(),
            id: c.id,
            state: c.state,
            reason: c.reason,
            tenant: c.tenant,
            scopes: c.scopes,
            consented_at: (access == "delegated").then_some(c.consented_at),
            access,
            access_token_expires_at: c.access_token_expires_at,
            access_token_lifetime_assumed: c.expires_in_assumed,
            last_refresh_success: c.last_refresh_success,
            last_refresh_failure: c.last_refresh_failure,
            consecutive_failures: c.consecutive_failures,
            last_error_class: c.last_error_class,
            last_error: c.last_error,
            retry_not_before: c.retry_not_before.filter(|t| *t > now),
            reconsent_deadline: deadline,
            alerts: Vec::new(),
            attention,
        }
    }
}

/// Transient failures are the token lifecycle's to absorb until they persist; everything else
/// that stops a connection, or will soon, is the operator's.
fn attention(c: &Connection, settings: &TokenSettings, now: DateTime<Utc>) -> Option<String> {
    match c.state {
        ConnectionState::NeedsReauth => {
            return Some(format!("needs re-consent: {}", c.reason.as_deref().unwrap_or("the grant is no longer valid")))
        }
        ConnectionState::Disabled => return Some("disabled".into()),
        ConnectionState::Active => {}
    }
    if let Some(deadline) = crate::tokens::reconsent_due(c, settings, now) {
        return Some(format!(
            "consent again before {} (Azure AD B2C refresh-token window)",
            deadline.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    let error = c.last_error.as_deref().unwrap_or("unknown error");
    match c.last_error_class.as_deref() {
        Some("transient") | None if c.consecutive_failures < crate::tokens::FAILING_ALERT_AFTER => None,
        Some(class) => Some(format!("token refresh failing ({class}, {} in a row): {error}", c.consecutive_failures)),
        None => Some(format!("token refresh failing ({} in a row)", c.consecutive_failures)),
    }
}

#[derive(Debug, Serialize)]
pub struct SyncStatus {
    pub schedule: String,
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<SyncRun>,
}

impl StatusReport {
    pub async fn gather(app: &App) -> Result<Self, StoreError> {
        let schedule = &app.settings.sync_schedule;
        let now = Utc::now();
        let tokens = &app.settings.tokens;
        let mut connections: Vec<ConnectionStatus> = app_only_connection(app, now).await?.into_iter().collect();
        // One read of the connections (consented and API-key) serves the whole report.
        let sources = connections::sources(&app.stores, &app.settings).await?;
        let consented = sources.consented.clone();
        let last_syncs = crate::sync::last_syncs(&app.stores).await?;
        let mut known = connections::known_ids_of(&consented, &sources.added, &app.settings);
        known.extend(last_syncs.iter().map(|l| l.connection.clone()));
        known.sort();
        known.dedup();
        let known_all = known.clone();
        for record in consented {
            let mut status = ConnectionStatus::from_record(record, "delegated", tokens, now);
            status.alerts = alert_names(app, &status.id).await?;
            connections.push(status);
        }
        let app_alerts = alerts::list(&app.stores, None).await?;
        let truecontext = truecontext_status(app, known, &sources, last_syncs, now).await?;
        let webhook = webhook_status(app, &known_all).await?;
        let quarantine = quarantine_status(app, &known_all).await?;
        let supervision = SupervisionStatus {
            task_restarts: webhook.counters.task_restarts.clone(),
            last_restart: webhook.counters.last_restart.clone(),
        };
        let alerts_undelivered = alerts::undelivered(&app.stores, &known_all).await?;
        let mut attention = sync_attention(&connections, &truecontext);
        attention.extend(
            sources
                .active
                .iter()
                .filter_map(|s| s.missing_secret(&app.settings.truecontext).map(|why| format!("{}: {why}", s.id))),
        );
        attention.extend(app_alerts.iter().map(|a| format!("app: {} ({})", a.alert, a.reason)));
        attention.extend(backlog_attention(&webhook, app.settings.webhook.max_backlog_age.as_secs()));
        attention.extend(quarantine_attention(&quarantine));
        attention.extend(counters_attention(&webhook, now));
        attention.extend(supervision_attention(&supervision, now));
        attention.extend(poison_attention(&webhook));
        attention.extend(missed_push_attention(&webhook, app.settings.sync.missed_push_threshold));
        attention.extend(undelivered_attention(&alerts_undelivered));
        let healthy = attention.is_empty();
        Ok(StatusReport {
            service: "truecontext-bridge",
            version: env!("CARGO_PKG_VERSION"),
            mode: app.mode,
            store: app.stores.kind,
            healthy,
            summary: Summary { status: if healthy { 200 } else { 424 }, attention },
            uptime_seconds: app.started.elapsed().as_secs(),
            connections,
            app_alerts,
            truecontext,
            webhook,
            quarantine,
            supervision,
            alerts_undelivered,
            sync: SyncStatus {
                schedule: schedule.describe(),
                next_run: schedule.next_after(Utc::now()),
                last_run: last_run(app).await?,
            },
            configuration_missing: app.settings.missing().into_iter().map(|p| p.setting).collect(),
        })
    }
}

/// Forms whose pushes stopped arriving (their count since the last push is at the threshold).
fn missed_push_attention(webhook: &WebhookStatus, threshold: u64) -> Vec<String> {
    let mut out = Vec::new();
    for (connection, forms) in &webhook.missed_pushes {
        let failing: Vec<String> = forms
            .iter()
            .filter(|f| f.missed_since_push >= threshold)
            .map(|f| format!("{} ({} missed)", f.form, f.missed_since_push))
            .collect();
        if !failing.is_empty() {
            out.push(format!(
                "{connection}: pushes are missing for form(s) {}; check their TrueContext Data Destination and its \
                 credential (the sync catches up meanwhile)",
                failing.join(", ")
            ));
        }
    }
    out
}

/// What the connections and their syncs ask of an operator.
fn sync_attention(connections: &[ConnectionStatus], truecontext: &[TrueContextStatus]) -> Vec<String> {
    let mut attention: Vec<String> =
        connections.iter().filter_map(|c| c.attention.as_ref().map(|a| format!("{}: {a}", c.id))).collect();
    attention.extend(truecontext.iter().filter_map(|t| {
        t.budget_stopped_until
            .map(|until| format!("{}: TrueContext's daily call count is used up; no call before {until}", t.connection))
    }));
    attention.extend(truecontext.iter().filter_map(|t| {
        let last = t.last_sync.as_ref()?;
        (last.runs_without_progress >= crate::sync::STALL_RUNS).then(|| {
            format!(
                "{}: the sync has not advanced for {} runs; last stop: {}",
                t.connection,
                last.runs_without_progress,
                last.stopped_reason.as_deref().unwrap_or("none")
            )
        })
    }));
    attention.extend(truecontext.iter().filter_map(|t| {
        let last = t.last_sync.as_ref()?;
        // A stalled cursor is said above; a failing run that still moves is said here.
        (last.runs_without_progress < crate::sync::STALL_RUNS)
            .then(|| last.attention().map(|a| format!("{}: {a}", t.connection)))
            .flatten()
    }));
    attention
}

/// A push waiting longer than `WEBHOOK_MAX_BACKLOG_SECONDS` (`max_wait`).
fn backlog_attention(webhook: &WebhookStatus, max_wait: u64) -> Option<String> {
    let waited = webhook.backlog.oldest_waiting_age_seconds.unwrap_or(0);
    (waited > i64::try_from(max_wait).unwrap_or(i64::MAX)).then(|| {
        format!(
            "pushes are not being processed: the oldest waiting one was received {waited} s ago (more than \
             WEBHOOK_MAX_BACKLOG_SECONDS, {max_wait} s); check that the process function or the queue worker runs \
             and read its last errors in the log"
        )
    })
}

/// What the servers' counters ask of an operator, for 15 minutes after each: every connection
/// in use, pushes for submissions TrueContext lacks, a verified caller's pushes refused.
fn counters_attention(webhook: &WebhookStatus, now: DateTime<Utc>) -> Vec<String> {
    let mut attention = Vec::new();
    let counters = &webhook.counters;
    if let Some(at) = counters.last_connection_cap_at.filter(|at| now - *at < RESTART_ATTENTION) {
        attention.push(format!(
            "a standalone server had every connection it may hold in use at {} ({} time(s) in all): a client may \
             be holding connections (STANDALONE_MAX_CONNECTIONS, STANDALONE_MAX_CONNECTIONS_PER_ADDRESS); read the log",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            counters.connection_cap_reached
        ));
    }
    if let Some(at) = counters.last_gone_at.filter(|at| now - *at < RESTART_ATTENTION) {
        attention.push(format!(
            "{} push(es) named a submission TrueContext does not have (the latest at {}): each cost one call; if \
             they do not come from your Data Destination, its credential is in other hands",
            counters.gone,
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    if let Some(refused) = counters.last_verified_refusal.as_ref().filter(|r| now - r.at < RESTART_ATTENTION) {
        attention.push(format!(
            "pushes from the verified caller are refused ({}) at {}: {}; check the TrueContext Data Destination \
             (its URL's ?connection=, its format) — the sync pulls those submissions later",
            refused.task,
            refused.at.format("%Y-%m-%d %H:%M:%S UTC"),
            refused.reason
        ));
    }
    attention
}

fn poison_attention(webhook: &WebhookStatus) -> Option<String> {
    (webhook.poison_queue_depth > 0).then(|| {
        format!(
            "{} message(s) in the poison queue: see `tcbridge poison list`, then `tcbridge poison replay`",
            webhook.poison_queue_depth
        )
    })
}

fn quarantine_attention(quarantine: &QuarantineStatus) -> Option<String> {
    let oldest = quarantine.oldest.first()?;
    Some(format!(
        "{} submission(s) cannot be landed and are kept in quarantine (the oldest, {} of {}: {}): see \
         `tcbridge quarantine list`; after a fix, `tcbridge quarantine retry --all`",
        quarantine.count, oldest.row.identifier, oldest.connection, oldest.row.reason
    ))
}

fn supervision_attention(supervision: &SupervisionStatus, now: DateTime<Utc>) -> Option<String> {
    let restart = supervision.last_restart.as_ref().filter(|r| now - r.at < RESTART_ATTENTION)?;
    let total: u64 = supervision.task_restarts.values().sum();
    Some(format!(
        "a server task ({}) stopped and was started again at {} ({}); {total} restart(s) in all: read the log \
         around that time",
        restart.task,
        restart.at.format("%Y-%m-%d %H:%M:%S UTC"),
        restart.reason
    ))
}

fn undelivered_attention(undelivered: &[alerts::Alert]) -> Option<String> {
    // A "resolved" message waits for the next housekeeping pass to be posted: only one the
    // webhook has refused says something is wrong.
    let owed: Vec<&alerts::Alert> =
        undelivered.iter().filter(|a| a.resolved_at.is_none() || a.last_delivery_error.is_some()).collect();
    let oldest = owed.iter().min_by_key(|a| a.raised_at)?;
    Some(format!(
        "{} alert(s) not delivered to ALERT_WEBHOOK_URL since {}: {}",
        owed.len(),
        oldest.raised_at.format("%Y-%m-%d %H:%M UTC"),
        oldest.last_delivery_error.as_deref().unwrap_or("not tried yet")
    ))
}

async fn truecontext_status(
    app: &App,
    known: Vec<String>,
    sources: &connections::Sources,
    mut last_syncs: Vec<crate::sync::LastSync>,
    now: DateTime<Utc>,
) -> Result<Vec<TrueContextStatus>, StoreError> {
    let mut out = Vec::new();
    for connection in known {
        let source = sources.find(&connection);
        let team = source.map_or(connection.clone(), |s| s.team.to_string());
        let access = source.map_or("none", |s| match s.access {
            connections::Access::OAuth => "oauth",
            connections::Access::ConfiguredKey => "configured_api_key",
            connections::Access::ApiKey { .. } => "api_key",
        });
        let limit = app.settings.truecontext.daily_call_budget;
        let budget = crate::truecontext::Budget::new(app.stores.tables.as_ref(), &team, limit);
        let state = budget.state(now).await.map_err(|e| match e {
            crate::truecontext::TrueContextError::Store(e) => e,
            other => StoreError::Backend(other.to_string()),
        })?;
        let cursor = crate::sync::cursor(&app.stores, &app.settings.sync, &connection).await?;
        let resyncs = crate::sync::resync::list(&app.stores, &connection).await?;
        let alerts = alert_names(app, &connection).await?;
        let last_sync = last_syncs.iter().position(|l| l.connection == connection).map(|i| last_syncs.swap_remove(i));
        out.push(TrueContextStatus {
            landed_total: last_sync.as_ref().map_or(0, |l| l.landed_total),
            last_sync,
            connection,
            team,
            access,
            calls_today: state.calls_today,
            budget: state.budget,
            budget_left: state.budget_left,
            budget_stopped_until: state.stopped_until,
            cursor: cursor.as_ref().and_then(|c| c.processed_until),
            walk_in_progress: cursor.is_some_and(|c| c.walk.is_some()),
            resyncs,
            alerts,
        });
    }
    Ok(out)
}

async fn webhook_status(app: &App, connections: &[String]) -> Result<WebhookStatus, StoreError> {
    let queue = &app.settings.queues.incoming;
    let mut missed = std::collections::BTreeMap::new();
    for connection in connections {
        let forms = crate::sync::missed::per_form(&app.stores, connection).await?;
        if !forms.is_empty() {
            missed.insert(connection.clone(), forms);
        }
    }
    Ok(WebhookStatus {
        auth: app.settings.webhook.auth,
        counters: crate::webhook::counters::totals(&app.stores, app.webhook_counters()).await?,
        backlog: crate::webhook::backlog(&app.stores, connections).await?,
        queue_depth: app.stores.queues.len(queue).await?,
        poison_queue_depth: app.stores.queues.len(&format!("{queue}-poison")).await?,
        missed_pushes_since_push: missed.values().flatten().map(|f| f.missed_since_push).sum(),
        missed_pushes: missed,
    })
}

async fn quarantine_status(app: &App, connections: &[String]) -> Result<QuarantineStatus, StoreError> {
    let entries = crate::landing::quarantine::list(&app.stores, connections).await?;
    let mut by_connection = std::collections::BTreeMap::new();
    for entry in &entries {
        *by_connection.entry(entry.connection.clone()).or_default() += 1;
    }
    let count = entries.len();
    Ok(QuarantineStatus { count, by_connection, oldest: entries.into_iter().take(QUARANTINE_SHOWN).collect() })
}

/// The names of a connection's alerts in force, each once (a poisoned push is one alert each).
async fn alert_names(app: &App, connection: &str) -> Result<Vec<String>, StoreError> {
    let names: std::collections::BTreeSet<String> =
        alerts::list(&app.stores, Some(connection)).await?.into_iter().map(|a| a.alert).collect();
    Ok(names.into_iter().collect())
}

/// With `OAUTH_GRANT=client_credentials` the app itself is the connection (app-only access;
/// docs/authorization-servers.md, "Client credentials versus authorization code"): it exists from configuration, with no consent and no refresh token. Its record
/// appears with its first token.
async fn app_only_connection(app: &App, now: DateTime<Utc>) -> Result<Option<ConnectionStatus>, StoreError> {
    let oauth = &app.settings.oauth;
    if oauth.grant != OAuthGrant::ClientCredentials {
        return Ok(None);
    }
    // Until the app's first token the record does not exist; show what it will be.
    let table = TypedTable::new(app.stores.tables.as_ref(), Table::Connections);
    let record = match table.get::<Connection>(APP_ONLY_PARTITION, APP_ONLY_CONNECTION).await? {
        Some(record) => record.value,
        None => connections::app_only_record(oauth, now),
    };
    let mut status = ConnectionStatus::from_record(record, "app_only", &app.settings.tokens, now);
    status.alerts = alert_names(app, APP_ONLY_CONNECTION).await?;
    Ok(Some(status))
}
