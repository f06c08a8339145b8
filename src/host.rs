//! The custom-handler front door: `tcbridge serve` behind the Azure Functions host.
//!
//! The host polls `GET /` until it gets any answer, then posts one JSON envelope per
//! invocation to `POST /<FunctionName>` and expects `200 application/json` with
//! `{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}`. The shapes and quirks handled here
//! (double-encoded strings, header arrays, comma-joined query values, base64 bodies, a null
//! `ScheduleStatus`) are described, with their sources, in `docs/custom-handler-protocol.md`.
//!
//! A reply other than 2xx fails the invocation (the host then retries a queue message and
//! poisons it after `maxDequeueCount`), so we answer non-2xx exactly when the invocation
//! failed: an unknown function (404), an envelope we cannot read (400), a timer or queue
//! handler error (500). An HTTP function's own errors are 200 envelopes whose `res` carries
//! the 4xx/5xx for the caller.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::functions::{self, Function, Trigger, HTTP_OUTPUT};
use crate::handlers::{App, HttpRequest, HttpResponse, InvocationError, QueueInput, TimerInfo};
use crate::telemetry::InvocationLogs;

#[derive(Clone)]
struct HostState {
    app: App,
    envelope_limit: usize,
}

pub fn router(app: App) -> Router {
    let envelope_limit = envelope_limit(app.settings.max_request_body_bytes);
    Router::new()
        .route("/", get(ready).head(ready).fallback(wrong_method))
        .route("/{function}", post(invoke).fallback(wrong_method))
        .fallback(not_found)
        // The limit is enforced in `invoke`, with an error the caller can read.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(HostState { app, envelope_limit })
}

/// The largest envelope we read: the largest request body, base64-inflated, plus headroom for
/// the rest of the envelope.
pub fn envelope_limit(max_body: usize) -> usize {
    max_body / 3 * 4 + 4 + 1024 * 1024
}

/// The readiness probe: the host polls this every 25 ms at start-up. It must be instant.
async fn ready() -> Response {
    reply(StatusCode::OK, json!({ "ready": true }))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        error_body(
            "not_found",
            format!("{method} {} is not a route; the host posts invocations to /<FunctionName>", uri.path()),
        ),
    )
}

async fn wrong_method(method: Method, uri: axum::http::Uri) -> Response {
    let message = format!("{method} {}: the host posts invocations with POST", uri.path());
    let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, error_body("method_not_allowed", message));
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

fn reply(status: StatusCode, body: Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    response
}

fn error_body(code: &str, message: String) -> Value {
    let message = crate::telemetry::redact(&message).into_owned();
    json!({ "Outputs": {}, "Logs": [format!("error: {message}")], "ReturnValue": null,
            "error": { "code": code, "message": message } })
}

/// One invocation, isolated: a panic on its way is a failed invocation (500, so the host
/// retries a queue message and poisons it in the end), never a dropped connection.
async fn invoke(State(state): State<HostState>, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let function = shown(&name);
    match crate::telemetry::isolate(invoke_unguarded(state, name, headers, body)).await {
        Ok(response) => response,
        Err(panicked) => {
            tracing::error!(function = %function, error = %panicked, "an invocation failed on an internal error");
            reply(StatusCode::INTERNAL_SERVER_ERROR, error_body("invocation_failed", panicked.to_string()))
        }
    }
}

