//! The landed submissions: which connections hold data, the index rows, one submission's bytes.

use crate::connections;
use crate::handlers::App;
use crate::landing::{self, Listed};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SubmissionsError {
    #[error("--connection: {0}")]
    BadConnection(String),
    #[error("no landed submission {id:?} (looked in: {})", searched.join(", "))]
    NotLanded { id: String, searched: Vec<String> },
    #[error("{path} is named by the index but missing from {container}")]
    MissingBlob { path: String, container: String },
    /// Reading which connections hold data failed.
    #[error(transparent)]
    Connections(StoreError),
    #[error("cannot read the submissions index: {0}")]
    Index(StoreError),
    #[error("cannot read the submission's blob: {0}")]
    Blob(StoreError),
}

/// Every connection that may have data: the known ones, and any that synced under another
/// configuration (the demo's, say).
pub async fn data_connections(app: &App) -> Result<Vec<String>, StoreError> {
    let mut ids = connections::known_ids(&app.stores, &app.settings).await?;
    ids.extend(crate::sync::last_syncs(&app.stores).await?.into_iter().map(|l| l.connection));
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// `only` (checked) when given, else every connection with data.
pub async fn chosen(app: &App, only: Option<String>) -> Result<Vec<String>, SubmissionsError> {
    match only {
        Some(id) => {
            let id =
                crate::naming::ConnectionId::parse(&id).map_err(|e| SubmissionsError::BadConnection(e.to_string()))?;
            Ok(vec![id.to_string()])
        }
        None => data_connections(app).await.map_err(SubmissionsError::Connections),
    }
}

/// The index rows of one connection.
pub async fn list(app: &App, connection: &str) -> Result<Vec<Listed>, StoreError> {
    landing::list(&app.stores, connection).await
}

/// One submission's normalised record, or (`raw`) its document exactly as stored.
pub async fn content(app: &App, searched: &[String], id: &str, raw: bool) -> Result<Vec<u8>, SubmissionsError> {
    let Some(found) = landing::find(&app.stores, searched, id).await.map_err(SubmissionsError::Index)? else {
        return Err(SubmissionsError::NotLanded { id: id.to_owned(), searched: searched.to_vec() });
    };
    let path = if raw { &found.row.raw_path } else { &found.row.record_path };
    let container = &app.settings.landing.container;
    match app.stores.blobs.get(container, path).await.map_err(SubmissionsError::Blob)? {
        Some(blob) => Ok(blob.content.to_vec()),
        None => Err(SubmissionsError::MissingBlob { path: path.clone(), container: container.clone() }),
    }
}
