//! Settings: every app setting the product reads, typed and validated in one place.
//!
//! Values come from the environment (which is what Functions app settings are); when a
//! `local.settings.json` is present its `Values` fill in what the environment lacks.
//! Parsing never stops at the first problem: [`Settings::load`] collects every invalid value,
//! and [`Settings::missing`] lists what a feature still needs, so `tcbridge check` can say
//! everything at once. Secret values never appear in a problem, a log line or `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use url::Url;

use crate::schedule::Schedule;
use crate::secret::SecretString;

pub const DEFAULT_TRUECONTEXT_BASE_URL: &str = "https://api.prontoforms.com/api/1.1";
pub const DEFAULT_SYNC_SCHEDULE: &str = "0 */30 * * * *";
pub const DEFAULT_LOCAL_STORE_PATH: &str = ".tcbridge";
pub const DEFAULT_INCOMING_QUEUE: &str = "incoming-submissions";

/// One thing wrong with the configuration, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: String,
    pub message: String,
    pub example: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)?;
        if let Some(example) = &self.example {
            write!(f, " (for example: {example})")?;
        }
        Ok(())
    }
}

/// The raw settings: environment first, then `local.settings.json` `Values`.
#[derive(Clone, Default)]
pub struct RawSettings {
    values: BTreeMap<String, String>,
    /// The names whose value came from the local settings file, not the environment.
    from_file: std::collections::BTreeSet<String>,
    /// Problems found while reading the sources themselves (an unreadable settings file).
    source_problems: Vec<Problem>,
}

impl fmt::Debug for RawSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: values may be secrets.
        f.debug_struct("RawSettings").field("names", &self.values.keys().collect::<Vec<_>>()).finish()
    }
}

impl RawSettings {
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            values: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            from_file: Default::default(),
            source_problems: vec![],
        }
    }

    /// The process environment, completed by the `Values` of the local settings file if it exists.
    pub fn from_environment(local_settings: Option<&Path>) -> Self {
        let mut raw = Self::from_pairs(std::env::vars());
        let path = local_settings.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("local.settings.json"));
        let explicit = local_settings.is_some();
        match std::fs::read_to_string(&path) {
            Ok(text) => raw.fill_from_local_settings(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(e) => raw.source_problems.push(Problem {
                setting: path.display().to_string(),
                message: format!("cannot read the local settings file: {e}"),
                example: None,
            }),
        }
        raw
    }

    fn fill_from_local_settings(&mut self, path: &Path, text: &str) {
        let problem = |message: String| Problem { setting: path.display().to_string(), message, example: None };
        let doc: serde_json::Value = match serde_json::from_str(text) {
            Ok(doc) => doc,
            Err(e) => return self.source_problems.push(problem(format!("not valid JSON: {e}"))),
        };
        if doc.get("IsEncrypted").and_then(|v| v.as_bool()) == Some(true) {
            return self.source_problems.push(problem(
                "IsEncrypted is true; decrypt it with `func settings decrypt` or write the values in plain".into(),
            ));
        }
        let Some(values) = doc.get("Values").and_then(|v| v.as_object()) else {
            return self.source_problems.push(problem("has no \"Values\" object".into()));
        };
        for (name, value) in values {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => {
                    self.source_problems.push(problem(format!("Values.{name} must be a string")));
                    continue;
                }
            };
            if !self.values.contains_key(name) {
                self.values.insert(name.clone(), text);
                self.from_file.insert(name.clone());
            }
        }
    }

    /// Sets `name`, whatever the environment or the file said (the demo's own settings).
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_owned(), value.to_owned());
    }

    /// Sets `name` unless it is already set.
    pub fn set_default(&mut self, name: &str, value: &str) {
        if self.get(name).is_none() {
            self.set(name, value);
        }
    }

    /// Sets `name` unless the environment set it: a value from the local settings file (a
    /// template committed for the Functions tools) does not count as the user's choice.
    pub fn set_unless_environment(&mut self, name: &str, value: &str) {
        if self.get(name).is_none() || self.from_file.contains(name) {
            self.set(name, value);
            self.from_file.remove(name);
        }
    }

    /// A setting's value; blank counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthProvider {
    Entra,
    B2c,
    Oidc,
    Oauth2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    AuthorizationCode,
    ClientCredentials,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrueContextAuth {
    Bearer,
    Basic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookAuth {
    /// A bearer JWT from an OpenID Connect issuer (`jwt`, alias `entra`).
    Jwt,
    Basic,
    Header,
}

/// Where alerts are posted, and in which form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertWebhook {
    pub url: Url,
    pub format: AlertFormat,
}

/// How alerts are posted to `ALERT_WEBHOOK_URL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertFormat {
    /// `{"text": ...}`: Slack and classic Teams incoming webhooks.
    Text,
    /// A Teams Workflows message carrying an Adaptive Card.
    AdaptiveCard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON lines when running under the Functions host, readable text otherwise.
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub provider: OAuthProvider,
    pub authority: Option<Url>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub client_certificate_path: Option<PathBuf>,
    /// Use a managed-identity token as a federated client assertion (Entra only).
    pub federated_credential: bool,
    /// The scopes from `OAUTH_SCOPES`, as given; the flow adds `openid offline_access`.
    pub scopes: Vec<String>,
    pub redirect_uri: Option<Url>,
    pub grant: OAuthGrant,
    /// Explicit endpoints for `OAUTH_PROVIDER=oauth2` (and overrides for the others).
    pub authorize_endpoint: Option<Url>,
    pub token_endpoint: Option<Url>,
    pub refresh_endpoint: Option<Url>,
    pub allowed_tenants: Vec<String>,
    pub allowed_users: Vec<String>,
    /// Non-standard servers: the authorization response parameter carrying the code
    /// (`OAUTH_CODE_PARAM`, e.g. `authorization_code`) and the refresh request parameter
    /// carrying the refresh token (`OAUTH_REFRESH_TOKEN_PARAM`, e.g. `token`); see
    /// docs/authorization-servers.md, "A custom OAuth 2.0 server without discovery".
    pub code_param: String,
    pub refresh_token_param: String,
}

#[derive(Debug, Clone)]
pub struct TrueContextSettings {
    pub base_url: Url,
    pub auth: TrueContextAuth,
    pub api_key_id: Option<String>,
    pub api_key_secret: Option<SecretString>,
    /// With `basic`: the connection the configured key syncs as (`TRUECONTEXT_CONNECTION`).
    pub connection: String,
    /// Simultaneous calls, cluster-wide (`TRUECONTEXT_CONCURRENCY`; TrueContext allows 3 per key).
    pub concurrency: u32,
    /// Calls per connection per UTC day (`TRUECONTEXT_DAILY_CALL_BUDGET`).
    pub daily_call_budget: u64,
    /// One call's time limit (`TRUECONTEXT_TIMEOUT_SECONDS`).
    pub timeout: Duration,
    /// The largest answer read (`TRUECONTEXT_MAX_RESPONSE_BYTES`); documents carry media inline.
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct AzureStorageSettings {
    /// `AzureWebJobsStorage` as a connection string (it may hold an account key).
    pub connection_string: Option<SecretString>,
    pub account_name: Option<String>,
    pub table_service_uri: Option<Url>,
    pub blob_service_uri: Option<Url>,
    pub queue_service_uri: Option<Url>,
    /// A user-assigned managed identity's client id (`AZURE_CLIENT_ID`).
    pub managed_identity_client_id: Option<String>,
}

impl AzureStorageSettings {
    /// True when the settings point at a real account, not only at the local emulator the
    /// Functions template names by default.
    fn names_a_cloud_account(&self) -> bool {
        let real_connection = self
            .connection_string
            .as_ref()
            .is_some_and(|c| !c.expose().trim().eq_ignore_ascii_case("UseDevelopmentStorage=true"));
        real_connection
            || self.account_name.is_some()
            || self.table_service_uri.is_some()
            || self.blob_service_uri.is_some()
            || self.queue_service_uri.is_some()
    }

    fn is_configured(&self) -> bool {
        self.connection_string.is_some() || self.names_a_cloud_account()
    }
}

/// How the embedded store makes a commit durable (SQLite's `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalSync {
    /// fsync at every commit: survives power loss.
    Full,
    /// fsync at checkpoints: survives the process being killed, not power loss.
    Normal,
}

/// Which storage backend: the embedded one, or Azure Storage with Key Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Local,
    Azure,
}

