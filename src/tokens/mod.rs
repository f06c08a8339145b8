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
//!    [`crate::store::lease::Keeper`] while the refresh runs) around the refresh. Having it, the
//!    caller reads the record and token set *again* and refreshes only if they are still due,
//!    with the refresh token read under the lease; the new token set is one new secret version,
//!    then the record is moved to it under If-Match, never over a newer generation. The old
//!    refresh token is kept when the response carries none. A set stored by a refresh that died
//!    before its record write is adopted by the next refresh (it names the version it supersedes).
//!
//! Failures are classified by [`classify`]: a dead grant makes the connection `needs_reauth`
//! (once, with one alert); refused app credentials raise one app-level alert; transient failures
//! set a shared `retry_not_before` (backoff with jitter, honouring `Retry-After`) so neither this
//! instance nor any other calls the token endpoint again before it.
//!
//! The parts: `cache.rs` (this process's memory and single-flight locks), `refresh.rs` (the
//! lease-guarded refresh), `persist.rs` (recording a refresh's success or failure), [`classify`]
//! (what a failure means). The token sets themselves are [`crate::connections::TokenSet`]s.

mod admin;
mod cache;
pub mod classify;
mod persist;
mod refresh;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::clock::delta;
use crate::config::{OAuthGrant, OAuthSettings, TokenSettings};
use crate::connections::{self, Connection, ConnectionState, TokenSet, APP_ONLY_CONNECTION, APP_ONLY_PARTITION};
use crate::oauth::OAuthRuntime;
use crate::secret::SecretString;
use crate::store::{StoreError, Stores, Table, TypedTable, Versioned};
pub use admin::Deleted;
pub use cache::TokenService;
use classify::{Failure, FailureClass};

