//! TrueContext's errors, typed from the status and the `X-ProntoForms-ErrorCode` /
//! `-ErrorMessage` headers (the error body is undocumented and never read). Messages name the
//! call and never carry a credential.

use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub enum TrueContextError {
    /// 402 `CallCountExpended`, or this connection's stop after one: nothing is called until.
    #[error("TrueContext's daily call count is used up (402 CallCountExpended); no call before {until}")]
    CallCountExpended { until: DateTime<Utc> },
    /// Our own `TRUECONTEXT_DAILY_CALL_BUDGET` for today is spent.
    #[error(
        "today's call budget of {budget} calls is spent (TRUECONTEXT_DAILY_CALL_BUDGET); next calls after {until}"
    )]
    BudgetSpent { budget: u64, until: DateTime<Utc> },
    /// 404 `ObjectNotFound`: gone (retention, or a passthrough form's data).
    #[error("{call}: TrueContext has no such object (404 {code})")]
    NotFound { call: String, code: String },
    /// 401, after the one forced token refresh (bearer), or at once (basic).
    #[error("{call}: TrueContext refused the credentials (401{})", detail(.message))]
    Unauthorized { call: String, message: Option<String> },
    /// 403 `AccessDenied`.
    #[error("{call}: TrueContext denied access (403 {code}{})", detail(.message))]
    Forbidden { call: String, code: String, message: Option<String> },
    /// 400 and other 4xx: our request is wrong; retrying will not help.
    #[error("{call}: TrueContext refused the request ({status} {code}{})", detail(.message))]
    Rejected { call: String, status: u16, code: String, message: Option<String> },
    /// 429, 503, other 5xx, timeouts and transport failures, after the retries of one call.
    #[error("{call}: TrueContext is unavailable ({reason}); try again after {retry_after:?}")]
    Unavailable { call: String, reason: String, retry_after: Duration },
    /// A 2xx answer we cannot read.
    #[error("{call}: TrueContext's answer is not usable: {reason}")]
    Malformed { call: String, reason: String },
    /// No access token for the connection (needs re-consent, backoff, …).
    #[error("no access token for TrueContext: {0}")]
    Token(String),
    #[error("TrueContext is not configured: {0}")]
    Configuration(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl TrueContextError {
    /// A stable name for the kind of failure (sync summaries, CLI exit reasons, logs).
    pub fn class(&self) -> &'static str {
        match self {
            TrueContextError::CallCountExpended { .. } => "call_count_expended",
            TrueContextError::BudgetSpent { .. } => "budget",
            TrueContextError::NotFound { .. } => "not_found",
            TrueContextError::Unauthorized { .. } | TrueContextError::Forbidden { .. } => "auth",
            TrueContextError::Rejected { .. } => "rejected",
            TrueContextError::Unavailable { .. } => "transient",
            TrueContextError::Malformed { .. } => "malformed",
            TrueContextError::Token(_) => "token",
            TrueContextError::Configuration(_) => "configuration",
            TrueContextError::Store(_) => "store",
        }
    }
}

fn detail(message: &Option<String>) -> String {
    message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
}
