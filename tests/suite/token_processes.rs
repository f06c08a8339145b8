//! The token lifecycle across real processes and on the Azure backend: `tcbridge token` run
//! three at a time on one embedded store, a lease holder killed with SIGKILL mid-refresh, three
//! processes (this test binary as workers) and three in-process instances over fifty cycles on
//! Azurite tables with token sets in the Key Vault simulator, and a scan of everything the
//! processes printed for any token they handled.

use crate::harness;
use std::collections::HashSet;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use harness::azurite::Azurite;
use harness::connected::{Connected, Options};
use harness::keyvault::KeyVaultSim;
use serde_json::{json, Value};
use truecontext_bridge::connections::TokenSet;
use truecontext_bridge::connections::{self, Connection};
use truecontext_bridge::handlers::App;
use truecontext_bridge::store::azure::connection::StorageAccount;
use truecontext_bridge::store::azure::tables::AzureTables;
use truecontext_bridge::store::{local, Stores, Table, TypedTable};
use truecontext_bridge::tokens::TokenSource;

fn run_token(bridge: &Connected, args: &[&str]) -> std::thread::JoinHandle<Output> {
    let mut command = bridge.command(&[&["token"], args].concat(), &[("LOG_FORMAT", "json")]);
    std::thread::spawn(move || command.stdin(Stdio::null()).output().expect("run tcbridge token"))
}

fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!("not a JSON report:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

/// Every token value any version of the connection's token set ever held.
async fn every_token(app: &App, id: &str) -> Vec<String> {
    let record = connections::get(&app.stores, id).await.unwrap().unwrap().value;
    let mut values = Vec::new();
    for version in app.stores.secrets.versions(&record.token_set_secret).await.unwrap() {
        let stored = app.stores.secrets.get(&record.token_set_secret, Some(&version)).await.unwrap().unwrap();
        let bundle = TokenSet::from_secret(&stored.value, stored.created).unwrap();
        values.extend(bundle.refresh_token.iter().chain(bundle.access_token.iter()).map(|s| s.expose().to_owned()));
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tcbridge_processes_make_one_call_per_expiry_and_print_no_token() {
    // Eight-second access tokens: refreshed four seconds after issue (half their life, since the
    // margin is longer than that), so every cycle below finds the token due.
    let bridge = Connected::start(Options { access_token_ttl: 8, ..Default::default() }).await;
    let mut printed = String::new();
    // Every process of a cycle starts within the four seconds the new token is good for, even on
    // a loaded machine, so each cycle is one expiry.
    for cycle in 1..=6u64 {
        tokio::time::sleep(Duration::from_millis(4300)).await;
        let outputs: Vec<Output> = (0..3)
            .map(|_| run_token(&bridge, &[]))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let reports: Vec<Value> = outputs.iter().map(report).collect();
        for (output, report) in outputs.iter().zip(&reports) {
            assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
            printed.push_str(&String::from_utf8_lossy(&output.stdout));
            printed.push_str(&String::from_utf8_lossy(&output.stderr));
        }
        let expiries: HashSet<&str> = reports.iter().map(|r| r["expires_at"].as_str().unwrap()).collect();
        assert_eq!(expiries.len(), 1, "all three got the same token: {reports:#?}");
        assert_eq!(reports.iter().filter(|r| r["refreshed"] == true).count(), 1, "{reports:#?}");
        assert_eq!(bridge.refresh_calls().await, cycle, "cycle {cycle}: one token-endpoint call for three processes");
        assert!(reports.iter().all(|r| r["scopes"].as_array().unwrap().contains(&json!("profile"))));
    }
    let calls = bridge.calls("refresh_token").await;
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:#?}");

    // Nothing any process printed, nor the server's log, holds a token it handled.
    let app = bridge.instance();
    let tokens = every_token(&app, "default").await;
    assert!(tokens.len() >= 12, "six refreshes and the consent: {}", tokens.len());
    printed.push_str(&bridge.server.log());
    for token in tokens {
        assert!(!printed.contains(&token), "a token ({}…) was printed", &token[..6.min(token.len())]);
    }
    assert!(!printed.contains(harness::connected::CLIENT_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_refresh_is_outlived_and_the_grant_survives() {
    let bridge = Connected::start(Options {
        settings: vec![("TOKEN_ENDPOINT_TIMEOUT_SECONDS", "10".into()), ("TOKEN_REFRESH_LEASE_SECONDS", "15".into())],
        ..Default::default()
    })
    .await;
    // The token endpoint takes eight seconds to look at the next refresh; the holder dies first.
    bridge.provider.token_faults(vec![json!({ "delay_ms": 8000 })]).await;
    let mut holder =
        bridge.command(&["token", "--force"], &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while bridge.calls("refresh_token").await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "the holder never called the token endpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.kill().unwrap(); // SIGKILL: no cleanup, the lease stays until its TTL
    holder.wait().unwrap();

    let taken_over = Instant::now();
    let output = run_token(&bridge, &["--force"]).join().unwrap();
    let report = report(&output);
    assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(report["refreshed"], true);
    // It waited for the dead holder's lease (15 s from its last renewal) rather than racing it.
    assert!(taken_over.elapsed() >= Duration::from_secs(10), "took over after {:?}", taken_over.elapsed());

    let calls = bridge.calls("refresh_token").await;
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0]["fault"], "abandoned");
    assert_eq!(calls[1]["ok"], true);
    assert_eq!(calls[1]["presented_refresh_token"], calls[0]["presented_refresh_token"]);
    // The grant is intact: the next refresh works with the token the survivor stored.
    let output = run_token(&bridge, &["--force"]).join().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let calls = bridge.calls("refresh_token").await;
    assert_eq!(calls[2]["ok"], true);
    assert_eq!(calls[2]["presented_refresh_token"], calls[1]["issued_refresh_token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_with_the_failure_class() {
    let bridge = Connected::start(Options::default()).await;
    let output = run_token(&bridge, &["--connection", "nobody"]).join().unwrap();
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(report(&output)["error"]["class"], "not_connected");
    let output = run_token(&bridge, &["--connection", "../etc"]).join().unwrap();
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(report(&output)["error"]["class"], "invalid_connection");

    bridge.provider.revoke_grants().await;
    let output = run_token(&bridge, &["--force"]).join().unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(report(&output)["error"]["class"], "needs_reauth");
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs_reauth"));
    // `tcbridge status` says so too, and exits non-zero.
    let status = bridge.command(&["status"], &[]).output().unwrap();
    assert_eq!(status.status.code(), Some(1));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["summary"]["status"], 424);
    assert_eq!(status["connections"][0]["state"], "needs_reauth");
    // And so does the status route.
    let response = harness::client()
        .get(bridge.server.url("/api/status"))
        .header("x-functions-key", harness::TEST_FUNCTION_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 424);
}

/// The connection the server stored locally, copied to Azurite tables and the Key Vault
/// simulator (the consent ran on the embedded store).
async fn copy_connection(bridge: &Connected, tables: &Stores) {
    let local = bridge.instance();
    let mut record: Connection = connections::get(&local.stores, "default").await.unwrap().unwrap().value;
    let stored =
        local.stores.secrets.get(&record.token_set_secret, record.token_set_version.as_deref()).await.unwrap().unwrap();
    record.token_set_version = Some(tables.secrets.set(&record.token_set_secret, &stored.value).await.unwrap());
    TypedTable::new(tables.tables.as_ref(), Table::Connections)
        .insert(connections::PARTITION, "default", &record)
        .await
        .unwrap();
}

/// Worker mode: one process of the Azurite test below, started by it with TOKEN_WORKER set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started by three_processes_on_azurite_and_key_vault_… as a child process"]
async fn token_worker() {
    let Ok(config) = std::env::var("TOKEN_WORKER") else { return };
    let config: Value = serde_json::from_str(&config).unwrap();
    let pairs: Vec<(String, String)> = serde_json::from_value(config["settings"].clone()).unwrap();
    let raw = truecontext_bridge::config::RawSettings::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let settings = Arc::new(truecontext_bridge::config::Settings::load(&raw).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let account = StorageAccount::from_connection_string(config["azurite"].as_str().unwrap()).unwrap();
    let mut stores = local::open(dir.path(), None).unwrap();
    stores.tables = Arc::new(AzureTables::new(&account, None, "tcbtok").unwrap());
    stores.secrets = Arc::new(KeyVaultSim::remote_store(&config["vault"], KeyVaultSim::fast_tuning()));
    let app = App::new(settings, stores, truecontext_bridge::handlers::Mode::Cli);
    let results = join_all((0..7).map(|_| async { app.tokens().access_token("default").await })).await;
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(token) => json!({ "source": token.source, "expires_at": token.expires_at }),
            Err(e) => json!({ "error": e.to_string() }),
        })
        .collect();
    println!("TOKEN-RESULT {}", serde_json::to_string(&results).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_on_azurite_and_key_vault_make_one_call_per_expiry() {
    let azurite = Azurite::start();
    let vault = KeyVaultSim::start().await;
    let bridge = Connected::start(Options { access_token_ttl: 8, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let account = StorageAccount::from_connection_string(&azurite.connection_string()).unwrap();
    let mut stores = local::open(dir.path(), None).unwrap();
    stores.tables = Arc::new(AzureTables::new(&account, None, "tcbtok").unwrap());
    stores.secrets = Arc::new(vault.store(KeyVaultSim::fast_tuning()));
    copy_connection(&bridge, &stores).await;
    let config =
        json!({ "settings": bridge.settings, "azurite": azurite.connection_string(), "vault": vault.remote() });
    let spawn_worker = || {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args(["token_processes::token_worker", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("TOKEN_WORKER", config.to_string())
            .stdin(Stdio::null());
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    // Every process of a cycle starts within the four seconds the new token is good for, even on
    // a loaded machine, so each cycle is one expiry.
    for cycle in 1..=6u64 {
        tokio::time::sleep(Duration::from_millis(4300)).await;
        let workers: Vec<_> = (0..3).map(|_| spawn_worker()).collect();
        let mut results: Vec<Value> = Vec::new();
        for worker in workers {
            let output = worker.await.unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "worker failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
            let line = stdout
                .lines()
                .find_map(|l| l.split_once("TOKEN-RESULT ").map(|(_, rest)| rest))
                .unwrap_or_else(|| panic!("no worker result:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
            results.extend(serde_json::from_str::<Vec<Value>>(line).unwrap());
        }
        assert_eq!(results.len(), 21);
        assert!(results.iter().all(|r| r["error"].is_null()), "cycle {cycle}: {results:#?}");
        let expiries: HashSet<&str> = results.iter().map(|r| r["expires_at"].as_str().unwrap()).collect();
        assert_eq!(expiries.len(), 1, "cycle {cycle}: one token for all: {results:#?}");
        assert_eq!(results.iter().filter(|r| r["source"] == "token_endpoint").count(), 1);
        assert_eq!(bridge.refresh_calls().await, cycle, "cycle {cycle}: one call for three processes");
    }
    let calls = bridge.calls("refresh_token").await;
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_azurite_and_key_vault_make_one_call_per_expiry() {
    let azurite = Azurite::start();
    let vault = KeyVaultSim::start().await;
    let bridge = Connected::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let account = StorageAccount::from_connection_string(&azurite.connection_string()).unwrap();
    let azure_stores = |n: usize| {
        let mut stores = local::open(&dir.path().join(n.to_string()), None).unwrap();
        stores.tables = Arc::new(AzureTables::new(&account, None, "tcbtok").unwrap());
        stores.secrets = Arc::new(vault.store(KeyVaultSim::fast_tuning()));
        stores
    };
    copy_connection(&bridge, &azure_stores(0)).await;
    let instances: Vec<App> = (1..=3).map(|n| bridge.instance_on(azure_stores(n))).collect();
    for cycle in 1..=50u64 {
        bridge.advance(3100);
        let results = harness::connected::concurrent(&instances, 21, "default").await;
        harness::connected::assert_all_same_token(&results);
        assert_eq!(results.iter().filter(|r| r.as_ref().unwrap().source == TokenSource::TokenEndpoint).count(), 1);
        assert_eq!(bridge.refresh_calls().await, cycle, "cycle {cycle}");
    }
    let calls = bridge.calls("refresh_token").await;
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:#?}");
    // One Key Vault write per refresh: the copied version plus fifty.
    let record = connections::get(&instances[0].stores, "default").await.unwrap().unwrap().value;
    assert_eq!(vault.live_versions(&record.token_set_secret), 51);
}

/// A refresher that is slow before it sends (here: a Key Vault read that takes 20 s) gives the
/// refresh lease back after one lease length, so another instance refreshes meanwhile. Kept
/// alive instead, such a holder stopped every refresh for minutes in chaos seed 77, past the
/// provider's reuse grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresher_stuck_before_it_sends_gives_the_lease_back_after_one_lease_length() {
    let vault = KeyVaultSim::start().await;
    let bridge = Connected::start(Options {
        settings: vec![("TOKEN_ENDPOINT_TIMEOUT_SECONDS", "1".into()), ("TOKEN_REFRESH_LEASE_SECONDS", "6".into())],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut stores = local::open(dir.path(), None).unwrap();
    // One try may take as long as the stall below, so the SDK neither cuts nor retries it.
    let patient = truecontext_bridge::store::azure::keyvault::KeyVaultTuning {
        try_timeout: Duration::from_secs(40),
        ..KeyVaultSim::fast_tuning()
    };
    stores.secrets = Arc::new(vault.store(patient));
    copy_connection(&bridge, &stores).await;
    let (stuck, other) = (bridge.instance_on(stores.clone()), bridge.instance_on(stores.clone()));
    bridge.advance(3100);

    // The stuck instance's first read of the refresh token hangs for 20 s.
    vault.inject(harness::keyvault::Fault::Delay(Duration::from_secs(20)), 1);
    let stuck_call = tokio::spawn(async move { stuck.tokens().access_token("default").await.map(|t| t.source) });
    let stuck_holds_the_lease = async {
        let leases = TypedTable::new(stores.tables.as_ref(), Table::Leases);
        let name = format!("token:{}:default", connections::PARTITION);
        while leases.get::<Value>("lease", &name).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    stuck_holds_the_lease.await;

    let token = other.tokens().access_token("default").await.expect("the other instance refreshes meanwhile");
    assert_eq!(token.source, TokenSource::TokenEndpoint);
    match stuck_call.await.unwrap() {
        Err(e @ truecontext_bridge::tokens::TokenError::Stalled { .. }) => {
            assert_eq!(e.class(), "transient");
            assert!(e.to_string().contains("nothing was sent"), "{e}");
        }
        other => panic!("the stuck refresher should have given up before sending, got {other:?}"),
    }
    let calls = bridge.calls("refresh_token").await;
    assert_eq!(calls.len(), 1, "one refresh, by the other instance: {calls:#?}");
    assert_eq!(calls[0]["ok"], true);
}
