//! What a refresh leaves behind: on success one new secret version and the record moved to it
//! (never over a newer generation); on failure the failure recorded on the record, with the
//! alert it calls for.

use std::time::Duration;

use super::classify::{self, Failure, FailureClass};
use super::{token_from_set, usable, AccessToken, Subject, TokenError, TokenSource, Tokens, Want, FAILING_ALERT_AFTER};
use crate::alerts::{self, Alert, AlertKind};
use crate::clock::delta;
use crate::connections::{Connection, ConnectionState, TokenSet};
use crate::oauth::token::TokenResponse;
use crate::secret::SecretString;
use crate::store::{IfMatch, StoreError, Table, TypedTable, Versioned};

/// Tries for the one secret-store write that keeps a rotated refresh token (about 15 s).
const SECRET_WRITE_TRIES: u32 = 5;
/// Key Vault takes values up to 25 KB.
const MAX_SECRET_CHARS: usize = 24 * 1024;
/// The alerts a successful refresh ends.
const REFRESH_ALERTS: [AlertKind; 4] = [
    AlertKind::ConnectionNeedsReauth,
    AlertKind::TokenRefreshRejected,
    AlertKind::TokenRefreshFailing,
    AlertKind::TokenSetNotStored,
];

impl Tokens<'_> {
    pub(super) async fn record_success(
        &self,
        subject: &Subject,
        record: Versioned<Connection>,
        current: TokenSet,
        mut tokens: TokenResponse,
    ) -> Result<AccessToken, TokenError> {
        let now = self.now();
        let margin = self.settings.refresh_margin;
        let rotated = tokens.refresh_token.is_some();
        let assumed = tokens.expires_in_assumed;
        let scopes = match tokens.scope.take() {
            Some(scopes) => scopes,
            None if current.scopes.is_empty() => record.value.scopes.clone(),
            None => current.scopes.clone(),
        };
        let generation = current.generation.max(record.value.token_generation) + 1;
        let supersedes = record.value.token_set_version.clone();
        let token_set = TokenSet::from_refresh(generation, tokens, current, scopes, now, margin, supersedes);
        let had_trouble = record.value.last_error.is_some() || record.value.consecutive_failures > 0;
        let persisted = self
            .persist(subject, record.clone(), &token_set, |c| {
                c.expires_in_assumed = assumed;
                c.last_refresh_success = Some(now);
                c.consecutive_failures = 0;
                c.retry_not_before = None;
                c.last_error_class = None;
                c.last_error = None;
            })
            .await;
        match persisted {
            Ok(true) => {}
            Ok(false) => {
                // A newer token set (a re-consent, maybe of another account) was stored while we
                // refreshed the old grant: it stays in force, and its token is the one to use.
                tracing::warn!(connection = %subject.id, "a newer token set was stored while refreshing; it stays in force");
                let newer = self.load(subject).await?;
                usable(&newer.value)?;
                return self
                    .shared(subject, &newer.value, Want::Usable)
                    .await?
                    .ok_or(TokenError::Busy(subject.id.clone()));
            }
            Err(e) => {
                let failure = Failure::new(FailureClass::Transient, "token_set_not_stored", &e.to_string());
                return Err(self.record_failure(subject, record, failure).await);
            }
        }
        if had_trouble {
            self.clear_alerts(subject).await;
        }
        tracing::info!(connection = %subject.id, generation = token_set.generation, rotated,
            expires_at = %token_set.expires_at.unwrap_or(now), "access token refreshed");
        Ok(token_from_set(&subject.id, &token_set, TokenSource::TokenEndpoint, assumed)
            .expect("a refreshed token set has an access token"))
    }

    /// Keeps a refresh token that came back with an answer we could not use (the server may
    /// have rotated, so the one we sent is spent).
    pub(super) async fn keep_rotated(
        &self,
        subject: &Subject,
        record: Versioned<Connection>,
        current: &TokenSet,
        rotated: SecretString,
    ) -> Versioned<Connection> {
        let generation = current.generation.max(record.value.token_generation) + 1;
        let supersedes = record.value.token_set_version.clone();
        let token_set =
            TokenSet::refresh_token_only(generation, rotated, current.scopes.clone(), self.now(), supersedes);
        match self.persist(subject, record.clone(), &token_set, |_| {}).await {
            Ok(_) => self.load(subject).await.unwrap_or(record),
            Err(e) => {
                tracing::error!(connection = %subject.id, error = %e, "a rotated refresh token could not be stored");
                record
            }
        }
    }

    /// Stores `token_set` as a new secret version, then moves the record to it under If-Match —
    /// unless another writer moved it to a newer generation meanwhile (`Ok(false)`; the secret
    /// version stays unused). `extra` adds what else the record should say.
    async fn persist(
        &self,
        subject: &Subject,
        record: Versioned<Connection>,
        token_set: &TokenSet,
        extra: impl Fn(&mut Connection),
    ) -> Result<bool, TokenError> {
        let base_generation = record.value.token_generation;
        let version = self.store_set(subject, &record.value.token_set_secret, token_set).await?;
        let written = self
            .update_record(subject, record, |c| {
                if c.token_generation != base_generation {
                    return false;
                }
                c.token_set_version = Some(version.clone());
                c.token_generation = token_set.generation;
                c.access_token_expires_at = token_set.expires_at;
                c.refresh_at = token_set.refresh_at;
                if !token_set.scopes.is_empty() {
                    c.scopes = token_set.scopes.clone();
                }
                extra(c);
                true
            })
            .await;
        match written {
            Ok(written) => Ok(written),
            Err(e) => {
                // The secret holds the new set; the next refresh adopts it (`current_set`).
                tracing::error!(connection = %subject.id, error = %e, "the connection record could not be updated after a refresh");
                Ok(true)
            }
        }
    }

    /// The one secret write of a refresh. With a rotating server the old refresh token is
    /// already spent, so this is retried (the lease is kept meanwhile) before giving up. A set
    /// too large for Key Vault is stored without its access token (other instances then
    /// refresh for themselves, but the refresh token is never dropped).
    async fn store_set(&self, subject: &Subject, name: &str, token_set: &TokenSet) -> Result<String, TokenError> {
        let mut value = token_set.to_secret();
        if value.expose().len() > MAX_SECRET_CHARS {
            tracing::warn!(connection = %subject.id, "the token set is too large for the secret store; storing it without the access token");
            value = token_set.without_access_token().to_secret();
        }
        let mut tries = 0;
        loop {
            tries += 1;
            match self.stores.secrets.set(name, &value).await {
                Ok(version) => return Ok(version),
                Err(e) if tries < SECRET_WRITE_TRIES && !matches!(e, StoreError::Invalid { .. }) => {
                    tracing::warn!(connection = %subject.id, error = %e, "storing the new token set failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(tries))).await;
                }
                Err(e) => {
                    tracing::error!(connection = %subject.id, error = %e,
                        "the new token set could not be stored; the refresh token it carries is lost");
                    let alert = Alert::new(
                        AlertKind::TokenSetNotStored,
                        Some(&subject.id),
                        "store",
                        "secret_write",
                        &e.to_string(),
                    );
                    if let Err(e) = alerts::raise(self.stores, self.settings.alert_webhook.as_ref(), alert).await {
                        tracing::error!(connection = %subject.id, error = %e, "an alert could not be recorded");
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Applies `change` to the record under If-Match, re-reading and re-applying when another
    /// writer got there first. `change` returns false to leave the record as it is.
    pub(super) async fn update_record(
        &self,
        subject: &Subject,
        mut record: Versioned<Connection>,
        mut change: impl FnMut(&mut Connection) -> bool,
    ) -> Result<bool, TokenError> {
        let table = TypedTable::new(self.stores.tables.as_ref(), Table::Connections);
        for _ in 0..5 {
            let mut value = record.value.clone();
            if !change(&mut value) {
                return Ok(false);
            }
            match table.update(subject.partition, &subject.id, &value, IfMatch::ETag(record.etag.clone())).await {
                Ok(_) => return Ok(true),
                Err(StoreError::PreconditionFailed { .. }) => record = self.load(subject).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TokenError::Busy(subject.id.clone()))
    }

    /// Records a failed refresh on the connection and raises what must be raised; returns the
    /// error for the caller.
    pub(super) async fn record_failure(
        &self,
        subject: &Subject,
        record: Versioned<Connection>,
        failure: Failure,
    ) -> TokenError {
        let now = self.now();
        let was_active = record.value.state == ConnectionState::Active;
        let base_generation = record.value.token_generation;
        let mut failures = 0;
        let mut until = now;
        let updated = self
            .update_record(subject, record, |c| {
                // A re-consent landed meanwhile: this failure was the old grant's, not its.
                if c.token_generation != base_generation {
                    return false;
                }
                c.last_refresh_failure = Some(now);
                c.consecutive_failures = c.consecutive_failures.saturating_add(1);
                c.last_error_class = Some(failure.class.name().to_owned());
                c.last_error = Some(failure.reason.clone());
                if failure.class == FailureClass::Reauth {
                    // An operator's `disable` stands: the connection stays disabled.
                    if c.state != ConnectionState::Disabled {
                        c.state = ConnectionState::NeedsReauth;
                    }
                    c.reason = Some(failure.reason.clone());
                    c.retry_not_before = None;
                } else {
                    until = now + delta(classify::pause(&failure, c.consecutive_failures));
                    c.retry_not_before = Some(until);
                }
                failures = c.consecutive_failures;
                true
            })
            .await;
        if let Err(e) = &updated {
            tracing::error!(connection = %subject.id, error = %e, "the refresh failure could not be recorded");
        }
        let recorded = matches!(updated, Ok(true));
        tracing::warn!(connection = %subject.id, class = failure.class.name(), error_code = %failure.code,
            reason = %failure.reason, consecutive_failures = failures, "access token refresh failed");
        let alert = match updated {
            Ok(false) => None,
            _ => failure_alert(&subject.id, &failure, was_active && recorded, failures),
        };
        if let Some(alert) = alert {
            if let Err(e) = alerts::raise(self.stores, self.settings.alert_webhook.as_ref(), alert).await {
                tracing::error!(connection = %subject.id, error = %e, "an alert could not be recorded");
            }
        }
        let connection = subject.id.clone();
        let reason = failure.reason;
        match failure.class {
            FailureClass::Reauth => TokenError::NeedsReauth { connection, reason },
            FailureClass::AppCredentials => TokenError::AppCredentials { reason },
            FailureClass::Rejected => TokenError::Rejected { connection, reason, retry_not_before: until },
            FailureClass::Transient | FailureClass::LoopDetected => {
                TokenError::Unavailable { connection, reason, retry_not_before: until }
            }
        }
    }

    /// After a successful refresh: the refresh alerts of this connection are over, and so are
    /// app-level ones (the app's credentials just worked). Others (a B2C deadline) stay.
    async fn clear_alerts(&self, subject: &Subject) {
        let stores = self.stores;
        let cleared = match alerts::clear_connection_named(stores, &subject.id, &REFRESH_ALERTS).await {
            Ok(()) => alerts::clear_app(stores).await,
            Err(e) => Err(e),
        };
        if let Err(e) = cleared {
            tracing::warn!(connection = %subject.id, error = %e, "alerts could not be cleared after a recovery");
        }
    }
}

/// The alert a refresh failure raises, if any: a connection that needed re-consent while
/// active (`newly_needs_reauth`), the app's credential refused, a refusal, or transient
/// failures past [`FAILING_ALERT_AFTER`] in a row.
fn failure_alert(connection: &str, failure: &Failure, newly_needs_reauth: bool, failures: u32) -> Option<Alert> {
    let (kind, connection, code) = match failure.class {
        FailureClass::Reauth if newly_needs_reauth => {
            (AlertKind::ConnectionNeedsReauth, Some(connection), failure.code.as_str())
        }
        FailureClass::AppCredentials => (AlertKind::AppCredentialsRejected, None, failure.code.as_str()),
        FailureClass::Rejected | FailureClass::LoopDetected => {
            (AlertKind::TokenRefreshRejected, Some(connection), failure.code.as_str())
        }
        FailureClass::Transient if failures >= FAILING_ALERT_AFTER => {
            (AlertKind::TokenRefreshFailing, Some(connection), "transient")
        }
        _ => return None,
    };
    Some(Alert::new(kind, connection, failure.class.name(), code, &failure.reason))
}
