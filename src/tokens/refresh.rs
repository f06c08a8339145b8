//! The refresh itself: under the connection's lease, with everything read again, one
//! token-endpoint call (a few in-call retries for short transient failures), never with a
//! refresh token read before the lease was held.

use std::time::Duration;

use super::classify::{self, Failure, FailureClass};
use super::{store_failure, usable, AccessToken, Subject, TokenError, Tokens, Want};
use crate::connections::{Connection, TokenSet};
use crate::oauth::provider::Provider;
use crate::oauth::token::{request_tokens, ClientAuth, EndpointError, TokenRequest, TokenResponse};
use crate::secret::SecretString;
use crate::store::{lease, Versioned};

/// Inside one call, a transient failure is retried only when the wait is at most this.
const MAX_IN_CALL_WAIT: Duration = Duration::from_secs(5);
/// At most this many token-endpoint attempts per call.
const MAX_ATTEMPTS: u32 = 3;

enum Leased {
    Lease(lease::Lease),
    Token(AccessToken),
}

enum Prepared {
    /// The lease's previous holder obtained what we want meanwhile.
    Token(AccessToken),
    Refresh(Box<Ready>),
}

/// What a refresh request is made from, read under the lease.
struct Ready {
    record: Versioned<Connection>,
    current: TokenSet,
    provider: std::sync::Arc<Provider>,
}

