//! Quarantine: a document the landing refuses for good (not JSON, no usable identifier, or a
//! bug that panicked on it) is kept exactly as received, recorded with the reason, alerted once
//! per connection and shown by status, and whatever came with it goes on: the sync walks past
//! it, the push's message completes. Before, such a document stopped its connection's sync at
//! that page on every run, or was retried until it was poisoned.
//!
//! One row per document (`quarantine` table: connection, `{id}.{sha256 of the bytes}`), the
//! bytes at `quarantine/{connection}/{id}/{sha256}.json` in the submissions container: written
//! blob first, then the row, so a row always names bytes that exist. The same document
//! quarantined again is the same row. [`retry`] lands the kept bytes again (after a fix) and
//! removes the row of each that lands; `tcbridge quarantine list` / `retry` are the verbs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Arrival, Landed, Landing, LandingError, Source};
use crate::alerts::{self, Alert, AlertKind};
use crate::config::AlertWebhook;
use crate::store::{StoreError, Stores, Table, TypedTable};

/// The alert raised (once per connection) while anything of it is quarantined.
pub const KIND: AlertKind = AlertKind::SubmissionQuarantined;
/// Its name, as stored alerts carry it.
pub const ALERT: &str = KIND.name();
/// The longest reason kept on a row.
const MAX_REASON_CHARS: usize = 1000;

/// A document kept because it could not be landed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The submission's identifier as it was listed or pushed (the document's own may be the
    /// problem).
    pub identifier: String,
    pub sha256: String,
    pub source: Source,
    /// Where the bytes are kept, in the submissions container.
    pub blob: String,
    /// Why it could not be landed.
    pub reason: String,
    /// The order it would have landed with (see the landing's order rule).
    pub order: DateTime<Utc>,
    pub quarantined_at: DateTime<Utc>,
    /// Retries that failed again.
    #[serde(default)]
    pub retries: u32,
}

/// A quarantined document with where it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub connection: String,
    pub key: String,
    #[serde(flatten)]
    pub row: Quarantined,
}

pub fn blob_path(connection: &str, identifier: &str, sha256: &str) -> String {
    format!("quarantine/{connection}/{identifier}/{sha256}.json")
}

/// Keeps `arrival`'s bytes and records why they could not be landed (`identifier` is the
/// listed or pushed one, already a valid record id). Raises the connection's quarantine alert.
pub async fn keep(
    landing: &Landing<'_>,
    alert_webhook: Option<&AlertWebhook>,
    arrival: &Arrival<'_>,
    identifier: &str,
    error: &LandingError,
) -> Result<Entry, StoreError> {
    let (stores, container, connection) = (landing.stores, landing.container, arrival.connection);
    crate::connections::validate_id(connection).map_err(|e| StoreError::invalid("connection", e))?;
    if !crate::naming::is_record_id(identifier) {
        return Err(StoreError::invalid("identifier", "not a TrueContext identifier"));
    }
    let sha256 = hex::encode(Sha256::digest(arrival.raw));
    let blob = blob_path(connection, identifier, &sha256);
    match stores.blobs.put(container, &blob, arrival.raw, "application/json", true).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e),
    }
    let reason = crate::telemetry::printable(&crate::telemetry::redact(&error.to_string()), MAX_REASON_CHARS);
    let row = Quarantined {
        identifier: identifier.to_owned(),
        sha256: sha256.clone(),
        source: arrival.source,
        blob,
        reason: reason.clone(),
        order: arrival.order,
        quarantined_at: Utc::now(),
        retries: 0,
    };
    let key = format!("{identifier}.{sha256}");
    let table = TypedTable::new(stores.tables.as_ref(), Table::Quarantine);
    match table.insert(connection, &key, &row).await {
        Ok(_) => {
            tracing::error!(connection, identifier, source = arrival.source.name(), reason = %reason,
                "a submission cannot be landed; it is kept in quarantine and the rest goes on");
        }
        // Quarantined before (the same bytes again): one row.
        Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e),
    }
    let message = format!(
        "submission {identifier} ({}) cannot be landed and is kept in quarantine: {reason}. \
         See `tcbridge quarantine list`; after a fix, `tcbridge quarantine retry --all`",
        arrival.source.name()
    );
    let alert = Alert::new(KIND, Some(connection), "quarantined", "quarantined", &message);
    if let Err(e) = alerts::raise(stores, alert_webhook, alert).await {
        tracing::warn!(connection, error = %e, "the quarantine alert could not be recorded");
    }
    Ok(Entry { connection: connection.to_owned(), key, row })
}

/// Everything quarantined for `connections`, oldest first.
pub async fn list(stores: &Stores, connections: &[String]) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    for connection in connections {
        for entity in crate::store::query_partition(stores.tables.as_ref(), Table::Quarantine, connection).await? {
            let row: Quarantined = crate::store::from_properties(entity.properties)?;
            out.push(Entry { connection: connection.clone(), key: entity.row_key, row });
        }
    }
    out.sort_by_key(|e| e.row.quarantined_at);
    Ok(out)
}

/// What a retry did with one quarantined document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Retried {
    /// Landed now (or found already landed, or older than what landed): the row is gone.
    Landed { landed: Landed },
    /// Still refused; the row stays, with the new reason.
    Refused { reason: String },
}

/// Lands the kept bytes of each entry again; removes the row of each that lands, and clears the
/// connection's alert once nothing of it is left. A passing failure (the store) stops the
/// retry and is returned: nothing is lost, the rows stay.
pub async fn retry(landing: &Landing<'_>, entries: &[Entry]) -> Result<Vec<(Entry, Retried)>, LandingError> {
    let stores = landing.stores;
    let table = TypedTable::new(stores.tables.as_ref(), Table::Quarantine);
    let mut out = Vec::new();
    for entry in entries {
        let Some(blob) = stores.blobs.get(landing.container, &entry.row.blob).await? else {
            return Err(StoreError::NotFound { what: format!("the quarantined bytes {}", entry.row.blob) }.into());
        };
        let arrival = Arrival {
            connection: &entry.connection,
            source: entry.row.source,
            raw: &blob.content,
            order: entry.row.order,
            processed_date: None,
        };
        let retried = match landing.land(&arrival).await {
            Ok(landed) => {
                match stores
                    .tables
                    .delete(Table::Quarantine, &entry.connection, &entry.key, crate::store::IfMatch::Any)
                    .await
                {
                    Ok(()) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                Retried::Landed { landed }
            }
            Err(e) if e.is_permanent() => {
                let reason = crate::telemetry::printable(&crate::telemetry::redact(&e.to_string()), MAX_REASON_CHARS);
                let row = Quarantined { reason: reason.clone(), retries: entry.row.retries + 1, ..entry.row.clone() };
                table.upsert(&entry.connection, &entry.key, &row).await?;
                Retried::Refused { reason }
            }
            Err(e) => return Err(e),
        };
        out.push((entry.clone(), retried));
    }
    let connections: std::collections::BTreeSet<&String> = entries.iter().map(|e| &e.connection).collect();
    for connection in connections {
        if crate::store::query_partition(stores.tables.as_ref(), Table::Quarantine, connection).await?.is_empty() {
            alerts::clear_connection_named(stores, connection, &[KIND]).await?;
        }
    }
    Ok(out)
}