/// Transient failures in a row that raise an alert (the connection is still active).
pub const FAILING_ALERT_AFTER: u32 = 5;

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
    #[error("connection {0:?} is disabled by an operator; `tcbridge connection enable {0}` turns it back on")]
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
    #[error(
        "connection {connection:?} was not refreshed: what it reads first (the connection, its refresh token, the sign-in settings, the app's credential) took over {seconds} s (TOKEN_REFRESH_LEASE_SECONDS); nothing was sent, the refresh lease was given back, and the next attempt starts afresh"
    )]
    Stalled { connection: String, seconds: u64 },
    #[error("the sign-in is not configured: {0}")]
    Configuration(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenError {
    /// The kind of failure (`tcbridge token`'s exit code and JSON, logs, alerts).
    pub fn class(&self) -> ErrorClass {
        match self {
            TokenError::NotConnected(_) => ErrorClass::NotConnected,
            TokenError::InvalidConnection(_) => ErrorClass::InvalidConnection,
            TokenError::NeedsReauth { .. } => ErrorClass::NeedsReauth,
            TokenError::Disabled(_) => ErrorClass::Disabled,
            TokenError::AppCredentials { .. } => ErrorClass::AppCredentials,
            TokenError::Unavailable { .. } | TokenError::Stalled { .. } => ErrorClass::Transient,
            TokenError::Rejected { .. } => ErrorClass::Rejected,
            TokenError::Busy(_) => ErrorClass::Busy,
            TokenError::Configuration(_) => ErrorClass::Configuration,
            TokenError::Store(_) => ErrorClass::Store,
        }
    }
}

/// The kinds of [`TokenError`], by the names `tcbridge token --json` and the logs carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    NotConnected,
    InvalidConnection,
    /// The grant is gone: an administrator must consent again.
    NeedsReauth,
    Disabled,
    /// The token endpoint refused the app itself.
    AppCredentials,
    Transient,
    Rejected,
    /// Another instance holds the refresh lease.
    Busy,
    Configuration,
    Store,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::NotConnected => "not_connected",
            ErrorClass::InvalidConnection => "invalid_connection",
            ErrorClass::NeedsReauth => "needs_reauth",
            ErrorClass::Disabled => "disabled",
            ErrorClass::AppCredentials => "app_credentials",
            ErrorClass::Transient => "transient",
            ErrorClass::Rejected => "rejected",
            ErrorClass::Busy => "busy",
            ErrorClass::Configuration => "configuration",
            ErrorClass::Store => "store",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with its name, as the strings it replaced did.
impl PartialEq<&str> for ErrorClass {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
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

/// The token lifecycle with the parts it works with: `app.tokens().access_token("prod")`.
pub struct Tokens<'a> {
    oauth_settings: &'a OAuthSettings,
    settings: &'a TokenSettings,
    stores: &'a Stores,
    oauth: &'a OAuthRuntime,
    service: &'a TokenService,
}

impl<'a> Tokens<'a> {
    pub fn new(
        oauth_settings: &'a OAuthSettings,
        settings: &'a TokenSettings,
        stores: &'a Stores,
        oauth: &'a OAuthRuntime,
        service: &'a TokenService,
    ) -> Self {
        Tokens { oauth_settings, settings, stores, oauth, service }
    }

    fn now(&self) -> DateTime<Utc> {
        self.service.now()
    }

    /// An access token for `connection` that is not inside its refresh margin.
    pub async fn access_token(&self, connection: &str) -> Result<AccessToken, TokenError> {
        self.get(connection, Want::Usable).await
    }

    /// Like [`Self::access_token`], but also refreshes when the last refresh is older than
    /// `TOKEN_KEEPALIVE_HOURS`, so idle refresh tokens never reach the server's inactivity limit.
    pub async fn keep_alive(&self, connection: &str) -> Result<AccessToken, TokenError> {
        let keepalive = delta(self.settings.keepalive);
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
        if self.oauth_settings.grant == OAuthGrant::ClientCredentials {
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

    /// The connection's record; the app-only one is created on first use.
    async fn load(&self, subject: &Subject) -> Result<Versioned<Connection>, TokenError> {
        let table = TypedTable::new(self.stores.tables.as_ref(), Table::Connections);
        if let Some(record) = table.get(subject.partition, &subject.id).await? {
            return Ok(record);
        }
        if !subject.app_only {
            return Err(TokenError::NotConnected(subject.id.clone()));
        }
        let record = connections::app_only_record(self.oauth_settings, self.now());
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
            (record.refresh_at, record.last_refresh_success, record.token_set_version.as_deref())
        else {
            return Ok(None);
        };
        let now = self.now();
        if !want.accepts(issued_at, refresh_at, now) {
            return Ok(None);
        }
        let Some(stored) = self.stores.secrets.get(&record.token_set_secret, Some(version)).await? else {
            return Ok(None);
        };
        let Ok(token_set) = TokenSet::from_secret(&stored.value, stored.created) else { return Ok(None) };
        Ok(token_from_set(&subject.id, &token_set, TokenSource::Store, record.expires_in_assumed)
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
}

/// Azure AD B2C's refresh tokens stop working a fixed window after the consent however often
/// they are used (`B2C_REFRESH_WINDOW_DAYS`); this is when, for a B2C connection.
pub fn reconsent_deadline(connection: &Connection, settings: &TokenSettings) -> Option<DateTime<Utc>> {
    (connection.provider == "b2c").then(|| connection.consented_at + delta(settings.b2c_refresh_window))
}

/// The B2C deadline, when it is within `B2C_REAUTH_WARNING_DAYS` of `now` (or past).
pub fn reconsent_due(connection: &Connection, settings: &TokenSettings, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    reconsent_deadline(connection, settings).filter(|deadline| *deadline - delta(settings.b2c_reauth_warning) <= now)
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

fn token_from_set(id: &str, token_set: &TokenSet, source: TokenSource, assumed: bool) -> Option<AccessToken> {
    Some(AccessToken {
        connection: id.to_owned(),
        token: token_set.access_token.clone()?,
        issued_at: token_set.issued_at,
        expires_at: token_set.expires_at?,
        refresh_at: token_set.refresh_at?,
        scopes: token_set.scopes.clone(),
        source,
        expires_in_assumed: assumed,
        generation: token_set.generation,
    })
}

/// The stored token set is unusable: nothing but a new consent can help.
fn store_failure(reason: &str) -> Failure {
    Failure::new(FailureClass::Reauth, "token_set_missing", reason)
}
