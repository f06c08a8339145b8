//! What the bridge depends on, for `tcbridge check`: each dependency with the endpoint and the
//! kind of credential the settings make it use ([`describe`]), and, for `check --online`, one
//! harmless request to each that says whether it answers and accepts the credential ([`probe`]).
//!
//! A probe changes nothing: discovery documents and key sets are read, the token endpoint is
//! asked for an app-only token (never with a user's grant), TrueContext is asked for one page of
//! FormSpaces (one call against the day's budget), storage is read, and Key Vault is asked for
//! a secret that does not exist. The alert webhook is named but never called: that would post
//! a message to people.

use std::time::Duration;

use crate::config::{OAuthGrant, OAuthProvider, Settings, StoreKind, TrueContextAuth, WebhookAuth};
use crate::oauth::token::{request_tokens, ClientAuth, EndpointError, TokenRequest};
use crate::secret::SecretString;
use crate::store::azure::connection::{StorageAccount, StorageAuth};
use crate::store::{RowRange, Table};
use url::Url;

use crate::handlers::App;

/// One probe's time limit: a dependency that does not answer by then is reported as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// The secret Key Vault is asked for: it never exists, so the answer proves access only.
const PROBE_SECRET: &str = "tcbridge-check-probe";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Authority,
    TokenEndpoint,
    TrueContext,
    EmbeddedStore,
    Tables,
    Blobs,
    Queues,
    KeyVault,
    WebhookIssuer,
    AlertWebhook,
}

/// A dependency as the settings configure it.
#[derive(Debug, Clone)]
pub struct Dependency {
    pub kind: Kind,
    pub name: &'static str,
    /// Where requests go (never a secret: a URL's query and path are dropped where they may
    /// hold one).
    pub endpoint: String,
    /// The kind of credential used, in plain words (never its value).
    pub credential: String,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok(String),
    /// Reached, but something deserves a look (not a failure).
    Warning(String),
    Failed(String),
    /// Not probed, and why.
    Skipped(String),
}

impl Verdict {
    pub fn is_failure(&self) -> bool {
        matches!(self, Verdict::Failed(_))
    }

    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Ok(_) => "ok",
            Verdict::Warning(_) => "warning",
            Verdict::Failed(_) => "FAILED",
            Verdict::Skipped(_) => "not probed",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Verdict::Ok(d) | Verdict::Warning(d) | Verdict::Failed(d) | Verdict::Skipped(d) => d,
        }
    }
}

/// Every dependency the settings configure, in the order a request meets them.
pub fn describe(settings: &Settings) -> Vec<Dependency> {
    let mut out = Vec::new();
    let dependency = |kind, name, endpoint: String, credential: String| Dependency { kind, name, endpoint, credential };
    let oauth = &settings.oauth;
    if oauth.authority.is_some() || oauth.token_endpoint.is_some() {
        let (endpoint, token) = match (&oauth.authority, oauth.provider) {
            (Some(authority), provider) if provider != OAuthProvider::Oauth2 => {
                let discovery = crate::oauth::provider::discovery_url(provider, authority);
                (discovery.to_string(), "the token_endpoint its discovery document names".to_owned())
            }
            _ => {
                let token =
                    oauth.token_endpoint.as_ref().map_or("OAUTH_TOKEN_ENDPOINT (not set)".into(), Url::to_string);
                (
                    oauth
                        .authorize_endpoint
                        .as_ref()
                        .map_or("OAUTH_AUTHORIZE_ENDPOINT (not set)".into(), Url::to_string),
                    token,
                )
            }
        };
        let client = oauth.client_id.as_deref().unwrap_or("(OAUTH_CLIENT_ID not set)");
        out.push(dependency(Kind::Authority, "authorization server", endpoint, "none (public metadata)".into()));
        out.push(dependency(
            Kind::TokenEndpoint,
            "token endpoint",
            token,
            format!("{} for client {client}", client_credential(settings)),
        ));
    }
    let tc = &settings.truecontext;
    let tc_credential = match tc.auth {
        TrueContextAuth::Basic if tc.api_key_id.is_some() => {
            format!("an API key (TRUECONTEXT_API_KEY_ID, HTTP Basic), as connection {}", tc.connection)
        }
        TrueContextAuth::Basic => "an API key (TRUECONTEXT_API_KEY_ID and _SECRET are not set)".into(),
        TrueContextAuth::Bearer => "each connection's OAuth access token (bearer)".into(),
    };
    out.push(dependency(Kind::TrueContext, "TrueContext", tc.base_url.to_string(), tc_credential));
    match settings.store.kind {
        StoreKind::Local => {
            let key = if settings.store.local_key.is_some() { "LOCAL_STORE_KEY" } else { "<store>/store.key" };
            out.push(dependency(
                Kind::EmbeddedStore,
                "embedded store",
                settings.store.local_path.display().to_string(),
                format!("none (a local file; secrets sealed with AES-256-GCM under {key})"),
            ));
        }
        StoreKind::Azure => out.extend(azure_dependencies(settings)),
    }
    if settings.webhook.auth == Some(WebhookAuth::Jwt) {
        let verifier = crate::webhook::auth::Verifier::new(&settings.webhook, &settings.oauth);
        let issuer = verifier.issuer_discovery().map_or("(no issuer configured)".into(), Url::to_string);
        out.push(dependency(Kind::WebhookIssuer, "webhook token issuer", issuer, "none (public keys)".into()));
    }
    if let Some(webhook) = &settings.tokens.alert_webhook {
        let origin = webhook.url.origin().ascii_serialization();
        out.push(dependency(
            Kind::AlertWebhook,
            "alert webhook",
            format!("{origin}/…"),
            "the URL itself (kept secret)".into(),
        ));
    }
    out
}

