//! Connections: one consented account per connection id, its metadata in the `connections`
//! table and its refresh token in the secret store.
//!
//! The refresh token is written first (a new secret version), then the record that points at
//! it, under compare-and-swap, so a record never names a token that was not stored. Re-consent
//! keeps the connection id (and so its sync cursors, which are keyed by it), and refuses to
//! switch the connection to another account unless the admin asked for `replace`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod keyed;
mod sources;
pub mod token_set;

use crate::naming::connection_secret_name;
use crate::oauth::token::TokenResponse;
use crate::store::{IfMatch, RowRange, StoreError, Stores, Table, TypedTable, Versioned};
pub use keyed::{ApiKeyConnection, Team};
pub use sources::{sources, Access, Source, Sources};
pub use token_set::TokenSet;

pub const PARTITION: &str = "connection";
/// Where the app-only connection's record lives (kept apart so `list` shows consents only).
pub const APP_ONLY_PARTITION: &str = "apponly";
pub const REFRESH_TOKEN_SECRET: &str = "refresh-token";
/// The id of the connection that exists from configuration with `OAUTH_GRANT=client_credentials`.
pub const APP_ONLY_CONNECTION: &str = "app";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    Active,
    NeedsReauth,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub id: String,
    pub state: ConnectionState,
    #[serde(default)]
    pub reason: Option<String>,
    pub provider: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    /// The stable account key: `tid/oid` on Entra, `iss|sub` elsewhere.
    pub account: String,
    /// A readable name for pages and status (UPN, email, name).
    #[serde(default)]
    pub account_name: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub consented_at: DateTime<Utc>,
    #[serde(default)]
    pub access_token_expires_at: Option<DateTime<Utc>>,
    /// The server sent no `expires_in`; the default lifetime was assumed.
    #[serde(default)]
    pub expires_in_assumed: bool,
    /// When the access token should be replaced (a margin before it expires).
    #[serde(default)]
    pub refresh_at: Option<DateTime<Utc>>,
    /// Secret-store name and version of the current token set (refresh token, access token;
    /// see [`TokenSet`]). Stored under their first names, from when they held a refresh token
    /// alone.
    #[serde(rename = "refresh_token_secret")]
    pub token_set_secret: String,
    #[serde(default, rename = "refresh_token_version")]
    pub token_set_version: Option<String>,
    /// The generation of the token set the record names; a writer only replaces it with a
    /// higher one, so a newer refresh token is never overwritten by an older one.
    #[serde(default)]
    pub token_generation: u64,
    #[serde(default)]
    pub last_refresh_success: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_refresh_failure: Option<DateTime<Utc>>,
    #[serde(default)]
    pub consecutive_failures: u32,
    /// No token-endpoint call for this connection before this instant (backoff, shared by
    /// every instance so a failing server is not stormed).
    #[serde(default)]
    pub retry_not_before: Option<DateTime<Utc>>,
    /// The last refresh failure's class (`transient`, `rejected`, …) and reason.
    #[serde(default)]
    pub last_error_class: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The TrueContext team this connection reads (`tcbridge connection team`); none declared:
    /// a team of its own (see [`keyed`]).
    #[serde(default)]
    pub team: Option<Team>,
}

impl Connection {
    /// A connection in its blank state: active, naming no token set yet, no failures.
    pub fn new(id: &str, provider: String, account: String, scopes: Vec<String>, consented_at: DateTime<Utc>) -> Self {
        Connection {
            id: id.to_owned(),
            state: ConnectionState::Active,
            reason: None,
            provider,
            issuer: None,
            tenant: None,
            account,
            account_name: None,
            scopes,
            consented_at,
            access_token_expires_at: None,
            expires_in_assumed: false,
            refresh_at: None,
            token_set_secret: String::new(),
            token_set_version: None,
            token_generation: 0,
            last_refresh_success: None,
            last_refresh_failure: None,
            consecutive_failures: 0,
            retry_not_before: None,
            last_error_class: None,
            last_error: None,
            team: None,
        }
    }

