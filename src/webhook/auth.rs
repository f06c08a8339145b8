//! Who may push: TrueContext signs nothing (docs/truecontext-api.md, "Pushes"), so the caller
//! of `/api/webhook` proves itself in the way `WEBHOOK_AUTH` names, the way its HTTP Connection
//! is set up:
//!
//! * `jwt` (alias `entra`): `Authorization: Bearer <JWT>` from the configured issuer (the
//!   connection's OAuth 2.0 option). RS256 only; signature by a key of the issuer's published
//!   JWKS (the same cache the sign-in uses: an unknown `kid` reloads it, rate-limited); `iss`
//!   exact; `aud` = `WEBHOOK_AUDIENCE`; `exp`/`nbf` with a minute of leeway; optionally a role
//!   in `roles` and a client id (`azp`, or Entra v1's `appid`) from an allow-list.
//! * `basic`: `Authorization: Basic`, user name and password.
//! * `header`: a named header carrying a shared value (the connection's API-key option).
//!
//! Shared values are compared in constant time (both sides hashed, then compared with
//! `subtle`), and two values may be accepted at once while a rotation is under way. A refusal
//! names its reason for the log and the counters; it never carries what the caller sent.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use crate::config::{OAuthProvider, OAuthSettings, WebhookAuth, WebhookSettings};
use crate::oauth::id_token::{verify_signature, IdTokenError};
use crate::oauth::jwks::JwksCaches;
use crate::secret::SecretString;

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 60;
/// After a failed discovery of the issuer's keys, the next try waits this long.
const DISCOVERY_BACKOFF: Duration = Duration::from_secs(10);
const MAX_DISCOVERY_BYTES: usize = 256 * 1024;

/// Why a push was refused. [`Refusal::code`] is what the counters and the log carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("WEBHOOK_AUTH is not set, so every push is refused")]
    NotConfigured,
    #[error("no credentials were sent")]
    Missing,
    #[error("the credentials are malformed: {0}")]
    Malformed(String),
    #[error("the credentials are wrong")]
    Wrong,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token comes from another issuer")]
    WrongIssuer,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token is signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("the token is signed with {0}, which is not allowed (RS256 only)")]
    AlgorithmNotAllowed(String),
    #[error("the token does not carry the required role")]
    MissingRole,
    #[error("the token was issued to a client that may not push")]
    ClientNotAllowed,
    #[error("the token was issued for a user (it has delegated scopes), not for an application")]
    NotAppOnly,
    #[error("the token lives longer than WEBHOOK_MAX_TOKEN_LIFETIME_SECONDS allows")]
    LifetimeTooLong,
    #[error("these credentials may not push to connection {0}")]
    ConnectionNotAllowed(String),
    /// Not the caller's fault: the issuer's keys could not be loaded. Answered 503.
    #[error("the issuer's signing keys could not be loaded: {0}")]
    KeysUnavailable(String),
}

impl Refusal {
    /// A stable name for counters and log lines.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotConfigured => "not_configured",
            Refusal::Missing => "missing",
            Refusal::Malformed(_) => "malformed",
            Refusal::Wrong => "wrong_credentials",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::BadSignature => "bad_signature",
            Refusal::UnknownKey => "unknown_key",
            Refusal::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Refusal::MissingRole => "missing_role",
            Refusal::ClientNotAllowed => "client_not_allowed",
            Refusal::NotAppOnly => "not_app_only",
            Refusal::LifetimeTooLong => "lifetime_too_long",
            Refusal::ConnectionNotAllowed(_) => "connection_not_allowed",
            Refusal::KeysUnavailable(_) => "keys_unavailable",
        }
    }

    /// True when the caller is not at fault (answer 503, so TrueContext retries).
    pub fn is_ours(&self) -> bool {
        matches!(self, Refusal::KeysUnavailable(_) | Refusal::NotConfigured)
    }
}

/// Who the caller proved to be: for the log, and for which connections it may push to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// A user name, a header name, or a client id, for the log.
    pub name: String,
    pub proof: Proof,
}

/// What the caller's credential was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The shared password or header value.
    Shared,
    /// One connection's own value (`WEBHOOK_CONNECTION_SECRETS`).
    Connection(String),
    /// A token issued to this client id (`jwt`).
    Client(Option<String>),
}

