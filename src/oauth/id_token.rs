//! id_token validation (OpenID Connect Core §3.1.3.7) with a JWKS cache.
//!
//! `jsonwebtoken` checks signatures; it fetches no keys, so [`JwksCache`] fills exactly that gap
//! (`openidconnect` fetches a JWKS once and never again, #232): keys by `kid`, refreshed when
//! older than an hour, refetched on an unknown `kid` at most once per 30 s (so made-up `kid`s
//! cannot make us hammer the server), one fetch at a time shared by every caller that needs it,
//! entries without `alg` accepted (Entra omits it), and only RSA (≥ 2048 bits) and EC P-256
//! signature keys kept. Everything else — the algorithm allow-list, issuer (with Entra's
//! multi-tenant `{tenantid}` template), audience, `azp`, nonce, `exp`/`nbf`/`iat` — is checked
//! here, so each failure has its own plain-worded [`IdTokenError`].
//!
//! Neither the token nor the nonce ever appears in an error, a `Debug` output or a log line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use url::Url;

use crate::secret::SecretString;

/// Keys older than this are refetched before use.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// An unknown `kid` causes at most one fetch per this interval.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch, the next attempt waits this long; the keys already known are used meanwhile.
const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(10);
/// Keys that could not be refreshed are still trusted for this long after their last fetch.
const JWKS_MAX_STALE: Duration = Duration::from_secs(24 * 3600);
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 256 * 1024;
const MAX_JWKS_KEYS: usize = 64;
const MIN_RSA_BITS: usize = 2048;
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

/// The time, injectable so that refresh intervals and rate limits can be tested.
pub trait Clock: Send + Sync {
    /// Monotonic time, for the key cache's ages and intervals.
    fn now(&self) -> Instant;
    /// Seconds since the Unix epoch, for `exp`, `nbf` and `iat`.
    fn unix_now(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_now(&self) -> i64 {
        chrono::Utc::now().timestamp()
    }
}

/// A clock that starts at the real time and moves only when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_unix: i64,
    offset_ms: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    pub fn new() -> Self {
        Self { start: Instant::now(), start_unix: chrono::Utc::now().timestamp(), offset_ms: AtomicU64::new(0) }
    }

    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.offset()
    }

    fn unix_now(&self) -> i64 {
        self.start_unix + i64::try_from(self.offset().as_secs()).unwrap_or(i64::MAX / 2)
    }
}

/// One verification key from a JWKS.
#[derive(Clone)]
struct KeyEntry {
    kid: Option<String>,
    key: DecodingKey,
    /// The algorithms this key may verify: its `alg` if the JWKS names one, else its family's.
    algorithms: Vec<Algorithm>,
    /// Entra's JWKS binds keys to an issuer (`issuer`, possibly with `{tenantid}`).
    issuer: Option<String>,
}

impl KeyEntry {
    fn fits(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

#[derive(Default)]
struct JwksState {
    keys: Vec<KeyEntry>,
    fetched_at: Option<Instant>,
    /// Counts completed fetch attempts, so that callers who waited for a fetch use its result.
    generation: u64,
    last_attempt_at: Option<Instant>,
    last_error: Option<String>,
    /// When an unknown `kid` last caused a fetch (at most one per 30 s).
    unknown_kid_fetch_at: Option<Instant>,
}

enum Lookup {
    Found(KeyEntry),
    /// A key has this `kid` but cannot verify this algorithm (an RSA key for an ES256 token…).
    Mismatch,
    NotFound,
}

impl JwksState {
    fn usable(&self, now: Instant) -> bool {
        self.fetched_at.is_some_and(|at| now.saturating_duration_since(at) < JWKS_MAX_STALE)
    }

    fn fresh(&self, now: Instant) -> bool {
        self.fetched_at.is_some_and(|at| now.saturating_duration_since(at) < JWKS_MAX_AGE)
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        match kid {
            Some(kid) => {
                let named: Vec<&KeyEntry> = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
                match named.iter().find(|k| k.fits(alg)) {
                    Some(key) => Lookup::Found((*key).clone()),
                    None if named.is_empty() => Lookup::NotFound,
                    None => Lookup::Mismatch,
                }
            }
            // No `kid`: only unambiguous when exactly one key could verify the token.
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Lookup::Found(key.clone()),
                    _ => Lookup::NotFound,
                }
            }
        }
    }

