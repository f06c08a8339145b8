//! Storage: the four primitives every backend provides, and the typed helpers built on them.
//!
//! The primitives mirror Azure Storage and Key Vault one to one, so the Azure backend is a
//! thin mapping and the embedded backend ([`local`]) can be held to exactly the same rules:
//!
//! * [`TableStore`]: entities addressed by (partition key, row key), each with an ETag;
//!   conditional writes behave as Azure Tables' do (insert = if-none-match, update and
//!   delete take if-match with an ETag or `*`); range reads come back ordered by row key and
//!   paged with a continuation token. Connections, pending sign-in flows, sync cursors, the
//!   submission index and leases are all tables (see [`Table`]).
//! * [`BlobStore`]: submission documents.
//! * [`QueueStore`]: messages with a visibility timeout, a pop receipt and a dequeue count.
//! * [`SecretStore`]: versioned secrets (refresh tokens, keys), encrypted at rest.
//!
//! Leases ([`lease`]) are built on the table primitive with compare-and-swap, so every backend
//! gets the same lease semantics for free. `tests/suite/store_conformance.rs` holds the behaviour
//! every backend must pass.

pub mod azure;
mod crypto;
pub mod lease;
pub mod local;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};

use crate::config::StoreKind;
use crate::secret::SecretString;

/// The tables the product uses. The Azure backend prefixes these names (`TABLE_PREFIX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Connections,
    PendingFlows,
    Cursors,
    Submissions,
    Leases,
    Runs,
    Alerts,
    /// Calls made to TrueContext per connection and UTC day, and the stop after a 402.
    Budgets,
    /// Pushes stored and not yet processed.
    Incoming,
    /// Pushes processed: what makes a redelivery a duplicate.
    Deliveries,
    /// Documents the landing refused for good, kept with the reason (`landing::quarantine`).
    Quarantine,
}

impl Table {
    pub const ALL: [Table; 11] = [
        Table::Connections,
        Table::PendingFlows,
        Table::Cursors,
        Table::Submissions,
        Table::Leases,
        Table::Runs,
        Table::Alerts,
        Table::Budgets,
        Table::Incoming,
        Table::Deliveries,
        Table::Quarantine,
    ];

    /// Azure table names are alphanumeric, 3-63 characters, starting with a letter.
    pub fn name(self) -> &'static str {
        match self {
            Table::Connections => "connections",
            Table::PendingFlows => "pendingflows",
            Table::Cursors => "cursors",
            Table::Submissions => "submissions",
            Table::Leases => "leases",
            Table::Runs => "runs",
            Table::Alerts => "alerts",
            Table::Budgets => "budgets",
            Table::Incoming => "incoming",
            Table::Deliveries => "deliveries",
            Table::Quarantine => "quarantine",
        }
    }
}

/// An opaque entity version. Compare only for equality.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ETag(pub String);

impl std::fmt::Display for ETag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The condition on an update or delete, as Azure's `If-Match` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `If-Match: *`: the entity must exist, any version.
    Any,
    /// The entity must still be at this version.
    ETag(ETag),
}

impl From<&ETag> for IfMatch {
    fn from(etag: &ETag) -> Self {
        IfMatch::ETag(etag.clone())
    }
}

/// A stored entity: its keys, its current ETag, when it was last written, and its properties.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub partition_key: String,
    pub row_key: String,
    pub etag: ETag,
    pub timestamp: DateTime<Utc>,
    pub properties: Map<String, Value>,
}

/// A row-key range inside one partition: `start` inclusive, `end` exclusive, either open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowRange {
    pub start: Option<String>,
    pub end: Option<String>,
}

impl RowRange {
    pub fn all() -> Self {
        Self::default()
    }

    /// Every row key that starts with `prefix`.
    pub fn prefix(prefix: &str) -> Self {
        let mut end = prefix.to_owned();
        // The smallest string greater than every string with this prefix. Row keys cannot hold
        // U+10FFFF in practice, so appending it is enough.
        end.push(char::MAX);
        Self { start: Some(prefix.to_owned()), end: Some(end) }
    }
}