/// The configured way of checking callers.
pub struct Verifier {
    mode: Option<WebhookAuth>,
    settings: WebhookSettings,
    /// The `jwt` issuer and the URL its discovery document is read from.
    issuer: Option<Issuer>,
    resolved: Mutex<Resolution>,
    /// One discovery at a time: cold requests arriving together wait for the first one's
    /// answer instead of each fetching the document.
    discovering: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct Issuer {
    discovery: Url,
    /// The `iss` a token must carry; `None` until read from the discovery document (Entra's
    /// default issuer is the tenant's, as its metadata spells it).
    expected: Option<String>,
}

#[derive(Default)]
enum Resolution {
    #[default]
    Unknown,
    Known {
        issuer: String,
        jwks_uri: Url,
    },
    Failed {
        at: Instant,
        reason: String,
    },
}

impl Verifier {
    pub fn new(settings: &WebhookSettings, oauth: &OAuthSettings) -> Self {
        Self {
            mode: settings.auth,
            settings: settings.clone(),
            issuer: jwt_issuer(settings, oauth),
            resolved: Mutex::new(Resolution::Unknown),
            discovering: tokio::sync::Mutex::new(()),
        }
    }

    /// The `WWW-Authenticate` challenge a refusal carries.
    pub fn challenge(&self, refusal: &Refusal) -> String {
        match self.mode {
            Some(WebhookAuth::Jwt) | None => {
                let error = match refusal {
                    Refusal::Missing => String::new(),
                    _ => ", error=\"invalid_token\"".to_owned(),
                };
                format!("Bearer realm=\"truecontext-bridge\"{error}")
            }
            Some(WebhookAuth::Basic) => "Basic realm=\"truecontext-bridge\", charset=\"UTF-8\"".to_owned(),
            Some(WebhookAuth::Header) => {
                format!(
                    "ApiKey realm=\"truecontext-bridge\", header=\"{}\"",
                    self.settings.header_name.as_deref().unwrap_or("")
                )
            }
        }
    }

    /// Checks the caller of one request.
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        http: &reqwest::Client,
        jwks: &JwksCaches,
        now: i64,
    ) -> Result<Caller, Refusal> {
        match self.mode {
            None => Err(Refusal::NotConfigured),
            Some(WebhookAuth::Basic) => self.basic(headers),
            Some(WebhookAuth::Header) => self.header(headers),
            Some(WebhookAuth::Jwt) => self.jwt(headers, http, jwks, now).await,
        }
    }

    fn basic(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let value = single_header(headers, "authorization")?;
        let Some(encoded) = strip_scheme(value, "Basic") else {
            return Err(Refusal::Malformed("the Authorization header is not Basic".into()));
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| Refusal::Malformed("the Basic credentials are not base64".into()))?;
        let decoded = SecretString::new(
            String::from_utf8(decoded).map_err(|_| Refusal::Malformed("the Basic credentials are not UTF-8".into()))?,
        );
        let Some((user, password)) = decoded.expose().split_once(':') else {
            return Err(Refusal::Malformed("the Basic credentials have no colon".into()));
        };
        let expected_user = self.settings.basic_username.as_deref().unwrap_or_default();
        // Every check always runs, so the time taken says nothing about which one failed.
        let user_ok = same(user, expected_user);
        let proof = self.secret_proof(password, &self.settings.basic_passwords);
        match proof {
            Some(proof) if user_ok && !password.is_empty() => {
                Ok(Caller { name: format!("basic user {expected_user}"), proof })
            }
            _ => Err(Refusal::Wrong),
        }
    }

    /// Which value `given` is: a shared one, or one connection's own; every value is compared.
    fn secret_proof(&self, given: &str, shared: &[SecretString]) -> Option<Proof> {
        let shared_ok = any_same(given, shared);
        let mut own = None;
        for (connection, value) in &self.settings.connection_secrets {
            if same(given, value.expose()) {
                own = Some(Proof::Connection(connection.clone()));
            }
        }
        if shared_ok {
            Some(Proof::Shared)
        } else {
            own
        }
    }

