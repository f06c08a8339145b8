//! Alerts: conditions an operator must act on (a connection needs re-consent, the app's own
//! credentials were refused, a B2C re-consent deadline approaches, a sync stalls, a pushed
//! submission could not be processed).
//!
//! Each alert is raised once per (connection, alert, error code) until cleared: the first instance to
//! insert its row in the `alerts` table logs it; everyone else sees the row and stays quiet, so
//! a dead connection gives one alert, not one per sync run. The log line is a structured event
//! with stable fields (`alert`, `connection`, `class`, `error_code`, `reason`) that an Azure
//! Monitor rule can match (`alert` is set on no other line).
//!
//! The table is also the outbox for `ALERT_WEBHOOK_URL`: a row is written as owed before any
//! POST, the raiser tries once at once, and [`deliver_pending`] (every sync timer run) retries
//! what is still owed with backoff, claiming each row under If-Match so two instances do not
//! both post it. A crash between the POST and its note can post an alert twice, never zero
//! times. Status lists what is still owed.
//!
//! When an alert's cause clears (a refresh works again, the sync moves, a poisoned push is
//! replayed, pushes arrive again, a new consent), its row is deleted and, if it had reached the
//! webhook, a "resolved" row takes its place in the outbox: posted in the same formats by the next
//! [`deliver_pending`], then deleted. An operator's channel says both when it broke and when it
//! healed.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{AlertFormat, AlertWebhook};
use crate::store::{IfMatch, StoreError, Stores, Table, TypedTable};

/// The partition of app-level alerts (connection alerts use `c-<connection id>`).
const APP_PARTITION: &str = "app";
/// The first retry of a failed POST waits this long; each next one twice as long, up to an hour.
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// How long a claimed delivery is left to its claimer before another instance may try.
const CLAIM: Duration = Duration::from_secs(60);

/// Every kind of alert the bridge raises. The name (`snake_case`) is what stored alerts, the
/// alert webhook's messages, the log lines and the Azure Monitor rules carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    ConnectionNeedsReauth,
    ReconsentDue,
    TokenRefreshRejected,
    TokenRefreshFailing,
    TokenSetNotStored,
    AppCredentialsRejected,
    SyncStalled,
    PushPoisoned,
    SubmissionQuarantined,
    PushesMissing,
}

