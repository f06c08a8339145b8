//! What the secret store holds for a connection: one secret version per token set, so a refresh
//! costs exactly one secret-store write and every instance can read the access token another
//! instance just obtained (that is what lets N instances make one token-endpoint call per expiry).
//!
//! The value is JSON with the refresh token, the access token and when to refresh. A value that
//! is not JSON is a bare refresh token (how the first connections were stored).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::clock::delta;
use crate::oauth::token::TokenResponse;
use crate::secret::SecretString;

#[derive(Debug, Clone)]
pub struct TokenSet {
    /// Counts the token sets written for this connection; the record names the one in force.
    pub generation: u64,
    pub refresh_token: Option<SecretString>,
    pub access_token: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    pub issued_at: DateTime<Utc>,
    /// For a set stored by a refresh: the version the connection record named when that
    /// refresh began (the set it replaces). `None` for a consent's set. Lets the next refresh
    /// recognise, and adopt, a set whose refresh died before it could update the record.
    pub supersedes: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    generation: u64,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    refresh_at: Option<DateTime<Utc>>,
    #[serde(default)]
    scopes: Vec<String>,
    issued_at: DateTime<Utc>,
    #[serde(default)]
    supersedes: Option<String>,
}

impl TokenSet {
    /// The set a consent stores: the code redemption's tokens, superseding nothing.
    pub fn from_consent(
        generation: u64,
        response: &TokenResponse,
        refresh_token: SecretString,
        scopes: Vec<String>,
        issued_at: DateTime<Utc>,
        refresh_margin: std::time::Duration,
    ) -> Self {
        TokenSet {
            generation,
            refresh_token: Some(refresh_token),
            access_token: Some(response.access_token.clone()),
            expires_at: Some(issued_at + delta(response.expires_in)),
            refresh_at: Some(refresh_time(issued_at, response.expires_in, refresh_margin, response.refresh_in)),
            scopes,
            issued_at,
            supersedes: None,
        }
    }

    /// The set a refresh stores: the new tokens, keeping `previous`'s refresh token when the
    /// server sent none (it did not rotate).
    pub fn from_refresh(
        generation: u64,
        response: TokenResponse,
        previous: TokenSet,
        scopes: Vec<String>,
        issued_at: DateTime<Utc>,
        refresh_margin: std::time::Duration,
        supersedes: Option<String>,
    ) -> Self {
        TokenSet {
            generation,
            refresh_token: response.refresh_token.or(previous.refresh_token),
            access_token: Some(response.access_token),
            expires_at: Some(issued_at + delta(response.expires_in)),
            refresh_at: Some(refresh_time(issued_at, response.expires_in, refresh_margin, response.refresh_in)),
            scopes,
            issued_at,
            supersedes,
        }
    }

    /// Only a refresh token: the rotated one that came with an answer we could not use, or one
    /// stored bare before token sets were JSON.
    pub fn refresh_token_only(
        generation: u64,
        refresh_token: SecretString,
        scopes: Vec<String>,
        issued_at: DateTime<Utc>,
        supersedes: Option<String>,
    ) -> Self {
        TokenSet {
            generation,
            refresh_token: Some(refresh_token),
            access_token: None,
            expires_at: None,
            refresh_at: None,
            scopes,
            issued_at,
            supersedes,
        }
    }