    /// Whether `caller` may push to `connection`: a connection with its own value
    /// (`WEBHOOK_CONNECTION_SECRETS`) or its own clients (`WEBHOOK_CONNECTION_CLIENT_IDS`) takes
    /// only those; any other takes the shared value, or a client of `WEBHOOK_ALLOWED_CLIENT_IDS`
    /// (any client that passed the role check when that list is empty), but never a client that
    /// is one connection's own: that would let one organisation's client push into another's.
    pub fn may_push(&self, caller: &Caller, connection: &str) -> Result<(), Refusal> {
        let refused = || Err(Refusal::ConnectionNotAllowed(connection.to_owned()));
        match &caller.proof {
            Proof::Shared if !self.settings.connection_secrets.contains_key(connection) => Ok(()),
            Proof::Connection(own) if own == connection => Ok(()),
            Proof::Shared | Proof::Connection(_) => refused(),
            Proof::Client(client) => {
                let client = client.as_deref().unwrap_or_default();
                let listed = |list: &[String]| list.iter().any(|c| c == client);
                let bound_elsewhere = self.settings.connection_client_ids.values().any(|own| listed(own));
                match self.settings.connection_client_ids.get(connection) {
                    Some(own) if listed(own) => Ok(()),
                    Some(_) => refused(),
                    None if listed(&self.settings.allowed_client_ids) => Ok(()),
                    None if self.settings.allowed_client_ids.is_empty() && !bound_elsewhere => Ok(()),
                    None => refused(),
                }
            }
        }
    }

    fn header(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let name = self.settings.header_name.as_deref().unwrap_or_default();
        let value = single_header(headers, name)?;
        match self.secret_proof(value, &self.settings.header_values) {
            Some(proof) if !value.is_empty() => Ok(Caller { name: format!("header {name}"), proof }),
            _ => Err(Refusal::Wrong),
        }
    }

    async fn jwt(
        &self,
        headers: &HeaderMap,
        http: &reqwest::Client,
        jwks: &JwksCaches,
        now: i64,
    ) -> Result<Caller, Refusal> {
        let value = single_header(headers, "authorization")?;
        let Some(token) = strip_scheme(value, "Bearer") else {
            return Err(Refusal::Malformed("the Authorization header is not Bearer".into()));
        };
        let token = token.trim();
        let (issuer, jwks_uri) = self.resolve(http).await?;
        let keys = jwks.get(&jwks_uri, http);
        let (claims, key) = verify_signature(&keys, token, &[Algorithm::RS256]).await.map_err(refusal_of)?;
        check_claims(&claims, &issuer, &self.settings, now)?;
        if let Some(bound) = &key.issuer {
            // Entra binds each key to an issuer (template); a key of one tenant cannot vouch for another.
            let tid = claims.get("tid").and_then(Value::as_str).unwrap_or_default();
            if bound.replace(crate::oauth::id_token::TENANT_PLACEHOLDER, tid) != issuer {
                return Err(Refusal::WrongIssuer);
            }
        }
        let client = client_id(&claims);
        Ok(Caller {
            name: format!("client {}", printable(client.unwrap_or("(no client id)"))),
            proof: Proof::Client(client.map(str::to_owned)),
        })
    }

    /// Where the `jwt` issuer's discovery document is read (`tcbridge check` names it).
    pub fn issuer_discovery(&self) -> Option<&Url> {
        self.issuer.as_ref().map(|i| &i.discovery)
    }

    /// Reads the issuer's discovery document and key set afresh (`tcbridge check --online`):
    /// what it found, or what is wrong.
    pub async fn probe(&self, http: &reqwest::Client) -> Result<String, String> {
        let issuer =
            self.issuer.as_ref().ok_or("no issuer is configured: set WEBHOOK_JWT_ISSUER (or OAUTH_AUTHORITY)")?;
        let (found, jwks_uri) = discover(http, issuer).await?;
        let keys = crate::oauth::jwks::JwksCache::new(jwks_uri.clone(), http.clone())
            .probe()
            .await
            .map_err(|reason| format!("the key set {jwks_uri}: {reason}"))?;
        Ok(format!("issuer {found}: {keys} usable signing key(s)"))
    }

