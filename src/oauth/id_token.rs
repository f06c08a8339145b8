//! id_token validation (OpenID Connect Core §3.1.3.7) against keys from a [`JwksCache`].
//!
//! `jsonwebtoken` checks the signature; everything else — the algorithm allow-list, issuer (with
//! Entra's multi-tenant `{tenantid}` template), audience, `azp`, nonce, `exp`/`nbf`/`iat` — is
//! checked here, so each failure has its own plain-worded [`IdTokenError`].
//!
//! Neither the token nor the nonce ever appears in an error, a `Debug` output or a log line.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use super::jwks::{JwksCache, KeyError, RSA_ALGORITHMS};
use crate::secret::SecretString;

const MAX_TOKEN_BYTES: usize = 32 * 1024;
/// Clock skew allowed on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(120);
const MAX_IAT_FUTURE_SECS: i64 = 600;
const MAX_IAT_AGE_SECS: i64 = 24 * 3600;
/// The placeholder of Entra's multi-tenant issuer, replaced by the token's `tid`.
pub const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// Why an id_token was refused. The messages are shown to an administrator as they are: plain
/// words, and never the token, the nonce or a key.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IdTokenError {
    #[error("the id_token is malformed: {0}")]
    Malformed(String),
    #[error("the id_token is encrypted (JWE), which this app does not accept")]
    Encrypted,
    #[error("the id_token is signed with the algorithm {0}, which is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("the id_token's signature is not valid")]
    BadSignature,
    #[error(
        "the id_token is signed with a key the authorization server does not publish, even after reloading its keys"
    )]
    UnknownKey,
    #[error("the authorization server's signing keys could not be loaded: {0}")]
    JwksUnavailable(String),
    #[error("the id_token comes from the issuer {found}, but {expected} was expected")]
    WrongIssuer { expected: String, found: String },
    #[error("the id_token's tenant (tid claim) is missing or is not a tenant id")]
    BadTenantId,
    #[error("the id_token was not issued for this app (its audience does not name this app alone)")]
    WrongAudience,
    #[error("the id_token was issued to another app (azp claim)")]
    WrongAzp,
    #[error("the id_token does not belong to this sign-in (nonce mismatch)")]
    WrongNonce,
    #[error("the id_token has expired")]
    Expired,
    #[error("the id_token is not valid yet (nbf claim in the future)")]
    NotYetValid,
    #[error("the id_token claims to be issued in the future (iat claim); check the clocks")]
    IssuedInFuture,
    #[error("the id_token was issued more than 24 hours ago (iat claim)")]
    IssuedTooLongAgo,
}

/// The algorithms an id_token may be signed with. HMAC (a shared secret, which a public key
/// must never become) and `none` are never allowed; nor are curves other than P-256.
fn permitted(algorithm: &Algorithm) -> bool {
    RSA_ALGORITHMS.contains(algorithm) || *algorithm == Algorithm::ES256
}

/// What the id_token must say for this sign-in.
#[derive(Clone)]
pub struct Expectations {
    issuer: String,
    /// `issuer` contains `{tenantid}`, to be filled from the token's `tid`.
    tenant_template: bool,
    client_id: String,
    /// Other audiences the token may name besides the client id (rarely needed).
    trusted_audiences: Vec<String>,
    nonce: Option<SecretString>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
}

impl std::fmt::Debug for Expectations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expectations")
            .field("issuer", &self.issuer)
            .field("tenant_template", &self.tenant_template)
            .field("client_id", &self.client_id)
            .field("trusted_audiences", &self.trusted_audiences)
            .field("nonce", &self.nonce.as_ref().map(|_| "[REDACTED]"))
            .field("algorithms", &self.algorithms)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl Expectations {
    /// The token's `iss` must equal `issuer` exactly. RS256 only, two minutes of leeway.
    pub fn exact(issuer: String, client_id: String, nonce: String) -> Self {
        Self {
            issuer,
            tenant_template: false,
            client_id,
            trusted_audiences: Vec::new(),
            nonce: Some(SecretString::new(nonce)),
            algorithms: vec![Algorithm::RS256],
            leeway: DEFAULT_LEEWAY,
        }
    }

    /// Entra multi-tenant (`common`, `organizations`): `template` contains `{tenantid}`, which
    /// is replaced by the token's `tid` (which must be a GUID) before the exact comparison.
    pub fn tenant_template(template: String, client_id: String, nonce: String) -> Self {
        let tenant_template = template.contains(TENANT_PLACEHOLDER);
        Self { tenant_template, ..Self::exact(template, client_id, nonce) }
    }

    /// Allow these signature algorithms instead of RS256 alone. HMAC and `none` cannot be
    /// allowed: asking for them is an error naming the first such algorithm.
    pub fn with_algorithms(mut self, algorithms: &[Algorithm]) -> Result<Self, IdTokenError> {
        if let Some(refused) = algorithms.iter().find(|a| !permitted(a)) {
            return Err(IdTokenError::AlgorithmNotAllowed(format!("{refused:?}")));
        }
        self.algorithms = algorithms.to_vec();
        Ok(self)
    }

    /// Audiences besides the client id that may appear in `aud` without `azp` naming us.
    pub fn with_trusted_audiences(mut self, audiences: Vec<String>) -> Self {
        self.trusted_audiences = audiences;
        self
    }

    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// For a flow that sent no nonce: a nonce in the token is then not compared.
    pub fn without_nonce(mut self) -> Self {
        self.nonce = None;
        self
    }
}

