//! The token endpoint: redeeming a code, refreshing, client credentials.
//!
//! We talk to it with our own small client rather than `oauth2`'s exchange types because of
//! the known gaps this product must cover: `expires_in` as a string (Azure AD B2C, #191/#320)
//! or absent (servers outside OpenID Connect; docs/authorization-servers.md), Entra's extra error fields (`error_codes`, `trace_id`,
//! `correlation_id`) kept for diagnostics, non-standard parameter names, and client
//! assertions. Redirects are never followed (an SSRF and credential-leak risk).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::secret::SecretString;

/// Used when the server sends no `expires_in`; flagged on the connection.
pub const DEFAULT_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Largest token response we read.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Tokens from a successful response. Token values are secrets; everything else is not.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub token_type: Option<String>,
    pub expires_in: Duration,
    /// True when the server sent no usable `expires_in` and the default was assumed.
    pub expires_in_assumed: bool,
    /// Entra's hint for when to refresh proactively.
    pub refresh_in: Option<Duration>,
    /// The scopes granted, when the server says.
    pub scope: Option<Vec<String>>,
}

/// An OAuth error response (RFC 6749 §5.2), with Entra's diagnostics when present.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct OAuthErrorBody {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Vec<i64>,
    #[serde(default)]
    pub suberror: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("the authorization server refused the request: {} ({})", .body.error, .body.error_description.as_deref().unwrap_or("no description"))]
    Rejected { status: u16, body: Box<OAuthErrorBody>, retry_after: Option<Duration> },
    #[error("the token endpoint answered HTTP {status} without an OAuth error")]
    Http { status: u16, retry_after: Option<Duration> },
    #[error("the token endpoint did not answer in time")]
    Timeout,
    #[error("the token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the token response is not usable: {0}")]
    InvalidResponse(String),
    /// A 2xx answer we cannot use that still carries a new refresh token: the server may have
    /// rotated, so the caller must keep it.
    #[error("the token response is not usable: {reason}")]
    UnusableWithRefreshToken { reason: String, refresh_token: SecretString },
}

impl EndpointError {
    /// The OAuth `error` code, when the server sent one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            EndpointError::Rejected { body, .. } => Some(body.error.as_str()),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_seconds")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "lenient_seconds")]
    refresh_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// Seconds as a JSON number or a string holding one (B2C sends `"3600"`); anything else is
/// treated as absent rather than failing the whole response.
fn lenient_seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(match value {
        Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    })
}

/// Parses a 2xx token endpoint body.
pub fn parse_token_response(body: &[u8]) -> Result<TokenResponse, EndpointError> {
    let mut raw: RawTokenResponse = serde_json::from_slice(body)
        .map_err(|e| EndpointError::InvalidResponse(format!("not a JSON token response ({})", e.classify_name())))?;
    let refresh_token = raw.refresh_token.take().filter(|t| !t.is_empty()).map(SecretString::new);
    validate_token_response(raw, refresh_token.clone()).map_err(|e| match (e, refresh_token) {
        (EndpointError::InvalidResponse(reason), Some(refresh_token)) => {
            EndpointError::UnusableWithRefreshToken { reason, refresh_token }
        }
        (e, _) => e,
    })
}

fn validate_token_response(
    raw: RawTokenResponse,
    refresh_token: Option<SecretString>,
) -> Result<TokenResponse, EndpointError> {
    let access_token = raw
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| EndpointError::InvalidResponse("no access_token in the response".into()))?;
    if let Some(kind) = &raw.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(EndpointError::InvalidResponse(format!("token_type {kind:?} is not Bearer")));
        }
    }
    let (expires_in, expires_in_assumed) = match raw.expires_in {
        Some(0) | None => match jwt_lifetime(&access_token) {
            Some(lifetime) => (lifetime, false),
            None => (DEFAULT_ACCESS_TOKEN_LIFETIME, true),
        },
        Some(secs) => (Duration::from_secs(secs.min(366 * 86_400)), false),
    };
    Ok(TokenResponse {
        access_token: SecretString::new(access_token),
        refresh_token,
        id_token: raw.id_token.filter(|t| !t.is_empty()).map(SecretString::new),
        token_type: raw.token_type,
        expires_in,
        expires_in_assumed,
        refresh_in: raw.refresh_in.filter(|s| *s > 0).map(Duration::from_secs),
        scope: raw.scope.map(|s| s.split_whitespace().map(str::to_owned).collect()),
    })
}

