//! The webhook's caller authentication, every mode, against forged and genuine credentials:
//! each refusal is 401 with a `WWW-Authenticate` challenge, names its reason, counts it, and
//! stores nothing; the credential never appears in the answer.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::harness::hook::{Hook, PASSWORD, PASSWORD_NEXT};
use crate::harness::issuer::{fixture, sign, Issuer};

const AUDIENCE: &str = "api://truecontext-bridge-webhook";

fn body() -> Vec<u8> {
    serde_json::to_vec(&json!({ "identifier": "5001", "pages": [{ "sections": [{ "answers": [] }] }] })).unwrap()
}

fn bearer(token: &str) -> (HeaderName, HeaderValue) {
    (header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap())
}

fn error_code(response: &truecontext_bridge::handlers::HttpResponse) -> String {
    let value: Value = serde_json::from_str(&response.body).unwrap();
    value["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// Sends a push that must be refused with 401 and `code`, and checks that nothing was stored.
async fn refused(hook: &Hook, headers: &[(HeaderName, HeaderValue)], code: &str, secret: Option<&str>) {
    let response = hook.send("", headers, &body()).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{code}: {}", response.body);
    assert_eq!(error_code(&response), code, "{}", response.body);
    let challenge = response.headers.iter().find(|(k, _)| k == header::WWW_AUTHENTICATE);
    assert!(challenge.is_some(), "{code}: no WWW-Authenticate");
    if let Some(secret) = secret {
        assert!(!response.body.contains(secret), "{code}: the answer shows the credential");
    }
    hook.assert_nothing_stored(code).await;
}

#[tokio::test]
async fn basic_accepts_the_password_and_both_halves_of_a_rotation_and_refuses_the_rest() {
    let hook = Hook::new(&[]);
    refused(&hook, &[], "missing", None).await;
    refused(&hook, &[Hook::basic_auth("wrong-password-0123456789")], "wrong_credentials", Some("wrong-password")).await;
    refused(&hook, &[Hook::basic_auth("")], "wrong_credentials", None).await;
    refused(&hook, &[(header::AUTHORIZATION, HeaderValue::from_static("Basic %%%"))], "malformed", None).await;
    refused(&hook, &[(header::AUTHORIZATION, HeaderValue::from_static("Basic "))], "malformed", None).await;
    let other_user = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
    let other_user = HeaderValue::from_str(&format!("Basic {other_user}")).unwrap();
    refused(&hook, &[(header::AUTHORIZATION, other_user)], "wrong_credentials", Some(PASSWORD)).await;
    refused(&hook, &[Hook::basic_auth(PASSWORD_NEXT)], "wrong_credentials", None).await;
    assert_eq!(hook.push(&body()).await.status, StatusCode::ACCEPTED);

    // During a rotation both values work; afterwards only the new one.
    let rotating = Hook::new(&[("WEBHOOK_BASIC_PASSWORD", &format!("{PASSWORD},{PASSWORD_NEXT}"))]);
    assert_eq!(rotating.send("", &[Hook::basic_auth(PASSWORD)], &body()).await.status, StatusCode::ACCEPTED);
    let second = serde_json::to_vec(&json!({ "identifier": "5002", "pages": [] })).unwrap();
    assert_eq!(rotating.send("", &[Hook::basic_auth(PASSWORD_NEXT)], &second).await.status, StatusCode::ACCEPTED);
    let rotated = Hook::new(&[("WEBHOOK_BASIC_PASSWORD", PASSWORD_NEXT)]);
    refused(&rotated, &[Hook::basic_auth(PASSWORD)], "wrong_credentials", Some(PASSWORD)).await;
}

#[tokio::test]
async fn header_mode_takes_its_header_and_its_values_only() {
    let value = "header-secret-value-0123456789";
    let next = "header-secret-value-next-0123456789";
    let hook = Hook::new(&[
        ("WEBHOOK_AUTH", "header"),
        ("WEBHOOK_HEADER_NAME", "x-tcbridge-key"),
        ("WEBHOOK_HEADER_VALUE", &format!("{value}, {next}")),
    ]);
    let key = HeaderName::from_static("x-tcbridge-key");
    refused(&hook, &[], "missing", None).await;
    refused(&hook, &[(key.clone(), HeaderValue::from_static(""))], "missing", None).await;
    refused(
        &hook,
        &[(key.clone(), HeaderValue::from_static("header-secret-value-012345678"))],
        "wrong_credentials",
        None,
    )
    .await;
    refused(
        &hook,
        &[(HeaderName::from_static("x-api-key"), HeaderValue::from_str(value).unwrap())],
        "missing",
        Some(value),
    )
    .await;
    refused(&hook, &[Hook::basic_auth(value)], "missing", Some(value)).await;
    let response = hook.send("", &[(key.clone(), HeaderValue::from_str(value).unwrap())], &body()).await;
    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.body);
    let second = serde_json::to_vec(&json!({ "identifier": "5003", "pages": [] })).unwrap();
    let response = hook.send("", &[(key, HeaderValue::from_str(next).unwrap())], &second).await;
    assert_eq!(response.status, StatusCode::ACCEPTED, "the rotation's second value: {}", response.body);
}

async fn jwt_hook(issuer: &Issuer, extra: &[(&str, &str)]) -> Hook {
    let mut settings = vec![
        ("WEBHOOK_AUTH", "jwt"),
        ("WEBHOOK_JWT_ISSUER", issuer.issuer.as_str()),
        ("WEBHOOK_AUDIENCE", AUDIENCE),
        ("WEBHOOK_ALLOWED_CLIENT_IDS", "tc-client"),
    ];
    settings.extend_from_slice(extra);
    Hook::new(&settings)
}

#[tokio::test]
async fn jwt_accepts_a_genuine_token_and_refuses_every_forgery() {
    let issuer = Issuer::start(&["test-key1"]).await;
    let hook = jwt_hook(&issuer, &[]).await;
    let good = issuer.claims(AUDIENCE);
    let now = chrono::Utc::now().timestamp();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        claims
    };

    refused(&hook, &[], "missing", None).await;
    refused(&hook, &[bearer("not-a-jwt")], "malformed", None).await;
    refused(&hook, &[(header::AUTHORIZATION, HeaderValue::from_static("Basic dGM6eA=="))], "malformed", None).await;
    let expired = sign("test-key1", "test-key1", &with(&|c| c["exp"] = json!(now - 300)));
    refused(&hook, &[bearer(&expired)], "expired", Some(&expired)).await;
    let early = sign("test-key1", "test-key1", &with(&|c| c["nbf"] = json!(now + 600)));
    refused(&hook, &[bearer(&early)], "not_yet_valid", None).await;
    let audience = sign("test-key1", "test-key1", &with(&|c| c["aud"] = json!("api://another-app")));
    refused(&hook, &[bearer(&audience)], "wrong_audience", None).await;
    let issued_elsewhere = sign("test-key1", "test-key1", &with(&|c| c["iss"] = json!("https://login.example/evil")));
    refused(&hook, &[bearer(&issued_elsewhere)], "wrong_issuer", None).await;
    let other_key = sign("test-key2", "test-key1", &good);
    refused(&hook, &[bearer(&other_key)], "bad_signature", None).await;
    // Issue 20: a user's delegated token, and one minted to live ten years.
    let delegated = sign("test-key1", "test-key1", &with(&|c| c["scp"] = json!("user_impersonation")));
    refused(&hook, &[bearer(&delegated)], "not_app_only", None).await;
    let decade = sign("test-key1", "test-key1", &with(&|c| c["exp"] = json!(now + 10 * 365 * 86_400)));
    refused(&hook, &[bearer(&decade)], "lifetime_too_long", None).await;

    // alg none and HS256 keyed with the published public key are refused before any key is used.
    let encode = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", encode(&json!({"alg": "none", "kid": "test-key1"})), encode(&good));
    refused(&hook, &[bearer(&unsigned)], "algorithm_not_allowed", None).await;
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("test-key1".into());
    let public = fixture("test-key1.pub.pem");
    let confused = jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(public.as_bytes())).unwrap();
    refused(&hook, &[bearer(&confused)], "algorithm_not_allowed", None).await;

    // An unknown kid reloads the keys once, then is refused; a second one within the pause does not reload.
    let before = issuer.jwks_fetches();
    let unknown = sign("test-key2", "test-key2", &good);
    refused(&hook, &[bearer(&unknown)], "unknown_key", None).await;
    refused(&hook, &[bearer(&unknown)], "unknown_key", None).await;
    assert_eq!(issuer.jwks_fetches() - before, 1, "one JWKS refetch for the unknown kid, rate-limited");

    let genuine = sign("test-key1", "test-key1", &good);
    let response = hook.send("", &[bearer(&genuine)], &body()).await;
    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.body);
}

