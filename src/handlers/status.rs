//! `status`: what this instance is and how its connections and sync are doing.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::sync::{last_run, SyncRun};
use super::{App, HttpResponse, Mode};
use crate::connections::{self, Connection, ConnectionState};
use crate::store::{StoreError, StoreKind};

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub service: &'static str,
    pub version: &'static str,
    pub mode: Mode,
    pub store: StoreKind,
    /// True when nothing needs an operator's attention.
    pub healthy: bool,
    pub uptime_seconds: u64,
    /// One entry per connection.
    pub connections: Vec<ConnectionStatus>,
    pub sync: SyncStatus,
    /// Settings that a feature still needs (names only, never values).
    pub configuration_missing: Vec<String>,
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
    pub consented_at: DateTime<Utc>,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub last_refresh_success: Option<DateTime<Utc>>,
    pub last_refresh_failure: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
}

impl From<Connection> for ConnectionStatus {
    fn from(c: Connection) -> Self {
        ConnectionStatus {
            account: c.display_account().to_owned(),
            id: c.id,
            state: c.state,
            reason: c.reason,
            tenant: c.tenant,
            scopes: c.scopes,
            consented_at: c.consented_at,
            access_token_expires_at: c.access_token_expires_at,
            last_refresh_success: c.last_refresh_success,
            last_refresh_failure: c.last_refresh_failure,
            consecutive_failures: c.consecutive_failures,
        }
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
        let connections: Vec<ConnectionStatus> =
            connections::list(&app.stores).await?.into_iter().map(ConnectionStatus::from).collect();
        Ok(StatusReport {
            service: "truecontext-bridge",
            version: env!("CARGO_PKG_VERSION"),
            mode: app.mode,
            store: app.stores.kind,
            healthy: connections.iter().all(|c| c.state == ConnectionState::Active),
            uptime_seconds: app.started.elapsed().as_secs(),
            connections,
            sync: SyncStatus {
                schedule: schedule.describe(),
                next_run: schedule.next_after(Utc::now()),
                last_run: last_run(app).await?,
            },
            configuration_missing: app.settings.missing().into_iter().map(|p| p.setting).collect(),
        })
    }
}

pub async fn respond(app: &App) -> HttpResponse {
    match StatusReport::gather(app).await {
        Ok(report) => HttpResponse::json(StatusCode::OK, &report),
        Err(e) => {
            tracing::error!(error = %e, "status could not read the store");
            HttpResponse::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("the store cannot be read: {e}"),
            )
        }
    }
}
