//! `callback`: where the authorization server sends the admin back (GET with a query, or POST
//! with `response_mode=form_post`), and where the result page is shown.
//!
//! Order matters and is the point of this file: read and bound the parameters; find the
//! pending flow by `state`; check the browser-binding cookie; consume the flow (single use,
//! under its ETag); only then look at `error` or redeem the code; validate the id_token and
//! who signed in; store; answer 303 to a result page whose URL carries no code.

use std::collections::HashMap;

use axum::http::{header, HeaderValue, Method, StatusCode};
use chrono::Utc;

use super::pages::{error_page, page, redirect, Row};
use super::{App, HttpRequest, HttpResponse};
use crate::connections::{self, Connection, ConsentError};
use crate::oauth::flow::{self, ConnectResult, FlowError, PendingFlow, COOKIE_PREFIX, RESULT_LIFETIME};
use crate::oauth::identity::{self, Identity};
use crate::oauth::provider::{ExpectedIssuer, Provider};
use crate::oauth::requested_scopes;
use crate::oauth::token::{request_tokens, EndpointError, TokenRequest, TokenResponse};
use crate::secret::SecretString;

/// Largest value accepted per parameter; authorization codes are long on Entra (~1-2 KB).
pub const LIMITS: &[(&str, usize)] =
    &[("state", 256), ("code", 8192), ("error", 128), ("error_description", 2048), ("iss", 512), ("result", 128)];

/// The largest `form_post` body taken: every parameter above at its limit, with room for the
/// few others servers add (`session_state`, `client_info`). Anyone can post here, so this, not
/// `MAX_REQUEST_BODY_BYTES`, bounds what one anonymous request costs.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Parameters read from one response, known or not (a sign-in response has about six).
const MAX_PAIRS: usize = 32;

pub async fn respond(app: &App, request: &HttpRequest) -> HttpResponse {
    let params = match read_params(request, &app.settings.oauth.code_param) {
        Ok(params) => params,
        Err(message) => {
            return error_page(StatusCode::BAD_REQUEST, &message, "Start again from the authorize link.", &[])
        }
    };
    if let Some(reference) = params.get("result") {
        return show_result(app, reference).await;
    }
    let Some(state) = params.get("state") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This page was opened without a sign-in response (no state).",
            "Start again from the authorize link.",
            &[],
        );
    };
    let (pending, etag) = match flow::find(&app.stores, state).await {
        Ok(Some(found)) => found,
        Ok(None) => return flow_error(FlowError::Unknown),
        Err(e) => return flow_error(e),
    };
    if !cookie_values(request).iter().any(|value| pending.binding_matches(value)) {
        tracing::warn!(connection = %pending.connection_id, "callback without this flow's browser cookie refused");
        return error_page(
            StatusCode::FORBIDDEN,
            "This sign-in response did not come back to the browser that started it.",
            "Open the authorize link again in this browser (cookies must be allowed for this site).",
            &[],
        );
    }
    if let Err(e) = flow::consume(&app.stores, state, &pending, etag).await {
        return flow_error(e);
    }
    if let Some(error) = params.get("error") {
        return authorization_error(error, params.get("error_description").map(String::as_str));
    }
    match complete(app, &pending, &params).await {
        Ok(result) => match flow::store_result(&app.stores, &result).await {
            Ok(reference) => {
                let mut response = redirect(StatusCode::SEE_OTHER, &format!("/api/callback?result={reference}"));
                clear_cookie(&mut response, state);
                response
            }
            Err(e) => flow_error(e),
        },
        Err(page) => page,
    }
}

