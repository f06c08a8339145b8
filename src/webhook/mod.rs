//! The webhook: pushes from TrueContext's HTTP Data Destination, made durable before they are
//! acknowledged, then processed from the incoming queue into the same landing as the sync.
//!
//! **Intake** ([`Intake::accept`]): three storage requests, each step idempotent:
//! 1. the body is stored exactly as received, `incoming/{connection}/{id}/{sha256}.json`, only
//!    if absent. Present already: the same body came before, and the rare path decides: processed
//!    (a `deliveries` row) or in hand (a pending row) is a duplicate;
//! 2. its pending row (`incoming` table) is inserted, noted as queued; an existing row means the
//!    same delivery is already in hand: a duplicate (one whose request died before queueing is
//!    queued by it);
//! 3. a `push` message goes on the incoming queue;
//! 4. only then is the push answered 202.
//!
//! The minimum a durable acknowledgement needs is two (the body and the message); the row is the
//! third because dedupe of a delivery in hand, recovery, the backlog status shows and a poisoned
//! push's record all ride on it. (It once cost five: a `deliveries` read before anything, and the
//! row's update after the enqueue.)
//!
//! A crash before 2 leaves an orphan blob at most (the sender retries: no 2xx was sent). A crash
//! between 2 and 3 leaves a row whose message never went out: a retry of the same delivery, or
//! the recovery pass ([`recover`], every timer run and every minute in standalone mode), queues it
//! again once `WEBHOOK_RECOVERY_SECONDS` have passed since it was queued, then after twice that,
//! and so on, as long as no delivery of it has failed (a recorded failure proves its message
//! went out): a row that is only waiting in a long queue gets a few extra messages at most,
//! which processing finds already done.
//!
//! **Processing** ([`process`]) lands the stored body through [`crate::landing`] (a template
//! body that lacks the document has it fetched first, and so has a body that would replace a
//! landed version with other content: it may be a retried delivery older than what landed),
//! records the delivery as processed, and
//! deletes the pending row. A message for a delivery already processed does nothing, so a
//! redelivered or replayed message cannot land twice.

pub mod auth;
pub mod counters;
pub mod message;
pub mod payload;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::landing::{quarantine, Arrival, Landed, Landing, LandingError, Prepared, Source};
use crate::store::{IfMatch, StoreError, Stores, Table, TypedTable, Versioned};
use crate::truecontext::{Credentials, TrueContextClient, TrueContextError};
pub use message::{IncomingMessage, MessageError, PushRef};
use payload::{Push, PushFormat};