/// The claims of a validated id_token.
#[derive(Debug, Clone, PartialEq)]
pub struct IdTokenClaims {
    pub iss: String,
    pub sub: String,
    /// Every audience, `aud` being a string or a list.
    pub aud: Vec<String>,
    pub azp: Option<String>,
    /// Entra: the tenant and the object id of the account.
    pub tid: Option<String>,
    pub oid: Option<String>,
    pub preferred_username: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub upn: Option<String>,
    /// Whether the nonce was compared (false only with [`Expectations::without_nonce`]).
    pub nonce_checked: bool,
    pub exp: i64,
    pub iat: i64,
    /// All claims as sent, except `nonce` (checked, and a secret of the flow).
    pub claims: Map<String, Value>,
}

/// Validates id_tokens against one authorization server's keys.
pub struct IdTokenValidator {
    keys: Arc<JwksCache>,
}

impl IdTokenValidator {
    pub fn new(keys: Arc<JwksCache>) -> Self {
        Self { keys }
    }

    /// Checks, in this order: shape (three parts; JWE refused), header algorithm against the
    /// allow-list (before any key is fetched), signature with the key named by `kid`, issuer,
    /// audience and `azp`, nonce, `exp`, `nbf`, `iat`.
    pub async fn validate(&self, token: &SecretString, expected: &Expectations) -> Result<IdTokenClaims, IdTokenError> {
        let (claims, key) = verify_signature(&self.keys, token.expose(), &expected.algorithms).await?;
        let claims = check_claims(claims, expected, self.keys.clock().unix_now())?;
        if let Some(bound) = &key.issuer {
            // Entra binds each key to an issuer (template); a key of one tenant cannot vouch for another.
            let bound = bound.replace(TENANT_PLACEHOLDER, claims.tid.as_deref().unwrap_or_default());
            if bound != claims.iss {
                return Err(IdTokenError::WrongIssuer { expected: printable(&bound), found: printable(&claims.iss) });
            }
        }
        Ok(claims)
    }
}

/// The first half of any JWT check, shared with the webhook's bearer tokens: shape (three parts;
/// JWE refused), the header's algorithm against `allowed` (before any key is fetched), and the
/// signature with the published key named by `kid`. Returns the claims, unchecked, and the key
/// (whose issuer binding the caller may check).
pub async fn verify_signature(
    keys: &JwksCache,
    token: &str,
    allowed: &[Algorithm],
) -> Result<(Map<String, Value>, super::jwks::JwksKey), IdTokenError> {
    let header = read_header(token, allowed)?;
    let key = keys.key(header.kid.as_deref(), header.alg).await.map_err(|e| match e {
        KeyError::Unavailable(reason) => IdTokenError::JwksUnavailable(reason),
        KeyError::Unknown => IdTokenError::UnknownKey,
        KeyError::WrongAlgorithm => IdTokenError::BadSignature,
    })?;
    let mut validation = Validation::new(header.alg);
    // Times, audience and issuer are the caller's to check, with its clock and its error names.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey => {
                IdTokenError::BadSignature
            }
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
                IdTokenError::AlgorithmNotAllowed(format!("{:?}", header.alg))
            }
            ErrorKind::Base64(_) => IdTokenError::Malformed("a part is not base64url".into()),
            ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                IdTokenError::Malformed("the claims are not a JSON object".into())
            }
            _ => IdTokenError::BadSignature,
        }
    })?;
    Ok((data.claims, key))
}

