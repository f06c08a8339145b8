//! The connect flow end to end against a real OpenID Connect server (node-oidc-provider,
//! configured like Entra: PKCE required, form_post, RFC 9207 iss, rotating refresh tokens), over
//! plain HTTP with a cookie-keeping agent, plus the attack battery: each attack must end on a
//! clear error page with nothing stored.

use crate::harness;
use std::collections::BTreeMap;

use harness::oidc::{AuthorizationResponse, HttpAgent, OidcProvider};
use harness::{free_port, Server, TEST_FUNCTION_KEY};
use serde_json::{json, Value};

const CLIENT_ID: &str = "bridge-client";
const CLIENT_SECRET: &str = "bridge-client-secret-0123456789abcdef";
const TENANT: &str = "8f2c1a4e-1b2c-4d5e-9f00-0123456789ab";
const OID: &str = "2d4e6f80-aaaa-bbbb-cccc-0123456789ab";

struct Setup {
    provider: OidcProvider,
    app: Server,
    agent: HttpAgent,
}

fn provider_config(app_port: u16) -> Value {
    json!({
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [format!("http://127.0.0.1:{app_port}/api/callback")],
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }],
        "users": [
            { "sub": "admin-sub", "claims": { "tid": TENANT, "oid": OID, "preferred_username": "admin@contoso.example", "name": "Ada Admin" } },
            { "sub": "other-sub", "claims": { "tid": "11111111-2222-3333-4444-555555555555", "oid": "99999999-aaaa-bbbb-cccc-dddddddddddd", "preferred_username": "mallory@fabrikam.example" } }
        ]
    })
}

fn start(extra: &[(&str, &str)]) -> Setup {
    let app_port = free_port();
    let provider = OidcProvider::start(provider_config(app_port));
    let redirect = format!("http://127.0.0.1:{app_port}/api/callback");
    let mut settings: Vec<(&str, &str)> = vec![
        ("OAUTH_PROVIDER", "oidc"),
        ("OAUTH_AUTHORITY", provider.issuer()),
        ("OAUTH_CLIENT_ID", CLIENT_ID),
        ("OAUTH_CLIENT_SECRET", CLIENT_SECRET),
        ("OAUTH_REDIRECT_URI", &redirect),
        ("OAUTH_SCOPES", "profile"),
        ("FUNCTION_KEY", TEST_FUNCTION_KEY),
    ];
    settings.extend_from_slice(extra);
    let app = Server::start(&["serve", "--standalone", "--port", &app_port.to_string()], app_port, &settings);
    Setup { provider, app, agent: HttpAgent::new() }
}

impl Setup {
    /// Opens the authorize link; returns the provider URL it redirects to.
    async fn begin(&self, query: &str) -> String {
        let response = self.agent.get(&self.app.url(&format!("/api/authorize?code={TEST_FUNCTION_KEY}{query}"))).await;
        assert_eq!(response.status(), 302, "{}", self.app.log());
        response.headers()["location"].to_str().unwrap().to_owned()
    }

    async fn sign_in(&self, query: &str) -> AuthorizationResponse {
        self.sign_in_with(&self.agent, query).await
    }

    /// A sign-in in another browser (its own cookies, so no provider session carries over).
    async fn sign_in_with(&self, agent: &HttpAgent, query: &str) -> AuthorizationResponse {
        let response = agent.get(&self.app.url(&format!("/api/authorize?code={TEST_FUNCTION_KEY}{query}"))).await;
        assert_eq!(response.status(), 302, "{}", self.app.log());
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let response = agent.authorize(&location).await;
        assert_eq!(response.method, "POST", "form_post is used when the server supports it");
        response
    }

    async fn deliver(&self, response: &AuthorizationResponse) -> reqwest::Response {
        self.agent.post_form(&response.target, &response.params).await
    }

    async fn status(&self) -> Value {
        let response = self
            .agent
            .client
            .get(self.app.url("/api/status"))
            .header("x-functions-key", TEST_FUNCTION_KEY)
            .send()
            .await;
        response.unwrap().json().await.unwrap()
    }

    async fn connection_count(&self) -> usize {
        self.status().await["connections"].as_array().unwrap().len()
    }
}

async fn expect_error_page(response: reqwest::Response, status: u16, phrase: &str) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    assert!(response.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    let body = response.text().await.unwrap();
    assert!(body.contains(phrase), "expected {phrase:?} in:\n{body}");
    body
}

