//! A Key Vault simulator for tests (Key Vault has no local edition): the secrets REST subset
//! the store calls, served over TLS on 127.0.0.1 with a test CA generated per run, the
//! challenge-based bearer flow the SDK performs, soft delete and purge as the service does
//! them, and fault injection (429 with `Retry-After`, 503, 403, slow answers).
//!
//! What was checked against which document:
//! * Microsoft Learn, Key Vault REST reference, Secrets, api-version 2025-07-01 (the version
//!   azure_security_keyvault_secrets 1.0.1 sends: `DEFAULT_API_VERSION`) and 7.4 (samples):
//!   Set Secret `PUT /secrets/{name}` (body `value` required, `contentType`, `tags`,
//!   `attributes`; 200 with the secret bundle, value included); Get Secret
//!   `GET /secrets/{name}/{version}` (version optional: latest); Get Secret Versions
//!   `GET /secrets/{name}/versions` (`maxresults` 1-25, 25 by default; `{"value":[...],
//!   "nextLink":...}` where `nextLink` is an absolute URL with `$skiptoken`, null on the last
//!   page; items carry `id`, `attributes`, `tags`, `contentType` but no value); Delete Secret
//!   `DELETE /secrets/{name}` (200 with the deleted secret bundle: `recoveryId`, `deletedDate`,
//!   `scheduledPurgeDate`, `id`, `attributes.recoveryLevel` "Recoverable+Purgeable"); Get
//!   Deleted Secret `GET /deletedsecrets/{name}`; Purge Deleted Secret
//!   `DELETE /deletedsecrets/{name}` (204, no body); Recover Deleted Secret
//!   `POST /deletedsecrets/{name}/recover`. Names `^[0-9a-zA-Z-]+$`; times are Unix seconds.
//! * The SDK's generated models (`models.rs`): the JSON field names above, and the error
//!   shape `{"error":{"code","message","innererror":{"code"}}}`.
//! * Microsoft Learn, "Azure Key Vault REST API error codes" and MSAL's "extract
//!   authentication parameters": a request without a token gets 401 with
//!   `WWW-Authenticate: Bearer authorization="https://login.windows.net/<tenant>",
//!   resource="https://vault.azure.net"`; 403 for RBAC denials; 429 when throttled.
//! * The SDK's `authorizer.rs`: it parses `resource="..."` (or `scope="..."`) from the
//!   challenge, asks the credential for `<resource>/.default`, and requires the vault host to
//!   end with `.<resource host>`. Hence the vault is served as `*.vault.localhost` (resolved to
//!   127.0.0.1 by the client) and challenges with `resource="https://vault.localhost"`. It
//!   sends the first request of a client without its body and replays it after the challenge.
//! * Azure SDK issue threads (azure-sdk-for-net #34322, #7199, #26027; azure-sdk-for-python
//!   #19263, #9743; azure-cli #12722; external-secrets #3519), for behaviour the reference
//!   does not state: delete and purge complete asynchronously. Until a delete completes, Get
//!   Deleted Secret is 404 `SecretNotFound` "Deleted Secret not found: X" and Purge is 409
//!   `Conflict`/`ObjectIsBeingDeleted` "Secret is currently being deleted."; for a while after
//!   a purge, Set is 409 `Conflict`/`ObjectIsBeingDeleted` "Secret X is currently being deleted
//!   and cannot be re-created; retry later."; Set on a soft-deleted name is 409
//!   `Conflict`/`ObjectIsDeletedButRecoverable` "Secret X is currently in a deleted but
//!   recoverable state, and its name cannot be reused; in this state, the secret can only be
//!   recovered or purged."
//! * Public troubleshooting pages quoting the service's 403 body: code `Forbidden`, message
//!   "Caller is not authorized to perform action on resource. ... Caller: ... Action: ...",
//!   innererror `ForbiddenByRbac`.
//!
//! Deliberate differences, and what is assumed rather than documented: the page size of
//! version lists defaults to 2 here (not 25) so paging is exercised; versions are listed in
//! version-id order (the service documents no order; it is not creation order); Get Secret
//! Versions of an unknown name answers 404 `SecretNotFound` (assumed; the store also accepts
//! an empty list); the 401 body for a wrong token, the 429 and 503 bodies are plausible, not
//! quoted. Certificates, keys, backup/restore, disabled versions, `nbf`/`exp` and purge
//! protection are not simulated.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, Transport};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use truecontext_bridge::store::azure::keyvault::{KeyVaultSecrets, KeyVaultTuning};