    pub fn display_account(&self) -> &str {
        self.account_name.as_deref().unwrap_or(&self.account)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error(
        "connection {connection:?} belongs to {existing}; this sign-in was {new}. Sign in as {existing} to renew it, \
         or open the authorize link with &replace=true to switch the connection to the new account"
    )]
    AccountSwitch { connection: String, existing: String, new: String },
    #[error("the authorization server returned no refresh token; check that the app may request offline_access")]
    NoRefreshToken,
    #[error(
        "connection {0:?} is an API-key connection; consent under another id, or delete it first \
         (`tcbridge connection delete {0}`)"
    )]
    ApiKeyConnection(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A connection id from a URL: 1-64 of letters, digits, `-`, `_`, `.`, starting with a letter or
/// digit. Anything else is refused before it reaches a store key or a page.
pub fn validate_id(id: &str) -> Result<(), String> {
    crate::naming::ConnectionId::parse(id).map(|_| ()).map_err(|e| e.to_string())
}

pub async fn get(stores: &Stores, id: &str) -> Result<Option<Versioned<Connection>>, StoreError> {
    TypedTable::new(stores.tables.as_ref(), Table::Connections).get(PARTITION, id).await
}

pub async fn list(stores: &Stores) -> Result<Vec<Connection>, StoreError> {
    let mut out = Vec::new();
    let mut continuation = None;
    loop {
        let page =
            stores.tables.query(Table::Connections, PARTITION, &RowRange::all(), 1000, continuation.as_deref()).await?;
        for entity in page.entities {
            out.push(crate::store::from_properties(entity.properties)?);
        }
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => return Ok(out),
        }
    }
}