#[tokio::test]
async fn an_admin_connects_and_sees_who_is_connected() {
    let setup = start(&[]);
    let location = setup.begin("&connection=prod&login_hint=admin@contoso.example").await;
    let request: BTreeMap<String, String> = url::Url::parse(&location).unwrap().query_pairs().into_owned().collect();
    assert_eq!(request["response_type"], "code");
    assert_eq!(request["code_challenge_method"], "S256");
    assert_eq!(request["response_mode"], "form_post");
    assert_eq!(request["scope"], "openid offline_access profile");
    assert!(request["state"].len() >= 43 && request["nonce"].len() >= 43);
    assert!(!request.contains_key("prompt"), "prompt=consent is not sent by default");
    let response = setup.agent.authorize(&location).await;
    assert!(response.param("iss").is_some());
    let binding = setup.agent.cookie("127.0.0.1", &cookie_name(&request["state"])).expect("the binding cookie is set");
    // Another sign-in started in the same browser keeps its cookie when this one completes.
    let other_location = setup.begin("&connection=other").await;
    let other_state: BTreeMap<String, String> =
        url::Url::parse(&other_location).unwrap().query_pairs().into_owned().collect();
    let delivered = setup.deliver(&response).await;
    assert!(setup.agent.cookie("127.0.0.1", &cookie_name(&request["state"])).is_none(), "the cookie is cleared");
    assert!(setup.agent.cookie("127.0.0.1", &cookie_name(&other_state["state"])).is_some(), "only this flow's");
    assert_eq!(delivered.status(), 303);
    let result_location = delivered.headers()["location"].to_str().unwrap().to_owned();
    assert!(result_location.starts_with("/api/callback?result="));
    assert!(!result_location.contains(response.param("code").unwrap()));

    let page = setup.agent.get(&setup.app.url(&result_location)).await;
    assert_eq!(page.status(), 200);
    let text = page.text().await.unwrap();
    for expected in ["Connected", "admin@contoso.example", TENANT, "offline_access", "Next sync"] {
        assert!(text.contains(expected), "{expected} missing from the result page:\n{text}");
    }
    // Single view.
    assert_eq!(setup.agent.get(&setup.app.url(&result_location)).await.status(), 404);

    let status = setup.status().await;
    let connection = &status["connections"][0];
    assert_eq!(connection["id"], "prod");
    assert_eq!(connection["state"], "active");
    assert_eq!(connection["tenant"], TENANT);
    assert!(connection["access_token_expires_at"].is_string());
    assert_eq!(setup.provider.token_request_count("authorization_code").await, 1);

    // Nothing secret reached the bridge's log: not the code, state, nonce, verifier challenge,
    // browser-binding cookie or client secret.
    let log = setup.app.log();
    assert!(log.contains("connection consented and stored"), "{log}");
    let secrets = vec![
        response.param("code").unwrap().to_owned(),
        request["state"].clone(),
        request["nonce"].clone(),
        request["code_challenge"].clone(),
        CLIENT_SECRET.to_owned(),
        binding,
    ];
    for secret in secrets {
        assert!(!log.contains(&secret), "a secret ({}…) is in the log", &secret[..6]);
    }
}

fn cookie_name(state: &str) -> String {
    use sha2::Digest;
    format!("tcb_flow_{}", &hex::encode(sha2::Sha256::digest(state.as_bytes()))[..16])
}