#[tokio::test]
async fn jwt_role_and_client_allow_list() {
    let issuer = Issuer::start(&["test-key1"]).await;
    let hook = jwt_hook(
        &issuer,
        &[("WEBHOOK_REQUIRED_ROLE", "Submissions.Push"), ("WEBHOOK_ALLOWED_CLIENT_IDS", "tc-client, other")],
    )
    .await;
    let mut no_role = issuer.claims(AUDIENCE);
    no_role["roles"] = json!(["Something.Else"]);
    refused(&hook, &[bearer(&sign("test-key1", "test-key1", &no_role))], "missing_role", None).await;
    let mut wrong_client = issuer.claims(AUDIENCE);
    wrong_client["azp"] = json!("intruder");
    refused(&hook, &[bearer(&sign("test-key1", "test-key1", &wrong_client))], "client_not_allowed", None).await;
    // Entra v1 tokens name the client in appid.
    let mut v1 = issuer.claims(AUDIENCE);
    v1.as_object_mut().unwrap().remove("azp");
    v1["appid"] = json!("other");
    let response = hook.send("", &[bearer(&sign("test-key1", "test-key1", &v1))], &body()).await;
    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.body);
}

#[tokio::test]
async fn refusals_are_counted_by_reason_and_source_in_status() {
    // Behind one trusted proxy, the caller is the entry it appended (the last): what the caller
    // wrote before it (203.0.113.9) is not believed.
    let hook = Hook::new(&[("TRUSTED_PROXY_HOPS", "1")]);
    let from = (HeaderName::from_static("x-forwarded-for"), HeaderValue::from_static("203.0.113.9, 10.0.0.1"));
    for _ in 0..3 {
        hook.send("", &[from.clone(), Hook::basic_auth("guess-0123456789abcdef")], &body()).await;
    }
    hook.send("", &[], &body()).await;
    assert_eq!(hook.push(&body()).await.status, StatusCode::ACCEPTED);
    let report = truecontext_bridge::handlers::StatusReport::gather(&hook.app).await.unwrap();
    let webhook = serde_json::to_value(&report.webhook).unwrap();
    assert_eq!(webhook["received"], 5, "{webhook}");
    assert_eq!(webhook["accepted"], 1);
    assert_eq!(webhook["rejected"]["wrong_credentials"], 3);
    assert_eq!(webhook["rejected"]["missing"], 1);
    assert_eq!(webhook["auth_failures_by_source"]["10.0.0.1"], 3);
    assert!(webhook["auth_failures_by_source"].get("203.0.113.9").is_none(), "{webhook}");
    assert_eq!(webhook["auth_failures_by_source"]["unknown"], 1);
    assert!(!serde_json::to_string(&report).unwrap().contains("guess-0123456789"));
}