impl StoreKind {
    /// The setting's own spelling (`STORE=local`), as status and start-up lines show it.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::Azure => "azure",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub kind: StoreKind,
    pub local_path: PathBuf,
    pub local_key: Option<SecretString>,
    /// `LOCAL_STORE_SYNC`: `full` (default: a commit survives power loss) or `normal` (it
    /// survives the process being killed, not the machine losing power; fewer fsyncs).
    pub local_sync: LocalSync,
    pub azure: AzureStorageSettings,
    pub keyvault_uri: Option<Url>,
    /// `TLS_EXTRA_CA_FILE`: a PEM bundle the Azure clients (Key Vault, Blob, Queue, the
    /// managed-identity endpoint) trust besides the system roots. Only for local stand-ins
    /// (a simulator's test CA): refused unless every Azure endpoint is on this machine.
    pub tls_extra_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub auth: Option<WebhookAuth>,
    pub basic_username: Option<String>,
    /// `WEBHOOK_BASIC_PASSWORD`: one value, or two (comma-separated) during a rotation.
    pub basic_passwords: Vec<SecretString>,
    pub header_name: Option<String>,
    /// `WEBHOOK_HEADER_VALUE`: one value, or two during a rotation.
    pub header_values: Vec<SecretString>,
    /// For `jwt`: the issuer whose tokens are accepted (`WEBHOOK_JWT_ISSUER`; by default the
    /// Entra tenant's v2 issuer, or `OAUTH_AUTHORITY` for other providers).
    pub jwt_issuer: Option<Url>,
    /// For `jwt`: the audience the caller's token must carry (`WEBHOOK_AUDIENCE`).
    pub audience: Option<String>,
    /// For `jwt`: a role the token's `roles` must hold (`WEBHOOK_REQUIRED_ROLE`).
    pub required_role: Option<String>,
    /// For `jwt`: the client ids (`azp` or `appid`) allowed to call (`WEBHOOK_ALLOWED_CLIENT_IDS`).
    pub allowed_client_ids: Vec<String>,
    /// For `jwt`: per connection, the only client ids that may push to it
    /// (`WEBHOOK_CONNECTION_CLIENT_IDS`: `contoso=id1 id2;fabrikam=id3`).
    pub connection_client_ids: std::collections::BTreeMap<String, Vec<String>>,
    /// For `basic` / `header`: per connection, the only password or header value that may push
    /// to it, in place of the shared one (`WEBHOOK_CONNECTION_SECRETS`: `contoso=…;fabrikam=…`).
    /// A credential for one TrueContext organisation then cannot write into another's.
    pub connection_secrets: std::collections::BTreeMap<String, SecretString>,
    /// For `jwt`: the longest a token may live, `exp` − `iat` (`WEBHOOK_MAX_TOKEN_LIFETIME_SECONDS`).
    pub max_token_lifetime: Duration,
    /// `WEBHOOK_MAX_BODY_BYTES`: the largest push accepted (413 above).
    pub max_body_bytes: usize,
    /// `WEBHOOK_ID_FIELD`: where a custom template body carries the submission id (a dotted
    /// path such as `submission.id`), besides `identifier` and `dataRecord.identifier`.
    pub id_field: Option<String>,
    /// `WEBHOOK_RECOVERY_SECONDS`: a stored push not yet queued after this long is queued by the
    /// recovery pass (its request died between the two writes).
    pub recovery_after: Duration,
    /// `WEBHOOK_MAX_BACKLOG_SECONDS`: status needs attention when a push has waited longer than
    /// this to be processed (processing stopped, or keeps failing).
    pub max_backlog_age: Duration,
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub refresh_margin: Duration,
    /// Azure AD B2C's sliding refresh-token window and how early to warn before it closes.
    pub b2c_refresh_window: Duration,
    pub b2c_reauth_warning: Duration,
    /// `ALERT_WEBHOOK_URL` and `ALERT_WEBHOOK_FORMAT`: where alerts are posted.
    pub alert_webhook: Option<AlertWebhook>,
    /// Each token-endpoint call is cut off after this long.
    pub endpoint_timeout: Duration,
    /// How long a refresh lease lasts; a crashed holder blocks others for at most this long.
    pub refresh_lease: Duration,
    /// A connection whose last refresh is older than this is refreshed by the sync timer even
    /// when its access token is still valid (Entra refresh tokens die after 90 idle days).
    pub keepalive: Duration,
}

#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub incoming: String,
    /// Deliveries before a message moves to `<queue>-poison` (the host's `maxDequeueCount`).
    pub max_dequeue_count: u32,
    pub visibility_timeout: Duration,
    /// First retry delay after a failed delivery (standalone mode); doubles each time.
    pub retry_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub oauth: OAuthSettings,
    pub truecontext: TrueContextSettings,
    pub store: StoreSettings,
    pub sync_schedule: Schedule,
    pub webhook: WebhookSettings,
    pub function_key: Option<SecretString>,
    pub tokens: TokenSettings,
    pub queues: QueueSettings,
    pub landing: LandingSettings,
    pub sync: SyncSettings,
    pub max_request_body_bytes: usize,
    /// `STANDALONE_MAX_CONNECTIONS`: connections a standalone server serves at once (more wait
    /// in the listen backlog).
    pub max_connections: usize,
    /// `STANDALONE_MAX_CONNECTIONS_PER_ADDRESS`: connections one address may hold at once
    /// (standalone server; behind a proxy of your own, raise it: every connection is the proxy's).
    pub max_connections_per_address: usize,
    /// `TRUSTED_PROXY_HOPS`: how many proxies in front of the bridge append to
    /// `X-Forwarded-For`; the caller is the hop the nearest of them appended. Unset: one behind
    /// the Functions host (its front end), none standalone (the connection's own address).
    pub trusted_proxy_hops: Option<usize>,
    /// `STANDALONE_HEADER_TIMEOUT_SECONDS`: a request's head must arrive within this, and an
    /// idle keep-alive connection is closed after it (standalone server).
    pub header_timeout: Duration,
    /// `STANDALONE_BODY_TIMEOUT_SECONDS`: a request's body must arrive within this (408).
    pub body_timeout: Duration,
    pub log_format: LogFormat,
    /// The values of the secret settings that are set (see [`Self::secret_values`]).
    secrets: Vec<SecretString>,
}

/// Collects problems while parsing, so all of them are reported together.
struct Parser<'a> {
    raw: &'a RawSettings,
    problems: Vec<Problem>,
    /// Every secret value read, so the log scrubber can be told of each one.
    secrets: Vec<SecretString>,
}

impl<'a> Parser<'a> {
    fn problem(&mut self, setting: &str, message: impl Into<String>, example: &str) {
        self.problems.push(Problem {
            setting: setting.to_owned(),
            message: message.into(),
            example: (!example.is_empty()).then(|| example.to_owned()),
        });
    }

    fn text(&self, name: &str) -> Option<String> {
        self.raw.get(name).map(str::to_owned)
    }

    /// A secret setting; only the names in [`Settings::SECRET_SETTINGS`] are read this way.
    fn secret(&mut self, name: &str) -> Option<SecretString> {
        debug_assert!(Settings::SECRET_SETTINGS.contains(&name), "{name} is not listed in SECRET_SETTINGS");
        let value = self.raw.get(name).map(SecretString::new)?;
        self.secrets.push(value.clone());
        Some(value)
    }

    fn list(&self, name: &str, separators: &[char]) -> Vec<String> {
        self.raw
            .get(name)
            .map(|v| v.split(separators).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// An absolute `https` URL (or `http` to a loopback host, for local servers and tests).
    fn url(&mut self, name: &str, example: &str) -> Option<Url> {
        let text = self.raw.get(name)?;
        match Url::parse(text) {
            Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&url)) => {
                if url.username() != "" || url.password().is_some() {
                    self.problem(name, "must not carry a user name or password", example);
                    return None;
                }
                Some(url)
            }
            Ok(url) if url.scheme() == "http" => {
                self.problem(name, "must use https (plain http is allowed only for localhost)", example);
                None
            }
            Ok(_) | Err(_) => {
                self.problem(name, format!("{text:?} is not an absolute https URL"), example);
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, name: &str, default: T, options: &[(&str, T)]) -> T {
        let Some(text) = self.raw.get(name) else { return default };
        if let Some((_, value)) = options.iter().find(|(key, _)| key.eq_ignore_ascii_case(text)) {
            return *value;
        }
        let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
        self.problem(
            name,
            format!("{text:?} is not one of {}", names.join(", ")),
            names.first().copied().unwrap_or(""),
        );
        default
    }

    fn number<T: FromStr + Copy + PartialOrd + fmt::Display>(&mut self, name: &str, default: T, min: T, max: T) -> T {
        let Some(text) = self.raw.get(name) else { return default };
        match text.parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            _ => {
                self.problem(
                    name,
                    format!("{text:?} must be a whole number from {min} to {max}"),
                    &default.to_string(),
                );
                default
            }
        }
    }

    fn flag(&mut self, name: &str) -> bool {
        match self.raw.get(name).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") | Some("0") | Some("no") => false,
            Some("true") | Some("1") | Some("yes") => true,
            Some(other) => {
                let other = other.to_owned();
                self.problem(name, format!("{other:?} must be true or false"), "true");
                false
            }
        }
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl Settings {
    /// Parses every setting. On any invalid value, returns all the problems found.
    pub fn load(raw: &RawSettings) -> Result<Settings, Vec<Problem>> {
        let (settings, problems) = Self::parse(raw);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems)
        }
    }

