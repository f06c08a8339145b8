//! A bridge with one connection consented for real: node-oidc-provider (rotating refresh tokens,
//! revoking the grant when a used one comes back), the standalone server for the sign-in, and
//! then any number of in-process `App`s on the same store, each its own "instance" (own token
//! cache, own single-flight locks, own store handle), with a clock the test can move.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use truecontext_bridge::clock::{Clock, OffsetClock};
use truecontext_bridge::config::{RawSettings, Settings};
use truecontext_bridge::handlers::{App, Mode};
use truecontext_bridge::store::{self, Stores};
use truecontext_bridge::tokens::{AccessToken, TokenError, TokenService};

use super::azurite::Azurite;
use super::identity::IdentityEndpoint;
use super::keyvault::{self, KeyVaultSim};
use super::oidc::{HttpAgent, OidcProvider};
use super::truecontext::TrueContextSim;
use super::{free_port, Server, TEST_FUNCTION_KEY};

pub const CLIENT_ID: &str = "bridge-client";
pub const CLIENT_SECRET: &str = "bridge-client-secret-0123456789abcdef";
/// Once a year: the server's own timer never refreshes behind a test's back.
pub const NEVER: &str = "0 0 0 1 1 *";

/// `callers` concurrent requests for `id`'s token, spread over `instances` in turn.
pub async fn concurrent(instances: &[App], callers: usize, id: &str) -> Vec<Result<AccessToken, TokenError>> {
    let calls = (0..callers).map(|i| {
        let app = &instances[i % instances.len()];
        async move { app.tokens().access_token(id).await }
    });
    futures::future::join_all(calls).await
}

/// Every caller succeeded, and all got the one same token.
pub fn assert_all_same_token(results: &[Result<AccessToken, TokenError>]) {
    let tokens: std::collections::HashSet<&str> =
        results.iter().map(|r| r.as_ref().unwrap_or_else(|e| panic!("a caller failed: {e}")).token.expose()).collect();
    assert_eq!(tokens.len(), 1, "every caller gets the one new token");
}

pub struct Connected {
    pub provider: OidcProvider,
    pub server: Server,
    pub settings: Vec<(String, String)>,
    /// Every instance's token clock: real time plus the jumps `advance` makes.
    clock: Arc<OffsetClock>,
    /// TrueContext, taking this provider's access tokens.
    pub truecontext: TrueContextSim,
    /// With `Options::azure`: what the binary runs on instead of the embedded store.
    pub azure: Option<AzureBackend>,
}

/// `STORE=azure` for the binary, all on loopback: Azurite (Tables, Blobs, Queues, by account
/// key), the Key Vault simulator (TLS with a per-run test CA, trusted through
/// `TLS_EXTRA_CA_FILE`), reached with a managed identity from the identity endpoint stand-in.
pub struct AzureBackend {
    /// On disk: a chaos test stops and restarts it.
    pub azurite: std::sync::Mutex<Azurite>,
    pub vault: KeyVaultSim,
    pub identity: IdentityEndpoint,
    ca_dir: tempfile::TempDir,
}

impl AzureBackend {
    pub async fn start() -> AzureBackend {
        let azurite = Azurite::start_on_disk();
        let vault = KeyVaultSim::start().await;
        let identity = IdentityEndpoint::start(keyvault::RESOURCE, vault.token(), None).await;
        let ca_dir = tempfile::tempdir().unwrap();
        std::fs::write(ca_dir.path().join("test-ca.pem"), &vault.ca_pem).unwrap();
        AzureBackend { azurite: std::sync::Mutex::new(azurite), vault, identity, ca_dir }
    }

    /// The settings a function app on these would have.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut settings = vec![
            ("STORE".to_owned(), "azure".to_owned()),
            ("AzureWebJobsStorage".to_owned(), self.azurite.lock().unwrap().connection_string()),
            ("KEYVAULT_URI".to_owned(), self.vault.vault_url.clone()),
            ("TLS_EXTRA_CA_FILE".to_owned(), self.ca_dir.path().join("test-ca.pem").display().to_string()),
        ];
        settings.extend(self.identity.settings().into_iter().map(|(k, v)| (k.to_owned(), v)));
        settings
    }
}

pub struct Options {
    /// The provider's access-token lifetime (seconds).
    pub access_token_ttl: u64,
    /// Extra bridge settings.
    pub settings: Vec<(&'static str, String)>,
    /// Consent `default` at start.
    pub consent: bool,
    /// Run the binary on `STORE=azure` (see [`AzureBackend`]) instead of the embedded store.
    pub azure: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { access_token_ttl: 3600, settings: Vec::new(), consent: true, azure: false }
    }
}

