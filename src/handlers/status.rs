//! `status`: what this instance is and how its connections and sync are doing.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::sync::{last_run, SyncRun};
use super::{App, HttpResponse, Mode};
use crate::config::OAuthGrant;
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
    /// None for the app-only connection, which needs no consent.
    pub consented_at: Option<DateTime<Utc>>,
    /// `delegated` (an admin consented) or `app_only` (OAUTH_GRANT=client_credentials).
    pub access: &'static str,
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
            consented_at: Some(c.consented_at),
            access: "delegated",
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
        let mut connections: Vec<ConnectionStatus> = app_only_connection(app).into_iter().collect();
        connections.extend(connections::list(&app.stores).await?.into_iter().map(ConnectionStatus::from));
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

/// With `OAUTH_GRANT=client_credentials` the app itself is the connection (seed 003's preferred
/// mode): it exists from configuration, with no consent and no refresh token.
fn app_only_connection(app: &App) -> Option<ConnectionStatus> {
    let oauth = &app.settings.oauth;
    if oauth.grant != OAuthGrant::ClientCredentials {
        return None;
    }
    Some(ConnectionStatus {
        id: connections::APP_ONLY_CONNECTION.to_owned(),
        state: ConnectionState::Active,
        reason: None,
        account: format!("app {}", oauth.client_id.as_deref().unwrap_or("(OAUTH_CLIENT_ID not set)")),
        tenant: None,
        scopes: oauth.scopes.clone(),
        consented_at: None,
        access: "app_only",
        access_token_expires_at: None,
        last_refresh_success: None,
        last_refresh_failure: None,
        consecutive_failures: 0,
    })
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