impl AlertKind {
    pub const ALL: [AlertKind; 10] = [
        AlertKind::ConnectionNeedsReauth,
        AlertKind::ReconsentDue,
        AlertKind::TokenRefreshRejected,
        AlertKind::TokenRefreshFailing,
        AlertKind::TokenSetNotStored,
        AlertKind::AppCredentialsRejected,
        AlertKind::SyncStalled,
        AlertKind::PushPoisoned,
        AlertKind::SubmissionQuarantined,
        AlertKind::PushesMissing,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            AlertKind::ConnectionNeedsReauth => "connection_needs_reauth",
            AlertKind::ReconsentDue => "reconsent_due",
            AlertKind::TokenRefreshRejected => "token_refresh_rejected",
            AlertKind::TokenRefreshFailing => "token_refresh_failing",
            AlertKind::TokenSetNotStored => "token_set_not_stored",
            AlertKind::AppCredentialsRejected => "app_credentials_rejected",
            AlertKind::SyncStalled => "sync_stalled",
            AlertKind::PushPoisoned => "push_poisoned",
            AlertKind::SubmissionQuarantined => "submission_quarantined",
            AlertKind::PushesMissing => "pushes_missing",
        }
    }

    /// The alerts about a connection's grant: a new consent ends them (and only them: a
    /// poisoned push or a stalled sync is not over because an administrator signed in again).
    pub const GRANT: [AlertKind; 5] = [
        AlertKind::ConnectionNeedsReauth,
        AlertKind::ReconsentDue,
        AlertKind::TokenRefreshRejected,
        AlertKind::TokenRefreshFailing,
        AlertKind::TokenSetNotStored,
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What an operator does about this alert (`connection` concerned, if any).
    pub fn advice(self, connection: Option<&str>) -> String {
        let id = connection.unwrap_or("default");
        match self {
            AlertKind::ConnectionNeedsReauth => format!(
                "An administrator must consent again: open the link `tcbridge consent-url --connection {id}` prints."
            ),
            AlertKind::ReconsentDue => {
                format!("Consent again before the deadline: `tcbridge consent-url --connection {id}` prints the link.")
            }
            AlertKind::TokenRefreshRejected => format!(
                "The authorization server refuses the refresh: check the app registration and its permissions, then \
                 consent again (`tcbridge consent-url --connection {id}`)."
            ),
            AlertKind::TokenRefreshFailing => {
                "The token endpoint keeps failing: check that the authorization server is reachable \
                 (`tcbridge check --online`); refreshes resume by themselves."
                    .to_owned()
            }
            AlertKind::TokenSetNotStored => {
                "A refreshed token could not be stored: check the secret store (Key Vault) and the identity's role on it \
                 (`tcbridge check --online`)."
                    .to_owned()
            }
            AlertKind::AppCredentialsRejected => "The app's own credential is refused: rotate the client secret, certificate \
                 or federated credential (README, runbook) and run `tcbridge check --online`."
                .to_owned(),
            AlertKind::SyncStalled => format!(
                "The sync has not advanced for several runs: read its last stop below, fix the cause, and run \
                 `tcbridge sync --once --connection {id}`."
            ),
            AlertKind::PushPoisoned => "A pushed submission failed every delivery: `tcbridge poison list` shows why; fix the \
                 cause, then `tcbridge poison replay --all`."
                .to_owned(),
            AlertKind::SubmissionQuarantined => "A submission cannot be landed and is kept as received: `tcbridge quarantine \
                 list` shows why; after a fix, `tcbridge quarantine retry --all`."
                .to_owned(),
            AlertKind::PushesMissing => "Submissions of the forms named reach the bridge by the sync only: check those forms' \
                 HTTP Data Destination in TrueContext (its URL and credential, the webhook's), and the FormSpace's problem \
                 contact's mail (TrueContext writes there when deliveries fail). The sync catches up meanwhile."
                .to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Its kind's name ([`AlertKind::name`]), e.g. `connection_needs_reauth`; text, so an alert
    /// stored by another version still reads.
    pub alert: String,
    /// The connection concerned; `None` for app-level alerts.
    pub connection: Option<String>,
    /// The failure class (`needs_reauth`, `app_credentials`, `rejected`, …).
    pub class: String,
    /// What deduplicates: the OAuth error code or condition (`invalid_grant`).
    pub error_code: String,
    /// Readable detail; never a secret (it passed the scrubber).
    pub reason: String,
    #[serde(default = "Utc::now")]
    pub raised_at: DateTime<Utc>,
    /// Still to be posted to the alert webhook.
    #[serde(default)]
    pub delivery_owed: bool,
    #[serde(default)]
    pub delivery_attempts: u32,
    /// No delivery is tried before this (backoff, or another instance's claim).
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub delivered_at: Option<DateTime<Utc>>,
    /// Why the last POST failed (a status or a connection error; never the URL's secret).
    #[serde(default)]
    pub last_delivery_error: Option<String>,
    /// When its cause cleared: the row is then the "resolved" message owed to the alert
    /// webhook (deleted once posted), not an alert in force.
    #[serde(default)]
    pub resolved_at: Option<DateTime<Utc>>,
}

impl Alert {
    pub fn new(kind: AlertKind, connection: Option<&str>, class: &str, error_code: &str, reason: &str) -> Self {
        Alert {
            alert: kind.name().to_owned(),
            connection: connection.map(str::to_owned),
            class: class.to_owned(),
            error_code: error_code.to_owned(),
            reason: crate::telemetry::redact(reason).into_owned(),
            raised_at: Utc::now(),
            delivery_owed: false,
            delivery_attempts: 0,
            next_attempt_at: None,
            delivered_at: None,
            last_delivery_error: None,
            resolved_at: None,
        }
    }

    fn partition(&self) -> String {
        partition(self.connection.as_deref())
    }

    fn row(&self) -> String {
        let digest = Sha256::digest(format!("{}\n{}", self.alert, self.error_code).as_bytes());
        let alert = format!("{}-{}", self.alert, crate::naming::hex_prefix(&digest, 16));
        match self.resolved_at {
            // One per raise and clear: a cause that comes back and clears again says so again.
            Some(_) => format!("{RESOLVED_PREFIX}{alert}-{}", self.raised_at.timestamp_millis()),
            None => alert,
        }
    }

    fn text(&self) -> String {
        let what = match self.resolved_at {
            Some(at) => format!("resolved: {} (raised {}, cleared {})", self.alert, stamp(self.raised_at), stamp(at)),
            None => self.alert.clone(),
        };
        match &self.connection {
            Some(c) => format!("truecontext-bridge: {what} for connection {c}: {}", self.reason),
            None => format!("truecontext-bridge: {what}: {}", self.reason),
        }
    }

    /// The POST body in the webhook's format.
    fn body(&self, format: AlertFormat) -> serde_json::Value {
        use serde_json::json;
        match format {
            AlertFormat::Text => json!({
                "text": self.text(),
                "alert": self.alert,
                "connection": self.connection,
                "class": self.class,
                "error_code": self.error_code,
                "reason": self.reason,
                "raised_at": self.raised_at,
                "resolved": self.resolved_at.is_some(),
                "resolved_at": self.resolved_at,
            }),
            AlertFormat::AdaptiveCard => {
                let fact = |title: &str, value: &str| json!({ "title": title, "value": value });
                let card = json!({
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        { "type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
                          "text": match self.resolved_at {
                              Some(_) => format!("truecontext-bridge: resolved: {}", self.alert),
                              None => format!("truecontext-bridge: {}", self.alert),
                          } },
                        { "type": "TextBlock", "wrap": true, "text": self.reason },
                        { "type": "FactSet", "facts": [
                            fact("Connection", self.connection.as_deref().unwrap_or("(app)")),
                            fact("Class", &self.class),
                            fact("Code", &self.error_code),
                            fact("Raised", &self.raised_at.to_rfc3339()),
                            fact("Resolved", &self.resolved_at.map_or("no".to_owned(), |at| at.to_rfc3339())),
                        ] }
                    ]
                });
                json!({ "type": "message", "attachments": [
                    { "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content": card }
                ] })
            }
        }
    }
}

/// Rows that are "resolved" messages, not alerts in force.
const RESOLVED_PREFIX: &str = "resolved-";

fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn partition(connection: Option<&str>) -> String {
    match connection {
        Some(id) => format!("c-{id}"),
        None => APP_PARTITION.to_owned(),
    }
}

/// Raises `alert` unless it is already raised. `Ok(true)` when this call raised it. With a
/// webhook, the row is written as owed first, then one POST is tried at once; a failure is left
/// to [`deliver_pending`].
pub async fn raise(stores: &Stores, webhook: Option<&AlertWebhook>, mut alert: Alert) -> Result<bool, StoreError> {
    alert.delivery_owed = webhook.is_some();
    let table = TypedTable::new(stores.tables.as_ref(), Table::Alerts);
    let etag = match table.insert(&alert.partition(), &alert.row(), &alert).await {
        Ok(etag) => etag,
        Err(StoreError::AlreadyExists { .. }) => {
            tracing::debug!(alert = %alert.alert, connection = ?alert.connection, "alert already raised");
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    tracing::error!(
        alert = %alert.alert,
        connection = alert.connection.as_deref().unwrap_or("-"),
        class = %alert.class,
        error_code = %alert.error_code,
        reason = %alert.reason,
        "ALERT {}",
        alert.text()
    );
    if let Some(webhook) = webhook {
        deliver(stores, webhook, crate::store::Versioned { value: alert, etag }).await?;
    }
    Ok(true)
}

/// Posts every owed alert of the app and of `connections` whose retry time has come.
/// Returns how many were delivered.
pub async fn deliver_pending(
    stores: &Stores,
    webhook: &AlertWebhook,
    connections: &[String],
) -> Result<usize, StoreError> {
    let table = TypedTable::new(stores.tables.as_ref(), Table::Alerts);
    let now = Utc::now();
    let mut delivered = 0;
    for alert in undelivered(stores, connections).await? {
        // Decided on a fresh read: another instance may have claimed it since the listing.
        let Some(current) = table.get::<Alert>(&alert.partition(), &alert.row()).await? else { continue };
        let due = current.value.next_attempt_at.is_none_or(|at| at <= now);
        if !current.value.delivery_owed || !due {
            continue;
        }
        if deliver(stores, webhook, current).await? {
            delivered += 1;
        }
    }
    Ok(delivered)
}

/// Claims one owed alert (If-Match, so one instance posts it), posts it, and notes the result.
async fn deliver(
    stores: &Stores,
    webhook: &AlertWebhook,
    current: crate::store::Versioned<Alert>,
) -> Result<bool, StoreError> {
    let table = TypedTable::new(stores.tables.as_ref(), Table::Alerts);
    let (partition, row) = (current.value.partition(), current.value.row());
    let mut alert = current.value;
    alert.delivery_attempts += 1;
    alert.next_attempt_at = Some(Utc::now() + crate::clock::delta(CLAIM));
    let claimed = match table.update(&partition, &row, &alert, IfMatch::ETag(current.etag)).await {
        Ok(etag) => etag,
        // Cleared, or another instance claimed it first.
        Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    let result = post(&webhook.url, &alert.body(webhook.format)).await;
    match &result {
        Ok(()) => {
            alert.delivery_owed = false;
            alert.delivered_at = Some(Utc::now());
            alert.next_attempt_at = None;
            alert.last_delivery_error = None;
        }
        Err(reason) => {
            let exponent = alert.delivery_attempts.saturating_sub(1).min(16);
            let wait = FIRST_RETRY.saturating_mul(1 << exponent).min(MAX_RETRY);
            tracing::warn!(alert = %alert.alert, attempts = alert.delivery_attempts, retry_in_s = wait.as_secs(), %reason,
                "the alert webhook did not take the alert; it is retried");
            alert.next_attempt_at = Some(Utc::now() + crate::clock::delta(wait));
            alert.last_delivery_error = Some(reason.clone());
        }
    }
    let noted = if alert.resolved_at.is_some() && result.is_ok() {
        // A resolved message has nothing left to say once posted.
        stores.tables.delete(Table::Alerts, &partition, &row, IfMatch::ETag(claimed)).await
    } else {
        table.update(&partition, &row, &alert, IfMatch::ETag(claimed)).await.map(|_| ())
    };
    match noted {
        Ok(()) | Err(StoreError::NotFound { .. } | StoreError::PreconditionFailed { .. }) => Ok(result.is_ok()),
        Err(e) => Err(e),
    }
}

/// One POST; the error says what happened without the URL (a Teams or Slack webhook URL is a
/// credential).
async fn post(url: &url::Url, body: &serde_json::Value) -> Result<(), String> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        crate::tls::install_crypto_provider();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a static client configuration builds")
    });
    match client.post(url.clone()).json(body).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the alert webhook answered {}", response.status().as_u16())),
        Err(e) => Err(format!("the alert webhook could not be reached: {}", e.without_url())),
    }
}

