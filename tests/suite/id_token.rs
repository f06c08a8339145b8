//! The id_token validator against a key server on 127.0.0.1 that we control: genuine tokens,
//! forged ones (tampered, `alg: none`, HS256 keyed with the public key, JWE-shaped), claims
//! that do not match the sign-in, Entra's multi-tenant issuer, and the JWKS cache (key
//! rotation, the unknown-`kid` rate limit, hourly refresh, single flight, outages).
//!
//! Signing keys: the test-only RSA keys in tests/fixtures (test-key1, test-key2) and an EC
//! P-256 key generated at test time. None of them is used anywhere else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use truecontext_bridge::clock::{Clock, ManualClock};
use truecontext_bridge::oauth::id_token::{Expectations, IdTokenClaims, IdTokenError, IdTokenValidator};
use truecontext_bridge::oauth::jwks::JwksCache;
use truecontext_bridge::secret::SecretString;

const ISSUER: &str = "https://issuer.test";
const CLIENT: &str = "bridge-client";
const NONCE: &str = "nonce-5f1c0e9a7b3d";
const ENTRA_TEMPLATE: &str = "https://login.microsoftonline.com/{tenantid}/v2.0";
const TID: &str = "3c9e2b1a-7d4f-4e8a-9b6c-0f1e2d3c4b5a";
const OTHER_TID: &str = "11111111-2222-3333-4444-555555555555";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