#[tokio::test]
async fn an_unset_webhook_auth_refuses_every_push() {
    let unset = {
        let dir = tempfile::tempdir().unwrap();
        let stores = truecontext_bridge::store::local::open(dir.path(), None).unwrap();
        let mut raw = truecontext_bridge::config::RawSettings::from_pairs([("TRUECONTEXT_AUTH", "basic")]);
        raw.set("TRUECONTEXT_API_KEY_ID", "k");
        raw.set("TRUECONTEXT_API_KEY_SECRET", "s");
        let settings = truecontext_bridge::config::Settings::load(&raw).unwrap();
        assert!(settings.webhook.auth.is_none());
        (
            truecontext_bridge::handlers::App::new(
                std::sync::Arc::new(settings),
                stores.clone(),
                truecontext_bridge::handlers::Mode::Standalone,
            ),
            stores,
            dir,
        )
    };
    let (app, stores, _dir) = unset;
    let request = truecontext_bridge::handlers::HttpRequest {
        method: axum::http::Method::POST,
        query: vec![],
        headers: [(header::AUTHORIZATION, HeaderValue::from_static("Basic dGM6eA=="))].into_iter().collect(),
        body: body(),
        peer: None,
    };
    let response = app.http(truecontext_bridge::functions::by_name("webhook").unwrap(), request).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{}", response.body);
    assert_eq!(error_code(&response), "not_configured");
    assert!(stores.blobs.list("submissions", "").await.unwrap().is_empty());
}

/// Issue 20: with `WEBHOOK_CONNECTION_SECRETS`, a connection takes only its own value; the
/// shared one, or another connection's, is refused with 403 and stores nothing.
#[tokio::test]
async fn a_connection_with_its_own_credential_refuses_the_shared_one() {
    const OWN: &str = "default-own-password-0123456789";
    let hook =
        Hook::new(&[("WEBHOOK_CONNECTION_SECRETS", &format!("default={OWN}; other=other-own-password-0123456789"))]);
    let shared = hook.send("", &[Hook::basic_auth(PASSWORD)], &body()).await;
    assert_eq!(shared.status, StatusCode::FORBIDDEN, "{}", shared.body);
    assert_eq!(error_code(&shared), "connection_not_allowed");
    let others = hook.send("", &[Hook::basic_auth("other-own-password-0123456789")], &body()).await;
    assert_eq!(others.status, StatusCode::FORBIDDEN, "{}", others.body);
    hook.assert_nothing_stored("a credential for another connection").await;
    let own = hook.send("", &[Hook::basic_auth(OWN)], &body()).await;
    assert_eq!(own.status, StatusCode::ACCEPTED, "{}", own.body);
}

/// Issue 20: cold requests arriving together each read the issuer's discovery document; now
/// the first reads it and the others wait for its answer.
#[tokio::test]
async fn concurrent_cold_requests_discover_the_issuer_once() {
    let issuer = Issuer::start(&["test-key1"]).await;
    let hook = jwt_hook(&issuer, &[]).await;
    let token = sign("test-key1", "test-key1", &issuer.claims(AUDIENCE));
    let sends = (0..20).map(|i| {
        let body = serde_json::to_vec(&json!({ "identifier": format!("60{i:02}"), "pages": [] })).unwrap();
        let headers = [bearer(&token)];
        let hook = &hook;
        async move { hook.send("", &headers, &body).await.status }
    });
    for status in futures::future::join_all(sends).await {
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    assert_eq!(issuer.discoveries(), 1, "one discovery for twenty cold requests");
}