    /// Every setting, with the default in place of each invalid value, and the invalid values
    /// (what `check` needs to also say what is missing while something is wrong).
    pub fn parse(raw: &RawSettings) -> (Settings, Vec<Problem>) {
        let mut p = Parser { raw, problems: raw.source_problems.clone(), secrets: Vec::new() };
        let settings = Settings {
            oauth: parse_oauth(&mut p),
            truecontext: parse_truecontext(&mut p),
            store: parse_store(&mut p),
            sync_schedule: parse_schedule(&mut p),
            webhook: parse_webhook(&mut p),
            function_key: parse_function_key(&mut p),
            tokens: TokenSettings {
                refresh_margin: Duration::from_secs(p.number("TOKEN_REFRESH_MARGIN_SECONDS", 600, 30, 86_400)),
                b2c_refresh_window: Duration::from_secs(86_400 * p.number("B2C_REFRESH_WINDOW_DAYS", 90u64, 1, 365)),
                b2c_reauth_warning: Duration::from_secs(86_400 * p.number("B2C_REAUTH_WARNING_DAYS", 14u64, 1, 90)),
                alert_webhook: parse_alert_webhook(&mut p),
                endpoint_timeout: Duration::from_secs(p.number("TOKEN_ENDPOINT_TIMEOUT_SECONDS", 30, 1, 120)),
                refresh_lease: Duration::from_secs(p.number("TOKEN_REFRESH_LEASE_SECONDS", 90, 5, 900)),
                keepalive: Duration::from_secs(3600 * p.number("TOKEN_KEEPALIVE_HOURS", 20u64, 1, 24)),
            },
            queues: parse_queues(&mut p),
            landing: parse_landing(&mut p),
            sync: SyncSettings {
                backfill: Duration::from_secs(86_400 * p.number("SYNC_BACKFILL_DAYS", 30u64, 1, 365)),
                overlap: Duration::from_secs(p.number("SYNC_OVERLAP_SECONDS", 600, 0, 86_400)),
                settle: Duration::from_secs(p.number("SYNC_SETTLE_SECONDS", 120, 0, 86_400)),
                max_run: Duration::from_secs(p.number("SYNC_MAX_RUN_SECONDS", 480, 10, 86_400)),
                form_ids: p.list("SYNC_FORM_IDS", &[',', ' ']),
                formspace_ids: p.list("SYNC_FORMSPACE_IDS", &[',', ' ']),
                trust_pushes: p.flag("SYNC_TRUST_PUSHES"),
            },
            max_request_body_bytes: p.number("MAX_REQUEST_BODY_BYTES", 16 * 1024 * 1024, 1024, 100 * 1024 * 1024),
            max_connections: p.number("STANDALONE_MAX_CONNECTIONS", 256, 1, 65_536),
            max_connections_per_address: p.number("STANDALONE_MAX_CONNECTIONS_PER_ADDRESS", 16, 1, 65_536),
            trusted_proxy_hops: p
                .raw
                .get("TRUSTED_PROXY_HOPS")
                .is_some()
                .then(|| p.number("TRUSTED_PROXY_HOPS", 0, 0, 10)),
            header_timeout: Duration::from_secs(p.number("STANDALONE_HEADER_TIMEOUT_SECONDS", 10, 1, 300)),
            body_timeout: Duration::from_secs(p.number("STANDALONE_BODY_TIMEOUT_SECONDS", 30, 1, 3600)),
            log_format: p.choice(
                "LOG_FORMAT",
                LogFormat::Auto,
                &[("auto", LogFormat::Auto), ("json", LogFormat::Json), ("text", LogFormat::Text)],
            ),
            secrets: Vec::new(),
        };
        let mut settings = Settings { secrets: std::mem::take(&mut p.secrets), ..settings };
        if raw.get("WEBHOOK_MAX_BODY_BYTES").is_none() {
            // The default never exceeds what the front doors accept at all.
            settings.webhook.max_body_bytes = settings.webhook.max_body_bytes.min(settings.max_request_body_bytes);
        }
        cross_checks(&mut p, &settings);
        (settings, p.problems)
    }

    /// What the configured features still need. The server runs without these (status,
    /// local development), but the feature they name cannot work until they are set.
    pub fn missing(&self) -> Vec<Problem> {
        // With an API key (TRUECONTEXT_AUTH=basic) nothing needs consent: the OAuth settings
        // are only checked once one of them is set.
        let o = &self.oauth;
        let oauth_wanted = self.truecontext.auth == TrueContextAuth::Bearer
            || o.client_id.is_some()
            || o.authority.is_some()
            || o.grant == OAuthGrant::ClientCredentials;
        let mut out = if oauth_wanted { self.missing_oauth() } else { Vec::new() };
        let mut need = |setting: &str, message: &str, example: &str| {
            out.push(Problem { setting: setting.into(), message: message.into(), example: Some(example.into()) })
        };
        if self.truecontext.auth == TrueContextAuth::Basic
            && (self.truecontext.api_key_id.is_none() || self.truecontext.api_key_secret.is_none())
        {
            need(
                "TRUECONTEXT_API_KEY_ID",
                "and TRUECONTEXT_API_KEY_SECRET are required with TRUECONTEXT_AUTH=basic",
                "an API key id from TrueContext",
            );
        }
        if self.webhook.auth.is_none() {
            need("WEBHOOK_AUTH", "is not set; the webhook refuses every push until it is", "basic");
        }
        out
    }

    /// What the OAuth client still lacks (consent and token refresh need all of it).
    pub fn missing_oauth(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut need = |setting: &str, message: &str, example: &str| {
            out.push(Problem { setting: setting.into(), message: message.into(), example: Some(example.into()) })
        };
        let o = &self.oauth;
        if o.client_id.is_none() {
            need("OAUTH_CLIENT_ID", "is not set; no connection can be made", "00000000-0000-0000-0000-000000000000");
        }
        let has_endpoints = o.authorize_endpoint.is_some() && o.token_endpoint.is_some();
        if o.authority.is_none() && !(o.provider == OAuthProvider::Oauth2 && has_endpoints) {
            let example = match o.provider {
                OAuthProvider::Entra => "https://login.microsoftonline.com/<tenant-id>/v2.0",
                OAuthProvider::B2c => "https://<tenant>.b2clogin.com/<tenant>.onmicrosoft.com/<policy>/v2.0",
                OAuthProvider::Oidc => "https://issuer.example.com",
                OAuthProvider::Oauth2 => "https://auth.example.com",
            };
            need("OAUTH_AUTHORITY", "is not set; the authorization server is unknown", example);
        }
        if o.provider == OAuthProvider::Oauth2 && !has_endpoints {
            need(
                "OAUTH_AUTHORIZE_ENDPOINT",
                "and OAUTH_TOKEN_ENDPOINT are required with OAUTH_PROVIDER=oauth2 (no discovery)",
                "https://auth.example.com/oauth/authorize",
            );
        }
        if o.grant == OAuthGrant::AuthorizationCode && o.redirect_uri.is_none() {
            need(
                "OAUTH_REDIRECT_URI",
                "is not set; the sign-in cannot return here",
                "https://<app>.azurewebsites.net/api/callback",
            );
        }
        // Entra and B2C web apps are confidential clients; other servers may register public
        // clients (a custom OAuth 2.0 server may issue no secret), which then send only client_id.
        let confidential = matches!(o.provider, OAuthProvider::Entra | OAuthProvider::B2c);
        if confidential && o.client_secret.is_none() && o.client_certificate_path.is_none() && !o.federated_credential {
            need(
                "OAUTH_CLIENT_SECRET",
                "is not set, and neither OAUTH_CLIENT_CERTIFICATE_PATH nor OAUTH_FEDERATED_CREDENTIAL is; the app cannot authenticate to the token endpoint",
                "a client secret from the app registration",
            );
        }
        out
    }