/// The fixture JWKs (RSA, `use: sig`, no `alg`), by kid.
fn fixture_jwk(kid: &str) -> Value {
    let all: Value = serde_json::from_str(&fixture("test-jwks.json")).unwrap();
    all["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap().clone()
}

fn jwks(keys: Vec<Value>) -> Value {
    json!({ "keys": keys })
}

/// A JWKS endpoint whose answer, status and speed the test sets, and which counts its requests.
struct KeyServer {
    url: url::Url,
    published: Arc<Mutex<Value>>,
    status: Arc<Mutex<StatusCode>>,
    delay: Arc<Mutex<Duration>>,
    fetches: Arc<AtomicU64>,
}

impl KeyServer {
    async fn start(keys: Value) -> Self {
        let published = Arc::new(Mutex::new(keys));
        let status = Arc::new(Mutex::new(StatusCode::OK));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let fetches = Arc::new(AtomicU64::new(0));
        let (p, s, d, f) = (published.clone(), status.clone(), delay.clone(), fetches.clone());
        let app = Router::new().route(
            "/keys",
            get(move || {
                let (p, s, d, f) = (p.clone(), s.clone(), d.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let delay = *d.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    let status = *s.lock().unwrap();
                    let body = p.lock().unwrap().to_string();
                    let response: Response = if status.is_redirection() {
                        (status, [(header::LOCATION, "http://127.0.0.1:9/elsewhere")]).into_response()
                    } else {
                        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
                    };
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url::Url::parse(&format!("http://{}/keys", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, published, status, delay, fetches }
    }

    fn publish(&self, keys: Value) {
        *self.published.lock().unwrap() = keys;
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// A validator over a fresh cache, with a clock the test moves.
    fn validator(&self) -> (IdTokenValidator, Arc<JwksCache>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let http = truecontext_bridge::oauth::token::http_client();
        let cache = Arc::new(JwksCache::with_clock(self.url.clone(), http, clock.clone()));
        (IdTokenValidator::new(cache.clone()), cache, clock)
    }
}

fn claims_at(now: i64) -> Value {
    json!({ "iss": ISSUER, "aud": CLIENT, "sub": "user-1", "nonce": NONCE, "iat": now, "exp": now + 3600,
            "preferred_username": "ada@example.test", "name": "Ada", "oid": "0b1c2d3e" })
}

fn claims(clock: &ManualClock) -> Value {
    claims_at(clock.unix_now())
}

fn rsa_key(kid: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture(&format!("{kid}.pem")).as_bytes()).unwrap()
}

fn sign_with(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> SecretString {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    SecretString::new(jsonwebtoken::encode(&header, claims, key).unwrap())
}

/// RS256 with the fixture key of that name, under its own kid.
fn sign(kid: &str, claims: &Value) -> SecretString {
    sign_with(Algorithm::RS256, Some(kid), &rsa_key(kid), claims)
}

/// A token assembled by hand: any header, any payload, any signature.
fn raw_token(header: Value, claims: &Value, signature: &str) -> SecretString {
    SecretString::new(format!("{}.{}.{}", b64(header.to_string()), b64(claims.to_string()), signature))
}

fn expectations() -> Expectations {
    Expectations::exact(ISSUER.into(), CLIENT.into(), NONCE.into())
}

/// Validates, and checks that an error names neither the token nor any part of it.
async fn check(
    validator: &IdTokenValidator,
    token: &SecretString,
    expected: &Expectations,
) -> Result<IdTokenClaims, IdTokenError> {
    let result = validator.validate(token, expected).await;
    if let Err(e) = &result {
        let text = format!("{e} {e:?}");
        if token.expose().len() > 8 {
            assert!(!text.contains(token.expose()), "the error shows the token: {text}");
        }
        for part in token.expose().split('.').filter(|p| p.len() > 8) {
            assert!(!text.contains(part), "the error shows part of the token: {text}");
        }
        assert!(!text.contains(NONCE), "the error shows the nonce: {text}");
    }
    result
}

async fn refused(validator: &IdTokenValidator, token: &SecretString) -> IdTokenError {
    check(validator, token, &expectations()).await.expect_err("the token must be refused")
}

#[tokio::test]
async fn a_genuine_rs256_token_gives_typed_claims() {
    // The fixture JWKS has no `alg` (as Entra's): kty, n and e are enough.
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, _, clock) = server.validator();
    let token = sign("test-key1", &claims(&clock));
    let c = check(&validator, &token, &expectations()).await.unwrap();
    assert_eq!((c.iss.as_str(), c.sub.as_str(), c.aud.as_slice()), (ISSUER, "user-1", [CLIENT.to_owned()].as_slice()));
    assert_eq!(c.preferred_username.as_deref(), Some("ada@example.test"));
    assert_eq!(c.name.as_deref(), Some("Ada"));
    assert_eq!(c.oid.as_deref(), Some("0b1c2d3e"));
    assert_eq!((c.tid.as_deref(), c.email.as_deref(), c.upn.as_deref(), c.azp.as_deref()), (None, None, None, None));
    assert!(c.nonce_checked);
    assert_eq!(c.iat, clock.unix_now());
    assert_eq!(c.exp, clock.unix_now() + 3600);
    assert_eq!(c.claims["preferred_username"], "ada@example.test");
    assert!(!c.claims.contains_key("nonce"), "the nonce is not handed on");
    assert!(!format!("{c:?}").contains(NONCE));
    assert_eq!(server.fetches(), 1);
    // A second validation uses the cached keys.
    check(&validator, &token, &expectations()).await.unwrap();
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn jwks_entries_with_or_without_alg_and_only_signature_keys() {
    let mut with_alg = fixture_jwk("test-key1");
    with_alg["alg"] = json!("RS256");
    let mut encryption_only = fixture_jwk("test-key2");
    encryption_only["use"] = json!("enc");
    let server = KeyServer::start(jwks(vec![with_alg, encryption_only])).await;
    let (validator, _, clock) = server.validator();
    check(&validator, &sign("test-key1", &claims(&clock)), &expectations()).await.unwrap();
    // A key published for encryption does not verify signatures.
    assert_eq!(refused(&validator, &sign("test-key2", &claims(&clock))).await, IdTokenError::UnknownKey);

    // Without alg, as Entra publishes them.
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, _, clock) = server.validator();
    assert!(fixture_jwk("test-key1").get("alg").is_none());
    check(&validator, &sign("test-key1", &claims(&clock)), &expectations()).await.unwrap();
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1"), fixture_jwk("test-key2")])).await;
    let (validator, _, clock) = server.validator();
    let genuine = sign("test-key1", &claims(&clock));
    let parts: Vec<&str> = genuine.expose().split('.').collect();

    // The payload changed after signing.
    let mut forged = claims(&clock);
    forged["sub"] = json!("admin");
    let tampered = SecretString::new(format!("{}.{}.{}", parts[0], b64(forged.to_string()), parts[2]));
    assert_eq!(refused(&validator, &tampered).await, IdTokenError::BadSignature);
    // Signed by key2, but claiming key1's kid.
    let wrong_key = sign_with(Algorithm::RS256, Some("test-key1"), &rsa_key("test-key2"), &claims(&clock));
    assert_eq!(refused(&validator, &wrong_key).await, IdTokenError::BadSignature);
    // A signature cut short, or missing.
    let truncated = SecretString::new(format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]));
    assert_eq!(refused(&validator, &truncated).await, IdTokenError::BadSignature);
    let unsigned = SecretString::new(format!("{}.{}.", parts[0], parts[1]));
    assert_eq!(refused(&validator, &unsigned).await, IdTokenError::BadSignature);
}

#[tokio::test]
async fn claims_that_do_not_match_this_sign_in_are_refused() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, _, clock) = server.validator();
    let now = clock.unix_now();
    let cases: Vec<(&str, Value, IdTokenError)> = vec![
        ("aud", json!("someone-else"), IdTokenError::WrongAudience),
        ("aud", json!(["someone-else"]), IdTokenError::WrongAudience),
        // Our client id plus an untrusted audience, and no azp naming us.
        ("aud", json!([CLIENT, "untrusted-app"]), IdTokenError::WrongAudience),
        ("azp", json!("someone-else"), IdTokenError::WrongAzp),
        ("nonce", json!("another-flow"), IdTokenError::WrongNonce),
        ("nonce", json!(""), IdTokenError::WrongNonce),
        ("exp", json!(now - 121), IdTokenError::Expired),
        ("exp", json!(now - 3600), IdTokenError::Expired),
        ("nbf", json!(now + 600), IdTokenError::NotYetValid),
        ("iat", json!(now + 3600), IdTokenError::IssuedInFuture),
        ("iat", json!(now - 25 * 3600), IdTokenError::IssuedTooLongAgo),
    ];
    for (claim, value, expected) in cases {
        let mut c = claims(&clock);
        c[claim] = value.clone();
        assert_eq!(refused(&validator, &sign("test-key1", &c)).await, expected, "{claim}: {value}");
    }
    let mut c = claims(&clock);
    c["iss"] = json!("https://evil.test");
    let error = refused(&validator, &sign("test-key1", &c)).await;
    assert_eq!(error, IdTokenError::WrongIssuer { expected: ISSUER.into(), found: "https://evil.test".into() });
    assert_eq!(
        error.to_string(),
        "the id_token comes from the issuer https://evil.test, but https://issuer.test was expected"
    );
    let mut c = claims(&clock);
    c.as_object_mut().unwrap().remove("nonce");
    assert_eq!(refused(&validator, &sign("test-key1", &c)).await, IdTokenError::WrongNonce);
}

#[tokio::test]
async fn small_clock_skew_is_tolerated() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, _, clock) = server.validator();
    let now = clock.unix_now();
    let cases: Vec<(&str, Value)> = vec![
        ("exp", json!(now - 100)), // expired within the two-minute leeway
        ("nbf", json!(now + 100)),
        ("iat", json!(now + 300)),
        ("iat", json!(now - 23 * 3600)),
    ];
    for (claim, value) in cases {
        let mut c = claims(&clock);
        c[claim] = value.clone();
        check(&validator, &sign("test-key1", &c), &expectations()).await.unwrap_or_else(|e| panic!("{claim}: {e}"));
    }
    // Our client id with an audience we trust, or with azp naming us, is fine.
    let mut c = claims(&clock);
    c["aud"] = json!([CLIENT, "api://bridge"]);
    let trusting = expectations().with_trusted_audiences(vec!["api://bridge".into()]);
    check(&validator, &sign("test-key1", &c), &trusting).await.unwrap();
    c["aud"] = json!([CLIENT, "untrusted-app"]);
    c["azp"] = json!(CLIENT);
    let accepted = check(&validator, &sign("test-key1", &c), &expectations()).await.unwrap();
    assert_eq!(accepted.azp.as_deref(), Some(CLIENT));
}

