//! The poison queue (`<incoming queue>-poison`): messages that failed on every allowed delivery.
//! `tcbridge poison list` shows them with the error their push recorded; `tcbridge poison
//! replay` puts them back on the incoming queue once the cause is fixed.
//!
//! Queues cannot be read without taking messages, so both take every poison message for a
//! short while: listing hands each back at once; a replay enqueues the chosen ones on the
//! incoming queue before deleting them from the poison queue (a crash in between replays one
//! twice, which processing makes harmless, and never loses one).

use std::time::Duration;

use serde::Serialize;

use crate::handlers::App;
use crate::store::{QueueMessage, StoreError};
use crate::webhook::{IncomingMessage, Pending, PushRef};

/// How long a listed or replayed message is held while this command works.
const HOLD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct Poisoned {
    /// The queue message id (what `replay ID` takes, as does the submission id).
    pub id: String,
    pub inserted_at: chrono::DateTime<chrono::Utc>,
    pub kind: String,
    pub connection: Option<String>,
    pub submission: Option<String>,
    pub attempts: Option<u32>,
    pub last_error: Option<String>,
}

pub fn poison_queue(app: &App) -> String {
    format!("{}-poison", app.settings.queues.incoming)
}

/// Every message in the poison queue, each handed back at once.
pub async fn list(app: &App) -> Result<Vec<Poisoned>, StoreError> {
    let queue = poison_queue(app);
    let taken = take_all(app, &queue).await?;
    let mut out = Vec::new();
    for message in &taken {
        out.push(describe(app, message).await?);
    }
    give_back(app, &queue, &taken).await;
    Ok(out)
}

/// Moves the poison messages that `target` names (a message id or a submission id; `None`:
/// all) back to the incoming queue. Returns what was replayed.
pub async fn replay(app: &App, target: Option<&str>) -> Result<Vec<Poisoned>, StoreError> {
    let queue = poison_queue(app);
    let taken = take_all(app, &queue).await?;
    let mut replayed = Vec::new();
    let mut untouched = Vec::new();
    for message in taken {
        let described = describe(app, &message).await?;
        let chosen = target.is_none_or(|t| described.id == t || described.submission.as_deref() == Some(t));
        if !chosen {
            untouched.push(message);
            continue;
        }
        app.stores.queues.enqueue(&app.settings.queues.incoming, &message.body, Duration::ZERO).await?;
        if let Some(push) = push_of(&message) {
            crate::webhook::mark_replayed(&app.stores, &push).await?;
        }
        match app.stores.queues.delete_message(&queue, &message.id, &message.pop_receipt).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(id = %message.id, submission = ?described.submission, "poisoned message replayed");
        replayed.push(described);
    }
    give_back(app, &queue, &untouched).await;
    Ok(replayed)
}

async fn take_all(app: &App, queue: &str) -> Result<Vec<QueueMessage>, StoreError> {
    let mut all = Vec::new();
    loop {
        let batch = app.stores.queues.dequeue(queue, 32, HOLD).await?;
        if batch.is_empty() {
            return Ok(all);
        }
        all.extend(batch);
    }
}

/// Makes messages visible again now (if that fails they reappear when their hold ends).
async fn give_back(app: &App, queue: &str, messages: &[QueueMessage]) {
    for message in messages {
        if let Err(e) = app.stores.queues.set_visibility(queue, &message.id, &message.pop_receipt, Duration::ZERO).await
        {
            tracing::debug!(id = %message.id, error = %e, "a poison message stays hidden until its hold ends");
        }
    }
}

fn push_of(message: &QueueMessage) -> Option<PushRef> {
    // As stored, unchecked: a poisoned message is shown and replayed whatever it holds.
    match serde_json::from_str::<IncomingMessage>(&message.body).ok()? {
        IncomingMessage::Push(push) => Some(push),
        IncomingMessage::Sync { .. } => None,
    }
}

async fn describe(app: &App, message: &QueueMessage) -> Result<Poisoned, StoreError> {
    let parsed = serde_json::from_str::<IncomingMessage>(&message.body).ok();
    let mut out = Poisoned {
        id: message.id.clone(),
        inserted_at: message.inserted_at,
        kind: "unreadable".into(),
        connection: None,
        submission: None,
        attempts: None,
        last_error: None,
    };
    match parsed {
        Some(IncomingMessage::Sync { connection }) => {
            out.kind = "sync".into();
            out.connection = Some(connection.to_string());
        }
        Some(IncomingMessage::Push(push)) => {
            out.kind = "push".into();
            out.submission = push.submission().map(str::to_owned);
            let PushRef { connection, key } = push;
            let table = crate::store::TypedTable::new(app.stores.tables.as_ref(), crate::store::Table::Incoming);
            if let Some(row) = table.get::<Pending>(&connection, &key).await? {
                out.attempts = Some(row.value.attempts);
                out.last_error = row.value.last_error;
            }
            out.connection = Some(connection.to_string());
        }
        None => {}
    }
    Ok(out)
}