async fn invoke_unguarded(state: HostState, name: String, headers: HeaderMap, body: Body) -> Response {
    let app = state.app;
    let Some(function) = functions::by_name(&name) else {
        // Read the envelope anyway: replying before the body is consumed makes hyper close the
        // connection, and the host's next invocation on it would fail.
        let _ = read_envelope(body, state.envelope_limit).await;
        tracing::warn!(function = %name, "invocation for an unknown function");
        return reply(
            StatusCode::NOT_FOUND,
            error_body(
                "unknown_function",
                format!("no function named {:?}; this app has {}", shown(&name), functions::names()),
            ),
        );
    };
    let body = match read_envelope(body, state.envelope_limit).await {
        Ok(body) => body,
        Err(Unread::Broken) => {
            tracing::warn!(function = function.name, "the connection failed before the envelope was read");
            return bad_envelope(function, "the envelope could not be read to its end".into());
        }
        Err(Unread::TooLarge { drained }) => {
            let message = format!(
                "the invocation envelope is over {} bytes (the limit follows MAX_REQUEST_BODY_BYTES)",
                state.envelope_limit
            );
            tracing::warn!(function = function.name, "{message}");
            let mut response = reply(StatusCode::PAYLOAD_TOO_LARGE, error_body("envelope_too_large", message));
            if !drained {
                // The rest of the body is not read, so this connection cannot carry another
                // request; say so, so the host opens a new one instead of failing on this one.
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return response;
        }
    };
    let invocation_id = headers.get("x-azure-functions-invocationid").and_then(|v| v.to_str().ok()).unwrap_or("-");
    let invocation = match decode_invocation(function, &body, app.settings.max_request_body_bytes) {
        Ok(invocation) => invocation,
        Err(message) => return bad_envelope(function, message),
    };
    let logs = InvocationLogs::default();
    let span = tracing::info_span!("invocation", function = function.name, invocation_id = %invocation_id);
    let outcome = logs.capture(tracing::Instrument::instrument(dispatch(&app, function, invocation), span)).await;
    let lines = logs.take();
    match outcome {
        Ok(outputs) => reply(StatusCode::OK, json!({ "Outputs": outputs, "Logs": lines, "ReturnValue": null })),
        Err(e) => {
            tracing::error!(function = function.name, error = %e, "invocation failed");
            let mut body = error_body("invocation_failed", e.to_string());
            if let Some(Value::Array(said)) = body.get_mut("Logs") {
                let mut all: Vec<Value> = lines.into_iter().map(Value::from).collect();
                all.append(said);
                *said = all;
            }
            reply(StatusCode::INTERNAL_SERVER_ERROR, body)
        }
    }
}

/// Why an envelope was not read whole.
enum Unread {
    /// Over the limit; `drained` when the rest of it was read and thrown away.
    TooLarge { drained: bool },
    /// The connection failed mid-body; nobody is left to answer.
    Broken,
}

/// Reads the envelope up to `limit` bytes. Past the limit it keeps reading, without keeping,
/// up to [`DRAIN_FACTOR`] times the limit: a client still writing its body when the reply
/// comes and the socket closes gets a broken pipe instead of our 413, so the host would
/// log a transport failure rather than the reason. Beyond that the connection is given up.
async fn read_envelope(body: Body, limit: usize) -> Result<axum::body::Bytes, Unread> {
    use futures::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = chunks.next().await {
        let data = chunk.map_err(|_| Unread::Broken)?;
        seen = seen.saturating_add(data.len());
        if seen > limit.saturating_mul(DRAIN_FACTOR) {
            return Err(Unread::TooLarge { drained: false });
        }
        if seen <= limit {
            kept.extend_from_slice(&data);
        }
    }
    if seen > limit {
        return Err(Unread::TooLarge { drained: true });
    }
    Ok(kept.into())
}

/// How far past the envelope limit a refused body is still read (see [`read_envelope`]).
const DRAIN_FACTOR: usize = 4;

fn bad_envelope(function: &Function, message: String) -> Response {
    tracing::warn!(function = function.name, error = %message, "unreadable invocation envelope");
    reply(StatusCode::BAD_REQUEST, error_body("invalid_envelope", format!("{}: {message}", function.name)))
}

/// What an invocation envelope asks of its function, read and checked before anything runs.
#[derive(Debug)]
pub enum Invocation {
    /// `Data.req`; `Err` carries the answer for a request refused as it stands (too large).
    Http(Result<HttpRequest, HttpResponse>),
    Timer(TimerInfo),
    Queue(QueueInput),
}

/// Reads the envelope the host posted to `function` (public for the fuzz targets, which feed
/// it any bytes). `Err` names what is malformed; nothing has run.
pub fn decode_invocation(function: &Function, body: &[u8], max_body: usize) -> Result<Invocation, String> {
    let envelope = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Envelope::from_json(map)?,
        Ok(_) => return Err("the envelope must be a JSON object with Data and Metadata".into()),
        Err(e) => return Err(format!("the envelope is not valid JSON: {e}")),
    };
    let data = envelope.data.get(function.binding);
    Ok(match function.trigger {
        Trigger::Http { .. } => Invocation::Http(decode_http(data, max_body)?),
        Trigger::Timer => Invocation::Timer(decode_timer(data)?),
        Trigger::Queue => Invocation::Queue(decode_queue(data, &envelope.metadata)?),
    })
}

