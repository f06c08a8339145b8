//! The webhook: how pushes are authenticated (one shared credential, or one per connection),
//! who may push, and what a push may cost.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookAuth {
    /// A bearer JWT from an OpenID Connect issuer (`jwt`, alias `entra`).
    Jwt,
    Basic,
    Header,
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub auth: Option<WebhookAuth>,
    pub basic_username: Option<String>,
    /// `WEBHOOK_BASIC_PASSWORD`: one value, or two (comma-separated) during a rotation.
    pub basic_passwords: Vec<SecretString>,
    pub header_name: Option<String>,
    /// `WEBHOOK_HEADER_VALUE`: one value, or two during a rotation.
    pub header_values: Vec<SecretString>,
    /// For `jwt`: the issuer whose tokens are accepted (`WEBHOOK_JWT_ISSUER`; by default the
    /// Entra tenant's v2 issuer, or `OAUTH_AUTHORITY` for other providers).
    pub jwt_issuer: Option<Url>,
    /// For `jwt`: the audience the caller's token must carry (`WEBHOOK_AUDIENCE`).
    pub audience: Option<String>,
    /// For `jwt`: a role the token's `roles` must hold (`WEBHOOK_REQUIRED_ROLE`).
    pub required_role: Option<String>,
    /// For `jwt`: the client ids (`azp` or `appid`) allowed to call (`WEBHOOK_ALLOWED_CLIENT_IDS`).
    pub allowed_client_ids: Vec<String>,
    /// For `jwt`: per connection, the only client ids that may push to it
    /// (`WEBHOOK_CONNECTION_CLIENT_IDS`: `contoso=id1 id2;fabrikam=id3`).
    pub connection_client_ids: std::collections::BTreeMap<String, Vec<String>>,
    /// For `basic` / `header`: per connection, the only password or header value that may push
    /// to it, in place of the shared one (`WEBHOOK_CONNECTION_SECRETS`: `contoso=…;fabrikam=…`).
    /// A credential for one TrueContext organisation then cannot write into another's.
    pub connection_secrets: std::collections::BTreeMap<String, SecretString>,
    /// For `jwt`: the longest a token may live, `exp` − `iat` (`WEBHOOK_MAX_TOKEN_LIFETIME_SECONDS`).
    pub max_token_lifetime: Duration,
    /// `WEBHOOK_MAX_BODY_BYTES`: the largest push accepted (413 above).
    pub max_body_bytes: usize,
    /// `WEBHOOK_ID_FIELD`: where a custom template body carries the submission id (a dotted
    /// path such as `submission.id`), besides `identifier` and `dataRecord.identifier`.
    pub id_field: Option<String>,
    /// `WEBHOOK_RECOVERY_SECONDS`: a stored push not yet queued after this long is queued by the
    /// recovery pass (its request died between the two writes).
    pub recovery_after: Duration,
    /// `WEBHOOK_MAX_BACKLOG_SECONDS`: status needs attention when a push has waited longer than
    /// this to be processed (processing stopped, or keeps failing).
    pub max_backlog_age: Duration,
}

