//! The test peers work on this machine, without product code: node-oidc-provider completes an
//! Entra-like authorization-code flow (PKCE S256, form_post, offline_access without prompt=consent,
//! refresh-token rotation with reuse detection) over plain HTTP, and Debian's Chromium driven by
//! playwright-core goes through its interactive pages to a page on another site.

use crate::harness;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use harness::browser::run_browser;
use harness::oidc::{HttpAgent, OidcProvider};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "tcbridge-test";
const CLIENT_SECRET: &str = "peer-client-secret-0123456789abcdef";
const REDIRECT_URI: &str = "http://app.localhost:9/api/callback";

fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn provider(client: Value) -> OidcProvider {
    OidcProvider::start(json!({ "clients": [client] }))
}

fn secret_post_client(redirect_uri: &str) -> Value {
    json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": "client_secret_post",
    })
}

struct Flow {
    state: String,
    nonce: String,
    verifier: String,
}

impl Flow {
    fn new() -> Flow {
        Flow { state: random(), nonce: random(), verifier: random() }
    }

    fn url(&self, metadata: &Value, redirect_uri: &str) -> String {
        let mut url = url::Url::parse(metadata["authorization_endpoint"].as_str().unwrap()).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", CLIENT_ID)
            .append_pair("response_type", "code")
            .append_pair("response_mode", "form_post")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", "openid offline_access")
            .append_pair("state", &self.state)
            .append_pair("nonce", &self.nonce)
            .append_pair("code_challenge", &challenge(&self.verifier))
            .append_pair("code_challenge_method", "S256");
        url.to_string()
    }
}

async fn discover(op: &OidcProvider) -> Value {
    let metadata: Value = harness::client().get(op.discovery_url()).send().await.unwrap().json().await.unwrap();
    assert_eq!(metadata["issuer"], op.issuer());
    metadata
}

