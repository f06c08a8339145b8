//! The operator's verbs on a connection: disable, enable, delete. They live with the token
//! lifecycle because each must agree with a refresh that may be running on another instance:
//! disable and enable change only the state, under If-Match, so a refresh that lands meanwhile
//! keeps them; delete takes the connection's refresh lease first, so no refresh can write a new
//! token-set version after the secret is gone.

use std::time::Duration;

use serde::Serialize;

use super::{Subject, TokenError, Tokens};
use crate::connections::{Connection, ConnectionState};
use crate::store::{lease, IfMatch, StoreError, Table};

/// What `delete` removed, for the operator's record.
#[derive(Debug, Serialize)]
pub struct Deleted {
    pub connection: String,
    pub account: String,
    /// The secret-store entry of the token set (every version of it).
    pub secret: String,
    /// False when the entry was already gone.
    pub secret_existed: bool,
}

impl Tokens<'_> {
    /// Turns a consented connection off (`enable == false`: no sync, no refresh, no pushes
    /// accepted for it) or back on. Returns the state it had before.
    pub async fn set_enabled(&self, connection: &str, enable: bool) -> Result<ConnectionState, TokenError> {
        let subject = self.consented(connection)?;
        let record = self.load(&subject).await?;
        let before = record.value.state;
        let now = self.now();
        self.update_record(&subject, record, |c| {
            match (enable, c.state) {
                (false, ConnectionState::Disabled) | (true, ConnectionState::Active | ConnectionState::NeedsReauth) => {
                    return false
                }
                (false, _) => {
                    c.state = ConnectionState::Disabled;
                    c.reason = Some(format!("disabled by an operator at {}", now.format("%Y-%m-%d %H:%M UTC")));
                }
                // Back to active; a grant that died meanwhile shows at its next refresh.
                (true, _) => {
                    c.state = ConnectionState::Active;
                    c.reason = None;
                    c.retry_not_before = None;
                }
            }
            true
        })
        .await?;
        self.service.forget(connection);
        Ok(before)
    }

    /// Deletes a consented connection: its token set (every version, from the secret store),
    /// then its record and its alerts. Its landed submissions and sync cursor stay: they are
    /// data, not credentials, and a new consent under the same id continues from the cursor.
    pub async fn delete(&self, connection: &str) -> Result<Deleted, TokenError> {
        let subject = self.consented(connection)?;
        let record = self.load(&subject).await?;
        let held = self.refresh_lease(&subject).await?;
        let result = self.delete_holding(&subject, record.value).await;
        if let Err(e) = lease::release(self.stores.tables.as_ref(), held).await {
            tracing::warn!(connection, error = %e, "the refresh lease could not be released; it expires by itself");
        }
        result
    }

    async fn delete_holding(&self, subject: &Subject, record: Connection) -> Result<Deleted, TokenError> {
        // The secret first: a record without its secret only needs re-consent, a secret without
        // its record would be a credential nobody knows is there.
        let secret = record.token_set_secret.clone();
        let secret_existed = match self.stores.secrets.delete(&secret).await {
            Ok(()) => true,
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        match self.stores.tables.delete(Table::Connections, subject.partition, &subject.id, IfMatch::Any).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.service.forget(&subject.id);
        if let Err(e) = crate::alerts::clear_connection(self.stores, &subject.id).await {
            tracing::warn!(connection = %subject.id, error = %e, "the deleted connection's alerts could not be cleared");
        }
        tracing::info!(connection = %subject.id, "connection deleted with its token set");
        Ok(Deleted {
            connection: subject.id.clone(),
            account: record.display_account().to_owned(),
            secret,
            secret_existed,
        })
    }

    /// The verbs act on consented connections only: the app-only one exists from configuration.
    fn consented(&self, connection: &str) -> Result<Subject, TokenError> {
        let subject = self.subject(connection)?;
        if subject.app_only {
            return Err(TokenError::InvalidConnection(
                "the app-only connection exists from configuration (OAUTH_GRANT=client_credentials); change the \
                 configuration to stop it"
                    .into(),
            ));
        }
        Ok(subject)
    }

    /// Waits for a running refresh to finish (at most its lease's time-to-live) and holds the lease.
    async fn refresh_lease(&self, subject: &Subject) -> Result<lease::Lease, TokenError> {
        let ttl = self.settings.refresh_lease;
        let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(5);
        loop {
            let name = subject.lease_name();
            if let Some(held) = lease::acquire(self.stores.tables.as_ref(), &name, &self.service.holder, ttl).await? {
                return Ok(held);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TokenError::Busy(subject.id.clone()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
