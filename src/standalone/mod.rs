//! The standalone front door: `tcbridge serve --standalone`, the same handlers as plain HTTP
//! under `/api/...`, with the `sync` timer and the `process` queue run in-process.
//!
//! It plays the host's part: routes are matched case-insensitively, and routes whose
//! `function.json` says `authLevel: function` require the function key (`x-functions-key`
//! header or `code` query parameter), compared in constant time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::functions::{self, AuthLevel, Function, Trigger};
use crate::handlers::{pages, App, HttpRequest, HttpResponse, InvocationError, QueueInput, TimerInfo};
use crate::schedule::Schedule;
use crate::secret::SecretString;
use crate::store::{QueueStore, StoreError, Stores};

mod server;

pub use server::{serve, ServerLimits};

/// The secret-store name under which a generated standalone function key is kept.
pub const FUNCTION_KEY_SECRET: &str = "standalone-function-key";

#[derive(Clone)]
struct Standalone {
    app: App,
    function_key: SecretString,
    body_timeout: Duration,
}

/// Query parameters one request may carry (a sign-in response has five or six).
const MAX_QUERY_PAIRS: usize = 64;

pub fn router(app: App, function_key: SecretString, limits: ServerLimits) -> Router {
    Router::new()
        .fallback(handle)
        // Each route's own limit is applied in `route`, before the body is read.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(Standalone { app, function_key, body_timeout: limits.body_timeout })
}

/// The key that function-level routes require: `FUNCTION_KEY` when set; otherwise the one
/// generated on an earlier start and kept in the secret store; otherwise a new random one,
/// kept and announced once on the terminal (returned as `true`).
pub async fn function_key(
    configured: Option<&SecretString>,
    stores: &Stores,
) -> Result<(SecretString, bool), StoreError> {
    if let Some(key) = configured {
        return Ok((key.clone(), false));
    }
    if let Some(stored) = stores.secrets.get(FUNCTION_KEY_SECRET, None).await? {
        return Ok((stored.value, false));
    }
    use base64::Engine;
    let key = SecretString::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()));
    stores.secrets.set(FUNCTION_KEY_SECRET, &key).await?;
    // Two instances starting at once may both generate one; the latest version wins for both.
    let winner = stores.secrets.get(FUNCTION_KEY_SECRET, None).await?.map(|v| v.value).unwrap_or(key);
    Ok((winner, true))
}

/// Every request, isolated: a panic anywhere on its way answers it 500 and affects nothing else
/// (the handlers isolate their own work too; this covers the front door's part).
async fn handle(State(state): State<Standalone>, request: Request) -> Response {
    match crate::telemetry::isolate(route(state, request)).await {
        Ok(response) => response,
        Err(panicked) => {
            tracing::error!(error = %panicked, "a request failed on an internal error");
            to_axum(HttpResponse::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request failed on an internal error; it was logged",
            ))
        }
    }
}