/// How long a JWT access token has left by its own `exp`, for servers that send no
/// `expires_in` (one documented server issues 5-minute tokens and says so only there). The signature is not
/// checked: the claim only decides when we refresh, never whether we trust the token.
fn jwt_lifetime(token: &str) -> Option<Duration> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else { return None };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_i64()?;
    let remaining = exp - chrono::Utc::now().timestamp();
    (remaining > 0 && remaining <= 366 * 86_400).then(|| Duration::from_secs(remaining as u64))
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "unexpected field types",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// How the client proves itself at the token endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    SecretPost(SecretString),
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    SecretBasic(SecretString),
    /// A signed assertion (`private_key_jwt`, or a federated managed-identity token).
    Assertion(SecretString),
    /// Public client: `client_id` only.
    None,
}

/// One token endpoint request.
pub struct TokenRequest<'a> {
    pub endpoint: &'a url::Url,
    pub client_id: &'a str,
    pub auth: &'a ClientAuth,
    /// Grant parameters (`grant_type`, `code`, `redirect_uri`, `code_verifier`, …). Values may
    /// be secrets; they go only into the request body.
    pub params: Vec<(&'a str, SecretString)>,
}

/// The HTTP client for authorization servers: no redirects, bounded time.
pub fn http_client() -> reqwest::Client {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("truecontext-bridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a static client configuration builds")
}