    /// The issuer and its JWKS URL, from its discovery document, read once (a failure is
    /// retried after a pause, so a down issuer costs one fetch per pause, not one per push).
    async fn resolve(&self, http: &reqwest::Client) -> Result<(String, Url), Refusal> {
        let Some(issuer) = &self.issuer else {
            return Err(Refusal::KeysUnavailable(
                "no issuer is configured: set WEBHOOK_JWT_ISSUER (or OAUTH_AUTHORITY)".into(),
            ));
        };
        let known = || -> Option<Result<(String, Url), Refusal>> {
            let resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            match &*resolved {
                Resolution::Known { issuer, jwks_uri } => Some(Ok((issuer.clone(), jwks_uri.clone()))),
                Resolution::Failed { at, reason } if at.elapsed() < DISCOVERY_BACKOFF => {
                    Some(Err(Refusal::KeysUnavailable(reason.clone())))
                }
                _ => None,
            }
        };
        if let Some(answer) = known() {
            return answer;
        }
        let _turn = self.discovering.lock().await;
        // Whoever held the turn before may have settled it.
        if let Some(answer) = known() {
            return answer;
        }
        let result = discover(http, issuer).await;
        let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((found, jwks_uri)) => {
                *resolved = Resolution::Known { issuer: found.clone(), jwks_uri: jwks_uri.clone() };
                Ok((found, jwks_uri))
            }
            Err(reason) => {
                tracing::warn!(%reason, "the webhook's token issuer could not be discovered");
                *resolved = Resolution::Failed { at: Instant::now(), reason: reason.clone() };
                Err(Refusal::KeysUnavailable(reason))
            }
        }
    }
}

/// The issuer `jwt` trusts: `WEBHOOK_JWT_ISSUER`, else the sign-in's authority (for Entra, the
/// tenant's v2 issuer as its metadata names it; a multi-tenant authority names no one issuer).
fn jwt_issuer(settings: &WebhookSettings, oauth: &OAuthSettings) -> Option<Issuer> {
    if let Some(issuer) = &settings.jwt_issuer {
        let discovery = crate::oauth::provider::discovery_url(OAuthProvider::Oidc, issuer);
        return Some(Issuer { discovery, expected: Some(issuer.as_str().trim_end_matches('/').to_owned()) });
    }
    let authority = oauth.authority.as_ref()?;
    match oauth.provider {
        OAuthProvider::Entra | OAuthProvider::B2c => {
            Some(Issuer { discovery: crate::oauth::provider::discovery_url(oauth.provider, authority), expected: None })
        }
        OAuthProvider::Oidc | OAuthProvider::Oauth2 => Some(Issuer {
            discovery: crate::oauth::provider::discovery_url(OAuthProvider::Oidc, authority),
            expected: Some(authority.as_str().trim_end_matches('/').to_owned()),
        }),
    }
}

async fn discover(http: &reqwest::Client, issuer: &Issuer) -> Result<(String, Url), String> {
    let response = http
        .get(issuer.discovery.clone())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("{} could not be reached: {}", issuer.discovery, e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!("{} answered {}", issuer.discovery, response.status().as_u16()));
    }
    let bytes = response.bytes().await.map_err(|e| format!("{}: {}", issuer.discovery, e.without_url()))?;
    if bytes.len() > MAX_DISCOVERY_BYTES {
        return Err(format!("{} sent more than 256 KiB", issuer.discovery));
    }
    let doc: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| format!("{} is not a JSON object", issuer.discovery))?;
    let found = doc.get("issuer").and_then(Value::as_str).ok_or(format!("{} names no issuer", issuer.discovery))?;
    if found.contains(crate::oauth::id_token::TENANT_PLACEHOLDER) {
        return Err("the authority is multi-tenant; set WEBHOOK_JWT_ISSUER to the caller's tenant issuer".into());
    }
    if let Some(expected) = &issuer.expected {
        if found.trim_end_matches('/') != expected {
            return Err(format!("{} names the issuer {found}, not {expected}", issuer.discovery));
        }
    }
    let jwks_uri =
        doc.get("jwks_uri").and_then(Value::as_str).ok_or(format!("{} names no jwks_uri", issuer.discovery))?;
    let jwks_uri = Url::parse(jwks_uri).map_err(|_| format!("{} names an invalid jwks_uri", issuer.discovery))?;
    let loopback = matches!(jwks_uri.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if jwks_uri.scheme() != "https" && !loopback {
        return Err(format!("{} names a jwks_uri that is not https", issuer.discovery));
    }
    Ok((found.to_owned(), jwks_uri))
}