fn azure_dependencies(settings: &Settings) -> Vec<Dependency> {
    let identity =
        crate::store::azure::credential::describe(settings.store.azure.managed_identity_client_id.as_deref());
    let (credential, endpoints) = match StorageAccount::from_settings(&settings.store.azure) {
        Ok(account) => {
            let credential = match account.auth {
                StorageAuth::AccountKey(_) => "the account key in AzureWebJobsStorage".to_owned(),
                StorageAuth::Sas(_) => "the SAS token in AzureWebJobsStorage".to_owned(),
                StorageAuth::Identity => identity.clone(),
            };
            (credential, [account.table.to_string(), account.blob.to_string(), account.queue.to_string()])
        }
        Err(e) => {
            let unknown = format!("(unknown: {e})");
            ("(unknown)".to_owned(), [unknown.clone(), unknown.clone(), unknown])
        }
    };
    let [table, blob, queue] = endpoints;
    let vault = settings.store.keyvault_uri.as_ref().map_or("(KEYVAULT_URI not set)".into(), Url::to_string);
    vec![
        Dependency { kind: Kind::Tables, name: "Table storage", endpoint: table, credential: credential.clone() },
        Dependency { kind: Kind::Blobs, name: "Blob storage", endpoint: blob, credential: credential.clone() },
        Dependency { kind: Kind::Queues, name: "Queue storage", endpoint: queue, credential },
        Dependency { kind: Kind::KeyVault, name: "Key Vault", endpoint: vault, credential: identity },
    ]
}

/// How the app proves itself at the token endpoint, in plain words.
fn client_credential(settings: &Settings) -> String {
    let oauth = &settings.oauth;
    if oauth.federated_credential {
        let identity =
            crate::store::azure::credential::describe(settings.store.azure.managed_identity_client_id.as_deref());
        return format!("a federated credential (client assertion from {identity})");
    }
    if let Some(path) = &oauth.client_certificate_path {
        return format!("a certificate (private_key_jwt, {})", path.display());
    }
    if oauth.client_secret.is_some() {
        return "a client secret (OAUTH_CLIENT_SECRET)".into();
    }
    "no credential (a public client)".into()
}