async fn route(state: Standalone, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let route = path.strip_prefix("/api/").or_else(|| path.strip_prefix("/API/")).map(|r| r.trim_end_matches('/'));
    let Some(function) = route.and_then(functions::by_route) else {
        return to_axum(HttpResponse::error(
            StatusCode::NOT_FOUND,
            "not_found",
            // Not the whole path back: a 60 KB path once made each 404 a 60 KB answer.
            format!("no function is served at {}", crate::telemetry::printable(&path, 100)),
        ));
    };
    let Trigger::Http { auth, .. } = function.trigger else { unreachable!("by_route finds HTTP functions only") };
    let (parts, body) = request.into_parts();
    let pairs = parts.uri.query().map(|q| url::form_urlencoded::parse(q.as_bytes())).into_iter().flatten();
    let query: Vec<(String, String)> =
        pairs.take(MAX_QUERY_PAIRS + 1).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if query.len() > MAX_QUERY_PAIRS {
        return to_axum(HttpResponse::error(
            StatusCode::BAD_REQUEST,
            "too_many_parameters",
            format!("the query has more than {MAX_QUERY_PAIRS} parameters"),
        ));
    }
    if auth == AuthLevel::Function && !key_matches(&state.function_key, &parts.headers, &query) {
        tracing::warn!(function = function.name, "request without a valid function key refused");
        let message = "this route needs the function key, as the x-functions-key header or the code query parameter";
        if pages::accepts_html(&parts.headers) {
            return to_axum(pages::error_page(
                StatusCode::UNAUTHORIZED,
                "This link needs the function key.",
                "Open the link with &code=<function key> added (tcbridge consent-url prints the link; the key is \
                 FUNCTION_KEY, or the one printed when this server first started).",
                &[],
            ));
        }
        return to_axum(HttpResponse::error(StatusCode::UNAUTHORIZED, "function_key_required", message));
    }
    // The caller is judged before its body is read where its credential is in the headers (the
    // webhook), and no body is read past the route's own limit: what an anonymous request can
    // make this server hold is bounded by the route, not by the largest push.
    let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip());
    if let Err(refused) = state.app.admit(function, &parts.headers, peer).await {
        return to_axum(refused);
    }
    let limit = state.app.body_limit(function);
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = declared.filter(|length| *length > limit as u64) {
        return to_axum(state.app.body_too_large(function, usize::try_from(length).ok()));
    }
    let body = match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Vec::from(bytes),
        Ok(Err(_)) => return to_axum(state.app.body_too_large(function, None)),
        Err(_) => {
            return to_axum(HttpResponse::error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the request body did not arrive within {} s", state.body_timeout.as_secs()),
            ))
        }
    };
    let request = HttpRequest { method: parts.method, query, headers: parts.headers, body, peer };
    let span = tracing::info_span!("request", function = function.name);
    to_axum(tracing::Instrument::instrument(state.app.http(function, request), span).await)
}

fn key_matches(key: &SecretString, headers: &axum::http::HeaderMap, query: &[(String, String)]) -> bool {
    let from_header = headers.get("x-functions-key").and_then(|v| v.to_str().ok());
    let from_query = query.iter().find(|(k, _)| k == "code").map(|(_, v)| v.as_str());
    // Evaluate both, so timing does not tell which one was tried.
    let header_ok = from_header.is_some_and(|v| key.ct_eq(v));
    let query_ok = from_query.is_some_and(|v| key.ct_eq(v));
    header_ok | query_ok
}