/// Largest page a backend returns, as Azure Tables does.
pub const MAX_PAGE_SIZE: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub entities: Vec<Entity>,
    /// Pass back to get the next page; `None` when the range is exhausted.
    pub continuation: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Insert of an entity (or a blob with if-none-match) that already exists. Azure: 409.
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    /// The entity, blob, message or secret does not exist. Azure: 404.
    #[error("{what} was not found")]
    NotFound { what: String },
    /// If-match failed: someone else wrote first. Azure: 412.
    #[error("{what} was changed by someone else (ETag mismatch)")]
    PreconditionFailed { what: String },
    /// Our own input is not acceptable to the store (bad key, oversized value, bad name).
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The backend is unreachable, refused us, or returned something unexpected.
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::Invalid { field, reason: reason.into() }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait TableStore: Send + Sync {
    async fn get(&self, table: Table, pk: &str, rk: &str) -> StoreResult<Option<Entity>>;
    /// Fails with `AlreadyExists` when the entity exists.
    async fn insert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag>;
    /// Replaces the entity's properties. `NotFound` when missing, `PreconditionFailed` on an
    /// ETag mismatch.
    async fn update(
        &self,
        table: Table,
        pk: &str,
        rk: &str,
        props: Map<String, Value>,
        condition: IfMatch,
    ) -> StoreResult<ETag>;
    /// Insert or replace, unconditionally.
    async fn upsert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag>;
    /// `NotFound` when missing, `PreconditionFailed` on an ETag mismatch.
    async fn delete(&self, table: Table, pk: &str, rk: &str, condition: IfMatch) -> StoreResult<()>;
    /// Entities of one partition in row-key order, at most `limit` (capped at
    /// [`MAX_PAGE_SIZE`]) per page.
    async fn query(
        &self,
        table: Table,
        pk: &str,
        range: &RowRange,
        limit: usize,
        continuation: Option<&str>,
    ) -> StoreResult<Page>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub content: Vec<u8>,
    pub content_type: String,
    pub etag: ETag,
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Writes a blob. With `only_if_absent`, fails with `AlreadyExists` when it exists
    /// (`If-None-Match: *`), which makes "store once" idempotent.
    async fn put(
        &self,
        container: &str,
        name: &str,
        content: &[u8],
        content_type: &str,
        only_if_absent: bool,
    ) -> StoreResult<ETag>;
    async fn get(&self, container: &str, name: &str) -> StoreResult<Option<Blob>>;
    async fn delete(&self, container: &str, name: &str) -> StoreResult<()>;
    /// Names under `prefix`, in lexicographic order.
    async fn list(&self, container: &str, prefix: &str) -> StoreResult<Vec<String>>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueMessage {
    pub id: String,
    /// Proof of the current dequeue; needed to delete or re-hide the message.
    pub pop_receipt: String,
    /// How many times the message has been handed out, this time included.
    pub dequeue_count: u32,
    pub inserted_at: DateTime<Utc>,
    pub body: String,
}

/// Largest message body. Azure Queues take 64 KiB per message, and messages are stored
/// base64-encoded (what the Functions queue trigger expects by default), so 48 KiB of text.
pub const MAX_QUEUE_MESSAGE_BYTES: usize = 48 * 1024;

#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Adds a message that becomes visible after `delay`. Returns its id.
    async fn enqueue(&self, queue: &str, body: &str, delay: Duration) -> StoreResult<String>;
    /// Takes up to `max` visible messages (oldest first) and hides them for `visibility`.
    async fn dequeue(&self, queue: &str, max: usize, visibility: Duration) -> StoreResult<Vec<QueueMessage>>;
    /// Removes a message. `NotFound` when it is gone or the pop receipt is stale (someone
    /// else dequeued it after our visibility timeout ran out).
    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StoreResult<()>;
    /// Hides a dequeued message for `visibility` from now; returns the new pop receipt.
    async fn set_visibility(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
    ) -> StoreResult<String>;
    /// Messages in the queue, visible or not.
    async fn len(&self, queue: &str) -> StoreResult<usize>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecretVersion {
    pub value: SecretString,
    pub version: String,
    pub created: DateTime<Utc>,
}

#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Stores a new version and returns its id; older versions stay readable.
    async fn set(&self, name: &str, value: &SecretString) -> StoreResult<String>;
    /// The latest version, or a given one.
    async fn get(&self, name: &str, version: Option<&str>) -> StoreResult<Option<SecretVersion>>;
    /// Version ids, oldest first.
    async fn versions(&self, name: &str) -> StoreResult<Vec<String>>;
    /// Deletes every version. `NotFound` when there is none.
    async fn delete(&self, name: &str) -> StoreResult<()>;
    /// The latest version as the backend has it now, bypassing any read cache (another
    /// instance may have written since). Backends without a cache need not override it.
    async fn get_latest_uncached(&self, name: &str) -> StoreResult<Option<SecretVersion>> {
        self.get(name, None).await
    }
}