struct Header {
    alg: Algorithm,
    kid: Option<String>,
}

/// Reads the header ourselves, before any key is fetched: `none`, HMAC and anything outside
/// the allow-list are refused by name, and an encrypted token (five parts) is recognised.
fn read_header(token: &str, allowed: &[Algorithm]) -> Result<Header, IdTokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(IdTokenError::Malformed("it is larger than 32 KiB".into()));
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() == 5 {
        return Err(IdTokenError::Encrypted);
    }
    let [encoded_header, payload, _] = parts.as_slice() else {
        return Err(IdTokenError::Malformed("it is not three base64url parts separated by dots".into()));
    };
    if encoded_header.is_empty() || payload.is_empty() {
        return Err(IdTokenError::Malformed("it is not three base64url parts separated by dots".into()));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded_header)
        .map_err(|_| IdTokenError::Malformed("the header is not base64url".into()))?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| IdTokenError::Malformed("the header is not a JSON object".into()))?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        None => return Err(IdTokenError::AlgorithmNotAllowed("none (no alg)".into())),
        Some(_) => return Err(IdTokenError::Malformed("the header's alg is not a string".into())),
    };
    if header.contains_key("enc") {
        return Err(IdTokenError::Encrypted);
    }
    let algorithm = alg.parse::<Algorithm>().ok().filter(|a| allowed.contains(a) && permitted(a));
    let Some(alg) = algorithm else {
        return Err(IdTokenError::AlgorithmNotAllowed(printable(alg).chars().take(20).collect()));
    };
    if header.contains_key("crit") {
        return Err(IdTokenError::Malformed("it has critical header extensions".into()));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) if kid.len() <= 256 => Some(kid.clone()),
        Some(_) => return Err(IdTokenError::Malformed("the header's kid is not a short string".into())),
    };
    Ok(Header { alg, kid })
}

/// A claim value fit for an error page: printable, and not too long.
fn printable(text: &str) -> String {
    crate::telemetry::printable(text, 200)
}

fn text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// A NumericDate claim: required, a number (fractions are truncated).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, IdTokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)) {
            Some(value) => Ok(Some(value)),
            None => Err(IdTokenError::Malformed(format!("the {name} claim is not a time"))),
        },
        Some(_) => Err(IdTokenError::Malformed(format!("the {name} claim is not a number"))),
    }
}

fn is_guid(text: &str) -> bool {
    text.len() == 36
        && text
            .char_indices()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() })
}

/// Checks an id_token's claims, in this order: issuer (and tenant), subject, audience and
/// authorized party, nonce, times. Each step is its own function; the first refusal is final.
fn check_claims(
    mut claims: Map<String, Value>,
    expected: &Expectations,
    now: i64,
) -> Result<IdTokenClaims, IdTokenError> {
    let (iss, tid) = check_issuer(&claims, expected)?;
    let sub = text(&claims, "sub").filter(|s| !s.is_empty());
    let Some(sub) = sub else {
        return Err(IdTokenError::Malformed("it has no sub claim".into()));
    };
    let (aud, azp) = check_audience(&claims, expected)?;
    let nonce_checked = check_nonce(&claims, expected)?;
    let (exp, iat) = check_times(&claims, expected, now)?;
    claims.remove("nonce");
    Ok(IdTokenClaims {
        oid: text(&claims, "oid"),
        preferred_username: text(&claims, "preferred_username"),
        email: text(&claims, "email"),
        name: text(&claims, "name"),
        upn: text(&claims, "upn"),
        iss,
        sub,
        aud,
        azp,
        tid,
        nonce_checked,
        exp,
        iat,
        claims,
    })
}

/// `iss` is the expected issuer (with the token's own `tid` in a multi-tenant template, which
/// must then be a GUID); returns `iss` and `tid`.
fn check_issuer(
    claims: &Map<String, Value>,
    expected: &Expectations,
) -> Result<(String, Option<String>), IdTokenError> {
    let Some(iss) = text(claims, "iss") else {
        return Err(IdTokenError::Malformed("it has no iss claim".into()));
    };
    let tid = text(claims, "tid");
    let expected_issuer = if expected.tenant_template {
        match &tid {
            Some(tid) if is_guid(tid) => expected.issuer.replace(TENANT_PLACEHOLDER, tid),
            _ => return Err(IdTokenError::BadTenantId),
        }
    } else {
        expected.issuer.clone()
    };
    if iss != expected_issuer {
        return Err(IdTokenError::WrongIssuer { expected: printable(&expected_issuer), found: printable(&iss) });
    }
    Ok((iss, tid))
}

