//! The rest of a running service: the timer's schedule, token timing, alerts, logs, the
//! function key, queues and where submissions land.

use super::*;

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
    /// `RESYNC_BUDGET_SHARE_PERCENT`: a re-sync stops for the day once the team's calls today
    /// reach this share of the budget, so the regular sync always has the rest.
    pub resync_share_percent: u64,
    /// `MISSED_PUSH_GRACE_SECONDS`: how long after the sync lands a submission its push may
    /// still arrive before it counts as missed (with the webhook configured).
    pub missed_push_grace: Duration,
    /// `MISSED_PUSH_ALERT_THRESHOLD`: missed pushes of one form (since pushes last arrived for
    /// it) that raise the `pushes_missing` alert.
    pub missed_push_threshold: u64,
    /// The webhook is configured (`WEBHOOK_AUTH`): submissions the sync lands new are watched
    /// for their push.
    pub watch_pushes: bool,
}

/// Where landed data goes.
#[derive(Debug, Clone)]
pub struct LandingSettings {
    /// `SUBMISSIONS_CONTAINER`: raw documents, normalised records, media.
    pub container: String,
    /// `LANDED_QUEUE_NAME`: one message per new or changed record.
    pub landed_queue: String,
}

pub(super) fn parse_schedule(p: &mut Parser<'_>) -> Schedule {
    let text = p.get("SYNC_SCHEDULE").unwrap_or(DEFAULT_SYNC_SCHEDULE).to_owned();
    match text.parse() {
        Ok(schedule) => schedule,
        Err(e) => {
            p.problem("SYNC_SCHEDULE", format!("{text:?}: {e}"), "0 */30 * * * * (every 30 minutes)");
            DEFAULT_SYNC_SCHEDULE.parse().expect("default schedule parses")
        }
    }
}

pub(super) fn parse_alert_webhook(p: &mut Parser<'_>) -> Option<AlertWebhook> {
    let format = p.choice(
        "ALERT_WEBHOOK_FORMAT",
        AlertFormat::Text,
        &[("text", AlertFormat::Text), ("adaptive-card", AlertFormat::AdaptiveCard)],
    );
    let url = p.url("ALERT_WEBHOOK_URL", "https://example.webhook.office.com/webhookb2/...")?;
    Some(AlertWebhook { url, format })
}

pub(super) fn parse_function_key(p: &mut Parser<'_>) -> Option<SecretString> {
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

pub(super) fn parse_landing(p: &mut Parser<'_>) -> LandingSettings {
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

pub(super) fn parse_queues(p: &mut Parser<'_>) -> QueueSettings {
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