fn refusal_of(e: IdTokenError) -> Refusal {
    match e {
        IdTokenError::AlgorithmNotAllowed(alg) => Refusal::AlgorithmNotAllowed(alg),
        IdTokenError::BadSignature => Refusal::BadSignature,
        IdTokenError::UnknownKey => Refusal::UnknownKey,
        IdTokenError::JwksUnavailable(reason) => Refusal::KeysUnavailable(reason),
        IdTokenError::Encrypted => Refusal::Malformed("the token is encrypted (JWE)".into()),
        IdTokenError::Malformed(reason) => Refusal::Malformed(reason.replace("id_token", "token")),
        _ => Refusal::BadSignature,
    }
}

/// The claims an access token for the webhook must carry.
fn check_claims(
    claims: &Map<String, Value>,
    issuer: &str,
    settings: &WebhookSettings,
    now: i64,
) -> Result<(), Refusal> {
    if claims.get("iss").and_then(Value::as_str).map(|i| i.trim_end_matches('/')) != Some(issuer.trim_end_matches('/'))
    {
        return Err(Refusal::WrongIssuer);
    }
    let audience = settings.audience.as_deref().unwrap_or_default();
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(Refusal::WrongAudience);
    }
    let time = |name: &str| -> Result<Option<i64>, Refusal> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| Refusal::Malformed(format!("the {name} claim is not a time"))),
            Some(_) => Err(Refusal::Malformed(format!("the {name} claim is not a number"))),
        }
    };
    let Some(exp) = time("exp")? else { return Err(Refusal::Malformed("the token has no exp claim".into())) };
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(Refusal::Expired);
    }
    if time("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
        return Err(Refusal::NotYetValid);
    }
    // A token minted to live for years is a stolen key waiting to happen: its lifetime from
    // issue (or, without `iat`, from now) must stay within the setting.
    let issued = time("iat")?.unwrap_or(now).min(now.saturating_add(LEEWAY_SECS));
    let lifetime = u64::try_from(exp.saturating_sub(issued)).unwrap_or(0);
    if lifetime > settings.max_token_lifetime.as_secs().saturating_add(LEEWAY_SECS as u64) {
        return Err(Refusal::LifetimeTooLong);
    }
    // TrueContext pushes as an application. Entra marks a user's (delegated) token with `scp`,
    // and, when the optional claim is on, an app-only one with `idtyp: app`.
    if claims.contains_key("scp") {
        return Err(Refusal::NotAppOnly);
    }
    if claims.get("idtyp").is_some_and(|t| t.as_str() != Some("app")) {
        return Err(Refusal::NotAppOnly);
    }
    if let Some(role) = &settings.required_role {
        let has =
            claims.get("roles").and_then(Value::as_array).is_some_and(|r| r.iter().any(|v| v.as_str() == Some(role)));
        if !has {
            return Err(Refusal::MissingRole);
        }
    }
    let lists = || settings.allowed_client_ids.iter().chain(settings.connection_client_ids.values().flatten());
    if lists().next().is_some() {
        // Listed anywhere: which connections it may push to is judged once the push names one.
        let allowed = client_id(claims).is_some_and(|c| lists().any(|a| a == c));
        if !allowed {
            return Err(Refusal::ClientNotAllowed);
        }
    }
    Ok(())
}

/// The client the token was issued to: `azp` (v2 tokens) or `appid` (Entra v1 tokens).
fn client_id(claims: &Map<String, Value>) -> Option<&str> {
    claims.get("azp").or_else(|| claims.get("appid")).and_then(Value::as_str)
}

