//! The operator's verbs end to end: `connection list | disable | enable | delete` against a
//! connection consented for real (node-oidc-provider), delete on the Key Vault simulator, and
//! `check --online` with each dependency down in turn.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use truecontext_bridge::config::{RawSettings, Settings};
use truecontext_bridge::connections::{self, Connection};
use truecontext_bridge::handlers::{App, Mode, StatusReport, TimerInfo};
use truecontext_bridge::oauth::token::TokenResponse;
use truecontext_bridge::ops::check::{self as dependencies, Kind, Verdict};
use truecontext_bridge::secret::SecretString;
use truecontext_bridge::store::{self, local, Stores};

use crate::harness::azurite::Azurite;
use crate::harness::connected::{Connected, Options};
use crate::harness::keyvault::{Fault as VaultFault, KeyVaultSim};
use crate::harness::truecontext::{Fault, TrueContextSim, KEY_ID, KEY_SECRET};

fn run(bridge: &Connected, args: &[&str]) -> (i32, String) {
    let output = bridge.command(args, &[]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

async fn sync_runs(app: &App, connection: &str) -> u64 {
    let report = StatusReport::gather(app).await.unwrap();
    report
        .truecontext
        .iter()
        .find(|t| t.connection == connection)
        .and_then(|t| t.last_sync.as_ref())
        .map_or(0, |l| l.runs)
}

async fn wait_for_first_sync(bridge: &Connected, app: &App, connections: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for connection in connections {
        while sync_runs(app, connection).await == 0 {
            assert!(std::time::Instant::now() < deadline, "no first sync of {connection}:\n{}", bridge.server.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn disable_enable_and_delete_a_consented_connection() {
    let bridge = Connected::start(Options::default()).await;
    bridge.consent("second").await;
    let app = bridge.instance();
    // Each consent queued a first sync; wait for both, so none lands in the counts below.
    wait_for_first_sync(&bridge, &app, &["default", "second"]).await;

    let (code, listed) = run(&bridge, &["connection", "list", "--json"]);
    assert_eq!(code, 0, "{listed}");
    let rows: Vec<Value> = listed.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let ids: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["default", "second"], "{listed}");
    assert!(rows.iter().all(|r| r["state"] == "active"), "{listed}");

    // Disable: status says so, the timer's sync skips it, its token is refused.
    let (code, said) = run(&bridge, &["connection", "disable", "default"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("disabled"), "{said}");
    let report = StatusReport::gather(&app).await.unwrap();
    let default = report.connections.iter().find(|c| c.id == "default").unwrap();
    assert_eq!(serde_json::to_value(default.state).unwrap(), "disabled");
    assert_eq!(default.attention.as_deref(), Some("disabled"));
    assert!(report.summary.attention.iter().any(|a| a == "default: disabled"), "{:?}", report.summary.attention);
    let (disabled_runs, second_runs) = (sync_runs(&app, "default").await, sync_runs(&app, "second").await);
    let sync = truecontext_bridge::functions::by_name("sync").unwrap();
    app.timer(sync, TimerInfo::default()).await.unwrap();
    // The tick queues one sync per connection; the queue function runs them.
    let process = truecontext_bridge::functions::by_name("process").unwrap();
    let worker = truecontext_bridge::standalone::QueueWorker::for_function(app.clone(), process);
    while worker.poll_once(app.stores.queues.as_ref()).await.unwrap() > 0 {}
    assert_eq!(sync_runs(&app, "default").await, disabled_runs, "the sync skips a disabled connection");
    assert_eq!(sync_runs(&app, "second").await, second_runs + 1, "and syncs the others");
    let (code, said) = run(&bridge, &["token", "--connection", "default"]);
    assert_eq!(code, 3, "a disabled connection's token is refused: {said}");
    assert!(said.contains("disabled"), "{said}");

    // Enable: back to active, a token is had again.
    let (code, said) = run(&bridge, &["connection", "enable", "default"]);
    assert_eq!(code, 0, "{said}");
    let (code, said) = run(&bridge, &["token", "--connection", "default"]);
    assert_eq!(code, 0, "{said}");

    // Delete: the record, its token set in the secret store, its alerts; the id is free.
    let record = connections::get(&app.stores, "second").await.unwrap().unwrap().value;
    assert!(app.stores.secrets.get(&record.token_set_secret, None).await.unwrap().is_some());
    let (code, said) = run(&bridge, &["connection", "delete", "second"]);
    assert_eq!(code, 0, "{said}");
    assert!(connections::get(&app.stores, "second").await.unwrap().is_none());
    assert!(app.stores.secrets.get(&record.token_set_secret, None).await.unwrap().is_none(), "the token set is gone");
    assert!(app.stores.secrets.versions(&record.token_set_secret).await.unwrap_or_default().is_empty());
    let (code, said) = run(&bridge, &["token", "--connection", "second"]);
    assert_eq!(code, 7, "no such connection any more: {said}");
    let (code, said) = run(&bridge, &["connection", "delete", "second"]);
    assert_eq!(code, 7, "deleting twice says it is not there: {said}");
    let (code, said) = run(&bridge, &["connection", "disable", "../x"]);
    assert_ne!(code, 0, "a bad id is refused: {said}");
    assert!(said.contains("connection id"), "{said}");
}

fn settings(pairs: &[(&str, &str)]) -> Arc<Settings> {
    Arc::new(Settings::load(&RawSettings::from_pairs(pairs.iter().copied())).unwrap())
}

/// A connection with a token set, stored the way a consent stores it.
async fn consented(stores: &Stores, id: &str) -> Connection {
    let tokens = TokenResponse {
        access_token: SecretString::new("access-token-for-the-vault-test"),
        refresh_token: Some(SecretString::new("refresh-token-for-the-vault-test")),
        id_token: None,
        token_type: Some("Bearer".into()),
        expires_in: Duration::from_secs(3600),
        expires_in_assumed: false,
        refresh_in: None,
        scope: None,
    };
    let connection = Connection::new(id, "oidc".into(), "iss|someone".into(), vec![], Utc::now());
    connections::save_consent(stores, connection, &tokens, Duration::from_secs(600), false).await.unwrap();
    connections::get(stores, id).await.unwrap().unwrap().value
}

#[tokio::test]
async fn delete_removes_the_token_set_from_key_vault() {
    let vault = KeyVaultSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut stores = local::open(dir.path(), None).unwrap();
    stores.secrets = Arc::new(vault.store(KeyVaultSim::fast_tuning()));
    let record = consented(&stores, "vaulted").await;
    assert_eq!(vault.live_versions(&record.token_set_secret), 1);
    let app = App::new(settings(&[("OAUTH_PROVIDER", "oidc")]), stores, Mode::Cli);
    let deleted = app.tokens().delete("vaulted").await.unwrap();
    assert!(deleted.secret_existed);
    assert_eq!(vault.live_versions(&record.token_set_secret), 0, "no version of the token set is left live");
    assert!(connections::get(&app.stores, "vaulted").await.unwrap().is_none());
    assert!(app.stores.secrets.get(&record.token_set_secret, None).await.unwrap().is_none());
}

fn verdict(found: &[(dependencies::Dependency, Verdict)], kind: Kind) -> &Verdict {
    &found.iter().find(|(d, _)| d.kind == kind).unwrap_or_else(|| panic!("{kind:?} is not listed: {found:?}")).1
}

fn assert_only_failed(what: &str, found: &[(dependencies::Dependency, Verdict)], failed: &[Kind]) {
    for (d, v) in found {
        assert_eq!(v.is_failure(), failed.contains(&d.kind), "{what}: {:?} {v:?}\n{found:#?}", d.kind);
    }
}

#[tokio::test]
async fn check_online_names_each_dependency_that_is_down() {
    let bridge = Connected::start(Options::default()).await;
    // The consent queued a first sync; wait for it, or it may take the faults injected below.
    let app = bridge.instance();
    wait_for_first_sync(&bridge, &app, &["default"]).await;
    let all_up = dependencies::probe(&app).await;
    assert_only_failed("all up", &all_up, &[]);
    assert!(matches!(verdict(&all_up, Kind::TokenEndpoint), Verdict::Ok(_)), "{all_up:#?}");
    assert!(matches!(verdict(&all_up, Kind::TrueContext), Verdict::Ok(_)), "{all_up:#?}");

    // TrueContext refuses the token, and again after the one refresh it earns.
    for _ in 0..2 {
        bridge.truecontext.fault(Fault::Status { status: 401, code: "AuthenticationFailed", retry_after: None });
    }
    let found = dependencies::probe(&bridge.instance()).await;
    assert_only_failed("TrueContext refusing", &found, &[Kind::TrueContext]);

    // The app's credential is wrong: the token endpoint says so.
    let mut pairs: Vec<(&str, &str)> = bridge.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.push(("OAUTH_CLIENT_SECRET", "a-wrong-secret-0123456789"));
    let wrong = App::new(settings(&pairs), store::open(&bridge.settings().store).unwrap(), Mode::Cli);
    let found = dependencies::probe(&wrong).await;
    assert_only_failed("a wrong client secret", &found, &[Kind::TokenEndpoint]);
    assert!(verdict(&found, Kind::TokenEndpoint).detail().contains("refused"), "{found:#?}");
    assert!(!format!("{found:?}").contains("a-wrong-secret"), "the secret is never printed");

    // The CLI: every setting given, everything up, exit 0; then the authorization server goes
    // down (a fresh instance, nothing cached): exit 1, naming it.
    let webhook = [
        ("WEBHOOK_AUTH", "basic"),
        ("WEBHOOK_BASIC_USERNAME", "tc"),
        ("WEBHOOK_BASIC_PASSWORD", "push-password-0123456789"),
    ];
    let output = bridge.command(&["check", "--online"], &webhook).output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{said}{}", String::from_utf8_lossy(&output.stderr));
    assert!(said.contains("every dependency answered"), "{said}");
    let mut later = bridge.command(&["check", "--online"], &webhook);
    let settings_now = bridge.settings();
    let Connected { provider, server, .. } = bridge;
    drop(provider);
    let app = App::new(settings_now.clone(), store::open(&settings_now.store).unwrap(), Mode::Cli);
    let found = dependencies::probe(&app).await;
    assert!(verdict(&found, Kind::Authority).is_failure(), "{found:#?}");
    assert!(verdict(&found, Kind::TokenEndpoint).is_failure(), "{found:#?}");
    assert!(!verdict(&found, Kind::EmbeddedStore).is_failure(), "{found:#?}");
    let output = later.output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{said}");
    let authority = said.split("- authorization server").nth(1).unwrap_or_else(|| panic!("{said}"));
    assert!(authority.split("- token endpoint").next().unwrap().contains("FAILED"), "{said}");
    drop(server);
}

#[tokio::test]
async fn check_online_names_storage_and_key_vault_when_they_are_down() {
    let azurite = Azurite::start();
    let vault = KeyVaultSim::start().await;
    let sim = TrueContextSim::start();
    let connection = azurite.connection_string();
    let base = sim.base_url();
    let pairs = [
        ("STORE", "azure"),
        ("AzureWebJobsStorage", connection.as_str()),
        ("KEYVAULT_URI", "https://unused.vault.localhost"),
        ("TRUECONTEXT_BASE_URL", base.as_str()),
        ("TRUECONTEXT_AUTH", "basic"),
        ("TRUECONTEXT_API_KEY_ID", KEY_ID),
        ("TRUECONTEXT_API_KEY_SECRET", KEY_SECRET),
    ];
    let settings = settings(&pairs);
    let described = dependencies::describe(&settings);
    let kinds: Vec<Kind> = described.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [Kind::TrueContext, Kind::Tables, Kind::Blobs, Kind::Queues, Kind::KeyVault]);
    assert!(described[1].credential.contains("account key"), "{described:?}");
    assert!(described[1].endpoint.starts_with("http://127.0.0.1:"), "{described:?}");
    assert!(!format!("{described:?}").contains(KEY_SECRET), "no secret in the description");
    let open = || {
        let mut stores = store::open(&settings.store).unwrap();
        stores.secrets = Arc::new(vault.store(KeyVaultSim::fast_tuning()));
        App::new(settings.clone(), stores, Mode::Cli)
    };
    let found = dependencies::probe(&open()).await;
    assert_only_failed("all up", &found, &[]);

    vault.inject(VaultFault::Forbidden, 20);
    let found = dependencies::probe(&open()).await;
    assert_only_failed("Key Vault refusing the identity", &found, &[Kind::KeyVault]);
    vault.clear_faults();

    let app = open();
    drop(azurite);
    let found = dependencies::probe(&app).await;
    // TrueContext's call needs the store too: its daily budget is a row in it.
    assert_only_failed("storage down", &found, &[Kind::TrueContext, Kind::Tables, Kind::Blobs, Kind::Queues]);
}