impl Tokens<'_> {
    pub(super) async fn obtain(&self, subject: &Subject, want: Want) -> Result<AccessToken, TokenError> {
        let record = self.load(subject).await?;
        usable(&record.value)?;
        if let Some(token) = self.shared(subject, &record.value, want).await? {
            return Ok(token);
        }
        self.not_blocked(&record.value)?;
        let held = match self.take_lease(subject, want).await? {
            Leased::Token(token) => return Ok(token),
            Leased::Lease(held) => held,
        };
        // Renewed in the background until the refresh is recorded, however long that takes.
        let keeper = lease::Keeper::keep(self.stores.tables.clone(), held, self.settings.refresh_lease);
        let result = self.refresh_holding(subject, want, &keeper).await;
        if let Some(held) = keeper.finish().await {
            if let Err(e) = lease::release(self.stores.tables.as_ref(), held).await {
                // It expires by itself; only the next refresh of this connection can be delayed.
                tracing::warn!(connection = %subject.id, error = %e, "the refresh lease could not be released");
            }
        }
        result
    }

    /// Takes the connection's refresh lease, or returns the token its holder obtained meanwhile.
    async fn take_lease(&self, subject: &Subject, want: Want) -> Result<Leased, TokenError> {
        let ttl = self.settings.refresh_lease;
        let name = subject.lease_name();
        // A crashed holder's lease ends after `ttl`; waiting a little longer lets us take it.
        let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(5);
        let mut polls = 0u64;
        loop {
            if let Some(held) = lease::acquire(self.stores.tables.as_ref(), &name, &self.service.holder, ttl).await? {
                return Ok(Leased::Lease(held));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TokenError::Busy(subject.id.clone()));
            }
            // Quick at first (a refresh takes a fraction of a second), then at most once a second
            // so waiting on a slow token endpoint costs few store reads.
            polls += 1;
            let pause = Duration::from_millis((100 * polls).min(1000) + u64::from(rand::random::<u8>()) / 2);
            tokio::time::sleep(pause).await;
            let record = self.load(subject).await?;
            usable(&record.value)?;
            if let Some(token) = self.shared(subject, &record.value, want).await? {
                return Ok(Leased::Token(token));
            }
            // The holder failed: its backoff applies to us too (no second call, no storm).
            self.not_blocked(&record.value)?;
        }
    }

    async fn refresh_holding(
        &self,
        subject: &Subject,
        want: Want,
        keeper: &lease::Keeper,
    ) -> Result<AccessToken, TokenError> {
        // Until the request goes out nothing is spent, so a holder that is slow here gives the
        // lease back after one lease length: no longer than a crashed holder costs the others.
        // Kept alive instead, a holder stuck in store or Key Vault retries during an outage
        // kept every other instance from refreshing for minutes (chaos seed 77), long enough
        // for a provider's reuse grace to run out.
        let budget = self.settings.refresh_lease;
        let send_by = tokio::time::Instant::now() + budget;
        let stalled = || TokenError::Stalled { connection: subject.id.clone(), seconds: budget.as_secs() };
        let (record, current, provider) = match tokio::time::timeout_at(send_by, self.prepare(subject, want)).await {
            Err(_) => return Err(stalled()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Prepared::Token(token))) => return Ok(token),
            Ok(Ok(Prepared::Refresh(ready))) => (ready.record, ready.current, ready.provider),
        };
        let mut attempt = 0;
        loop {
            let auth = self.oauth.client_auth(&provider);
            // Only the first credential is made before anything was sent; later ones follow a
            // request the holder must see through.
            let auth = if attempt == 0 {
                tokio::time::timeout_at(send_by, auth).await.map_err(|_| stalled())?
            } else {
                auth.await
            };
            let auth = match auth {
                Ok(auth) => auth,
                Err(reason) => {
                    return Err(self.record_failure(subject, record, self.client_auth_failure(&reason)).await)
                }
            };
            // Never present the refresh token once the lease is gone: its new holder may have.
            if keeper.is_lost() {
                return Err(TokenError::Busy(subject.id.clone()));
            }
            let mut failure = match self.request(subject, &provider, &auth, &current).await {
                Ok(tokens) => return self.record_success(subject, record, current, tokens).await,
                Err(failure) => failure,
            };
            if subject.app_only && failure.class == FailureClass::Reauth {
                // The app has no grant to lose: a refusal of client credentials is about them.
                failure.class = FailureClass::AppCredentials;
            }
            if let Some(rotated) = failure.rotated_refresh_token.take() {
                let record = self.keep_rotated(subject, record, &current, rotated).await;
                return Err(self.record_failure(subject, record, failure).await);
            }
            attempt += 1;
            match classify::retry_in_call(&failure, attempt, MAX_IN_CALL_WAIT) {
                Some(wait) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!(connection = %subject.id, reason = %failure.reason, wait_ms = wait.as_millis() as u64,
                        "token endpoint failed; trying again shortly");
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(self.record_failure(subject, record, failure).await),
            }
        }
    }

    /// Everything a refresh reads before its request, read again under the lease: the refresh
    /// token read before it may already have been used by the lease's previous holder.
    async fn prepare(&self, subject: &Subject, want: Want) -> Result<Prepared, TokenError> {
        let record = self.load(subject).await?;
        usable(&record.value)?;
        if let Some(token) = self.shared(subject, &record.value, want).await? {
            return Ok(Prepared::Token(token));
        }
        self.not_blocked(&record.value)?;
        let current = match self.current_set(subject, &record.value).await? {
            Ok(token_set) => token_set,
            Err(missing) => return Err(self.record_failure(subject, record, missing).await),
        };
        let provider = self.oauth.provider.get().await.map_err(|e| TokenError::Configuration(e.to_string()))?;
        Ok(Prepared::Refresh(Box::new(Ready { record, current, provider })))
    }

    /// The client's own credential could not be made: a managed identity that did not answer is
    /// transient; a certificate that cannot be read is the app's configuration.
    fn client_auth_failure(&self, reason: &str) -> Failure {
        let class = if self.oauth_settings.federated_credential {
            FailureClass::Transient
        } else {
            FailureClass::AppCredentials
        };
        Failure::new(class, "client_auth", reason)
    }

    /// The token set in force. A later version that supersedes exactly the one the record names
    /// was stored by a refresh that died before it could update the record: it holds the newest
    /// refresh token, so it is adopted. (A consent's set supersedes nothing and is never
    /// adopted: its own write names it.)
    async fn current_set(
        &self,
        subject: &Subject,
        record: &Connection,
    ) -> Result<Result<TokenSet, Failure>, TokenError> {
        let secrets = &self.stores.secrets;
        let name = &record.token_set_secret;
        let latest = secrets.get_latest_uncached(name).await?;
        if let Some(latest) = &latest {
            let is_named = record.token_set_version.as_deref() == Some(latest.version.as_str());
            match TokenSet::from_secret(&latest.value, latest.created) {
                Ok(token_set) if is_named => return Ok(Ok(token_set)),
                Ok(token_set) if token_set.supersedes.is_some() && token_set.supersedes == record.token_set_version => {
                    tracing::warn!(connection = %subject.id, generation = token_set.generation,
                        "adopting the token set an interrupted refresh stored");
                    return Ok(Ok(token_set));
                }
                _ => {}
            }
        }
        let named = match record.token_set_version.as_deref() {
            Some(version) => secrets.get(name, Some(version)).await?,
            None => None,
        };
        match named.map(|s| TokenSet::from_secret(&s.value, s.created)) {
            Some(Ok(token_set)) => Ok(Ok(token_set)),
            // The app's set only saves a call; without one, it simply asks for a new token.
            _ if subject.app_only => Ok(Ok(TokenSet::empty(self.now()))),
            None => Ok(Err(store_failure("the refresh token is missing from the secret store"))),
            Some(Err(reason)) => Ok(Err(store_failure(&reason))),
        }
    }

    /// One token-endpoint call: `refresh_token` for a consented connection, `client_credentials`
    /// for the app itself. Cut off after `TOKEN_ENDPOINT_TIMEOUT_SECONDS`.
    async fn request(
        &self,
        subject: &Subject,
        provider: &Provider,
        auth: &ClientAuth,
        current: &TokenSet,
    ) -> Result<TokenResponse, Failure> {
        let oauth = self.oauth;
        let settings = &self.oauth_settings;
        let (endpoint, params) = if subject.app_only {
            let mut params = vec![("grant_type", SecretString::new("client_credentials"))];
            if !settings.scopes.is_empty() {
                params.push(("scope", SecretString::new(settings.scopes.join(" "))));
            }
            (&provider.token_endpoint, params)
        } else {
            let Some(refresh_token) = current.refresh_token.clone() else {
                return Err(store_failure("the stored token set has no refresh token"));
            };
            let mut params = vec![
                ("grant_type", SecretString::new("refresh_token")),
                (provider.refresh_token_param.as_str(), refresh_token),
            ];
            // Entra wants the scopes again (one resource); plain OAuth 2.0 servers get only
            // what their refresh route documents.
            if provider.kind != crate::config::OAuthProvider::Oauth2 {
                let scopes = crate::oauth::requested_scopes(&settings.scopes, provider.is_openid());
                params.push(("scope", SecretString::new(scopes.join(" "))));
            }
            (&provider.refresh_endpoint, params)
        };
        let request =
            TokenRequest { endpoint, client_id: settings.client_id.as_deref().unwrap_or_default(), auth, params };
        let timeout = self.settings.endpoint_timeout;
        let result = match tokio::time::timeout(timeout, request_tokens(&oauth.http, request)).await {
            Ok(result) => result,
            Err(_) => Err(EndpointError::Timeout),
        };
        result.map_err(|e| classify::classify(&e))
    }
}