/// The API versions the simulator answers (the SDK sends 2025-07-01).
const API_VERSIONS: [&str; 4] = ["7.4", "7.5", "7.6", "2025-07-01"];
/// The challenge's resource: vault hosts must end with `.vault.localhost`.
pub const RESOURCE: &str = "https://vault.localhost";
pub const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";
const RECOVERABLE_DAYS: i64 = 90;

/// Timing and paging of the simulated vault.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// How long a deleted secret stays "being deleted" before it shows as deleted.
    pub deletion_delay: Duration,
    /// How long a purged name stays "being deleted" (a set is refused with 409).
    pub purge_delay: Duration,
    /// Page size of version lists when the client sends no `maxresults`.
    pub page_size: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self { deletion_delay: Duration::from_millis(200), purge_delay: Duration::from_millis(200), page_size: 2 }
    }
}

/// A fault the next authenticated request gets instead of (or before) its answer.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with `Retry-After: secs`.
    Throttle { retry_after_secs: u64 },
    /// 503 without `Retry-After`.
    Unavailable,
    /// 403 `Forbidden`/`ForbiddenByRbac`, as for an identity without a role assignment.
    Forbidden,
    /// Answers normally, but only after this delay (a hung or slow vault).
    Delay(Duration),
}

/// A request the simulator received with a valid token: when (Unix ms, on arrival), method,
/// path and the injected fault it got, if any.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at_ms: i64,
    pub method: String,
    pub path: String,
    pub fault: Option<Fault>,
}

