//! `process`: the queue function. Its messages are work that must outlive the invocation that
//! asked for it (under the Functions host, a task left running after an answer may be frozen or
//! lost with the instance): today the first sync of a newly consented connection; the webhook's
//! pushed submissions join them.

use serde::{Deserialize, Serialize};

use super::sync::{pull, run_deadline};
use super::{App, InvocationError, QueueInput};
use crate::sync::RunOutcome;

/// One message on the incoming queue (`INCOMING_QUEUE_NAME`), tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProcessMessage {
    /// Sync this connection now (its first sync backfills `SYNC_BACKFILL_DAYS`).
    Sync { connection: String },
}

impl ProcessMessage {
    fn parse(input: &QueueInput) -> Result<Self, InvocationError> {
        let value: serde_json::Value = serde_json::from_str(&input.body)
            .map_err(|e| InvocationError::InvalidInput(format!("message {} is not JSON: {e}", input.id)))?;
        let message: ProcessMessage = serde_json::from_value(value).map_err(|e| {
            InvocationError::InvalidInput(format!(
                "message {} is not a process message ({{\"kind\": \"sync\", \"connection\": ID}}): {e}",
                input.id
            ))
        })?;
        let ProcessMessage::Sync { connection } = &message;
        crate::connections::validate_id(connection)
            .map_err(|e| InvocationError::InvalidInput(format!("message {}: connection: {e}", input.id)))?;
        Ok(message)
    }
}

/// Queues the first sync of `connection`. A failure is logged, not returned: the next timer
/// tick syncs the connection anyway.
pub async fn queue_first_sync(app: &App, connection: &str) -> bool {
    let message = ProcessMessage::Sync { connection: connection.to_owned() };
    let body = serde_json::to_string(&message).expect("a message serialises");
    let queue = &app.settings.queues.incoming;
    match app.stores.queues.enqueue(queue, &body, std::time::Duration::ZERO).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(connection, error = %e, "the first sync could not be queued; the next timer run syncs it");
            false
        }
    }
}

pub async fn run(app: &App, input: QueueInput) -> Result<(), InvocationError> {
    match ProcessMessage::parse(&input)? {
        ProcessMessage::Sync { connection } => sync(app, &connection).await,
    }
}

/// A transient stop is returned as a failure, so the queue delivers the message again later;
/// any other stop is final for this message (status and alerts say why, and the timer tries
/// again on its schedule).
async fn sync(app: &App, connection: &str) -> Result<(), InvocationError> {
    // Inside the message's visibility too (a minute at least), so it is not handed out again
    // while it runs; a redelivery would find the lease held and end at once anyway.
    let visibility = app.settings.queues.visibility_timeout;
    let visible_again =
        visibility.saturating_sub(std::time::Duration::from_secs(30)).max(std::time::Duration::from_secs(60));
    let deadline = run_deadline(app).min(tokio::time::Instant::now() + visible_again);
    match pull(app, connection, None, deadline).await? {
        RunOutcome::Busy => Ok(()),
        RunOutcome::Ran(summary) => match summary.stopped_class.as_deref() {
            // A deadline stop is not a failure: the timer resumes the window.
            Some("transient" | "store" | "landing" | "unstable") => Err(InvocationError::Unavailable(format!(
                "the sync of {connection} stopped: {}",
                summary.stopped_reason.unwrap_or_default()
            ))),
            _ => Ok(()),
        },
    }
}