#[tokio::test]
async fn state_and_cookie_attacks_end_on_error_pages_with_nothing_stored() {
    let setup = start(&[]);
    let response = setup.sign_in("").await;
    let altered = |name: &str, value: Option<String>| {
        let mut params = response.params.clone();
        match value {
            Some(value) => params.insert(name.to_owned(), value),
            None => params.remove(name),
        };
        AuthorizationResponse { params, ..response.clone() }
    };

    // Missing state, mismatched state.
    expect_error_page(setup.deliver(&altered("state", None)).await, 400, "no state").await;
    expect_error_page(setup.deliver(&altered("state", Some("A".repeat(43)))).await, 400, "unknown").await;

    // Missing cookie: another browser (a fresh agent) delivering the right state.
    let stranger = HttpAgent::new();
    let refused = stranger.post_form(&response.target, &response.params).await;
    expect_error_page(refused, 403, "did not come back to the browser that started it").await;

    // Oversized and repeated parameters.
    let huge = altered("error_description", Some("x".repeat(5000)));
    expect_error_page(setup.deliver(&huge).await, 400, "longer than").await;
    let mut body = url::form_urlencoded::Serializer::new(String::new());
    body.extend_pairs(&response.params).append_pair("state", response.param("state").unwrap());
    let repeated = setup
        .agent
        .client
        .post(&response.target)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.finish())
        .send()
        .await
        .unwrap();
    expect_error_page(repeated, 400, "more than once").await;

    // The genuine delivery still works after all that (nothing consumed it) ...
    assert_eq!(setup.deliver(&response).await.status(), 303);
    // ... and exactly once: replaying the same state (and code) fails.
    expect_error_page(setup.deliver(&response).await, 400, "already completed").await;
    assert_eq!(setup.connection_count().await, 1);
    assert_eq!(
        setup.provider.token_request_count("authorization_code").await,
        1,
        "the replay never reached the token endpoint"
    );
}

#[tokio::test]
async fn a_cookie_from_another_flow_does_not_bind() {
    let setup = start(&[]);
    let first = setup.sign_in("&connection=one").await;
    // A second agent starts its own flow, then receives the first flow's response.
    let other = HttpAgent::new();
    let location = other.get(&setup.app.url(&format!("/api/authorize?code={TEST_FUNCTION_KEY}&connection=two"))).await;
    assert_eq!(location.status(), 302);
    let refused = other.post_form(&first.target, &first.params).await;
    expect_error_page(refused, 403, "did not come back").await;
    assert_eq!(setup.connection_count().await, 0);
}

#[tokio::test]
async fn a_wrong_iss_is_refused_before_the_code_is_redeemed() {
    let setup = start(&[]);
    let mut response = setup.sign_in("").await;
    response.params.insert("iss".into(), "https://evil.example.com".into());
    expect_error_page(setup.deliver(&response).await, 400, "different authorization server").await;
    assert_eq!(setup.provider.token_request_count("authorization_code").await, 0);
    assert_eq!(setup.connection_count().await, 0);
}

#[tokio::test]
async fn an_error_from_the_server_is_shown_escaped() {
    let setup = start(&[]);
    setup.provider.deny_next_with("access_denied", "<script>alert(1)</script> the user said no").await;
    let response = setup.sign_in("").await;
    assert_eq!(response.param("error"), Some("access_denied"));
    let body = expect_error_page(setup.deliver(&response).await, 400, "cancelled").await;
    assert!(!body.contains("<script>"), "{body}");
    assert!(body.contains("&lt;script&gt;"));
    assert_eq!(setup.connection_count().await, 0);
}

#[tokio::test]
async fn a_tenant_outside_allowed_tenants_cannot_connect() {
    let setup = start(&[("ALLOWED_TENANTS", "00000000-0000-0000-0000-000000000000")]);
    let response = setup.sign_in("").await;
    expect_error_page(setup.deliver(&response).await, 403, "may not connect").await;
    assert_eq!(setup.connection_count().await, 0);
}

#[tokio::test]
async fn reconsent_keeps_the_connection_and_refuses_a_silent_account_switch() {
    let setup = start(&[]);
    let first = setup.sign_in("&connection=main&login_hint=admin-sub").await;
    assert_eq!(setup.deliver(&first).await.status(), 303);
    // The same account again: fine, same id.
    let again = setup.sign_in("&connection=main&login_hint=admin-sub").await;
    assert_eq!(setup.deliver(&again).await.status(), 303);
    // Another account, in another browser: refused, the connection keeps its account.
    let mallory = HttpAgent::new();
    let other = setup.sign_in_with(&mallory, "&connection=main&login_hint=other-sub").await;
    expect_error_page(mallory.post_form(&other.target, &other.params).await, 409, "replace=true").await;
    let status = setup.status().await;
    assert_eq!(status["connections"].as_array().unwrap().len(), 1);
    assert_eq!(status["connections"][0]["tenant"], TENANT);
    // With replace=true it switches, keeping the connection id.
    let admin2 = HttpAgent::new();
    let replaced = setup.sign_in_with(&admin2, "&connection=main&login_hint=other-sub&replace=true").await;
    assert_eq!(admin2.post_form(&replaced.target, &replaced.params).await.status(), 303);
    let status = setup.status().await;
    assert_eq!(status["connections"].as_array().unwrap().len(), 1);
    assert_eq!(status["connections"][0]["id"], "main");
    assert_eq!(status["connections"][0]["tenant"], "11111111-2222-3333-4444-555555555555");
}