    /// The values of every secret setting that is set, for the log scrubber.
    pub fn secret_values(&self) -> &[SecretString] {
        &self.secrets
    }

    /// The setting names whose values are secret: the only ones read as secrets, never
    /// printed, and registered with the log scrubber.
    pub const SECRET_SETTINGS: &'static [&'static str] = &[
        "OAUTH_CLIENT_SECRET",
        "TRUECONTEXT_API_KEY_SECRET",
        "AzureWebJobsStorage",
        "LOCAL_STORE_KEY",
        "WEBHOOK_BASIC_PASSWORD",
        "WEBHOOK_HEADER_VALUE",
        "WEBHOOK_CONNECTION_SECRETS",
        "FUNCTION_KEY",
    ];
}

fn parse_oauth(p: &mut Parser<'_>) -> OAuthSettings {
    let provider = p.choice(
        "OAUTH_PROVIDER",
        OAuthProvider::Entra,
        &[
            ("entra", OAuthProvider::Entra),
            ("b2c", OAuthProvider::B2c),
            ("oidc", OAuthProvider::Oidc),
            ("oauth2", OAuthProvider::Oauth2),
        ],
    );
    let grant = p.choice(
        "OAUTH_GRANT",
        OAuthGrant::AuthorizationCode,
        &[("authorization_code", OAuthGrant::AuthorizationCode), ("client_credentials", OAuthGrant::ClientCredentials)],
    );
    let scopes = p.list("OAUTH_SCOPES", &[' ', '\t', '\n']);
    if let Some(bad) = scopes.iter().find(|s| s.chars().any(|c| c.is_control() || c == '"' || c == '\\')) {
        let bad = bad.clone();
        p.problem("OAUTH_SCOPES", format!("{bad:?} is not a valid scope token"), "api://truecontext/.default");
    }
    let client_certificate_path = p.text("OAUTH_CLIENT_CERTIFICATE_PATH").map(PathBuf::from);
    if let Some(path) = &client_certificate_path {
        if !path.is_file() {
            let shown = path.display().to_string();
            p.problem(
                "OAUTH_CLIENT_CERTIFICATE_PATH",
                format!("{shown} is not a readable file"),
                "/home/site/certs/client.pem",
            );
        }
    }
    OAuthSettings {
        provider,
        authority: p.url("OAUTH_AUTHORITY", "https://login.microsoftonline.com/<tenant-id>/v2.0"),
        client_id: p.text("OAUTH_CLIENT_ID"),
        client_secret: p.secret("OAUTH_CLIENT_SECRET"),
        client_certificate_path,
        federated_credential: p.flag("OAUTH_FEDERATED_CREDENTIAL"),
        scopes,
        redirect_uri: p.url("OAUTH_REDIRECT_URI", "https://<app>.azurewebsites.net/api/callback"),
        grant,
        authorize_endpoint: p.url("OAUTH_AUTHORIZE_ENDPOINT", "https://auth.example.com/oauth/authorize"),
        token_endpoint: p.url("OAUTH_TOKEN_ENDPOINT", "https://auth.example.com/oauth/token"),
        refresh_endpoint: p.url("OAUTH_REFRESH_ENDPOINT", "https://auth.example.com/oauth/refresh"),
        allowed_tenants: p.list("ALLOWED_TENANTS", &[',', ' ', ';']),
        allowed_users: allowed_users(p),
        code_param: parameter_name(p, "OAUTH_CODE_PARAM", "code"),
        refresh_token_param: parameter_name(p, "OAUTH_REFRESH_TOKEN_PARAM", "refresh_token"),
    }
}

fn parameter_name(p: &mut Parser<'_>, name: &str, default: &str) -> String {
    let value = p.text(name).unwrap_or_else(|| default.to_owned());
    if value.is_empty() || value.len() > 64 || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        p.problem(name, format!("{value:?} is not a parameter name"), default);
        return default.to_owned();
    }
    value
}

fn parse_truecontext(p: &mut Parser<'_>) -> TrueContextSettings {
    let base_url = if p.raw.get("TRUECONTEXT_BASE_URL").is_some() {
        p.url("TRUECONTEXT_BASE_URL", DEFAULT_TRUECONTEXT_BASE_URL)
    } else {
        None
    };
    TrueContextSettings {
        base_url: base_url.unwrap_or_else(|| Url::parse(DEFAULT_TRUECONTEXT_BASE_URL).expect("default URL parses")),
        auth: p.choice(
            "TRUECONTEXT_AUTH",
            TrueContextAuth::Bearer,
            &[("bearer", TrueContextAuth::Bearer), ("basic", TrueContextAuth::Basic)],
        ),
        api_key_id: p.text("TRUECONTEXT_API_KEY_ID"),
        api_key_secret: p.secret("TRUECONTEXT_API_KEY_SECRET"),
        connection: parse_connection_id(p, "TRUECONTEXT_CONNECTION"),
        concurrency: p.number("TRUECONTEXT_CONCURRENCY", 3, 1, 3),
        // TrueContext allows about 2,500 a day per team; a plan with more may set more (a 402 stops
        // the sync whatever this says).
        daily_call_budget: p.number("TRUECONTEXT_DAILY_CALL_BUDGET", 2000u64, 1, 1_000_000),
        timeout: Duration::from_secs(p.number("TRUECONTEXT_TIMEOUT_SECONDS", 30, 1, 300)),
        max_response_bytes: p.number("TRUECONTEXT_MAX_RESPONSE_BYTES", 64 * 1024 * 1024, 64 * 1024, 512 * 1024 * 1024),
    }
}

/// A connection id setting: 1-64 letters, digits, `-`, `_`, `.` (as connection ids are).
fn parse_connection_id(p: &mut Parser<'_>, name: &str) -> String {
    let id = p.text(name).unwrap_or_else(|| "default".to_owned());
    if !crate::naming::is_connection_id(&id) {
        p.problem(name, format!("{id:?} must be {}", crate::naming::CONNECTION_ID_RULE), "default");
    }
    id
}

