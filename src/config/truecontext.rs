//! TrueContext: the API's base URL and credentials, and the sync's own settings.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrueContextAuth {
    Bearer,
    Basic,
}

/// The settings an API-key connection may name for its secret (`TRUECONTEXT_KEY_SECRET_ACME`):
/// a family, so a stored record can never name another secret.
pub const KEY_SECRET_PREFIX: &str = "TRUECONTEXT_KEY_SECRET_";

#[derive(Debug, Clone)]
pub struct TrueContextSettings {
    pub base_url: Url,
    pub auth: TrueContextAuth,
    pub api_key_id: Option<String>,
    pub api_key_secret: Option<SecretString>,
    /// The secrets of the API-key connections added with `tcbridge connection add`, by setting
    /// name (`TRUECONTEXT_KEY_SECRET_*`).
    pub key_secrets: BTreeMap<String, SecretString>,
    /// With `basic`: the connection the configured key syncs as (`TRUECONTEXT_CONNECTION`).
    pub connection: String,
    /// Simultaneous calls, cluster-wide (`TRUECONTEXT_CONCURRENCY`; TrueContext allows 3 per key).
    pub concurrency: u32,
    /// Calls per team per UTC day (`TRUECONTEXT_DAILY_CALL_BUDGET`).
    pub daily_call_budget: u64,
    /// One call's time limit (`TRUECONTEXT_TIMEOUT_SECONDS`).
    pub timeout: Duration,
    /// The largest answer read (`TRUECONTEXT_MAX_RESPONSE_BYTES`); documents carry media inline.
    pub max_response_bytes: usize,
}

pub(super) fn parse_truecontext(p: &mut Parser<'_>) -> TrueContextSettings {
    let base_url = if p.get("TRUECONTEXT_BASE_URL").is_some() {
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
        key_secrets: p.secret_family(KEY_SECRET_PREFIX),
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
pub(super) fn parse_connection_id(p: &mut Parser<'_>, name: &str) -> String {
    let id = p.text(name).unwrap_or_else(|| "default".to_owned());
    if !crate::naming::is_connection_id(&id) {
        p.problem(name, format!("{id:?} must be {}", crate::naming::CONNECTION_ID_RULE), "default");
    }
    id
}
