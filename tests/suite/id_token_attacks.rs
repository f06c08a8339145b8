//! id_token validation against forged and genuine tokens, with a key server we control:
//! signatures, algorithms (none, HS256 keyed with the public key), claims, and key rotation
//! with the refetch rate limit. Keys: tests/fixtures (test-only).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use truecontext_bridge::oauth::id_token::{Expectations, IdTokenError, IdTokenValidator};
use truecontext_bridge::oauth::jwks::JwksCache;
use truecontext_bridge::secret::SecretString;

const ISSUER: &str = "https://issuer.test";
const CLIENT: &str = "bridge-client";
const NONCE: &str = "nonce-0123456789";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

struct KeyServer {
    url: url::Url,
    published: Arc<Mutex<Value>>,
    fetches: Arc<AtomicU64>,
}

async fn key_server(keys: &[&str]) -> KeyServer {
    let all: Value = serde_json::from_str(&fixture("test-jwks.json")).unwrap();
    let chosen: Vec<Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| keys.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    let published = Arc::new(Mutex::new(json!({ "keys": chosen })));
    let fetches = Arc::new(AtomicU64::new(0));
    let (p, f) = (published.clone(), fetches.clone());
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let (p, f) = (p.clone(), f.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                axum::Json(p.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}/jwks", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    KeyServer { url, published, fetches }
}

impl KeyServer {
    fn publish_all(&self) {
        *self.published.lock().unwrap() = serde_json::from_str(&fixture("test-jwks.json")).unwrap();
    }

    fn validator(&self) -> (IdTokenValidator, Arc<JwksCache>) {
        let cache = Arc::new(JwksCache::new(self.url.clone(), truecontext_bridge::oauth::token::http_client()));
        (IdTokenValidator::new(cache.clone()), cache)
    }
}

fn claims() -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({ "iss": ISSUER, "aud": CLIENT, "sub": "user-1", "nonce": NONCE, "iat": now, "exp": now + 600,
            "preferred_username": "ada@example.test" })
}

fn sign(kid: &str, claims: &Value) -> SecretString {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let pem = fixture(&format!("{kid}.pem"));
    SecretString::new(
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap(),
    )
}

fn expectations() -> Expectations {
    Expectations::exact(ISSUER.into(), CLIENT.into(), NONCE.into())
}

async fn check(validator: &IdTokenValidator, token: &SecretString) -> Result<(), IdTokenError> {
    let result = validator.validate(token, &expectations()).await.map(|_| ());
    if let Err(e) = &result {
        // No error ever carries the token.
        let text = format!("{e} {e:?}");
        for part in token.expose().split('.').filter(|p| p.len() > 8) {
            assert!(!text.contains(part), "the error shows the token: {text}");
        }
    }
    result
}

#[tokio::test]
async fn a_genuine_token_is_accepted_and_forgeries_are_not() {
    let server = key_server(&["test-key1"]).await;
    let (validator, _) = server.validator();
    let genuine = sign("test-key1", &claims());
    let identity = validator.validate(&genuine, &expectations()).await.unwrap();
    assert_eq!(identity.preferred_username.as_deref(), Some("ada@example.test"));

    // Tampered payload, original signature.
    let parts: Vec<&str> = genuine.expose().split('.').collect();
    let mut forged_claims = claims();
    forged_claims["sub"] = json!("admin");
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged_claims.to_string());
    let tampered = SecretString::new(format!("{}.{}.{}", parts[0], forged_payload, parts[2]));
    assert_eq!(check(&validator, &tampered).await, Err(IdTokenError::BadSignature));

    // alg: none.
    let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"test-key1"}"#);
    let unsigned = SecretString::new(format!("{none_header}.{forged_payload}."));
    assert_eq!(check(&validator, &unsigned).await, Err(IdTokenError::AlgorithmNotAllowed("none".into())));

    // HS256 keyed with the public key (the classic algorithm confusion).
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test-key1".into());
    let public_pem = fixture("test-key1.pub.pem");
    let confused = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(public_pem.as_bytes())).unwrap();
    assert_eq!(
        check(&validator, &SecretString::new(confused)).await,
        Err(IdTokenError::AlgorithmNotAllowed("HS256".into()))
    );

    // Signed by a key the server does not publish.
    assert_eq!(check(&validator, &sign("test-key2", &claims())).await, Err(IdTokenError::UnknownKey));
}

#[tokio::test]
async fn claims_must_match_this_sign_in() {
    let server = key_server(&["test-key1"]).await;
    let (validator, _) = server.validator();
    let now = chrono::Utc::now().timestamp();
    let cases: Vec<(&str, Value, IdTokenError)> = vec![
        ("aud", json!("someone-else"), IdTokenError::WrongAudience),
        ("nonce", json!("another-flow"), IdTokenError::WrongNonce),
        ("exp", json!(now - 600), IdTokenError::Expired),
        ("nbf", json!(now + 600), IdTokenError::NotYetValid),
        ("azp", json!("someone-else"), IdTokenError::WrongAzp),
    ];
    for (claim, value, expected) in cases {
        let mut c = claims();
        c[claim] = value;
        assert_eq!(check(&validator, &sign("test-key1", &c)).await, Err(expected), "{claim}");
    }
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    assert!(matches!(check(&validator, &sign("test-key1", &c)).await, Err(IdTokenError::WrongIssuer { .. })));
    // Expired within the two-minute leeway is still accepted (clock skew).
    let mut c = claims();
    c["exp"] = json!(now - 60);
    assert_eq!(check(&validator, &sign("test-key1", &c)).await, Ok(()));
}

#[tokio::test]
async fn a_rotated_key_is_fetched_at_once_but_random_kids_cannot_hammer_the_server() {
    let server = key_server(&["test-key1"]).await;
    let (validator, cache) = server.validator();
    check(&validator, &sign("test-key1", &claims())).await.unwrap();
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    // The server rotates: key2 appears, and tokens signed with it are accepted right away.
    server.publish_all();
    check(&validator, &sign("test-key2", &claims())).await.unwrap();
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    // Tokens with made-up kids: refused, and no further fetch within 30 s.
    for i in 0..20 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("made-up-{i}"));
        let pem = fixture("test-key1.pem");
        let token =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap();
        assert_eq!(check(&validator, &SecretString::new(token)).await, Err(IdTokenError::UnknownKey));
    }
    assert!(server.fetches.load(Ordering::SeqCst) <= 3, "fetches: {}", server.fetches.load(Ordering::SeqCst));
    assert_eq!(cache.fetches().await, server.fetches.load(Ordering::SeqCst));
}

#[tokio::test]
async fn concurrent_validations_share_one_fetch() {
    let server = key_server(&["test-key1"]).await;
    let (validator, _) = server.validator();
    let validator = Arc::new(validator);
    let token = sign("test-key1", &claims());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (validator, token) = (validator.clone(), token.clone());
            tokio::spawn(async move { validator.validate(&token, &expectations()).await.map(|_| ()) })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
}