/// A push stored and waiting to be processed (`incoming` table: connection, `{id}.{sha256}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub identifier: String,
    pub sha256: String,
    pub blob: String,
    pub format: PushFormat,
    pub received_at: DateTime<Utc>,
    /// Its message is on the queue (false only between the row and the enqueue, or after a crash there).
    pub queued: bool,
    /// When it was last queued (or claimed to be queued by the recovery pass).
    pub queued_at: Option<DateTime<Utc>>,
    /// Processing failed on its last allowed delivery: its message is in the poison queue.
    #[serde(default)]
    pub poisoned: bool,
    /// Times the recovery pass queued it again (each waits twice as long as the one before).
    #[serde(default)]
    pub requeues: u32,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A push that was processed (`deliveries` table: connection, `{id}.{sha256}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub identifier: String,
    pub sha256: String,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    pub outcome: crate::landing::Outcome,
    pub version: u64,
}

/// What the intake did with a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored and queued: answered 202.
    Accepted { key: String },
    /// The same body was already stored or processed: answered 200, nothing new queued.
    Duplicate { key: String },
}

/// Storage errors of the intake and processing, and what processing found wrong.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Landing(#[from] LandingError),
    #[error("the stored push {0} is gone (its blob was deleted)")]
    BlobMissing(String),
    #[error("the stored push is not a valid submission: {0}")]
    Payload(#[from] payload::PayloadError),
    #[error("the document could not be fetched: {0}")]
    Fetch(FetchError),
}

/// The intake with its parts.
pub struct Intake<'a> {
    pub stores: &'a Stores,
    pub container: &'a str,
    pub queue: &'a str,
    pub recovery_after: Duration,
}

/// The key of a delivery: its submission and the hash of its body exactly as received.
pub fn delivery_key(identifier: &str, sha256: &str) -> String {
    format!("{identifier}.{sha256}")
}

pub fn blob_path(connection: &str, identifier: &str, sha256: &str) -> String {
    format!("incoming/{connection}/{identifier}/{sha256}.json")
}

impl Intake<'_> {
    /// Makes one push durable and queued (see the module documentation for the order).
    pub async fn accept(&self, connection: &str, push: &Push, body: &[u8]) -> Result<Accepted, StoreError> {
        let sha256 = hex::encode(Sha256::digest(body));
        let key = delivery_key(&push.identifier, &sha256);
        let blob = blob_path(connection, &push.identifier, &sha256);
        match self.stores.blobs.put(self.container, &blob, body, "application/json", true).await {
            Ok(_) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                // The same body came before: processed already is a duplicate; otherwise it
                // is in hand (the row says so below) or its first request died before the row.
                let done = TypedTable::new(self.stores.tables.as_ref(), Table::Deliveries);
                if done.get::<Delivery>(connection, &key).await?.is_some() {
                    return Ok(Accepted::Duplicate { key });
                }
            }
            Err(e) => return Err(e),
        }
        let now = Utc::now();
        // Noted as queued before the message goes out: a crash between the two is what the
        // recovery pass is for, and the row needs no second write.
        let pending = Pending {
            identifier: push.identifier.clone(),
            sha256,
            blob,
            format: push.format,
            received_at: now,
            queued: true,
            queued_at: Some(now),
            poisoned: false,
            requeues: 0,
            attempts: 0,
            last_error: None,
        };
        let table = TypedTable::new(self.stores.tables.as_ref(), Table::Incoming);
        match table.insert(connection, &key, &pending).await {
            Ok(_) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                // The same delivery again. If its first request died before queueing, queue it now.
                if let Some(current) = table.get::<Pending>(connection, &key).await? {
                    self.queue_if_stranded(connection, &key, current).await?;
                }
                return Ok(Accepted::Duplicate { key });
            }
            Err(e) => return Err(e),
        }
        self.enqueue(connection, &key).await?;
        Ok(Accepted::Accepted { key })
    }

    /// Queues a pending push whose message may never have gone out (its request died between its
    /// row and its message), once `recovery_after` has passed since it was last queued, doubled
    /// for every time it was queued again (a row merely waiting in a long queue is queued again
    /// a few times at most). The row is claimed under If-Match first, so of two recoverers one
    /// queues it. A poisoned row waits for `tcbridge poison replay`.
    async fn queue_if_stranded(
        &self,
        connection: &str,
        key: &str,
        current: Versioned<Pending>,
    ) -> Result<bool, StoreError> {
        let row = &current.value;
        let since = row.queued_at.unwrap_or(row.received_at);
        let wait = self.recovery_after.saturating_mul(1 << row.requeues.min(16));
        // A recorded failure proves its message went out (it was delivered, and the queue
        // delivers it again or has poisoned it): only a row never tried can be stranded.
        if row.poisoned || row.attempts > 0 || Utc::now() - since < crate::clock::delta(wait) {
            return Ok(false);
        }
        let table = TypedTable::new(self.stores.tables.as_ref(), Table::Incoming);
        let requeues = if row.queued { row.requeues + 1 } else { row.requeues };
        let claim = Pending { queued: true, queued_at: Some(Utc::now()), requeues, ..row.clone() };
        match table.update(connection, key, &claim, IfMatch::ETag(current.etag)).await {
            Ok(_) => {}
            Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        tracing::warn!(connection, identifier = %row.identifier, requeues,
            "a stored push whose message may never have gone out is queued again");
        self.enqueue(connection, key).await?;
        Ok(true)
    }

    async fn enqueue(&self, connection: &str, key: &str) -> Result<(), StoreError> {
        let connection_id = crate::naming::ConnectionId::parse(connection)
            .map_err(|e| StoreError::invalid("connection", e.to_string()))?;
        let message = IncomingMessage::Push(PushRef { connection: connection_id, key: key.to_owned() });
        self.stores.queues.enqueue(self.queue, &message.to_body(), Duration::ZERO).await?;
        Ok(())
    }
}

/// The recovery pass: queues every push of `connections` stored but never queued. Returns how many.
pub async fn recover(intake: &Intake<'_>, connections: &[String]) -> Result<usize, StoreError> {
    let mut queued = 0;
    for connection in connections {
        for (key, row) in pending_of(intake.stores, connection).await? {
            if intake.queue_if_stranded(connection, &key, row).await? {
                queued += 1;
            }
        }
    }
    Ok(queued)
}

/// Every pending push of `connection`, with its key.
pub async fn pending_of(stores: &Stores, connection: &str) -> Result<Vec<(String, Versioned<Pending>)>, StoreError> {
    let entities = crate::store::query_partition(stores.tables.as_ref(), Table::Incoming, connection).await?;
    entities
        .into_iter()
        .map(|entity| {
            let value: Pending = crate::store::from_properties(entity.properties)?;
            Ok((entity.row_key, Versioned { value, etag: entity.etag }))
        })
        .collect()
}

/// What processing one message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    Landed(Landed),
    /// The delivery was processed before (a redelivered or replayed message).
    AlreadyDone,
    /// No such pending push (deleted by hand, or the message was made up).
    Unknown,
    /// The landing refused it for good: kept in quarantine.
    Quarantined(quarantine::Entry),
    /// It carried no document and TrueContext has none for it (404).
    Gone,
}

/// Why a document could not be fetched (the client's own error, kept whole).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// TrueContext has no such submission (404): retention expired, a passthrough form, or a
    /// push for an id it never had. Fetching again cannot help.
    #[error("TrueContext has no document for it: {0}")]
    Gone(TrueContextError),
    /// Anything else (unavailable, refused, the budget spent): worth another delivery.
    #[error(transparent)]
    Failed(TrueContextError),
    #[error("{}", crate::truecontext::MISSING_API_KEY)]
    NotConfigured,
}

/// Documents for pushes that did not carry them, through the one TrueContext client (its daily
/// budget, call cap and 402 stop included) with the credentials of the push's connection.
pub struct Documents<'a> {
    pub client: &'a TrueContextClient,
    /// `None` when `TRUECONTEXT_AUTH=basic` lacks its API key.
    pub credentials: Option<&'a Credentials<'a>>,
}

impl Documents<'_> {
    pub async fn document(&self, connection: &str, identifier: &str) -> Result<Vec<u8>, FetchError> {
        let credentials = self.credentials.ok_or(FetchError::NotConfigured)?;
        let slots = self.client.keep_slots();
        let document = self.client.document(credentials, connection, identifier).await;
        slots.give_back().await;
        match document {
            Ok(document) => Ok(document.bytes),
            Err(e @ TrueContextError::NotFound { .. }) => Err(FetchError::Gone(e)),
            Err(e) => Err(FetchError::Failed(e)),
        }
    }
}

/// Processes one stored push: lands it (fetching the document when the push lacks it), records
/// the delivery, removes the pending row.
pub async fn process(
    stores: &Stores,
    container: &str,
    landing: &Landing<'_>,
    documents: &Documents<'_>,
    push: &PushRef,
    alert_webhook: Option<&crate::config::AlertWebhook>,
) -> Result<Processed, WebhookError> {
    let done = TypedTable::new(stores.tables.as_ref(), Table::Deliveries);
    let table = TypedTable::new(stores.tables.as_ref(), Table::Incoming);
    let Some(pending) = table.get::<Pending>(&push.connection, &push.key).await? else {
        return Ok(if done.get::<Delivery>(&push.connection, &push.key).await?.is_some() {
            Processed::AlreadyDone
        } else {
            Processed::Unknown
        });
    };
    // No read of the delivery record here: a pending row and a delivery record exist together
    // only after a crash between the record and the row's delete, and landing the same body
    // again is harmless (unchanged, no event; an older version never replaces a newer one).
    // The read cost every landing one request for that rare case.
    let row = &pending.value;
    let Some(blob) = stores.blobs.get(container, &row.blob).await? else {
        return Err(WebhookError::BlobMissing(row.blob.clone()));
    };
    let Some((raw, order, prepared)) = document_to_land(landing, documents, push, row, &blob.content).await? else {
        // One call, not one per delivery: a push for an id TrueContext does not have (its body
        // stays under `incoming/`) once spent five calls of the day's budget on its way to the
        // poison queue. Were it only late, the sync lists it later.
        delete_pending(stores, &push.connection, &push.key).await?;
        return Ok(Processed::Gone);
    };
    let raw = raw.as_ref();
    let arrival = Arrival { connection: &push.connection, source: Source::Webhook, raw, order, processed_date: None };
    let landed = match landing.land_prepared(&arrival, prepared).await {
        Ok(landed) => landed,
        Err(e) if e.is_permanent() => {
            // It can never land as it is: kept in quarantine with the reason, and the push is
            // done (the quarantine row is its record now), so it is not retried into poison.
            let kept = quarantine::keep(landing, alert_webhook, &arrival, &row.identifier, &e).await?;
            delete_pending(stores, &push.connection, &push.key).await?;
            return Ok(Processed::Quarantined(kept));
        }
        Err(e) => return Err(e.into()),
    };
    let delivery = Delivery {
        identifier: row.identifier.clone(),
        sha256: row.sha256.clone(),
        received_at: row.received_at,
        processed_at: Utc::now(),
        outcome: landed.outcome,
        version: landed.version,
    };
    match done.insert(&push.connection, &push.key, &delivery).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    delete_pending(stores, &push.connection, &push.key).await?;
    Ok(Processed::Landed(landed))
}

/// What a stored push lands: the pushed document (read once, to tell whether it would replace
/// a landed version, and to land it when it does not) or, for a push without its document or
/// one that would replace a landed version, the version TrueContext serves now. TrueContext
/// retries a failed delivery for hours and re-executes one on request, so a push can arrive
/// after a newer version landed, and it does not say when its version was processed: one call,
/// and only when the content changed (a first push or a duplicate costs none); the fetch is
/// newer than the push. `None`: TrueContext has no such submission (404).
async fn document_to_land<'b>(
    landing: &Landing<'_>,
    documents: &Documents<'_>,
    push: &PushRef,
    row: &Pending,
    pushed_bytes: &'b [u8],
) -> Result<Option<(std::borrow::Cow<'b, [u8]>, DateTime<Utc>, Result<Prepared, LandingError>)>, WebhookError> {
    let pushed = match row.format.is_complete() {
        true => Some(landing.prepare(&push.connection, pushed_bytes).await),
        false => None,
    };
    let keep_pushed = match &pushed {
        Some(Ok(prepared)) => !landing.would_replace(&push.connection, prepared).await?,
        // Landing it gives the error (and the quarantine).
        Some(Err(_)) => true,
        None => false,
    };
    if let (true, Some(pushed)) = (keep_pushed, pushed) {
        return Ok(Some((std::borrow::Cow::Borrowed(pushed_bytes), row.received_at, pushed)));
    }
    let at = Utc::now();
    match documents.document(&push.connection, &row.identifier).await {
        Ok(fetched) => {
            let prepared = landing.prepare(&push.connection, &fetched).await;
            Ok(Some((std::borrow::Cow::Owned(fetched), at, prepared)))
        }
        Err(FetchError::Gone(reason)) => {
            tracing::warn!(connection = %push.connection, identifier = %row.identifier, reason = %reason,
                "a pushed submission's document is gone (404); nothing to land");
            Ok(None)
        }
        Err(e) => Err(WebhookError::Fetch(e)),
    }
}

async fn delete_pending(stores: &Stores, connection: &str, key: &str) -> Result<(), StoreError> {
    match stores.tables.delete(Table::Incoming, connection, key, IfMatch::Any).await {
        Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Notes a failed processing on the pending row; `poisoned` when it was the last delivery.
pub async fn record_failure(stores: &Stores, push: &PushRef, error: &str, poisoned: bool) -> Result<(), StoreError> {
    let table = TypedTable::new(stores.tables.as_ref(), Table::Incoming);
    let Some(current) = table.get::<Pending>(&push.connection, &push.key).await? else { return Ok(()) };
    // Poisoned stays poisoned until a replay says otherwise: a second message for the same
    // push (the recovery pass's) failing later must not hide the first one's poisoning.
    let row = Pending {
        attempts: current.value.attempts + 1,
        last_error: Some(crate::telemetry::redact(error).into_owned()),
        poisoned: poisoned || current.value.poisoned,
        ..current.value
    };
    match table.update(&push.connection, &push.key, &row, IfMatch::ETag(current.etag)).await {
        Ok(_) | Err(StoreError::NotFound { .. } | StoreError::PreconditionFailed { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Marks a poisoned push as queued again (`tcbridge poison replay`).
pub async fn mark_replayed(stores: &Stores, push: &PushRef) -> Result<(), StoreError> {
    let table = TypedTable::new(stores.tables.as_ref(), Table::Incoming);
    let Some(current) = table.get::<Pending>(&push.connection, &push.key).await? else { return Ok(()) };
    let row = Pending { poisoned: false, queued: true, queued_at: Some(Utc::now()), ..current.value };
    match table.update(&push.connection, &push.key, &row, IfMatch::ETag(current.etag)).await {
        Ok(_) | Err(StoreError::NotFound { .. } | StoreError::PreconditionFailed { .. }) => {}
        Err(e) => return Err(e),
    }
    // Its poisoned alert is over (and says so, where it went to the alert webhook).
    crate::alerts::clear_one(stores, Some(&push.connection), crate::alerts::AlertKind::PushPoisoned, &push.key).await
}

/// What status shows of the pushes still in hand.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Backlog {
    /// Stored and not yet processed (poisoned ones included).
    pub unprocessed: usize,
    pub poisoned_pending: usize,
    /// Stored, and possibly never queued: rows the recovery pass had to queue again (their
    /// message may never have gone out), and rows noted as not queued (written before the
    /// intake noted them queued up front).
    pub stranded: usize,
    pub oldest_unprocessed_at: Option<DateTime<Utc>>,
    pub oldest_unprocessed_age_seconds: Option<i64>,
    /// The oldest push still waiting to be processed (poisoned ones left out: they wait for an
    /// operator, and status says so apart).
    pub oldest_waiting_age_seconds: Option<i64>,
}

pub async fn backlog(stores: &Stores, connections: &[String]) -> Result<Backlog, StoreError> {
    let mut out = Backlog::default();
    let mut oldest_waiting: Option<DateTime<Utc>> = None;
    for connection in connections {
        for (_, row) in pending_of(stores, connection).await? {
            let row = row.value;
            out.unprocessed += 1;
            out.poisoned_pending += usize::from(row.poisoned);
            out.stranded += usize::from(!row.queued || row.requeues > 0);
            if out.oldest_unprocessed_at.is_none_or(|oldest| row.received_at < oldest) {
                out.oldest_unprocessed_at = Some(row.received_at);
            }
            if !row.poisoned && oldest_waiting.is_none_or(|oldest| row.received_at < oldest) {
                oldest_waiting = Some(row.received_at);
            }
        }
    }
    let age = |at: DateTime<Utc>| (Utc::now() - at).num_seconds().max(0);
    out.oldest_unprocessed_age_seconds = out.oldest_unprocessed_at.map(age);
    out.oldest_waiting_age_seconds = oldest_waiting.map(age);
    Ok(out)
}