async fn dispatch(app: &App, function: &'static Function, invocation: Invocation) -> Result<Value, InvocationError> {
    match invocation {
        Invocation::Http(request) => {
            let response = match request {
                Ok(request) => app.http(function, request).await,
                Err(too_large) => too_large,
            };
            Ok(json!({ HTTP_OUTPUT: encode_http(&response) }))
        }
        Invocation::Timer(info) => {
            app.timer(function, info).await?;
            Ok(json!({}))
        }
        Invocation::Queue(input) => {
            app.queue(function, input).await?;
            Ok(json!({}))
        }
    }
}

/// The invocation envelope: `Data` keyed by binding name, `Metadata` with the trigger's
/// binding data. Top-level names are matched case-insensitively, as the host's serializer does.
#[derive(Debug, Default)]
struct Envelope {
    data: Map<String, Value>,
    metadata: Map<String, Value>,
}

impl Envelope {
    fn from_json(map: Map<String, Value>) -> Result<Self, String> {
        let mut envelope = Envelope::default();
        for (key, value) in map {
            let slot = match key.to_ascii_lowercase().as_str() {
                "data" => &mut envelope.data,
                "metadata" => &mut envelope.metadata,
                _ => continue,
            };
            match value {
                Value::Object(inner) => *slot = inner,
                Value::Null => {}
                other => return Err(format!("{} must be an object, not {}", shown(&key), kind(&other))),
            }
        }
        Ok(envelope)
    }
}

/// An outside name or value as an error shows it: never the whole of a long one.
fn shown(text: &str) -> String {
    crate::telemetry::printable(text, 64)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Unwraps the host's double encoding: `"\"abc\""` is `abc`, `"4"` is `4`; plain text stays.
pub fn unwrap_host_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::String(inner)) => Some(inner),
            Ok(Value::Number(n)) => Some(n.to_string()),
            Ok(Value::Bool(b)) => Some(b.to_string()),
            _ => Some(s.clone()),
        },
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Looks a key up case-insensitively (the host's serializer is PascalCase, stand-ins vary).
fn field<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// Reads `Data.req`. `Ok(Err(response))` when the request itself is unacceptable (too large)
/// and the caller should get that response; `Err` when the envelope is malformed.
fn decode_http(data: Option<&Value>, max_body: usize) -> Result<Result<HttpRequest, HttpResponse>, String> {
    let Some(Value::Object(req)) = data else {
        return Err("Data.req is missing or not an object".into());
    };
    let method_text =
        field(req, "Method").and_then(Value::as_str).ok_or("Data.req.Method is missing or not a string")?;
    let method = Method::from_bytes(method_text.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("Data.req.Method {:?} is not an HTTP method", shown(method_text)))?;
    let headers = decode_headers(field(req, "Headers"))?;
    let query = decode_query(field(req, "Url"), field(req, "Query"))?;
    let body = match field(req, "Body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => {
            if is_base64_content(&headers) {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| format!("Data.req.Body should be base64 for this content type: {e}"))?
            } else {
                text.clone().into_bytes()
            }
        }
        // Some stand-ins send a JSON body as an object rather than as text.
        Some(other @ (Value::Object(_) | Value::Array(_))) => other.to_string().into_bytes(),
        Some(other) => return Err(format!("Data.req.Body must be a string, not {}", kind(other))),
    };
    if body.len() > max_body {
        return Ok(Err(HttpResponse::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is {} bytes; the limit is {max_body} (MAX_REQUEST_BODY_BYTES)", body.len()),
        )));
    }
    Ok(Ok(HttpRequest { method, query, headers, body, peer: None }))
}