#[tokio::test]
async fn bad_authorize_links_are_refused_clearly() {
    let setup = start(&[]);
    for (query, phrase) in [
        ("&connection=../../etc", "connection id is not valid"),
        ("&connection=a&connection=b", "more than once"),
        ("&prompt=evil", "prompt must be one of"),
        ("&replace=maybe", "replace must be true or false"),
    ] {
        let response =
            setup.agent.get(&setup.app.url(&format!("/api/authorize?code={TEST_FUNCTION_KEY}{query}"))).await;
        expect_error_page(response, 400, phrase).await;
    }
    // No open redirect: the only Location the bridge emits points at the configured server.
    let location = setup.begin("&redirect_uri=https://evil.example.com&returnTo=//evil.example.com").await;
    assert!(location.starts_with(setup.provider.issuer()));
    assert!(!location.contains("evil"));
}

/// The real browser: Chromium opens the authorize link on `app.localhost`, goes through the
/// provider's login and consent pages on `127.0.0.1` (another site), and the form_post comes
/// back cross-site with the SameSite=None cookie — the round trip a real admin makes.
#[tokio::test]
async fn chromium_completes_the_consent_round_trip_across_sites() {
    let app_port = free_port();
    let redirect = format!("http://app.localhost:{app_port}/api/callback");
    let mut config = provider_config(app_port);
    config["clients"][0]["redirect_uris"] = json!([redirect]);
    config["interactive"] = json!(true);
    let provider = OidcProvider::start(config);
    let settings = [
        ("OAUTH_PROVIDER", "oidc"),
        ("OAUTH_AUTHORITY", provider.issuer()),
        ("OAUTH_CLIENT_ID", CLIENT_ID),
        ("OAUTH_CLIENT_SECRET", CLIENT_SECRET),
        ("OAUTH_REDIRECT_URI", redirect.as_str()),
        ("FUNCTION_KEY", TEST_FUNCTION_KEY),
    ];
    let app = Server::start(&["serve", "--standalone", "--port", &app_port.to_string()], app_port, &settings);
    let start = format!("http://app.localhost:{app_port}/api/authorize?connection=browser&code={TEST_FUNCTION_KEY}");
    let result = tokio::task::spawn_blocking(move || harness::browser::run_browser(&start, r"/api/callback\?result="))
        .await
        .unwrap();
    assert_eq!(result.status, Some(200), "{result:?}\n{}", app.log());
    assert!(result.text.contains("Connected"), "{}", result.text);
    assert!(result.text.contains("admin@contoso.example"), "{}", result.text);
    let posted = result.navigations.iter().any(|n| n.method == "POST" && n.url.contains("/api/callback"));
    assert!(posted, "the response came back as a cross-site form_post: {:?}", result.navigations);
    drop(provider);
}

/// The same flow behind the Functions host: authorize, callback and the result page as
/// invocation envelopes; the redirect and the one Set-Cookie travel in `Outputs.res`.
#[tokio::test]
async fn the_flow_works_through_host_envelopes() {
    let public = "https://bridge.example.com/api/callback";
    let mut config = provider_config(1);
    config["clients"][0]["redirect_uris"] = json!([public]);
    let provider = OidcProvider::start(config);
    let server = Server::host(&[
        ("OAUTH_PROVIDER", "oidc"),
        ("OAUTH_AUTHORITY", provider.issuer()),
        ("OAUTH_CLIENT_ID", CLIENT_ID),
        ("OAUTH_CLIENT_SECRET", CLIENT_SECRET),
        ("OAUTH_REDIRECT_URI", public),
    ]);
    let invoke = |function: &'static str, req: Value| harness::host::invoke_http(&server, function, req);
    let res = invoke(
        "authorize",
        json!({ "Url": "https://bridge.example.com/api/authorize?connection=hosted&code=k", "Method": "GET",
                "Query": { "connection": "hosted", "code": "k" }, "Headers": {} }),
    )
    .await;
    assert_eq!(res["statusCode"], 302, "{res}");
    let cookie = res["headers"]["Set-Cookie"].as_str().unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("SameSite=None"));
    let cookie_pair = cookie.split(';').next().unwrap().to_owned();
    let agent = HttpAgent::new();
    let response = agent.authorize(res["headers"]["Location"].as_str().unwrap()).await;
    assert_eq!(response.target, public);
    let form = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&response.params).finish();
    let res = invoke(
        "callback",
        json!({ "Url": public, "Method": "POST", "Query": {},
                "Headers": { "Content-Type": ["application/x-www-form-urlencoded"], "Cookie": [cookie_pair] },
                "Body": form }),
    )
    .await;
    assert_eq!(res["statusCode"], 303, "{res}");
    let location = res["headers"]["Location"].as_str().unwrap().to_owned();
    let reference = location.split_once("result=").unwrap().1.to_owned();
    let res = invoke(
        "callback",
        json!({ "Url": format!("https://bridge.example.com{location}"), "Method": "GET",
                "Query": { "result": reference }, "Headers": {} }),
    )
    .await;
    assert_eq!(res["statusCode"], 200, "{res}");
    assert!(res["body"].as_str().unwrap().contains("admin@contoso.example"));
}