/// Alerts (and "resolved" messages) of the app and of `connections` still owed to the alert
/// webhook.
pub async fn undelivered(stores: &Stores, connections: &[String]) -> Result<Vec<Alert>, StoreError> {
    let mut out: Vec<Alert> = rows(stores, None).await?.into_iter().filter(|a| a.delivery_owed).collect();
    for connection in connections {
        out.extend(rows(stores, Some(connection)).await?.into_iter().filter(|a| a.delivery_owed));
    }
    Ok(out)
}

/// Every row of a scope: alerts in force and "resolved" messages still owed.
async fn rows(stores: &Stores, connection: Option<&str>) -> Result<Vec<Alert>, StoreError> {
    let entities = crate::store::query_partition(stores.tables.as_ref(), Table::Alerts, &partition(connection)).await?;
    entities.into_iter().map(|e| crate::store::from_properties(e.properties)).collect()
}

/// The alerts raised for a connection (`None`: app-level ones), every page of them: one push
/// poisoned is one alert, and the hostile-document run found that reading only the first
/// hundred hid (and left uncleared) every alert after them.
pub async fn list(stores: &Stores, connection: Option<&str>) -> Result<Vec<Alert>, StoreError> {
    Ok(rows(stores, connection).await?.into_iter().filter(|a| a.resolved_at.is_none()).collect())
}