/// Our client id is among `aud`; `azp`, when present, is our client id; a token other parties
/// also hold (an audience we do not trust) must name us in `azp`. Returns `aud` and `azp`.
fn check_audience(
    claims: &Map<String, Value>,
    expected: &Expectations,
) -> Result<(Vec<String>, Option<String>), IdTokenError> {
    let aud: Vec<String> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(list)) => {
            let names: Vec<String> = list.iter().filter_map(Value::as_str).map(str::to_owned).collect();
            if names.len() != list.len() {
                return Err(IdTokenError::Malformed("the aud claim is not a list of names".into()));
            }
            names
        }
        None => return Err(IdTokenError::WrongAudience),
        Some(_) => return Err(IdTokenError::Malformed("the aud claim is not a name or a list of names".into())),
    };
    if !aud.iter().any(|a| a == &expected.client_id) {
        return Err(IdTokenError::WrongAudience);
    }
    let azp = match claims.get("azp") {
        None => None,
        Some(Value::String(azp)) => Some(azp.clone()),
        Some(_) => return Err(IdTokenError::Malformed("the azp claim is not a name".into())),
    };
    if azp.as_ref().is_some_and(|azp| azp != &expected.client_id) {
        return Err(IdTokenError::WrongAzp);
    }
    let untrusted = aud.iter().any(|a| a != &expected.client_id && !expected.trusted_audiences.contains(a));
    if untrusted && azp.is_none() {
        // Other parties also hold this token, and nothing says it was issued to us.
        return Err(IdTokenError::WrongAudience);
    }
    Ok((aud, azp))
}

/// The nonce we sent, compared in constant time; `false` when none was expected.
fn check_nonce(claims: &Map<String, Value>, expected: &Expectations) -> Result<bool, IdTokenError> {
    let Some(expected_nonce) = &expected.nonce else {
        return Ok(false);
    };
    let nonce = match claims.get("nonce") {
        Some(Value::String(nonce)) => nonce.as_str(),
        _ => "",
    };
    let same: bool = nonce.as_bytes().ct_eq(expected_nonce.expose().as_bytes()).into();
    if !same || nonce.is_empty() {
        return Err(IdTokenError::WrongNonce);
    }
    Ok(true)
}