fn parse_store(p: &mut Parser<'_>) -> StoreSettings {
    let azure = AzureStorageSettings {
        connection_string: p.secret("AzureWebJobsStorage"),
        account_name: p.text("AzureWebJobsStorage__accountName"),
        table_service_uri: p.url("AzureWebJobsStorage__tableServiceUri", "https://<account>.table.core.windows.net"),
        blob_service_uri: p.url("AzureWebJobsStorage__blobServiceUri", "https://<account>.blob.core.windows.net"),
        queue_service_uri: p.url("AzureWebJobsStorage__queueServiceUri", "https://<account>.queue.core.windows.net"),
        managed_identity_client_id: p.text("AZURE_CLIENT_ID"),
    };
    if let Some(conn) = &azure.connection_string {
        if !looks_like_connection_string(conn.expose()) {
            p.problem(
                "AzureWebJobsStorage",
                "is not a storage connection string (the value is not shown)",
                "UseDevelopmentStorage=true, or the storage account's connection string from the portal",
            );
        }
    }
    let default_kind = if azure.names_a_cloud_account() { StoreKind::Azure } else { StoreKind::Local };
    let problems_before = p.problems.len();
    let kind = p.choice("STORE", default_kind, &[("local", StoreKind::Local), ("azure", StoreKind::Azure)]);
    // An unreadable STORE is reported once; what azure would need is not piled on top.
    let store_readable = p.problems.len() == problems_before;
    let local_key = p.secret("LOCAL_STORE_KEY");
    if let Some(key) = &local_key {
        use base64::Engine;
        let valid = base64::engine::general_purpose::STANDARD.decode(key.expose()).is_ok_and(|k| k.len() == 32);
        if !valid {
            p.problem(
                "LOCAL_STORE_KEY",
                "must be the base64 of exactly 32 bytes (the value is not shown)",
                "the output of `openssl rand -base64 32`",
            );
        }
    }
    let keyvault_uri = p.url("KEYVAULT_URI", "https://<vault-name>.vault.azure.net");
    if kind == StoreKind::Azure && store_readable {
        if !azure.is_configured() {
            p.problem(
                "AzureWebJobsStorage",
                "STORE=azure needs a storage connection string or AzureWebJobsStorage__accountName (managed identity)",
                "UseDevelopmentStorage=true",
            );
        }
        if keyvault_uri.is_none() && p.raw.get("KEYVAULT_URI").is_none() {
            p.problem(
                "KEYVAULT_URI",
                "STORE=azure keeps refresh tokens in Key Vault; name the vault",
                "https://<vault-name>.vault.azure.net",
            );
        }
    }
    StoreSettings {
        kind,
        local_path: p
            .text("LOCAL_STORE_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCAL_STORE_PATH)),
        local_key,
        local_sync: p.choice(
            "LOCAL_STORE_SYNC",
            LocalSync::Full,
            &[("full", LocalSync::Full), ("normal", LocalSync::Normal)],
        ),
        tls_extra_ca_file: parse_extra_ca(p, &azure, keyvault_uri.as_ref()),
        azure,
        keyvault_uri,
    }
}

/// `TLS_EXTRA_CA_FILE`: read now so a wrong file is a start-up problem, and refused unless
/// every Azure endpoint is a loopback one: trusting an extra CA for a real vault or account
/// would let whoever holds that CA's key read the refresh tokens.
fn parse_extra_ca(p: &mut Parser<'_>, azure: &AzureStorageSettings, vault: Option<&Url>) -> Option<PathBuf> {
    const NAME: &str = "TLS_EXTRA_CA_FILE";
    const EXAMPLE: &str = "/path/to/test-ca.pem (local simulators only)";
    let path = PathBuf::from(p.raw.get(NAME)?);
    match std::fs::read(&path) {
        Err(e) => p.problem(NAME, format!("cannot read {}: {e}", path.display()), EXAMPLE),
        Ok(pem) if crate::tls::pem_certificates(&pem).map_or(true, |certs| certs.is_empty()) => {
            p.problem(NAME, format!("{} holds no PEM certificate", path.display()), EXAMPLE)
        }
        Ok(_) => {}
    }
    let remote = remote_azure_endpoints(p.raw, azure, vault);
    if !remote.is_empty() {
        p.problem(
            NAME,
            format!(
                "an extra CA is trusted only when every Azure endpoint is on this machine; not local: {}",
                remote.join(", ")
            ),
            EXAMPLE,
        );
    }
    Some(path)
}

/// The Azure endpoints an extra CA would apply to that are not loopback, by setting name.
fn remote_azure_endpoints(raw: &RawSettings, azure: &AzureStorageSettings, vault: Option<&Url>) -> Vec<String> {
    let mut remote = Vec::new();
    let mut check = |name: &str, url: Option<&Url>| {
        if url.is_some_and(|u| !is_loopback(u)) {
            remote.push(name.to_owned());
        }
    };
    check("KEYVAULT_URI", vault);
    check("AzureWebJobsStorage__tableServiceUri", azure.table_service_uri.as_ref());
    check("AzureWebJobsStorage__blobServiceUri", azure.blob_service_uri.as_ref());
    check("AzureWebJobsStorage__queueServiceUri", azure.queue_service_uri.as_ref());
    for name in ["IDENTITY_ENDPOINT", "MSI_ENDPOINT"] {
        let url = raw.get(name).map(|text| Url::parse(text).ok());
        if url.as_ref().is_some_and(|u| u.as_ref().is_none_or(|u| !is_loopback(u))) {
            remote.push(name.to_owned());
        }
    }
    if azure.account_name.is_some() && azure.blob_service_uri.is_none() {
        remote.push("AzureWebJobsStorage__accountName (the cloud endpoints)".to_owned());
    }
    if let Some(conn) = &azure.connection_string {
        if !connection_string_is_local(conn.expose()) {
            remote.push("AzureWebJobsStorage".to_owned());
        }
    }
    remote
}

/// Whether a storage connection string names only loopback endpoints (Azurite's shortcut, or
/// explicit `…Endpoint=` values); an account name with no endpoints means the cloud.
fn connection_string_is_local(text: &str) -> bool {
    let text = text.trim();
    if text.eq_ignore_ascii_case("UseDevelopmentStorage=true") {
        return true;
    }
    let endpoints: Vec<&str> = text
        .split(';')
        .filter_map(|part| part.split_once('='))
        .filter(|(key, _)| key.trim().ends_with("Endpoint"))
        .map(|(_, value)| value.trim())
        .collect();
    !endpoints.is_empty() && endpoints.iter().all(|e| Url::parse(e).is_ok_and(|u| is_loopback(&u)))
}

fn looks_like_connection_string(text: &str) -> bool {
    let text = text.trim();
    text.eq_ignore_ascii_case("UseDevelopmentStorage=true")
        || text.split(';').filter(|part| !part.trim().is_empty()).all(|part| part.contains('='))
            && (text.contains("AccountName=") || text.contains("Endpoint="))
}

fn parse_schedule(p: &mut Parser<'_>) -> Schedule {
    let text = p.raw.get("SYNC_SCHEDULE").unwrap_or(DEFAULT_SYNC_SCHEDULE).to_owned();
    match text.parse() {
        Ok(schedule) => schedule,
        Err(e) => {
            p.problem("SYNC_SCHEDULE", format!("{text:?}: {e}"), "0 */30 * * * * (every 30 minutes)");
            DEFAULT_SYNC_SCHEDULE.parse().expect("default schedule parses")
        }
    }
}

fn parse_webhook(p: &mut Parser<'_>) -> WebhookSettings {
    let auth = p.raw.get("WEBHOOK_AUTH").map(|_| {
        p.choice(
            "WEBHOOK_AUTH",
            WebhookAuth::Basic,
            &[
                ("jwt", WebhookAuth::Jwt),
                ("entra", WebhookAuth::Jwt),
                ("basic", WebhookAuth::Basic),
                ("header", WebhookAuth::Header),
            ],
        )
    });
    let settings = WebhookSettings {
        auth,
        basic_username: p.text("WEBHOOK_BASIC_USERNAME"),
        basic_passwords: rotation_pair(p, "WEBHOOK_BASIC_PASSWORD"),
        header_name: p.text("WEBHOOK_HEADER_NAME"),
        header_values: rotation_pair(p, "WEBHOOK_HEADER_VALUE"),
        jwt_issuer: p.url("WEBHOOK_JWT_ISSUER", "https://login.microsoftonline.com/<tenant-id>/v2.0"),
        audience: p.text("WEBHOOK_AUDIENCE"),
        required_role: p.text("WEBHOOK_REQUIRED_ROLE"),
        allowed_client_ids: p.list("WEBHOOK_ALLOWED_CLIENT_IDS", &[',', ' ']),
        connection_client_ids: connection_client_ids(p),
        connection_secrets: connection_secrets(p),
        max_token_lifetime: Duration::from_secs(p.number(
            "WEBHOOK_MAX_TOKEN_LIFETIME_SECONDS",
            24 * 3600,
            60,
            7 * 24 * 3600,
        )),
        max_body_bytes: p.number("WEBHOOK_MAX_BODY_BYTES", 10 * 1024 * 1024, 1024, 100 * 1024 * 1024),
        id_field: p.text("WEBHOOK_ID_FIELD"),
        recovery_after: Duration::from_secs(p.number("WEBHOOK_RECOVERY_SECONDS", 60, 1, 86_400)),
        max_backlog_age: Duration::from_secs(p.number("WEBHOOK_MAX_BACKLOG_SECONDS", 900, 10, 7 * 86_400)),
    };
    match settings.auth {
        Some(WebhookAuth::Basic) if settings.basic_username.is_none() || settings.basic_passwords.is_empty() => p
            .problem(
                "WEBHOOK_BASIC_USERNAME",
                "and WEBHOOK_BASIC_PASSWORD are required with WEBHOOK_AUTH=basic",
                "truecontext",
            ),
        Some(WebhookAuth::Header) if settings.header_name.is_none() || settings.header_values.is_empty() => p.problem(
            "WEBHOOK_HEADER_NAME",
            "and WEBHOOK_HEADER_VALUE are required with WEBHOOK_AUTH=header",
            "x-api-key",
        ),
        Some(WebhookAuth::Jwt) if settings.audience.is_none() => {
            p.problem("WEBHOOK_AUDIENCE", "is required with WEBHOOK_AUTH=jwt", "api://<webhook-app-id>")
        }
        _ => {}
    }
    let shared: Vec<&SecretString> = settings.basic_passwords.iter().chain(&settings.header_values).collect();
    if let Some((connection, _)) = settings.connection_secrets.iter().find(|(_, own)| shared.contains(own)) {
        // A connection's own value is the only one it takes, and the shared one is refused for
        // it: the same value in both would refuse that connection's own pushes.
        let connection = connection.clone();
        p.problem(
            "WEBHOOK_CONNECTION_SECRETS",
            format!("gives connection {connection:?} the shared WEBHOOK_BASIC_PASSWORD / WEBHOOK_HEADER_VALUE (not shown); give it a value of its own"),
            "contoso=<openssl rand -base64 32>",
        );
    }
    let restricted = settings.required_role.is_some()
        || !settings.allowed_client_ids.is_empty()
        || !settings.connection_client_ids.is_empty();
    if settings.auth == Some(WebhookAuth::Jwt) && !restricted {
        // Any app or managed identity of the tenant can get a token for our audience: without
        // a role or a client list, every one of them could push.
        p.problem(
            "WEBHOOK_REQUIRED_ROLE",
            "or WEBHOOK_ALLOWED_CLIENT_IDS must be set with WEBHOOK_AUTH=jwt: without either, any app or \
             managed identity in the tenant that can get a token for WEBHOOK_AUDIENCE could push",
            "Webhook.Push (an app role assigned to TrueContext's client only)",
        );
    }
    if let Some(name) = &settings.header_name {
        let forbidden = ["authorization", "content-type", "content-length", "host", "cookie"];
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || forbidden.contains(&name.to_ascii_lowercase().as_str())
        {
            let name = name.clone();
            p.problem(
                "WEBHOOK_HEADER_NAME",
                format!("{name:?} is not a header name a caller can set for this"),
                "x-api-key",
            );
        }
    }
    if let Some(field) = &settings.id_field {
        if field.is_empty() || field.split('.').any(str::is_empty) || field.len() > 200 {
            let field = field.clone();
            p.problem("WEBHOOK_ID_FIELD", format!("{field:?} is not a dotted field path"), "submission.identifier");
        }
    }
    settings
}

/// A secret that takes one value, or two separated by a comma while a rotation is under way
/// (the old and the new both work until the caller has switched). Each must be long and random.
/// `ALLOWED_USERS`: each entry an account's issuer-bound key (`tenant-id/object-id`,
/// `issuer|subject`) or an e-mail address the server verifies; a bare name could be another
/// tenant's or issuer's account, so it is refused here rather than silently never matched.
fn allowed_users(p: &mut Parser<'_>) -> Vec<String> {
    let users = p.list("ALLOWED_USERS", &[',', ' ', ';']);
    if let Some(bare) = users.iter().find(|u| !(u.contains('/') || u.contains('|') || u.contains('@'))) {
        let bare: String = bare.chars().filter(|c| !c.is_control()).take(64).collect();
        p.problem(
            "ALLOWED_USERS",
            format!(
                "has {bare:?}, which is neither tenant-id/object-id, issuer|subject nor an e-mail address: a name or id \
                 alone can belong to an account of another tenant or issuer"
            ),
            "72f988bf-…/0b6f…(tenant id/object id, as `tcbridge connection list` shows it) or admin@contoso.com",
        );
    }
    users
}

/// `WEBHOOK_CONNECTION_CLIENT_IDS`: `connection=client client;connection=client`.
fn connection_client_ids(p: &mut Parser<'_>) -> std::collections::BTreeMap<String, Vec<String>> {
    const NAME: &str = "WEBHOOK_CONNECTION_CLIENT_IDS";
    let mut out = std::collections::BTreeMap::new();
    for entry in p.list(NAME, &[';']) {
        let Some((connection, clients)) = entry.split_once('=') else {
            p.problem(NAME, "takes connection=client-id entries separated by ';'", "contoso=11111111-…;fabrikam=2222…");
            continue;
        };
        let connection = connection.trim();
        let clients: Vec<String> =
            clients.split([',', ' ']).map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect();
        if !crate::naming::is_connection_id(connection) || clients.is_empty() {
            p.problem(
                NAME,
                format!("has an entry whose connection is not {CONNECTION_RULE_SHORT} or which names no client id"),
                "contoso=11111111-…",
            );
            continue;
        }
        if out.insert(connection.to_owned(), clients).is_some() {
            // `c=a;c=b` would keep only b, silently.
            p.problem(
                NAME,
                format!("names connection {connection:?} twice; list all of its client ids in one entry (c=id1 id2)"),
                "contoso=11111111-… 22222222-…",
            );
        }
    }
    out
}

/// `WEBHOOK_CONNECTION_SECRETS`: `connection=value;connection=value` (values never shown).
fn connection_secrets(p: &mut Parser<'_>) -> std::collections::BTreeMap<String, SecretString> {
    const NAME: &str = "WEBHOOK_CONNECTION_SECRETS";
    let mut out = std::collections::BTreeMap::new();
    let Some(whole) = p.secret(NAME) else { return out };
    for entry in whole.expose().split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((connection, value)) = entry.split_once('=') else {
            p.problem(
                NAME,
                "takes connection=value entries separated by ';' (the values are not shown)",
                "contoso=…;fabrikam=…",
            );
            continue;
        };
        let (connection, value) = (connection.trim(), value.trim());
        if !crate::naming::is_connection_id(connection) || value.len() < 16 {
            p.problem(
                NAME,
                format!("has an entry whose connection is not {CONNECTION_RULE_SHORT} or whose value is shorter than 16 characters (not shown)"),
                "contoso=<openssl rand -base64 32>",
            );
            continue;
        }
        let value = SecretString::new(value);
        p.secrets.push(value.clone());
        if out.insert(connection.to_owned(), value).is_some() {
            // Written like a rotation (`c=old;c=new`), only the last would count, silently.
            p.problem(
                NAME,
                format!("names connection {connection:?} twice; give each connection one value"),
                "contoso=…;fabrikam=…",
            );
        }
    }
    out
}