/// Everything a running instance stores, behind one handle.
#[derive(Clone)]
pub struct Stores {
    pub kind: StoreKind,
    pub tables: Arc<dyn TableStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub queues: Arc<dyn QueueStore>,
    pub secrets: Arc<dyn SecretStore>,
    /// The app's Entra identity: what the Azure backend authenticates with, and what the
    /// OAuth client borrows for a federated credential. One per opened store, made on first use.
    pub identity: azure::credential::SharedCredential,
}

/// A typed record read from a table, with the ETag to write it back conditionally.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub etag: ETag,
}

/// Typed access to one table: records are serde structs flattened into entity properties.
pub struct TypedTable<'a> {
    store: &'a dyn TableStore,
    table: Table,
}

impl<'a> TypedTable<'a> {
    pub fn new(store: &'a dyn TableStore, table: Table) -> Self {
        Self { store, table }
    }

    pub async fn get<T: DeserializeOwned>(&self, pk: &str, rk: &str) -> StoreResult<Option<Versioned<T>>> {
        match self.store.get(self.table, pk, rk).await? {
            None => Ok(None),
            Some(entity) => Ok(Some(Versioned { value: from_properties(entity.properties)?, etag: entity.etag })),
        }
    }

    pub async fn insert<T: Serialize>(&self, pk: &str, rk: &str, value: &T) -> StoreResult<ETag> {
        self.store.insert(self.table, pk, rk, to_properties(value)?).await
    }

    pub async fn update<T: Serialize>(&self, pk: &str, rk: &str, value: &T, condition: IfMatch) -> StoreResult<ETag> {
        self.store.update(self.table, pk, rk, to_properties(value)?, condition).await
    }

    pub async fn upsert<T: Serialize>(&self, pk: &str, rk: &str, value: &T) -> StoreResult<ETag> {
        self.store.upsert(self.table, pk, rk, to_properties(value)?).await
    }
}

/// Every entity of one partition, in row-key order, read a page at a time.
pub async fn query_partition(tables: &dyn TableStore, table: Table, pk: &str) -> StoreResult<Vec<Entity>> {
    let mut out = Vec::new();
    let mut continuation = None;
    loop {
        let page = tables.query(table, pk, &RowRange::all(), MAX_PAGE_SIZE, continuation.as_deref()).await?;
        out.extend(page.entities);
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => return Ok(out),
        }
    }
}

pub fn to_properties<T: Serialize>(value: &T) -> StoreResult<Map<String, Value>> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(StoreError::invalid("record", "a table record must serialize to a JSON object")),
        Err(e) => Err(StoreError::invalid("record", e.to_string())),
    }
}

pub fn from_properties<T: DeserializeOwned>(props: Map<String, Value>) -> StoreResult<T> {
    serde_json::from_value(Value::Object(props))
        .map_err(|e| StoreError::Backend(format!("stored record does not match its type: {e}")))
}

