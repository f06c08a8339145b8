//! Landing: the one path by which a submission, pulled by the sync or pushed to the webhook,
//! becomes stored data: the raw document exactly as received, the normalised record next to it,
//! media stored once, an index row, and one landed event per real change.
//!
//! Idempotent and monotonic, across any number of instances:
//! - landers of one submission take turns under a lease (`land:<connection>:<id>`), so their
//!   blob and index writes cannot interleave; the index row is then written under If-Match;
//! - the version changes only when the normalised content's hash does (the same content pushed
//!   and pulled is one version, however its bytes were laid out); an unchanged document writes
//!   nothing but a new source on the index;
//! - a document whose order (the processed date when known, else the time it was listed or
//!   pushed; see ARCHITECTURE.md) is older than the landed one's is ignored;
//! - the blobs are written before the index row that names them, and the landed event after it;
//!   the row says whether its event is still owed, so a crash between the two re-sends it on the
//!   next landing (at least once; consumers dedupe on connection, id and version).

pub mod normalise;
pub mod quarantine;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::store::{lease, IfMatch, StoreError, Stores, Table, TypedTable};
use normalise::{content_hash, normalise, DocumentError};

/// How long one landing may hold a submission; a crashed lander's turn ends after this.
const LAND_LEASE: Duration = Duration::from_secs(60);
/// Documents at least this large are read on a blocking thread.
const OFF_THE_RUNTIME_BYTES: usize = 256 * 1024;
/// The longest text an index row keeps of a document's field (reference, form, state).
const INDEX_TEXT_CHARS: usize = 1024;
/// How long a lander waits for its turn.
const MAX_TURN_WAIT: Duration = Duration::from_secs(90);

/// Where a submission came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Sync,
    Webhook,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Sync => "sync",
            Source::Webhook => "webhook",
        }
    }
}

/// One document to land.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    pub connection: &'a str,
    pub source: Source,
    /// The document exactly as TrueContext served or pushed it.
    pub raw: &'a [u8],
    /// What orders versions: the processed date when known, else when it was listed or pushed.
    pub order: DateTime<Utc>,
    /// The processed date, when a `data/{id}` call told it.
    pub processed_date: Option<DateTime<Utc>>,
}

/// What a landing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// First seen: stored, event sent.
    New,
    /// Content changed: stored as a new version, event sent.
    Changed,
    /// Same content as landed: nothing written (at most a new source on the index).
    Unchanged,
    /// Older than the landed version: ignored.
    Older,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Landed {
    pub id: String,
    pub outcome: Outcome,
    pub version: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LandingError {
    #[error("the submission document is not JSON: {0}")]
    NotJson(String),
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error("{0}")]
    InvalidConnection(String),
    #[error("submission {0} is being landed by another instance, which did not finish in time")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Landing this document panicked (a bug): it fails alone, and is quarantined like a
    /// document the landing refuses.
    #[error("landing it failed on an internal error: {0}")]
    Panicked(String),
}

impl LandingError {
    /// True when landing the same bytes again cannot succeed until something is fixed (the
    /// document, or the bridge): such a document is quarantined rather than retried, so it
    /// never blocks what comes after it. Store trouble and a busy turn are passing.
    pub fn is_permanent(&self) -> bool {
        match self {
            LandingError::NotJson(_)
            | LandingError::Document(_)
            | LandingError::InvalidConnection(_)
            | LandingError::Panicked(_)
            | LandingError::Store(StoreError::Invalid { .. }) => true,
            LandingError::Busy(_) | LandingError::Store(_) => false,
        }
    }
}

impl From<crate::telemetry::Panicked> for LandingError {
    fn from(panicked: crate::telemetry::Panicked) -> Self {
        LandingError::Panicked(panicked.0)
    }
}

/// The index row of a landed submission (`submissions` table: connection, submission id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRow {
    pub reference_number: Option<String>,
    pub form_id: Option<String>,
    pub form_name: Option<String>,
    pub state: Option<String>,
    pub processed_date: Option<DateTime<Utc>>,
    pub order: DateTime<Utc>,
    pub version: u64,
    pub sha256: String,
    pub raw_path: String,
    pub record_path: String,
    pub first_seen: DateTime<Utc>,
    pub last_changed: DateTime<Utc>,
    pub sources: Vec<Source>,
    /// The landed event of `version` is still owed (a crash came between the row and the event).
    #[serde(default)]
    pub event_pending: bool,
    /// Where the current version came from (rows landed before this field: unknown).
    #[serde(default)]
    pub landed_by: Option<Source>,
}