pub(super) fn parse_webhook(p: &mut Parser<'_>) -> WebhookSettings {
    let auth = p.get("WEBHOOK_AUTH").map(|_| {
        p.choice(
            "WEBHOOK_AUTH",
            WebhookAuth::Basic,
            &[
                ("jwt", WebhookAuth::Jwt),
                ("entra", WebhookAuth::Jwt),
                ("basic", WebhookAuth::Basic),
                ("header", WebhookAuth::Header),
            ],
        )
    });
    let settings = WebhookSettings {
        auth,
        basic_username: p.text("WEBHOOK_BASIC_USERNAME"),
        basic_passwords: rotation_pair(p, "WEBHOOK_BASIC_PASSWORD"),
        header_name: p.text("WEBHOOK_HEADER_NAME"),
        header_values: rotation_pair(p, "WEBHOOK_HEADER_VALUE"),
        jwt_issuer: p.url("WEBHOOK_JWT_ISSUER", "https://login.microsoftonline.com/<tenant-id>/v2.0"),
        audience: p.text("WEBHOOK_AUDIENCE"),
        required_role: p.text("WEBHOOK_REQUIRED_ROLE"),
        allowed_client_ids: p.list("WEBHOOK_ALLOWED_CLIENT_IDS", &[',', ' ']),
        connection_client_ids: connection_client_ids(p),
        connection_secrets: connection_secrets(p),
        max_token_lifetime: Duration::from_secs(p.number(
            "WEBHOOK_MAX_TOKEN_LIFETIME_SECONDS",
            24 * 3600,
            60,
            7 * 24 * 3600,
        )),
        max_body_bytes: p.number("WEBHOOK_MAX_BODY_BYTES", 10 * 1024 * 1024, 1024, 100 * 1024 * 1024),
        id_field: p.text("WEBHOOK_ID_FIELD"),
        recovery_after: Duration::from_secs(p.number("WEBHOOK_RECOVERY_SECONDS", 60, 1, 86_400)),
        max_backlog_age: Duration::from_secs(p.number("WEBHOOK_MAX_BACKLOG_SECONDS", 900, 10, 7 * 86_400)),
    };
    check_webhook(p, &settings);
    settings
}

/// What the webhook's settings must agree on: the credential the chosen method needs, no
/// shared value reused as a connection's own, jwt restricted to a role or clients, a header a
/// caller can set, a dotted id field.
fn check_webhook(p: &mut Parser<'_>, settings: &WebhookSettings) {
    match settings.auth {
        Some(WebhookAuth::Basic) if settings.basic_username.is_none() || settings.basic_passwords.is_empty() => p
            .problem(
                "WEBHOOK_BASIC_USERNAME",
                "and WEBHOOK_BASIC_PASSWORD are required with WEBHOOK_AUTH=basic",
                "truecontext",
            ),
        Some(WebhookAuth::Header) if settings.header_name.is_none() || settings.header_values.is_empty() => p.problem(
            "WEBHOOK_HEADER_NAME",
            "and WEBHOOK_HEADER_VALUE are required with WEBHOOK_AUTH=header",
            "x-api-key",
        ),
        Some(WebhookAuth::Jwt) if settings.audience.is_none() => {
            p.problem("WEBHOOK_AUDIENCE", "is required with WEBHOOK_AUTH=jwt", "api://<webhook-app-id>")
        }
        _ => {}
    }
    let shared: Vec<&SecretString> = settings.basic_passwords.iter().chain(&settings.header_values).collect();
    if let Some((connection, _)) = settings.connection_secrets.iter().find(|(_, own)| shared.contains(own)) {
        // A connection's own value is the only one it takes, and the shared one is refused for
        // it: the same value in both would refuse that connection's own pushes.
        let connection = connection.clone();
        p.problem(
            "WEBHOOK_CONNECTION_SECRETS",
            format!("gives connection {connection:?} the shared WEBHOOK_BASIC_PASSWORD / WEBHOOK_HEADER_VALUE (not shown); give it a value of its own"),
            "contoso=<openssl rand -base64 32>",
        );
    }
    let restricted = settings.required_role.is_some()
        || !settings.allowed_client_ids.is_empty()
        || !settings.connection_client_ids.is_empty();
    if settings.auth == Some(WebhookAuth::Jwt) && !restricted {
        // Any app or managed identity of the tenant can get a token for our audience: without
        // a role or a client list, every one of them could push.
        p.problem(
            "WEBHOOK_REQUIRED_ROLE",
            "or WEBHOOK_ALLOWED_CLIENT_IDS must be set with WEBHOOK_AUTH=jwt: without either, any app or \
             managed identity in the tenant that can get a token for WEBHOOK_AUDIENCE could push",
            "Webhook.Push (an app role assigned to TrueContext's client only)",
        );
    }
    if let Some(name) = &settings.header_name {
        let forbidden = ["authorization", "content-type", "content-length", "host", "cookie"];
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || forbidden.contains(&name.to_ascii_lowercase().as_str())
        {
            let name = name.clone();
            p.problem(
                "WEBHOOK_HEADER_NAME",
                format!("{name:?} is not a header name a caller can set for this"),
                "x-api-key",
            );
        }
    }
    if let Some(field) = &settings.id_field {
        if field.is_empty() || field.split('.').any(str::is_empty) || field.len() > 200 {
            let field = field.clone();
            p.problem("WEBHOOK_ID_FIELD", format!("{field:?} is not a dotted field path"), "submission.identifier");
        }
    }
}