/// A code from another sign-in, delivered with this sign-in's state and cookie (code
/// injection): PKCE makes the server refuse it, and nothing is stored.
#[tokio::test]
async fn an_injected_code_fails_pkce_and_stores_nothing() {
    let setup = start(&[]);
    let mine = setup.sign_in("&connection=a").await;
    let theirs = setup.sign_in("&connection=b").await;
    let mut injected = mine.clone();
    injected.params.insert("code".into(), theirs.param("code").unwrap().to_owned());
    expect_error_page(setup.deliver(&injected).await, 502, "did not accept the sign-in code").await;
    assert_eq!(setup.connection_count().await, 0);
}

/// A custom OAuth 2.0 server (docs/authorization-servers.md, "A custom OAuth 2.0 server without discovery"): no discovery, no id_token, `authorization_code` instead of `code` in the
/// redirect, a token request with only client_id and code, no `expires_in`, a public client.
mod custom_oauth2 {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Form, Query, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Redirect, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::json;

    #[derive(Clone, Default)]
    pub struct Fixture {
        pub codes: Arc<Mutex<HashMap<String, String>>>,
        pub token_requests: Arc<Mutex<Vec<HashMap<String, String>>>>,
        pub refresh_tokens: Arc<Mutex<std::collections::HashSet<String>>>,
    }

    async fn authorize(State(f): State<Fixture>, Query(q): Query<HashMap<String, String>>) -> Response {
        if q.get("client_id").map(String::as_str) != Some("seed-client") {
            return (StatusCode::BAD_REQUEST, "unknown client").into_response();
        }
        let code = format!("code-{}", rand::random::<u64>());
        f.codes.lock().unwrap().insert(code.clone(), "student-42".into());
        let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
        let state = q.get("state").cloned().unwrap_or_default();
        let mut url = url::Url::parse(&redirect).unwrap();
        url.query_pairs_mut().append_pair("authorization_code", &code).append_pair("state", &state);
        Redirect::to(url.as_str()).into_response()
    }