/// The parameters of a GET (query) or a form_post (body) that the callback knows, each at most
/// once and within its length limit; `code_param` is the server's name for `code`. Public for
/// the fuzz targets.
///
/// The body's size is bounded before this ([`MAX_BODY_BYTES`], by `App::http` and the front
/// doors). Pairs are read one at a time and an unknown name is dropped as it is met, never collected:
/// a body of `a&a&a&…` once made one anonymous request hold 0.7 GB.
pub fn read_params(request: &HttpRequest, code_param: &str) -> Result<HashMap<String, String>, String> {
    use std::borrow::Cow;
    let pairs: Box<dyn Iterator<Item = (Cow<'_, str>, Cow<'_, str>)>> = if request.method == Method::POST {
        let content_type = request.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
            return Err("The sign-in response must be posted as a form (application/x-www-form-urlencoded).".into());
        }
        Box::new(url::form_urlencoded::parse(&request.body))
    } else {
        Box::new(request.query.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))))
    };
    let mut params = HashMap::new();
    for (read, (name, value)) in pairs.enumerate() {
        if read >= MAX_PAIRS {
            return Err(format!("The sign-in response has more than {MAX_PAIRS} parameters."));
        }
        // Some OAuth 2.0 servers name it otherwise (`OAUTH_CODE_PARAM`; see
        // docs/authorization-servers.md, "A custom OAuth 2.0 server without discovery").
        let name = if name == code_param { "code" } else { name.as_ref() };
        let Some((known, limit)) = LIMITS.iter().find(|(n, _)| *n == name) else { continue };
        if value.len() > *limit {
            return Err(format!("The parameter {known} is longer than {limit} characters."));
        }
        if params.insert((*known).to_owned(), value.into_owned()).is_some() {
            return Err(format!("The parameter {known} is given more than once."));
        }
    }
    Ok(params)
}

/// The values of this app's flow cookies the browser sent (one per sign-in in progress).
fn cookie_values(request: &HttpRequest) -> Vec<String> {
    request
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| name.starts_with(COOKIE_PREFIX))
        .map(|(_, value)| value.to_owned())
        .collect()
}

/// Expires this flow's cookie (its name follows from `state`); other sign-ins keep theirs.
fn clear_cookie(response: &mut HttpResponse, state: &str) {
    let name = flow::cookie_name(&flow::hash_hex(state));
    let cookie = format!("{name}=; Path=/api/callback; Max-Age=0; HttpOnly; Secure; SameSite=None");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers.push((header::SET_COOKIE, value));
    }
}

fn flow_error(error: FlowError) -> HttpResponse {
    match error {
        FlowError::Unknown => error_page(StatusCode::BAD_REQUEST, &error.to_string(), "Nothing was stored.", &[]),
        FlowError::Expired => error_page(StatusCode::BAD_REQUEST, &error.to_string(), "Nothing was stored.", &[]),
        FlowError::Store(e) => {
            tracing::error!(error = %e, "the sign-in store failed");
            error_page(StatusCode::SERVICE_UNAVAILABLE, "The sign-in could not be completed.", "Try again.", &[])
        }
    }
}

/// An `error` from the authorization server, explained.
fn authorization_error(error: &str, description: Option<&str>) -> HttpResponse {
    let explanation = match error {
        "access_denied" => "The sign-in was cancelled, or the consent was declined.",
        "consent_required" => "Consent is required, and this account may not give it; an administrator must consent for the organisation.",
        "interaction_required" | "login_required" => "The sign-in needs you to interact with it; open the authorize link again without prompt=none.",
        "invalid_scope" => "The app asked for a permission the authorization server does not know or allow (check OAUTH_SCOPES).",
        "unauthorized_client" => "The app registration is not allowed to use this kind of sign-in.",
        "invalid_request" => "The authorization server found the sign-in request invalid (check OAUTH_REDIRECT_URI and the app registration).",
        "server_error" | "temporarily_unavailable" => "The authorization server had a problem; try again in a few minutes.",
        _ => "The authorization server refused the sign-in.",
    };
    let admin_consent = description.is_some_and(|d| d.contains("AADSTS65001") || d.contains("AADSTS90094"));
    let advice = if admin_consent {
        "This tenant requires an administrator to consent to the app first (admin consent)."
    } else {
        "Nothing was stored. Fix the cause and open the authorize link again."
    };
    tracing::warn!(error = %error, "the authorization server returned an error");
    let mut rows: Vec<Row> = vec![("Error", error.to_owned())];
    if let Some(description) = description {
        rows.push(("Description", description.to_owned()));
    }
    error_page(StatusCode::BAD_REQUEST, explanation, advice, &rows)
}

