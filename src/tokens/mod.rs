//! Token lifecycle: a fresh access token on demand, for any number of callers on any number of
//! instances, without ever losing or burning a refresh token.
//!
//! [`Tokens::access_token`] is the one way in. In order, it tries:
//! 1. this process's memory (a token not yet due for refresh, re-confirmed against the record
//!    once a minute so a re-consent or a dead grant found elsewhere reaches every process);
//! 2. one caller per connection at a time inside the process (single flight): the others wait,
//!    then find the token the first one got;
//! 3. the store: the connection record says when its token set is due; if another instance has a
//!    fresh one, its access token is read from the secret store (one read, no refresh);
//! 4. a lease on the connection (CAS with a TTL, renewed in the background by a
//!    [`lease::Keeper`] while the refresh runs) around the refresh. Having it, the caller reads
//!    the record and token set *again* and refreshes only if they are still due, with the refresh
//!    token read under the lease; the new token set is one new secret version, then the record is
//!    moved to it under If-Match, never over a newer generation. The old refresh token is kept
//!    when the response carries none. A set stored by a refresh that died before its record
//!    write is adopted by the next refresh (it names the version it supersedes).
//!
//! Failures are classified by [`classify`]: a dead grant makes the connection `needs_reauth`
//! (once, with one alert); refused app credentials raise one app-level alert; transient failures
//! set a shared `retry_not_before` (backoff with jitter, honouring `Retry-After`) so neither this
//! instance nor any other calls the token endpoint again before it.

pub mod bundle;
pub mod classify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::alerts::{self, Alert};
use crate::config::OAuthGrant;
use crate::connections::{self, Connection, ConnectionState, APP_ONLY_CONNECTION, APP_ONLY_PARTITION};
use crate::handlers::App;
use crate::oauth::provider::Provider;
use crate::oauth::token::{request_tokens, ClientAuth, TokenRequest, TokenSet};
use crate::secret::SecretString;
use crate::store::{lease, IfMatch, StoreError, Table, TypedTable, Versioned};
use bundle::{refresh_time, TokenBundle};
use classify::{Failure, FailureClass};

/// Inside one call, a transient failure is retried only when the wait is at most this.
const MAX_IN_CALL_WAIT: Duration = Duration::from_secs(5);
/// At most this many token-endpoint attempts per call.
const MAX_ATTEMPTS: u32 = 3;
/// Transient failures in a row that raise an alert (the connection is still active).
pub const FAILING_ALERT_AFTER: u32 = 5;
/// Tries for the one secret-store write that keeps a rotated refresh token (about 15 s).
const SECRET_WRITE_TRIES: u32 = 5;
/// Key Vault takes values up to 25 KB.
const MAX_SECRET_CHARS: usize = 24 * 1024;
/// How long this process trusts its cached token before reading the record again.
const CACHE_RECHECK: Duration = Duration::from_secs(60);
/// The alerts a successful refresh ends.
const REFRESH_ALERTS: [&str; 4] =
    ["connection_needs_reauth", "token_refresh_rejected", "token_refresh_failing", "token_set_not_stored"];

pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// An access token and what is known about it. The token itself prints as `[redacted]`.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub connection: String,
    pub token: SecretString,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// From this instant on it is not handed out; a new one is fetched.
    pub refresh_at: DateTime<Utc>,
    pub scopes: Vec<String>,
    pub source: TokenSource,
    /// The server sent no `expires_in`; the lifetime was assumed.
    pub expires_in_assumed: bool,
    /// The generation of the token set it came from.
    pub generation: u64,
}