/// Azure Tables' key rules, enforced by every backend so that data valid locally is valid in
/// Azure: at most 1 KiB, none of `/ \ # ?`, no control characters.
pub fn validate_key(field: &'static str, key: &str) -> StoreResult<()> {
    if key.len() > 1024 {
        return Err(StoreError::invalid(field, "longer than 1024 bytes"));
    }
    if let Some(c) = key.chars().find(|c| matches!(c, '/' | '\\' | '#' | '?') || c.is_control()) {
        return Err(StoreError::invalid(field, format!("contains the forbidden character {c:?}")));
    }
    Ok(())
}

/// Checks keys (and properties, when given) before any backend call, so invalid input
/// changes nothing on any backend.
pub fn check_entity(pk: &str, rk: &str, props: Option<&Map<String, Value>>) -> StoreResult<()> {
    validate_key("partition key", pk)?;
    validate_key("row key", rk)?;
    if let Some(props) = props {
        validate_properties(props)?;
    }
    Ok(())
}

/// Continuation tokens carry the last row key returned, hex-encoded so they are opaque and
/// URL-safe, like Azure's `NextRowKey`. Both backends issue and read the same form.
pub fn encode_continuation(last_row_key: &str) -> String {
    format!("rk1.{}", hex::encode(last_row_key))
}

pub fn decode_continuation(token: &str) -> StoreResult<String> {
    token
        .strip_prefix("rk1.")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| StoreError::invalid("continuation token", "not a token this store issued"))
}

/// A page from up to `limit + 1` rows read in order: the extra row only says that another
/// page follows.
pub fn page_of(mut entities: Vec<Entity>, limit: usize) -> Page {
    let continuation = if entities.len() > limit {
        entities.truncate(limit);
        entities.last().map(|e| encode_continuation(&e.row_key))
    } else {
        None
    };
    Page { entities, continuation }
}

/// Azure Tables' property rules: at most 252 custom properties, names that are identifiers
/// and not reserved, strings up to 32 K characters (64 KiB UTF-16).
pub fn validate_properties(props: &Map<String, Value>) -> StoreResult<()> {
    if props.len() > 252 {
        return Err(StoreError::invalid("properties", "more than 252 properties"));
    }
    for (name, value) in props {
        let valid_name = name.len() <= 255
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(StoreError::invalid("properties", format!("{name:?} is not a valid property name")));
        }
        if matches!(name.as_str(), "PartitionKey" | "RowKey" | "Timestamp" | "ETag") {
            return Err(StoreError::invalid("properties", format!("{name:?} is reserved")));
        }
        let text_len = match value {
            Value::String(s) => s.encode_utf16().count(),
            Value::Array(_) | Value::Object(_) => value.to_string().encode_utf16().count(),
            _ => 0,
        };
        if text_len > 32 * 1024 {
            return Err(StoreError::invalid("properties", format!("{name:?} is longer than 32768 characters")));
        }
    }
    Ok(())
}

/// Azure container and queue names (see [`crate::naming::is_container_name`]).
pub fn validate_container_name(field: &'static str, name: &str) -> StoreResult<()> {
    if crate::naming::is_container_name(name) {
        Ok(())
    } else {
        Err(StoreError::invalid(field, format!("{name:?} must be 3-63 lowercase letters, digits or single dashes")))
    }
}

/// Key Vault secret names (see [`crate::naming::is_secret_name`]).
pub fn validate_secret_name(name: &str) -> StoreResult<()> {
    if crate::naming::is_secret_name(name) {
        Ok(())
    } else {
        Err(StoreError::invalid("secret name", format!("{name:?} must be 1-127 of 0-9, a-z, A-Z and '-'")))
    }
}

/// Opens the store the settings name.
pub fn open(settings: &crate::config::StoreSettings) -> StoreResult<Stores> {
    let identity = azure::credential::SharedCredential::new(settings.azure.managed_identity_client_id.clone());
    match settings.kind {
        StoreKind::Local => Ok(Stores {
            identity,
            ..local::open_with(&settings.local_path, settings.local_key.as_ref(), settings.local_sync)?
        }),
        StoreKind::Azure => azure::open(settings, identity),
    }
}
