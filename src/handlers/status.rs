//! `status`: what this instance is and how its connections and sync are doing.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::sync::{last_run, SyncRun};
use super::{App, HttpResponse, Mode};
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
    /// One entry per connection (none until the connect flow has run).
    pub connections: Vec<serde_json::Value>,
    pub sync: SyncStatus,
    /// Settings that a feature still needs (names only, never values).
    pub configuration_missing: Vec<String>,
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
        Ok(StatusReport {
            service: "truecontext-bridge",
            version: env!("CARGO_PKG_VERSION"),
            mode: app.mode,
            store: app.stores.kind,
            healthy: true,
            uptime_seconds: app.started.elapsed().as_secs(),
            connections: Vec::new(),
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
