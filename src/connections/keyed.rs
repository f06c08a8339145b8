//! API-key connections and teams.
//!
//! TrueContext counts calls (about 2,500 a UTC day) and caps simultaneous calls (3) per *team*:
//! every connection that reads one team draws on the same day and the same three slots. The
//! operator says which connections share a team; the TrueContext client then accounts and stops
//! per team (`truecontext::Credentials::team`). A connection with no team declared is a team of
//! its own, named as the connection (what the bridge did before teams, so no budget moves).
//!
//! An API-key connection (`tcbridge connection add ID --team TEAM --key-id KEY --secret-setting
//! NAME`) is a record naming its key id and the *setting* that holds its secret: the secret never
//! enters the store. The setting must be one of the `TRUECONTEXT_KEY_SECRET_*` family (a Key
//! Vault reference in Azure), so a stored record can never make the bridge send another secret
//! (the OAuth client secret, the store key) to TrueContext as a password. One key is one team: a
//! key declared under two teams is refused.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::naming::ConnectionId;
use crate::store::{IfMatch, StoreError, Stores, Table, TypedTable};

/// Where API-key connections live in the `connections` table (apart from consents).
pub const API_KEY_PARTITION: &str = "apikey";
/// The settings an API-key connection may name for its secret.
pub use crate::config::KEY_SECRET_PREFIX as SECRET_SETTING_PREFIX;

/// One API-key connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyConnection {
    pub id: ConnectionId,
    pub team: Team,
    pub key_id: String,
    /// The setting holding the key's secret (`TRUECONTEXT_KEY_SECRET_*`).
    pub secret_setting: String,
    pub added_at: DateTime<Utc>,
}

/// A TrueContext team as the operator names it: the same rule as a connection id, so it can
/// key a store row and a lease.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Team(ConnectionId);

impl Team {
    pub fn parse(text: &str) -> Result<Self, KeyedError> {
        ConnectionId::parse(text).map(Team).map_err(|_| KeyedError::BadTeam(crate::telemetry::printable(text, 64)))
    }

