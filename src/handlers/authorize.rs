//! `authorize`: starts an admin's sign-in. Makes the flow's secrets, remembers them server-side
//! under a hash of `state`, binds the browser with a cookie, and redirects to the
//! authorization server.

use axum::http::{header, HeaderValue, StatusCode};
use url::Url;

use super::pages::{error_page, redirect};
use super::{App, HttpRequest, HttpResponse};
use crate::config::{OAuthGrant, OAuthProvider};
use crate::connections;
use crate::oauth::flow::{self, FLOW_LIFETIME};
use crate::oauth::provider::Provider;

const PROMPTS: &[&str] = &["login", "consent", "select_account", "none", "create"];

struct AuthorizeParams {
    connection: String,
    replace: bool,
    login_hint: Option<String>,
    domain_hint: Option<String>,
    prompt: Option<String>,
}

pub async fn respond(app: &App, request: &HttpRequest) -> HttpResponse {
    let params = match read_params(request) {
        Ok(params) => params,
        Err(message) => {
            return error_page(StatusCode::BAD_REQUEST, &message, "Fix the link and open it again.", &[]);
        }
    };
    let settings = &app.settings.oauth;
    if settings.grant == OAuthGrant::ClientCredentials {
        return error_page(
            StatusCode::CONFLICT,
            "This bridge uses app-only access (OAUTH_GRANT=client_credentials): there is nothing to consent to.",
            "The connection exists from the configuration; see /api/status.",
            &[],
        );
    }
    let missing: Vec<String> = app.settings.missing_oauth().into_iter().map(|p| p.to_string()).collect();
    if !missing.is_empty() {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The sign-in is not configured yet.",
            &format!("An operator must set: {}", missing.join("; ")),
            &[],
        );
    }
    let provider = match app.oauth().provider.get().await {
        Ok(provider) => provider,
        Err(e) => {
            tracing::error!(error = %e, "the authorization server could not be resolved");
            return error_page(
                StatusCode::BAD_GATEWAY,
                "The sign-in service could not be reached.",
                "Try again in a minute; if it persists, an operator should run `tcbridge check`.",
                &[("Detail", e.to_string())],
            );
        }
    };
    let new_flow = match flow::begin(&app.stores, &params.connection, &provider.issuer, params.replace).await {
        Ok(new_flow) => new_flow,
        Err(e) => {
            tracing::error!(error = %e, "the sign-in flow could not be stored");
            return error_page(StatusCode::SERVICE_UNAVAILABLE, "The sign-in could not be started.", "Try again.", &[]);
        }
    };
    let location = authorization_url(app, &provider, &params, &new_flow);
    tracing::info!(connection = %params.connection, "sign-in started; redirecting to the authorization server");
    let mut response = redirect(StatusCode::FOUND, location.as_str());
    let cookie = format!(
        "{}={}; Path=/api/callback; Max-Age={}; HttpOnly; Secure; SameSite=None",
        new_flow.cookie_name,
        new_flow.binding.expose(),
        FLOW_LIFETIME.as_secs()
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers.push((header::SET_COOKIE, value));
    }
    response
}

fn read_params(request: &HttpRequest) -> Result<AuthorizeParams, String> {
    let single = |name: &str| -> Result<Option<&str>, String> {
        let mut values = request.query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(format!("The parameter {name} is given more than once."));
        }
        Ok(first)
    };
    let connection = single("connection")?.unwrap_or("default").to_owned();
    connections::validate_id(&connection).map_err(|e| format!("The connection id is not valid: {e}."))?;
    let replace = match single("replace")? {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err("replace must be true or false.".into()),
    };
    let hint = |name: &str| -> Result<Option<String>, String> {
        match single(name)? {
            None => Ok(None),
            Some(v) if v.len() <= 256 && !v.chars().any(char::is_control) => Ok(Some(v.to_owned())),
            Some(_) => Err(format!("{name} must be at most 256 printable characters.")),
        }
    };
    let prompt = match single("prompt")? {
        None => None,
        Some(p) if PROMPTS.contains(&p) => Some(p.to_owned()),
        Some(_) => return Err(format!("prompt must be one of {}.", PROMPTS.join(", "))),
    };
    Ok(AuthorizeParams {
        connection,
        replace,
        login_hint: hint("login_hint")?,
        domain_hint: hint("domain_hint")?,
        prompt,
    })
}

fn authorization_url(app: &App, provider: &Provider, params: &AuthorizeParams, new_flow: &flow::NewFlow) -> Url {
    let settings = &app.settings.oauth;
    let mut url = provider.authorization_endpoint.clone();
    let scopes = crate::oauth::requested_scopes(&settings.scopes, provider.is_openid()).join(" ");
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("client_id", settings.client_id.as_deref().unwrap_or_default())
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", settings.redirect_uri.as_ref().map(Url::as_str).unwrap_or_default())
            .append_pair("scope", &scopes)
            .append_pair("state", new_flow.state.expose())
            .append_pair("code_challenge", &new_flow.code_challenge)
            .append_pair("code_challenge_method", "S256");
        if provider.is_openid() {
            query.append_pair("nonce", new_flow.nonce.expose());
        }
        if provider.form_post && provider.kind != OAuthProvider::Oauth2 {
            query.append_pair("response_mode", "form_post");
        }
        if let Some(hint) = &params.login_hint {
            query.append_pair("login_hint", hint);
        }
        if let Some(hint) = &params.domain_hint {
            query.append_pair("domain_hint", hint);
        }
        if let Some(prompt) = &params.prompt {
            query.append_pair("prompt", prompt);
        }
    }
    url
}