#[tokio::test]
async fn alg_none_is_refused_before_any_key_is_fetched() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, _, clock) = server.validator();
    let c = claims(&clock);
    for alg in ["none", "None", "NONE", "nOnE"] {
        for signature in ["", "c2lnbmF0dXJl"] {
            let token = raw_token(json!({"alg": alg, "kid": "test-key1"}), &c, signature);
            assert_eq!(refused(&validator, &token).await, IdTokenError::AlgorithmNotAllowed(alg.into()));
        }
    }
    let no_alg = raw_token(json!({"typ": "JWT", "kid": "test-key1"}), &c, "");
    assert!(matches!(refused(&validator, &no_alg).await, IdTokenError::AlgorithmNotAllowed(_)));
    assert_eq!(server.fetches(), 0);
}

#[tokio::test]
async fn hs256_keyed_with_the_public_key_is_refused() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, _, clock) = server.validator();
    let c = claims(&clock);
    let pem = fixture("test-key1.pub.pem");
    let der_body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(der_body).unwrap();
    let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(fixture_jwk("test-key1")["n"].as_str().unwrap())
        .unwrap();
    let jwk_json = fixture_jwk("test-key1").to_string();
    let secrets: [&[u8]; 5] = [pem.as_bytes(), pem.trim_end().as_bytes(), &der, &modulus, jwk_json.as_bytes()];
    for secret in secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            for kid in [Some("test-key1"), None] {
                let token = sign_with(alg, kid, &EncodingKey::from_secret(secret), &c);
                assert_eq!(refused(&validator, &token).await, IdTokenError::AlgorithmNotAllowed(format!("{alg:?}")));
            }
        }
    }
    // Nor can a caller allow HMAC.
    assert!(expectations().with_algorithms(&[Algorithm::RS256, Algorithm::HS256]).is_err());
    assert_eq!(server.fetches(), 0, "refused by the header, before any key was fetched");
}

