//! The signing keys of authorization servers (JWKS), cached: used to validate id_tokens at
//! sign-in and bearer JWTs at the webhook.
//!
//! `jsonwebtoken` checks signatures; it fetches no keys, so [`JwksCache`] fills exactly that gap
//! (`openidconnect` fetches a JWKS once and never again, #232): keys by `kid`, refreshed when
//! older than an hour, refetched on an unknown `kid` at most once per 30 s (so made-up `kid`s
//! cannot make us hammer the server), one fetch at a time shared by every caller that needs it,
//! entries without `alg` accepted (Entra omits it), and only RSA (≥ 2048 bits) and EC P-256
//! signature keys kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use url::Url;

use crate::clock::{Clock, SystemClock};

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

/// The signature algorithms an RSA key can verify.
pub const RSA_ALGORITHMS: &[Algorithm] =
    &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// Why no key verifies a token. Plain words; never a key.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the authorization server's signing keys could not be loaded: {0}")]
    Unavailable(String),
    #[error("no published key has this kid, even after reloading the keys")]
    Unknown,
    #[error("the published key with this kid cannot verify this algorithm")]
    WrongAlgorithm,
}

/// One JWKS cache per key-set URL, kept for the life of the process.
#[derive(Default)]
pub struct JwksCaches(StdMutex<HashMap<String, Arc<JwksCache>>>);

impl JwksCaches {
    pub fn get(&self, uri: &Url, http: &reqwest::Client) -> Arc<JwksCache> {
        let mut caches = self.0.lock().unwrap_or_else(|p| p.into_inner());
        caches.entry(uri.to_string()).or_insert_with(|| Arc::new(JwksCache::new(uri.clone(), http.clone()))).clone()
    }
}

/// One verification key from a JWKS.
#[derive(Clone)]
pub struct JwksKey {
    kid: Option<String>,
    pub key: DecodingKey,
    /// The algorithms this key may verify: its `alg` if the JWKS names one, else its family's.
    algorithms: Vec<Algorithm>,
    /// Entra's JWKS binds keys to an issuer (`issuer`, possibly with `{tenantid}`).
    pub issuer: Option<String>,
}

impl JwksKey {
    fn fits(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

#[derive(Default)]
struct JwksState {
    keys: Vec<JwksKey>,
    fetched_at: Option<Instant>,
    /// Counts completed fetch attempts, so that callers who waited for a fetch use its result.
    generation: u64,
    last_attempt_at: Option<Instant>,
    last_error: Option<String>,
    /// When an unknown `kid` last caused a fetch (at most one per 30 s).
    unknown_kid_fetch_at: Option<Instant>,
}

enum Lookup {
    Found(JwksKey),
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
                let named: Vec<&JwksKey> = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
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
    fn answer(&self, kid: Option<&str>, alg: Algorithm, now: Instant) -> Result<JwksKey, KeyError> {
        if !self.usable(now) {
            let reason = self.last_error.clone().unwrap_or_else(|| "no keys have been loaded yet".into());
            return Err(KeyError::Unavailable(reason));
        }
        match self.find(kid, alg) {
            Lookup::Found(key) => Ok(key),
            Lookup::Mismatch => Err(KeyError::WrongAlgorithm),
            Lookup::NotFound => Err(KeyError::Unknown),
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

    /// The clock the cache ages its keys by; validators check token times with it too.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
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
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<JwksKey, KeyError> {
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

    /// Reads the key set once, bypassing the cache (`tcbridge check --online`): how many usable
    /// signing keys it holds, or what is wrong with it.
    pub async fn probe(&self) -> Result<usize, String> {
        self.fetch().await.map(|keys| keys.len())
    }

    async fn fetch(&self) -> Result<Vec<JwksKey>, String> {
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
fn parse_jwks(body: &[u8]) -> Result<Vec<JwksKey>, String> {
    let document: Value = serde_json::from_slice(body).map_err(|_| "the key set is not JSON".to_owned())?;
    let Some(entries) = document.get("keys").and_then(Value::as_array) else {
        return Err("the key set has no \"keys\" list".into());
    };
    let keys: Vec<JwksKey> = entries.iter().filter_map(key_entry).take(MAX_JWKS_KEYS).collect();
    if keys.is_empty() {
        return Err("the key set has no usable RSA or EC P-256 signing key".into());
    }
    Ok(keys)
}

fn key_entry(raw: &Value) -> Option<JwksKey> {
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
    Some(JwksKey { kid: jwk.common.key_id.clone(), key, algorithms, issuer })
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
    let mut significant = big_endian.iter().skip_while(|&&b| b == 0);
    match significant.next() {
        Some(first) => (significant.count() + 1) * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ENTRA_TEMPLATE: &str = "https://login.microsoftonline.com/{tenantid}/v2.0";

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
}