/// Where a token came from on this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// This process had it.
    Memory,
    /// Another call or instance had just obtained it; read from the store.
    Store,
    /// This call refreshed it at the token endpoint.
    TokenEndpoint,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("connection {0:?} does not exist; connect it first (tcbridge consent-url --connection {0})")]
    NotConnected(String),
    #[error("{0}")]
    InvalidConnection(String),
    #[error("connection {connection:?} needs an administrator to consent again: {reason}")]
    NeedsReauth { connection: String, reason: String },
    #[error("connection {0:?} is disabled")]
    Disabled(String),
    #[error(
        "the authorization server refused the app's own credentials ({reason}); check OAUTH_CLIENT_SECRET, the certificate or the federated credential"
    )]
    AppCredentials { reason: String },
    #[error("the token endpoint is unavailable for connection {connection:?} ({reason}); next attempt after {retry_not_before}")]
    Unavailable { connection: String, reason: String, retry_not_before: DateTime<Utc> },
    #[error("the authorization server refused to refresh connection {connection:?} ({reason}); not asked again before {retry_not_before}")]
    Rejected { connection: String, reason: String, retry_not_before: DateTime<Utc> },
    #[error("another instance is refreshing connection {0:?} and did not finish in time")]
    Busy(String),
    #[error("the sign-in is not configured: {0}")]
    Configuration(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenError {
    /// A stable name for the kind of failure (CLI exit reasons, logs, alerts).
    pub fn class(&self) -> &'static str {
        match self {
            TokenError::NotConnected(_) => "not_connected",
            TokenError::InvalidConnection(_) => "invalid_connection",
            TokenError::NeedsReauth { .. } => "needs_reauth",
            TokenError::Disabled(_) => "disabled",
            TokenError::AppCredentials { .. } => "app_credentials",
            TokenError::Unavailable { .. } => "transient",
            TokenError::Rejected { .. } => "rejected",
            TokenError::Busy(_) => "busy",
            TokenError::Configuration(_) => "configuration",
            TokenError::Store(_) => "store",
        }
    }
}

/// What a caller will accept.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Any token not yet due for refresh.
    Usable,
    /// A token not due and obtained at or after this instant (keep-alive, forced refresh).
    IssuedSince(DateTime<Utc>),
}

impl Want {
    fn accepts(self, issued_at: DateTime<Utc>, refresh_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now < refresh_at
            && match self {
                Want::Usable => true,
                Want::IssuedSince(since) => issued_at >= since,
            }
    }
}

/// Where a connection's record lives: consented connections, or the app itself
/// (`OAUTH_GRANT=client_credentials`).
struct Subject {
    partition: &'static str,
    id: String,
    app_only: bool,
}

impl Subject {
    fn lease_name(&self) -> String {
        format!("token:{}:{}", self.partition, self.id)
    }
}

/// A token this process holds, and when the record was last looked at to confirm it.
struct Cached {
    token: AccessToken,
    checked_at: DateTime<Utc>,
}

/// The per-process half of the token lifecycle: the memory cache and the single-flight locks.
/// One per process (in [`App`]); everything shared lives in the store.
pub struct TokenService {
    cache: Mutex<HashMap<String, Cached>>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    holder: String,
    clock: Clock,
}

impl Default for TokenService {
    fn default() -> Self {
        Self::with_clock(Arc::new(Utc::now))
    }
}

impl TokenService {
    /// A service whose token times come from `clock` (tests and the budget benchmark move
    /// time forward without waiting; leases always use the real clock).
    pub fn with_clock(clock: Clock) -> Self {
        TokenService {
            cache: Mutex::default(),
            flights: Mutex::default(),
            holder: format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 6]>())),
            clock,
        }
    }

    /// The held token if it suits `want`, and whether the record was confirmed recently.
    fn cached(&self, id: &str, want: Want, now: DateTime<Utc>) -> Option<(AccessToken, bool)> {
        let cache = self.cache.lock().expect("token cache lock");
        let entry = cache.get(id)?;
        let token = &entry.token;
        let confirmed = now - entry.checked_at < delta(CACHE_RECHECK);
        want.accepts(token.issued_at, token.refresh_at, now)
            .then(|| (AccessToken { source: TokenSource::Memory, ..token.clone() }, confirmed))
    }

    fn remember(&self, token: &AccessToken, now: DateTime<Utc>) {
        let entry = Cached { token: token.clone(), checked_at: now };
        self.cache.lock().expect("token cache lock").insert(token.connection.clone(), entry);
    }

    fn confirmed(&self, id: &str, now: DateTime<Utc>) {
        if let Some(entry) = self.cache.lock().expect("token cache lock").get_mut(id) {
            entry.checked_at = now;
        }
    }

    fn forget(&self, id: &str) {
        self.cache.lock().expect("token cache lock").remove(id);
    }

    fn flight(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.flights.lock().expect("flight lock").entry(id.to_owned()).or_default().clone()
    }
}