/// `WEBHOOK_CONNECTION_CLIENT_IDS`: `connection=client client;connection=client`.
pub(super) fn connection_client_ids(p: &mut Parser<'_>) -> std::collections::BTreeMap<String, Vec<String>> {
    const NAME: &str = "WEBHOOK_CONNECTION_CLIENT_IDS";
    let mut out = std::collections::BTreeMap::new();
    for entry in p.list(NAME, &[';']) {
        let Some((connection, clients)) = entry.split_once('=') else {
            p.problem(NAME, "takes connection=client-id entries separated by ';'", "contoso=11111111-…;fabrikam=2222…");
            continue;
        };
        let connection = connection.trim();
        let clients: Vec<String> =
            clients.split([',', ' ']).map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect();
        if !crate::naming::is_connection_id(connection) || clients.is_empty() {
            p.problem(
                NAME,
                format!("has an entry whose connection is not {CONNECTION_RULE_SHORT} or which names no client id"),
                "contoso=11111111-…",
            );
            continue;
        }
        if out.insert(connection.to_owned(), clients).is_some() {
            // `c=a;c=b` would keep only b, silently.
            p.problem(
                NAME,
                format!("names connection {connection:?} twice; list all of its client ids in one entry (c=id1 id2)"),
                "contoso=11111111-… 22222222-…",
            );
        }
    }
    out
}

/// `WEBHOOK_CONNECTION_SECRETS`: `connection=value;connection=value` (values never shown).
pub(super) fn connection_secrets(p: &mut Parser<'_>) -> std::collections::BTreeMap<String, SecretString> {
    const NAME: &str = "WEBHOOK_CONNECTION_SECRETS";
    let mut out = std::collections::BTreeMap::new();
    let Some(whole) = p.secret(NAME) else { return out };
    for entry in whole.expose().split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((connection, value)) = entry.split_once('=') else {
            p.problem(
                NAME,
                "takes connection=value entries separated by ';' (the values are not shown)",
                "contoso=…;fabrikam=…",
            );
            continue;
        };
        let (connection, value) = (connection.trim(), value.trim());
        if !crate::naming::is_connection_id(connection) || value.len() < 16 {
            p.problem(
                NAME,
                format!("has an entry whose connection is not {CONNECTION_RULE_SHORT} or whose value is shorter than 16 characters (not shown)"),
                "contoso=<openssl rand -base64 32>",
            );
            continue;
        }
        let value = SecretString::new(value);
        p.secrets.push(value.clone());
        if out.insert(connection.to_owned(), value).is_some() {
            // Written like a rotation (`c=old;c=new`), only the last would count, silently.
            p.problem(
                NAME,
                format!("names connection {connection:?} twice; give each connection one value"),
                "contoso=…;fabrikam=…",
            );
        }
    }
    out
}

/// How a bad connection id in a list setting is described.
pub(super) const CONNECTION_RULE_SHORT: &str = "a connection id (letters, digits, '-', '_', '.')";

pub(super) fn rotation_pair(p: &mut Parser<'_>, name: &str) -> Vec<SecretString> {
    let Some(whole) = p.secret(name) else { return Vec::new() };
    let values: Vec<SecretString> =
        whole.expose().split(',').map(str::trim).filter(|v| !v.is_empty()).map(SecretString::new).collect();
    if values.len() > 2 {
        p.problem(
            name,
            "takes one value, or two separated by a comma during a rotation (the values are not shown)",
            "old,new",
        );
    }
    if values.iter().any(|v| v.expose().len() < 16) {
        p.problem(
            name,
            "is shorter than 16 characters; use a long random value (not shown)",
            "the output of `openssl rand -base64 32`",
        );
    }
    p.secrets.extend(values.iter().cloned());
    values
}