#[tokio::test]
async fn a_jwe_shaped_token_is_refused() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, _, _) = server.validator();
    let header = b64(json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "test-key1"}).to_string());
    let jwe = SecretString::new(format!(
        "{header}.ZW5jcnlwdGVkLWtleQ.aXZpdml2aXZpdml2.Y2lwaGVydGV4dGNpcGhlcg.dGFndGFndGFndGFn"
    ));
    assert_eq!(refused(&validator, &jwe).await, IdTokenError::Encrypted);
    for garbage in ["", "not-a-token", "a.b", "a.b.c.d", "e30.e30.e30.e30.e30.e30"] {
        assert!(
            matches!(refused(&validator, &SecretString::new(garbage)).await, IdTokenError::Malformed(_)),
            "{garbage:?}"
        );
    }
    assert_eq!(server.fetches(), 0);
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_one_refetch() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, cache, clock) = server.validator();
    check(&validator, &sign("test-key1", &claims(&clock)), &expectations()).await.unwrap();
    assert_eq!(server.fetches(), 1);
    // The server rotates to key2, seconds later: the unknown kid causes one refetch.
    clock.advance(Duration::from_secs(5));
    server.publish(jwks(vec![fixture_jwk("test-key2")]));
    let after_rotation = check(&validator, &sign("test-key2", &claims(&clock)), &expectations()).await.unwrap();
    assert_eq!(after_rotation.sub, "user-1");
    assert_eq!(server.fetches(), 2);
    assert_eq!(cache.fetches().await, 2);
    // key1 is gone from the set, so its tokens now fail (no refetch within 30 s).
    assert_eq!(refused(&validator, &sign("test-key1", &claims(&clock))).await, IdTokenError::UnknownKey);
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn made_up_kids_cannot_hammer_the_key_server() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, _, clock) = server.validator();
    check(&validator, &sign("test-key1", &claims(&clock)), &expectations()).await.unwrap();
    assert_eq!(server.fetches(), 1);
    for i in 0..20 {
        clock.advance(Duration::from_secs(1));
        let kid = format!("made-up-{i}");
        let token = sign_with(Algorithm::RS256, Some(&kid), &rsa_key("test-key1"), &claims(&clock));
        assert_eq!(refused(&validator, &token).await, IdTokenError::UnknownKey, "{kid}");
    }
    // 20 attempts within 20 s: one extra fetch at most.
    assert!(server.fetches() <= 2, "the key server was asked {} times", server.fetches());
    assert_eq!(server.fetches(), 2, "the first unknown kid is looked up at once");
    // Genuine tokens keep working meanwhile, without fetching.
    check(&validator, &sign("test-key1", &claims(&clock)), &expectations()).await.unwrap();
    assert_eq!(server.fetches(), 2);
    // Once 30 s have passed since that refetch, one more unknown kid may refetch, once.
    clock.advance(Duration::from_secs(11));
    for i in 0..5 {
        let token = sign_with(Algorithm::RS256, Some(&format!("later-{i}")), &rsa_key("test-key1"), &claims(&clock));
        assert_eq!(refused(&validator, &token).await, IdTokenError::UnknownKey);
    }
    assert_eq!(server.fetches(), 3);
}