/// Reaches every dependency once; one [`Verdict`] each, in [`describe`]'s order.
pub async fn probe(app: &App) -> Vec<(Dependency, Verdict)> {
    let mut out = Vec::new();
    for dependency in describe(&app.settings) {
        let verdict = match tokio::time::timeout(PROBE_TIMEOUT, probe_one(app, dependency.kind)).await {
            Ok(verdict) => verdict,
            Err(_) => Verdict::Failed(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        };
        out.push((dependency, verdict));
    }
    out
}

async fn probe_one(app: &App, kind: Kind) -> Verdict {
    let redact = |e: &dyn std::fmt::Display| crate::telemetry::redact(&e.to_string()).into_owned();
    match kind {
        Kind::Authority => match app.oauth().provider.get().await {
            Ok(provider) => Verdict::Ok(format!("metadata read; token endpoint {}", provider.token_endpoint)),
            Err(e) => Verdict::Failed(redact(&e)),
        },
        Kind::TokenEndpoint => token_endpoint(app).await,
        Kind::TrueContext => truecontext(app).await,
        Kind::EmbeddedStore | Kind::Tables => {
            match app
                .stores
                .tables
                .query(Table::Connections, crate::connections::PARTITION, &RowRange::all(), 1, None)
                .await
            {
                Ok(_) if kind == Kind::Tables => Verdict::Ok("the connections table was read".into()),
                Ok(_) => match app.stores.secrets.get(PROBE_SECRET, None).await {
                    Ok(_) => Verdict::Ok("tables and secrets were read".into()),
                    Err(e) => Verdict::Failed(format!("the secrets cannot be read: {}", redact(&e))),
                },
                Err(e) => Verdict::Failed(redact(&e)),
            }
        }
        Kind::Blobs => match app.stores.blobs.list(&app.settings.landing.container, "tcbridge-check-probe/").await {
            Ok(_) => Verdict::Ok(format!("container {} was listed", app.settings.landing.container)),
            Err(e) => Verdict::Failed(redact(&e)),
        },
        Kind::Queues => match app.stores.queues.len(&app.settings.queues.incoming).await {
            Ok(depth) => Verdict::Ok(format!("queue {} holds {depth} message(s)", app.settings.queues.incoming)),
            Err(e) => Verdict::Failed(redact(&e)),
        },
        Kind::KeyVault => match app.stores.secrets.get(PROBE_SECRET, None).await {
            Ok(_) => Verdict::Ok("secrets can be read".into()),
            Err(e) => Verdict::Failed(redact(&e)),
        },
        Kind::WebhookIssuer => match app.webhook_verifier().probe(&app.oauth().http).await {
            Ok(detail) => Verdict::Ok(detail),
            Err(e) => Verdict::Failed(redact(&e)),
        },
        Kind::AlertWebhook => Verdict::Skipped("calling it would post a message to people".into()),
    }
}

/// Asks for an app-only token: the one request that tests the app's credential without a
/// user. A server that does not allow that grant to this client still says whether it took
/// the credential: only `invalid_client` means it did not.
async fn token_endpoint(app: &App) -> Verdict {
    let oauth = app.oauth();
    let settings = &app.settings.oauth;
    let provider = match oauth.provider.get().await {
        Ok(provider) => provider,
        Err(e) => return Verdict::Failed(format!("the token endpoint is unknown: {e}")),
    };
    let auth = match oauth.client_auth(&provider).await {
        Ok(ClientAuth::None) => return Verdict::Skipped("a public client has no credential to test".into()),
        Ok(auth) => auth,
        Err(e) => return Verdict::Failed(format!("the client credential cannot be made: {e}")),
    };
    let scope = match (settings.grant, provider.kind) {
        (OAuthGrant::ClientCredentials, _) => settings.scopes.join(" "),
        // Any app may ask Entra for an app-only Microsoft Graph token; it carries no permission.
        (_, OAuthProvider::Entra) => "https://graph.microsoft.com/.default".to_owned(),
        _ => settings
            .scopes
            .iter()
            .filter(|s| *s != "openid" && *s != "offline_access")
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut params = vec![("grant_type", SecretString::new("client_credentials"))];
    if !scope.is_empty() {
        params.push(("scope", SecretString::new(scope)));
    }
    let client_id = settings.client_id.as_deref().unwrap_or_default();
    let request = TokenRequest { endpoint: &provider.token_endpoint, client_id, auth: &auth, params };
    match request_tokens(&oauth.http, request).await {
        Ok(_) => Verdict::Ok("the app's credential was accepted (an app-only token was issued and dropped)".into()),
        Err(e @ EndpointError::Rejected { .. }) if e.oauth_error() == Some("invalid_client") => {
            Verdict::Failed(format!("the app's credential was refused: {e}"))
        }
        Err(e @ EndpointError::Rejected { .. }) => Verdict::Warning(format!(
            "the server did not refuse the credential but gave no app-only token, so it is not proven without a \
             user: {e}"
        )),
        Err(e) => Verdict::Failed(crate::telemetry::redact(&e.to_string()).into_owned()),
    }
}

/// One page of FormSpaces as each connection the bridge reads TrueContext as (the API keys,
/// every active connection's token), each against its team's budget.
async fn truecontext(app: &App) -> Verdict {
    let client = app.truecontext();
    let tokens = app.tokens();
    let sources = match crate::connections::sources(&app.stores, &app.settings).await {
        Ok(sources) => sources,
        Err(e) => return Verdict::Failed(format!("the connections cannot be read: {e}")),
    };
    if sources.active.is_empty() {
        return Verdict::Skipped("no active connection to call it as yet (connect one first)".into());
    }
    let mut failures = Vec::new();
    let slots = client.keep_slots();
    for source in &sources.active {
        let credentials = match crate::truecontext::Credentials::of_source(source, &app.settings.truecontext, &tokens) {
            Ok(credentials) => credentials,
            Err(reason) => {
                failures.push(format!("as {}: {reason}", source.id));
                continue;
            }
        };
        if let Err(e) = client.formspaces(&credentials, &source.id, 0).await {
            failures.push(format!("as {}: {}", source.id, crate::telemetry::redact(&e.to_string())));
        }
    }
    slots.give_back().await;
    let names: Vec<&str> = sources.active.iter().map(|s| s.id.as_str()).collect();
    if failures.is_empty() {
        Verdict::Ok(format!("FormSpaces listed as {} (one call each against its team's budget)", names.join(", ")))
    } else {
        Verdict::Failed(failures.join("; "))
    }
}
