//! A token issuer we control, for the webhook's `jwt` mode: an OpenID discovery document and a
//! JWKS on loopback (keys from tests/fixtures, test-only), counting JWKS fetches, and signing
//! with any fixture key under any `kid`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

pub struct Issuer {
    pub issuer: String,
    published: Arc<Mutex<Value>>,
    fetches: Arc<AtomicU64>,
    discoveries: Arc<AtomicU64>,
}

impl Issuer {
    /// Publishes the fixture keys named in `kids`.
    pub async fn start(kids: &[&str]) -> Issuer {
        let all: Value = serde_json::from_str(&fixture("test-jwks.json")).unwrap();
        let chosen: Vec<Value> = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
            .cloned()
            .collect();
        let published = Arc::new(Mutex::new(json!({ "keys": chosen })));
        let fetches = Arc::new(AtomicU64::new(0));
        let discoveries = Arc::new(AtomicU64::new(0));
        let d = discoveries.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/tenant-1/v2.0", listener.local_addr().unwrap());
        let (p, f, iss) = (published.clone(), fetches.clone(), issuer.clone());
        let app = Router::new()
            .route(
                "/tenant-1/v2.0/.well-known/openid-configuration",
                get(move || {
                    let (iss, d) = (iss.clone(), d.clone());
                    async move {
                        d.fetch_add(1, Ordering::SeqCst);
                        // Slow enough that cold requests arriving together overlap.
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        axum::Json(json!({ "issuer": iss, "jwks_uri": format!("{iss}/keys") }))
                    }
                }),
            )
            .route(
                "/tenant-1/v2.0/keys",
                get(move || {
                    let (p, f) = (p.clone(), f.clone());
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        axum::Json(p.lock().unwrap().clone())
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Issuer { issuer, published, fetches, discoveries }
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was read.
    pub fn discoveries(&self) -> u64 {
        self.discoveries.load(Ordering::SeqCst)
    }

    pub fn publish_all(&self) {
        *self.published.lock().unwrap() = serde_json::from_str(&fixture("test-jwks.json")).unwrap();
    }

    /// Claims of a good token for `audience`, valid for ten minutes.
    pub fn claims(&self, audience: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({ "iss": self.issuer, "aud": audience, "sub": "truecontext-connection", "azp": "tc-client",
                "roles": ["Submissions.Push"], "iat": now, "nbf": now - 5, "exp": now + 600 })
    }
}

/// RS256, signed with the private key of fixture `key`, under the header `kid`.
pub fn sign(key: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let pem = fixture(&format!("{key}.pem"));
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
}
