//! `webhook`: a push from TrueContext's HTTP Data Destination. The caller is verified first
//! (nothing about the body is looked at before), then the body is checked, made durable and
//! queued (`webhook::Intake`), and only then answered 202. The same delivery again is 200
//! `duplicate`. Every refusal stores nothing, is counted by reason, and is logged once with
//! the reason and never the credential.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use chrono::Utc;
use serde_json::json;

use super::{App, HttpRequest, HttpResponse};
use crate::webhook::auth::Caller;
use crate::webhook::counters::Counters;
use crate::webhook::{payload, Accepted, Intake};

pub async fn respond(app: &App, request: &HttpRequest) -> HttpResponse {
    let counters = app.webhook_counters();
    Counters::bump(&counters.received);
    let response = handle(app, request).await;
    counters.flush_soon(&app.stores);
    response
}

/// Verifies the caller from the headers alone; the refusal's answer otherwise (counted by
/// reason and source). A front door that reads bodies itself calls it before the body
/// ([`App::admit`](super::App::admit)), so an unverified caller never makes us hold one.
pub async fn verify_caller(app: &App, headers: &HeaderMap) -> Result<Caller, HttpResponse> {
    let counters = app.webhook_counters();
    let oauth = app.oauth();
    let verifier = app.webhook_verifier();
    let refusal = match verifier.verify(headers, &oauth.http, &oauth.jwks, Utc::now().timestamp()).await {
        Ok(caller) => return Ok(caller),
        Err(refusal) => refusal,
    };
    let source = source_of(headers);
    counters.rejected(refusal.code(), Some(&source));
    tracing::warn!(reason = refusal.code(), detail = %refusal, source = %source, "a push was refused: its caller is not verified");
    if let crate::webhook::auth::Refusal::KeysUnavailable(_) = refusal {
        return Err(HttpResponse::error(StatusCode::SERVICE_UNAVAILABLE, "keys_unavailable", refusal.to_string())
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("30")));
    }
    let challenge = HeaderValue::from_str(&verifier.challenge(&refusal)).unwrap_or(HeaderValue::from_static("Bearer"));
    Err(HttpResponse::error(StatusCode::UNAUTHORIZED, refusal.code(), refusal.to_string())
        .with_header(header::WWW_AUTHENTICATE, challenge))
}

async fn handle(app: &App, request: &HttpRequest) -> HttpResponse {
    let counters = app.webhook_counters();
    let settings = &app.settings.webhook;
    let caller = match verify_caller(app, &request.headers).await {
        Ok(caller) => caller,
        Err(refused) => return refused,
    };
    let refuse = |status: StatusCode, code: &str, message: String| {
        counters.rejected(code, None);
        tracing::warn!(reason = code, detail = %message, "a push was refused");
        HttpResponse::error(status, code, message)
    };
    if request.body.len() > settings.max_body_bytes {
        tracing::warn!(reason = "body_too_large", size = request.body.len(), "a push was refused");
        return app.body_too_large(super::functions_webhook(), Some(request.body.len()));
    }
    if let Some(given) = content_type_not_json(request) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_json",
            format!("the body must be JSON (Content-Type: application/json), not {given:?}"),
        );
    }
    let push = match payload::read(&request.body, settings.id_field.as_deref()) {
        Ok((push, _)) => push,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()),
    };
    let connection = match connection_of(app, request).await {
        Ok(connection) => connection,
        Err((status, message)) => return refuse(status, "connection", message),
    };
    if let Err(refusal) = app.webhook_verifier().may_push(&caller, &connection) {
        let source = source_of(&request.headers);
        counters.rejected(refusal.code(), Some(&source));
        tracing::warn!(reason = refusal.code(), caller = %caller.name, connection = %connection, source = %source,
            "a push was refused: its credentials are for another connection");
        return HttpResponse::error(StatusCode::FORBIDDEN, refusal.code(), refusal.to_string());
    }
    let intake = Intake {
        stores: &app.stores,
        container: &app.settings.landing.container,
        queue: &app.settings.queues.incoming,
        recovery_after: settings.recovery_after,
    };
    match intake.accept(&connection, &push, &request.body).await {
        Ok(Accepted::Accepted { .. }) => {
            Counters::bump(&counters.accepted);
            tracing::info!(connection = %connection, identifier = %push.identifier, format = ?push.format, "push accepted");
            HttpResponse::json(StatusCode::ACCEPTED, &json!({ "identifier": push.identifier, "status": "accepted" }))
        }
        Ok(Accepted::Duplicate { .. }) => {
            Counters::bump(&counters.duplicates);
            tracing::info!(connection = %connection, identifier = %push.identifier, "duplicate push");
            HttpResponse::json(StatusCode::OK, &json!({ "identifier": push.identifier, "status": "duplicate" }))
        }
        Err(e) => {
            counters.rejected("store_unavailable", None);
            tracing::error!(connection = %connection, identifier = %push.identifier, error = %e, "a push could not be stored; the sender will retry");
            HttpResponse::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the push could not be stored; send it again later",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("10"))
        }
    }
}

/// `Some(the type)` when the request names a content type that is not JSON. No content type at
/// all is read as JSON: a destination's headers are set by hand and are often left out.
fn content_type_not_json(request: &HttpRequest) -> Option<String> {
    let value = request.headers.get(header::CONTENT_TYPE)?;
    let text = value.to_str().unwrap_or("(not text)");
    let essence = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json = essence == "application/json" || essence == "text/json" || essence.ends_with("+json");
    (!json).then(|| text.chars().take(100).collect())
}

/// The caller's address for the refusal counters: the first `X-Forwarded-For` hop (the Functions
/// front end and most proxies set it), else "direct".
fn source_of(headers: &HeaderMap) -> String {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| {
            v.trim().chars().filter(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')).take(64).collect()
        })
        .filter(|v: &String| !v.is_empty())
        .unwrap_or_else(|| "direct".to_owned())
}

/// The connection a push belongs to: `?connection=ID`, else the only one that takes pushes.
async fn connection_of(app: &App, request: &HttpRequest) -> Result<String, (StatusCode, String)> {
    let open = app.push_connections().await.map_err(|e| {
        (StatusCode::SERVICE_UNAVAILABLE, format!("the connections could not be read, send again later: {e}"))
    })?;
    match request.query_param("connection") {
        Some(id) => {
            crate::connections::validate_id(id).map_err(|e| (StatusCode::BAD_REQUEST, format!("connection: {e}")))?;
            if open.iter().any(|c| c == id) {
                Ok(id.to_owned())
            } else {
                Err((
                    StatusCode::BAD_REQUEST,
                    format!("there is no active connection {id:?} (known: {})", names(&open)),
                ))
            }
        }
        None => match open.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err((StatusCode::BAD_REQUEST, "there is no active connection to take this push".to_owned())),
            _ => Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "several connections take pushes ({}); name one with ?connection=ID on the webhook URL",
                    names(&open)
                ),
            )),
        },
    }
}

fn names(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    }
}