#[tokio::test]
async fn keys_are_refreshed_hourly_and_survive_an_outage() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, _, clock) = server.validator();
    check(&validator, &sign("test-key1", &claims(&clock)), &expectations()).await.unwrap();
    clock.advance(Duration::from_secs(59 * 60));
    check(&validator, &sign("test-key1", &claims(&clock)), &expectations()).await.unwrap();
    assert_eq!(server.fetches(), 1, "keys younger than an hour are used as they are");
    clock.advance(Duration::from_secs(2 * 60));
    check(&validator, &sign("test-key1", &claims(&clock)), &expectations()).await.unwrap();
    assert_eq!(server.fetches(), 2, "keys older than an hour are refetched");

    // The key server fails at the next refresh: the keys already known are still used.
    *server.status.lock().unwrap() = StatusCode::SERVICE_UNAVAILABLE;
    clock.advance(Duration::from_secs(61 * 60));
    check(&validator, &sign("test-key1", &claims(&clock)), &expectations()).await.unwrap();
    assert_eq!(server.fetches(), 3);
    // …and the failing server is not retried on every sign-in.
    check(&validator, &sign("test-key1", &claims(&clock)), &expectations()).await.unwrap();
    assert_eq!(server.fetches(), 3);
    // Back up: the next refresh after the backoff succeeds and picks up the new set.
    *server.status.lock().unwrap() = StatusCode::OK;
    server.publish(jwks(vec![fixture_jwk("test-key1"), fixture_jwk("test-key2")]));
    clock.advance(Duration::from_secs(15));
    check(&validator, &sign("test-key2", &claims(&clock)), &expectations()).await.unwrap();
    assert_eq!(server.fetches(), 4);
}