impl Connected {
    pub async fn start(options: Options) -> Connected {
        let app_port = free_port();
        let provider = OidcProvider::start(json!({
            "clients": [{
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [format!("http://127.0.0.1:{app_port}/api/callback")],
                "token_endpoint_auth_method": "client_secret_post",
                "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
                "response_types": ["code"],
            }],
            "ttl": { "access_token": options.access_token_ttl },
        }));
        // TrueContext accepts the provider's access tokens (it asks the userinfo endpoint).
        let truecontext = TrueContextSim::start();
        truecontext.validate_bearer_at(&format!("{}/me", provider.issuer()));
        let mut settings: Vec<(String, String)> = vec![
            ("OAUTH_PROVIDER".into(), "oidc".into()),
            ("OAUTH_AUTHORITY".into(), provider.issuer().into()),
            ("OAUTH_CLIENT_ID".into(), CLIENT_ID.into()),
            ("OAUTH_CLIENT_SECRET".into(), CLIENT_SECRET.into()),
            ("OAUTH_REDIRECT_URI".into(), format!("http://127.0.0.1:{app_port}/api/callback")),
            ("OAUTH_SCOPES".into(), "profile".into()),
            ("FUNCTION_KEY".into(), TEST_FUNCTION_KEY.into()),
            ("SYNC_SCHEDULE".into(), NEVER.into()),
            ("TRUECONTEXT_BASE_URL".into(), truecontext.base_url()),
        ];
        let azure = if options.azure { Some(AzureBackend::start().await) } else { None };
        settings.extend(azure.iter().flat_map(AzureBackend::settings));
        for (name, value) in options.settings {
            settings.retain(|(n, _)| n != name);
            settings.push((name.into(), value));
        }
        let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let server = Server::start(&["serve", "--standalone", "--port", &app_port.to_string()], app_port, &pairs);
        settings.push(("LOCAL_STORE_PATH".into(), server.store_dir().display().to_string()));
        let connected = Connected { provider, server, settings, clock: Arc::default(), truecontext, azure };
        if options.consent {
            connected.consent("default").await;
        }
        connected
    }

    /// An administrator signs in and consents `connection` (again) through the real flow.
    pub async fn consent(&self, connection: &str) {
        let agent = HttpAgent::new();
        let url = self.server.url(&format!("/api/authorize?code={TEST_FUNCTION_KEY}&connection={connection}"));
        let response = agent.get(&url).await;
        assert_eq!(response.status(), 302, "{}", self.server.log());
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let authorization = agent.authorize(&location).await;
        let delivered = agent.post_form(&authorization.target, &authorization.params).await;
        assert_eq!(delivered.status(), 303, "{}", self.server.log());
    }

    pub fn settings(&self) -> Arc<Settings> {
        let raw = RawSettings::from_pairs(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Arc::new(Settings::load(&raw).unwrap_or_else(|p| panic!("settings: {p:?}")))
    }

    /// A new instance on the store the server uses. On the Azure backend this process has no
    /// identity endpoint, so it reaches the vault with the simulator's own test credential.
    pub fn instance(&self) -> App {
        let settings = self.settings();
        let mut stores = store::open(&settings.store).unwrap();
        if let Some(azure) = &self.azure {
            stores.secrets = Arc::new(azure.vault.store(KeyVaultSim::fast_tuning()));
        }
        self.instance_on(stores)
    }

    /// A new instance on other stores (Azurite, the Key Vault simulator).
    pub fn instance_on(&self, stores: Stores) -> App {
        let clock = self.clock.clone();
        App::with_token_service(self.settings(), stores, Mode::Cli, TokenService::with_clock(clock))
    }

    /// Moves every instance's token clock forward.
    pub fn advance(&self, seconds: i64) {
        self.clock.advance(Duration::from_secs(u64::try_from(seconds).expect("the token clock only moves forward")));
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.utc()
    }

    pub async fn refresh_calls(&self) -> u64 {
        self.provider.token_request_count("refresh_token").await
    }

    /// The token-endpoint calls with this grant type, oldest first.
    pub async fn calls(&self, grant_type: &str) -> Vec<Value> {
        self.provider.token_request_log().await.into_iter().filter(|r| r["grant_type"] == grant_type).collect()
    }

    /// `tcbridge` with these settings (and `extra`), as an operator runs it.
    pub fn command(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Command {
        let mut pairs: Vec<(&str, &str)> = self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pairs.extend_from_slice(extra);
        let mut command = super::command(self.server.dir.path(), &pairs);
        command.args(args);
        command
    }
}