    /// The answer from the keys as they are now, without fetching.
    fn answer(&self, kid: Option<&str>, alg: Algorithm, now: Instant) -> Result<KeyEntry, IdTokenError> {
        if !self.usable(now) {
            let reason = self.last_error.clone().unwrap_or_else(|| "no keys have been loaded yet".into());
            return Err(IdTokenError::JwksUnavailable(reason));
        }
        match self.find(kid, alg) {
            Lookup::Found(key) => Ok(key),
            Lookup::Mismatch => Err(IdTokenError::BadSignature),
            Lookup::NotFound => Err(IdTokenError::UnknownKey),
        }
    }
}

/// The signing keys of one authorization server, from its `jwks_uri`.
///
/// Give it an HTTP client that follows no redirects (`oauth::token::http_client`); a redirect
/// answer is refused as a failed fetch either way.
pub struct JwksCache {
    uri: Url,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    state: StdMutex<JwksState>,
    /// Held for the duration of a fetch: single flight.
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl JwksCache {
    pub fn new(uri: Url, http: reqwest::Client) -> Self {
        Self::with_clock(uri, http, Arc::new(SystemClock))
    }

    pub fn with_clock(uri: Url, http: reqwest::Client, clock: Arc<dyn Clock>) -> Self {
        Self {
            uri,
            http,
            clock,
            state: StdMutex::new(JwksState::default()),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    pub fn uri(&self) -> &Url {
        &self.uri
    }

    /// How many times the key set was requested (for tests and diagnostics).
    pub async fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, JwksState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key that verifies a token signed with `alg` under `kid`, fetching the key set when
    /// it is missing, older than an hour, or lacks `kid` (rate-limited).
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<KeyEntry, IdTokenError> {
        let seen = {
            let state = self.state();
            let now = self.clock.now();
            if state.fresh(now) {
                if let Lookup::Found(key) = state.find(kid, alg) {
                    return Ok(key);
                }
            }
            state.generation
        };
        let _flight = self.fetching.lock().await;
        {
            let mut state = self.state();
            let now = self.clock.now();
            if state.generation != seen {
                // Someone fetched while we waited for the lock: their result is ours too.
                return state.answer(kid, alg, now);
            }
            let recent =
                |at: Option<Instant>, within: Duration| at.is_some_and(|at| now.saturating_duration_since(at) < within);
            let fetch = if !state.fresh(now) {
                !recent(state.last_attempt_at, FAILED_FETCH_BACKOFF)
            } else if matches!(state.find(kid, alg), Lookup::NotFound)
                && !recent(state.unknown_kid_fetch_at, UNKNOWN_KID_REFETCH_INTERVAL)
            {
                state.unknown_kid_fetch_at = Some(now);
                true
            } else {
                false
            };
            if !fetch {
                return state.answer(kid, alg, now);
            }
            state.last_attempt_at = Some(now);
        }
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let result = self.fetch().await;
        let mut state = self.state();
        let now = self.clock.now();
        state.generation += 1;
        match result {
            Ok(keys) => {
                state.keys = keys;
                state.fetched_at = Some(now);
                state.last_error = None;
            }
            Err(reason) => {
                tracing::warn!(jwks_uri = %self.uri, reason = %reason, "the signing keys could not be loaded");
                state.last_error = Some(reason);
            }
        }
        state.answer(kid, alg, now)
    }

    async fn fetch(&self) -> Result<Vec<KeyEntry>, String> {
        let mut response = self
            .http
            .get(self.uri.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(JWKS_FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        if status.is_redirection() {
            return Err(format!("the key endpoint answered with a redirect (HTTP {})", status.as_u16()));
        }
        if !status.is_success() {
            return Err(format!("the key endpoint answered HTTP {}", status.as_u16()));
        }
        let too_large = || "the key set is larger than 256 KiB".to_owned();
        if response.content_length().is_some_and(|len| len > MAX_JWKS_BYTES as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.without_url().to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }
}

/// The usable signature keys of a JWK set. Entries that are not RSA or EC P-256 public
/// signature keys are skipped (as are entries this library cannot read at all).
fn parse_jwks(body: &[u8]) -> Result<Vec<KeyEntry>, String> {
    let document: Value = serde_json::from_slice(body).map_err(|_| "the key set is not JSON".to_owned())?;
    let Some(entries) = document.get("keys").and_then(Value::as_array) else {
        return Err("the key set has no \"keys\" list".into());
    };
    let keys: Vec<KeyEntry> = entries.iter().filter_map(key_entry).take(MAX_JWKS_KEYS).collect();
    if keys.is_empty() {
        return Err("the key set has no usable RSA or EC P-256 signing key".into());
    }
    Ok(keys)
}

fn key_entry(raw: &Value) -> Option<KeyEntry> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).ok()?;
    if !matches!(jwk.common.public_key_use, None | Some(PublicKeyUse::Signature)) {
        return None;
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.iter().any(|op| matches!(op, KeyOperations::Verify)) {
            return None;
        }
    }
    let declared = jwk.common.key_algorithm;
    let (key, family): (DecodingKey, &[Algorithm]) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(rsa.n.trim_end_matches('=')).ok()?;
            if significant_bits(&modulus) < MIN_RSA_BITS {
                return None;
            }
            let key = DecodingKey::from_rsa_components(&rsa.n, &rsa.e).ok()?;
            (key, RSA_ALGORITHMS)
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            (DecodingKey::from_ec_components(&ec.x, &ec.y).ok()?, &[Algorithm::ES256])
        }
        _ => return None,
    };
    let algorithms = match declared {
        None => family.to_vec(),
        Some(declared) => {
            let alg = key_algorithm(declared)?;
            if !family.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let issuer = raw.get("issuer").and_then(Value::as_str).map(str::to_owned);
    Some(KeyEntry { kid: jwk.common.key_id.clone(), key, algorithms, issuer })
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        _ => return None,
    })
}

fn significant_bits(big_endian: &[u8]) -> usize {
    let trimmed: &[u8] = match big_endian.iter().position(|&b| b != 0) {
        Some(first) => &big_endian[first..],
        None => return 0,
    };
    trimmed.len() * 8 - trimmed[0].leading_zeros() as usize
}

/// The algorithms an id_token may be signed with. HMAC (a shared secret, which a public key
/// must never become) and `none` are never allowed; nor are curves other than P-256.
fn permitted(algorithm: &Algorithm) -> bool {
    RSA_ALGORITHMS.contains(algorithm) || *algorithm == Algorithm::ES256
}

/// The signature algorithms an RSA key can verify.
const RSA_ALGORITHMS: &[Algorithm] =
    &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

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
        let token = token.expose();
        let header = read_header(token, &expected.algorithms)?;
        let key = self.keys.key(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        // Times, audience and issuer are checked below, with our clock and our error names.
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
        let claims = check_claims(data.claims, expected, self.keys.clock.unix_now())?;
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
    if parts.len() != 3 || parts[..2].iter().any(|p| p.is_empty()) {
        return Err(IdTokenError::Malformed("it is not three base64url parts separated by dots".into()));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
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
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
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

fn check_claims(
    mut claims: Map<String, Value>,
    expected: &Expectations,
    now: i64,
) -> Result<IdTokenClaims, IdTokenError> {
    let Some(iss) = text(&claims, "iss") else {
        return Err(IdTokenError::Malformed("it has no iss claim".into()));
    };
    let tid = text(&claims, "tid");
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
    let sub = text(&claims, "sub").filter(|s| !s.is_empty());
    let Some(sub) = sub else {
        return Err(IdTokenError::Malformed("it has no sub claim".into()));
    };

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

    let nonce_checked = match &expected.nonce {
        Some(expected_nonce) => {
            let nonce = match claims.get("nonce") {
                Some(Value::String(nonce)) => nonce.as_str(),
                _ => "",
            };
            let same: bool = nonce.as_bytes().ct_eq(expected_nonce.expose().as_bytes()).into();
            if !same || nonce.is_empty() {
                return Err(IdTokenError::WrongNonce);
            }
            true
        }
        None => false,
    };

    let leeway = i64::try_from(expected.leeway.as_secs()).unwrap_or(i64::MAX / 4);
    let Some(exp) = numeric_date(&claims, "exp")? else {
        return Err(IdTokenError::Malformed("it has no exp claim".into()));
    };
    if now > exp.saturating_add(leeway) {
        return Err(IdTokenError::Expired);
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")? {
        if nbf > now.saturating_add(leeway) {
            return Err(IdTokenError::NotYetValid);
        }
    }
    let Some(iat) = numeric_date(&claims, "iat")? else {
        return Err(IdTokenError::Malformed("it has no iat claim".into()));
    };
    if iat > now.saturating_add(MAX_IAT_FUTURE_SECS) {
        return Err(IdTokenError::IssuedInFuture);
    }
    if iat < now.saturating_sub(MAX_IAT_AGE_SECS) {
        return Err(IdTokenError::IssuedTooLongAgo);
    }

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

    fn rsa_jwk(bits: usize) -> Value {
        let mut n = vec![0xc5u8; bits / 8];
        n[0] = 0xc5;
        json!({"kty": "RSA", "n": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n), "e": "AQAB"})
    }

    #[test]
    fn only_rsa_and_p256_signature_keys_are_kept() {
        let with = |extra: Value| {
            let mut key = rsa_jwk(2048);
            key.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            key
        };
        let set = json!({"keys": [
            with(json!({"kid": "plain"})),
            with(json!({"kid": "sig", "use": "sig", "alg": "RS256", "issuer": ENTRA_TEMPLATE})),
            with(json!({"kid": "enc", "use": "enc"})),
            with(json!({"kid": "ops-encrypt", "key_ops": ["encrypt"]})),
            with(json!({"kid": "ops-verify", "key_ops": ["verify"]})),
            with(json!({"kid": "hs-alg", "alg": "HS256"})),
            {"kid": "small", "kty": "RSA", "n": rsa_jwk(1024)["n"], "e": "AQAB"},
            {"kid": "oct", "kty": "oct", "k": "c2VjcmV0"},
            {"kid": "okp", "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kid": "p384", "kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kid": "weird", "kty": "something-new"},
            {"kid": "p256", "kty": "EC", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        ]});
        let keys = parse_jwks(set.to_string().as_bytes()).unwrap();
        let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["plain", "sig", "ops-verify", "p256"]);
        assert_eq!(keys[0].algorithms.len(), 6, "a key without alg verifies its family");
        assert_eq!(keys[1].algorithms, [Algorithm::RS256]);
        assert_eq!(keys[1].issuer.as_deref(), Some(ENTRA_TEMPLATE));
        assert_eq!(keys[3].algorithms, [Algorithm::ES256]);
        assert!(parse_jwks(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(b"{}").is_err());
    }

    #[test]
    fn lookup_by_kid_and_algorithm() {
        let mut key = rsa_jwk(2048);
        key["kid"] = json!("k1");
        let state = JwksState { keys: vec![key_entry(&key).unwrap()], ..JwksState::default() };
        assert!(matches!(state.find(Some("k1"), Algorithm::RS256), Lookup::Found(_)));
        assert!(matches!(state.find(Some("k1"), Algorithm::ES256), Lookup::Mismatch));
        assert!(matches!(state.find(Some("k2"), Algorithm::RS256), Lookup::NotFound));
        assert!(matches!(state.find(None, Algorithm::RS256), Lookup::Found(_)), "one key: no kid needed");
        let state = JwksState { keys: vec![state.keys[0].clone(), state.keys[0].clone()], ..JwksState::default() };
        assert!(matches!(state.find(None, Algorithm::RS256), Lookup::NotFound), "ambiguous without kid");
    }

    #[test]
    fn errors_are_plain_words() {
        let long = "x".repeat(500);
        let e = IdTokenError::WrongIssuer { expected: printable("https://a"), found: printable(&format!("{long}\n")) };
        assert!(e.to_string().len() < 300);
        assert!(!e.to_string().contains('\n'));
        assert_eq!(IdTokenError::Expired.to_string(), "the id_token has expired");
    }

    #[test]
    fn manual_clock_moves_both_clocks() {
        let clock = ManualClock::new();
        let (instant, unix) = (clock.now(), clock.unix_now());
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - instant, Duration::from_secs(90));
        assert_eq!(clock.unix_now() - unix, 90);
    }
}
