//! The authorization server: where its endpoints are, who it says it is, what it supports.
//!
//! `entra`, `b2c` and `oidc` are read from OpenID Connect discovery; `oauth2` servers (no
//! discovery; see docs/authorization-servers.md) come from explicit endpoint settings. Discovery is cached
//! for an hour. `openidconnect`'s discovery refuses Entra's `/common` and `/organizations`
//! metadata (its `issuer` is a `{tenantid}` template), which is why this is our own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use crate::config::{OAuthProvider, OAuthSettings};

const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
const MAX_METADATA_BYTES: usize = 128 * 1024;

/// How the server expects the issuer in its tokens to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedIssuer {
    /// Exactly this string.
    Exact(String),
    /// Entra multi-tenant (`common`, `organizations`): `{tenantid}` is replaced by the token's `tid`.
    TenantTemplate(String),
    /// A plain OAuth 2.0 server with no issuer.
    None,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub kind: OAuthProvider,
    pub issuer: ExpectedIssuer,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    /// Where refresh requests go (some OAuth 2.0 servers have a route of their own for it).
    pub refresh_endpoint: Url,
    pub jwks_uri: Option<Url>,
    /// `response_mode=form_post` is supported (the code then never sits in a URL).
    pub form_post: bool,
    /// The server sends RFC 9207's `iss` with authorization responses.
    pub iss_parameter: bool,
    pub auth_methods: Vec<String>,
    /// Name of the authorization response parameter that carries the code.
    pub code_param: String,
    /// Name of the refresh request parameter that carries the refresh token.
    pub refresh_token_param: String,
}

impl Provider {
    /// True for servers that issue id_tokens we must validate.
    pub fn is_openid(&self) -> bool {
        self.jwks_uri.is_some() && self.issuer != ExpectedIssuer::None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the sign-in is not configured: {0}")]
    NotConfigured(String),
    #[error("the authorization server's metadata at {url} could not be read: {reason}")]
    Discovery { url: String, reason: String },
    #[error("the authorization server's metadata names issuer {found:?}, but OAUTH_AUTHORITY expects {expected:?}")]
    IssuerMismatch { expected: String, found: String },
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: Url,
    token_endpoint: Url,
    #[serde(default)]
    jwks_uri: Option<Url>,
    #[serde(default)]
    response_modes_supported: Option<Vec<String>>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// Resolves and caches the configured provider.
pub struct ProviderResolver {
    settings: OAuthSettings,
    http: reqwest::Client,
    cached: Mutex<Option<(Instant, Arc<Provider>)>>,
}

impl ProviderResolver {
    pub fn new(settings: OAuthSettings, http: reqwest::Client) -> Self {
        Self { settings, http, cached: Mutex::new(None) }
    }

    pub async fn get(&self) -> Result<Arc<Provider>, ProviderError> {
        let mut cached = self.cached.lock().await;
        if let Some((at, provider)) = cached.as_ref() {
            if at.elapsed() < DISCOVERY_TTL {
                return Ok(provider.clone());
            }
        }
        let provider = Arc::new(self.resolve().await?);
        *cached = Some((Instant::now(), provider.clone()));
        Ok(provider)
    }

    async fn resolve(&self) -> Result<Provider, ProviderError> {
        let s = &self.settings;
        if s.provider == OAuthProvider::Oauth2 {
            return explicit_provider(s);
        }
        let authority =
            s.authority.as_ref().ok_or_else(|| ProviderError::NotConfigured("OAUTH_AUTHORITY is not set".into()))?;
        let discovery = discovery_url(s.provider, authority);
        let metadata = self.fetch_metadata(&discovery).await?;
        let issuer = expected_issuer(s.provider, authority, &metadata.issuer)?;
        let form_post = metadata.response_modes_supported.as_ref().is_none_or(|m| m.iter().any(|m| m == "form_post"));
        // Explicit endpoint settings override discovery (e.g. a gateway in front of the server).
        let token_endpoint = s.token_endpoint.clone().unwrap_or(metadata.token_endpoint);
        Ok(Provider {
            kind: s.provider,
            issuer,
            authorization_endpoint: s.authorize_endpoint.clone().unwrap_or(metadata.authorization_endpoint),
            refresh_endpoint: s.refresh_endpoint.clone().unwrap_or_else(|| token_endpoint.clone()),
            token_endpoint,
            jwks_uri: metadata.jwks_uri,
            form_post,
            iss_parameter: metadata.authorization_response_iss_parameter_supported,
            auth_methods: metadata.token_endpoint_auth_methods_supported.unwrap_or_default(),
            code_param: s.code_param.clone(),
            refresh_token_param: s.refresh_token_param.clone(),
        })
    }

    async fn fetch_metadata(&self, url: &Url) -> Result<Metadata, ProviderError> {
        let fail = |reason: String| ProviderError::Discovery { url: url.to_string(), reason };
        let response = self.http.get(url.clone()).send().await.map_err(|e| fail(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status().as_u16())));
        }
        let bytes = response.bytes().await.map_err(|e| fail(e.without_url().to_string()))?;
        if bytes.len() > MAX_METADATA_BYTES {
            return Err(fail("the document is larger than 128 KiB".into()));
        }
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("not OpenID Connect metadata: {e}")))
    }
}

