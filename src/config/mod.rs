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

mod oauth;
mod parser;
mod raw;
mod service;
mod store;
pub mod table;
#[cfg(test)]
mod tests;
mod truecontext;
mod webhook;

pub use oauth::*;
pub use raw::*;
pub use service::*;
pub use store::*;
pub use truecontext::*;
pub use webhook::*;

use parser::{is_loopback, Parser};

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
        let mut p = Parser::new(raw);
        let settings = Self::parse_with(&mut p);
        (settings, p.problems)
    }

    fn parse_with(p: &mut Parser<'_>) -> Settings {
        let settings = Settings {
            oauth: parse_oauth(p),
            truecontext: parse_truecontext(p),
            store: parse_store(p),
            sync_schedule: parse_schedule(p),
            webhook: parse_webhook(p),
            function_key: parse_function_key(p),
            tokens: TokenSettings {
                refresh_margin: Duration::from_secs(p.number("TOKEN_REFRESH_MARGIN_SECONDS", 600, 30, 86_400)),
                b2c_refresh_window: Duration::from_secs(86_400 * p.number("B2C_REFRESH_WINDOW_DAYS", 90u64, 1, 365)),
                b2c_reauth_warning: Duration::from_secs(86_400 * p.number("B2C_REAUTH_WARNING_DAYS", 14u64, 1, 90)),
                alert_webhook: parse_alert_webhook(p),
                endpoint_timeout: Duration::from_secs(p.number("TOKEN_ENDPOINT_TIMEOUT_SECONDS", 30, 1, 120)),
                refresh_lease: Duration::from_secs(p.number("TOKEN_REFRESH_LEASE_SECONDS", 90, 5, 900)),
                keepalive: Duration::from_secs(3600 * p.number("TOKEN_KEEPALIVE_HOURS", 20u64, 1, 24)),
            },
            queues: parse_queues(p),
            landing: parse_landing(p),
            sync: SyncSettings {
                backfill: Duration::from_secs(86_400 * p.number("SYNC_BACKFILL_DAYS", 30u64, 1, 365)),
                overlap: Duration::from_secs(p.number("SYNC_OVERLAP_SECONDS", 600, 0, 86_400)),
                settle: Duration::from_secs(p.number("SYNC_SETTLE_SECONDS", 120, 0, 86_400)),
                max_run: Duration::from_secs(p.number("SYNC_MAX_RUN_SECONDS", 480, 10, 86_400)),
                form_ids: p.list("SYNC_FORM_IDS", &[',', ' ']),
                formspace_ids: p.list("SYNC_FORMSPACE_IDS", &[',', ' ']),
                trust_pushes: p.flag("SYNC_TRUST_PUSHES"),
                resync_share_percent: p.number("RESYNC_BUDGET_SHARE_PERCENT", 50, 1, 100),
                missed_push_grace: Duration::from_secs(p.number("MISSED_PUSH_GRACE_SECONDS", 900, 0, 7 * 86_400)),
                missed_push_threshold: p.number("MISSED_PUSH_ALERT_THRESHOLD", 3, 1, 1_000_000),
                watch_pushes: p.get("WEBHOOK_AUTH").is_some(),
            },
            max_request_body_bytes: p.number("MAX_REQUEST_BODY_BYTES", 16 * 1024 * 1024, 1024, 100 * 1024 * 1024),
            max_connections: p.number("STANDALONE_MAX_CONNECTIONS", 256, 1, 65_536),
            max_connections_per_address: p.number("STANDALONE_MAX_CONNECTIONS_PER_ADDRESS", 16, 1, 65_536),
            trusted_proxy_hops: p.get("TRUSTED_PROXY_HOPS").is_some().then(|| p.number("TRUSTED_PROXY_HOPS", 0, 0, 10)),
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
        if p.get("WEBHOOK_MAX_BODY_BYTES").is_none() {
            // The default never exceeds what the front doors accept at all.
            settings.webhook.max_body_bytes = settings.webhook.max_body_bytes.min(settings.max_request_body_bytes);
        }
        cross_checks(p, &settings);
        settings
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

    /// The setting names whose values are secret (from the table, `settings.tsv`): the only
    /// ones read as secrets, never printed, and registered with the log scrubber.
    pub fn secret_settings() -> &'static [&'static str] {
        table::secret_names()
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
