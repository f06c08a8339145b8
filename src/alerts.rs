//! Alerts: conditions an operator must act on (a connection needs re-consent, the app's own
//! credentials were refused, a B2C re-consent deadline approaches).
//!
//! Each alert is raised once per (connection, alert, error code) until cleared: the first instance to
//! insert its row in the `alerts` table logs it and posts it; everyone else sees the row and
//! stays quiet, so a dead connection gives one alert, not one per sync run. The log line is a
//! structured event with stable fields (`alert`, `connection`, `class`, `error_code`, `reason`) that an
//! Azure Monitor rule can match (`alert` is set on no other line); with `ALERT_WEBHOOK_URL` the
//! same alert is POSTed as Teams/Slack-compatible JSON (`text` plus the fields).

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{RowRange, StoreError, Stores, Table, TypedTable};

/// The partition of app-level alerts (connection alerts use `c-<connection id>`).
const APP_PARTITION: &str = "app";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable name, e.g. `connection_needs_reauth`.
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
}

impl Alert {
    pub fn new(alert: &str, connection: Option<&str>, class: &str, error_code: &str, reason: &str) -> Self {
        Alert {
            alert: alert.to_owned(),
            connection: connection.map(str::to_owned),
            class: class.to_owned(),
            error_code: error_code.to_owned(),
            reason: crate::telemetry::redact(reason).into_owned(),
            raised_at: Utc::now(),
        }
    }

    fn partition(&self) -> String {
        partition(self.connection.as_deref())
    }

    fn row(&self) -> String {
        let digest = Sha256::digest(format!("{}\n{}", self.alert, self.error_code).as_bytes());
        format!("{}-{}", self.alert, &hex::encode(digest)[..16])
    }

    fn text(&self) -> String {
        match &self.connection {
            Some(c) => format!("truecontext-bridge: {} for connection {c}: {}", self.alert, self.reason),
            None => format!("truecontext-bridge: {}: {}", self.alert, self.reason),
        }
    }
}

fn partition(connection: Option<&str>) -> String {
    match connection {
        Some(id) => format!("c-{id}"),
        None => APP_PARTITION.to_owned(),
    }
}

/// Raises `alert` unless it is already raised. `Ok(true)` when this call raised it.
pub async fn raise(stores: &Stores, webhook: Option<&url::Url>, alert: Alert) -> Result<bool, StoreError> {
    let table = TypedTable::new(stores.tables.as_ref(), Table::Alerts);
    match table.insert(&alert.partition(), &alert.row(), &alert).await {
        Ok(_) => {}
        Err(StoreError::AlreadyExists { .. }) => {
            tracing::debug!(alert = %alert.alert, connection = ?alert.connection, "alert already raised");
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    tracing::error!(
        alert = %alert.alert,
        connection = alert.connection.as_deref().unwrap_or("-"),
        class = %alert.class,
        error_code = %alert.error_code,
        reason = %alert.reason,
        "ALERT {}",
        alert.text()
    );
    if let Some(url) = webhook {
        post(url, &alert).await;
    }
    Ok(true)
}

/// Best effort: the alert is already in the log and the table; a webhook that fails is logged.
async fn post(url: &url::Url, alert: &Alert) {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        crate::tls::install_crypto_provider();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a static client configuration builds")
    });
    let body = serde_json::json!({
        "text": alert.text(),
        "alert": alert.alert,
        "connection": alert.connection,
        "class": alert.class,
        "error_code": alert.error_code,
        "reason": alert.reason,
        "raised_at": alert.raised_at,
    });
    match client.post(url.clone()).json(&body).send().await {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => tracing::warn!(status = response.status().as_u16(), "the alert webhook refused the alert"),
        Err(e) => tracing::warn!(error = %e.without_url(), "the alert webhook could not be reached"),
    }
}

/// The alerts raised for a connection (`None`: app-level ones).
pub async fn list(stores: &Stores, connection: Option<&str>) -> Result<Vec<Alert>, StoreError> {
    let page = stores.tables.query(Table::Alerts, &partition(connection), &RowRange::all(), 100, None).await?;
    page.entities.into_iter().map(|e| crate::store::from_properties(e.properties)).collect()
}

/// Ends every alert of a connection (it was consented again), so a new failure alerts again.
pub async fn clear_connection(stores: &Stores, connection: &str) -> Result<(), StoreError> {
    clear(stores, Some(connection), None).await
}

/// Ends the alerts of a connection with these names (a refresh succeeded: its refresh alerts
/// are over, a B2C deadline is not).
pub async fn clear_connection_named(stores: &Stores, connection: &str, names: &[&str]) -> Result<(), StoreError> {
    clear(stores, Some(connection), Some(names)).await
}

/// Ends the app-level alerts (a token request succeeded, so the app's credentials work).
pub async fn clear_app(stores: &Stores) -> Result<(), StoreError> {
    clear(stores, None, None).await
}

/// Deletes the alerts of one scope, all of them or those with one of `names`.
async fn clear(stores: &Stores, connection: Option<&str>, names: Option<&[&str]>) -> Result<(), StoreError> {
    let partition = partition(connection);
    for alert in list(stores, connection).await? {
        if names.is_some_and(|names| !names.contains(&alert.alert.as_str())) {
            continue;
        }
        match stores.tables.delete(Table::Alerts, &partition, &alert.row(), crate::store::IfMatch::Any).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
