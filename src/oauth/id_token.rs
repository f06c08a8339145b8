//! id_token validation (OIDC Core §3.1.3.7) with a JWKS cache.
//!
//! `jsonwebtoken` checks signatures and times; it has no key fetching, so [`JwksCache`] fills
//! exactly that gap (`openidconnect` fetches a JWKS once and never again, #232): keys by `kid`,
//! refreshed hourly, refetched on an unknown `kid` at most every 30 s (so random `kid`s cannot
//! make us hammer the server), one fetch at a time, entries without `alg` accepted (Entra
//! omits it). Issuer, audience, `azp`, nonce and `iat` are checked here, so that Entra's
//! multi-tenant issuer template and precise error messages are possible.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use url::Url;

use crate::secret::SecretString;

const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
const LEEWAY_SECS: u64 = 120;
const MAX_IAT_AGE_SECS: i64 = 24 * 3600;
const MAX_IAT_FUTURE_SECS: i64 = 600;
const MAX_JWKS_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IdTokenError {
    #[error("the id_token is not a signed JWT ({0})")]
    Malformed(String),
    #[error("the id_token is encrypted (JWE), which this app does not accept")]
    Encrypted,
    #[error("the id_token is signed with {0}, which is not allowed (only RS256)")]
    AlgorithmNotAllowed(String),
    #[error("the id_token's signature is not valid")]
    BadSignature,
    #[error("the id_token is signed with a key the authorization server does not publish")]
    UnknownKey,
    #[error("the authorization server's keys could not be read: {0}")]
    JwksUnavailable(String),
    #[error("the id_token comes from issuer {found:?}, not {expected:?}")]
    WrongIssuer { expected: String, found: String },
    #[error("the id_token is not meant for this app (audience)")]
    WrongAudience,
    #[error("the id_token was issued to another app (azp)")]
    WrongAzp,
    #[error("the id_token does not belong to this sign-in (nonce)")]
    WrongNonce,
    #[error("the id_token has expired")]
    Expired,
    #[error("the id_token is not valid yet")]
    NotYetValid,
    #[error("the id_token's issue time is implausible")]
    BadIssueTime,
}

/// The keys of one authorization server.
pub struct JwksCache {
    uri: Url,
    http: reqwest::Client,
    state: Mutex<JwksState>,
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
    /// When an unknown `kid` last caused a fetch: such fetches are limited to one per 30 s, but
    /// the first one after a load is immediate, so a real key rotation is picked up at once.
    unknown_kid_fetch_at: Option<Instant>,
    fetches: u64,
}

impl JwksCache {
    pub fn new(uri: Url, http: reqwest::Client) -> Self {
        Self { uri, http, state: Mutex::new(JwksState::default()) }
    }

    /// How many times the key set was fetched (for tests and diagnostics).
    pub async fn fetches(&self) -> u64 {
        self.state.lock().await.fetches
    }

    /// The key for `kid`. The lock is held across a fetch, so concurrent callers share it.
    pub async fn key(&self, kid: &str) -> Result<DecodingKey, IdTokenError> {
        let mut state = self.state.lock().await;
        let stale = state.fetched_at.is_none_or(|at| at.elapsed() > JWKS_MAX_AGE);
        let recently = |at: Option<Instant>| at.is_some_and(|at| at.elapsed() < JWKS_MIN_REFETCH);
        let fetch = if stale {
            // A failing key endpoint is not retried more than every 30 s either.
            !recently(state.attempted_at)
        } else if !state.keys.contains_key(kid) {
            let allowed = !recently(state.unknown_kid_fetch_at);
            if allowed {
                state.unknown_kid_fetch_at = Some(Instant::now());
            }
            allowed
        } else {
            false
        };
        if fetch {
            state.attempted_at = Some(Instant::now());
            state.fetches += 1;
            match self.fetch().await {
                Ok(keys) => {
                    state.keys = keys;
                    state.fetched_at = Some(Instant::now());
                }
                // Keep serving the keys we have; fail only if we have none for this kid.
                Err(e) if state.keys.is_empty() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; using the keys already known"),
            }
        }
        state.keys.get(kid).cloned().ok_or(IdTokenError::UnknownKey)
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, IdTokenError> {
        let fail = |reason: String| IdTokenError::JwksUnavailable(reason);
        let response = self.http.get(self.uri.clone()).send().await.map_err(|e| fail(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status().as_u16())));
        }
        let bytes = response.bytes().await.map_err(|e| fail(e.without_url().to_string()))?;
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(fail("the key set is larger than 256 KiB".into()));
        }
        let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| fail(format!("not a JWK set: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let signing = matches!(jwk.common.public_key_use, None | Some(PublicKeyUse::Signature));
            if let (true, Ok(key)) = (signing, DecodingKey::from_jwk(jwk)) {
                keys.insert(jwk.common.key_id.clone().unwrap_or_default(), key);
            }
        }
        Ok(keys)
    }
}