    async fn token(State(f): State<Fixture>, Form(form): Form<HashMap<String, String>>) -> Response {
        f.token_requests.lock().unwrap().push(form.clone());
        let code = form.get("code").cloned().unwrap_or_default();
        match f.codes.lock().unwrap().remove(&code) {
            Some(_) => Json(json!({ "access_token": "at-1", "refresh_token": "rt-1" })).into_response(),
            None => (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid code" }))).into_response(),
        }
    }

    /// `POST /oauth2/refresh` with `token`: a new access token (a JWT that expires in 5 minutes,
    /// as that server's documentation says, with no `expires_in`) and a new refresh token; the old one dies.
    async fn refresh(State(f): State<Fixture>, Form(form): Form<HashMap<String, String>>) -> Response {
        use base64::Engine;
        f.token_requests.lock().unwrap().push(form.clone());
        let presented = form.get("token").cloned().unwrap_or_default();
        let mut live = f.refresh_tokens.lock().unwrap();
        if !live.remove(&presented) {
            return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid token" }))).into_response();
        }
        let next = format!("rt-{}", rand::random::<u64>());
        live.insert(next.clone());
        let encode = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let exp = chrono::Utc::now().timestamp() + 300;
        let access =
            format!("{}.{}.sig", encode(json!({ "alg": "HS256" })), encode(json!({ "sub": "student-42", "exp": exp })));
        Json(json!({ "access_token": access, "refresh_token": next })).into_response()
    }

    pub async fn start() -> (String, Fixture) {
        let fixture = Fixture::default();
        fixture.refresh_tokens.lock().unwrap().insert("rt-1".into());
        let app = Router::new()
            .route("/oauth2/authorize", get(authorize))
            .route("/oauth2/token", post(token))
            .route("/oauth2/refresh", post(refresh))
            .with_state(fixture.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (base, fixture)
    }
}

#[tokio::test]
async fn a_custom_oauth2_server_without_discovery_connects() {
    let (base, fixture) = custom_oauth2::start().await;
    let app_port = free_port();
    let redirect = format!("http://127.0.0.1:{app_port}/api/callback");
    let (authorize, token, refresh) =
        (format!("{base}/oauth2/authorize"), format!("{base}/oauth2/token"), format!("{base}/oauth2/refresh"));
    let settings = [
        ("OAUTH_PROVIDER", "oauth2"),
        ("OAUTH_AUTHORIZE_ENDPOINT", authorize.as_str()),
        ("OAUTH_TOKEN_ENDPOINT", token.as_str()),
        ("OAUTH_REFRESH_ENDPOINT", refresh.as_str()),
        ("OAUTH_CODE_PARAM", "authorization_code"),
        ("OAUTH_REFRESH_TOKEN_PARAM", "token"),
        ("OAUTH_CLIENT_ID", "seed-client"),
        ("OAUTH_REDIRECT_URI", redirect.as_str()),
        ("FUNCTION_KEY", TEST_FUNCTION_KEY),
    ];
    let app = Server::start(&["serve", "--standalone", "--port", &app_port.to_string()], app_port, &settings);
    let agent = HttpAgent::new();
    let start = agent.get(&app.url(&format!("/api/authorize?code={TEST_FUNCTION_KEY}&connection=seed"))).await;
    assert_eq!(start.status(), 302, "{}", app.log());
    let response = agent.authorize(start.headers()["location"].to_str().unwrap()).await;
    assert_eq!(response.method, "GET", "plain OAuth 2.0 servers answer with a redirect");
    assert!(response.param("authorization_code").is_some());
    let mut callback = url::Url::parse(&response.target).unwrap();
    callback.query_pairs_mut().extend_pairs(&response.params);
    let done = agent.get(callback.as_str()).await;
    assert_eq!(done.status(), 303, "{}", app.log());
    let page = agent.get(&app.url(done.headers()["location"].to_str().unwrap())).await;
    assert_eq!(page.status(), 200);
    let request = fixture.token_requests.lock().unwrap()[0].clone();
    assert_eq!(request["client_id"], "seed-client");
    assert!(request["code"].starts_with("code-"));
    assert!(!request.contains_key("client_secret"), "a public client sends no secret");
    let status: Value = agent
        .client
        .get(app.url("/api/status"))
        .header("x-functions-key", TEST_FUNCTION_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["connections"][0]["id"], "seed");
    assert_eq!(status["connections"][0]["state"], "active");
    assert_eq!(status["connections"][0]["access_token_lifetime_assumed"], true, "an opaque token, no expires_in");

    // Refresh at its separate route with `token`, twice: the second presents the rotated one.
    for round in 1..=2 {
        let mut command = harness::command(app.dir.path(), &settings);
        command.args(["token", "--connection", "seed", "--force"]);
        // The custom OAuth 2.0 server runs on this test's runtime: wait for the process off it.
        let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["refreshed"], true);
        // The JWT's own `exp` (5 minutes) stands in for the missing expires_in.
        assert_eq!(report["expires_in_assumed"], false);
        let left = report["expires_in_seconds"].as_i64().unwrap();
        assert!((250..=300).contains(&left), "round {round}: {left} s left");
    }
    let requests = fixture.token_requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[1]["token"], "rt-1");
    assert_eq!(requests[1]["client_id"], "seed-client");
    assert!(requests[2]["token"].starts_with("rt-") && requests[2]["token"] != "rt-1");
}

