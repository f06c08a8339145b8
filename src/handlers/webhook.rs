//! `webhook`: a push from TrueContext's HTTP Data Destination. The caller is verified first
//! (nothing about the body is looked at before), then the body is checked, made durable and
//! queued (`webhook::Intake`), and only then answered 202. The same delivery again is 200
//! `duplicate`. Every refusal stores nothing, is counted by reason, and is logged once with
//! the reason and never the credential.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use chrono::Utc;
use serde_json::json;

use super::{App, HttpRequest, HttpResponse};
use crate::naming::ConnectionId;
use crate::webhook::auth::Caller;
use crate::webhook::counters::Counters;
use crate::webhook::{payload, Accepted};

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
pub async fn verify_caller(
    app: &App,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> Result<Caller, HttpResponse> {
    let counters = app.webhook_counters();
    let oauth = app.oauth();
    let verifier = app.webhook_verifier();
    let refusal = match verifier.verify(headers, &oauth.http, &oauth.jwks, Utc::now().timestamp()).await {
        Ok(caller) => return Ok(caller),
        Err(refusal) => refusal,
    };
    let source = source_of(headers, peer, app.proxy_hops());
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
    let caller = match verify_caller(app, &request.headers, request.peer).await {
        Ok(caller) => caller,
        Err(refused) => return refused,
    };
    // Past this point the caller is verified: a refusal means its destination sends something
    // wrong, which status must show (the sync still pulls the submission later; it is late).
    let refuse = |status: StatusCode, code: &str, message: String| {
        counters.rejected(code, None);
        counters.refused_verified(code, &message);
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
        let source = source_of(&request.headers, request.peer, app.proxy_hops());
        counters.rejected(refusal.code(), Some(&source));
        counters.refused_verified(refusal.code(), &refusal.to_string());
        tracing::warn!(reason = refusal.code(), caller = %caller.name, connection = %connection, source = %source,
            "a push was refused: its credentials are for another connection");
        return HttpResponse::error(StatusCode::FORBIDDEN, refusal.code(), refusal.to_string());
    }
    let intake = app.intake();
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

/// The caller's address for the refusal counters. Never what the caller says of itself: the
/// left of `X-Forwarded-For` is anyone's to write, so a caller could spread its failures over
/// made-up addresses or pin them on someone else. With `hops` trusted proxies in front, the
/// caller is the entry the nearest one appended (the `hops`-th from the right); with none, the
/// connection's own address.
fn source_of(headers: &HeaderMap, peer: Option<std::net::IpAddr>, hops: usize) -> String {
    let unknown = || peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    if hops == 0 {
        return unknown();
    }
    let hops_listed: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(entry) = hops_listed.len().checked_sub(hops).and_then(|index| hops_listed.get(index)) else {
        return unknown();
    };
    // An address, with a port or without (Azure's front end writes `203.0.113.5:51234`).
    let ip =
        entry.parse::<std::net::IpAddr>().ok().or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()));
    ip.map_or_else(unknown, |ip| ip.to_string())
}

/// The connection a push belongs to: `?connection=ID`, else the only one that takes pushes.
async fn connection_of(app: &App, request: &HttpRequest) -> Result<ConnectionId, (StatusCode, String)> {
    let open = app.push_connections().await.map_err(|e| {
        (StatusCode::SERVICE_UNAVAILABLE, format!("the connections could not be read, send again later: {e}"))
    })?;
    match request.query_param("connection") {
        Some(id) => {
            let id = ConnectionId::parse(id).map_err(|e| (StatusCode::BAD_REQUEST, format!("connection: {e}")))?;
            if open.iter().any(|c| *c == *id) {
                Ok(id)
            } else {
                Err((
                    StatusCode::BAD_REQUEST,
                    format!("there is no active connection {id:?} (known: {})", names(&open)),
                ))
            }
        }
        None => match open.as_slice() {
            // Read from the store, where only checked ids are written.
            [only] => ConnectionId::parse(only)
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("the stored connection {only:?}: {e}"))),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    /// Issue 20: the refusal counters took the first `X-Forwarded-For` entry, which the caller
    /// writes itself.
    #[test]
    fn the_source_is_the_hop_a_trusted_proxy_appended_never_what_the_caller_says() {
        let peer = Some("10.1.2.3".parse().unwrap());
        let spoofed = forwarded(&["203.0.113.9, 198.51.100.7"]);
        assert_eq!(source_of(&spoofed, peer, 1), "198.51.100.7", "the front end's own entry");
        assert_eq!(source_of(&spoofed, peer, 2), "203.0.113.9");
        assert_eq!(source_of(&spoofed, peer, 0), "10.1.2.3", "no proxy: the connection's address");
        assert_eq!(source_of(&forwarded(&["1.1.1.1", "2.2.2.2"]), None, 1), "2.2.2.2", "headers joined in order");
        assert_eq!(source_of(&spoofed, peer, 5), "10.1.2.3", "fewer hops than proxies: not guessed");
        assert_eq!(source_of(&HeaderMap::new(), None, 1), "unknown");
        assert_eq!(source_of(&forwarded(&["<script>"]), None, 1), "unknown", "only an address");
        assert_eq!(source_of(&forwarded(&["203.0.113.5:51234"]), None, 1), "203.0.113.5");
        assert_eq!(source_of(&forwarded(&["[2001:db8::1]:443"]), None, 1), "2001:db8::1");
    }
}