/// What the id_token must say for this sign-in.
#[derive(Debug, Clone)]
pub struct Expectations {
    issuer: String,
    /// `issuer` contains `{tenantid}`, to be filled from the token's `tid`.
    tenant_template: bool,
    client_id: String,
    nonce: String,
}

impl Expectations {
    pub fn exact(issuer: String, client_id: String, nonce: String) -> Self {
        Self { issuer, tenant_template: false, client_id, nonce }
    }

    pub fn tenant_template(template: String, client_id: String, nonce: String) -> Self {
        Self { issuer: template, tenant_template: true, client_id, nonce }
    }
}

/// The claims we use, from a validated token.
#[derive(Debug, Clone, PartialEq)]
pub struct IdTokenClaims {
    pub iss: String,
    pub sub: String,
    pub tid: Option<String>,
    pub oid: Option<String>,
    pub preferred_username: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub upn: Option<String>,
}

pub struct IdTokenValidator {
    keys: Arc<JwksCache>,
}

impl IdTokenValidator {
    pub fn new(keys: Arc<JwksCache>) -> Self {
        Self { keys }
    }

    pub async fn validate(&self, token: &SecretString, expected: &Expectations) -> Result<IdTokenClaims, IdTokenError> {
        let token = token.expose();
        let header = read_header(token)?;
        let key = self.keys.key(header.kid.as_deref().unwrap_or_default()).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_aud = false; // checked below, with azp
        validation.validate_nbf = true; // off by default in jsonwebtoken
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidRsaKey(_) => IdTokenError::BadSignature,
                ErrorKind::ExpiredSignature => IdTokenError::Expired,
                ErrorKind::ImmatureSignature => IdTokenError::NotYetValid,
                ErrorKind::InvalidAlgorithm => IdTokenError::AlgorithmNotAllowed(format!("{:?}", header.alg)),
                ErrorKind::MissingRequiredClaim(claim) => IdTokenError::Malformed(format!("no {claim} claim")),
                _ => IdTokenError::Malformed("its claims cannot be read".into()),
            }
        })?;
        check_claims(&data.claims, expected)
    }
}

struct Header {
    alg: String,
    kid: Option<String>,
}

/// Reads the header ourselves, before any key is fetched: `none`, HMAC and anything but RS256
/// are refused by name, and an encrypted token (five parts) is recognised.
fn read_header(token: &str) -> Result<Header, IdTokenError> {
    let parts = token.split('.').count();
    if parts == 5 {
        return Err(IdTokenError::Encrypted);
    }
    if parts != 3 || token.len() > 16 * 1024 {
        return Err(IdTokenError::Malformed("not three base64url parts".into()));
    }
    let first = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .map_err(|_| IdTokenError::Malformed("the header is not base64url".into()))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| IdTokenError::Malformed("the header is not JSON".into()))?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("none").to_owned();
    if alg != "RS256" {
        return Err(IdTokenError::AlgorithmNotAllowed(alg.chars().take(16).collect()));
    }
    if header.contains_key("crit") {
        return Err(IdTokenError::Malformed("it has critical header extensions".into()));
    }
    Ok(Header { alg, kid: header.get("kid").and_then(Value::as_str).map(str::to_owned) })
}

fn text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn is_guid(text: &str) -> bool {
    text.len() == 36
        && text
            .char_indices()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() })
}