/// An Azure AD B2C-shaped server: a policy in the authority's path (as on a B2C custom
/// domain; docs/authorization-servers.md), discovery under it, `expires_in` as a string, accounts identified by (iss, sub).
#[tokio::test]
async fn a_b2c_shaped_server_with_a_policy_path_and_string_expires_in_connects() {
    let app_port = free_port();
    let mut config = provider_config(app_port);
    config["issuer_path"] = json!("/99abc933-fcdd-4dba-893c-b2b9f81c0676/B2C_1A_SIGNUP_SIGNIN/v2.0");
    config["expires_in_as_string"] = json!(true);
    // Not the one-hour default a missing expires_in would give, so the test tells them apart.
    config["ttl"] = json!({ "access_token": 7200 });
    let provider = OidcProvider::start(config);
    let authority = provider.issuer().trim_end_matches("/v2.0").to_owned();
    let redirect = format!("http://127.0.0.1:{app_port}/api/callback");
    let app = Server::start(
        &["serve", "--standalone", "--port", &app_port.to_string()],
        app_port,
        &[
            ("OAUTH_PROVIDER", "b2c"),
            ("OAUTH_AUTHORITY", &authority),
            ("OAUTH_CLIENT_ID", CLIENT_ID),
            ("OAUTH_CLIENT_SECRET", CLIENT_SECRET),
            ("OAUTH_REDIRECT_URI", &redirect),
            ("FUNCTION_KEY", TEST_FUNCTION_KEY),
        ],
    );
    let setup = Setup { provider, app, agent: HttpAgent::new() };
    let response = setup.sign_in("&connection=b2c").await;
    assert_eq!(setup.deliver(&response).await.status(), 303, "{}", setup.app.log());
    let status = setup.status().await;
    let connection = &status["connections"][0];
    assert_eq!(connection["state"], "active");
    let expires: chrono::DateTime<chrono::Utc> =
        connection["access_token_expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = expires - chrono::Utc::now();
    assert!(lifetime > chrono::TimeDelta::minutes(115), "the string expires_in (\"7200\") was used: {lifetime}");
}

/// A client that authenticates with `private_key_jwt`, registered with test key 1's public key.
fn private_key_jwt_client(app_port: u16) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/test-jwks.json");
    let jwks: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json!({
        "client_id": CLIENT_ID,
        "redirect_uris": [format!("http://127.0.0.1:{app_port}/api/callback")],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": { "keys": [jwks["keys"][0].clone()] },
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    })
}

/// `private_key_jwt`: no secret at all; the app signs a client assertion with its key and the
/// server checks it against the registered public key.
#[tokio::test]
async fn a_client_with_a_certificate_key_authenticates_with_private_key_jwt() {
    let app_port = free_port();
    let mut config = provider_config(app_port);
    config["clients"][0] = private_key_jwt_client(app_port);
    let provider = OidcProvider::start(config);
    let redirect = format!("http://127.0.0.1:{app_port}/api/callback");
    let key_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/test-key1.pem");
    let app = Server::start(
        &["serve", "--standalone", "--port", &app_port.to_string()],
        app_port,
        &[
            ("OAUTH_PROVIDER", "oidc"),
            ("OAUTH_AUTHORITY", provider.issuer()),
            ("OAUTH_CLIENT_ID", CLIENT_ID),
            ("OAUTH_CLIENT_CERTIFICATE_PATH", key_path.to_str().unwrap()),
            ("OAUTH_REDIRECT_URI", &redirect),
            ("FUNCTION_KEY", TEST_FUNCTION_KEY),
        ],
    );
    let setup = Setup { provider, app, agent: HttpAgent::new() };
    let response = setup.sign_in("&connection=cert").await;
    assert_eq!(setup.deliver(&response).await.status(), 303, "{}", setup.app.log());
    let requests = setup.provider.token_requests().await;
    assert_eq!(requests["requests"][0]["client_auth"], "client_assertion", "{requests}");
    assert_eq!(setup.status().await["connections"][0]["state"], "active");
}