#[tokio::test]
async fn an_unreachable_or_redirecting_key_server_is_reported() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    *server.status.lock().unwrap() = StatusCode::INTERNAL_SERVER_ERROR;
    let (validator, _, clock) = server.validator();
    let token = sign("test-key1", &claims(&clock));
    let error = refused(&validator, &token).await;
    assert_eq!(error, IdTokenError::JwksUnavailable("the key endpoint answered HTTP 500".into()));
    assert_eq!(
        error.to_string(),
        "the authorization server's signing keys could not be loaded: the key endpoint answered HTTP 500"
    );

    *server.status.lock().unwrap() = StatusCode::FOUND;
    let (validator, _, _) = server.validator();
    assert!(
        matches!(refused(&validator, &token).await, IdTokenError::JwksUnavailable(reason) if reason.contains("redirect"))
    );

    *server.status.lock().unwrap() = StatusCode::OK;
    server.publish(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "test-key1"}]}));
    let (validator, _, _) = server.validator();
    assert!(
        matches!(refused(&validator, &token).await, IdTokenError::JwksUnavailable(_)),
        "symmetric keys are not keys"
    );

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let cache = Arc::new(JwksCache::new(
        url::Url::parse(&format!("http://{closed}/keys")).unwrap(),
        truecontext_bridge::oauth::token::http_client(),
    ));
    let error = refused(&IdTokenValidator::new(cache), &token).await;
    assert!(matches!(error, IdTokenError::JwksUnavailable(_)), "{error:?}");
}

#[tokio::test]
async fn concurrent_validations_on_a_cold_cache_share_one_fetch() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    *server.delay.lock().unwrap() = Duration::from_millis(300);
    let (validator, _, clock) = server.validator();
    let validator = Arc::new(validator);
    let token = sign("test-key1", &claims(&clock));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (validator, token) = (validator.clone(), token.clone());
            tokio::spawn(async move { validator.validate(&token, &expectations()).await.map(|c| c.sub) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "user-1");
    }
    assert_eq!(server.fetches(), 1);

    // The same for callers waiting on an unknown kid: one refetch, shared.
    clock.advance(Duration::from_secs(60));
    server.publish(jwks(vec![fixture_jwk("test-key1"), fixture_jwk("test-key2")]));
    let rotated = sign("test-key2", &claims(&clock));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (validator, token) = (validator.clone(), rotated.clone());
            tokio::spawn(async move { validator.validate(&token, &expectations()).await.map(|c| c.sub) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "user-1");
    }
    assert_eq!(server.fetches(), 2);
}

fn entra_claims(clock: &ManualClock, tid: &str, iss_tenant: &str) -> Value {
    let mut c = claims(clock);
    c["tid"] = json!(tid);
    c["iss"] = json!(format!("https://login.microsoftonline.com/{iss_tenant}/v2.0"));
    c
}

#[tokio::test]
async fn entra_multi_tenant_issuer_is_checked_against_tid() {
    // Entra's /common JWKS binds every key to the templated issuer.
    let mut key = fixture_jwk("test-key1");
    key["issuer"] = json!(ENTRA_TEMPLATE);
    let server = KeyServer::start(jwks(vec![key])).await;
    let (validator, _, clock) = server.validator();
    let template = Expectations::tenant_template(ENTRA_TEMPLATE.into(), CLIENT.into(), NONCE.into());

    let valid = check(&validator, &sign("test-key1", &entra_claims(&clock, TID, TID)), &template).await.unwrap();
    assert_eq!(valid.tid.as_deref(), Some(TID));
    assert_eq!(valid.iss, format!("https://login.microsoftonline.com/{TID}/v2.0"));

    let not_a_guid = sign("test-key1", &entra_claims(&clock, "contoso", "contoso"));
    assert_eq!(check(&validator, &not_a_guid, &template).await, Err(IdTokenError::BadTenantId));
    let mut no_tid = entra_claims(&clock, TID, TID);
    no_tid.as_object_mut().unwrap().remove("tid");
    assert_eq!(check(&validator, &sign("test-key1", &no_tid), &template).await, Err(IdTokenError::BadTenantId));

    let other_tenant = sign("test-key1", &entra_claims(&clock, TID, OTHER_TID));
    assert_eq!(
        check(&validator, &other_tenant, &template).await,
        Err(IdTokenError::WrongIssuer {
            expected: format!("https://login.microsoftonline.com/{TID}/v2.0"),
            found: format!("https://login.microsoftonline.com/{OTHER_TID}/v2.0"),
        })
    );
    // The literal template as iss, with a GUID tid, does not pass either.
    let mut literal = entra_claims(&clock, TID, TID);
    literal["iss"] = json!(ENTRA_TEMPLATE);
    assert!(matches!(
        check(&validator, &sign("test-key1", &literal), &template).await,
        Err(IdTokenError::WrongIssuer { .. })
    ));
    // A tenant-specific expectation compares exactly.
    let single =
        Expectations::exact(format!("https://login.microsoftonline.com/{TID}/v2.0"), CLIENT.into(), NONCE.into());
    check(&validator, &sign("test-key1", &entra_claims(&clock, TID, TID)), &single).await.unwrap();
    assert!(matches!(
        check(&validator, &sign("test-key1", &entra_claims(&clock, OTHER_TID, OTHER_TID)), &single).await,
        Err(IdTokenError::WrongIssuer { .. })
    ));
}

