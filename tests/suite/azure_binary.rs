//! The shipped binary on `STORE=azure`, all on loopback: Tables, Blobs and Queues in Azurite,
//! the token set in the Key Vault simulator reached with a managed identity from the
//! App Service identity endpoint stand-in, the simulator's test CA trusted through
//! `TLS_EXTRA_CA_FILE`. The same connect → token → sync → webhook flow the embedded store
//! passes, and `check` refusing the extra CA for endpoints that are not on this machine.

use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{TimeDelta, Utc};
use serde_json::Value;

use crate::harness::connected::{Connected, Options};
use crate::harness::{client, command};

const PUSH_PASSWORD: &str = "azure-binary-push-password-0123456789";

async fn wait_for_landed(bridge: &Connected, at_least: usize) -> Vec<String> {
    let app = bridge.instance();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let landed = truecontext_bridge::landing::list(&app.stores, "default").await.unwrap();
        if landed.len() >= at_least {
            let mut ids: Vec<String> = landed.into_iter().map(|l| l.id).collect();
            ids.sort();
            return ids;
        }
        assert!(Instant::now() < deadline, "{} of {at_least} landed:\n{}", landed.len(), bridge.server.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_on_azure_storage_and_key_vault_connects_refreshes_syncs_and_takes_pushes() {
    let bridge = Connected::start(Options {
        consent: false,
        azure: true,
        settings: vec![
            ("SYNC_SETTLE_SECONDS", "0".into()),
            ("SYNC_BACKFILL_DAYS", "30".into()),
            ("WEBHOOK_AUTH", "basic".into()),
            ("WEBHOOK_BASIC_USERNAME", "tc".into()),
            ("WEBHOOK_BASIC_PASSWORD", PUSH_PASSWORD.into()),
            ("QUEUE_RETRY_DELAY_SECONDS", "0".into()),
        ],
        ..Default::default()
    })
    .await;
    let azure = bridge.azure.as_ref().unwrap();
    let sim = &bridge.truecontext;
    let mut ids = sim.add_records(12, "form-1", Utc::now() - TimeDelta::days(2));

    // Connect: the token set goes to Key Vault, through the managed identity.
    bridge.consent("default").await;
    let app = bridge.instance();
    let record =
        truecontext_bridge::connections::get(&app.stores, "default").await.unwrap().expect("stored in Azure Tables");
    assert_eq!(azure.vault.live_versions(&record.value.token_set_secret), 1, "one token set in the vault");
    assert!(azure.identity.served() >= 1, "the vault was reached with a managed-identity token");
    assert_eq!(azure.identity.refused(), 0);

    // The first sync the consent queued lands on Azure (Queue → Blob + Table).
    assert_eq!(wait_for_landed(&bridge, 12).await, ids);

    // A fresh token through the CLI: another process, its own identity token.
    let served = azure.identity.served();
    let output = bridge.command(&["token", "--force"], &[]).output().unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(azure.identity.served() > served, "the CLI took its own identity token");
    assert_eq!(azure.vault.live_versions(&record.value.token_set_secret), 2, "the rotated set is a new version");

    // A sync from the CLI.
    ids.extend(sim.add_records(3, "form-1", Utc::now()));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let output = bridge.command(&["sync", "--once", "--json"], &[]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["documents_landed"], 3, "{summary}");

    // A push: accepted onto the Azure queue, processed by the server's worker, landed.
    let pushed = sim.add_records(1, "form-2", Utc::now()).remove(0);
    let document = sim.record(&pushed).unwrap().document;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("tc:{PUSH_PASSWORD}"));
    let response = client()
        .post(bridge.server.url("/api/webhook"))
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/json")
        .body(document)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    ids.push(pushed);
    ids.sort();
    assert_eq!(wait_for_landed(&bridge, ids.len()).await, ids);

    // Nothing secret in the server's log: not the vault's token, not the identity header.
    let log = bridge.server.log();
    for secret in [azure.vault.token(), azure.identity.header.as_str(), PUSH_PASSWORD] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[test]
fn check_refuses_an_extra_ca_for_endpoints_not_on_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let pem = rcgen::generate_simple_self_signed(vec!["x.localhost".into()]).unwrap().cert.pem();
    std::fs::write(&ca, pem).unwrap();
    let ca = ca.display().to_string();
    let run = |pairs: &[(&str, &str)]| {
        let output = command(dir.path(), pairs).arg("check").output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let local = [
        ("STORE", "azure"),
        ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
        ("KEYVAULT_URI", "https://tcb.vault.localhost:8443"),
        ("TLS_EXTRA_CA_FILE", ca.as_str()),
        ("IDENTITY_ENDPOINT", "http://127.0.0.1:8081/msi/token"),
    ];
    let (_, said) = run(&local);
    assert!(!said.contains("TLS_EXTRA_CA_FILE"), "all endpoints local: the extra CA is fine:\n{said}");

    let mut cloud_vault = local;
    cloud_vault[2] = ("KEYVAULT_URI", "https://real.vault.azure.net");
    let (code, said) = run(&cloud_vault);
    assert_ne!(code, Some(0));
    assert!(said.contains("TLS_EXTRA_CA_FILE") && said.contains("KEYVAULT_URI"), "{said}");

    let mut cloud_storage = local;
    cloud_storage[1] = (
        "AzureWebJobsStorage",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
    );
    let (code, said) = run(&cloud_storage);
    assert_ne!(code, Some(0));
    assert!(said.contains("TLS_EXTRA_CA_FILE") && said.contains("AzureWebJobsStorage"), "{said}");

    let mut remote_identity = local;
    remote_identity[4] = ("IDENTITY_ENDPOINT", "http://169.254.169.254/msi/token");
    let (code, said) = run(&remote_identity);
    assert_ne!(code, Some(0));
    assert!(said.contains("IDENTITY_ENDPOINT"), "{said}");

    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let not_pem = not_pem.display().to_string();
    let mut bad_file = local;
    bad_file[3] = ("TLS_EXTRA_CA_FILE", not_pem.as_str());
    let (code, said) = run(&bad_file);
    assert_ne!(code, Some(0));
    assert!(said.contains("no PEM certificate"), "{said}");
    let mut missing = local;
    missing[3] = ("TLS_EXTRA_CA_FILE", "/nonexistent/ca.pem");
    let (code, said) = run(&missing);
    assert_ne!(code, Some(0));
    assert!(said.contains("cannot read"), "{said}");
}