    /// The team of a connection nobody declared one for: itself.
    pub fn of_own(connection: &ConnectionId) -> Self {
        Team(connection.clone())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyedError {
    #[error("the team {0:?} is not a team name: {rule}", rule = crate::naming::CONNECTION_ID_RULE)]
    BadTeam(String),
    #[error("the key id must be 1-200 printable characters without ':' (it is the user half of a Basic credential)")]
    BadKeyId,
    #[error("the secret setting {0:?} must be named {SECRET_SETTING_PREFIX}<NAME> (capitals, digits, '_'): only that family is read as an API key's secret")]
    BadSecretSetting(String),
    #[error("connection {0} already exists as a consented (OAuth) connection; pick another id")]
    ConsentedExists(String),
    #[error("connection {0} already exists with other settings; `tcbridge connection delete {0}` first to change it")]
    Exists(String),
    #[error("the key {key_id} is already the key of team {team} (connection {connection}); one key is one team")]
    KeyInOtherTeam { key_id: String, team: String, connection: String },
    #[error("no connection {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn table(stores: &Stores) -> TypedTable<'_> {
    TypedTable::new(stores.tables.as_ref(), Table::Connections)
}

/// Checks what an operator typed for a new API-key connection.
pub fn validate(key_id: &str, secret_setting: &str) -> Result<(), KeyedError> {
    let key_ok =
        (1..=200).contains(&key_id.chars().count()) && key_id.chars().all(|c| c.is_ascii_graphic() && c != ':');
    if !key_ok {
        return Err(KeyedError::BadKeyId);
    }
    let suffix_ok = secret_setting.strip_prefix(SECRET_SETTING_PREFIX).is_some_and(|rest| {
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    });
    if !suffix_ok {
        return Err(KeyedError::BadSecretSetting(crate::telemetry::printable(secret_setting, 80)));
    }
    Ok(())
}

/// Adds an API-key connection. Adding the same one again changes nothing (`Ok(false)`); one
/// that differs, an id a consent or the configured key (`TRUECONTEXT_CONNECTION` under
/// `TRUECONTEXT_AUTH=basic`) already uses, or a key already in another team (the configured
/// key's team is its connection) is refused.
pub async fn add(
    stores: &Stores,
    tc: &crate::config::TrueContextSettings,
    record: &ApiKeyConnection,
) -> Result<bool, KeyedError> {
    validate(&record.key_id, &record.secret_setting)?;
    let configured = tc.auth == crate::config::TrueContextAuth::Basic;
    if configured && record.id.as_str() == tc.connection {
        return Err(KeyedError::Exists(record.id.to_string()));
    }
    if tc.api_key_id.as_deref() == Some(record.key_id.as_str()) && record.team.as_str() != tc.connection {
        return Err(KeyedError::KeyInOtherTeam {
            key_id: record.key_id.clone(),
            team: tc.connection.clone(),
            connection: format!("{} (TRUECONTEXT_API_KEY_ID)", tc.connection),
        });
    }
    if super::get(stores, &record.id).await?.is_some() {
        return Err(KeyedError::ConsentedExists(record.id.to_string()));
    }
    if let Some(other) = list(stores).await?.into_iter().find(|o| o.key_id == record.key_id && o.team != record.team) {
        return Err(KeyedError::KeyInOtherTeam {
            key_id: record.key_id.clone(),
            team: other.team.to_string(),
            connection: other.id.to_string(),
        });
    }
    match table(stores).insert(API_KEY_PARTITION, &record.id, record).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists { .. }) => {
            let existing = get(stores, &record.id).await?;
            let same = existing.is_some_and(|e| {
                (e.team.clone(), e.key_id.as_str(), e.secret_setting.as_str())
                    == (record.team.clone(), record.key_id.as_str(), record.secret_setting.as_str())
            });
            if same {
                Ok(false)
            } else {
                Err(KeyedError::Exists(record.id.to_string()))
            }
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn get(stores: &Stores, id: &str) -> Result<Option<ApiKeyConnection>, StoreError> {
    Ok(table(stores).get::<ApiKeyConnection>(API_KEY_PARTITION, id).await?.map(|v| v.value))
}

/// Every API-key connection, by id.
pub async fn list(stores: &Stores) -> Result<Vec<ApiKeyConnection>, StoreError> {
    let entities = crate::store::query_partition(stores.tables.as_ref(), Table::Connections, API_KEY_PARTITION).await?;
    // One unreadable row (edited by hand, or by another version) is left out with a warning:
    // it must not stop the webhook, the sync and status, which all read this list.
    let mut out = Vec::new();
    for entity in entities {
        let key = crate::telemetry::printable(&entity.row_key, 64);
        match crate::store::from_properties::<ApiKeyConnection>(entity.properties) {
            Ok(record) => out.push(record),
            Err(e) => tracing::warn!(row = %key, error = %e, "an API-key connection record cannot be read; left out"),
        }
    }
    Ok(out)
}

/// Removes an API-key connection's record (its landed data and cursor stay, as a consent's do).
pub async fn remove(stores: &Stores, id: &str) -> Result<bool, StoreError> {
    match stores.tables.delete(Table::Connections, API_KEY_PARTITION, id, IfMatch::Any).await {
        Ok(()) => Ok(true),
        Err(StoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Puts a consented connection into `team` (or back into a team of its own with `None`).
pub async fn set_team(stores: &Stores, id: &str, team: Option<Team>) -> Result<(), KeyedError> {
    for _ in 0..5 {
        let Some(mut current) = super::get(stores, id).await? else {
            return Err(KeyedError::NotFound(id.to_owned()));
        };
        current.value.team = team.clone();
        let written =
            table(stores).update(super::PARTITION, id, &current.value, IfMatch::ETag(current.etag.clone())).await;
        match written {
            Ok(_) => return Ok(()),
            Err(StoreError::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Backend("the connection record is too contended to update".into()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_secret_family_may_hold_a_secret() {
        assert!(validate("key-1", "TRUECONTEXT_KEY_SECRET_ACME").is_ok());
        for setting in
            ["OAUTH_CLIENT_SECRET", "TRUECONTEXT_KEY_SECRET_", "TRUECONTEXT_KEY_SECRET_acme", "LOCAL_STORE_KEY"]
        {
            assert!(matches!(validate("k", setting), Err(KeyedError::BadSecretSetting(_))), "{setting}");
        }
        assert!(matches!(validate("a:b", "TRUECONTEXT_KEY_SECRET_A"), Err(KeyedError::BadKeyId)));
        assert!(matches!(validate("", "TRUECONTEXT_KEY_SECRET_A"), Err(KeyedError::BadKeyId)));
        assert!(Team::parse("acme-team").is_ok() && Team::parse("a/b").is_err());
    }

    /// The configured key is a team too (its connection's): it cannot join another one, and
    /// its connection id cannot be taken by an added key.
    #[tokio::test]
    async fn the_configured_key_keeps_its_team_and_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let stores = crate::store::local::open(dir.path(), None).unwrap();
        let raw = crate::config::RawSettings::from_pairs([
            ("TRUECONTEXT_AUTH", "basic"),
            ("TRUECONTEXT_API_KEY_ID", "key-9"),
            ("TRUECONTEXT_API_KEY_SECRET", "configured-secret-0123456789"),
        ]);
        let tc = crate::config::Settings::load(&raw).unwrap().truecontext;
        let record = |id: &str, team: &str, key: &str| ApiKeyConnection {
            id: ConnectionId::parse(id).unwrap(),
            team: Team::parse(team).unwrap(),
            key_id: key.into(),
            secret_setting: "TRUECONTEXT_KEY_SECRET_X".into(),
            added_at: Utc::now(),
        };
        let other_team = add(&stores, &tc, &record("eu", "acme", "key-9")).await;
        assert!(matches!(other_team, Err(KeyedError::KeyInOtherTeam { .. })), "{other_team:?}");
        let same_id = add(&stores, &tc, &record("default", "acme", "key-1")).await;
        assert!(matches!(same_id, Err(KeyedError::Exists(_))), "{same_id:?}");
        assert!(add(&stores, &tc, &record("eu", "default", "key-9")).await.unwrap(), "its own team is fine");
        assert_eq!(list(&stores).await.unwrap().len(), 1);
    }
}