/// How a bad connection id in a list setting is described.
const CONNECTION_RULE_SHORT: &str = "a connection id (letters, digits, '-', '_', '.')";

fn rotation_pair(p: &mut Parser<'_>, name: &str) -> Vec<SecretString> {
    let Some(whole) = p.secret(name) else { return Vec::new() };
    let values: Vec<SecretString> =
        whole.expose().split(',').map(str::trim).filter(|v| !v.is_empty()).map(SecretString::new).collect();
    if values.len() > 2 {
        p.problem(
            name,
            "takes one value, or two separated by a comma during a rotation (the values are not shown)",
            "old,new",
        );
    }
    if values.iter().any(|v| v.expose().len() < 16) {
        p.problem(
            name,
            "is shorter than 16 characters; use a long random value (not shown)",
            "the output of `openssl rand -base64 32`",
        );
    }
    p.secrets.extend(values.iter().cloned());
    values
}

fn parse_alert_webhook(p: &mut Parser<'_>) -> Option<AlertWebhook> {
    let format = p.choice(
        "ALERT_WEBHOOK_FORMAT",
        AlertFormat::Text,
        &[("text", AlertFormat::Text), ("adaptive-card", AlertFormat::AdaptiveCard)],
    );
    let url = p.url("ALERT_WEBHOOK_URL", "https://example.webhook.office.com/webhookb2/...")?;
    Some(AlertWebhook { url, format })
}

fn parse_function_key(p: &mut Parser<'_>) -> Option<SecretString> {
    let key = p.secret("FUNCTION_KEY")?;
    if key.expose().len() < 16 || key.expose().chars().any(|c| c.is_whitespace() || c.is_control()) {
        p.problem(
            "FUNCTION_KEY",
            "must be at least 16 characters without spaces (the value is not shown)",
            "the output of `openssl rand -base64 32`",
        );
    }
    Some(key)
}

/// What the sync pulls, and its windows.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// `SYNC_BACKFILL_DAYS`: the first sync's history.
    pub backfill: Duration,
    /// `SYNC_OVERLAP_SECONDS`: how far before the cursor each run re-reads.
    pub overlap: Duration,
    /// `SYNC_SETTLE_SECONDS`: how far behind now a window ends (records become visible late).
    pub settle: Duration,
    /// `SYNC_MAX_RUN_SECONDS`: a run stops cleanly (checkpointed) after this, well inside the
    /// host's `functionTimeout` (10 minutes in host.json), and the next run resumes it.
    pub max_run: Duration,
    /// `SYNC_FORM_IDS`, `SYNC_FORMSPACE_IDS`: what to sync (empty: everything).
    pub form_ids: Vec<String>,
    pub formspace_ids: Vec<String>,
    /// `SYNC_TRUST_PUSHES`: a submission whose current version was pushed, in the state the list
    /// shows, is taken as current without a document call (see ARCHITECTURE.md, "Push and pull").
    pub trust_pushes: bool,
}

/// Where landed data goes.
#[derive(Debug, Clone)]
pub struct LandingSettings {
    /// `SUBMISSIONS_CONTAINER`: raw documents, normalised records, media.
    pub container: String,
    /// `LANDED_QUEUE_NAME`: one message per new or changed record.
    pub landed_queue: String,
}