/// Posts `request` and parses the answer.
pub async fn request_tokens(http: &reqwest::Client, request: TokenRequest<'_>) -> Result<TokenResponse, EndpointError> {
    let mut form: Vec<(String, String)> = Vec::with_capacity(request.params.len() + 3);
    for (name, value) in &request.params {
        form.push(((*name).to_owned(), value.expose().to_owned()));
    }
    let mut builder = http.post(request.endpoint.clone()).header("Accept", "application/json");
    match request.auth {
        ClientAuth::SecretPost(secret) => {
            form.push(("client_id".into(), request.client_id.to_owned()));
            form.push(("client_secret".into(), secret.expose().to_owned()));
        }
        ClientAuth::SecretBasic(secret) => {
            let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            builder = builder.basic_auth(encode(request.client_id), Some(encode(secret.expose())));
        }
        ClientAuth::Assertion(assertion) => {
            form.push(("client_id".into(), request.client_id.to_owned()));
            form.push((
                "client_assertion_type".into(),
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
            form.push(("client_assertion".into(), assertion.expose().to_owned()));
        }
        ClientAuth::None => form.push(("client_id".into(), request.client_id.to_owned())),
    }
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form.iter()).finish();
    let body = zeroize::Zeroizing::new(body);
    let response = builder
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.as_str().to_owned())
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let bytes = read_limited(response).await?;
    if (200..300).contains(&status) {
        return parse_token_response(&bytes);
    }
    match serde_json::from_slice::<OAuthErrorBody>(&bytes) {
        Ok(body) if !body.error.is_empty() => {
            Err(EndpointError::Rejected { status, body: Box::new(body), retry_after })
        }
        _ => Err(EndpointError::Http { status, retry_after }),
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, EndpointError> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(EndpointError::InvalidResponse("the response is larger than 256 KiB".into()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Transport errors print their URL; ours carry no secrets in URLs, but scrub anyway.
fn transport_error(e: reqwest::Error) -> EndpointError {
    if e.is_timeout() {
        EndpointError::Timeout
    } else {
        EndpointError::Unreachable(crate::telemetry::redact(&e.without_url().to_string()).into_owned())
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_as_number_string_or_absent() {
        let number = parse_token_response(br#"{"access_token":"a","token_type":"Bearer","expires_in":3599}"#).unwrap();
        assert_eq!(number.expires_in, Duration::from_secs(3599));
        assert!(!number.expires_in_assumed);
        let string = parse_token_response(br#"{"access_token":"a","expires_in":"3600","refresh_token":"r"}"#).unwrap();
        assert_eq!(string.expires_in, Duration::from_secs(3600));
        assert!(string.refresh_token.is_some());
        let absent = parse_token_response(br#"{"access_token":"a","refresh_token":"r"}"#).unwrap();
        assert_eq!(absent.expires_in, DEFAULT_ACCESS_TOKEN_LIFETIME);
        assert!(absent.expires_in_assumed);
        let garbage = parse_token_response(br#"{"access_token":"a","expires_in":"soon"}"#).unwrap();
        assert!(garbage.expires_in_assumed);
    }

    #[test]
    fn a_jwt_access_token_without_expires_in_says_its_own_lifetime() {
        use base64::Engine;
        let encode = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let exp = chrono::Utc::now().timestamp() + 300;
        let jwt =
            format!("{}.{}.sig", encode(serde_json::json!({"alg": "HS256"})), encode(serde_json::json!({"exp": exp})));
        let body = serde_json::json!({ "access_token": jwt, "refresh_token": "r" }).to_string();
        let set = parse_token_response(body.as_bytes()).unwrap();
        assert!(!set.expires_in_assumed);
        assert!(set.expires_in <= Duration::from_secs(300) && set.expires_in >= Duration::from_secs(290));
        // Expired, absurd or opaque: the default, flagged.
        for token in [
            format!("{}.{}.s", encode(serde_json::json!({})), encode(serde_json::json!({"exp": exp - 600}))),
            format!("{}.{}.s", encode(serde_json::json!({})), encode(serde_json::json!({"exp": "soon"}))),
            "opaque-token".to_owned(),
            "a.b.c.d".to_owned(),
        ] {
            let body = serde_json::json!({ "access_token": token }).to_string();
            let set = parse_token_response(body.as_bytes()).unwrap();
            assert!(set.expires_in_assumed, "{token}");
            assert_eq!(set.expires_in, DEFAULT_ACCESS_TOKEN_LIFETIME);
        }
    }

    #[test]
    fn unusable_responses_are_refused_without_echoing_tokens() {
        let err = parse_token_response(br#"{"refresh_token":"secret-rt"}"#).unwrap_err().to_string();
        assert!(err.contains("no access_token") && !err.contains("secret-rt"), "{err}");
        let err = parse_token_response(br#"{"access_token":"secret-at","token_type":"mac"}"#).unwrap_err().to_string();
        assert!(!err.contains("secret-at"), "{err}");
        let err = parse_token_response(b"{\"access_token\": \"secret-at\"").unwrap_err().to_string();
        assert!(err.contains("truncated") && !err.contains("secret-at"), "{err}");
    }

    #[test]
    fn an_unusable_answer_still_hands_over_its_new_refresh_token() {
        match parse_token_response(br#"{"refresh_token":"rotated-rt","token_type":"Bearer"}"#) {
            Err(e @ EndpointError::UnusableWithRefreshToken { .. }) => {
                assert!(!e.to_string().contains("rotated-rt") && !format!("{e:?}").contains("rotated-rt"));
                let EndpointError::UnusableWithRefreshToken { refresh_token, .. } = e else { unreachable!() };
                assert_eq!(refresh_token.expose(), "rotated-rt");
            }
            other => panic!("expected the refresh token back, got {other:?}"),
        }
        assert!(matches!(parse_token_response(br#"{"token_type":"mac"}"#), Err(EndpointError::InvalidResponse(_))));
    }

    #[test]
    fn entra_errors_keep_their_diagnostics() {
        let body: OAuthErrorBody = serde_json::from_str(
            r#"{"error":"invalid_grant","error_description":"AADSTS70008: expired","error_codes":[70008],
                "timestamp":"2026-11-23 10:00:00Z","trace_id":"t-1","correlation_id":"c-1","suberror":"bad_token"}"#,
        )
        .unwrap();
        assert_eq!(body.error_codes, vec![70008]);
        assert_eq!(body.trace_id.as_deref(), Some("t-1"));
        assert_eq!(body.correlation_id.as_deref(), Some("c-1"));
    }
}