    /// No tokens yet: the app-only connection before its first token.
    pub fn empty(now: DateTime<Utc>) -> Self {
        TokenSet {
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

    /// The same set without its access token (for a secret store that cannot hold it all).
    pub fn without_access_token(&self) -> Self {
        TokenSet { access_token: None, ..self.clone() }
    }

    pub fn to_secret(&self) -> SecretString {
        let wire = Wire {
            v: 1,
            generation: self.generation,
            refresh_token: self.refresh_token.as_ref().map(|s| s.expose().to_owned()),
            access_token: self.access_token.as_ref().map(|s| s.expose().to_owned()),
            expires_at: self.expires_at,
            refresh_at: self.refresh_at,
            scopes: self.scopes.clone(),
            issued_at: self.issued_at,
            supersedes: self.supersedes.clone(),
        };
        let text = Zeroizing::new(serde_json::to_string(&wire).expect("plain data serialises"));
        // The copies made for serialisation are wiped as the originals would be.
        for mut copy in [wire.refresh_token, wire.access_token].into_iter().flatten() {
            copy.zeroize();
        }
        SecretString::new(text.as_str())
    }

    /// Reads a stored value. The error names what is wrong, never the value.
    pub fn from_secret(value: &SecretString, created: DateTime<Utc>) -> Result<Self, String> {
        let text = value.expose().trim();
        if !text.starts_with('{') {
            if text.is_empty() {
                return Err("the stored token set is empty".into());
            }
            return Ok(TokenSet::refresh_token_only(0, SecretString::new(text), Vec::new(), created, None));
        }
        let wire: Wire = serde_json::from_str(text).map_err(|_| "the stored token set is not readable".to_owned())?;
        if wire.v != 1 {
            return Err(format!("the stored token set has unknown format version {}", wire.v));
        }
        Ok(TokenSet {
            generation: wire.generation,
            refresh_token: wire.refresh_token.filter(|t| !t.is_empty()).map(SecretString::new),
            access_token: wire.access_token.filter(|t| !t.is_empty()).map(SecretString::new),
            expires_at: wire.expires_at,
            refresh_at: wire.refresh_at,
            scopes: wire.scopes,
            issued_at: wire.issued_at,
            supersedes: wire.supersedes,
        })
    }
}

/// When to refresh a token issued at `issued` that lives `lifetime`: `margin` before expiry, but
/// never earlier than half its life (a token shorter-lived than the margin is still used), and
/// at the server's `refresh_in` hint when that comes sooner (Entra sends it).
pub fn refresh_time(
    issued: DateTime<Utc>,
    lifetime: std::time::Duration,
    margin: std::time::Duration,
    refresh_in: Option<std::time::Duration>,
) -> DateTime<Utc> {
    let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX / 4);
    let margin_ms = i64::try_from(margin.as_millis()).unwrap_or(i64::MAX / 4).min(lifetime_ms / 2);
    let mut at = issued + chrono::TimeDelta::milliseconds(lifetime_ms - margin_ms);
    if let Some(hint) = refresh_in.and_then(|h| chrono::TimeDelta::from_std(h).ok()) {
        at = at.min(issued + hint);
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn round_trip_keeps_every_field_and_prints_nothing_secret() {
        let now = Utc::now();
        let set = TokenSet {
            generation: 7,
            refresh_token: Some(SecretString::new("rt-secret")),
            access_token: Some(SecretString::new("at-secret")),
            expires_at: Some(now + chrono::TimeDelta::seconds(3600)),
            refresh_at: Some(now + chrono::TimeDelta::seconds(3000)),
            scopes: vec!["openid".into(), "api".into()],
            issued_at: now,
            supersedes: Some("v1".into()),
        };
        let stored = set.to_secret();
        let back = TokenSet::from_secret(&stored, now).unwrap();
        assert_eq!(back.generation, 7);
        assert_eq!(back.refresh_token.unwrap().expose(), "rt-secret");
        assert_eq!(back.access_token.unwrap().expose(), "at-secret");
        assert_eq!(back.expires_at, set.expires_at);
        assert_eq!(back.scopes, set.scopes);
        assert_eq!(back.supersedes.as_deref(), Some("v1"));
        let printed = format!("{set:?} {stored:?}");
        assert!(!printed.contains("rt-secret") && !printed.contains("at-secret"), "{printed}");
    }

    #[test]
    fn a_bare_value_is_a_refresh_token_and_garbage_is_named_not_echoed() {
        let legacy = TokenSet::from_secret(&SecretString::new("old-rt"), Utc::now()).unwrap();
        assert_eq!(legacy.refresh_token.unwrap().expose(), "old-rt");
        assert_eq!(legacy.generation, 0);
        let err =
            TokenSet::from_secret(&SecretString::new("{\"v\":1,\"refresh_token\":\"leak"), Utc::now()).unwrap_err();
        assert!(!err.contains("leak"), "{err}");
        assert!(TokenSet::from_secret(
            &SecretString::new(r#"{"v":9,"generation":1,"issued_at":"2026-01-01T00:00:00Z"}"#),
            Utc::now()
        )
        .unwrap_err()
        .contains("version 9"));
    }

    #[test]
    fn refresh_time_uses_the_margin_half_life_and_refresh_in() {
        let t0 = Utc::now();
        let hour = Duration::from_secs(3600);
        let margin = Duration::from_secs(600);
        assert_eq!(refresh_time(t0, hour, margin, None), t0 + chrono::TimeDelta::seconds(3000));
        // A token shorter-lived than the margin is refreshed at half its life, not at once.
        assert_eq!(refresh_time(t0, Duration::from_secs(300), margin, None), t0 + chrono::TimeDelta::seconds(150));
        // Entra's refresh_in wins when it is sooner.
        let hinted = refresh_time(t0, hour, margin, Some(Duration::from_secs(1800)));
        assert_eq!(hinted, t0 + chrono::TimeDelta::seconds(1800));
        assert_eq!(
            refresh_time(t0, hour, margin, Some(Duration::from_secs(7200))),
            t0 + chrono::TimeDelta::seconds(3000)
        );
    }
}
