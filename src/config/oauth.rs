//! The OAuth client: which kind of authorization server, which grant, the client's
//! credentials, and who may consent (`ALLOWED_USERS`).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthProvider {
    Entra,
    B2c,
    Oidc,
    Oauth2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    AuthorizationCode,
    ClientCredentials,
}

#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub provider: OAuthProvider,
    pub authority: Option<Url>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub client_certificate_path: Option<PathBuf>,
    /// Use a managed-identity token as a federated client assertion (Entra only).
    pub federated_credential: bool,
    /// The scopes from `OAUTH_SCOPES`, as given; the flow adds `openid offline_access`.
    pub scopes: Vec<String>,
    pub redirect_uri: Option<Url>,
    pub grant: OAuthGrant,
    /// Explicit endpoints for `OAUTH_PROVIDER=oauth2` (and overrides for the others).
    pub authorize_endpoint: Option<Url>,
    pub token_endpoint: Option<Url>,
    pub refresh_endpoint: Option<Url>,
    pub allowed_tenants: Vec<String>,
    pub allowed_users: Vec<String>,
    /// Non-standard servers: the authorization response parameter carrying the code
    /// (`OAUTH_CODE_PARAM`, e.g. `authorization_code`) and the refresh request parameter
    /// carrying the refresh token (`OAUTH_REFRESH_TOKEN_PARAM`, e.g. `token`); see
    /// docs/authorization-servers.md, "A custom OAuth 2.0 server without discovery".
    pub code_param: String,
    pub refresh_token_param: String,
}

pub(super) fn parse_oauth(p: &mut Parser<'_>) -> OAuthSettings {
    let provider = p.choice(
        "OAUTH_PROVIDER",
        OAuthProvider::Entra,
        &[
            ("entra", OAuthProvider::Entra),
            ("b2c", OAuthProvider::B2c),
            ("oidc", OAuthProvider::Oidc),
            ("oauth2", OAuthProvider::Oauth2),
        ],
    );
    let grant = p.choice(
        "OAUTH_GRANT",
        OAuthGrant::AuthorizationCode,
        &[("authorization_code", OAuthGrant::AuthorizationCode), ("client_credentials", OAuthGrant::ClientCredentials)],
    );
    let scopes = p.list("OAUTH_SCOPES", &[' ', '\t', '\n']);
    if let Some(bad) = scopes.iter().find(|s| s.chars().any(|c| c.is_control() || c == '"' || c == '\\')) {
        let bad = bad.clone();
        p.problem("OAUTH_SCOPES", format!("{bad:?} is not a valid scope token"), "api://truecontext/.default");
    }
    let client_certificate_path = p.text("OAUTH_CLIENT_CERTIFICATE_PATH").map(PathBuf::from);
    if let Some(path) = &client_certificate_path {
        if !path.is_file() {
            let shown = path.display().to_string();
            p.problem(
                "OAUTH_CLIENT_CERTIFICATE_PATH",
                format!("{shown} is not a readable file"),
                "/home/site/certs/client.pem",
            );
        }
    }
    OAuthSettings {
        provider,
        authority: p.url("OAUTH_AUTHORITY", "https://login.microsoftonline.com/<tenant-id>/v2.0"),
        client_id: p.text("OAUTH_CLIENT_ID"),
        client_secret: p.secret("OAUTH_CLIENT_SECRET"),
        client_certificate_path,
        federated_credential: p.flag("OAUTH_FEDERATED_CREDENTIAL"),
        scopes,
        redirect_uri: p.url("OAUTH_REDIRECT_URI", "https://<app>.azurewebsites.net/api/callback"),
        grant,
        authorize_endpoint: p.url("OAUTH_AUTHORIZE_ENDPOINT", "https://auth.example.com/oauth/authorize"),
        token_endpoint: p.url("OAUTH_TOKEN_ENDPOINT", "https://auth.example.com/oauth/token"),
        refresh_endpoint: p.url("OAUTH_REFRESH_ENDPOINT", "https://auth.example.com/oauth/refresh"),
        allowed_tenants: p.list("ALLOWED_TENANTS", &[',', ' ', ';']),
        allowed_users: allowed_users(p),
        code_param: parameter_name(p, "OAUTH_CODE_PARAM", "code"),
        refresh_token_param: parameter_name(p, "OAUTH_REFRESH_TOKEN_PARAM", "refresh_token"),
    }
}

pub(super) fn parameter_name(p: &mut Parser<'_>, name: &str, default: &str) -> String {
    let value = p.text(name).unwrap_or_else(|| default.to_owned());
    if value.is_empty() || value.len() > 64 || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        p.problem(name, format!("{value:?} is not a parameter name"), default);
        return default.to_owned();
    }
    value
}

/// A secret that takes one value, or two separated by a comma while a rotation is under way
/// (the old and the new both work until the caller has switched). Each must be long and random.
/// `ALLOWED_USERS`: each entry an account's issuer-bound key (`tenant-id/object-id`,
/// `issuer|subject`) or an e-mail address the server verifies; a bare name could be another
/// tenant's or issuer's account, so it is refused here rather than silently never matched.
pub(super) fn allowed_users(p: &mut Parser<'_>) -> Vec<String> {
    let users = p.list("ALLOWED_USERS", &[',', ' ', ';']);
    if let Some(bare) = users.iter().find(|u| !(u.contains('/') || u.contains('|') || u.contains('@'))) {
        let bare: String = bare.chars().filter(|c| !c.is_control()).take(64).collect();
        p.problem(
            "ALLOWED_USERS",
            format!(
                "has {bare:?}, which is neither tenant-id/object-id, issuer|subject nor an e-mail address: a name or id \
                 alone can belong to an account of another tenant or issuer"
            ),
            "72f988bf-…/0b6f…(tenant id/object id, as `tcbridge connection list` shows it) or admin@contoso.com",
        );
    }
    users
}