async fn token(metadata: &Value, form: &[(&str, &str)]) -> (u16, Value) {
    let response =
        harness::client().post(metadata["token_endpoint"].as_str().unwrap()).form(form).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn redeem(metadata: &Value, code: &str, verifier: &str, redirect_uri: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    token(metadata, &form).await
}

async fn refresh(metadata: &Value, refresh_token: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    token(metadata, &form).await
}

/// The JOSE header and claims of a JWT, unverified.
fn jwt_parts(jwt: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a signed JWT");
    let decode = |part: &str| serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap();
    (decode(parts[0]), decode(parts[1]))
}

#[tokio::test]
async fn code_flow_over_plain_http_with_pkce_form_post_offline_access_and_rotation() {
    let op = provider(secret_post_client(REDIRECT_URI));
    let metadata = discover(&op).await;
    assert_eq!(metadata["authorization_response_iss_parameter_supported"], true);
    assert_eq!(metadata["code_challenge_methods_supported"], json!(["S256"]));
    assert!(metadata["response_modes_supported"].as_array().unwrap().contains(&json!("form_post")));
    assert!(metadata["scopes_supported"].as_array().unwrap().contains(&json!("offline_access")));

    let flow = Flow::new();
    let agent = HttpAgent::new();
    let response = agent.authorize(&flow.url(&metadata, REDIRECT_URI)).await;
    assert_eq!((response.method.as_str(), response.target.as_str()), ("POST", REDIRECT_URI));
    assert_eq!(response.param("state"), Some(flow.state.as_str()));
    assert_eq!(response.param("iss"), Some(op.issuer()));
    let code = response.param("code").expect("a code in the form_post");
    // The client sent no prompt at all; offline_access was granted anyway (below).
    let sent = op.authorization_requests().await;
    assert_eq!(sent.len(), 1);
    assert!(sent[0].get("prompt").is_none(), "{sent:?}");

    let (status, tokens) = redeem(&metadata, code, &flow.verifier, REDIRECT_URI).await;
    assert_eq!(status, 200, "{tokens}");
    let scopes: Vec<&str> = tokens["scope"].as_str().unwrap().split(' ').collect();
    assert!(scopes.contains(&"offline_access") && scopes.contains(&"openid"), "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_u64().unwrap() > 0);
    assert!(tokens["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    let refresh_1 = tokens["refresh_token"].as_str().expect("a refresh token").to_string();
    let (header, claims) = jwt_parts(tokens["id_token"].as_str().expect("an id_token"));
    assert_eq!(header["alg"], "RS256");
    let jwks: Value =
        harness::client().get(metadata["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    assert!(jwks["keys"][0].get("alg").is_none(), "JWKS entries without alg, like Entra's");
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["nonce"], flow.nonce.as_str());
    assert_eq!(claims["sub"], "user-1");
    assert_eq!(claims["tid"], "11111111-1111-4111-8111-111111111111");
    assert_eq!(claims["oid"], "22222222-2222-4222-8222-222222222222");

    // Rotation: a refresh returns a new refresh token ...
    let (status, refreshed) = refresh(&metadata, &refresh_1).await;
    assert_eq!(status, 200, "{refreshed}");
    let refresh_2 = refreshed["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh_2, refresh_1);
    assert_ne!(refreshed["access_token"], tokens["access_token"]);
    // ... and presenting the old one again revokes the grant, so the newest fails too.
    let (status, reuse) = refresh(&metadata, &refresh_1).await;
    assert_eq!((status, reuse["error"].as_str()), (400, Some("invalid_grant")), "{reuse}");
    let (status, revoked) = refresh(&metadata, &refresh_2).await;
    assert_eq!((status, revoked["error"].as_str()), (400, Some("invalid_grant")), "{revoked}");

    let counts = op.token_requests().await["counts"].clone();
    assert_eq!(counts, json!({ "authorization_code": 1, "refresh_token": 3 }));
    assert_eq!(op.token_request_count("refresh_token").await, 3);
}

#[tokio::test]
async fn pkce_is_required_and_verified_and_a_replayed_code_revokes_the_grant() {
    let op = provider(secret_post_client(REDIRECT_URI));
    let metadata = discover(&op).await;
    let flow = Flow::new();
    let agent = HttpAgent::new();

    let without_pkce = flow.url(&metadata, REDIRECT_URI).replace("code_challenge", "no_challenge");
    let response = agent.authorize(&without_pkce).await;
    assert_eq!(response.param("error"), Some("invalid_request"), "{response:?}");
    assert!(response.param("error_description").unwrap().contains("PKCE"), "{response:?}");

    let response = agent.authorize(&flow.url(&metadata, REDIRECT_URI)).await;
    let code = response.param("code").unwrap();
    let (status, wrong) = redeem(&metadata, code, &random(), REDIRECT_URI).await;
    assert_eq!((status, wrong["error"].as_str()), (400, Some("invalid_grant")), "{wrong}");
    // A wrong verifier does not use the code up; the right one still redeems it.
    let (status, right) = redeem(&metadata, code, &flow.verifier, REDIRECT_URI).await;
    assert_eq!(status, 200, "{right}");
    // A code is single use, and replaying it revokes the grant it gave (its refresh token fails).
    let (status, replay) = redeem(&metadata, code, &flow.verifier, REDIRECT_URI).await;
    assert_eq!((status, replay["error"].as_str()), (400, Some("invalid_grant")), "{replay}");
    let (status, revoked) = refresh(&metadata, right["refresh_token"].as_str().unwrap()).await;
    assert_eq!((status, revoked["error"].as_str()), (400, Some("invalid_grant")), "{revoked}");
}

#[tokio::test]
async fn test_endpoints_deny_rotate_keys_and_basic_auth() {
    let client = json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [REDIRECT_URI],
        "token_endpoint_auth_method": "client_secret_basic",
    });
    let op = OidcProvider::start(json!({ "clients": [client], "issuer_path": "/tenant-a/v2.0" }));
    assert!(op.issuer().ends_with("/tenant-a/v2.0"));
    let metadata = discover(&op).await;
    assert!(metadata["token_endpoint"].as_str().unwrap().starts_with(op.issuer()));
    let agent = HttpAgent::new();

    // deny-next: the next authorization ends with access_denied and HTML in error_description.
    op.deny_next().await;
    let flow = Flow::new();
    let denied = agent.authorize(&flow.url(&metadata, REDIRECT_URI)).await;
    assert_eq!(denied.param("error"), Some("access_denied"), "{denied:?}");
    assert!(denied.param("error_description").unwrap().contains("<script>alert(1)</script>"));
    assert_eq!(denied.param("state"), Some(flow.state.as_str()));

    // rotate-keys: id_tokens are signed with the new kid, which the JWKS now lists too.
    let old_kid = {
        let jwks: Value =
            harness::client().get(metadata["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
        jwks["keys"][0]["kid"].as_str().unwrap().to_string()
    };
    let new_kid = op.rotate_keys().await;
    assert_ne!(new_kid, old_kid);
    let flow = Flow::new();
    let response = agent.authorize(&flow.url(&metadata, REDIRECT_URI)).await;
    let code = response.param("code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", &flow.verifier),
    ];
    let reply = harness::client()
        .post(metadata["token_endpoint"].as_str().unwrap())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let tokens: Value = reply.json().await.unwrap();
    let (header, claims) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!(header["kid"], new_kid.as_str());
    assert_eq!(claims["iss"], op.issuer());
    let jwks: Value =
        harness::client().get(metadata["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()]);
    let requests = op.token_requests().await;
    assert_eq!(requests["requests"][0]["client_auth"], "client_secret_basic", "{requests}");
}

#[tokio::test]
async fn knobs_iss_parameter_response_modes_stock_offline_access_and_login_hint() {
    let second = json!({ "sub": "user-2", "claims": { "tid": "tenant-b", "oid": "oid-b", "preferred_username": "b@example.test" } });
    let first = json!({ "sub": "user-1", "claims": { "tid": "tenant-a", "oid": "oid-a", "preferred_username": "a@example.test" } });
    let op = OidcProvider::start(json!({
        "clients": [secret_post_client(REDIRECT_URI)],
        "authorization_response_iss_parameter_supported": false,
        "response_modes_supported": ["query"],
        "offline_access_without_prompt_consent": false,
        "users": [first, second],
        "ttl": { "access_token": 120 },
    }));
    let metadata = discover(&op).await;
    assert!(metadata.get("authorization_response_iss_parameter_supported").is_none(), "{metadata}");
    assert_eq!(metadata["response_modes_supported"], json!(["query"]));
    let agent = HttpAgent::new();

    // form_post refused when not listed.
    let flow = Flow::new();
    let refused = agent.get(&flow.url(&metadata, REDIRECT_URI)).await;
    assert_eq!(refused.status(), 400);

    // query mode, no `iss`; login_hint picks the user; without prompt=consent offline_access is
    // dropped as stock node-oidc-provider does, so there is no refresh token.
    let url = flow.url(&metadata, REDIRECT_URI).replace("response_mode=form_post", "response_mode=query");
    let response = agent.authorize(&format!("{url}&login_hint=b%40example.test")).await;
    assert_eq!((response.method.as_str(), response.target.as_str()), ("GET", REDIRECT_URI));
    assert!(response.param("iss").is_none(), "{response:?}");
    let (status, tokens) = redeem(&metadata, response.param("code").unwrap(), &flow.verifier, REDIRECT_URI).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["scope"], "openid");
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    assert_eq!(tokens["expires_in"], 120);
    let (_, claims) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!((claims["sub"].as_str(), claims["tid"].as_str()), (Some("user-2"), Some("tenant-b")));
}

/// A signed-in client without product code: the provider (client_secret_post), its metadata and
/// the refresh token from the code redemption.
async fn signed_in() -> (OidcProvider, Value, String) {
    let op = provider(secret_post_client(REDIRECT_URI));
    let metadata = discover(&op).await;
    let flow = Flow::new();
    let response = HttpAgent::new().authorize(&flow.url(&metadata, REDIRECT_URI)).await;
    let (status, tokens) = redeem(&metadata, response.param("code").unwrap(), &flow.verifier, REDIRECT_URI).await;
    assert_eq!(status, 200, "{tokens}");
    let refresh_token = tokens["refresh_token"].as_str().expect("a refresh token").to_string();
    (op, metadata, refresh_token)
}

/// A refresh with a client of its own (so a test can set its timeout); the raw response.
async fn refresh_with(
    client: &reqwest::Client,
    metadata: &Value,
    refresh_token: &str,
) -> reqwest::Result<reqwest::Response> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    client.post(metadata["token_endpoint"].as_str().unwrap()).form(&form).send().await
}

/// How the peer logs a refresh token: the first 16 hex digits of its sha256.
fn hash16(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()[..16].to_string()
}

/// Polls the token-request log until entry `index` has this fault (at most 5 s).
async fn wait_for_fault(op: &OidcProvider, index: usize, fault: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = op.token_request_log().await;
        if log.get(index).is_some_and(|r| r["fault"] == fault) {
            return log;
        }
        assert!(std::time::Instant::now() < deadline, "no {fault:?} at {index}: {log:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fault_503_with_retry_after_is_answered_without_the_provider_and_the_refresh_token_survives() {
    // Queued before the sign-in: the code redemption is not a refresh, so it leaves the fault alone.
    let op = provider(secret_post_client(REDIRECT_URI));
    op.token_faults(vec![
        json!({ "status": 503, "retry_after": "2" }),
        json!({ "status": 502, "body": { "message": "bad gateway" } }),
    ])
    .await;
    let metadata = discover(&op).await;
    let flow = Flow::new();
    let response = HttpAgent::new().authorize(&flow.url(&metadata, REDIRECT_URI)).await;
    let (status, tokens) = redeem(&metadata, response.param("code").unwrap(), &flow.verifier, REDIRECT_URI).await;
    assert_eq!(status, 200, "{tokens}");
    let refresh_token = tokens["refresh_token"].as_str().unwrap();

    let reply = refresh_with(&harness::client(), &metadata, refresh_token).await.unwrap();
    assert_eq!(reply.status(), 503);
    assert_eq!(reply.headers()["retry-after"], "2");
    assert!(reply.headers().get("content-type").is_none());
    assert_eq!(reply.text().await.unwrap(), "");
    let reply = refresh_with(&harness::client(), &metadata, refresh_token).await.unwrap();
    assert_eq!(reply.status(), 502);
    assert!(reply.headers().get("retry-after").is_none());
    assert_eq!(reply.json::<Value>().await.unwrap(), json!({ "message": "bad gateway" }));
    // Neither reached the provider: the refresh token was not used up.
    let (status, refreshed) = refresh(&metadata, refresh_token).await;
    assert_eq!(status, 200, "{refreshed}");

    let log = op.token_request_log().await;
    let summary: Vec<(&str, &Value, &Value, &Value)> =
        log.iter().map(|r| (r["grant_type"].as_str().unwrap(), &r["fault"], &r["status"], &r["ok"])).collect();
    assert_eq!(
        summary,
        [
            ("authorization_code", &Value::Null, &json!(200), &json!(true)),
            ("refresh_token", &json!("status:503"), &json!(503), &json!(false)),
            ("refresh_token", &json!("status:502"), &json!(502), &json!(false)),
            ("refresh_token", &Value::Null, &json!(200), &json!(true)),
        ]
    );
    assert_eq!(log[1]["client_id"], CLIENT_ID);
    assert_eq!(log[1]["client_auth"], "client_secret_post");
    assert_eq!(op.token_request_count("refresh_token").await, 3);
}

#[tokio::test]
async fn invalid_grant_shorthand_fault_and_clearing_the_queue() {
    let (op, metadata, refresh_token) = signed_in().await;
    let description = "AADSTS50196: The server terminated an operation because it encountered a client request loop.";
    op.token_faults(vec![
        json!({ "error": "invalid_grant", "error_description": description, "error_codes": [50196] }),
    ])
    .await;
    let (status, body) = refresh(&metadata, &refresh_token).await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({ "error": "invalid_grant", "error_description": description, "error_codes": [50196] }));
    // A status of its own, and nothing but the listed grant types is affected.
    op.token_faults(vec![
        json!({ "error": "temporarily_unavailable", "status": 503, "retry_after": 1, "grant_types": ["refresh_token"] }),
    ])
    .await;
    let reply = refresh_with(&harness::client(), &metadata, &refresh_token).await.unwrap();
    assert_eq!((reply.status().as_u16(), reply.headers()["retry-after"].to_str().unwrap()), (503, "1"));
    assert_eq!(reply.json::<Value>().await.unwrap(), json!({ "error": "temporarily_unavailable" }));
    // Cleared faults are not applied; the refresh token was never used, so it still works.
    op.token_faults(vec![json!({ "status": 500 }), json!({ "status": 500 })]).await;
    op.clear_token_faults().await;
    let (status, refreshed) = refresh(&metadata, &refresh_token).await;
    assert_eq!(status, 200, "{refreshed}");

    let log = op.token_request_log().await;
    let faults: Vec<&Value> = log.iter().map(|r| &r["fault"]).collect();
    assert_eq!(
        faults,
        [&Value::Null, &json!("error:invalid_grant"), &json!("error:temporarily_unavailable"), &Value::Null]
    );
    assert_eq!(log[1]["error"], "invalid_grant");
    assert_eq!(log[1]["status"], 400);
    assert_eq!(log[2]["error"], "temporarily_unavailable");
}

#[tokio::test]
async fn a_client_gone_during_a_delay_or_hang_is_abandoned_and_the_refresh_token_is_not_consumed() {
    let (op, metadata, refresh_token) = signed_in().await;
    let impatient = harness::plain_client(reqwest::Client::builder().timeout(std::time::Duration::from_millis(300)));

    op.token_faults(vec![json!({ "delay_ms": 1000 })]).await;
    let error = refresh_with(&impatient, &metadata, &refresh_token).await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    // Recorded at once, in flight, and as abandoned once the delay is over.
    let log = op.token_request_log().await;
    assert_eq!((&log[1]["fault"], &log[1]["status"]), (&json!("delay"), &Value::Null), "{log:#?}");
    let log = wait_for_fault(&op, 1, "abandoned").await;
    assert_eq!((&log[1]["status"], &log[1]["ok"]), (&Value::Null, &json!(false)), "{log:#?}");
    assert_eq!(log[1]["presented_refresh_token"], hash16(&refresh_token));
    assert_eq!(log[1]["issued_refresh_token"], Value::Null);

    op.token_faults(vec![json!({ "hang": true })]).await;
    let error = refresh_with(&impatient, &metadata, &refresh_token).await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    wait_for_fault(&op, 2, "abandoned").await;

    // The provider saw neither: the same refresh token still refreshes (a consumed one would get
    // invalid_grant). A delay with a patient client goes through to the provider.
    op.token_faults(vec![json!({ "delay_ms": 500 })]).await;
    let started = std::time::Instant::now();
    let (status, refreshed) = refresh(&metadata, &refresh_token).await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
    let log = op.token_request_log().await;
    assert_eq!((&log[3]["fault"], &log[3]["status"], &log[3]["ok"]), (&json!("delay"), &json!(200), &json!(true)));
    assert_eq!(op.token_request_count("refresh_token").await, 3);
}

#[tokio::test]
async fn omit_refresh_token_keeps_the_presented_one_valid_and_expires_in_can_be_dropped_or_a_string() {
    let (op, metadata, refresh_1) = signed_in().await;
    op.token_faults(vec![json!({ "omit_refresh_token": true })]).await;
    let (status, refreshed) = refresh(&metadata, &refresh_1).await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed.get("refresh_token").is_none(), "{refreshed}");
    assert!(refreshed["access_token"].is_string() && refreshed["expires_in"].is_u64(), "{refreshed}");
    // Not rotated, so not consumed: the same refresh token works again, and rotates as configured.
    let (status, refreshed) = refresh(&metadata, &refresh_1).await;
    assert_eq!(status, 200, "{refreshed}");
    let refresh_2 = refreshed["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh_2, refresh_1);

    op.token_faults(vec![json!({ "omit_expires_in": true }), json!({ "expires_in_as_string": true })]).await;
    let (status, refreshed) = refresh(&metadata, &refresh_2).await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed.get("expires_in").is_none(), "{refreshed}");
    let refresh_3 = refreshed["refresh_token"].as_str().unwrap().to_string();
    let (status, refreshed) = refresh(&metadata, &refresh_3).await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed["expires_in"].as_str().is_some_and(|s| s.parse::<u64>().unwrap() > 0), "{refreshed}");
    assert!(refreshed["refresh_token"].is_string(), "{refreshed}");
    // Rotation went on: the refresh token used before is consumed.
    let (status, reuse) = refresh(&metadata, &refresh_2).await;
    assert_eq!((status, reuse["error"].as_str()), (400, Some("invalid_grant")), "{reuse}");

    let log = op.token_request_log().await;
    assert_eq!(log[1]["fault"], "omit_refresh_token");
    assert_eq!(log[1]["issued_refresh_token"], Value::Null);
    assert_eq!((&log[3]["fault"], &log[4]["fault"]), (&json!("omit_expires_in"), &json!("expires_in_as_string")));
}

#[tokio::test]
async fn a_reuse_grace_period_lets_a_just_rotated_token_stand_for_its_unused_successor_once() {
    let (op, metadata, first) = signed_in().await;
    op.reuse_grace(60).await;
    let (status, rotated) = refresh(&metadata, &first).await;
    assert_eq!(status, 200, "{rotated}");
    let lost = rotated["refresh_token"].as_str().unwrap().to_owned();
    // The client never stored `lost` (killed before its write) and presents `first` again.
    let (status, again) = refresh(&metadata, &first).await;
    assert_eq!(status, 200, "within the grace: {again}");
    let kept = again["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(kept, lost);
    let (status, onward) = refresh(&metadata, &kept).await;
    assert_eq!(status, 200, "the chain goes on from the token given within the grace: {onward}");
    // Its successor is spent now: a third presentation is reuse, and revokes the grant.
    let (status, reuse) = refresh(&metadata, &first).await;
    assert_eq!((status, reuse["error"].as_str()), (400, Some("invalid_grant")), "{reuse}");
    let newest = onward["refresh_token"].as_str().unwrap();
    let (status, revoked) = refresh(&metadata, newest).await;
    assert_eq!((status, revoked["error"].as_str()), (400, Some("invalid_grant")), "{revoked}");
    let log = op.token_request_log().await;
    let graced: Vec<bool> = log.iter().map(|c| c["reused_within_grace"] == true).collect();
    assert_eq!(graced, [false, false, true, false, false, false], "{log:?}");

    // Strict again (0): the first reuse revokes.
    let (op, metadata, first) = signed_in().await;
    op.reuse_grace(0).await;
    assert_eq!(refresh(&metadata, &first).await.0, 200);
    let (status, reuse) = refresh(&metadata, &first).await;
    assert_eq!((status, reuse["error"].as_str()), (400, Some("invalid_grant")), "{reuse}");
}

#[tokio::test]
async fn revoke_grants_makes_the_next_refresh_a_genuine_invalid_grant() {
    let (op, metadata, refresh_token) = signed_in().await;
    let (status, refreshed) = refresh(&metadata, &refresh_token).await;
    assert_eq!(status, 200, "{refreshed}");
    let newest = refreshed["refresh_token"].as_str().unwrap();
    let access_token = refreshed["access_token"].as_str().unwrap();

    assert_eq!(op.revoke_grants().await, 1);
    let (status, revoked) = refresh(&metadata, newest).await;
    assert_eq!((status, revoked["error"].as_str()), (400, Some("invalid_grant")), "{revoked}");
    // The access token is gone too.
    let userinfo = harness::client()
        .get(metadata["userinfo_endpoint"].as_str().unwrap())
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), 401);
    assert_eq!(op.revoke_grants().await, 0);

    let log = op.token_request_log().await;
    let last = log.last().unwrap();
    assert_eq!((&last["fault"], &last["error"], &last["status"]), (&Value::Null, &json!("invalid_grant"), &json!(400)));
}

#[tokio::test]
async fn the_log_chains_refresh_token_hashes_and_counts_every_token_endpoint_call() {
    let (op, metadata, refresh_1) = signed_in().await;
    let (status, refreshed) = refresh(&metadata, &refresh_1).await;
    assert_eq!(status, 200, "{refreshed}");
    let refresh_2 = refreshed["refresh_token"].as_str().unwrap().to_string();
    op.token_faults(vec![json!({ "status": 503 }), json!({ "error": "invalid_grant" })]).await;
    assert_eq!(refresh_with(&harness::client(), &metadata, &refresh_2).await.unwrap().status(), 503);
    assert_eq!(refresh(&metadata, &refresh_2).await.0, 400);
    let (status, refreshed) = refresh(&metadata, &refresh_2).await;
    assert_eq!(status, 200, "{refreshed}");
    let refresh_3 = refreshed["refresh_token"].as_str().unwrap().to_string();
    let (status, refreshed) = refresh(&metadata, &refresh_3).await;
    assert_eq!(status, 200, "{refreshed}");

    let log = op.token_request_log().await;
    assert_eq!(log.len(), 6, "{log:#?}");
    assert_eq!(log[0]["presented_refresh_token"], Value::Null);
    assert_eq!(log[0]["issued_refresh_token"], hash16(&refresh_1));
    assert_eq!(log[1]["presented_refresh_token"], hash16(&refresh_1));
    assert_eq!(log[1]["issued_refresh_token"], hash16(&refresh_2));
    // The faulted calls presented the same token and were issued none.
    for faulted in &log[2..4] {
        assert_eq!(faulted["presented_refresh_token"], hash16(&refresh_2));
        assert_eq!(faulted["issued_refresh_token"], Value::Null);
    }
    // Each successful refresh presents what the one before it issued.
    let ok: Vec<&Value> = log.iter().filter(|r| r["ok"] == true).collect();
    assert_eq!(ok.len(), 4);
    for pair in ok.windows(2) {
        assert_eq!(pair[1]["presented_refresh_token"], pair[0]["issued_refresh_token"], "{log:#?}");
    }
    assert_eq!(ok[3]["issued_refresh_token"], hash16(refreshed["refresh_token"].as_str().unwrap()));
    let times: Vec<u64> = log.iter().map(|r| r["at"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|t| t[0] <= t[1]), "{times:?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(now - times[0] < 60_000, "{times:?}");

    let requests = op.token_requests().await;
    assert_eq!(requests["counts"], json!({ "authorization_code": 1, "refresh_token": 5 }));
}

/// The app side of the browser test, on 127.0.0.1 but browsed as `app.localhost`: `/api/start` sets
/// two cookies (SameSite=None and SameSite=Lax) and redirects to the authorization URL held in the
/// returned cell; `/api/callback` shows the form_post fields and the cookies that came with it.
async fn serve_app() -> (u16, Arc<Mutex<String>>) {
    use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};

    let authorization_url = Arc::new(Mutex::new(String::new()));
    let cell = authorization_url.clone();
    let start = move || async move {
        let mut response = StatusCode::SEE_OTHER.into_response();
        let headers = response.headers_mut();
        let none = "binding_none=n1; Path=/api/callback; HttpOnly; Secure; SameSite=None";
        headers.append(header::SET_COOKIE, HeaderValue::from_static(none));
        let lax = "binding_lax=l1; Path=/api/callback; HttpOnly; Secure; SameSite=Lax";
        headers.append(header::SET_COOKIE, HeaderValue::from_static(lax));
        headers.insert(header::LOCATION, cell.lock().unwrap().parse().unwrap());
        response
    };
    let callback = |headers: HeaderMap, axum::Form(fields): axum::Form<HashMap<String, String>>| async move {
        let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let mut lines: Vec<String> = fields.iter().map(|(k, v)| format!("field {k}: {v}")).collect();
        lines.sort();
        lines.push(format!("cookies: {cookies}"));
        let escape = |l: &String| l.replace('&', "&amp;").replace('<', "&lt;");
        axum::response::Html(lines.iter().map(|l| format!("<p>{}</p>", escape(l))).collect::<String>())
    };
    let app = axum::Router::new().route("/api/start", get(start)).route("/api/callback", post(callback));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, authorization_url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_goes_through_the_interactive_pages_and_posts_cross_site_with_the_samesite_none_cookie() {
    // The app listens first so the redirect URI (with its port) can be registered.
    let (app_port, authorization_url) = serve_app().await;
    let redirect_uri = format!("http://app.localhost:{app_port}/api/callback");
    let op = OidcProvider::start(json!({ "clients": [secret_post_client(&redirect_uri)], "interactive": true }));
    let metadata = discover(&op).await;
    let flow = Flow::new();
    *authorization_url.lock().unwrap() = flow.url(&metadata, &redirect_uri);

    let start = format!("http://app.localhost:{app_port}/api/start");
    let result = tokio::task::spawn_blocking(move || run_browser(&start, r"^http://app\.localhost:\d+/api/callback$"))
        .await
        .unwrap();
    eprintln!("Chromium round trip: {} ms", result.elapsed_ms);

    let fields: BTreeMap<&str, &str> =
        result.text.lines().filter_map(|l| l.strip_prefix("field ")?.split_once(": ")).collect();
    assert_eq!(fields.get("state"), Some(&flow.state.as_str()), "{}", result.text);
    assert_eq!(fields.get("iss"), Some(&op.issuer()), "{}", result.text);
    let cookies = result.text.lines().find_map(|l| l.strip_prefix("cookies: ")).unwrap_or_default();
    // Cross-site POST: the SameSite=None cookie arrives, the Lax one does not (so the sites differ).
    assert!(cookies.contains("binding_none=n1"), "{}", result.text);
    assert!(!cookies.contains("binding_lax"), "{}", result.text);

    // The browser went through the provider's login and consent pages, then POSTed to the app.
    let pages: Vec<String> =
        result.navigations.iter().map(|n| format!("{} {} {}", n.method, n.status, n.url)).collect();
    assert!(pages.iter().filter(|p| p.starts_with("POST ") && p.contains("/interaction/")).count() >= 2, "{pages:#?}");
    assert!(pages.last().unwrap().starts_with(&format!("POST 200 {redirect_uri}")), "{pages:#?}");
    assert!(result.cookies.iter().any(|c| c.name == "binding_none" && c.same_site == "None" && c.secure));

    // The code from the browser's form_post redeems with the verifier.
    let (status, tokens) = redeem(&metadata, fields["code"], &flow.verifier, &redirect_uri).await;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["refresh_token"].is_string());
}
