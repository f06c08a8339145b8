//! The incoming queue's message (`INCOMING_QUEUE_NAME`): one type, written by the intake (a
//! stored push) and by the first sync after consent, read by processing and the poison verbs.
//! On the wire: `{"kind": "push", "connection": ID, "key": "{id}.{sha256}"}` or
//! `{"kind": "sync", "connection": ID}`.

use serde::{Deserialize, Serialize};

use crate::naming::ConnectionId;

/// The queue message of one stored push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRef {
    pub connection: ConnectionId,
    /// `{id}.{sha256}`: the row of the `incoming` and `deliveries` tables.
    pub key: String,
}

impl PushRef {
    /// The submission's identifier (the key's part before the dot).
    pub fn submission(&self) -> Option<&str> {
        self.key.split_once('.').map(|(id, _)| id)
    }
}

/// One message on the incoming queue, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IncomingMessage {
    /// Sync this connection now (its first sync backfills `SYNC_BACKFILL_DAYS`).
    Sync { connection: ConnectionId },
    /// Land one stored push.
    Push(PushRef),
}

/// Why a message cannot be processed: it will never be, whatever the retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message {id} is not JSON: {reason}")]
    NotJson { id: String, reason: String },
    #[error(
        "message {id} is not a process message ({{\"kind\": \"sync\" or \"push\", \"connection\": ID, ...}}): {reason}"
    )]
    Shape { id: String, reason: String },
    #[error("message {id}: connection: {reason}")]
    Connection { id: String, reason: String },
    #[error("message {id}: key is not {{id}}.{{sha256}}")]
    Key { id: String },
}

impl IncomingMessage {
    /// Reads and checks a message body (`id` names it in errors): the connection is a valid
    /// id (a [`ConnectionId`] from here on), a push's key is `{record id}.{sha256}`.
    pub fn parse(id: &str, body: &str) -> Result<Self, MessageError> {
        let value: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| MessageError::NotJson { id: id.to_owned(), reason: e.to_string() })?;
        let connection = value.get("connection").and_then(serde_json::Value::as_str).map(ConnectionId::parse);
        let message: IncomingMessage = match serde_json::from_value(value) {
            Ok(message) => message,
            Err(_) if matches!(connection, Some(Err(_))) => {
                let reason = connection.and_then(Result::err).map(|e| e.to_string()).unwrap_or_default();
                return Err(MessageError::Connection { id: id.to_owned(), reason });
            }
            Err(e) => return Err(MessageError::Shape { id: id.to_owned(), reason: e.to_string() }),
        };
        if let IncomingMessage::Push(PushRef { key, .. }) = &message {
            let valid = key.split_once('.').is_some_and(|(record, sha)| {
                crate::naming::is_record_id(record) && sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())
            });
            if !valid {
                return Err(MessageError::Key { id: id.to_owned() });
            }
        }
        Ok(message)
    }

    /// The message body as it goes on the queue.
    pub fn to_body(&self) -> String {
        // A tagged enum of strings always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_shapes_are_the_ones_the_queue_already_holds() {
        let c1 = ConnectionId::parse("c1").unwrap();
        let push = IncomingMessage::Push(PushRef { connection: c1.clone(), key: format!("42.{}", "a".repeat(64)) });
        let body = push.to_body();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"kind": "push", "connection": "c1", "key": format!("42.{}", "a".repeat(64))})
        );
        assert_eq!(IncomingMessage::parse("m", &body).unwrap(), push);
        let sync = IncomingMessage::Sync { connection: c1 };
        assert_eq!(sync.to_body(), r#"{"kind":"sync","connection":"c1"}"#);
        assert_eq!(IncomingMessage::parse("m", &sync.to_body()).unwrap(), sync);
        assert!(matches!(IncomingMessage::parse("m", "{"), Err(MessageError::NotJson { .. })));
        assert!(matches!(
            IncomingMessage::parse("m", r#"{"kind":"push","connection":"c1","key":"42"}"#),
            Err(MessageError::Key { .. })
        ));
        assert!(matches!(
            IncomingMessage::parse("m", r#"{"kind":"sync","connection":"../x"}"#),
            Err(MessageError::Connection { .. })
        ));
    }
}