/// Records a consent: stores the token set (a new secret version), then creates or updates the
/// connection to name it. The record's failure state starts afresh; its id (and so its
/// cursors) stays. `refresh_margin` is `TOKEN_REFRESH_MARGIN_SECONDS`.
pub async fn save_consent(
    stores: &Stores,
    mut connection: Connection,
    tokens: &TokenResponse,
    refresh_margin: std::time::Duration,
    replace: bool,
) -> Result<Option<String>, ConsentError> {
    let refresh_token = tokens.refresh_token.clone().ok_or(ConsentError::NoRefreshToken)?;
    // One id, one way in: a consent must not hide an API-key connection (and its team).
    if keyed::get(stores, &connection.id).await?.is_some() {
        return Err(ConsentError::ApiKeyConnection(connection.id.clone()));
    }
    let table = TypedTable::new(stores.tables.as_ref(), Table::Connections);
    let mut existing = get(stores, &connection.id).await?;
    let mut replaced = account_switch(existing.as_ref(), &connection, replace)?;
    let issued_at = connection.consented_at;
    let generation = existing.as_ref().map_or(0, |e| e.value.token_generation) + 1;
    let set =
        TokenSet::from_consent(generation, tokens, refresh_token, connection.scopes.clone(), issued_at, refresh_margin);
    connection.token_set_secret = connection_secret_name(REFRESH_TOKEN_SECRET, &connection.id);
    connection.token_set_version = Some(stores.secrets.set(&connection.token_set_secret, &set.to_secret()).await?);
    connection.access_token_expires_at = set.expires_at;
    connection.refresh_at = set.refresh_at;
    connection.expires_in_assumed = tokens.expires_in_assumed;
    connection.last_refresh_success = Some(issued_at);
    // A refresh or a failure record may land between our read and our write: read again and
    // retry, still refusing an account switch that was not asked for.
    for attempt in 1..=5 {
        connection.token_generation = set.generation.max(existing.as_ref().map_or(0, |e| e.value.token_generation) + 1);
        // The team is the operator's declaration, not the consent's: a re-consent keeps it.
        connection.team = existing.as_ref().and_then(|e| e.value.team.clone());
        let written = match &existing {
            None => table.insert(PARTITION, &connection.id, &connection).await,
            Some(current) => {
                table.update(PARTITION, &connection.id, &connection, IfMatch::ETag(current.etag.clone())).await
            }
        };
        match written {
            Ok(_) => break,
            Err(
                StoreError::AlreadyExists { .. } | StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. },
            ) if attempt < 5 => {
                existing = get(stores, &connection.id).await?;
                replaced = account_switch(existing.as_ref(), &connection, replace)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Alerts about the old grant are over (each says it is resolved); a new failure alerts
    // again. The others (a poisoned push, a stalled sync) last until their own cause clears.
    if let Err(e) =
        crate::alerts::clear_connection_named(stores, &connection.id, &crate::alerts::AlertKind::GRANT).await
    {
        tracing::warn!(connection = %connection.id, error = %e, "old alerts could not be cleared");
    }
    Ok(replaced)
}

/// Every connection id data may be kept under: the consented ones, the app-only one
/// (`OAUTH_GRANT=client_credentials`), the API key's (`TRUECONTEXT_AUTH=basic`) and every
/// API-key connection added.
pub async fn known_ids(stores: &Stores, settings: &crate::config::Settings) -> Result<Vec<String>, StoreError> {
    Ok(known_ids_of(&list(stores).await?, &keyed::list(stores).await?, settings))
}

/// [`known_ids`] from records already read.
pub fn known_ids_of(
    consented: &[Connection],
    added: &[ApiKeyConnection],
    settings: &crate::config::Settings,
) -> Vec<String> {
    let mut ids: Vec<String> = consented.iter().map(|c| c.id.clone()).collect();
    ids.extend(added.iter().map(|c| c.id.to_string()));
    if settings.oauth.grant == crate::config::OAuthGrant::ClientCredentials {
        ids.push(APP_ONLY_CONNECTION.to_owned());
    }
    if settings.truecontext.auth == crate::config::TrueContextAuth::Basic {
        ids.push(settings.truecontext.connection.clone());
    }
    ids.sort();
    ids.dedup();
    ids
}

/// The record of the app-only connection (`OAUTH_GRANT=client_credentials`): it exists from
/// configuration, with no consent and no refresh token; its token set holds the app's token.
pub fn app_only_record(oauth: &crate::config::OAuthSettings, now: DateTime<Utc>) -> Connection {
    let provider = format!("{:?}", oauth.provider).to_ascii_lowercase();
    let account = format!("app {}", oauth.client_id.as_deref().unwrap_or("(OAUTH_CLIENT_ID not set)"));
    Connection {
        token_set_secret: connection_secret_name("app-token", APP_ONLY_CONNECTION),
        ..Connection::new(APP_ONLY_CONNECTION, provider, account, oauth.scopes.clone(), now)
    }
}

/// Refuses a consent by another account than the connection's unless `replace` was asked for;
/// with it, names the account replaced.
fn account_switch(
    existing: Option<&Versioned<Connection>>,
    connection: &Connection,
    replace: bool,
) -> Result<Option<String>, ConsentError> {
    let Some(existing) = existing.filter(|e| e.value.account != connection.account) else { return Ok(None) };
    if !replace {
        return Err(ConsentError::AccountSwitch {
            connection: connection.id.clone(),
            existing: existing.value.display_account().to_owned(),
            new: connection.display_account().to_owned(),
        });
    }
    Ok(Some(existing.value.display_account().to_owned()))
}

/// The admin's link for connecting `id`: the authorize route on the same origin as
/// `OAUTH_REDIRECT_URI` (the externally visible callback), so no other setting is needed.
pub fn consent_url(settings: &crate::config::Settings, id: &str) -> Result<url::Url, String> {
    validate_id(id)?;
    if settings.oauth.grant == crate::config::OAuthGrant::ClientCredentials {
        return Err("OAUTH_GRANT=client_credentials: the app has access without consent; there is no link".into());
    }
    let callback = settings
        .oauth
        .redirect_uri
        .as_ref()
        .ok_or("OAUTH_REDIRECT_URI is not set; it gives the bridge's public address")?;
    let mut url = callback.clone();
    let path = match callback.path().strip_suffix("/callback") {
        Some(prefix) => format!("{prefix}/authorize"),
        None => {
            return Err("OAUTH_REDIRECT_URI does not end in /callback, so the authorize route cannot be derived".into())
        }
    };
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    url.query_pairs_mut().append_pair("connection", id);
    Ok(url)
}