fn parse_landing(p: &mut Parser<'_>) -> LandingSettings {
    let mut name = |setting: &str, default: &str| {
        let value = p.text(setting).unwrap_or_else(|| default.to_owned());
        if !crate::naming::is_container_name(&value) {
            p.problem(setting, format!("{value:?} must be 3-63 lowercase letters, digits or single dashes"), default);
        }
        value
    };
    LandingSettings {
        container: name("SUBMISSIONS_CONTAINER", "submissions"),
        landed_queue: name("LANDED_QUEUE_NAME", "landed-submissions"),
    }
}

fn parse_queues(p: &mut Parser<'_>) -> QueueSettings {
    let incoming = p.text("INCOMING_QUEUE_NAME").unwrap_or_else(|| DEFAULT_INCOMING_QUEUE.to_owned());
    if !crate::naming::is_container_name(&incoming) || incoming.len() > 56 {
        p.problem(
            "INCOMING_QUEUE_NAME",
            format!("{incoming:?} must be 3-56 lowercase letters, digits or single dashes (\"-poison\" is appended for failures)"),
            DEFAULT_INCOMING_QUEUE,
        );
    }
    QueueSettings {
        incoming,
        max_dequeue_count: p.number("QUEUE_MAX_DEQUEUE_COUNT", 5, 1, 100),
        visibility_timeout: Duration::from_secs(p.number("QUEUE_VISIBILITY_TIMEOUT_SECONDS", 300, 1, 7 * 86_400)),
        retry_delay: Duration::from_secs(p.number("QUEUE_RETRY_DELAY_SECONDS", 5, 0, 3600)),
    }
}

