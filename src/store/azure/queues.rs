//! Queue storage with `azure_storage_queue` 1.x (incoming submissions, poison queue).
//!
//! Message bodies go on the wire base64-encoded: that is what the Functions queue trigger
//! reads by default (extension bundle v4, `messageEncoding: base64`), so a message we enqueue
//! can start a queue-triggered function. Dequeue decodes them again. Messages never expire
//! (`messagettl=-1`), as in the embedded store; Azure's default would drop them after 7 days.
//!
//! Authentication, retries and error mapping are shared with the blob store (`service.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::headers::HeaderName;
use azure_storage_queue::models::{
    QueueClientGetPropertiesResultHeaders, QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions,
    QueueMessage as WireMessage,
};
use azure_storage_queue::{QueueClient, QueueServiceClient, QueueServiceClientOptions};
use base64::Engine;
use chrono::{DateTime, Utc};

use super::connection::StorageAccount;
use super::service::{backend_error, client_setup, error_code, service_root, status, without_url_queries, Service};
use crate::store::*;

/// Azure's ceiling for a visibility timeout or an enqueue delay: 7 days.
const MAX_VISIBILITY_SECS: u64 = 7 * 24 * 3600;
/// Azure hands out at most 32 messages per call.
const MAX_DEQUEUE: usize = 32;
const POP_RECEIPT: HeaderName = HeaderName::from_static("x-ms-popreceipt");

pub struct AzureQueues {
    service: QueueServiceClient,
    account: String,
}

impl AzureQueues {
    /// `credential` is used (and required) when the account is reached with a managed identity;
    /// keyed and SAS accounts ignore it.
    pub fn new(account: &StorageAccount, credential: Option<Arc<dyn TokenCredential>>) -> StoreResult<Self> {
        Self::with_transport(account, credential, None)
    }

    /// As [`Self::new`], over `transport` instead of the SDK's own HTTP client.
    pub fn with_transport(
        account: &StorageAccount,
        credential: Option<Arc<dyn TokenCredential>>,
        transport: Option<azure_core::http::Transport>,
    ) -> StoreResult<Self> {
        let (credential, client_options) = client_setup(account, credential, Service::Queue, transport)?;
        let options = QueueServiceClientOptions { client_options, ..Default::default() };
        let service =
            QueueServiceClient::new(service_root(&account.queue), credential, Some(options)).map_err(|e| {
                StoreError::Backend(format!(
                    "cannot set up the Queue storage client: {}",
                    without_url_queries(&e.to_string())
                ))
            })?;
        Ok(Self { service, account: account.name.clone() })
    }

    fn queue(&self, queue: &str) -> StoreResult<QueueClient> {
        self.service.queue_client(queue).map_err(|e| self.error(&e, &format!("queue {queue}")))
    }

    fn error(&self, error: &azure_core::Error, what: &str) -> StoreError {
        backend_error(Service::Queue, &self.account, error, what)
    }

    async fn create_queue(&self, queue: &str) -> StoreResult<()> {
        match self.queue(queue)?.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("QueueAlreadyExists") => Ok(()),
            Err(e) => Err(self.error(&e, &format!("queue {queue}"))),
        }
    }

    async fn send(&self, client: &QueueClient, encoded: &str, delay_secs: i32) -> azure_core::Result<String> {
        let message = WireMessage { message_text: Some(encoded.to_owned()) };
        let options = QueueClientSendMessageOptions {
            visibility_timeout: Some(delay_secs),
            message_time_to_live: Some(-1),
            ..Default::default()
        };
        let sent = client.send_message(message.try_into()?, Some(options)).await?.into_model()?.into_message()?;
        Ok(sent.message_id.unwrap_or_default())
    }
}

/// Whole seconds, rounded up (a message must not reappear early), within Azure's 7 days.
fn seconds(field: &'static str, d: Duration) -> StoreResult<i32> {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if secs > MAX_VISIBILITY_SECS {
        return Err(StoreError::invalid(field, "Azure Queue storage allows at most 7 days"));
    }
    Ok(secs as i32)
}

fn message_name(queue: &str, id: &str) -> String {
    format!("message {id} with that pop receipt in {queue}")
}

/// Message ids are GUIDs; anything else cannot name a message and must not reach the URL path.
fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A stale or made-up pop receipt, or a message (or queue) that is gone. Azure answers 404
/// `MessageNotFound` for a message that is gone and 400 `PopReceiptMismatch` for a receipt
/// that is no longer current; a receipt that is not even well-formed is 400
/// `InvalidQueryParameterValue` (the receipt is the only query parameter these calls send).
fn is_gone(error: &azure_core::Error) -> bool {
    match status(error) {
        Some(404) => true,
        Some(400) => matches!(error_code(error), Some("PopReceiptMismatch" | "InvalidQueryParameterValue")),
        _ => false,
    }
}

fn to_chrono(t: Option<azure_core::time::OffsetDateTime>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())).unwrap_or_default()
}

/// The body as we stored it (base64 of UTF-8). Text that is not ours (plain text from another
/// writer) comes back as it is rather than blocking the queue.
fn decode_body(text: String) -> String {
    match base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map(String::from_utf8) {
        Ok(Ok(body)) => body,
        _ => {
            tracing::warn!("a queue message is not base64 of UTF-8 text; handing it over undecoded");
            text
        }
    }
}

