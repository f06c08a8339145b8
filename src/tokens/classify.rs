//! What a failed token request means, from the OAuth `error` field and the HTTP status (never
//! from message text, except Entra's numeric AADSTS codes), and how long to leave it alone.

use std::time::Duration;

use rand::Rng;

use crate::oauth::token::EndpointError;

/// Entra's "LoopDetected": too many identical requests. A refresh storm; back off hard.
const AADSTS_LOOP_DETECTED: i64 = 50196;
/// An identical 400 is not sent again for this long (MSAL's rule).
pub const REJECTED_PAUSE: Duration = Duration::from_secs(60);
/// After Entra's loop detection, nothing for at least this long.
pub const LOOP_PAUSE: Duration = Duration::from_secs(15 * 60);
/// A server's `Retry-After` is honoured up to this (MSAL's cap).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest transient backoff between attempts when the server gives no `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The grant is gone (`invalid_grant`, `interaction_required`, `consent_required`,
    /// `login_required`): only a new consent helps.
    Reauth,
    /// The app's own credentials were refused (`invalid_client`, `unauthorized_client`): one
    /// problem for every connection, not a per-connection one.
    AppCredentials,
    /// 429, 5xx, `temporarily_unavailable`, `server_error`, timeouts, unreachable.
    Transient,
    /// Entra's loop detection (AADSTS50196).
    LoopDetected,
    /// Any other refusal (`invalid_request`, `invalid_scope`, an unusable response…).
    Rejected,
}

impl FailureClass {
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Reauth => "needs_reauth",
            FailureClass::AppCredentials => "app_credentials",
            FailureClass::Transient => "transient",
            FailureClass::LoopDetected => "loop_detected",
            FailureClass::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub class: FailureClass,
    /// What alerts deduplicate on: the OAuth `error`, or `http_503`, `timeout`, …
    pub code: String,
    /// The OAuth error and description (or what went wrong), safe to log and show.
    pub reason: String,
    pub retry_after: Option<Duration>,
    /// A refresh token that came back in an answer we could not use: it must be kept.
    pub rotated_refresh_token: Option<crate::secret::SecretString>,
}

impl Failure {
    pub fn new(class: FailureClass, code: &str, reason: &str) -> Self {
        Failure {
            class,
            code: code.to_owned(),
            reason: crate::telemetry::redact(reason).into_owned(),
            retry_after: None,
            rotated_refresh_token: None,
        }
    }
}

pub fn classify(error: &EndpointError) -> Failure {
    let reason = crate::telemetry::redact(&describe(error)).into_owned();
    let (class, retry_after) = match error {
        EndpointError::Rejected { status, body, retry_after } => {
            let loop_detected = body.error_codes.contains(&AADSTS_LOOP_DETECTED)
                || body.error_description.as_deref().is_some_and(|d| d.contains("AADSTS50196"));
            let class = if loop_detected {
                FailureClass::LoopDetected
            } else {
                match body.error.as_str() {
                    "invalid_grant" | "interaction_required" | "consent_required" | "login_required" => {
                        FailureClass::Reauth
                    }
                    "invalid_client" | "unauthorized_client" => FailureClass::AppCredentials,
                    "temporarily_unavailable" | "server_error" => FailureClass::Transient,
                    _ if *status == 429 || *status >= 500 => FailureClass::Transient,
                    _ => FailureClass::Rejected,
                }
            };
            (class, *retry_after)
        }
        EndpointError::Http { status, retry_after } if *status == 429 || *status >= 500 => {
            (FailureClass::Transient, *retry_after)
        }
        // Client authentication failed, without an OAuth body to say so.
        EndpointError::Http { status: 401, retry_after } => (FailureClass::AppCredentials, *retry_after),
        EndpointError::Http { retry_after, .. } => (FailureClass::Rejected, *retry_after),
        EndpointError::Timeout | EndpointError::Unreachable(_) => (FailureClass::Transient, None),
        EndpointError::InvalidResponse(_) | EndpointError::UnusableWithRefreshToken { .. } => {
            (FailureClass::Rejected, None)
        }
    };
    let rotated_refresh_token = match error {
        EndpointError::UnusableWithRefreshToken { refresh_token, .. } => Some(refresh_token.clone()),
        _ => None,
    };
    Failure {
        class,
        code: code(error),
        reason,
        retry_after: retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
        rotated_refresh_token,
    }
}

fn code(error: &EndpointError) -> String {
    match error {
        EndpointError::Rejected { body, .. } => body.error.chars().take(64).collect(),
        EndpointError::Http { status, .. } => format!("http_{status}"),
        EndpointError::Timeout => "timeout".into(),
        EndpointError::Unreachable(_) => "unreachable".into(),
        EndpointError::InvalidResponse(_) | EndpointError::UnusableWithRefreshToken { .. } => "invalid_response".into(),
    }
}

fn describe(error: &EndpointError) -> String {
    let EndpointError::Rejected { status, body, .. } = error else { return error.to_string() };
    let mut text = format!("{} (HTTP {status})", body.error);
    if let Some(description) = &body.error_description {
        // Entra's descriptions carry a trace id and timestamp after the first line.
        let first_line: String = description.lines().next().unwrap_or_default().chars().take(300).collect();
        text.push_str(": ");
        text.push_str(&first_line);
    }
    if let Some(trace) = &body.trace_id {
        text.push_str(&format!(" [trace_id {trace}]"));
    }
    if let Some(correlation) = &body.correlation_id {
        text.push_str(&format!(" [correlation_id {correlation}]"));
    }
    text
}