fn decode_headers(value: Option<&Value>) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    let Some(value) = value else { return Ok(headers) };
    let Value::Object(map) = value else {
        return Err(format!("Data.req.Headers must be an object, not {}", kind(value)));
    };
    for (name, values) in map {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            return Err(format!("Data.req.Headers has an invalid header name {:?}", shown(name)));
        };
        let values: Vec<&str> = match values {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            Value::String(s) => vec![s.as_str()],
            other => {
                return Err(format!(
                    "Data.req.Headers.{} must be an array of strings, not {}",
                    shown(name.as_str()),
                    kind(other)
                ))
            }
        };
        for v in values {
            let v = HeaderValue::from_str(v)
                .map_err(|_| format!("Data.req.Headers.{} has an invalid value", shown(name.as_str())))?;
            headers.append(name.clone(), v);
        }
    }
    Ok(headers)
}

/// The query from the raw `Url` when it has one (repeated keys survive there), else from the
/// `Query` object (where the host has already joined repeated keys with commas).
fn decode_query(url: Option<&Value>, query: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    if let Some(Value::String(url)) = url {
        if let Some((_, raw)) = url.split_once('?') {
            let raw = raw.split('#').next().unwrap_or("");
            return Ok(url::form_urlencoded::parse(raw.as_bytes()).into_owned().collect());
        }
    }
    match query {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => Ok(map
            .iter()
            .filter_map(|(k, v)| {
                unwrap_host_string(v).or_else(|| v.as_array().map(|_| v.to_string())).map(|v| (k.clone(), v))
            })
            .collect()),
        // Hosts before 3.0.14785 sent the query as a JSON string.
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(inner @ Value::Object(_)) => decode_query(None, Some(&inner)),
            _ => Err("Data.req.Query is a string that is not a JSON object".into()),
        },
        Some(other) => Err(format!("Data.req.Query must be an object, not {}", kind(other))),
    }
}

/// The host sends octet-stream and multipart bodies base64-encoded, everything else as text.
fn is_base64_content(headers: &HeaderMap) -> bool {
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    content_type.starts_with("application/octet-stream") || content_type.starts_with("multipart/")
}

/// `Outputs.res`: status as a number, headers as single strings (the host cannot carry
/// repeated headers, so repeats are joined, except `Set-Cookie` which cannot be joined).
fn encode_http(response: &HttpResponse) -> Value {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &response.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(&display_header_name(name)) {
            Some(_) if name == header::SET_COOKIE => {
                tracing::warn!("a second Set-Cookie header was dropped: the host carries one per response");
            }
            Some(existing) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            None => {
                headers.insert(display_header_name(name), value);
            }
        }
    }
    json!({ "statusCode": response.status.as_u16(), "headers": headers, "body": response.body })
}

/// `content-type` → `Content-Type`, as clients and the host's special cases expect.
fn display_header_name(name: &HeaderName) -> String {
    name.as_str()
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn decode_timer(data: Option<&Value>) -> Result<TimerInfo, String> {
    let timer = match data {
        None | Some(Value::Null) => {
            return Err(
                "Data.timer is missing: the host sends the timer under the binding name in sync/function.json".into()
            )
        }
        Some(Value::Object(map)) => map.clone(),
        // Be lenient with a stand-in that double-encodes the object too.
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            _ => return Err("Data.timer is a string that is not a JSON object".into()),
        },
        Some(other) => return Err(format!("Data.timer must be an object, not {}", kind(other))),
    };
    let is_past_due = match field(&timer, "IsPastDue") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => match unwrap_host_string(v).as_deref() {
            Some("true") | Some("True") => true,
            Some("false") | Some("False") => false,
            _ => return Err("Data.timer.IsPastDue must be a boolean".into()),
        },
    };
    let (last, next) = match field(&timer, "ScheduleStatus") {
        Some(Value::Object(status)) => (host_time(field(status, "Last")), host_time(field(status, "Next"))),
        _ => (None, None),
    };
    Ok(TimerInfo { is_past_due, last, next })
}

