//! The handlers: what each function does, independent of how the request arrived.
//!
//! The front doors ([`crate::host`] for the Functions host's envelopes, [`crate::standalone`]
//! for plain HTTP) translate their input into [`HttpRequest`], [`TimerInfo`] or
//! [`QueueInput`], call [`App`], and translate the result back. Nothing in here knows about
//! envelopes or sockets.

mod authorize;
pub mod callback;
pub mod pages;
mod process;
mod status;
mod sync;
mod webhook;

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Settings;
use crate::functions::{Function, FunctionId, Trigger};
use crate::store::Stores;

pub use status::StatusReport;
pub use sync::{pull, refetch, resync, run_deadline};

/// How this process was started; reported by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `tcbridge serve`, behind the Functions host.
    Functions,
    /// `tcbridge serve --standalone`.
    Standalone,
    /// A CLI command.
    Cli,
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub settings: Arc<Settings>,
    pub stores: Stores,
    pub mode: Mode,
    pub started: Instant,
    /// Built on first use, so start-up (the host's readiness probe) does not wait for it.
    oauth: Arc<std::sync::OnceLock<crate::oauth::OAuthRuntime>>,
    /// This process's token cache and single-flight locks.
    tokens: Arc<crate::tokens::TokenService>,
    /// The one TrueContext client of the process (its local share of the call cap is shared).
    truecontext: Arc<std::sync::OnceLock<crate::truecontext::TrueContextClient>>,
    /// How the webhook verifies its callers (the JWT issuer's discovery is kept in it).
    webhook: Arc<crate::webhook::auth::Verifier>,
    webhook_counters: Arc<crate::webhook::counters::Counters>,
    /// The sources (`connections::sources`), read at most every few seconds.
    sources: Arc<tokio::sync::Mutex<Option<CachedSources>>>,
    /// Places for queued syncs in this process ([`App::sync_place`]).
    sync_places: Arc<tokio::sync::Semaphore>,
}

/// Queued syncs one process runs at once: half the queue worker's sixteen places (and the
/// host's default batch), so pushes always have the other half.
const SYNC_PLACES: usize = 8;

/// The sources and when they were read.
type CachedSources = (Instant, Arc<crate::connections::Sources>);

/// The webhook's entry in the function table.
fn functions_webhook() -> &'static Function {
    crate::functions::get(FunctionId::Webhook)
}

/// How long the webhook and processing trust their list of connections.
const SOURCES_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// An HTTP request as both front doors can describe it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: Method,
    /// Query parameters in order; repeated keys stay repeated.
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The address the connection came from, when the front door knows it (standalone; behind
    /// the host, the host is the peer and the caller is in `X-Forwarded-For`).
    pub peer: Option<std::net::IpAddr>,
}