/// How long to leave the token endpoint alone after `failures` consecutive failures of this
/// kind: exponential with ±25% jitter for transient ones (5 s, 10 s, … 15 min), never less than
/// the server's `Retry-After`; fixed pauses for refusals and loop detection.
pub fn pause(failure: &Failure, failures: u32) -> Duration {
    let honoured = failure.retry_after.unwrap_or_default();
    match failure.class {
        FailureClass::Transient => jittered(exponential(failures)).max(honoured),
        FailureClass::LoopDetected => LOOP_PAUSE.max(jittered(exponential(failures) * 4)).max(honoured),
        FailureClass::Rejected | FailureClass::AppCredentials => REJECTED_PAUSE.max(honoured),
        FailureClass::Reauth => Duration::ZERO,
    }
}

/// The wait before trying again inside the same call, when it is short enough to be worth it:
/// only transient failures, only when the server asks for at most `max` (or says nothing).
pub fn retry_in_call(failure: &Failure, attempt: u32, max: Duration) -> Option<Duration> {
    if failure.class != FailureClass::Transient {
        return None;
    }
    let wait = failure.retry_after.unwrap_or_else(|| jittered(Duration::from_millis(500) * 2u32.pow(attempt)));
    (wait <= max).then_some(wait)
}

fn exponential(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (Duration::from_secs(5) * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::token::OAuthErrorBody;

    fn rejected(status: u16, error: &str, codes: &[i64]) -> EndpointError {
        EndpointError::Rejected {
            status,
            body: Box::new(OAuthErrorBody {
                error: error.into(),
                error_description: Some(format!("AADSTS{}: something\r\nTrace ID: x", codes.first().unwrap_or(&0))),
                error_codes: codes.to_vec(),
                ..Default::default()
            }),
            retry_after: None,
        }
    }

    #[test]
    fn classes_come_from_the_error_field_and_status() {
        for error in ["invalid_grant", "interaction_required", "consent_required", "login_required"] {
            assert_eq!(classify(&rejected(400, error, &[70008])).class, FailureClass::Reauth, "{error}");
        }
        for error in ["invalid_client", "unauthorized_client"] {
            assert_eq!(classify(&rejected(401, error, &[7000222])).class, FailureClass::AppCredentials);
        }
        assert_eq!(classify(&rejected(400, "temporarily_unavailable", &[])).class, FailureClass::Transient);
        assert_eq!(classify(&rejected(503, "whatever", &[])).class, FailureClass::Transient);
        assert_eq!(classify(&rejected(400, "invalid_scope", &[])).class, FailureClass::Rejected);
        assert_eq!(classify(&rejected(400, "invalid_grant", &[50196])).class, FailureClass::LoopDetected);
        let http = |status| EndpointError::Http { status, retry_after: Some(Duration::from_secs(7)) };
        assert_eq!(classify(&http(429)).class, FailureClass::Transient);
        assert_eq!(classify(&http(502)).retry_after, Some(Duration::from_secs(7)));
        assert_eq!(classify(&http(404)).class, FailureClass::Rejected);
        assert_eq!(classify(&http(401)).class, FailureClass::AppCredentials);
        assert_eq!(classify(&EndpointError::Timeout).class, FailureClass::Transient);
        // Message text does not decide: an invalid_request that mentions "expired" is a refusal.
        assert_eq!(classify(&rejected(400, "invalid_request", &[])).class, FailureClass::Rejected);
    }

    #[test]
    fn the_reason_keeps_the_first_line_and_diagnostics() {
        let mut error = rejected(400, "invalid_grant", &[70008]);
        if let EndpointError::Rejected { body, .. } = &mut error {
            body.trace_id = Some("t-1".into());
        }
        let reason = classify(&error).reason;
        assert_eq!(reason, "invalid_grant (HTTP 400): AADSTS70008: something [trace_id t-1]");
    }

    #[test]
    fn pauses_grow_honour_retry_after_and_stay_bounded() {
        let transient = |retry_after| Failure { retry_after, ..Failure::new(FailureClass::Transient, "", "") };
        let first = pause(&transient(None), 1);
        assert!(first >= Duration::from_millis(3750) && first <= Duration::from_millis(6250), "{first:?}");
        let tenth = pause(&transient(None), 10);
        assert!(tenth <= MAX_BACKOFF.mul_f64(1.25) && tenth >= MAX_BACKOFF.mul_f64(0.75), "{tenth:?}");
        assert_eq!(pause(&transient(Some(Duration::from_secs(120))), 1), Duration::from_secs(120));
        let rejected = Failure::new(FailureClass::Rejected, "", "");
        assert_eq!(pause(&rejected, 3), REJECTED_PAUSE);
        let looped = Failure::new(FailureClass::LoopDetected, "", "");
        assert!(pause(&looped, 1) >= LOOP_PAUSE);
        assert_eq!(
            retry_in_call(&transient(Some(Duration::from_secs(2))), 0, Duration::from_secs(5)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry_in_call(&transient(Some(Duration::from_secs(30))), 0, Duration::from_secs(5)), None);
        assert_eq!(retry_in_call(&rejected, 0, Duration::from_secs(5)), None);
        let retry_after =
            classify(&EndpointError::Http { status: 503, retry_after: Some(Duration::from_secs(86_400)) });
        assert_eq!(retry_after.retry_after, Some(MAX_RETRY_AFTER));
    }
}