/// Redeems the code, identifies the account, checks who may connect, stores the connection.
async fn complete(
    app: &App,
    pending: &PendingFlow,
    params: &HashMap<String, String>,
) -> Result<ConnectResult, HttpResponse> {
    let oauth = app.oauth();
    let provider = oauth.provider.get().await.map_err(|e| {
        error_page(
            StatusCode::BAD_GATEWAY,
            "The sign-in service could not be reached.",
            "Try again.",
            &[("Detail", e.to_string())],
        )
    })?;
    check_issuer(&provider, pending, params.get("iss"))?;
    let Some(code) = params.get("code") else {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "The sign-in response carries neither a code nor an error.",
            "Nothing was stored. Start again from the authorize link.",
            &[],
        ));
    };
    let tokens = redeem(app, &provider, pending, code).await?;
    let identity = verify_identity(app, &provider, pending, &tokens).await?;
    let scopes =
        tokens.scope.clone().unwrap_or_else(|| requested_scopes(&app.settings.oauth.scopes, provider.is_openid()));
    let now = Utc::now();
    let connection = Connection {
        issuer: identity.issuer.clone(),
        tenant: identity.tenant.clone(),
        account_name: identity.name.clone(),
        expires_in_assumed: tokens.expires_in_assumed,
        last_refresh_success: Some(now),
        ..Connection::new(
            &pending.connection_id,
            format!("{:?}", provider.kind).to_ascii_lowercase(),
            identity.account.clone(),
            scopes.clone(),
            now,
        )
    };
    let display = connection.display_account().to_owned();
    let replaced = store_connection(app, connection, &tokens, pending.replace).await?;
    app.tokens().forget(&pending.connection_id);
    tracing::info!(connection = %pending.connection_id, tenant = ?identity.tenant, "connection consented and stored");
    // The first sync runs now, from the queue (not at the next tick, and not as a task this
    // invocation leaves behind).
    if app.settings.truecontext.auth == crate::config::TrueContextAuth::Bearer {
        super::process::queue_first_sync(app, &pending.connection_id).await;
    }
    Ok(ConnectResult {
        connection_id: pending.connection_id.clone(),
        account: display,
        tenant: identity.tenant,
        scopes,
        replaced_account: replaced,
        next_sync: app.settings.sync_schedule.next_after(now),
        expires_at: now + chrono::TimeDelta::from_std(RESULT_LIFETIME).expect("minutes fit"),
    })
}

/// Mix-up defence (RFC 9207): an `iss` must name the issuer this flow started with, and a
/// server that always sends one must have sent it.
fn check_issuer(provider: &Provider, pending: &PendingFlow, iss: Option<&String>) -> Result<(), HttpResponse> {
    match iss {
        Some(iss) if !issuer_matches(&pending.expected_issuer(), iss) => {
            tracing::warn!("callback with an unexpected iss refused");
            Err(error_page(
                StatusCode::BAD_REQUEST,
                "The sign-in response came from a different authorization server than the one this sign-in started with.",
                "Nothing was stored. Start again from the authorize link.",
                &[],
            ))
        }
        None if provider.iss_parameter => Err(error_page(
            StatusCode::BAD_REQUEST,
            "The sign-in response is missing the issuer (iss) that this authorization server always sends.",
            "Nothing was stored. Start again from the authorize link.",
            &[],
        )),
        _ => Ok(()),
    }
}

/// Redeems the code with the flow's PKCE verifier.
async fn redeem(
    app: &App,
    provider: &Provider,
    pending: &PendingFlow,
    code: &str,
) -> Result<TokenResponse, HttpResponse> {
    let oauth = app.oauth();
    let auth = oauth.client_auth(provider).await.map_err(|reason| {
        tracing::error!(reason = %reason, "the client credential is not usable");
        error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The app's own credential (certificate or federated managed identity) is not usable.",
            "An operator should run `tcbridge check`.",
            &[("Reason", reason)],
        )
    })?;
    let redirect_uri = app.settings.oauth.redirect_uri.as_ref().map(|u| u.to_string()).unwrap_or_default();
    let request = TokenRequest {
        endpoint: &provider.token_endpoint,
        client_id: &oauth.client_id,
        auth: &auth,
        params: vec![
            ("grant_type", SecretString::new("authorization_code")),
            ("code", SecretString::new(code)),
            ("redirect_uri", SecretString::new(redirect_uri)),
            ("code_verifier", SecretString::new(pending.code_verifier.clone())),
        ],
    };
    request_tokens(&oauth.http, request).await.map_err(redeem_error)
}