#[tokio::test]
async fn a_key_bound_to_an_issuer_vouches_for_no_other() {
    let mut key = fixture_jwk("test-key1");
    key["issuer"] = json!(ENTRA_TEMPLATE);
    let server = KeyServer::start(jwks(vec![key])).await;
    let (validator, _, clock) = server.validator();
    // The token's claims match what we expect, but the key belongs to Entra tenants.
    let error = refused(&validator, &sign("test-key1", &claims(&clock))).await;
    assert!(matches!(error, IdTokenError::WrongIssuer { .. }), "{error:?}");
}

#[tokio::test]
async fn es256_with_a_p256_key_when_allowed() {
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = ec.public_key_raw();
    assert_eq!((point.len(), point[0]), (65, 4));
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig",
                     "x": b64(&point[1..33]), "y": b64(&point[33..])});
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1"), jwk])).await;
    let (validator, _, clock) = server.validator();
    let token =
        sign_with(Algorithm::ES256, Some("ec-1"), &EncodingKey::from_ec_der(&ec.serialize_der()), &claims(&clock));
    // RS256 only by default.
    assert_eq!(refused(&validator, &token).await, IdTokenError::AlgorithmNotAllowed("ES256".into()));
    let both = expectations().with_algorithms(&[Algorithm::RS256, Algorithm::ES256]).unwrap();
    check(&validator, &token, &both).await.unwrap();
    // An RS256 token naming the EC key's kid does not verify with it.
    let confused = sign_with(Algorithm::RS256, Some("ec-1"), &rsa_key("test-key1"), &claims(&clock));
    assert_eq!(check(&validator, &confused, &both).await, Err(IdTokenError::BadSignature));
}

#[tokio::test]
async fn error_messages_name_the_failure_in_plain_words() {
    let server = KeyServer::start(jwks(vec![fixture_jwk("test-key1")])).await;
    let (validator, _, clock) = server.validator();
    let mut c = claims(&clock);
    c["exp"] = json!(clock.unix_now() - 7200);
    let expired = sign("test-key1", &c);
    let error = refused(&validator, &expired).await;
    assert_eq!(error.to_string(), "the id_token has expired");
    assert_eq!(format!("{error:?}"), "Expired");
    let all = [
        IdTokenError::BadSignature,
        IdTokenError::UnknownKey,
        IdTokenError::AlgorithmNotAllowed("HS256".into()),
        IdTokenError::WrongAudience,
        IdTokenError::WrongAzp,
        IdTokenError::WrongNonce,
        IdTokenError::NotYetValid,
        IdTokenError::IssuedInFuture,
        IdTokenError::Encrypted,
        IdTokenError::BadTenantId,
    ];
    for error in all {
        let text = error.to_string();
        assert!(text.starts_with("the id_token") || text.starts_with("the authorization"), "{text}");
        assert!(!text.contains(expired.expose()));
    }
}
