//! The storage conformance suite's secret checks against Key Vault, through the real
//! `azure_security_keyvault_secrets` SDK and the Key Vault simulator (tests/suite/harness/keyvault.rs),
//! plus retries, error messages, the read cache and soft delete.

use crate::{common, harness};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use common::conformance as c;
use harness::keyvault::{Fault, KeyVaultSim, TestCredential, RESOURCE};
use truecontext_bridge::secret::SecretString;
use truecontext_bridge::store::azure::keyvault::{KeyVaultSecrets, KeyVaultTuning};
use truecontext_bridge::store::{local, SecretStore, StoreError, Stores};

/// Secrets in the simulated vault; the other primitives from an embedded store (they have
/// their own suites).
fn stores(sim: &KeyVaultSim, dir: &std::path::Path) -> Stores {
    let mut stores = local::open(dir, None).unwrap();
    stores.secrets = Arc::new(sim.store(KeyVaultSim::fast_tuning()));
    stores
}

fn name(prefix: &str) -> String {
    c::unique(prefix)
}

fn backend_message(result: Result<impl std::fmt::Debug, StoreError>) -> (String, String) {
    match result {
        Err(e @ StoreError::Backend(_)) => (e.to_string(), format!("{e:?}")),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_pass_the_conformance_suite_through_the_sdk() {
    let sim = KeyVaultSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = stores(&sim, dir.path());
    c::secrets_all(&s).await;

    // The SDK performed the challenge flow once and asked for the challenge's scope.
    let credential = sim.credential();
    assert!(sim.challenges() >= 1, "the SDK must have been challenged");
    assert!(credential.calls() >= 1);
    assert!(
        credential.scopes().iter().all(|s| s == &format!("{RESOURCE}/.default")),
        "token scopes: {:?}",
        credential.scopes()
    );
    // Version lists were paged (page size 2 in the simulator, four versions in the suite).
    assert!(sim.requests().iter().any(|r| r.path.ends_with("/versions")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_after_retry_after() {
    let sim = KeyVaultSim::start().await;
    let store = sim.store(KeyVaultSim::fast_tuning());
    let secret = name("throttle-");
    let v1 = store.set(&secret, &SecretString::new("one")).await.unwrap();

    sim.inject(Fault::Throttle { retry_after_secs: 1 }, 2);
    let started = Instant::now();
    let got = store.get(&secret, Some(&v1)).await.expect("get after two 429s").expect("the version");
    assert_eq!(got.value.expose(), "one");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "two Retry-After: 1 must wait two seconds, waited {elapsed:?}");
    assert_eq!(sim.count("GET", &format!("/secrets/{secret}/{v1}")), 3, "two 429s and the success");

    // A write is retried the same way: one 429, then one new version only.
    sim.inject(Fault::Throttle { retry_after_secs: 1 }, 1);
    store.set(&secret, &SecretString::new("two")).await.expect("set after a 429");
    assert_eq!(sim.live_versions(&secret), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_and_hung_answers_are_retried() {
    let sim = KeyVaultSim::start().await;
    let store = sim.store(KeyVaultSim::fast_tuning());
    let secret = name("flaky-");
    let v1 = store.set(&secret, &SecretString::new("value")).await.unwrap();
    let path = format!("/secrets/{secret}/{v1}");

    sim.inject(Fault::Unavailable, 2);
    assert_eq!(store.get(&secret, Some(&v1)).await.unwrap().unwrap().value.expose(), "value");
    assert_eq!(sim.count("GET", &path), 3);

    // Longer than the 2 s per-try timeout: the try is abandoned and retried.
    sim.inject(Fault::Delay(Duration::from_secs(10)), 1);
    let started = Instant::now();
    assert_eq!(store.get(&secret, Some(&v1)).await.unwrap().unwrap().value.expose(), "value");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "the hung try lasts until the timeout, took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "the hung try must be cut at the timeout, took {elapsed:?}");
    assert_eq!(sim.count("GET", &path), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded() {
    let sim = KeyVaultSim::start().await;
    let store = sim.store(KeyVaultSim::fast_tuning());
    let secret = name("bounded-");
    let v1 = store.set(&secret, &SecretString::new("value")).await.unwrap();

    sim.inject(Fault::Throttle { retry_after_secs: 0 }, 10);
    let (message, _) = backend_message(store.get(&secret, Some(&v1)).await);
    assert!(message.contains("throttling"), "{message}");
    assert!(message.contains("429"), "{message}");
    let tries = KeyVaultSim::fast_tuning().max_retries as usize + 1;
    assert_eq!(sim.count("GET", &format!("/secrets/{secret}/{v1}")), tries, "first try plus max_retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_names_the_missing_role_assignment() {
    let sim = KeyVaultSim::start().await;
    let store = sim
        .store(KeyVaultSim::fast_tuning())
        .with_identity_hint("the user-assigned managed identity with client id 0000-test (AZURE_CLIENT_ID)");
    let secret = name("denied-");

    sim.inject(Fault::Forbidden, 1);
    let (message, _) = backend_message(store.set(&secret, &SecretString::new("value")).await);
    assert!(message.contains("Key Vault Secrets Officer on vault tcbtest"), "{message}");
    assert!(message.contains("client id 0000-test"), "the identity must be named: {message}");
    assert!(message.contains("ForbiddenByRbac"), "{message}");
    assert_eq!(sim.count("PUT", &format!("/secrets/{secret}")), 1, "a 403 is not retried");
    assert_eq!(sim.live_versions(&secret), 0, "nothing was written");

    sim.inject(Fault::Forbidden, 1);
    let (message, _) = backend_message(store.versions(&secret).await);
    assert!(message.contains("Key Vault Secrets Officer on vault tcbtest"), "{message}");
    assert!(message.contains("list the versions of"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_appear_in_errors() {
    let sim = KeyVaultSim::start().await;
    let store = sim.store(KeyVaultSim::fast_tuning());
    let value = SecretString::new("refresh-token-DO-NOT-LEAK-0123456789");
    let leaks = |text: &str| text.contains("DO-NOT-LEAK");
    let secret = name("leak-");

    let mut messages = Vec::new();
    sim.inject(Fault::Forbidden, 1);
    messages.push(backend_message(store.set(&secret, &value).await));
    sim.inject(Fault::Throttle { retry_after_secs: 0 }, 10);
    messages.push(backend_message(store.set(&secret, &value).await));
    sim.clear_faults();
    sim.inject(Fault::Unavailable, 10);
    messages.push(backend_message(store.set(&secret, &value).await));
    sim.clear_faults();

    store.set(&secret, &value).await.unwrap();
    sim.inject(Fault::Forbidden, 1);
    messages.push(backend_message(store.get(&secret, None).await));
    sim.inject(Fault::Unavailable, 10);
    messages.push(backend_message(store.delete(&secret).await));
    sim.clear_faults();

    // A credential the vault does not accept: 401.
    let wrong = KeyVaultSecrets::with_tuning(
        &sim.vault_url,
        Arc::new(TestCredential::new("not-the-token")),
        Some(sim.client_options()),
        KeyVaultSim::fast_tuning(),
    )
    .unwrap();
    let unauthorized = backend_message(wrong.set(&secret, &value).await);
    assert!(unauthorized.0.contains("401") && unauthorized.0.contains("credential"), "{}", unauthorized.0);
    messages.push(unauthorized);
    messages.push(backend_message(wrong.get(&secret, None).await));

    for (display, debug) in &messages {
        assert!(!leaks(display) && !leaks(debug), "a secret value leaked into an error: {display} / {debug}");
    }
    // And the successful read still has the value: the check above is not vacuous.
    assert!(leaks(store.get(&secret, None).await.unwrap().unwrap().value.expose()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_reads_are_cached_and_own_writes_invalidate_the_cache() {
    let sim = KeyVaultSim::start().await;
    let store = sim.store(KeyVaultSim::fast_tuning());
    let secret = name("cached-");
    let latest_reads = || sim.count("GET", &format!("/secrets/{secret}/"));

    store.set(&secret, &SecretString::new("v1")).await.unwrap();
    assert_eq!(store.get(&secret, None).await.unwrap().unwrap().value.expose(), "v1");
    assert_eq!(latest_reads(), 1);
    for _ in 0..5 {
        assert_eq!(store.get(&secret, None).await.unwrap().unwrap().value.expose(), "v1");
    }
    assert_eq!(latest_reads(), 1, "repeated reads must come from the cache");

    // Our own set invalidates.
    store.set(&secret, &SecretString::new("v2")).await.unwrap();
    assert_eq!(store.get(&secret, None).await.unwrap().unwrap().value.expose(), "v2");
    assert_eq!(latest_reads(), 2);
    store.get(&secret, None).await.unwrap();
    assert_eq!(latest_reads(), 2);

    // Our own delete invalidates.
    store.delete(&secret).await.unwrap();
    assert!(store.get(&secret, None).await.unwrap().is_none());
    assert_eq!(latest_reads(), 3);

    // Another instance's write shows once the TTL has passed.
    let short = sim.store(KeyVaultTuning { cache_ttl: Duration::from_secs(3), ..KeyVaultSim::fast_tuning() });
    let other = sim.store(KeyVaultSim::fast_tuning());
    let shared_secret = name("shared-");
    other.set(&shared_secret, &SecretString::new("a")).await.unwrap();
    assert_eq!(short.get(&shared_secret, None).await.unwrap().unwrap().value.expose(), "a");
    other.set(&shared_secret, &SecretString::new("b")).await.unwrap();
    assert_eq!(short.get(&shared_secret, None).await.unwrap().unwrap().value.expose(), "a", "still cached");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(short.get(&shared_secret, None).await.unwrap().unwrap().value.expose(), "b", "after the TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_stays_readable_after_a_newer_one() {
    let sim = KeyVaultSim::start().await;
    let store = sim.store(KeyVaultSim::fast_tuning());
    let secret = name("rotate-");
    let old = store.set(&secret, &SecretString::new("old-token")).await.unwrap();
    let new = store.set(&secret, &SecretString::new("new-token")).await.unwrap();
    assert_ne!(old, new);

    let got_old = store.get(&secret, Some(&old)).await.unwrap().expect("old version");
    assert_eq!((got_old.version.as_str(), got_old.value.expose()), (old.as_str(), "old-token"));
    let latest = store.get(&secret, None).await.unwrap().unwrap();
    assert_eq!((latest.version.as_str(), latest.value.expose()), (new.as_str(), "new-token"));
    assert_eq!(store.versions(&secret).await.unwrap(), vec![old, new], "oldest first");
    // A version id that cannot exist in Key Vault names nothing, and never reaches the URL.
    assert!(store.get(&secret, Some("../../deletedsecrets/x")).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_purges_and_a_name_soft_deleted_elsewhere_is_reused() {
    let sim = KeyVaultSim::start().await;
    let store = sim.store(KeyVaultSim::fast_tuning());

    // Our delete waits for the asynchronous soft delete, then purges.
    let secret = name("purged-");
    store.set(&secret, &SecretString::new("x")).await.unwrap();
    store.delete(&secret).await.unwrap();
    assert!(!sim.is_soft_deleted(&secret), "delete must purge the soft-deleted secret");
    assert_eq!(sim.count("DELETE", &format!("/deletedsecrets/{secret}")), 1);

    // Someone deletes in the portal (soft delete, no purge): the name is taken until purged.
    let other = name("portal-");
    store.set(&other, &SecretString::new("before")).await.unwrap();
    let client = SecretClient::new(
        &sim.vault_url,
        sim.credential(),
        Some(SecretClientOptions { client_options: sim.client_options(), ..Default::default() }),
    )
    .unwrap();
    client.delete_secret(&other, None).await.unwrap();
    assert!(sim.is_soft_deleted(&other));
    assert!(store.get(&other, None).await.unwrap().is_none(), "a soft-deleted secret is gone for the store");
    assert!(store.versions(&other).await.unwrap().is_empty());

    let v = store.set(&other, &SecretString::new("after")).await.expect("set purges the soft-deleted name");
    assert_eq!(store.versions(&other).await.unwrap(), vec![v], "only the new version exists");
    assert_eq!(store.get(&other, None).await.unwrap().unwrap().value.expose(), "after");
}