/// The token lifecycle bound to an app: `app.tokens().access_token("prod")`.
pub struct Tokens<'a> {
    app: &'a App,
    service: &'a TokenService,
}

impl<'a> Tokens<'a> {
    pub fn new(app: &'a App, service: &'a TokenService) -> Self {
        Tokens { app, service }
    }

    fn now(&self) -> DateTime<Utc> {
        (self.service.clock)()
    }

    /// An access token for `connection` that is not inside its refresh margin.
    pub async fn access_token(&self, connection: &str) -> Result<AccessToken, TokenError> {
        self.get(connection, Want::Usable).await
    }

    /// Like [`Self::access_token`], but also refreshes when the last refresh is older than
    /// `TOKEN_KEEPALIVE_HOURS`, so idle refresh tokens never reach the server's inactivity limit.
    pub async fn keep_alive(&self, connection: &str) -> Result<AccessToken, TokenError> {
        let keepalive = delta(self.app.settings.tokens.keepalive);
        self.get(connection, Want::IssuedSince(self.now() - keepalive)).await
    }

    /// A token obtained now (or by a refresh that finished while this call waited for it).
    pub async fn refresh_now(&self, connection: &str) -> Result<AccessToken, TokenError> {
        self.get(connection, Want::IssuedSince(self.now())).await
    }

    /// Drops this process's copy of a connection's token (a re-consent replaced the grant, maybe
    /// with another account). Other instances notice within `CACHE_RECHECK`.
    pub fn forget(&self, connection: &str) {
        self.service.forget(connection);
    }

    async fn get(&self, connection: &str, want: Want) -> Result<AccessToken, TokenError> {
        let subject = self.subject(connection)?;
        if let Some(token) = self.held_in_memory(&subject, want).await? {
            return Ok(token);
        }
        let flight = self.service.flight(&subject.id);
        let _one_caller_at_a_time = flight.lock().await;
        if let Some(token) = self.held_in_memory(&subject, want).await? {
            return Ok(token);
        }
        let token = self.obtain(&subject, want).await?;
        self.service.remember(&token, self.now());
        Ok(token)
    }

    /// The token this process holds. Once per `CACHE_RECHECK` the record is read to confirm it
    /// is still the connection's (same generation, still active), so a re-consent — maybe of
    /// another account — or a grant another instance found dead reaches every process quickly.
    async fn held_in_memory(&self, subject: &Subject, want: Want) -> Result<Option<AccessToken>, TokenError> {
        let now = self.now();
        let Some((token, confirmed)) = self.service.cached(&subject.id, want, now) else { return Ok(None) };
        if confirmed {
            return Ok(Some(token));
        }
        let record = self.load(subject).await?.value;
        if record.state == ConnectionState::Active && record.token_generation == token.generation {
            self.service.confirmed(&subject.id, now);
            return Ok(Some(token));
        }
        self.service.forget(&subject.id);
        Ok(None)
    }

    fn subject(&self, connection: &str) -> Result<Subject, TokenError> {
        if self.app.settings.oauth.grant == OAuthGrant::ClientCredentials {
            if connection != APP_ONLY_CONNECTION {
                return Err(TokenError::InvalidConnection(format!(
                    "OAUTH_GRANT=client_credentials: the only connection is {APP_ONLY_CONNECTION:?}, not {connection:?}"
                )));
            }
            return Ok(Subject { partition: APP_ONLY_PARTITION, id: connection.to_owned(), app_only: true });
        }
        connections::validate_id(connection).map_err(TokenError::InvalidConnection)?;
        Ok(Subject { partition: connections::PARTITION, id: connection.to_owned(), app_only: false })
    }

    async fn obtain(&self, subject: &Subject, want: Want) -> Result<AccessToken, TokenError> {
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
        let keeper = lease::Keeper::keep(self.app.stores.tables.clone(), held, self.app.settings.tokens.refresh_lease);
        let result = self.refresh_holding(subject, want, &keeper).await;
        if let Some(held) = keeper.finish().await {
            if let Err(e) = lease::release(self.app.stores.tables.as_ref(), held).await {
                // It expires by itself; only the next refresh of this connection can be delayed.
                tracing::warn!(connection = %subject.id, error = %e, "the refresh lease could not be released");
            }
        }
        result
    }