/// Not expired, not before `nbf`, issued neither in the future nor too long ago (with the
/// configured leeway); returns `exp` and `iat`.
fn check_times(claims: &Map<String, Value>, expected: &Expectations, now: i64) -> Result<(i64, i64), IdTokenError> {
    let leeway = i64::try_from(expected.leeway.as_secs()).unwrap_or(i64::MAX / 4);
    let Some(exp) = numeric_date(claims, "exp")? else {
        return Err(IdTokenError::Malformed("it has no exp claim".into()));
    };
    if now > exp.saturating_add(leeway) {
        return Err(IdTokenError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > now.saturating_add(leeway) {
            return Err(IdTokenError::NotYetValid);
        }
    }
    let Some(iat) = numeric_date(claims, "iat")? else {
        return Err(IdTokenError::Malformed("it has no iat claim".into()));
    };
    if iat > now.saturating_add(MAX_IAT_FUTURE_SECS) {
        return Err(IdTokenError::IssuedInFuture);
    }
    if iat < now.saturating_sub(MAX_IAT_AGE_SECS) {
        return Err(IdTokenError::IssuedTooLongAgo);
    }
    Ok((exp, iat))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TID: &str = "8f2c1a4e-1b2c-4d5e-9f00-0123456789ab";
    const ENTRA_TEMPLATE: &str = "https://login.microsoftonline.com/{tenantid}/v2.0";
    const NOW: i64 = 1_800_000_000;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn base() -> Value {
        json!({"iss": "https://issuer.example", "aud": "client", "sub": "s", "nonce": "n-123",
               "iat": NOW, "exp": NOW + 600})
    }

    fn exact() -> Expectations {
        Expectations::exact("https://issuer.example".into(), "client".into(), "n-123".into())
    }

    fn check(v: Value, expected: &Expectations) -> Result<IdTokenClaims, IdTokenError> {
        check_claims(claims(v), expected, NOW)
    }

    fn with(claim: &str, value: Value) -> Value {
        let mut v = base();
        v[claim] = value;
        v
    }

    #[test]
    fn a_matching_token_gives_typed_claims_without_the_nonce() {
        let mut v = base();
        v["oid"] = json!("o");
        v["email"] = json!("ada@example.test");
        let c = check(v, &exact()).unwrap();
        assert_eq!(
            (c.iss.as_str(), c.sub.as_str(), c.aud.clone()),
            ("https://issuer.example", "s", vec!["client".into()])
        );
        assert_eq!((c.exp, c.iat, c.nonce_checked), (NOW + 600, NOW, true));
        assert_eq!(c.oid.as_deref(), Some("o"));
        assert_eq!(c.email.as_deref(), Some("ada@example.test"));
        assert!(!c.claims.contains_key("nonce"));
        assert!(!format!("{c:?}").contains("n-123"));
    }

    #[test]
    fn issuer_must_match_exactly() {
        for iss in ["https://evil.example", "https://issuer.example/", "HTTPS://issuer.example"] {
            assert!(matches!(check(with("iss", json!(iss)), &exact()), Err(IdTokenError::WrongIssuer { .. })), "{iss}");
        }
        let mut v = base();
        v.as_object_mut().unwrap().remove("iss");
        assert!(matches!(check(v, &exact()), Err(IdTokenError::Malformed(_))));
    }

    #[test]
    fn audience_and_azp() {
        assert_eq!(check(with("aud", json!("other")), &exact()), Err(IdTokenError::WrongAudience));
        assert!(check(with("aud", json!(["client"])), &exact()).is_ok());
        let mut v = with("aud", json!(["client", "other"]));
        assert_eq!(check(v.clone(), &exact()), Err(IdTokenError::WrongAudience), "untrusted audience without azp");
        assert!(check(v.clone(), &exact().with_trusted_audiences(vec!["other".into()])).is_ok());
        v["azp"] = json!("client");
        assert!(check(v.clone(), &exact()).is_ok());
        v["azp"] = json!("other");
        assert_eq!(check(v, &exact()), Err(IdTokenError::WrongAzp));
        assert_eq!(check(with("azp", json!("other")), &exact()), Err(IdTokenError::WrongAzp));
        assert!(matches!(check(with("aud", json!(["client", 7])), &exact()), Err(IdTokenError::Malformed(_))));
        let mut v = base();
        v.as_object_mut().unwrap().remove("aud");
        assert_eq!(check(v, &exact()), Err(IdTokenError::WrongAudience));
    }

    #[test]
    fn nonce() {
        assert_eq!(check(with("nonce", json!("n-124")), &exact()), Err(IdTokenError::WrongNonce));
        assert_eq!(check(with("nonce", json!(7)), &exact()), Err(IdTokenError::WrongNonce));
        let mut v = base();
        v.as_object_mut().unwrap().remove("nonce");
        assert_eq!(check(v.clone(), &exact()), Err(IdTokenError::WrongNonce));
        // An empty expected nonce never matches a token without one.
        let empty = Expectations::exact("https://issuer.example".into(), "client".into(), String::new());
        assert_eq!(check(v.clone(), &empty), Err(IdTokenError::WrongNonce));
        assert_eq!(check(with("nonce", json!("")), &empty), Err(IdTokenError::WrongNonce));
        let unchecked = check(v, &exact().without_nonce()).unwrap();
        assert!(!unchecked.nonce_checked);
        assert!(!format!("{:?}", exact()).contains("n-123"));
    }

    #[test]
    fn times_with_leeway() {
        assert!(check(with("exp", json!(NOW - 119)), &exact()).is_ok());
        assert_eq!(check(with("exp", json!(NOW - 121)), &exact()), Err(IdTokenError::Expired));
        assert!(check(with("exp", json!(NOW as f64 + 0.5)), &exact()).is_ok());
        assert!(matches!(check(with("exp", json!("soon")), &exact()), Err(IdTokenError::Malformed(_))));
        assert!(check(with("nbf", json!(NOW + 119)), &exact()).is_ok());
        assert_eq!(check(with("nbf", json!(NOW + 121)), &exact()), Err(IdTokenError::NotYetValid));
        assert!(check(with("iat", json!(NOW + 600)), &exact()).is_ok());
        assert_eq!(check(with("iat", json!(NOW + 601)), &exact()), Err(IdTokenError::IssuedInFuture));
        assert_eq!(check(with("iat", json!(NOW - 24 * 3600 - 1)), &exact()), Err(IdTokenError::IssuedTooLongAgo));
        let mut v = base();
        v.as_object_mut().unwrap().remove("iat");
        assert!(matches!(check(v, &exact()), Err(IdTokenError::Malformed(_))));
        let mut v = base();
        v.as_object_mut().unwrap().remove("exp");
        assert!(matches!(check(v, &exact()), Err(IdTokenError::Malformed(_))));
        let strict = exact().with_leeway(Duration::ZERO);
        assert_eq!(check(with("exp", json!(NOW - 1)), &strict), Err(IdTokenError::Expired));
    }

    #[test]
    fn entra_tenant_template() {
        let template = Expectations::tenant_template(ENTRA_TEMPLATE.into(), "client".into(), "n-123".into());
        let mut v = base();
        v["tid"] = json!(TID);
        v["iss"] = json!(format!("https://login.microsoftonline.com/{TID}/v2.0"));
        assert_eq!(check(v.clone(), &template).unwrap().tid.as_deref(), Some(TID));
        v["iss"] = json!("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0");
        assert!(matches!(check(v.clone(), &template), Err(IdTokenError::WrongIssuer { .. })), "iss of another tenant");
        v["tid"] = json!("not-a-guid");
        v["iss"] = json!("https://login.microsoftonline.com/not-a-guid/v2.0");
        assert_eq!(check(v.clone(), &template), Err(IdTokenError::BadTenantId));
        v.as_object_mut().unwrap().remove("tid");
        v["iss"] = json!(ENTRA_TEMPLATE);
        assert_eq!(check(v, &template), Err(IdTokenError::BadTenantId));
        assert!(is_guid(TID) && !is_guid("8f2c1a4e-1b2c-4d5e-9f00-0123456789aZ") && !is_guid(""));
    }

    fn encode(v: Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token(header: Value) -> String {
        format!("{}.{}.c2ln", encode(header), encode(json!({})))
    }

    #[test]
    fn headers_refused_by_name() {
        let rs = [Algorithm::RS256];
        let refused = |header: Value| read_header(&token(header), &rs).err();
        let not_allowed = |alg: &str| Some(IdTokenError::AlgorithmNotAllowed(alg.into()));
        for alg in ["none", "None", "NONE", "HS256", "HS512", "ES384", "EdDSA", "RS384"] {
            assert_eq!(refused(json!({"alg": alg})), not_allowed(alg), "{alg}");
        }
        assert_eq!(refused(json!({})), not_allowed("none (no alg)"));
        assert_eq!(refused(json!({"alg": "RSA-OAEP", "enc": "A256GCM"})), Some(IdTokenError::Encrypted));
        assert!(matches!(refused(json!({"alg": "RS256", "crit": ["b64"]})), Some(IdTokenError::Malformed(_))));
        assert!(matches!(refused(json!({"alg": 1})), Some(IdTokenError::Malformed(_))));
        assert_eq!(read_header("a.b.c.d.e", &rs).err(), Some(IdTokenError::Encrypted));
        for garbage in ["garbage", "a.b", "..", "!!.e30.x", "e30.e30.x.y"] {
            assert!(matches!(read_header(garbage, &rs), Err(IdTokenError::Malformed(_))), "{garbage}");
        }
        assert!(matches!(read_header(&"a".repeat(40_000), &rs), Err(IdTokenError::Malformed(_))));
        let ok = read_header(&token(json!({"alg": "RS256", "kid": "k1"})), &rs).unwrap();
        assert_eq!((ok.alg, ok.kid.as_deref()), (Algorithm::RS256, Some("k1")));
        let both = [Algorithm::RS256, Algorithm::ES256];
        assert!(read_header(&token(json!({"alg": "ES256"})), &both).is_ok());
    }

    #[test]
    fn hmac_and_none_cannot_be_allowed() {
        assert_eq!(
            exact().with_algorithms(&[Algorithm::HS256]).err(),
            Some(IdTokenError::AlgorithmNotAllowed("HS256".into()))
        );
        assert!(exact().with_algorithms(&[Algorithm::RS256, Algorithm::ES256, Algorithm::PS256]).is_ok());
    }

    #[test]
    fn errors_are_plain_words() {
        let long = "x".repeat(500);
        let e = IdTokenError::WrongIssuer { expected: printable("https://a"), found: printable(&format!("{long}\n")) };
        assert!(e.to_string().len() < 300);
        assert!(!e.to_string().contains('\n'));
        assert_eq!(IdTokenError::Expired.to_string(), "the id_token has expired");
    }
}