/// Ends one alert (`kind` with `error_code`: a poisoned push replayed), saying it is resolved.
pub async fn clear_one(
    stores: &Stores,
    connection: Option<&str>,
    kind: AlertKind,
    error_code: &str,
) -> Result<(), StoreError> {
    for alert in list(stores, connection).await? {
        if alert.alert == kind.name() && alert.error_code == error_code {
            end(stores, alert).await?;
        }
    }
    Ok(())
}

/// Ends every alert of a connection that is being deleted, without "resolved" messages: none
/// of its causes cleared, and nobody reads about a connection that is gone.
pub async fn clear_connection(stores: &Stores, connection: &str) -> Result<(), StoreError> {
    // Every row, owed "resolved" messages too: none would be posted under an id that is gone.
    for alert in rows(stores, Some(connection)).await? {
        match stores.tables.delete(Table::Alerts, &alert.partition(), &alert.row(), IfMatch::Any).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ends the alerts of a connection with these names (a refresh succeeded: its refresh alerts
/// are over, a B2C deadline is not).
pub async fn clear_connection_named(stores: &Stores, connection: &str, kinds: &[AlertKind]) -> Result<(), StoreError> {
    clear(stores, Some(connection), Some(kinds)).await
}

/// Ends the app-level alerts (a token request succeeded, so the app's credentials work).
pub async fn clear_app(stores: &Stores) -> Result<(), StoreError> {
    clear(stores, None, None).await
}

/// Ends the alerts of one scope, all of them or those of one of `kinds` (each says it is
/// resolved).
async fn clear(stores: &Stores, connection: Option<&str>, kinds: Option<&[AlertKind]>) -> Result<(), StoreError> {
    for alert in list(stores, connection).await? {
        if kinds.is_some_and(|kinds| !kinds.iter().any(|k| k.name() == alert.alert)) {
            continue;
        }
        end(stores, alert).await?;
    }
    Ok(())
}

/// Ends an alert in force and, when it had reached the alert webhook, leaves its "resolved"
/// message in the outbox ([`deliver_pending`] posts it). The resolved row goes in first, so a
/// crash between the two leaves the alert (ended again next time) rather than losing the
/// message; two instances ending it write one row (the same key) and the one that deletes the
/// alert says so in the log.
async fn end(stores: &Stores, alert: Alert) -> Result<(), StoreError> {
    let resolved = Alert { resolved_at: Some(Utc::now()), ..alert.clone() };
    if alert.delivered_at.is_some() {
        let owed = Alert {
            delivery_owed: true,
            delivery_attempts: 0,
            next_attempt_at: None,
            delivered_at: None,
            last_delivery_error: None,
            ..resolved.clone()
        };
        let table = TypedTable::new(stores.tables.as_ref(), Table::Alerts);
        match table.insert(&owed.partition(), &owed.row(), &owed).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    match stores.tables.delete(Table::Alerts, &alert.partition(), &alert.row(), IfMatch::Any).await {
        Ok(()) => {}
        Err(StoreError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    }
    // Not `alert = …`: that field marks the lines Azure Monitor's alert rules match.
    tracing::info!(resolved = %resolved.alert, connection = resolved.connection.as_deref().unwrap_or("-"),
        error_code = %resolved.error_code, "RESOLVED {}", resolved.text());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the hostile-document run: more than a hundred alerts (one per poisoned push)
    /// hid every alert after the first page, and clearing left them in force.
    #[tokio::test]
    async fn every_alert_of_a_connection_is_listed_and_cleared_past_the_first_page() {
        let dir = tempfile::tempdir().unwrap();
        let stores = crate::store::local::open(dir.path(), None).unwrap();
        for i in 0..1_150 {
            let code = format!("push-{i:05}");
            raise(&stores, None, Alert::new(AlertKind::PushPoisoned, Some("c1"), "poisoned", &code, "x"))
                .await
                .unwrap();
        }
        raise(&stores, None, Alert::new(AlertKind::SubmissionQuarantined, Some("c1"), "x", "x", "after them all"))
            .await
            .unwrap();
        let all = list(&stores, Some("c1")).await.unwrap();
        assert_eq!(all.len(), 1_151);
        assert!(all.iter().any(|a| a.alert == "submission_quarantined"));
        clear_connection_named(&stores, "c1", &[AlertKind::SubmissionQuarantined]).await.unwrap();
        assert_eq!(list(&stores, Some("c1")).await.unwrap().len(), 1_150);
        clear_connection(&stores, "c1").await.unwrap();
        assert!(list(&stores, Some("c1")).await.unwrap().is_empty());
    }
}

#[cfg(test)]
mod rule_tests {
    use super::AlertKind;

    /// An alert no Azure Monitor rule matches reaches nobody who does not read status: every
    /// kind has its log alert rule in the Bicep.
    #[test]
    fn every_alert_kind_has_an_azure_monitor_rule() {
        let bicep = include_str!("../infra/modules/monitoring.bicep");
        for kind in AlertKind::ALL {
            let rule = format!("tostring(e.alert) == \"{}\"", kind.name());
            let in_list = format!("\"{}\"", kind.name());
            assert!(
                bicep.contains(&rule)
                    || bicep.lines().any(|l| l.contains("tostring(e.alert) in (") && l.contains(&in_list)),
                "no alert rule in infra/modules/monitoring.bicep for {}",
                kind.name()
            );
        }
    }
}