    /// The connection's record; the app-only one is created on first use.
    async fn load(&self, subject: &Subject) -> Result<Versioned<Connection>, TokenError> {
        let table = TypedTable::new(self.app.stores.tables.as_ref(), Table::Connections);
        if let Some(record) = table.get(subject.partition, &subject.id).await? {
            return Ok(record);
        }
        if !subject.app_only {
            return Err(TokenError::NotConnected(subject.id.clone()));
        }
        let record = connections::app_only_record(&self.app.settings.oauth, self.now());
        match table.insert(subject.partition, &subject.id, &record).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        table.get(subject.partition, &subject.id).await?.ok_or_else(|| TokenError::NotConnected(subject.id.clone()))
    }

    /// The token another call or instance obtained, when the record says it is still good.
    async fn shared(
        &self,
        subject: &Subject,
        record: &Connection,
        want: Want,
    ) -> Result<Option<AccessToken>, TokenError> {
        let (Some(refresh_at), Some(issued_at), Some(version)) =
            (record.refresh_at, record.last_refresh_success, record.refresh_token_version.as_deref())
        else {
            return Ok(None);
        };
        let now = self.now();
        if !want.accepts(issued_at, refresh_at, now) {
            return Ok(None);
        }
        let Some(stored) = self.app.stores.secrets.get(&record.refresh_token_secret, Some(version)).await? else {
            return Ok(None);
        };
        let Ok(bundle) = TokenBundle::from_secret(&stored.value, stored.created) else { return Ok(None) };
        Ok(token_from_bundle(&subject.id, &bundle, TokenSource::Store, record.expires_in_assumed)
            .filter(|t| want.accepts(t.issued_at, t.refresh_at, now)))
    }

    /// Fails fast while a shared backoff is in force, with the failure that caused it.
    fn not_blocked(&self, record: &Connection) -> Result<(), TokenError> {
        let Some(until) = record.retry_not_before.filter(|until| *until > self.now()) else { return Ok(()) };
        let reason = record.last_error.clone().unwrap_or_else(|| "an earlier failure".into());
        Err(match record.last_error_class.as_deref() {
            Some("app_credentials") => TokenError::AppCredentials { reason },
            Some("rejected") => TokenError::Rejected { connection: record.id.clone(), reason, retry_not_before: until },
            _ => TokenError::Unavailable { connection: record.id.clone(), reason, retry_not_before: until },
        })
    }