/// Entra with a federated credential: no secret and no certificate; the managed identity's token
/// for `api://AzureADTokenExchange` is the client assertion. A stand-in for the App Service
/// managed-identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER) issues that token, signed
/// with a key the provider has registered for the client, so the provider can verify it.
#[tokio::test]
async fn entra_with_a_federated_managed_identity_credential_needs_no_secret() {
    use axum::extract::Query;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    let app_port = free_port();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut config = provider_config(app_port);
    config["issuer_path"] = json!(format!("/{TENANT}/v2.0"));
    config["clients"][0] = private_key_jwt_client(app_port);
    let provider = OidcProvider::start(config);
    let issuer = provider.issuer().to_owned();

    // The managed-identity endpoint stand-in, checking the secret header and the resource.
    let key = std::fs::read_to_string(fixtures.join("test-key1.pem")).unwrap();
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = requests.clone();
    let msi = axum::Router::new().route(
        "/msi/token",
        axum::routing::get(move |headers: axum::http::HeaderMap, Query(q): Query<BTreeMap<String, String>>| {
            let (key, issuer, seen) = (key.clone(), issuer.clone(), seen.clone());
            async move {
                if headers.get("x-identity-header").and_then(|v| v.to_str().ok()) != Some("msi-secret-header") {
                    return (axum::http::StatusCode::UNAUTHORIZED, "no identity header").into_response();
                }
                seen.lock().unwrap().push(q.get("resource").cloned().unwrap_or_default());
                let now = chrono::Utc::now().timestamp();
                let claims = json!({ "iss": CLIENT_ID, "sub": CLIENT_ID, "aud": issuer, "jti": format!("{now}-{}", rand::random::<u32>()),
                                     "iat": now, "exp": now + 600 });
                let token = jsonwebtoken::encode(
                    &Header::new(Algorithm::RS256),
                    &claims,
                    &EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
                )
                .unwrap();
                axum::Json(json!({ "access_token": token, "expires_on": (now + 600).to_string(),
                                   "token_type": "Bearer", "resource": "api://AzureADTokenExchange" }))
                .into_response()
            }
        }),
    );
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let msi_url = format!("http://{}/msi/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, msi).await.unwrap() });

    let redirect = format!("http://127.0.0.1:{app_port}/api/callback");
    let authority = provider.issuer().trim_end_matches("/v2.0").to_owned();
    let app = Server::start(
        &["serve", "--standalone", "--port", &app_port.to_string()],
        app_port,
        &[
            ("OAUTH_PROVIDER", "entra"),
            ("OAUTH_AUTHORITY", &authority),
            ("OAUTH_CLIENT_ID", CLIENT_ID),
            ("OAUTH_FEDERATED_CREDENTIAL", "true"),
            ("OAUTH_REDIRECT_URI", &redirect),
            ("IDENTITY_ENDPOINT", &msi_url),
            ("IDENTITY_HEADER", "msi-secret-header"),
            ("FUNCTION_KEY", TEST_FUNCTION_KEY),
        ],
    );
    let setup = Setup { provider, app, agent: HttpAgent::new() };
    let response = setup.sign_in("&connection=federated").await;
    assert_eq!(setup.deliver(&response).await.status(), 303, "{}", setup.app.log());
    assert_eq!(requests.lock().unwrap().as_slice(), ["api://AzureADTokenExchange"]);
    let token_requests = setup.provider.token_requests().await;
    assert_eq!(token_requests["requests"][0]["client_auth"], "client_assertion", "{token_requests}");
    let status = setup.status().await;
    assert_eq!(status["connections"][0]["tenant"], TENANT);
    assert!(!setup.app.log().contains("msi-secret-header"));
}

/// A sign-in finished after its 10 minutes: refused, consumed, nothing stored. (The clock is
/// not moved; the pending flow's expiry is set in the past directly in the bridge's store.)
#[tokio::test]
async fn an_expired_sign_in_is_refused_and_consumed() {
    use truecontext_bridge::oauth::flow::{self, PendingFlow};
    use truecontext_bridge::store::{IfMatch, Table, TypedTable};

    let setup = start(&[]);
    let response = setup.sign_in("&connection=late").await;
    let state = response.param("state").unwrap().to_owned();
    let stores = truecontext_bridge::store::local::open(&setup.app.store_dir(), None).unwrap();
    let (mut pending, etag): (PendingFlow, _) =
        flow::find(&stores, &state).await.unwrap().expect("the flow is pending");
    pending.expires_at = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    TypedTable::new(stores.tables.as_ref(), Table::PendingFlows)
        .update("flow", &flow::hash_hex(&state), &pending, IfMatch::ETag(etag))
        .await
        .unwrap();
    expect_error_page(setup.deliver(&response).await, 400, "expired").await;
    expect_error_page(setup.deliver(&response).await, 400, "already completed").await;
    assert_eq!(setup.connection_count().await, 0);
    assert_eq!(setup.provider.token_request_count("authorization_code").await, 0);
}