fn explicit_provider(s: &OAuthSettings) -> Result<Provider, ProviderError> {
    let (Some(authorize), Some(token)) = (&s.authorize_endpoint, &s.token_endpoint) else {
        return Err(ProviderError::NotConfigured(
            "OAUTH_PROVIDER=oauth2 needs OAUTH_AUTHORIZE_ENDPOINT and OAUTH_TOKEN_ENDPOINT".into(),
        ));
    };
    Ok(Provider {
        kind: OAuthProvider::Oauth2,
        issuer: ExpectedIssuer::None,
        authorization_endpoint: authorize.clone(),
        token_endpoint: token.clone(),
        refresh_endpoint: s.refresh_endpoint.clone().unwrap_or_else(|| token.clone()),
        jwks_uri: None,
        form_post: false,
        iss_parameter: false,
        auth_methods: Vec::new(),
        code_param: s.code_param.clone(),
        refresh_token_param: s.refresh_token_param.clone(),
    })
}

/// Where the metadata lives for each kind of authority.
///
/// * Entra: `https://login.microsoftonline.com/<tenant>[/v2.0]` → `…/<tenant>/v2.0/.well-known/openid-configuration`
/// * B2C: `https://<host>/<tenant>/<policy>[/v2.0]`, or `…/v2.0?p=<policy>`; custom domains too.
/// * OIDC: `<issuer>/.well-known/openid-configuration`.
pub fn discovery_url(kind: OAuthProvider, authority: &Url) -> Url {
    let mut url = authority.clone();
    let query = url.query().map(str::to_owned);
    let mut path = url.path().trim_end_matches('/').to_owned();
    if path.ends_with("/.well-known/openid-configuration") {
        return url;
    }
    if matches!(kind, OAuthProvider::Entra | OAuthProvider::B2c) && !path.ends_with("/v2.0") {
        path.push_str("/v2.0");
    }
    path.push_str("/.well-known/openid-configuration");
    url.set_path(&path);
    url.set_query(query.as_deref());
    url
}

fn expected_issuer(
    kind: OAuthProvider,
    authority: &Url,
    metadata_issuer: &str,
) -> Result<ExpectedIssuer, ProviderError> {
    if metadata_issuer.contains("{tenantid}") {
        // Entra's multi-tenant metadata; the token's own tid fills the template.
        return if kind == OAuthProvider::Entra {
            Ok(ExpectedIssuer::TenantTemplate(metadata_issuer.to_owned()))
        } else {
            Err(ProviderError::IssuerMismatch { expected: authority.to_string(), found: metadata_issuer.to_owned() })
        };
    }
    if kind == OAuthProvider::Oidc {
        // OIDC Discovery §4.3: the issuer must be the URL the metadata was requested for.
        let normalize = |s: &str| s.trim_end_matches('/').to_owned();
        if normalize(authority.as_str()) != normalize(metadata_issuer) {
            return Err(ProviderError::IssuerMismatch {
                expected: authority.to_string(),
                found: metadata_issuer.to_owned(),
            });
        }
    }
    // Entra and B2C authorities (tenant names, policy paths, custom domains) differ in form
    // from the issuer they publish; the metadata fetched over TLS from the configured
    // authority is the source of truth there.
    Ok(ExpectedIssuer::Exact(metadata_issuer.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn discovery_urls_for_each_kind_of_authority() {
        let cases = [
            (OAuthProvider::Entra, "https://login.microsoftonline.com/contoso.onmicrosoft.com",
             "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"),
            (OAuthProvider::Entra, "https://login.microsoftonline.com/organizations/v2.0/",
             "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration"),
            (OAuthProvider::B2c, "https://identity.smarttask.io/99abc933-fcdd-4dba-893c-b2b9f81c0676/B2C_1A_SIGNUP_SIGNIN",
             "https://identity.smarttask.io/99abc933-fcdd-4dba-893c-b2b9f81c0676/B2C_1A_SIGNUP_SIGNIN/v2.0/.well-known/openid-configuration"),
            (OAuthProvider::B2c, "https://contoso.b2clogin.com/contoso.onmicrosoft.com/v2.0?p=B2C_1_signin",
             "https://contoso.b2clogin.com/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration?p=B2C_1_signin"),
            (OAuthProvider::Oidc, "https://issuer.example.com/realms/x",
             "https://issuer.example.com/realms/x/.well-known/openid-configuration"),
        ];
        for (kind, authority, expected) in cases {
            assert_eq!(discovery_url(kind, &url(authority)).as_str(), expected);
        }
    }

    #[test]
    fn issuers_exact_templated_or_refused() {
        let entra = url("https://login.microsoftonline.com/organizations/v2.0");
        assert_eq!(
            expected_issuer(OAuthProvider::Entra, &entra, "https://login.microsoftonline.com/{tenantid}/v2.0").unwrap(),
            ExpectedIssuer::TenantTemplate("https://login.microsoftonline.com/{tenantid}/v2.0".into())
        );
        let oidc = url("https://issuer.example.com");
        assert!(expected_issuer(OAuthProvider::Oidc, &oidc, "https://issuer.example.com/").is_ok());
        assert!(matches!(
            expected_issuer(OAuthProvider::Oidc, &oidc, "https://evil.example.com"),
            Err(ProviderError::IssuerMismatch { .. })
        ));
        assert!(expected_issuer(OAuthProvider::Oidc, &oidc, "https://x/{tenantid}/v2.0").is_err());
    }
}