#[async_trait]
impl QueueStore for AzureQueues {
    async fn enqueue(&self, queue: &str, body: &str, delay: Duration) -> StoreResult<String> {
        validate_container_name("queue name", queue)?;
        if body.len() > MAX_QUEUE_MESSAGE_BYTES {
            return Err(StoreError::invalid(
                "queue message",
                format!("{} bytes is over the {} KiB limit", body.len(), MAX_QUEUE_MESSAGE_BYTES / 1024),
            ));
        }
        let delay = seconds("enqueue delay", delay)?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(body.as_bytes());
        let client = self.queue(queue)?;
        let mut result = self.send(&client, &encoded, delay).await;
        if matches!(&result, Err(e) if error_code(e) == Some("QueueNotFound")) {
            self.create_queue(queue).await?;
            result = self.send(&client, &encoded, delay).await;
        }
        result.map_err(|e| self.error(&e, &format!("a new message in queue {queue}")))
    }

    async fn dequeue(&self, queue: &str, max: usize, visibility: Duration) -> StoreResult<Vec<QueueMessage>> {
        validate_container_name("queue name", queue)?;
        // Azure takes 1 s to 7 days here (0 is refused).
        let visibility = seconds("visibility timeout", visibility)?.max(1);
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(max.clamp(1, MAX_DEQUEUE) as i32),
            visibility_timeout: Some(visibility),
            ..Default::default()
        };
        let received = match self.queue(queue)?.receive_messages(Some(options)).await {
            Ok(response) => response.into_model().map_err(|e| self.error(&e, &format!("messages from {queue}")))?,
            // A queue never written to has nothing to hand out.
            Err(e) if error_code(&e) == Some("QueueNotFound") => return Ok(Vec::new()),
            Err(e) => return Err(self.error(&e, &format!("messages from queue {queue}"))),
        };
        Ok(received
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|m| QueueMessage {
                id: m.message_id.unwrap_or_default(),
                pop_receipt: m.pop_receipt.unwrap_or_default(),
                dequeue_count: m.dequeue_count.unwrap_or(1).clamp(0, i64::from(u32::MAX)) as u32,
                inserted_at: to_chrono(m.insertion_time),
                body: decode_body(m.message_text.unwrap_or_default()),
            })
            .collect())
    }

    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StoreResult<()> {
        validate_container_name("queue name", queue)?;
        if !plausible_id(id) || pop_receipt.is_empty() {
            return Err(StoreError::NotFound { what: message_name(queue, id) });
        }
        match self.queue(queue)?.delete_message(id, pop_receipt, None).await {
            Ok(_) => Ok(()),
            Err(e) if is_gone(&e) => Err(StoreError::NotFound { what: message_name(queue, id) }),
            Err(e) => Err(self.error(&e, &message_name(queue, id))),
        }
    }

    async fn set_visibility(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
    ) -> StoreResult<String> {
        validate_container_name("queue name", queue)?;
        let visibility = seconds("visibility timeout", visibility)?;
        if !plausible_id(id) || pop_receipt.is_empty() {
            return Err(StoreError::NotFound { what: message_name(queue, id) });
        }
        match self.queue(queue)?.update_message(id, pop_receipt, visibility, None).await {
            Ok(response) => match response.headers().get_optional_str(&POP_RECEIPT) {
                Some(receipt) => Ok(receipt.to_owned()),
                None => Err(StoreError::Backend(format!(
                    "Queue storage did not return a new pop receipt for {}",
                    message_name(queue, id)
                ))),
            },
            Err(e) if is_gone(&e) => Err(StoreError::NotFound { what: message_name(queue, id) }),
            Err(e) => Err(self.error(&e, &message_name(queue, id))),
        }
    }

    async fn len(&self, queue: &str) -> StoreResult<usize> {
        validate_container_name("queue name", queue)?;
        match self.queue(queue)?.get_properties(None).await {
            Ok(response) => {
                let count = response
                    .approximate_messages_count()
                    .map_err(|e| self.error(&e, &format!("the length of queue {queue}")))?;
                Ok(count.unwrap_or(0).max(0) as usize)
            }
            // HEAD has no body, so the code is in x-ms-error-code (or absent): any 404 here is
            // the queue itself missing, which holds no messages.
            Err(e) if status(&e) == Some(404) => Ok(0),
            Err(e) => Err(self.error(&e, &format!("the length of queue {queue}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_rounds_up_to_whole_seconds_within_seven_days() {
        assert_eq!(seconds("v", Duration::ZERO).unwrap(), 0);
        assert_eq!(seconds("v", Duration::from_millis(1)).unwrap(), 1);
        assert_eq!(seconds("v", Duration::from_millis(1300)).unwrap(), 2);
        assert_eq!(seconds("v", Duration::from_secs(MAX_VISIBILITY_SECS)).unwrap(), 604_800);
        assert!(matches!(seconds("v", Duration::from_secs(MAX_VISIBILITY_SECS + 1)), Err(StoreError::Invalid { .. })));
    }

    #[test]
    fn bodies_decode_from_base64_and_foreign_text_passes_through() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("ünï ✓\n{}");
        assert_eq!(decode_body(encoded), "ünï ✓\n{}");
        assert_eq!(decode_body("plain text, not base64".into()), "plain text, not base64");
        assert_eq!(decode_body(String::new()), "");
    }
}
