//! node-oidc-provider (tests/peers/oidc-provider.mjs, from the committed npm lockfile) on a free
//! loopback port, stopped on drop. The configuration keys are documented at the top of the script.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct OidcProvider {
    child: Child,
    issuer: String,
    base: String,
    pub port: u16,
    log_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts the provider with `config` (a JSON object); `host` and `port` are filled in. A start
    /// that fails (a port taken between our probe and its bind, or a crash) is retried on another
    /// port; the last failure says what the provider printed.
    pub fn start(config: Value) -> OidcProvider {
        // Node loading oidc-provider is a second or more of CPU; on a 2-core CI machine running
        // the whole suite, a dozen of them booting at once starved each other past any sane
        // timeout. One boots at a time, and its timeout counts from its own spawn.
        static BOOTING: Mutex<()> = Mutex::new(());
        let _booting = BOOTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(config.clone()) {
                Ok(provider) => return provider,
                Err(why) => failures.push(why),
            }
        }
        panic!("oidc-provider did not start:\n{}", failures.join("\n---\n"));
    }

    fn try_start(mut config: Value) -> Result<OidcProvider, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(
            root.join("node_modules/oidc-provider/package.json").exists(),
            "oidc-provider is not installed: run `bash scripts/test.sh` (it runs `npm ci`)"
        );
        let port = super::free_port();
        let object = config.as_object_mut().expect("the provider configuration is a JSON object");
        object.insert("host".into(), json!("127.0.0.1"));
        object.insert("port".into(), json!(port));
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("oidc-provider.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new("node")
            .arg(root.join("tests/peers/oidc-provider.mjs"))
            .env("OIDC_PROVIDER_CONFIG", config.to_string())
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start node (tests/peers/oidc-provider.mjs)");

        // Wait for `READY <issuer>`; keep draining stdout afterwards so the pipe never fills.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = tx.send(issuer.to_string());
                }
            }
        });
        let printed = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(120);
        let issuer = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(issuer) => break issuer,
                Err(mpsc::RecvTimeoutError::Disconnected) | Err(mpsc::RecvTimeoutError::Timeout)
                    if child.try_wait().unwrap().is_some() =>
                {
                    let status = child.wait().unwrap();
                    return Err(format!("oidc-provider exited with {status}:\n{}", printed()));
                }
                Err(_) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("oidc-provider did not print READY within 120 s:\n{}", printed()));
                }
                Err(_) => {}
            }
        };
        let base = format!("http://127.0.0.1:{port}");
        Ok(OidcProvider { child, issuer, base, port, log_path, _dir: dir })
    }

    /// The issuer URL (with the configured `issuer_path`, if any).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The issuer's discovery document URL.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// A URL at the server's root (where `/interaction/…` and `/__test/…` live).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What the provider printed on stderr (warnings, server errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Adds a signing key with a new `kid`, used for id_tokens from now on; returns that kid.
    pub async fn rotate_keys(&self) -> String {
        let reply = self.admin(reqwest::Method::POST, "/__test/rotate-keys", None).await;
        reply["kid"].as_str().unwrap().to_string()
    }

    /// `{counts: {grant_type: n}, requests: [...]}`: every call to the token endpoint, faulted and
    /// abandoned ones included (see [`OidcProvider::token_request_log`]).
    pub async fn token_requests(&self) -> Value {
        self.admin(reqwest::Method::GET, "/__test/token-requests", None).await
    }

    /// One entry per token-endpoint call, in order of arrival: `{at, grant_type, client_id,
    /// client_auth, fault, status, ok, error, presented_refresh_token, issued_refresh_token}` (the
    /// refresh tokens as the first 16 hex digits of their sha256; see the script's header).
    pub async fn token_request_log(&self) -> Vec<Value> {
        self.token_requests().await["requests"].as_array().unwrap().clone()
    }

    /// Queues faults for the token endpoint (FIFO; each request takes the first one whose
    /// `grant_types`, by default refresh_token and client_credentials, has its grant type):
    /// `{"status": 503, "retry_after": "2", "body": {…}}`, `{"error": "invalid_grant", …}`,
    /// `{"delay_ms": n}`, `{"hang": true}`, `{"omit_refresh_token": true}`,
    /// `{"omit_expires_in": true}`, `{"expires_in_as_string": true}`.
    pub async fn token_faults(&self, faults: Vec<Value>) {
        self.admin(reqwest::Method::POST, "/__test/token-faults", Some(Value::Array(faults))).await;
    }

    /// How many queued token faults no request has taken yet.
    pub async fn pending_token_faults(&self) -> u64 {
        let reply = self.admin(reqwest::Method::GET, "/__test/token-faults", None).await;
        reply["queued"].as_u64().unwrap_or_else(|| panic!("{reply}"))
    }

    /// Empties the token-fault queue; answers how many faults were left unused.
    pub async fn clear_token_faults(&self) -> u64 {
        let reply = self.admin(reqwest::Method::DELETE, "/__test/token-faults", None).await;
        reply["cleared"].as_u64().unwrap_or_else(|| panic!("{reply}"))
    }

    /// Sets the reuse grace period (`POST /__test/reuse-grace`; 0, the default, is strict).
    pub async fn reuse_grace(&self, seconds: u64) {
        let reply = self.admin(reqwest::Method::POST, "/__test/reuse-grace", Some(json!({ "seconds": seconds }))).await;
        assert_eq!(reply["seconds"].as_u64(), Some(seconds), "{reply}");
    }

    /// Revokes every grant issued so far (its refresh and access tokens too), so the next refresh
    /// gets the provider's own `invalid_grant`; returns how many grants still existed.
    pub async fn revoke_grants(&self) -> u64 {
        let reply = self.admin(reqwest::Method::POST, "/__test/revoke-grants", None).await;
        reply["revoked"].as_u64().unwrap()
    }

    /// How many token-endpoint calls had this grant type.
    pub async fn token_request_count(&self, grant_type: &str) -> u64 {
        self.token_requests().await["counts"][grant_type].as_u64().unwrap_or(0)
    }

    /// The query parameters of every authorization request, as the client sent them.
    pub async fn authorization_requests(&self) -> Vec<Value> {
        let reply = self.admin(reqwest::Method::GET, "/__test/authorization-requests", None).await;
        reply.as_array().unwrap().clone()
    }

    /// The next authorization ends with `access_denied` and HTML in `error_description`.
    pub async fn deny_next(&self) {
        self.admin(reqwest::Method::POST, "/__test/deny-next", None).await;
    }

    /// The next authorization ends with this error instead.
    pub async fn deny_next_with(&self, error: &str, error_description: &str) {
        let body = json!({ "error": error, "error_description": error_description });
        self.admin(reqwest::Method::POST, "/__test/deny-next", Some(body)).await;
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = super::plain_client(reqwest::Client::builder()).request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user agent over plain HTTP (no browser): keeps cookies per host name as a browser does (ports
/// and paths ignored, attributes ignored) and follows redirects by hand, so a test sees every hop.
pub struct HttpAgent {
    pub client: reqwest::Client,
    cookies: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

/// What the provider sent back to the client's redirect URI.
#[derive(Debug, Clone)]
pub struct AuthorizationResponse {
    /// "POST" for `response_mode=form_post`, "GET" for a redirect (query or fragment).
    pub method: String,
    /// The redirect URI the response goes to, without query or fragment.
    pub target: String,
    /// The response parameters (`code`, `state`, `iss`, or `error`, `error_description`), decoded.
    pub params: BTreeMap<String, String>,
}

impl AuthorizationResponse {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

impl Default for HttpAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpAgent {
    pub fn new() -> HttpAgent {
        let client = super::plain_client(
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(30)),
        );
        HttpAgent { client, cookies: Mutex::new(BTreeMap::new()) }
    }

    /// A GET with this agent's cookies; cookies set by the response are kept.
    pub async fn get(&self, url: &str) -> reqwest::Response {
        let request = self.with_cookies(self.client.get(url), url);
        let response = request.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        self.store_cookies(&response);
        response
    }

    /// A form POST with this agent's cookies, as a browser submits a `form_post` page.
    pub async fn post_form(&self, url: &str, fields: &BTreeMap<String, String>) -> reqwest::Response {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let request = self
            .with_cookies(self.client.post(url), url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
        let response = request.send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        self.store_cookies(&response);
        response
    }

    /// The value of a cookie this agent holds for `host`.
    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.cookies.lock().unwrap().get(host)?.get(name).cloned()
    }

    /// Follows an authorization request through the provider (redirects and, in the default
    /// auto-consent mode, its interactions) until the response leaves for the client: a
    /// `form_post` page (parsed) or a redirect to another origin (not requested).
    pub async fn authorize(&self, authorization_url: &str) -> AuthorizationResponse {
        let origin = url::Url::parse(authorization_url).unwrap().origin();
        let mut url = authorization_url.to_string();
        for _ in 0..20 {
            let response = self.get(&url).await;
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers()["location"].to_str().unwrap();
                let next = url::Url::parse(&url).unwrap().join(location).unwrap();
                if next.origin() != origin {
                    return redirect_response(&next);
                }
                url = next.to_string();
                continue;
            }
            let body = response.text().await.unwrap();
            return form_post_response(&body)
                .unwrap_or_else(|| panic!("{url} answered {status} with neither a redirect nor a form_post:\n{body}"));
        }
        panic!("more than 20 hops from {authorization_url}");
    }

    fn with_cookies(&self, request: reqwest::RequestBuilder, url: &str) -> reqwest::RequestBuilder {
        let host = url::Url::parse(url).unwrap().host_str().unwrap_or_default().to_string();
        let jar = self.cookies.lock().unwrap();
        match jar.get(&host) {
            Some(cookies) if !cookies.is_empty() => {
                let header: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
                request.header("Cookie", header.join("; "))
            }
            _ => request,
        }
    }

    fn store_cookies(&self, response: &reqwest::Response) {
        let host = response.url().host_str().unwrap_or_default().to_string();
        let mut jar = self.cookies.lock().unwrap();
        let cookies = jar.entry(host).or_default();
        for header in response.headers().get_all("set-cookie") {
            let text = header.to_str().unwrap_or_default();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let Some((name, value)) = pair.split_once('=') else { continue };
            let attributes = attributes.to_ascii_lowercase();
            if value.is_empty() || attributes.contains("max-age=0") || attributes.contains("1970") {
                cookies.remove(name.trim());
            } else {
                cookies.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }
}

fn redirect_response(url: &url::Url) -> AuthorizationResponse {
    let mut params: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    if let Some(fragment) = url.fragment() {
        params.extend(url::form_urlencoded::parse(fragment.as_bytes()).into_owned());
    }
    let mut target = url.clone();
    target.set_query(None);
    target.set_fragment(None);
    AuthorizationResponse { method: "GET".into(), target: target.to_string(), params }
}

/// Parses node-oidc-provider's form_post page: `<form method="post" action="…">` and its
/// `<input type="hidden" name="…" value="…"/>` fields.
pub fn form_post_response(html: &str) -> Option<AuthorizationResponse> {
    let form = regex::Regex::new(r#"<form method="post" action="([^"]*)">"#).unwrap();
    let input = regex::Regex::new(r#"<input type="hidden" name="([^"]*)" value="([^"]*)"/>"#).unwrap();
    let target = html_unescape(&form.captures(html)?[1]);
    let params = input.captures_iter(html).map(|c| (html_unescape(&c[1]), html_unescape(&c[2]))).collect();
    Some(AuthorizationResponse { method: "POST".into(), target, params })
}

fn html_unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}