/// The one value of a header; none is `Missing`, several or non-text is `Malformed`.
fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, Refusal> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else { return Err(Refusal::Missing) };
    if values.next().is_some() {
        return Err(Refusal::Malformed(format!("the {name} header is sent more than once")));
    }
    let text = first.to_str().map_err(|_| Refusal::Malformed(format!("the {name} header is not text")))?;
    if text.trim().is_empty() {
        return Err(Refusal::Missing);
    }
    Ok(text)
}

/// `value` without its auth scheme (matched case-insensitively, as RFC 9110 says).
fn strip_scheme<'v>(value: &'v str, scheme: &str) -> Option<&'v str> {
    let (given, rest) = value.trim_start().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// Constant-time equality of two texts of any length: both are hashed first, so neither the
/// position of the first difference nor the expected length shows in the time taken.
fn same(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.ct_eq(&b).into()
}

/// `given` equals one of `accepted` (each compared, whatever the outcome of the others).
fn any_same(given: &str, accepted: &[SecretString]) -> bool {
    accepted.iter().fold(false, |found, value| same(given, value.expose()) | found)
}

fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn settings(mode: WebhookAuth) -> WebhookSettings {
        WebhookSettings {
            auth: Some(mode),
            basic_username: Some("tc".into()),
            basic_passwords: vec![
                SecretString::new("old-password-0123456789"),
                SecretString::new("new-password-0123456789"),
            ],
            header_name: Some("x-api-key".into()),
            header_values: vec![SecretString::new("header-value-0123456789")],
            jwt_issuer: None,
            audience: Some("api://webhook".into()),
            required_role: None,
            allowed_client_ids: vec![],
            connection_client_ids: Default::default(),
            connection_secrets: [("fabrikam".to_owned(), SecretString::new("fabrikam-own-value-0123456789"))].into(),
            max_token_lifetime: Duration::from_secs(86_400),
            max_body_bytes: 1024,
            id_field: None,
            recovery_after: Duration::from_secs(60),
            max_backlog_age: Duration::from_secs(900),
        }
    }

    fn verifier(mode: WebhookAuth) -> Verifier {
        let raw = crate::config::RawSettings::from_pairs([("OAUTH_CLIENT_ID", "x")]);
        let oauth = crate::config::Settings::load(&raw).unwrap().oauth;
        Verifier::new(&settings(mode), &oauth)
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        map
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers("authorization", &format!("Basic {encoded}"))
    }

    #[test]
    fn basic_accepts_both_values_of_a_rotation_and_nothing_else() {
        let v = verifier(WebhookAuth::Basic);
        assert!(v.basic(&basic("tc", "old-password-0123456789")).is_ok());
        assert!(v.basic(&basic("tc", "new-password-0123456789")).is_ok());
        assert_eq!(v.basic(&basic("tc", "new-password-012345678")), Err(Refusal::Wrong));
        assert_eq!(v.basic(&basic("other", "new-password-0123456789")), Err(Refusal::Wrong));
        assert_eq!(v.basic(&basic("tc", "")), Err(Refusal::Wrong));
        assert_eq!(v.basic(&basic("", "")), Err(Refusal::Wrong));
        assert_eq!(v.basic(&HeaderMap::new()), Err(Refusal::Missing));
        assert!(matches!(v.basic(&headers("authorization", "Basic ***")), Err(Refusal::Malformed(_))));
        assert!(matches!(v.basic(&headers("authorization", "Bearer abc")), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn header_mode_compares_the_named_header() {
        let v = verifier(WebhookAuth::Header);
        assert!(v.header(&headers("X-Api-Key", "header-value-0123456789")).is_ok());
        assert_eq!(v.header(&headers("x-api-key", "header-value-012345678")), Err(Refusal::Wrong));
        assert_eq!(v.header(&headers("x-other", "header-value-0123456789")), Err(Refusal::Missing));
        assert_eq!(v.header(&headers("x-api-key", " ")), Err(Refusal::Missing));
        let mut twice = headers("x-api-key", "header-value-0123456789");
        twice.append("x-api-key", HeaderValue::from_static("header-value-0123456789"));
        assert!(matches!(v.header(&twice), Err(Refusal::Malformed(_))));
    }

    /// Issue 20: a credential for one TrueContext organisation cannot write into another's
    /// connection.
    #[test]
    fn a_connection_with_its_own_value_takes_only_that_one() {
        let v = verifier(WebhookAuth::Basic);
        let shared = v.basic(&basic("tc", "old-password-0123456789")).unwrap();
        let own = v.basic(&basic("tc", "fabrikam-own-value-0123456789")).unwrap();
        assert_eq!(own.proof, Proof::Connection("fabrikam".into()));
        assert!(v.may_push(&shared, "contoso").is_ok());
        assert_eq!(v.may_push(&shared, "fabrikam"), Err(Refusal::ConnectionNotAllowed("fabrikam".into())));
        assert!(v.may_push(&own, "fabrikam").is_ok());
        assert_eq!(v.may_push(&own, "contoso"), Err(Refusal::ConnectionNotAllowed("contoso".into())));
        let mut clients = settings(WebhookAuth::Jwt);
        clients.allowed_client_ids = vec!["shared-client".into()];
        clients.connection_client_ids = [("fabrikam".to_owned(), vec!["fabrikam-client".to_owned()])].into();
        let raw = crate::config::RawSettings::from_pairs([("OAUTH_CLIENT_ID", "x")]);
        let v = Verifier::new(&clients, &crate::config::Settings::load(&raw).unwrap().oauth);
        let caller = |c: &str| Caller { name: c.into(), proof: Proof::Client(Some(c.into())) };
        assert!(v.may_push(&caller("fabrikam-client"), "fabrikam").is_ok());
        assert!(v.may_push(&caller("shared-client"), "fabrikam").is_err());
        assert!(v.may_push(&caller("fabrikam-client"), "contoso").is_err());
        assert!(v.may_push(&caller("shared-client"), "contoso").is_ok());
        // Found by the outside review: with no shared list, a connection's own client could push
        // into every connection without a list of its own.
        let mut only_own = clients.clone();
        only_own.allowed_client_ids.clear();
        let v = Verifier::new(&only_own, &crate::config::Settings::load(&raw).unwrap().oauth);
        assert!(v.may_push(&caller("fabrikam-client"), "fabrikam").is_ok());
        assert!(v.may_push(&caller("fabrikam-client"), "contoso").is_err());
        assert!(v.may_push(&caller("role-holder"), "contoso").is_ok(), "any role holder that is no one's own");
    }

    #[test]
    fn tokens_for_users_or_that_live_too_long_are_refused() {
        let now = 1_900_000_000_i64;
        let settings = settings(WebhookAuth::Jwt);
        let claims = |extra: Value| {
            let mut c = serde_json::json!({"iss": "https://issuer", "aud": "api://webhook", "iat": now - 60, "exp": now + 3600});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            c.as_object().unwrap().clone()
        };
        let check = |extra: Value| check_claims(&claims(extra), "https://issuer", &settings, now);
        assert_eq!(check(serde_json::json!({})), Ok(()));
        assert_eq!(check(serde_json::json!({"idtyp": "app"})), Ok(()));
        assert_eq!(check(serde_json::json!({"scp": "user_impersonation"})), Err(Refusal::NotAppOnly));
        assert_eq!(check(serde_json::json!({"idtyp": "user"})), Err(Refusal::NotAppOnly));
        let ten_years = now + 10 * 365 * 86_400;
        assert_eq!(check(serde_json::json!({"exp": ten_years})), Err(Refusal::LifetimeTooLong));
        assert_eq!(
            check(serde_json::json!({"exp": ten_years, "iat": now + 5 * 365 * 86_400})),
            Err(Refusal::LifetimeTooLong),
            "an iat in the future does not shorten it"
        );
        let mut no_iat = claims(serde_json::json!({"exp": ten_years}));
        no_iat.remove("iat");
        assert_eq!(check_claims(&no_iat, "https://issuer", &settings, now), Err(Refusal::LifetimeTooLong));
    }

    #[test]
    fn refusals_never_carry_what_was_sent() {
        let v = verifier(WebhookAuth::Basic);
        let refusal = v.basic(&basic("tc", "guess-0123456789-guess")).unwrap_err();
        assert!(!format!("{refusal} {refusal:?}").contains("guess"));
        assert!(v.challenge(&refusal).starts_with("Basic realm="));
    }
}