fn cross_checks(p: &mut Parser<'_>, s: &Settings) {
    // A token-endpoint call must end (or be cut off) well inside one lease period, even before
    // the holder's background renewal has run, or a second instance could present the same
    // refresh token.
    if s.tokens.refresh_lease < s.tokens.endpoint_timeout + Duration::from_secs(5) {
        p.problem(
            "TOKEN_REFRESH_LEASE_SECONDS",
            format!(
                "must be at least TOKEN_ENDPOINT_TIMEOUT_SECONDS + 5 ({} s), so a refresh always ends inside its lease",
                s.tokens.endpoint_timeout.as_secs() + 5
            ),
            "90",
        );
    }
    if s.webhook.max_body_bytes > s.max_request_body_bytes {
        p.problem(
            "WEBHOOK_MAX_BODY_BYTES",
            format!(
                "is larger than MAX_REQUEST_BODY_BYTES ({}), which refuses bigger requests before the webhook sees them",
                s.max_request_body_bytes
            ),
            "10485760",
        );
    }
    if s.oauth.federated_credential && s.oauth.provider != OAuthProvider::Entra {
        p.problem("OAUTH_FEDERATED_CREDENTIAL", "works only with OAUTH_PROVIDER=entra", "false");
    }
    if s.oauth.client_secret.is_some() && s.oauth.client_certificate_path.is_some() {
        p.problem(
            "OAUTH_CLIENT_CERTIFICATE_PATH",
            "and OAUTH_CLIENT_SECRET are both set; keep one way for the app to authenticate",
            "unset OAUTH_CLIENT_SECRET once the certificate is in place",
        );
    }
    if s.oauth.grant == OAuthGrant::ClientCredentials && s.oauth.provider == OAuthProvider::B2c {
        p.problem(
            "OAUTH_GRANT",
            "client_credentials is not available with Azure AD B2C user flows",
            "authorization_code",
        );
    }
    if let Some(redirect) = &s.oauth.redirect_uri {
        if redirect.fragment().is_some() {
            p.problem(
                "OAUTH_REDIRECT_URI",
                "must not contain a #fragment",
                "https://<app>.azurewebsites.net/api/callback",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, Vec<Problem>> {
        Settings::load(&RawSettings::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults_from_nothing() {
        let s = load(&[]).unwrap();
        assert_eq!(s.oauth.provider, OAuthProvider::Entra);
        assert_eq!(s.oauth.grant, OAuthGrant::AuthorizationCode);
        assert_eq!(s.truecontext.auth, TrueContextAuth::Bearer);
        assert_eq!(s.truecontext.base_url.as_str(), DEFAULT_TRUECONTEXT_BASE_URL);
        assert_eq!(s.store.kind, StoreKind::Local);
        assert_eq!(s.tokens.refresh_margin, Duration::from_secs(600));
        assert_eq!(s.queues.max_dequeue_count, 5);
    }

    #[test]
    fn connection_strings_are_local_only_when_every_endpoint_is_loopback() {
        assert!(connection_string_is_local("UseDevelopmentStorage=true"));
        assert!(connection_string_is_local(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;\
             BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;\
             TableEndpoint=http://localhost:10002/devstoreaccount1;"
        ));
        assert!(!connection_string_is_local("AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net"));
        assert!(!connection_string_is_local(
            "AccountName=a;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/a;QueueEndpoint=https://a.queue.core.windows.net"
        ));
        assert!(!connection_string_is_local("BlobEndpoint=not a url"));
    }

    #[test]
    fn an_extra_ca_is_refused_next_to_a_cloud_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let pem = rcgen::generate_simple_self_signed(vec!["v.vault.localhost".into()]).unwrap().cert.pem();
        std::fs::write(&ca, pem).unwrap();
        let ca = ca.display().to_string();
        let local = [
            ("STORE", "azure"),
            ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
            ("KEYVAULT_URI", "https://v.vault.localhost:8443"),
            ("TLS_EXTRA_CA_FILE", ca.as_str()),
        ];
        assert_eq!(load(&local).unwrap().store.tls_extra_ca_file.unwrap().display().to_string(), ca);
        let mut cloud = local;
        cloud[2] = ("KEYVAULT_URI", "https://v.vault.azure.net");
        let problems = load(&cloud).unwrap_err();
        assert!(problems.iter().any(|p| p.setting == "TLS_EXTRA_CA_FILE" && p.message.contains("KEYVAULT_URI")));
        let identity = load(&[("AzureWebJobsStorage__accountName", "acct"), ("TLS_EXTRA_CA_FILE", ca.as_str())]);
        assert!(identity.unwrap_err().iter().any(|p| p.message.contains("AzureWebJobsStorage__accountName")));
        assert!(load(&[("TLS_EXTRA_CA_FILE", "/nonexistent.pem")]).is_err());
    }

    #[test]
    fn development_storage_keeps_the_embedded_store_but_a_real_account_switches() {
        assert_eq!(
            load(&[("AzureWebJobsStorage", "UseDevelopmentStorage=true")]).unwrap().store.kind,
            StoreKind::Local
        );
        let s = load(&[("AzureWebJobsStorage__accountName", "acct"), ("KEYVAULT_URI", "https://v.vault.azure.net")])
            .unwrap();
        assert_eq!(s.store.kind, StoreKind::Azure);
    }

    #[test]
    fn every_problem_is_reported_at_once_and_names_its_setting() {
        let problems = load(&[
            ("OAUTH_PROVIDER", "okta"),
            ("OAUTH_AUTHORITY", "not a url"),
            ("OAUTH_REDIRECT_URI", "http://example.com/cb"),
            ("SYNC_SCHEDULE", "*/5 * * * *"),
            ("STORE", "azure"),
            ("TOKEN_REFRESH_MARGIN_SECONDS", "ten"),
        ])
        .unwrap_err();
        let named: Vec<&str> = problems.iter().map(|p| p.setting.as_str()).collect();
        for setting in [
            "OAUTH_PROVIDER",
            "OAUTH_AUTHORITY",
            "OAUTH_REDIRECT_URI",
            "SYNC_SCHEDULE",
            "AzureWebJobsStorage",
            "KEYVAULT_URI",
            "TOKEN_REFRESH_MARGIN_SECONDS",
        ] {
            assert!(named.contains(&setting), "{setting} missing from {named:?}");
        }
        assert!(problems.iter().all(|p| p.example.is_some()));
    }

    #[test]
    fn every_secret_setting_is_handed_to_the_scrubber() {
        use base64::Engine;
        // Each secret must be valid on its own terms, so that the whole set loads.
        let values: Vec<(&str, String)> = Settings::SECRET_SETTINGS
            .iter()
            .map(|name| match *name {
                "LOCAL_STORE_KEY" => (*name, base64::engine::general_purpose::STANDARD.encode([7u8; 32])),
                "AzureWebJobsStorage" => (*name, "UseDevelopmentStorage=true".to_owned()),
                "WEBHOOK_CONNECTION_SECRETS" => (*name, "contoso=value-of-its-own-1234567890".to_owned()),
                _ => (*name, format!("value-of-{name}-1234567890")),
            })
            .collect();
        let pairs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let settings = load(&pairs).unwrap_or_else(|p| panic!("{p:?}"));
        let registered: Vec<&str> = settings.secret_values().iter().map(SecretString::expose).collect();
        for (name, value) in &values {
            assert!(registered.contains(&value.as_str()), "{name} is not handed to the scrubber");
        }
    }

    #[test]
    fn secret_values_never_appear_in_problems_or_debug() {
        let secret = "sup3r-s3cret-value-that-must-not-leak";
        let problems = load(&[
            ("AzureWebJobsStorage", secret),
            ("LOCAL_STORE_KEY", secret),
            ("FUNCTION_KEY", "fk-Q7x"),
            ("WEBHOOK_AUTH", "basic"),
            ("WEBHOOK_BASIC_USERNAME", "tc"),
            ("WEBHOOK_BASIC_PASSWORD", "pw-Z3k"),
        ])
        .unwrap_err();
        let text = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        assert!(!text.contains(secret) && !text.contains("fk-Q7x") && !text.contains("pw-Z3k"), "{text}");
        let ok = load(&[("OAUTH_CLIENT_SECRET", secret)]).unwrap();
        assert!(!format!("{ok:?}").contains(secret));
    }

    #[test]
    fn local_settings_fill_only_what_the_environment_lacks() {
        let mut raw = RawSettings::from_pairs([("SYNC_SCHEDULE", "0 0 * * * *")]);
        raw.fill_from_local_settings(
            Path::new("local.settings.json"),
            r#"{"IsEncrypted":false,"Values":{"SYNC_SCHEDULE":"0 */5 * * * *","OAUTH_CLIENT_ID":"abc"}}"#,
        );
        assert_eq!(raw.get("SYNC_SCHEDULE"), Some("0 0 * * * *"));
        assert_eq!(raw.get("OAUTH_CLIENT_ID"), Some("abc"));
    }

    #[test]
    fn a_broken_local_settings_file_is_a_problem() {
        let mut raw = RawSettings::default();
        raw.fill_from_local_settings(Path::new("local.settings.json"), "{\"Values\": ");
        let problems = Settings::load(&raw).unwrap_err();
        assert!(problems[0].message.contains("not valid JSON"));
    }

    #[test]
    fn missing_lists_what_the_connect_flow_needs() {
        let s = load(&[]).unwrap();
        let missing: Vec<String> = s.missing().into_iter().map(|p| p.setting).collect();
        for setting in
            ["OAUTH_CLIENT_ID", "OAUTH_AUTHORITY", "OAUTH_REDIRECT_URI", "OAUTH_CLIENT_SECRET", "WEBHOOK_AUTH"]
        {
            assert!(missing.iter().any(|m| m == setting), "{setting} not in {missing:?}");
        }
        let complete = load(&[
            ("OAUTH_CLIENT_ID", "id"),
            ("OAUTH_AUTHORITY", "https://login.microsoftonline.com/t/v2.0"),
            ("OAUTH_REDIRECT_URI", "https://app.example.com/api/callback"),
            ("OAUTH_CLIENT_SECRET", "s"),
            ("WEBHOOK_AUTH", "header"),
            ("WEBHOOK_HEADER_NAME", "x-api-key"),
            ("WEBHOOK_HEADER_VALUE", "0123456789abcdef0123"),
        ])
        .unwrap();
        assert!(complete.missing().is_empty(), "{:?}", complete.missing());
    }

    #[test]
    fn webhook_settings_take_a_rotation_pair_and_say_what_is_wrong() {
        let load = |pairs: &[(&str, &str)]| Settings::load(&RawSettings::from_pairs(pairs.iter().copied()));
        let base = [("WEBHOOK_AUTH", "basic"), ("WEBHOOK_BASIC_USERNAME", "tc")];
        let pair =
            [base.as_slice(), &[("WEBHOOK_BASIC_PASSWORD", "old-0123456789abcdef, new-0123456789abcdef")]].concat();
        assert_eq!(load(&pair).unwrap().webhook.basic_passwords.len(), 2);
        let three = [
            base.as_slice(),
            &[("WEBHOOK_BASIC_PASSWORD", "a-0123456789abcdef,b-0123456789abcdef,c-0123456789abcdef")],
        ]
        .concat();
        let problems = load(&three).unwrap_err();
        assert!(
            problems.iter().any(|p| p.setting == "WEBHOOK_BASIC_PASSWORD" && p.message.contains("two")),
            "{problems:?}"
        );
        assert!(!format!("{problems:?}").contains("0123456789abcdef"), "no value shown");
        let short = [base.as_slice(), &[("WEBHOOK_BASIC_PASSWORD", "long-enough-0123456789,short")]].concat();
        assert!(load(&short).unwrap_err().iter().any(|p| p.message.contains("shorter than 16")));
        let entra =
            load(&[("WEBHOOK_AUTH", "entra"), ("WEBHOOK_AUDIENCE", "api://hook"), ("WEBHOOK_REQUIRED_ROLE", "Push")])
                .unwrap();
        assert_eq!(entra.webhook.auth, Some(WebhookAuth::Jwt));
        // Issue 20: any principal of the tenant could push when neither a role nor a client
        // list narrows who may.
        let open = load(&[("WEBHOOK_AUTH", "jwt"), ("WEBHOOK_AUDIENCE", "api://hook")]).unwrap_err();
        let named = open.iter().find(|p| p.setting == "WEBHOOK_REQUIRED_ROLE").expect("refused");
        assert!(named.to_string().contains("WEBHOOK_ALLOWED_CLIENT_IDS"), "{named}");
        let by_connection = [
            ("WEBHOOK_AUTH", "jwt"),
            ("WEBHOOK_AUDIENCE", "api://hook"),
            ("WEBHOOK_CONNECTION_CLIENT_IDS", "contoso=client-a client-b; fabrikam=client-c"),
        ];
        let clients = load(&by_connection).unwrap().webhook.connection_client_ids;
        assert_eq!(clients["contoso"], ["client-a", "client-b"]);
        let bad =
            load(&[("WEBHOOK_CONNECTION_CLIENT_IDS", "../x=client"), ("WEBHOOK_CONNECTION_SECRETS", "a=tiny-value")]);
        let bad = bad.unwrap_err();
        assert!(bad.iter().any(|p| p.setting == "WEBHOOK_CONNECTION_CLIENT_IDS"), "{bad:?}");
        assert!(bad.iter().any(|p| p.setting == "WEBHOOK_CONNECTION_SECRETS"), "{bad:?}");
        assert!(!format!("{bad:?}").contains("tiny-value"), "no value shown");
        let clients_twice = load(&[("WEBHOOK_CONNECTION_CLIENT_IDS", "demo=a1;demo=b1")]).unwrap_err();
        assert!(clients_twice.iter().any(|p| p.message.contains("twice")), "{clients_twice:?}");
        let twice = load(&[("WEBHOOK_CONNECTION_SECRETS", "demo=first-value-0123456789;demo=second-value-0123456789")]);
        assert!(twice.unwrap_err().iter().any(|p| p.message.contains("twice")));
        let shared = load(&[
            ("WEBHOOK_AUTH", "basic"),
            ("WEBHOOK_BASIC_USERNAME", "tc"),
            ("WEBHOOK_BASIC_PASSWORD", "shared-value-0123456789"),
            ("WEBHOOK_CONNECTION_SECRETS", "demo=shared-value-0123456789"),
        ]);
        let shared = shared.unwrap_err();
        assert!(shared.iter().any(|p| p.message.contains("shared")), "{shared:?}");
        assert!(!format!("{shared:?}").contains("shared-value-0123456789"), "no value shown");
        assert!(load(&[("WEBHOOK_AUTH", "jwt")]).unwrap_err().iter().any(|p| p.setting == "WEBHOOK_AUDIENCE"));
        let limits = load(&[("WEBHOOK_MAX_BODY_BYTES", "2000000"), ("MAX_REQUEST_BODY_BYTES", "1000000")]).unwrap_err();
        assert!(limits.iter().any(|p| p.setting == "WEBHOOK_MAX_BODY_BYTES"), "{limits:?}");
        let header = load(&[
            ("WEBHOOK_AUTH", "header"),
            ("WEBHOOK_HEADER_NAME", "Authorization"),
            ("WEBHOOK_HEADER_VALUE", "0123456789abcdef0123"),
        ]);
        assert!(header.unwrap_err().iter().any(|p| p.setting == "WEBHOOK_HEADER_NAME"));
        let format =
            load(&[("ALERT_WEBHOOK_URL", "https://hooks.example/x"), ("ALERT_WEBHOOK_FORMAT", "adaptive-card")])
                .unwrap();
        assert_eq!(format.tokens.alert_webhook.unwrap().format, AlertFormat::AdaptiveCard);
    }
}
