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
    /// The kind of failure (sync summaries, CLI exit codes, logs, alert rules).
    pub fn class(&self) -> StopClass {
        match self {
            TrueContextError::CallCountExpended { .. } => StopClass::CallCountExpended,
            TrueContextError::BudgetSpent { .. } => StopClass::Budget,
            TrueContextError::NotFound { .. } => StopClass::NotFound,
            TrueContextError::Unauthorized { .. } | TrueContextError::Forbidden { .. } => StopClass::Auth,
            TrueContextError::Rejected { .. } => StopClass::Rejected,
            TrueContextError::Unavailable { .. } => StopClass::Transient,
            TrueContextError::Malformed { .. } => StopClass::Malformed,
            TrueContextError::Token(_) => StopClass::Token,
            TrueContextError::Configuration(_) => StopClass::Configuration,
            TrueContextError::Store(_) => StopClass::Store,
        }
    }
}

/// Why a sync run (or a call in it) stopped, by kind. The names (`snake_case`) are what stored
/// run records, `sync --json`, the logs and the Azure Monitor rules (`class`) carry, unchanged
/// from when they were strings; a name this build does not know reads as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopClass {
    /// Our own daily budget (`TRUECONTEXT_DAILY_CALL_BUDGET`) is spent.
    Budget,
    /// TrueContext answered 402: the team's call count is spent until midnight UTC.
    CallCountExpended,
    NotFound,
    /// Credentials refused (401, 403).
    Auth,
    Rejected,
    /// A timeout, a 5xx, a 429: try again later.
    Transient,
    Malformed,
    /// No access token (the connection's refresh failed).
    Token,
    Configuration,
    Store,
    Landing,
    /// The window kept changing while it was listed.
    Unstable,
    /// The run's time limit; the next run resumes.
    Deadline,
    /// A bug: the run panicked.
    Internal,
    #[serde(other)]
    Unknown,
}

impl StopClass {
    pub fn as_str(self) -> &'static str {
        match self {
            StopClass::Budget => "budget",
            StopClass::CallCountExpended => "call_count_expended",
            StopClass::NotFound => "not_found",
            StopClass::Auth => "auth",
            StopClass::Rejected => "rejected",
            StopClass::Transient => "transient",
            StopClass::Malformed => "malformed",
            StopClass::Token => "token",
            StopClass::Configuration => "configuration",
            StopClass::Store => "store",
            StopClass::Landing => "landing",
            StopClass::Unstable => "unstable",
            StopClass::Deadline => "deadline",
            StopClass::Internal => "internal",
            StopClass::Unknown => "unknown",
        }
    }

    /// A stop the next try may well get past (a transient failure, the store, the landing, a
    /// changing window): a queued sync request is retried on these.
    pub fn is_retryable(self) -> bool {
        matches!(self, StopClass::Transient | StopClass::Store | StopClass::Landing | StopClass::Unstable)
    }

    /// The daily call count, ours or TrueContext's, is spent.
    pub fn is_budget(self) -> bool {
        matches!(self, StopClass::Budget | StopClass::CallCountExpended)
    }

    /// A failed run: anything but the run's time limit or a spent budget, which status reports
    /// apart.
    pub fn is_failure(self) -> bool {
        !(self == StopClass::Deadline || self.is_budget())
    }
}

impl std::fmt::Display for StopClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with its name, as the strings it replaced did.
impl PartialEq<&str> for StopClass {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Reads as its name, so `summary.stopped_class.as_deref() == Some("budget")` still holds.
impl std::ops::Deref for StopClass {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

fn detail(message: &Option<String>) -> String {
    message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
}

#[cfg(test)]
mod stop_class_tests {
    use super::StopClass;

    /// Stored run records and `sync --json` carry the names the strings had.
    #[test]
    fn names_are_the_strings_they_replaced_and_unknown_ones_still_read() {
        for (class, name) in [
            (StopClass::Budget, "budget"),
            (StopClass::CallCountExpended, "call_count_expended"),
            (StopClass::NotFound, "not_found"),
            (StopClass::Internal, "internal"),
            (StopClass::Deadline, "deadline"),
        ] {
            assert_eq!(serde_json::to_value(class).unwrap(), name);
            assert_eq!(serde_json::from_value::<StopClass>(name.into()).unwrap(), class);
            assert_eq!(class.as_str(), name);
        }
        assert_eq!(serde_json::from_value::<StopClass>("from_a_later_version".into()).unwrap(), StopClass::Unknown);
        assert!(StopClass::Transient.is_retryable() && !StopClass::Budget.is_failure() && StopClass::Auth.is_failure());
    }
}