/// A document read once ([`Landing::prepare`]): its identifier, its normalised record and the
/// record's content hash.
pub struct Prepared {
    pub id: String,
    normalised: normalise::Normalised,
    pub sha256: String,
}

/// Landing with its parts: the stores, the container and the landed-events queue.
pub struct Landing<'a> {
    stores: &'a Stores,
    container: &'a str,
    landed_queue: &'a str,
}

impl<'a> Landing<'a> {
    /// The stores it lands into.
    pub fn stores(&self) -> &'a Stores {
        self.stores
    }

    pub fn new(stores: &'a Stores, container: &'a str, landed_queue: &'a str) -> Self {
        Self { stores, container, landed_queue }
    }

    pub fn raw_path(connection: &str, id: &str) -> String {
        format!("raw/{connection}/{id}.json")
    }

    pub fn record_path(connection: &str, id: &str) -> String {
        format!("records/{connection}/{id}.json")
    }

    pub fn media_path(connection: &str, id: &str, media: &str) -> String {
        format!("media/{connection}/{id}/{media}")
    }

    /// Lands one document (see the module documentation for the rules). A panic while reading
    /// or writing it is this document's failure ([`LandingError::Panicked`]), never the
    /// caller's: the turn is given back either way.
    pub async fn land(&self, arrival: &Arrival<'_>) -> Result<Landed, LandingError> {
        let prepared = self.prepare(arrival.connection, arrival.raw).await;
        self.land_prepared(arrival, prepared).await
    }

    /// Reads a document once: its identifier, its normalised record and the record's content
    /// hash. Nothing is written; [`Landing::land_prepared`] lands it, [`Landing::would_replace`]
    /// says whether it would replace a landed version.
    pub async fn prepare(&self, connection: &str, raw: &[u8]) -> Result<Prepared, LandingError> {
        crate::connections::validate_id(connection).map_err(LandingError::InvalidConnection)?;
        let (id, normalised) = Self::read_off_the_runtime(connection, raw).await?;
        let sha256 = content_hash(&normalised.record);
        Ok(Prepared { id, normalised, sha256 })
    }

    /// [`Landing::land`] of a document already read (`arrival.raw` is what `prepared` was
    /// read from); a document that could not be read gives its error.
    pub async fn land_prepared(
        &self,
        arrival: &Arrival<'_>,
        prepared: Result<Prepared, LandingError>,
    ) -> Result<Landed, LandingError> {
        let Prepared { id, normalised, sha256 } = prepared?;
        let connection = arrival.connection;
        let turn = self.take_turn(connection, &id).await?;
        let landing = crate::telemetry::isolate(self.land_holding(arrival, &id, normalised, sha256));
        lease::hold(self.stores.tables.clone(), turn, LAND_LEASE, landing)
            .await
            .unwrap_or_else(|panicked| Err(panicked.into()))
    }

    /// What is landed for this submission: its index row, if any (the sync decides from it
    /// whether a listed submission needs its document).
    pub async fn landed_row(&self, connection: &str, id: &str) -> Result<Option<IndexRow>, StoreError> {
        let table = TypedTable::new(self.stores.tables.as_ref(), Table::Submissions);
        Ok(table.get::<IndexRow>(connection, id).await?.map(|row| row.value))
    }

    /// [`Landing::read`], isolated; a large document on a blocking thread, so reading it never
    /// holds up the runtime's few workers (status answered in seconds while a 10 MiB push was
    /// read).
    async fn read_off_the_runtime(
        connection: &str,
        raw: &[u8],
    ) -> Result<(String, normalise::Normalised), LandingError> {
        if raw.len() < OFF_THE_RUNTIME_BYTES {
            return crate::telemetry::isolate_sync(|| Self::read(connection, raw))?;
        }
        let (owned_connection, owned_raw) = (connection.to_owned(), raw.to_vec());
        let read = tokio::task::spawn_blocking(move || {
            crate::telemetry::isolate_sync(|| Self::read(&owned_connection, &owned_raw))
        });
        match read.await {
            Ok(isolated) => isolated?,
            Err(e) => Err(LandingError::Panicked(format!("the reading task ended: {e}"))),
        }
    }

    /// The document's identifier and its normalised record; nothing is written. Its size in
    /// values is checked before it is parsed.
    fn read(connection: &str, raw: &[u8]) -> Result<(String, normalise::Normalised), LandingError> {
        normalise::within_values(raw, normalise::MAX_DOCUMENT_VALUES)?;
        let document: Value = serde_json::from_slice(raw).map_err(|e| {
            LandingError::NotJson(format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()))
        })?;
        let id = sanitized_id(&normalise::identifier(&document)?)?;
        let normalised = normalise(&document, &|media| Self::media_path(connection, &id, media))?;
        Ok((id, normalised))
    }

    /// Whether this document would replace a landed version of its submission with other
    /// content.
    pub async fn would_replace(&self, connection: &str, prepared: &Prepared) -> Result<bool, LandingError> {
        let landed = self.landed_row(connection, &prepared.id).await?;
        Ok(landed.is_some_and(|row| row.sha256 != prepared.sha256))
    }

    /// Sends the landed event a crash left owed on a submission that is not landed again (the
    /// sync skips what it already has), under the submission's turn. `Ok(true)` when one was sent.
    pub async fn send_owed_event(&self, connection: &str, id: &str) -> Result<bool, LandingError> {
        let turn = self.take_turn(connection, id).await?;
        let table = TypedTable::new(self.stores.tables.as_ref(), Table::Submissions);
        let send = async {
            match table.get::<IndexRow>(connection, id).await {
                Ok(Some(row)) if row.value.event_pending => {
                    self.send_event(connection, id, &row.value, row.etag).await.map(|_| true)
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e.into()),
            }
        };
        lease::hold(self.stores.tables.clone(), turn, LAND_LEASE, send).await
    }

    async fn take_turn(&self, connection: &str, id: &str) -> Result<lease::Lease, LandingError> {
        let name = format!("land:{connection}:{id}");
        let holder = crate::store::lease::holder();
        let deadline = tokio::time::Instant::now() + MAX_TURN_WAIT;
        loop {
            if let Some(held) = lease::acquire(self.stores.tables.as_ref(), &name, &holder, LAND_LEASE).await? {
                return Ok(held);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LandingError::Busy(id.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(25 + u64::from(rand::random::<u8>() / 4))).await;
        }
    }

    async fn land_holding(
        &self,
        arrival: &Arrival<'_>,
        id: &str,
        normalised: normalise::Normalised,
        sha256: String,
    ) -> Result<Landed, LandingError> {
        let connection = arrival.connection;
        let table = TypedTable::new(self.stores.tables.as_ref(), Table::Submissions);
        let mut existing = table.get::<IndexRow>(connection, id).await?;
        if let Some(current) = existing.as_mut().filter(|c| c.value.event_pending) {
            // A crash came between this row and its event. The event is owed before anything
            // else happens to the submission: a newer version landed now would take the row's
            // place and its event would never be sent (found by the chaos run), and an older
            // or unchanged arrival would leave it owed until the next change.
            current.etag = self.send_event(connection, id, &current.value, current.etag.clone()).await?;
            current.value.event_pending = false;
        }
        if let Some(current) = &existing {
            let row = &current.value;
            if row.sha256 == sha256 {
                return self.unchanged(arrival, id, current.clone()).await;
            }
            if arrival.order < row.order {
                tracing::info!(connection, id, "an older version of a landed submission was ignored");
                return Ok(Landed {
                    id: id.to_owned(),
                    outcome: Outcome::Older,
                    version: row.version,
                    sha256: row.sha256.clone(),
                });
            }
        }
        let now = Utc::now();
        let version = existing.as_ref().map_or(1, |e| e.value.version + 1);
        let processed = arrival.processed_date.or(existing.as_ref().and_then(|e| e.value.processed_date));
        let (raw_path, record_path) = self.write_blobs(arrival, id, &normalised, version, &sha256, processed).await?;
        let mut sources = existing.as_ref().map(|e| e.value.sources.clone()).unwrap_or_default();
        if !sources.contains(&arrival.source) {
            sources.push(arrival.source);
        }
        let field = |name: &str| normalised.record.get(name).cloned().unwrap_or(Value::Null);
        // The index is for listing; the record keeps the whole text. Capped by characters, so
        // a hostile form name cannot make the row larger than a table entity may be.
        let text = |v: Value| v.as_str().map(|s| s.chars().take(INDEX_TEXT_CHARS).collect::<String>());
        let row = IndexRow {
            reference_number: text(field("reference_number")),
            form_id: text(field("form").get("id").cloned().unwrap_or_default()),
            form_name: text(field("form").get("name").cloned().unwrap_or_default()),
            state: text(field("state")),
            processed_date: processed,
            order: arrival.order,
            version,
            sha256: sha256.clone(),
            raw_path,
            record_path,
            first_seen: existing.as_ref().map_or(now, |e| e.value.first_seen),
            last_changed: now,
            sources,
            event_pending: true,
            landed_by: Some(arrival.source),
        };
        // We hold the turn, so a conflict here means a lease outlived: the landing fails and is
        // retried rather than writing over what another lander recorded.
        let etag = match &existing {
            None => table.insert(connection, id, &row).await?,
            Some(current) => table.update(connection, id, &row, IfMatch::ETag(current.etag.clone())).await?,
        };
        self.send_event(connection, id, &row, etag).await?;
        let outcome = if existing.is_some() { Outcome::Changed } else { Outcome::New };
        tracing::info!(connection, id, version, outcome = ?outcome, source = arrival.source.name(), "submission landed");
        Ok(Landed { id: id.to_owned(), outcome, version, sha256 })
    }

    /// Writes a version's blobs before its index row names them: the media (each once, by its
    /// content-free name), the document as received, and the normalised record with what we
    /// know of it. Returns the document's and the record's paths.
    async fn write_blobs(
        &self,
        arrival: &Arrival<'_>,
        id: &str,
        normalised: &normalise::Normalised,
        version: u64,
        sha256: &str,
        processed: Option<DateTime<Utc>>,
    ) -> Result<(String, String), LandingError> {
        let connection = arrival.connection;
        let raw_path = Self::raw_path(connection, id);
        let record_path = Self::record_path(connection, id);
        for media in &normalised.media {
            let path = Self::media_path(connection, id, &media.id);
            let content_type = media.content_type.as_deref().unwrap_or("application/octet-stream");
            match self.stores.blobs.put(self.container, &path, &media.bytes, content_type, true).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.stores.blobs.put(self.container, &raw_path, arrival.raw, "application/json", false).await?;
        let mut record = normalised.record.clone();
        record.insert("processed_date".into(), json!(processed));
        record.insert("source".into(), json!(arrival.source));
        record.insert("version".into(), json!(version));
        record.insert("sha256".into(), json!(sha256));
        record.insert("connection".into(), json!(connection));
        let record_bytes = serde_json::to_vec_pretty(&Value::Object(record)).expect("a JSON value serialises");
        self.stores.blobs.put(self.container, &record_path, &record_bytes, "application/json", false).await?;
        Ok((raw_path, record_path))
    }

    /// The same content again: nothing is rewritten; a new source or a newly known processed
    /// date is noted on the index.
    async fn unchanged(
        &self,
        arrival: &Arrival<'_>,
        id: &str,
        current: crate::store::Versioned<IndexRow>,
    ) -> Result<Landed, LandingError> {
        let connection = arrival.connection;
        let mut row = current.value.clone();
        let new_source = !row.sources.contains(&arrival.source);
        let newly_processed = arrival.processed_date.is_some() && row.processed_date.is_none();
        if new_source || newly_processed {
            if new_source {
                row.sources.push(arrival.source);
            }
            row.processed_date = row.processed_date.or(arrival.processed_date);
            let table = TypedTable::new(self.stores.tables.as_ref(), Table::Submissions);
            table.update(connection, id, &row, IfMatch::ETag(current.etag)).await?;
        }
        Ok(Landed { id: id.to_owned(), outcome: Outcome::Unchanged, version: row.version, sha256: row.sha256 })
    }

    /// The landed event, then the row's note that it was sent; the row's new ETag.
    async fn send_event(
        &self,
        connection: &str,
        id: &str,
        row: &IndexRow,
        etag: crate::store::ETag,
    ) -> Result<crate::store::ETag, LandingError> {
        let event = json!({
            "connection": connection, "id": id, "reference_number": row.reference_number,
            "form_id": row.form_id, "state": row.state, "version": row.version, "sha256": row.sha256,
            "raw_path": row.raw_path, "record_path": row.record_path,
        });
        self.stores.queues.enqueue(self.landed_queue, &event.to_string(), Duration::ZERO).await?;
        let sent = IndexRow { event_pending: false, ..row.clone() };
        let table = TypedTable::new(self.stores.tables.as_ref(), Table::Submissions);
        Ok(table.update(connection, id, &sent, IfMatch::ETag(etag)).await?)
    }
}

/// One landed submission as the index lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed {
    pub connection: String,
    pub id: String,
    #[serde(flatten)]
    pub row: IndexRow,
}