pub struct KeyVaultSim {
    /// `https://tcbtest.vault.localhost:<port>/`
    pub vault_url: String,
    pub host: String,
    pub port: u16,
    pub ca_pem: String,
    credential: Arc<TestCredential>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyVaultSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeyVaultSim {
    pub async fn start() -> KeyVaultSim {
        Self::start_with(SimOptions::default()).await
    }

    pub async fn start_with(options: SimOptions) -> KeyVaultSim {
        let host = "tcbtest.vault.localhost".to_owned();
        let (ca_pem, tls) = test_pki(&host);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the Key Vault simulator");
        let port = listener.local_addr().unwrap().port();
        let base = format!("https://{host}:{port}");
        let token = format!("kv-sim-token-{:016x}", rand::random::<u64>());
        let shared = Arc::new(Shared {
            base: base.clone(),
            token: token.clone(),
            options,
            vault: Mutex::new(Vault::default()),
            faults: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            challenges: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve(listener, TlsAcceptor::from(Arc::new(tls)), shared.clone()));
        KeyVaultSim {
            vault_url: format!("{base}/"),
            host,
            port,
            ca_pem,
            credential: Arc::new(TestCredential::new(token)),
            shared,
            task,
        }
    }

    /// The bearer token the simulator accepts (what an identity endpoint hands out for it).
    pub fn token(&self) -> &str {
        &self.credential.token
    }

    /// The credential whose token the simulator accepts.
    pub fn credential(&self) -> Arc<TestCredential> {
        self.credential.clone()
    }

    /// Client options whose transport (reqwest 0.13, as azure_core 1.x uses) trusts only the
    /// test CA and resolves the vault host to 127.0.0.1.
    pub fn client_options(&self) -> ClientOptions {
        client_options(&self.ca_pem, &self.host, self.port)
    }

    /// What another process needs to reach this vault: see [`KeyVaultSim::remote_store`].
    pub fn remote(&self) -> serde_json::Value {
        serde_json::json!({
            "vault_url": self.vault_url, "host": self.host, "port": self.port,
            "ca_pem": self.ca_pem, "token": self.credential.token,
        })
    }

    /// A store on a simulator another process started (`remote` is its [`KeyVaultSim::remote`]).
    pub fn remote_store(remote: &serde_json::Value, tuning: KeyVaultTuning) -> KeyVaultSecrets {
        let text = |key: &str| remote[key].as_str().unwrap().to_owned();
        let options = client_options(&text("ca_pem"), &text("host"), remote["port"].as_u64().unwrap() as u16);
        let credential = Arc::new(TestCredential::new(text("token")));
        KeyVaultSecrets::with_tuning(&text("vault_url"), credential, Some(options), tuning)
            .expect("KeyVaultSecrets on the simulator")
    }

    /// Short timeouts and back-offs, so fault tests run in seconds.
    pub fn fast_tuning() -> KeyVaultTuning {
        KeyVaultTuning {
            cache_ttl: Duration::from_secs(30),
            try_timeout: Duration::from_secs(2),
            max_retries: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            max_retry_after: Duration::from_secs(5),
            max_retry_elapsed: Duration::from_secs(20),
            soft_delete_wait: Duration::from_secs(10),
        }
    }

    /// A store on this vault through the real SDK.
    pub fn store(&self, tuning: KeyVaultTuning) -> KeyVaultSecrets {
        KeyVaultSecrets::with_tuning(&self.vault_url, self.credential.clone(), Some(self.client_options()), tuning)
            .expect("KeyVaultSecrets on the simulator")
    }

    /// The next `times` authenticated requests get `fault`.
    pub fn inject(&self, fault: Fault, times: usize) {
        let mut faults = self.shared.faults.lock().unwrap();
        faults.extend(std::iter::repeat_n(fault, times));
    }

    /// How many injected faults no request has taken yet.
    pub fn pending_faults(&self) -> usize {
        self.shared.faults.lock().unwrap().len()
    }

    /// Drops faults not used up; answers how many there were.
    pub fn clear_faults(&self) -> usize {
        self.shared.faults.lock().unwrap().drain(..).count()
    }

    /// Every authenticated request so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many authenticated requests had this method and path (empty path segments
    /// ignored, so `/secrets/x/` and `/secrets/x` are the same).
    pub fn count(&self, method: &str, path: &str) -> usize {
        let want = normalize(path);
        self.requests().iter().filter(|r| r.method == method && normalize(&r.path) == want).count()
    }

    /// How many requests came without a valid token (and got a challenge).
    pub fn challenges(&self) -> usize {
        self.shared.challenges.load(Ordering::SeqCst)
    }

    /// Number of versions the vault holds for a live secret (a test's view behind the API).
    pub fn live_versions(&self, name: &str) -> usize {
        self.shared.vault.lock().unwrap().secrets.get(&name.to_ascii_lowercase()).map_or(0, |s| s.versions.len())
    }

    /// Whether a name is soft-deleted (deleting or deleted, not purged).
    pub fn is_soft_deleted(&self, name: &str) -> bool {
        self.shared.vault.lock().unwrap().deleted.contains_key(&name.to_ascii_lowercase())
    }
}

fn normalize(path: &str) -> String {
    path.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/")
}

/// A test CA and a server certificate for `host` and `*.vault.localhost`, made per run.
fn test_pki(host: &str) -> (String, ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "tcbridge Key Vault simulator test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec![host.to_owned(), "*.vault.localhost".to_owned()]).unwrap();
    leaf_params.distinguished_name.push(DnType::CommonName, host);
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();

    // Both ring and aws-lc-rs are in the dependency tree, so name the provider explicitly.
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.pem(), config)
}

/// A transport (reqwest, the generation azure_core 1.x uses) that trusts only the test CA and
/// resolves the vault host to 127.0.0.1.
fn client_options(ca_pem: &str, host: &str, port: u16) -> ClientOptions {
    truecontext_bridge::tls::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("test CA");
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve(host, SocketAddr::from(([127, 0, 0, 1], port)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client for the simulator");
    ClientOptions { transport: Some(Transport::new(Arc::new(client))), ..Default::default() }
}

/// A credential that returns a fixed token and counts its calls.
#[derive(Debug)]
pub struct TestCredential {
    token: String,
    calls: AtomicUsize,
    scopes: Mutex<Vec<String>>,
}

impl TestCredential {
    pub fn new(token: impl Into<String>) -> Self {
        Self { token: token.into(), calls: AtomicUsize::new(0), scopes: Mutex::new(Vec::new()) }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The scopes of every token request, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.scopes.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl TokenCredential for TestCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.scopes.lock().unwrap().extend(scopes.iter().map(|s| s.to_string()));
        Ok(AccessToken::new(
            self.token.clone(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

struct Shared {
    base: String,
    token: String,
    options: SimOptions,
    vault: Mutex<Vault>,
    faults: Mutex<VecDeque<Fault>>,
    log: Mutex<Vec<Logged>>,
    challenges: AtomicUsize,
}

#[derive(Default)]
struct Vault {
    /// Live secrets by lowercase name (names are case-insensitive).
    secrets: HashMap<String, SecretEntry>,
    /// Soft-deleted secrets by lowercase name.
    deleted: HashMap<String, DeletedEntry>,
    /// Purged names that cannot be set again until then.
    purging: HashMap<String, Instant>,
}

struct SecretEntry {
    name: String,
    /// In creation order.
    versions: Vec<Version>,
}

struct Version {
    id: String,
    value: String,
    content_type: Option<String>,
    tags: Map<String, Value>,
    enabled: bool,
    created: i64,
}

struct DeletedEntry {
    entry: SecretEntry,
    deleted_date: i64,
    /// Until then the delete is in progress.
    visible_at: Instant,
}

async fn serve(listener: tokio::net::TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn respond(status: StatusCode, body: Option<Value>) -> Answer {
    let mut builder = Response::builder()
        .status(status)
        .header("x-ms-request-id", format!("{:032x}", rand::random::<u128>()))
        .header("x-ms-keyvault-service-version", "1.9.0.0-simulator")
        .header("cache-control", "no-cache");
    let bytes = match body {
        Some(body) => {
            builder = builder.header("content-type", "application/json; charset=utf-8");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    builder.body(Full::new(bytes)).unwrap()
}

fn error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Answer {
    let mut error = json!({"code": code, "message": message});
    if let Some(inner) = inner {
        error["innererror"] = json!({"code": inner});
    }
    respond(status, Some(json!({ "error": error })))
}

fn challenge(shared: &Shared, message: &str) -> Answer {
    shared.challenges.fetch_add(1, Ordering::SeqCst);
    let mut answer = error(StatusCode::UNAUTHORIZED, "Unauthorized", message, None);
    answer.headers_mut().insert(
        "www-authenticate",
        format!(r#"Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="{RESOURCE}""#)
            .parse()
            .unwrap(),
    );
    answer
}

fn not_found(name: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        &format!(
            "A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret you \
             may be able to recover it using the correct recovery command. For help resolving this issue, please see \
             https://go.microsoft.com/fwlink/?linkid=2125182"
        ),
        None,
    )
}

fn bad_parameter(message: &str) -> Answer {
    error(StatusCode::BAD_REQUEST, "BadParameter", message, None)
}

fn forbidden(shared: &Shared, method: &Method, segments: &[&str]) -> Answer {
    let action = match (method, segments) {
        (&Method::PUT, _) => "setSecret/action",
        (&Method::GET, [_, _, "versions"]) => "readMetadata/action",
        (&Method::GET, ["deletedsecrets", ..]) => "readMetadata/action",
        (&Method::GET, _) => "getSecret/action",
        (&Method::DELETE, ["deletedsecrets", ..]) => "purge/action",
        (&Method::DELETE, _) => "delete",
        _ => "recover/action",
    };
    let vault = shared.base.trim_start_matches("https://").split('.').next().unwrap_or_default().to_owned();
    let secret = segments.get(1).copied().unwrap_or_default();
    let message = format!(
        "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role \
         definitions were changed recently, please observe propagation time.\r\nCaller: \
         appid=11111111-1111-1111-1111-111111111111;oid=22222222-2222-2222-2222-222222222222;iss=https://sts.windows.net/{TENANT}/\r\n\
         Action: 'Microsoft.KeyVault/vaults/secrets/{action}'\r\nResource: \
         '/subscriptions/33333333-3333-3333-3333-333333333333/resourcegroups/rg-test/providers/microsoft.keyvault/vaults/{vault}/secrets/{secret}'\r\n\
         Assignment: (not found)\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: {vault};location=westeurope\r\n"
    );
    error(StatusCode::FORBIDDEN, "Forbidden", &message, Some("ForbiddenByRbac"))
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Answer {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes()).into_owned().collect();

    // Challenge-based bearer authentication: no token (the SDK's first request) or a token
    // other than the test credential's gets 401 and the challenge.
    let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    match authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")) {
        None => return challenge(shared, "AKV10000: Request is missing a Bearer or PoP token."),
        Some(token) if token != shared.token => {
            return challenge(shared, "simulator: the bearer token is not the one the test credential issues")
        }
        Some(_) => {}
    }
    let fault = shared.faults.lock().unwrap().pop_front();
    let at_ms = chrono::Utc::now().timestamp_millis();
    shared.log.lock().unwrap().push(Logged {
        at_ms,
        method: method.to_string(),
        path: path.clone(),
        fault: fault.clone(),
    });
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

    match fault {
        Some(Fault::Throttle { retry_after_secs }) => {
            let mut answer = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Throttled",
                "Request was not processed because too many requests were received. Reason: A generic throttling \
                 rule was applied.",
                None,
            );
            answer.headers_mut().insert("retry-after", retry_after_secs.to_string().parse().unwrap());
            return answer;
        }
        Some(Fault::Unavailable) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The service is temporarily unavailable.",
                None,
            )
        }
        Some(Fault::Forbidden) => return forbidden(shared, &method, &segments),
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }

    match query.get("api-version") {
        Some(v) if API_VERSIONS.contains(&v.as_str()) => {}
        Some(v) => return bad_parameter(&format!("The specified version ({v}) is not recognized.")),
        None => return bad_parameter("The api-version query parameter is required."),
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return bad_parameter("could not read the request body"),
    };
    if let Some(name) = segments.get(1) {
        let valid = (1..=127).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return bad_parameter(&format!("Invalid secret name: {name}. The name must match ^[0-9a-zA-Z-]+$."));
        }
    }

    let mut vault = shared.vault.lock().unwrap();
    vault.settle();
    match (&method, segments.as_slice()) {
        (&Method::PUT, ["secrets", name]) => vault.set(shared, name, &body),
        (&Method::GET, ["secrets", name, "versions"]) => vault.versions(shared, name, &query),
        (&Method::GET, ["secrets", name]) => vault.get(shared, name, None),
        (&Method::GET, ["secrets", name, version]) => vault.get(shared, name, Some(version)),
        (&Method::DELETE, ["secrets", name]) => vault.delete(shared, name),
        (&Method::GET, ["deletedsecrets", name]) => vault.get_deleted(shared, name),
        (&Method::DELETE, ["deletedsecrets", name]) => vault.purge(shared, name),
        (&Method::POST, ["deletedsecrets", name, "recover"]) => vault.recover(shared, name),
        _ => bad_parameter(&format!("simulator: {method} {path} is not part of the simulated subset")),
    }
}

impl Vault {
    /// Drops purges that have completed.
    fn settle(&mut self) {
        let now = Instant::now();
        self.purging.retain(|_, until| *until > now);
    }

    fn being_deleted(&self, key: &str) -> bool {
        self.purging.contains_key(key) || self.deleted.get(key).is_some_and(|d| d.visible_at > Instant::now())
    }

    fn set(&mut self, shared: &Shared, name: &str, body: &[u8]) -> Answer {
        let key = name.to_ascii_lowercase();
        if self.being_deleted(&key) {
            return error(
                StatusCode::CONFLICT,
                "Conflict",
                &format!("Secret {name} is currently being deleted and cannot be re-created; retry later."),
                Some("ObjectIsBeingDeleted"),
            );
        }
        if self.deleted.contains_key(&key) {
            return error(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in \
                     this state, the secret can only be recovered or purged."
                ),
                Some("ObjectIsDeletedButRecoverable"),
            );
        }
        let Ok(Value::Object(params)) = serde_json::from_slice::<Value>(body) else {
            return bad_parameter("The request body is not a JSON object.");
        };
        let Some(Value::String(value)) = params.get("value") else {
            return bad_parameter("Property 'value' is required.");
        };
        if value.len() > 25 * 1024 {
            return bad_parameter("The secret value is larger than 25 KB.");
        }
        let tags = match params.get("tags") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(tags)) if tags.len() <= 15 && tags.values().all(Value::is_string) => tags.clone(),
            Some(_) => return bad_parameter("Tags must be at most 15 string values."),
        };
        let enabled = params.get("attributes").and_then(|a| a.get("enabled")).and_then(Value::as_bool).unwrap_or(true);
        let version = Version {
            id: format!("{:032x}", rand::random::<u128>()),
            value: value.clone(),
            content_type: params.get("contentType").and_then(Value::as_str).map(str::to_owned),
            tags,
            enabled,
            created: now_secs(),
        };
        let entry =
            self.secrets.entry(key).or_insert_with(|| SecretEntry { name: name.to_owned(), versions: Vec::new() });
        entry.versions.push(version);
        let answer = bundle(&shared.base, &entry.name, entry.versions.last().unwrap(), true);
        respond(StatusCode::OK, Some(answer))
    }

    fn get(&self, shared: &Shared, name: &str, version: Option<&str>) -> Answer {
        let Some(entry) = self.secrets.get(&name.to_ascii_lowercase()) else { return not_found(name) };
        let found = match version {
            None => entry.versions.last(),
            Some(id) => entry.versions.iter().find(|v| v.id.eq_ignore_ascii_case(id)),
        };
        match found {
            Some(v) if !v.enabled => error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Operation get is not allowed on a disabled secret.",
                Some("SecretDisabled"),
            ),
            Some(v) => respond(StatusCode::OK, Some(bundle(&shared.base, &entry.name, v, true))),
            None => not_found(&format!("{name}/{}", version.unwrap_or_default())),
        }
    }

    fn versions(&self, shared: &Shared, name: &str, query: &HashMap<String, String>) -> Answer {
        let Some(entry) = self.secrets.get(&name.to_ascii_lowercase()) else { return not_found(name) };
        let page_size = match query.get("maxresults") {
            Some(n) => match n.parse::<usize>() {
                Ok(n) if (1..=25).contains(&n) => n,
                _ => return bad_parameter("maxresults must be between 1 and 25."),
            },
            None => shared.options.page_size,
        };
        let skip = query.get("$skiptoken").and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
        let mut ordered: Vec<&Version> = entry.versions.iter().collect();
        ordered.sort_by(|a, b| a.id.cmp(&b.id));
        let page: Vec<Value> =
            ordered.iter().skip(skip).take(page_size).map(|v| bundle(&shared.base, &entry.name, v, false)).collect();
        let next = skip + page.len();
        let next_link = if next < ordered.len() {
            Value::String(format!(
                "{}/secrets/{}/versions?api-version=2025-07-01&$skiptoken={next}&maxresults={page_size}",
                shared.base, entry.name
            ))
        } else {
            Value::Null
        };
        respond(StatusCode::OK, Some(json!({"value": page, "nextLink": next_link})))
    }

    fn delete(&mut self, shared: &Shared, name: &str) -> Answer {
        let key = name.to_ascii_lowercase();
        let Some(entry) = self.secrets.remove(&key) else { return not_found(name) };
        let deleted = DeletedEntry {
            entry,
            deleted_date: now_secs(),
            visible_at: Instant::now() + shared.options.deletion_delay,
        };
        let answer = deleted_bundle(&shared.base, &deleted);
        self.deleted.insert(key, deleted);
        respond(StatusCode::OK, Some(answer))
    }

    fn get_deleted(&self, shared: &Shared, name: &str) -> Answer {
        match self.deleted.get(&name.to_ascii_lowercase()) {
            Some(d) if d.visible_at <= Instant::now() => respond(StatusCode::OK, Some(deleted_bundle(&shared.base, d))),
            _ => error(StatusCode::NOT_FOUND, "SecretNotFound", &format!("Deleted Secret not found: {name}"), None),
        }
    }

    fn purge(&mut self, shared: &Shared, name: &str) -> Answer {
        let key = name.to_ascii_lowercase();
        match self.deleted.get(&key) {
            None => error(StatusCode::NOT_FOUND, "SecretNotFound", &format!("Deleted Secret not found: {name}"), None),
            Some(d) if d.visible_at > Instant::now() => error(
                StatusCode::CONFLICT,
                "Conflict",
                "Secret is currently being deleted.",
                Some("ObjectIsBeingDeleted"),
            ),
            Some(_) => {
                self.deleted.remove(&key);
                self.purging.insert(key, Instant::now() + shared.options.purge_delay);
                respond(StatusCode::NO_CONTENT, None)
            }
        }
    }

    fn recover(&mut self, shared: &Shared, name: &str) -> Answer {
        let key = name.to_ascii_lowercase();
        match self.deleted.get(&key) {
            Some(d) if d.visible_at <= Instant::now() => {
                let d = self.deleted.remove(&key).unwrap();
                let answer = bundle(&shared.base, &d.entry.name, d.entry.versions.last().unwrap(), false);
                self.secrets.insert(key, d.entry);
                respond(StatusCode::OK, Some(answer))
            }
            _ => error(StatusCode::NOT_FOUND, "SecretNotFound", &format!("Deleted Secret not found: {name}"), None),
        }
    }
}

fn attributes(v: &Version) -> Value {
    json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.created,
        "recoveryLevel": RECOVERY_LEVEL,
        "recoverableDays": RECOVERABLE_DAYS,
    })
}

/// A secret bundle (with its value) or a secret item (without).
fn bundle(base: &str, name: &str, v: &Version, with_value: bool) -> Value {
    let mut out = BTreeMap::new();
    out.insert("id", json!(format!("{base}/secrets/{name}/{}", v.id)));
    out.insert("attributes", attributes(v));
    if with_value {
        out.insert("value", json!(v.value));
    }
    if let Some(content_type) = &v.content_type {
        out.insert("contentType", json!(content_type));
    }
    if !v.tags.is_empty() {
        out.insert("tags", Value::Object(v.tags.clone()));
    }
    json!(out)
}

fn deleted_bundle(base: &str, d: &DeletedEntry) -> Value {
    let latest = d.entry.versions.last().expect("a secret has at least one version");
    let mut out = bundle(base, &d.entry.name, latest, false);
    let object = out.as_object_mut().unwrap();
    object.insert("recoveryId".into(), json!(format!("{base}/deletedsecrets/{}", d.entry.name)));
    object.insert("deletedDate".into(), json!(d.deleted_date));
    object.insert("scheduledPurgeDate".into(), json!(d.deleted_date + RECOVERABLE_DAYS * 86_400));
    out
}