fn to_axum(response: HttpResponse) -> Response {
    let mut out = Response::new(Body::from(response.body));
    *out.status_mut() = response.status;
    for (name, value) in response.headers {
        out.headers_mut().append(name, value);
    }
    if !out.headers().contains_key(header::CONTENT_TYPE) {
        out.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    out
}

/// Runs `function` on `schedule` until `stop` fires. A run that overlaps the next tick skips
/// it (the next run starts at the first tick after the current one ends), and a tick more
/// than a minute late is reported as past due, as the host does.
pub async fn run_timer(app: App, function: &'static Function, schedule: Schedule, stop: CancellationToken) {
    let mut last = None;
    loop {
        let Some(next) = schedule.next_after(Utc::now()) else {
            tracing::warn!(function = function.name, "the schedule has no further occurrence; timer stopped");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let late = Utc::now() - next;
        let info =
            TimerInfo { is_past_due: late > chrono::TimeDelta::minutes(1), last, next: schedule.next_after(next) };
        if let Err(e) = app.timer(function, info).await {
            tracing::error!(function = function.name, error = %e, "timer invocation failed");
        }
        last = Some(next);
    }
}

/// Runs [`App::housekeeping`] every `every` until `stop` fires (the first time at once, so a
/// restart queues what a crash left stranded).
pub async fn run_housekeeping(app: App, every: Duration, stop: CancellationToken) {
    loop {
        app.housekeeping().await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Writes this process's counters whenever one changed, every [`FLUSH_EVERY`], so what happened
/// since the last request (a restart, say) reaches status.
///
/// [`FLUSH_EVERY`]: crate::webhook::counters::FLUSH_EVERY
pub async fn run_counters(app: App, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(crate::webhook::counters::FLUSH_EVERY) => {}
        }
        if let Err(e) = app.webhook_counters().flush_if_changed(&app.stores).await {
            tracing::debug!(error = %e, "the counters could not be written");
        }
    }
}

/// The first wait before a stopped task is started again; doubled per restart up to
/// [`MAX_RESTART_WAIT`], and back to this after a task ran [`STEADY_RUN`] without stopping.
const FIRST_RESTART_WAIT: Duration = Duration::from_secs(1);
const MAX_RESTART_WAIT: Duration = Duration::from_secs(60);
const STEADY_RUN: Duration = Duration::from_secs(300);

/// Keeps one long-lived task of a server (the timer, the queue worker, housekeeping, the
/// counters) running until `stop` fires: one that ends or panics before then is logged,
/// counted (status shows restarts) and started again after a growing wait. Before, a panic in
/// the queue worker ended it for good while everything else, status included, looked fine.
pub async fn supervise<F, Fut>(app: App, task: &'static str, stop: CancellationToken, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut wait = FIRST_RESTART_WAIT;
    loop {
        let started = std::time::Instant::now();
        let ended = tokio::spawn(start()).await;
        if stop.is_cancelled() {
            return;
        }
        let reason = match ended {
            Ok(()) => "it ended".to_owned(),
            Err(e) if e.is_panic() => crate::telemetry::Panicked::from_payload(e.into_panic().as_ref()).to_string(),
            Err(_) => "it was cancelled".to_owned(),
        };
        if started.elapsed() >= STEADY_RUN {
            wait = FIRST_RESTART_WAIT;
        }
        tracing::error!(task, reason = %reason, wait_ms = wait.as_millis() as u64, "a supervised task stopped; it is started again");
        let counters = app.webhook_counters();
        counters.restarted(task, &reason);
        if let Err(e) = counters.flush(&app.stores).await {
            tracing::warn!(error = %e, "the restart could not be recorded for status");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(MAX_RESTART_WAIT);
    }
}

/// Messages a worker has in hand at once, as the host's queue trigger's default `batchSize`.
pub const BATCH_SIZE: usize = 16;

type QueueHandler =
    Arc<dyn Fn(QueueInput) -> Pin<Box<dyn Future<Output = Result<(), InvocationError>> + Send>> + Send + Sync>;

/// How the in-process queue listener behaves; defaults mirror the host's queue extension.
#[derive(Clone)]
pub struct QueueWorker {
    pub queue: String,
    /// Deliveries before a message moves to `<queue>-poison`.
    pub max_dequeue_count: u32,
    /// How long a message stays hidden while a handler works on it.
    pub visibility_timeout: Duration,
    /// First retry delay after a failure; doubles per delivery, capped at the visibility timeout.
    pub retry_delay: Duration,
    /// How long to wait when the queue is empty.
    pub idle_poll: Duration,
    pub handler: QueueHandler,
}

impl QueueWorker {
    /// The worker for a queue function of `app`.
    pub fn for_function(app: App, function: &'static Function) -> Self {
        let settings = &app.settings.queues;
        let (queue, max_dequeue_count, visibility_timeout) =
            (settings.incoming.clone(), settings.max_dequeue_count, settings.visibility_timeout);
        let retry_delay = settings.retry_delay;
        let handler: QueueHandler = Arc::new(move |input| {
            let app = app.clone();
            Box::pin(async move { app.queue(function, input).await })
        });
        Self {
            queue,
            max_dequeue_count,
            visibility_timeout,
            retry_delay,
            idle_poll: Duration::from_millis(500),
            handler,
        }
    }

    pub fn poison_queue(&self) -> String {
        format!("{}-poison", self.queue)
    }

    /// Works the queue until `stop` fires, then lets the messages in hand finish. Up to
    /// [`BATCH_SIZE`] messages are in hand at once, each on its own task, and a free place is
    /// filled as soon as one finishes: a slow message holds up only itself (it once held up the
    /// whole batch it came with, and every push behind it, for minutes).
    pub async fn run(self, queues: Arc<dyn QueueStore>, stop: CancellationToken) {
        let worker = Arc::new(self);
        let places = Arc::new(tokio::sync::Semaphore::new(BATCH_SIZE));
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                place = places.clone().acquire_owned() => match place { Ok(place) => place, Err(_) => break },
            };
            let free = 1 + places.available_permits();
            let batch = match queues.dequeue(&worker.queue, free, worker.visibility_timeout).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(queue = %worker.queue, error = %e, "queue poll failed");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                drop(first);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(worker.idle_poll) => {}
                }
                continue;
            }
            let mut first = Some(first);
            for message in batch {
                // Only this loop takes places, so those counted free are still free.
                let place = match first.take() {
                    Some(place) => place,
                    None => match places.clone().acquire_owned().await {
                        Ok(place) => place,
                        Err(_) => break,
                    },
                };
                let (worker, queues) = (worker.clone(), queues.clone());
                tokio::spawn(async move {
                    if let Err(e) = worker.handle(queues.as_ref(), message).await {
                        tracing::error!(queue = %worker.queue, error = %e, "a message could not be settled");
                    }
                    drop(place);
                });
            }
        }
        // The messages in hand finish their work before the worker ends.
        let _ = places.acquire_many(BATCH_SIZE as u32).await;
    }

    /// Takes one batch and handles its messages concurrently, as the host's queue trigger does
    /// (`batchSize`); returns how many messages it took (the tests' way to work the queue).
    pub async fn poll_once(&self, queues: &dyn QueueStore) -> Result<usize, StoreError> {
        let batch = queues.dequeue(&self.queue, BATCH_SIZE, self.visibility_timeout).await?;
        let taken = batch.len();
        let handled = futures::future::join_all(batch.into_iter().map(|message| self.handle(queues, message))).await;
        handled.into_iter().collect::<Result<Vec<()>, StoreError>>()?;
        Ok(taken)
    }

    /// Runs the handler on one message, then deletes it, retries it later, or poisons it.
    async fn handle(&self, queues: &dyn QueueStore, message: crate::store::QueueMessage) -> Result<(), StoreError> {
        let input =
            QueueInput { id: message.id.clone(), dequeue_count: message.dequeue_count, body: message.body.clone() };
        let span = tracing::info_span!("message", queue = %self.queue, id = %message.id, dequeue_count = message.dequeue_count);
        // The handler isolates its own work; this also covers a handler that does not, so one
        // message's panic can never end the worker.
        let handled = crate::telemetry::isolate(tracing::Instrument::instrument((self.handler)(input), span)).await;
        let result = handled.unwrap_or_else(|panicked| Err(panicked.into()));
        match result {
            Ok(()) => queues.delete_message(&self.queue, &message.id, &message.pop_receipt).await?,
            Err(e) if message.dequeue_count >= self.max_dequeue_count => {
                tracing::error!(queue = %self.queue, id = %message.id, error = %e,
                    "message failed {} times; moving it to {}", message.dequeue_count, self.poison_queue());
                // Enqueue first: a crash in between leaves a duplicate, never a loss.
                queues.enqueue(&self.poison_queue(), &message.body, Duration::ZERO).await?;
                queues.delete_message(&self.queue, &message.id, &message.pop_receipt).await?;
            }
            Err(e) => {
                let delay = self.retry_delay_for(message.dequeue_count);
                tracing::warn!(queue = %self.queue, id = %message.id, error = %e,
                    "message failed (delivery {}); retrying in {:?}", message.dequeue_count, delay);
                queues.set_visibility(&self.queue, &message.id, &message.pop_receipt, delay).await?;
            }
        }
        Ok(())
    }

    fn retry_delay_for(&self, dequeue_count: u32) -> Duration {
        let factor = 1u32 << dequeue_count.saturating_sub(1).min(16);
        self.retry_delay.saturating_mul(factor).min(self.visibility_timeout)
    }
}