impl HttpRequest {
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An HTTP response. The body is text because the host's JSON protocol cannot carry bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
        Self {
            status,
            headers: vec![
                (axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8")),
                (axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body,
        }
    }

    /// A JSON error body: `{"error": {"code": ..., "message": ...}}`.
    /// The message passes the log scrubber too: error text can carry what a caller sent.
    pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        let message = crate::telemetry::redact(&message.into()).into_owned();
        Self::json(status, &serde_json::json!({ "error": { "code": code, "message": message } }))
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// The timer trigger's payload, as the host sends it (`ScheduleStatus` may be absent).
#[derive(Debug, Clone, Default)]
pub struct TimerInfo {
    pub is_past_due: bool,
    pub last: Option<DateTime<Utc>>,
    pub next: Option<DateTime<Utc>>,
}

/// A queue message handed to a handler.
#[derive(Debug, Clone)]
pub struct QueueInput {
    pub id: String,
    pub dequeue_count: u32,
    pub body: String,
}

/// Why a timer or queue invocation failed. The front door reports it (host: a non-2xx reply,
/// so the host retries and poisons; standalone: redelivery with backoff).
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error("invalid message: {0}")]
    InvalidInput(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The invocation panicked: it fails alone (retried, then poisoned, by the front door).
    #[error(transparent)]
    Internal(#[from] crate::telemetry::Panicked),
}

impl App {
    pub fn new(settings: Arc<Settings>, stores: Stores, mode: Mode) -> Self {
        Self::with_token_service(settings, stores, mode, crate::tokens::TokenService::default())
    }

    /// An app with its own token service (tests: a clock that moves without waiting).
    pub fn with_token_service(
        settings: Arc<Settings>,
        stores: Stores,
        mode: Mode,
        tokens: crate::tokens::TokenService,
    ) -> Self {
        let webhook = Arc::new(crate::webhook::auth::Verifier::new(&settings.webhook, &settings.oauth));
        Self {
            settings,
            stores,
            mode,
            started: Instant::now(),
            oauth: Arc::default(),
            tokens: Arc::new(tokens),
            truecontext: Arc::default(),
            webhook,
            webhook_counters: Arc::default(),
            sources: Arc::default(),
            sync_places: Arc::new(tokio::sync::Semaphore::new(SYNC_PLACES)),
        }
    }

    /// The TrueContext client, made on first use.
    pub fn truecontext(&self) -> &crate::truecontext::TrueContextClient {
        self.truecontext
            .get_or_init(|| crate::truecontext::TrueContextClient::new(&self.settings.truecontext, self.stores.clone()))
    }

    pub fn webhook_verifier(&self) -> &crate::webhook::auth::Verifier {
        &self.webhook
    }

    pub fn webhook_counters(&self) -> &Arc<crate::webhook::counters::Counters> {
        &self.webhook_counters
    }

    /// A place for one queued sync, if this process has one free.
    pub fn sync_place(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.sync_places.clone().try_acquire_owned().ok()
    }

    /// The connections the bridge reads TrueContext as ([`crate::connections::sources`]), as
    /// read at most `SOURCES_TTL` (5 s) ago: the webhook and processing ask per push.
    pub async fn sources(&self) -> Result<Arc<crate::connections::Sources>, crate::store::StoreError> {
        let mut cached = self.sources.lock().await;
        if let Some((at, sources)) = cached.as_ref() {
            if at.elapsed() < SOURCES_TTL {
                return Ok(sources.clone());
            }
        }
        let sources = Arc::new(crate::connections::sources(&self.stores, &self.settings).await?);
        *cached = Some((Instant::now(), sources.clone()));
        Ok(sources)
    }

    /// The connections a push may belong to: every consented one but those disabled, and every
    /// one the bridge reads TrueContext as.
    pub async fn push_connections(&self) -> Result<Vec<String>, crate::store::StoreError> {
        let sources = self.sources().await?;
        let disabled = |c: &&crate::connections::Connection| c.state == crate::connections::ConnectionState::Disabled;
        let mut ids: Vec<String> = sources.consented.iter().filter(|c| !disabled(c)).map(|c| c.id.clone()).collect();
        ids.extend(sources.active.iter().map(|s| s.id.to_string()));
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Access tokens for connections: the one path everything that calls TrueContext uses.
    pub fn tokens(&self) -> crate::tokens::Tokens<'_> {
        let settings = &self.settings;
        crate::tokens::Tokens::new(&settings.oauth, &settings.tokens, &self.stores, self.oauth(), &self.tokens)
    }

    /// The OAuth client side: HTTP client, provider metadata, JWKS.
    pub fn oauth(&self) -> &crate::oauth::OAuthRuntime {
        self.oauth.get_or_init(|| crate::oauth::OAuthRuntime::new(&self.settings.oauth, self.stores.identity.clone()))
    }

    /// Queues a sync of `connection` on the incoming queue, run by the `process` function as
    /// soon as a worker takes it (the first sync after consent; the demo's at start).
    pub async fn sync_soon(&self, connection: &str) -> bool {
        process::queue_first_sync(self, connection).await
    }

    /// Upkeep that must not wait for a request: stored pushes whose request died before they
    /// were queued are queued, and alerts still owed to the alert webhook are posted. Run by
    /// every sync timer run and, while a server runs, every minute.
    /// The landing with this app's parts: its stores, `SUBMISSIONS_CONTAINER` and the landed
    /// events queue. Every landing (the sync, processing, a quarantine retry) starts here.
    pub fn landing(&self) -> crate::landing::Landing<'_> {
        let landing = &self.settings.landing;
        crate::landing::Landing::new(&self.stores, &landing.container, &landing.landed_queue)
    }

    /// The webhook's intake with this app's parts: where bodies are kept, the incoming queue,
    /// and when a stored push that was never queued is recovered.
    pub fn intake(&self) -> crate::webhook::Intake<'_> {
        crate::webhook::Intake {
            stores: &self.stores,
            container: &self.settings.landing.container,
            queue: &self.settings.queues.incoming,
            recovery_after: self.settings.webhook.recovery_after,
        }
    }

    pub async fn housekeeping(&self) {
        let connections = match crate::connections::known_ids(&self.stores, &self.settings).await {
            Ok(ids) => ids,
            Err(e) => return tracing::warn!(error = %e, "housekeeping could not read the connections"),
        };
        match crate::webhook::recover(&self.intake(), &connections).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(queued = n, "stored pushes that were never queued are queued now"),
            Err(e) => tracing::warn!(error = %e, "the recovery pass of stored pushes failed"),
        }
        if self.settings.sync.watch_pushes {
            let webhook = self.settings.tokens.alert_webhook.as_ref();
            let now = chrono::Utc::now();
            let landing = self.landing();
            match crate::sync::missed::check(&landing, webhook, &self.settings.sync, &connections, now).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(missed = n, "submissions the sync landed were never pushed"),
                Err(e) => tracing::warn!(error = %e, "the missed-push pass failed"),
            }
        }
        if let Some(webhook) = &self.settings.tokens.alert_webhook {
            match crate::alerts::deliver_pending(&self.stores, webhook, &connections).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(delivered = n, "owed alerts were posted"),
                Err(e) => tracing::warn!(error = %e, "owed alerts could not be read"),
            }
        }
    }

    /// Proxies in front of this instance that append to `X-Forwarded-For` (`TRUSTED_PROXY_HOPS`;
    /// by default the Functions front end under the host, none standalone).
    pub fn proxy_hops(&self) -> usize {
        self.settings.trusted_proxy_hops.unwrap_or(match self.mode {
            Mode::Functions => 1,
            Mode::Standalone | Mode::Cli => 0,
        })
    }

    /// The largest request body `function` takes: the anonymous callback a sign-in response's
    /// worth ([`callback::MAX_BODY_BYTES`]), the webhook `WEBHOOK_MAX_BODY_BYTES`, the others
    /// none. Front doors refuse a larger body before reading it; [`App::http`] refuses one that
    /// arrived whole (the host reads bodies itself).
    pub fn body_limit(&self, function: &Function) -> usize {
        match function.id {
            FunctionId::Callback => callback::MAX_BODY_BYTES,
            FunctionId::Webhook => self.settings.webhook.max_body_bytes,
            FunctionId::Authorize | FunctionId::Status | FunctionId::Sync | FunctionId::Process => 0,
        }
    }

    /// The answer to a body over [`App::body_limit`] (`size` when known); a refused push is
    /// counted.
    pub fn body_too_large(&self, function: &Function, size: Option<usize>) -> HttpResponse {
        let limit = self.body_limit(function);
        let size = size.map_or_else(String::new, |n| format!(" ({n} bytes)"));
        let name = function.name;
        let message = match (function.id, limit) {
            (FunctionId::Webhook, _) => {
                let message = format!("the body{size} is over the {limit} bytes of WEBHOOK_MAX_BODY_BYTES");
                self.webhook_counters.rejected("body_too_large", None);
                self.webhook_counters.refused_verified("body_too_large", &message);
                message
            }
            (_, 0) => format!("{name} takes no request body"),
            (_, _) => format!("the request body{size} is over the {limit} bytes {name} takes"),
        };
        HttpResponse::error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
    }

    /// What can be judged of a request from its headers alone, before its body is read: the
    /// webhook's caller. `Err` is the answer to a request refused here.
    pub async fn admit(
        &self,
        function: &Function,
        headers: &HeaderMap,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(), HttpResponse> {
        match function.id {
            FunctionId::Webhook => {
                let result = webhook::verify_caller(self, headers, peer).await;
                if result.is_err() {
                    crate::webhook::counters::Counters::bump(&self.webhook_counters.received);
                    self.webhook_counters.flush_soon(&self.stores);
                }
                result.map(|_| ())
            }
            FunctionId::Authorize
            | FunctionId::Callback
            | FunctionId::Status
            | FunctionId::Sync
            | FunctionId::Process => Ok(()),
        }
    }

    /// Answers an HTTP-triggered function. Authentication of the caller by function key is
    /// the front door's job (the host does it in Azure); everything else happens here. A panic
    /// answers this request 500 (logged, scrubbed, its message never sent) and nothing else.
    pub async fn http(&self, function: &Function, request: HttpRequest) -> HttpResponse {
        match crate::telemetry::isolate(self.http_unguarded(function, request)).await {
            Ok(response) => response,
            Err(panicked) => {
                tracing::error!(function = function.name, error = %panicked, "a request failed on an internal error");
                HttpResponse::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the request failed on an internal error; it was logged, and nothing else was affected",
                )
            }
        }
    }

    async fn http_unguarded(&self, function: &Function, request: HttpRequest) -> HttpResponse {
        let Trigger::Http { methods, .. } = function.trigger else {
            return HttpResponse::error(
                StatusCode::NOT_FOUND,
                "not_http",
                format!("{} is not an HTTP function", function.name),
            );
        };
        if !methods.iter().any(|m| request.method.as_str().eq_ignore_ascii_case(m)) {
            let allow = HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static("GET"));
            return HttpResponse::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} accepts {}", function.name, methods.join(" and ")),
            )
            .with_header(axum::http::header::ALLOW, allow);
        }
        // The webhook judges its body only after its caller (its own handler checks the size).
        if function.id != FunctionId::Webhook && request.body.len() > self.body_limit(function) {
            return self.body_too_large(function, Some(request.body.len()));
        }
        match function.id {
            FunctionId::Status => status::respond(self, &request).await,
            FunctionId::Authorize => authorize::respond(self, &request).await,
            FunctionId::Callback => callback::respond(self, &request).await,
            FunctionId::Webhook => webhook::respond(self, &request).await,
            // Not HTTP functions: refused above by their trigger.
            FunctionId::Sync | FunctionId::Process => HttpResponse::error(
                StatusCode::NOT_FOUND,
                "not_http",
                format!("{} is not an HTTP function", function.name),
            ),
        }
    }

    /// Runs a timer-triggered function; a panic fails this run alone.
    pub async fn timer(&self, function: &Function, info: TimerInfo) -> Result<(), InvocationError> {
        let run = async {
            match function.id {
                FunctionId::Sync => sync::run(self, info).await,
                FunctionId::Authorize
                | FunctionId::Callback
                | FunctionId::Webhook
                | FunctionId::Status
                | FunctionId::Process => {
                    Err(InvocationError::Unavailable(format!("{} is not a timer function", function.name)))
                }
            }
        };
        crate::telemetry::isolate(run).await?
    }

    /// Runs a queue-triggered function; a panic fails this message alone (redelivered, then
    /// poisoned).
    pub async fn queue(&self, function: &Function, input: QueueInput) -> Result<(), InvocationError> {
        let run = async {
            match function.id {
                FunctionId::Process => process::run(self, input).await,
                FunctionId::Authorize
                | FunctionId::Callback
                | FunctionId::Webhook
                | FunctionId::Status
                | FunctionId::Sync => {
                    Err(InvocationError::Unavailable(format!("{} is not a queue function", function.name)))
                }
            }
        };
        crate::telemetry::isolate(run).await?
    }
}