/// Validates the id_token and applies `ALLOWED_TENANTS` / `ALLOWED_USERS`.
async fn verify_identity(
    app: &App,
    provider: &Provider,
    pending: &PendingFlow,
    tokens: &TokenResponse,
) -> Result<Identity, HttpResponse> {
    let identity = identity::identify(app.oauth(), provider, pending, tokens).await.map_err(|message| {
        tracing::warn!(reason = %message, "the id_token was refused");
        error_page(
            StatusCode::BAD_REQUEST,
            "The sign-in could not be verified.",
            "Nothing was stored.",
            &[("Reason", message)],
        )
    })?;
    if let Err(message) = identity::allowed(&app.settings.oauth, &identity) {
        tracing::warn!(reason = %message, "a sign-in from an account that may not connect was refused");
        return Err(error_page(
            StatusCode::FORBIDDEN,
            &message,
            "Nothing was stored. Sign in with an allowed account.",
            &[],
        ));
    }
    Ok(identity)
}

/// Stores the consent; names the account it replaced, if any.
async fn store_connection(
    app: &App,
    connection: Connection,
    tokens: &TokenResponse,
    replace: bool,
) -> Result<Option<String>, HttpResponse> {
    match connections::save_consent(&app.stores, connection, tokens, app.settings.tokens.refresh_margin, replace).await
    {
        Ok(replaced) => Ok(replaced),
        Err(
            e @ (ConsentError::AccountSwitch { .. } | ConsentError::NoRefreshToken | ConsentError::ApiKeyConnection(_)),
        ) => Err(error_page(StatusCode::CONFLICT, &e.to_string(), "Nothing was changed.", &[])),
        Err(ConsentError::Store(e)) => {
            tracing::error!(error = %e, "the connection could not be stored");
            Err(error_page(StatusCode::SERVICE_UNAVAILABLE, "The connection could not be stored.", "Try again.", &[]))
        }
    }
}

fn issuer_matches(expected: &ExpectedIssuer, iss: &str) -> bool {
    match expected {
        ExpectedIssuer::Exact(issuer) => issuer == iss,
        ExpectedIssuer::TenantTemplate(template) => {
            let (prefix, suffix) = template.split_once("{tenantid}").unwrap_or((template, ""));
            iss.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .is_some_and(|tid| tid.len() == 36 && tid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        }
        ExpectedIssuer::None => false,
    }
}

fn redeem_error(error: EndpointError) -> HttpResponse {
    tracing::warn!(error = %error, "the code could not be redeemed");
    let mut rows: Vec<Row> = Vec::new();
    if let EndpointError::Rejected { body, .. } = &error {
        rows.push(("Error", body.error.clone()));
        if let Some(description) = &body.error_description {
            rows.push(("Description", description.clone()));
        }
        if !body.error_codes.is_empty() {
            rows.push(("Error codes", body.error_codes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")));
        }
        if let Some(trace) = &body.trace_id {
            rows.push(("Trace id", trace.clone()));
        }
        if let Some(correlation) = &body.correlation_id {
            rows.push(("Correlation id", correlation.clone()));
        }
    } else {
        rows.push(("Detail", error.to_string()));
    }
    error_page(
        StatusCode::BAD_GATEWAY,
        "The authorization server did not accept the sign-in code.",
        "Nothing was stored. Start again from the authorize link; a code works only once and only for a few minutes.",
        &rows,
    )
}

async fn show_result(app: &App, reference: &str) -> HttpResponse {
    match flow::take_result(&app.stores, reference).await {
        Ok(result) => {
            let mut rows: Vec<Row> =
                vec![("Connection", result.connection_id.clone()), ("Account", result.account.clone())];
            if let Some(tenant) = &result.tenant {
                rows.push(("Tenant", tenant.clone()));
            }
            rows.push(("Scopes", result.scopes.join(" ")));
            rows.push((
                "Next sync",
                result
                    .next_sync
                    .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_else(|| "not scheduled".into()),
            ));
            let mut paragraphs = vec![format!("{} is connected.", result.account)];
            if let Some(previous) = &result.replaced_account {
                paragraphs.push(format!("It replaces the previous account, {previous}."));
            }
            page(StatusCode::OK, "Connected", &paragraphs, &rows)
        }
        Err(FlowError::Unknown | FlowError::Expired) => page(
            StatusCode::NOT_FOUND,
            "Nothing to show",
            &["This result was already shown or has expired. See /api/status for the connection's state.".into()],
            &[],
        ),
        Err(e) => flow_error(e),
    }
}