    /// Takes the connection's refresh lease, or returns the token its holder obtained meanwhile.
    async fn take_lease(&self, subject: &Subject, want: Want) -> Result<Leased, TokenError> {
        let ttl = self.app.settings.tokens.refresh_lease;
        let name = subject.lease_name();
        // A crashed holder's lease ends after `ttl`; waiting a little longer lets us take it.
        let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(5);
        let mut polls = 0u64;
        loop {
            if let Some(held) =
                lease::acquire(self.app.stores.tables.as_ref(), &name, &self.service.holder, ttl).await?
            {
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
        // Everything is read again under the lease: the refresh token read before it may
        // already have been used by the instance that held the lease before us.
        let record = self.load(subject).await?;
        usable(&record.value)?;
        if let Some(token) = self.shared(subject, &record.value, want).await? {
            return Ok(token);
        }
        self.not_blocked(&record.value)?;
        let current = match self.current_bundle(subject, &record.value).await? {
            Ok(bundle) => bundle,
            Err(missing) => return Err(self.record_failure(subject, record, missing).await),
        };
        let provider = self.app.oauth().provider.get().await.map_err(|e| TokenError::Configuration(e.to_string()))?;
        let mut attempt = 0;
        loop {
            let auth = match self.app.oauth().client_auth(&provider).await {
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

    /// The client's own credential could not be made: a managed identity that did not answer is
    /// transient; a certificate that cannot be read is the app's configuration.
    fn client_auth_failure(&self, reason: &str) -> Failure {
        let class = if self.app.settings.oauth.federated_credential {
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
    async fn current_bundle(
        &self,
        subject: &Subject,
        record: &Connection,
    ) -> Result<Result<TokenBundle, Failure>, TokenError> {
        let secrets = &self.app.stores.secrets;
        let name = &record.refresh_token_secret;
        let latest = secrets.get_latest_uncached(name).await?;
        if let Some(latest) = &latest {
            let is_named = record.refresh_token_version.as_deref() == Some(latest.version.as_str());
            match TokenBundle::from_secret(&latest.value, latest.created) {
                Ok(bundle) if is_named => return Ok(Ok(bundle)),
                Ok(bundle) if bundle.supersedes.is_some() && bundle.supersedes == record.refresh_token_version => {
                    tracing::warn!(connection = %subject.id, generation = bundle.generation,
                        "adopting the token set an interrupted refresh stored");
                    return Ok(Ok(bundle));
                }
                _ => {}
            }
        }
        let named = match record.refresh_token_version.as_deref() {
            Some(version) => secrets.get(name, Some(version)).await?,
            None => None,
        };
        match named.map(|s| TokenBundle::from_secret(&s.value, s.created)) {
            Some(Ok(bundle)) => Ok(Ok(bundle)),
            // The app's set only saves a call; without one, it simply asks for a new token.
            _ if subject.app_only => Ok(Ok(empty_bundle(self.now()))),
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
        current: &TokenBundle,
    ) -> Result<TokenSet, Failure> {
        let oauth = self.app.oauth();
        let settings = &self.app.settings.oauth;
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
                let scopes = crate::handlers::requested_scopes(&settings.scopes, provider.is_openid());
                params.push(("scope", SecretString::new(scopes.join(" "))));
            }
            (&provider.refresh_endpoint, params)
        };
        let request =
            TokenRequest { endpoint, client_id: settings.client_id.as_deref().unwrap_or_default(), auth, params };
        let timeout = self.app.settings.tokens.endpoint_timeout;
        let result = match tokio::time::timeout(timeout, request_tokens(&oauth.http, request)).await {
            Ok(result) => result,
            Err(_) => Err(crate::oauth::token::TokenError::Timeout),
        };
        result.map_err(|e| classify::classify(&e))
    }

    async fn record_success(
        &self,
        subject: &Subject,
        record: Versioned<Connection>,
        current: TokenBundle,
        tokens: TokenSet,
    ) -> Result<AccessToken, TokenError> {
        let now = self.now();
        let margin = self.app.settings.tokens.refresh_margin;
        let rotated = tokens.refresh_token.is_some();
        let scopes = match tokens.scope {
            Some(scopes) => scopes,
            None if current.scopes.is_empty() => record.value.scopes.clone(),
            None => current.scopes.clone(),
        };
        let bundle = TokenBundle {
            generation: current.generation.max(record.value.token_generation) + 1,
            refresh_token: tokens.refresh_token.or(current.refresh_token),
            access_token: Some(tokens.access_token),
            expires_at: Some(now + delta(tokens.expires_in)),
            refresh_at: Some(refresh_time(now, tokens.expires_in, margin, tokens.refresh_in)),
            scopes,
            issued_at: now,
            supersedes: record.value.refresh_token_version.clone(),
        };
        let had_trouble = record.value.last_error.is_some() || record.value.consecutive_failures > 0;
        let assumed = tokens.expires_in_assumed;
        let persisted = self
            .persist(subject, record.clone(), &bundle, |c| {
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
        tracing::info!(connection = %subject.id, generation = bundle.generation, rotated,
            expires_at = %bundle.expires_at.unwrap_or(now), "access token refreshed");
        Ok(token_from_bundle(&subject.id, &bundle, TokenSource::TokenEndpoint, assumed)
            .expect("a refreshed bundle has an access token"))
    }

    /// Keeps a refresh token that came back with an answer we could not use (the server may
    /// have rotated, so the one we sent is spent).
    async fn keep_rotated(
        &self,
        subject: &Subject,
        record: Versioned<Connection>,
        current: &TokenBundle,
        rotated: SecretString,
    ) -> Versioned<Connection> {
        let bundle = TokenBundle {
            generation: current.generation.max(record.value.token_generation) + 1,
            refresh_token: Some(rotated),
            access_token: None,
            expires_at: None,
            refresh_at: None,
            scopes: current.scopes.clone(),
            issued_at: self.now(),
            supersedes: record.value.refresh_token_version.clone(),
        };
        match self.persist(subject, record.clone(), &bundle, |_| {}).await {
            Ok(_) => self.load(subject).await.unwrap_or(record),
            Err(e) => {
                tracing::error!(connection = %subject.id, error = %e, "a rotated refresh token could not be stored");
                record
            }
        }
    }

    /// Stores `bundle` as a new secret version, then moves the record to it under If-Match —
    /// unless another writer moved it to a newer generation meanwhile (`Ok(false)`; the secret
    /// version stays unused). `extra` adds what else the record should say.
    async fn persist(
        &self,
        subject: &Subject,
        record: Versioned<Connection>,
        bundle: &TokenBundle,
        extra: impl Fn(&mut Connection),
    ) -> Result<bool, TokenError> {
        let base_generation = record.value.token_generation;
        let version = self.store_bundle(subject, &record.value.refresh_token_secret, bundle).await?;
        let written = self
            .update_record(subject, record, |c| {
                if c.token_generation != base_generation {
                    return false;
                }
                c.refresh_token_version = Some(version.clone());
                c.token_generation = bundle.generation;
                c.access_token_expires_at = bundle.expires_at;
                c.refresh_at = bundle.refresh_at;
                if !bundle.scopes.is_empty() {
                    c.scopes = bundle.scopes.clone();
                }
                extra(c);
                true
            })
            .await;
        match written {
            Ok(written) => Ok(written),
            Err(e) => {
                // The secret holds the new set; the next refresh adopts it (`current_bundle`).
                tracing::error!(connection = %subject.id, error = %e, "the connection record could not be updated after a refresh");
                Ok(true)
            }
        }
    }

    /// The one secret write of a refresh. With a rotating server the old refresh token is
    /// already spent, so this is retried (the lease is kept meanwhile) before giving up. A set
    /// too large for Key Vault is stored without its access token (other instances then
    /// refresh for themselves, but the refresh token is never dropped).
    async fn store_bundle(&self, subject: &Subject, name: &str, bundle: &TokenBundle) -> Result<String, TokenError> {
        let mut value = bundle.to_secret();
        if value.expose().len() > MAX_SECRET_CHARS {
            tracing::warn!(connection = %subject.id, "the token set is too large for the secret store; storing it without the access token");
            value = TokenBundle { access_token: None, ..bundle.clone() }.to_secret();
        }
        let mut tries = 0;
        loop {
            tries += 1;
            match self.app.stores.secrets.set(name, &value).await {
                Ok(version) => return Ok(version),
                Err(e) if tries < SECRET_WRITE_TRIES && !matches!(e, StoreError::Invalid { .. }) => {
                    tracing::warn!(connection = %subject.id, error = %e, "storing the new token set failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(tries))).await;
                }
                Err(e) => {
                    tracing::error!(connection = %subject.id, error = %e,
                        "the new token set could not be stored; the refresh token it carries is lost");
                    let alert =
                        Alert::new("token_set_not_stored", Some(&subject.id), "store", "secret_write", &e.to_string());
                    if let Err(e) =
                        alerts::raise(&self.app.stores, self.app.settings.tokens.alert_webhook_url.as_ref(), alert)
                            .await
                    {
                        tracing::error!(connection = %subject.id, error = %e, "an alert could not be recorded");
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Applies `change` to the record under If-Match, re-reading and re-applying when another
    /// writer got there first. `change` returns false to leave the record as it is.
    async fn update_record(
        &self,
        subject: &Subject,
        mut record: Versioned<Connection>,
        mut change: impl FnMut(&mut Connection) -> bool,
    ) -> Result<bool, TokenError> {
        let table = TypedTable::new(self.app.stores.tables.as_ref(), Table::Connections);
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
    async fn record_failure(&self, subject: &Subject, record: Versioned<Connection>, failure: Failure) -> TokenError {
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
                    c.state = ConnectionState::NeedsReauth;
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
        let alert = match failure.class {
            _ if matches!(updated, Ok(false)) => None,
            FailureClass::Reauth if was_active && recorded => Some(Alert::new(
                "connection_needs_reauth",
                Some(&subject.id),
                failure.class.name(),
                &failure.code,
                &failure.reason,
            )),
            FailureClass::AppCredentials => {
                Some(Alert::new("app_credentials_rejected", None, failure.class.name(), &failure.code, &failure.reason))
            }
            FailureClass::Rejected | FailureClass::LoopDetected => Some(Alert::new(
                "token_refresh_rejected",
                Some(&subject.id),
                failure.class.name(),
                &failure.code,
                &failure.reason,
            )),
            FailureClass::Transient if failures >= FAILING_ALERT_AFTER => Some(Alert::new(
                "token_refresh_failing",
                Some(&subject.id),
                failure.class.name(),
                "transient",
                &failure.reason,
            )),
            _ => None,
        };
        if let Some(alert) = alert {
            if let Err(e) =
                alerts::raise(&self.app.stores, self.app.settings.tokens.alert_webhook_url.as_ref(), alert).await
            {
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
        let stores = &self.app.stores;
        let cleared = match alerts::clear_connection_named(stores, &subject.id, &REFRESH_ALERTS).await {
            Ok(()) => alerts::clear_app(stores).await,
            Err(e) => Err(e),
        };
        if let Err(e) = cleared {
            tracing::warn!(connection = %subject.id, error = %e, "alerts could not be cleared after a recovery");
        }
    }
}

/// Azure AD B2C's refresh tokens stop working a fixed window after the consent however often
/// they are used (`B2C_REFRESH_WINDOW_DAYS`); this is when, for a B2C connection.
pub fn reconsent_deadline(connection: &Connection, settings: &crate::config::TokenSettings) -> Option<DateTime<Utc>> {
    (connection.provider == "b2c").then(|| connection.consented_at + delta(settings.b2c_refresh_window))
}

/// The B2C deadline, when it is within `B2C_REAUTH_WARNING_DAYS` of `now` (or past).
pub fn reconsent_due(
    connection: &Connection,
    settings: &crate::config::TokenSettings,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    reconsent_deadline(connection, settings).filter(|deadline| *deadline - delta(settings.b2c_reauth_warning) <= now)
}

enum Leased {
    Lease(lease::Lease),
    Token(AccessToken),
}

fn usable(record: &Connection) -> Result<(), TokenError> {
    match record.state {
        ConnectionState::Active => Ok(()),
        ConnectionState::NeedsReauth => Err(TokenError::NeedsReauth {
            connection: record.id.clone(),
            reason: record.reason.clone().unwrap_or_else(|| "the grant is no longer valid".into()),
        }),
        ConnectionState::Disabled => Err(TokenError::Disabled(record.id.clone())),
    }
}

fn token_from_bundle(id: &str, bundle: &TokenBundle, source: TokenSource, assumed: bool) -> Option<AccessToken> {
    Some(AccessToken {
        connection: id.to_owned(),
        token: bundle.access_token.clone()?,
        issued_at: bundle.issued_at,
        expires_at: bundle.expires_at?,
        refresh_at: bundle.refresh_at?,
        scopes: bundle.scopes.clone(),
        source,
        expires_in_assumed: assumed,
        generation: bundle.generation,
    })
}

fn empty_bundle(now: DateTime<Utc>) -> TokenBundle {
    TokenBundle {
        generation: 0,
        refresh_token: None,
        access_token: None,
        expires_at: None,
        refresh_at: None,
        scopes: Vec::new(),
        issued_at: now,
        supersedes: None,
    }
}

/// The stored token set is unusable: nothing but a new consent can help.
fn store_failure(reason: &str) -> Failure {
    Failure::new(FailureClass::Reauth, "token_set_missing", reason)
}

/// Durations here are bounded (lifetimes are capped at 366 days when parsed); the cap keeps
/// date arithmetic from overflowing whatever comes in.
pub(crate) fn delta(duration: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(duration.min(Duration::from_secs(400 * 86_400))).expect("400 days fit")
}