/// Every landed submission of `connection`, in id order, a store page at a time.
pub async fn list(stores: &Stores, connection: &str) -> Result<Vec<Listed>, StoreError> {
    let mut out = Vec::new();
    let mut continuation = None;
    loop {
        let page = stores
            .tables
            .query(Table::Submissions, connection, &crate::store::RowRange::all(), 1000, continuation.as_deref())
            .await?;
        for entity in page.entities {
            let row: IndexRow = crate::store::from_properties(entity.properties)?;
            out.push(Listed { connection: connection.to_owned(), id: entity.row_key, row });
        }
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => return Ok(out),
        }
    }
}

/// A landed submission's index row, on the first of `connections` that has it.
pub async fn find(stores: &Stores, connections: &[String], id: &str) -> Result<Option<Listed>, StoreError> {
    let table = TypedTable::new(stores.tables.as_ref(), Table::Submissions);
    for connection in connections {
        if let Some(row) = table.get::<IndexRow>(connection, id).await? {
            return Ok(Some(Listed { connection: connection.clone(), id: id.to_owned(), row: row.value }));
        }
    }
    Ok(None)
}

/// A submission id as it goes into blob paths and table keys.
fn sanitized_id(id: &str) -> Result<String, LandingError> {
    if crate::naming::is_record_id(id) {
        Ok(id.to_owned())
    } else {
        Err(LandingError::Document(DocumentError::BadIdentifier(id.chars().take(80).collect())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local;

    const CONTAINER: &str = "submissions";
    const QUEUE: &str = "landed-submissions";

    fn document(id: &str, result: &str) -> Vec<u8> {
        serde_json::to_vec_pretty(&json!({
            "identifier": id, "referenceNumber": format!("20250304-{id}"), "state": "Complete",
            "form": { "identifier": "f1", "name": "Pump", "version": 2 },
            "serverReceiveDate": "2025-03-04T15:20:41Z",
            "pages": [{ "sections": [{ "answers": [
                { "label": "Result", "type": "Select", "values": [result] },
                { "label": "Photo", "type": "Image", "values": [{ "identifier": "m1", "contentType": "image/png", "bytes": "aGk=" }] }
            ] }] }]
        }))
        .unwrap()
    }

    fn at(minute: u32) -> DateTime<Utc> {
        format!("2025-03-04T16:{minute:02}:00Z").parse().unwrap()
    }

    async fn events(stores: &Stores) -> Vec<Value> {
        let taken = stores.queues.dequeue(QUEUE, 32, Duration::from_secs(60)).await.unwrap();
        taken.iter().map(|m| serde_json::from_str(&m.body).unwrap()).collect()
    }

    async fn land(landing: &Landing<'_>, raw: &[u8], order: DateTime<Utc>, source: Source) -> Landed {
        let arrival = Arrival { connection: "c1", source, raw, order, processed_date: None };
        landing.land(&arrival).await.unwrap()
    }

    #[tokio::test]
    async fn new_changed_unchanged_and_older() {
        let dir = tempfile::tempdir().unwrap();
        let stores = local::open(dir.path(), None).unwrap();
        let landing = Landing::new(&stores, CONTAINER, QUEUE);
        let first = document("3051", "Pass");
        let landed = land(&landing, &first, at(0), Source::Sync).await;
        assert_eq!((landed.outcome, landed.version), (Outcome::New, 1));
        let raw = stores.blobs.get(CONTAINER, "raw/c1/3051.json").await.unwrap().unwrap();
        assert_eq!(raw.content, first, "the raw document exactly as received");
        let record: Value = serde_json::from_slice(
            &stores.blobs.get(CONTAINER, "records/c1/3051.json").await.unwrap().unwrap().content,
        )
        .unwrap();
        assert_eq!(record["answers"]["Result"], json!(["Pass"]));
        assert_eq!(record["answers"]["Photo"][0]["path"], "media/c1/3051/m1");
        assert_eq!((record["version"].as_u64(), record["source"].as_str()), (Some(1), Some("sync")));
        assert_eq!(stores.blobs.get(CONTAINER, "media/c1/3051/m1").await.unwrap().unwrap().content, b"hi");
        let sent = events(&stores).await;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["id"], "3051");
        assert_eq!(sent[0]["version"], 1);

        // The same content pushed, laid out differently: one record, no write, no event.
        let compact = serde_json::to_vec(&serde_json::from_slice::<Value>(&first).unwrap()).unwrap();
        let again = land(&landing, &compact, at(1), Source::Webhook).await;
        assert_eq!((again.outcome, again.version), (Outcome::Unchanged, 1));
        assert_eq!(stores.blobs.get(CONTAINER, "raw/c1/3051.json").await.unwrap().unwrap().content, first);
        assert!(events(&stores).await.is_empty());
        let table = TypedTable::new(stores.tables.as_ref(), Table::Submissions);
        let row = table.get::<IndexRow>("c1", "3051").await.unwrap().unwrap().value;
        assert_eq!(row.sources, [Source::Sync, Source::Webhook]);
        assert!(!row.event_pending);

        // An edit lands as version 2, with one event.
        let edited = document("3051", "Fail");
        let changed = land(&landing, &edited, at(5), Source::Sync).await;
        assert_eq!((changed.outcome, changed.version), (Outcome::Changed, 2));
        assert_eq!(events(&stores).await.len(), 1);

        // The older version arriving late is ignored.
        let late = land(&landing, &first, at(2), Source::Webhook).await;
        assert_eq!((late.outcome, late.version), (Outcome::Older, 2));
        assert_eq!(stores.blobs.get(CONTAINER, "raw/c1/3051.json").await.unwrap().unwrap().content, edited);
        assert!(events(&stores).await.is_empty());
    }

    #[tokio::test]
    async fn an_owed_event_is_sent_on_the_next_landing() {
        let dir = tempfile::tempdir().unwrap();
        let stores = local::open(dir.path(), None).unwrap();
        let landing = Landing::new(&stores, CONTAINER, QUEUE);
        land(&landing, &document("7", "Pass"), at(0), Source::Sync).await;
        events(&stores).await;
        // As if the process died after the row and before the event.
        let table = TypedTable::new(stores.tables.as_ref(), Table::Submissions);
        let current = table.get::<IndexRow>("c1", "7").await.unwrap().unwrap();
        let owed = IndexRow { event_pending: true, ..current.value };
        table.update("c1", "7", &owed, IfMatch::ETag(current.etag)).await.unwrap();
        let again = land(&landing, &document("7", "Pass"), at(0), Source::Sync).await;
        assert_eq!(again.outcome, Outcome::Unchanged);
        let sent = events(&stores).await;
        assert_eq!(sent.len(), 1, "the owed event, once");
        assert!(!table.get::<IndexRow>("c1", "7").await.unwrap().unwrap().value.event_pending);
    }

    /// Found by the chaos run: an edit landing on a row whose event was owed sent only its own.
    #[tokio::test]
    async fn an_owed_event_is_sent_before_a_newer_or_an_older_version() {
        let dir = tempfile::tempdir().unwrap();
        let stores = local::open(dir.path(), None).unwrap();
        let landing = Landing::new(&stores, CONTAINER, QUEUE);
        let table = TypedTable::new(stores.tables.as_ref(), Table::Submissions);
        let owe = || async {
            let current = table.get::<IndexRow>("c1", "8").await.unwrap().unwrap();
            let owed = IndexRow { event_pending: true, ..current.value };
            table.update("c1", "8", &owed, IfMatch::ETag(current.etag)).await.unwrap();
        };
        land(&landing, &document("8", "Pass"), at(5), Source::Sync).await;
        events(&stores).await;
        owe().await;
        let changed = land(&landing, &document("8", "Fail"), at(6), Source::Webhook).await;
        assert_eq!((changed.outcome, changed.version), (Outcome::Changed, 2));
        let versions: Vec<Value> = events(&stores).await.iter().map(|e| e["version"].clone()).collect();
        assert_eq!(versions, [json!(1), json!(2)], "the owed event first, then the new one");

        owe().await;
        let late = land(&landing, &document("8", "Pass"), at(0), Source::Webhook).await;
        assert_eq!(late.outcome, Outcome::Older);
        let versions: Vec<Value> = events(&stores).await.iter().map(|e| e["version"].clone()).collect();
        assert_eq!(versions, [json!(2)], "an older arrival still sends what is owed");
        assert!(!table.get::<IndexRow>("c1", "8").await.unwrap().unwrap().value.event_pending);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_landers_of_one_submission_end_at_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let stores = local::open(dir.path(), None).unwrap();
        let versions: Vec<Vec<u8>> = (0..6).map(|i| document("9", &format!("answer {i}"))).collect();
        let mut tasks = Vec::new();
        for (i, raw) in versions.iter().cloned().enumerate().rev() {
            let stores = stores.clone();
            tasks.push(tokio::spawn(async move {
                let landing = Landing::new(&stores, CONTAINER, QUEUE);
                let arrival = Arrival {
                    connection: "c1",
                    source: Source::Sync,
                    raw: &raw,
                    order: at(i as u32),
                    processed_date: None,
                };
                landing.land(&arrival).await.unwrap()
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let raw = stores.blobs.get(CONTAINER, "raw/c1/9.json").await.unwrap().unwrap().content;
        assert_eq!(raw, versions[5], "the newest version, whatever the arrival order");
        let record: Value =
            serde_json::from_slice(&stores.blobs.get(CONTAINER, "records/c1/9.json").await.unwrap().unwrap().content)
                .unwrap();
        assert_eq!(record["answers"]["Result"], json!(["answer 5"]));
        let table = TypedTable::new(stores.tables.as_ref(), Table::Submissions);
        let row = table.get::<IndexRow>("c1", "9").await.unwrap().unwrap().value;
        assert_eq!(row.sha256, record["sha256"].as_str().unwrap());
        let sent = events(&stores).await;
        assert_eq!(sent.len() as u64, row.version, "one event per version landed");
    }

    #[tokio::test]
    async fn bad_input_changes_nothing_and_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let stores = local::open(dir.path(), None).unwrap();
        let landing = Landing::new(&stores, CONTAINER, QUEUE);
        let arrival = |raw: &'static [u8], connection: &'static str| Arrival {
            connection,
            source: Source::Webhook,
            raw,
            order: at(0),
            processed_date: None,
        };
        let not_json = landing.land(&arrival(b"{\"identifier\": ", "c1")).await.unwrap_err();
        assert!(not_json.to_string().contains("not JSON"), "{not_json}");
        let no_id = landing.land(&arrival(b"{\"pages\": []}", "c1")).await.unwrap_err();
        assert!(no_id.to_string().contains("no identifier"), "{no_id}");
        let bad_id = landing.land(&arrival(b"{\"identifier\": \"../x\"}", "c1")).await.unwrap_err();
        assert!(bad_id.to_string().contains("not a TrueContext identifier"), "{bad_id}");
        let bad_connection = landing.land(&arrival(b"{\"identifier\": \"1\"}", "../c")).await.unwrap_err();
        assert!(matches!(bad_connection, LandingError::InvalidConnection(_)));
        assert!(stores.blobs.list(CONTAINER, "").await.unwrap().is_empty());
        assert_eq!(stores.queues.len(QUEUE).await.unwrap(), 0);
    }
}