fn check_claims(claims: &Map<String, Value>, expected: &Expectations) -> Result<IdTokenClaims, IdTokenError> {
    let iss = text(claims, "iss").unwrap_or_default();
    let tid = text(claims, "tid");
    let expected_issuer = if expected.tenant_template {
        match &tid {
            Some(tid) if is_guid(tid) => expected.issuer.replace("{tenantid}", tid),
            _ => return Err(IdTokenError::WrongIssuer { expected: expected.issuer.clone(), found: iss }),
        }
    } else {
        expected.issuer.clone()
    };
    if iss != expected_issuer {
        return Err(IdTokenError::WrongIssuer { expected: expected_issuer, found: iss });
    }
    let audiences: Vec<String> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    if !audiences.iter().any(|a| a == &expected.client_id) {
        return Err(IdTokenError::WrongAudience);
    }
    let azp = text(claims, "azp");
    match &azp {
        Some(azp) if azp != &expected.client_id => return Err(IdTokenError::WrongAzp),
        // Several audiences without azp naming us: someone else may hold this token too.
        None if audiences.len() > 1 => return Err(IdTokenError::WrongAudience),
        _ => {}
    }
    let nonce = text(claims, "nonce").unwrap_or_default();
    if !bool::from(nonce.as_bytes().ct_eq(expected.nonce.as_bytes())) {
        return Err(IdTokenError::WrongNonce);
    }
    let now = chrono::Utc::now().timestamp();
    match claims.get("iat").and_then(Value::as_i64) {
        Some(iat) if iat > now + MAX_IAT_FUTURE_SECS || iat < now - MAX_IAT_AGE_SECS => {
            return Err(IdTokenError::BadIssueTime)
        }
        Some(_) => {}
        None => return Err(IdTokenError::Malformed("no iat claim".into())),
    }
    Ok(IdTokenClaims {
        sub: text(claims, "sub").unwrap_or_default(),
        oid: text(claims, "oid"),
        preferred_username: text(claims, "preferred_username"),
        email: text(claims, "email"),
        name: text(claims, "name"),
        upn: text(claims, "upn"),
        iss,
        tid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn base() -> Value {
        json!({"iss": "https://issuer.example", "aud": "client", "sub": "s", "nonce": "n",
               "iat": chrono::Utc::now().timestamp(), "exp": chrono::Utc::now().timestamp() + 600})
    }

    fn exact() -> Expectations {
        Expectations::exact("https://issuer.example".into(), "client".into(), "n".into())
    }

    #[test]
    fn claim_checks() {
        assert!(check_claims(&claims(base()), &exact()).is_ok());
        let mut v = base();
        v["iss"] = json!("https://evil.example");
        assert!(matches!(check_claims(&claims(v), &exact()), Err(IdTokenError::WrongIssuer { .. })));
        let mut v = base();
        v["aud"] = json!(["client", "other"]);
        assert_eq!(check_claims(&claims(v.clone()), &exact()), Err(IdTokenError::WrongAudience));
        v["azp"] = json!("client");
        assert!(check_claims(&claims(v.clone()), &exact()).is_ok());
        v["azp"] = json!("other");
        assert_eq!(check_claims(&claims(v), &exact()), Err(IdTokenError::WrongAzp));
        let mut v = base();
        v["nonce"] = json!("m");
        assert_eq!(check_claims(&claims(v), &exact()), Err(IdTokenError::WrongNonce));
        let mut v = base();
        v["iat"] = json!(chrono::Utc::now().timestamp() + 3600);
        assert_eq!(check_claims(&claims(v), &exact()), Err(IdTokenError::BadIssueTime));
    }

    #[test]
    fn entra_tenant_template() {
        let template = Expectations::tenant_template(
            "https://login.microsoftonline.com/{tenantid}/v2.0".into(),
            "client".into(),
            "n".into(),
        );
        let tid = "8f2c1a4e-1b2c-4d5e-9f00-0123456789ab";
        let mut v = base();
        v["tid"] = json!(tid);
        v["iss"] = json!(format!("https://login.microsoftonline.com/{tid}/v2.0"));
        assert!(check_claims(&claims(v.clone()), &template).is_ok());
        v["iss"] = json!("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0");
        assert!(check_claims(&claims(v.clone()), &template).is_err(), "iss from another tenant than tid");
        v["tid"] = json!("not-a-guid");
        v["iss"] = json!("https://login.microsoftonline.com/not-a-guid/v2.0");
        assert!(check_claims(&claims(v), &template).is_err());
    }

    #[test]
    fn headers_refused_by_name() {
        let enc = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = |alg: &str| format!("{}.{}.", enc(json!({"alg": alg})), enc(json!({})));
        assert_eq!(read_header(&token("none")).err(), Some(IdTokenError::AlgorithmNotAllowed("none".into())));
        assert_eq!(read_header(&token("HS256")).err(), Some(IdTokenError::AlgorithmNotAllowed("HS256".into())));
        assert_eq!(read_header("a.b.c.d.e").err(), Some(IdTokenError::Encrypted));
        assert!(read_header("garbage").is_err());
        assert!(read_header(&token("RS256")).is_ok());
    }
}