/// .NET date-times: 7-digit fractions, `Z`, an offset or none (taken as UTC); `0001-01-01`
/// means "never".
fn host_time(value: Option<&Value>) -> Option<DateTime<Utc>> {
    let text = unwrap_host_string(value?)?;
    let parsed = DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc()))
        .ok()?;
    (parsed.timestamp() > 0).then_some(parsed)
}

fn decode_queue(data: Option<&Value>, metadata: &Map<String, Value>) -> Result<QueueInput, String> {
    let body = match data {
        None | Some(Value::Null) => return Err("Data.msg is missing".into()),
        Some(Value::String(text)) => queue_text(text)?,
        Some(other @ (Value::Object(_) | Value::Array(_))) => other.to_string(),
        Some(other) => unwrap_host_string(other).unwrap_or_default(),
    };
    let dequeue_count = match field(metadata, "DequeueCount") {
        None | Some(Value::Null) => 1,
        Some(v) => unwrap_host_string(v)
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or("Metadata.DequeueCount must be a whole number")?,
    };
    let id = field(metadata, "Id").and_then(unwrap_host_string).unwrap_or_else(|| "-".into());
    Ok(QueueInput { id, dequeue_count, body })
}

/// A queue message arrives double-encoded (`"\"text\""`) by default, or as base64 with
/// `dataType: binary`; a JSON string literal is the former, anything else the latter.
fn queue_text(text: &str) -> Result<String, String> {
    if let Ok(Value::String(inner)) = serde_json::from_str::<Value>(text) {
        return Ok(inner);
    }
    match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| "Data.msg decodes to bytes that are not UTF-8 text".into()),
        // Neither form: a stand-in that sent the text as is.
        Err(_) => Ok(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_double_encoding() {
        assert_eq!(unwrap_host_string(&json!("\"abc\"")).as_deref(), Some("abc"));
        assert_eq!(unwrap_host_string(&json!("4")).as_deref(), Some("4"));
        assert_eq!(unwrap_host_string(&json!("plain")).as_deref(), Some("plain"));
        assert_eq!(unwrap_host_string(&json!(7)).as_deref(), Some("7"));
    }

    #[test]
    fn queue_text_in_both_encodings() {
        assert_eq!(queue_text("\"{\\\"a\\\":1}\"").unwrap(), "{\"a\":1}");
        assert_eq!(queue_text("eyJhIjoxfQ==").unwrap(), "{\"a\":1}");
    }

    #[test]
    fn host_times_in_dotnet_shapes() {
        for text in ["2026-11-23T10:00:00.1234567+00:00", "2026-11-23T10:00:00Z", "2026-11-23T10:00:00.1234567"] {
            assert!(host_time(Some(&json!(text))).is_some(), "{text}");
        }
        assert_eq!(host_time(Some(&json!("0001-01-01T00:00:00"))), None);
    }

    #[test]
    fn repeated_headers_are_joined_but_a_second_cookie_is_dropped() {
        let response = HttpResponse {
            status: StatusCode::OK,
            headers: vec![
                (header::VARY, HeaderValue::from_static("a")),
                (header::VARY, HeaderValue::from_static("b")),
                (header::SET_COOKIE, HeaderValue::from_static("first=1")),
                (header::SET_COOKIE, HeaderValue::from_static("second=2")),
            ],
            body: String::new(),
        };
        let encoded = encode_http(&response);
        assert_eq!(encoded["headers"]["Vary"], "a, b");
        assert_eq!(encoded["headers"]["Set-Cookie"], "first=1");
    }

    #[test]
    fn header_names_are_shown_in_their_usual_case() {
        assert_eq!(display_header_name(&header::CONTENT_TYPE), "Content-Type");
        assert_eq!(display_header_name(&header::SET_COOKIE), "Set-Cookie");
    }
}
