//! Chaos, end to end: three `tcbridge` processes on `STORE=azure`, two `serve --standalone` and
//! one `serve` behind a stand-in for the Functions host (Azurite
//! on disk, the Key Vault simulator through the identity endpoint stand-in), one connection
//! consented for real at node-oidc-provider (rotating refresh tokens, the grant revoked when a
//! used one comes back after a 60 s grace period; access tokens live 4 s), the TrueContext
//! simulator as the ground truth. A seeded driver mixes webhook deliveries (duplicates, stale versions, edits), new and
//! re-processed submissions, the instances' own timer syncs, and faults: 429 / 503 / hangs /
//! malformed bodies from TrueContext, 503s and hangs from the token endpoint, throttling, 503s
//! and slowness from Key Vault, 500s from the identity endpoint, Azurite stopped and
//! restarted, and `kill -9` of instances with a restart in the same place.
//!
//! Afterwards, against the simulator's truth: every submission landed once with its latest
//! content; every acknowledged delivery landed; one landed event per real change; the grant is
//! alive and no refresh token was presented twice; TrueContext never saw more than 3 calls at
//! once nor more than the budget; no secret in any log. The figures are printed as one JSON
//! line (`chaos figures: {...}`) for docs/RELIABILITY.md.
//!
//! `chaos::quick` runs in CI (a few minutes); `bash scripts/chaos.sh --seed N` runs the full
//! size (`CHAOS_SEED`, `CHAOS_SCALE=full`) through the ignored `chaos::full`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::harness::connected::{AzureBackend, Connected, Options, CLIENT_SECRET};
use crate::harness::keyvault::Fault as VaultFault;
use crate::harness::oidc::OidcProvider;
use crate::harness::truecontext::{Fault as TcFault, TrueContextSim};
use crate::harness::{client, free_port, host, Server};

const PUSH_PASSWORD: &str = "chaos-push-password-0123456789";
const BUDGET: u64 = 50_000;

struct Scale {
    submissions: usize,
    deliveries: usize,
    /// At least this many `kill -9`s (the driver goes on delivering until the monkey made them).
    kills: usize,
    /// The monkey's pause between two blows, in milliseconds.
    pause_ms: std::ops::Range<u64>,
}

const QUICK: Scale = Scale { submissions: 120, deliveries: 300, kills: 6, pause_ms: 200..1200 };
const FULL: Scale = Scale { submissions: 2_000, deliveries: 5_000, kills: 100, pause_ms: 1_000..5_000 };

#[derive(Default, Debug, serde::Serialize)]
struct Figures {
    seed: u64,
    submissions_created: usize,
    edits: usize,
    deliveries: usize,
    deliveries_through_host: usize,
    host_messages_processed: usize,
    deliveries_acknowledged: usize,
    deliveries_refused: usize,
    deliveries_failed_in_transit: usize,
    duplicates_sent: usize,
    stale_versions_sent: usize,
    faults: BTreeMap<String, usize>,
    /// Draws skipped because that dependency still had a fault queued (see `inject_fault`).
    faults_not_injected_one_pending: usize,
    /// Injected faults no request had taken when the run went quiet.
    faults_left_unused: usize,
    kills: usize,
    azurite_restarts: usize,
    submissions_verified: usize,
    losses: usize,
    duplicates_landed: usize,
    stale_content: usize,
    landed_events: usize,
    landed_event_duplicates: usize,
    access_token_expiries: u64,
    token_endpoint_refreshes: u64,
    refresh_tokens_burnt: usize,
    refresh_tokens_reused_within_grace: usize,
    truecontext_calls: usize,
    truecontext_max_in_flight: u32,
    sync_runs_recorded: u64,
    driver_seconds: u64,
    seconds: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quick() {
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    run(seed, &QUICK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the full size: bash scripts/chaos.sh --seed N"]
async fn full() {
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    run(seed, &FULL).await;
}

/// The provider's grace period for a just-rotated refresh token.
const REUSE_GRACE_SECONDS: u64 = 60;

fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("SYNC_SCHEDULE", "*/15 * * * * *".into()),
        ("SYNC_SETTLE_SECONDS", "0".into()),
        ("SYNC_BACKFILL_DAYS", "30".into()),
        ("WEBHOOK_AUTH", "basic".into()),
        ("WEBHOOK_BASIC_USERNAME", "tc".into()),
        ("WEBHOOK_BASIC_PASSWORD", PUSH_PASSWORD.into()),
        ("WEBHOOK_RECOVERY_SECONDS", "2".into()),
        ("QUEUE_RETRY_DELAY_SECONDS", "0".into()),
        ("QUEUE_MAX_DEQUEUE_COUNT", "50".into()),
        // A message a killed instance had taken comes back after this (300 s by default).
        ("QUEUE_VISIBILITY_TIMEOUT_SECONDS", "15".into()),
        ("TRUECONTEXT_TIMEOUT_SECONDS", "3".into()),
        // A refresher killed mid-refresh holds the connection's refresh lease until it lapses;
        // 10 s (the least the 5 s endpoint timeout allows) keeps that inside the provider's
        // reuse grace period below, as it must be for the grace to save the grant.
        ("TOKEN_ENDPOINT_TIMEOUT_SECONDS", "5".into()),
        ("TOKEN_REFRESH_LEASE_SECONDS", "10".into()),
        ("TRUECONTEXT_DAILY_CALL_BUDGET", BUDGET.to_string()),
        ("LOG_FORMAT", "json".into()),
    ]
}

struct Fleet {
    /// Instances 1 and 2; instance 0 is the one `Connected` started (and consented through).
    /// Instance 2 is `tcbridge serve` behind the host stand-in ([`host_stand_in`]).
    extra: Vec<Server>,
    args: Vec<Vec<String>>,
    settings: Vec<Vec<(String, String)>>,
}

/// The instance behind the host stand-in.
const HOST: usize = 2;

impl Fleet {
    fn url(&self, bridge: &Connected, i: usize) -> String {
        if i == 0 {
            bridge.server.url("")
        } else {
            self.extra[i - 1].url("")
        }
    }
}

fn pairs(settings: &[(String, String)]) -> Vec<(&str, &str)> {
    settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

async fn run(seed: u64, scale: &Scale) {
    let started = Instant::now();
    let mut bridge =
        Connected::start(Options { access_token_ttl: 4, azure: true, consent: true, settings: settings() }).await;
    // Rotation with reuse revocation, and a 60 s grace period for the token just rotated (as
    // Amazon Cognito, Ory Hydra and Curity offer; Entra does not revoke on reuse at all).
    // Without one, a kill between the provider's rotation and the new set's write loses the
    // grant whatever the client does: seeds 11 and 44 did that (docs/RELIABILITY.md).
    bridge.provider.reuse_grace(REUSE_GRACE_SECONDS).await;
    let owned = bridge.settings.clone();
    let mut fleet =
        Fleet { extra: Vec::new(), args: vec![standalone_args(bridge.server.port)], settings: vec![owned.clone()] };
    for i in 1..3 {
        let port = free_port();
        let (args, mut instance) =
            if i == HOST { (vec!["serve".to_owned()], owned.clone()) } else { (standalone_args(port), owned.clone()) };
        if i == HOST {
            instance.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        fleet.extra.push(Server::start(&argv, port, &pairs(&instance)));
        fleet.args.push(args);
        fleet.settings.push(instance);
    }
    let urls: Vec<String> = (0..3).map(|i| fleet.url(&bridge, i)).collect();
    // The host stand-in reads the incoming queue as the Functions host's queue trigger does.
    let host_app = bridge.instance();

    // Two actors at once: the driver (deliveries, changes in TrueContext, faults) on the
    // runtime, and the monkey (kill -9 and restart, Azurite stopped and started) on a thread of
    // its own, so kills and outages land in the middle of whatever is in flight.
    let done = AtomicBool::new(false);
    let kills = AtomicUsize::new(0);
    let restarts = AtomicUsize::new(0);
    // When each kill and outage began (Unix ms), to set beside the token endpoint's log when a
    // grant is lost.
    let incidents = std::sync::Mutex::new(Vec::<(i64, String)>::new());
    let driven = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let server0 = &mut bridge.server;
            let extra = &mut fleet.extra;
            let (args, instance_settings) = (&fleet.args, &fleet.settings);
            let azure = bridge.azure.as_ref().unwrap();
            let (done, kills, restarts, incidents) = (&done, &kills, &restarts, &incidents);
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed ^ 0x6d6f_6e6b_6579);
                let mut servers: Vec<&mut Server> = std::iter::once(server0).chain(extra.iter_mut()).collect();
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(rng.gen_range(scale.pause_ms.clone())));
                    if rng.gen_bool(0.04) && restarts.load(Ordering::SeqCst) < 12 {
                        let mut azurite = azure.azurite.lock().unwrap();
                        incidents.lock().unwrap().push((Utc::now().timestamp_millis(), "azurite stopped".into()));
                        azurite.stop();
                        std::thread::sleep(Duration::from_millis(rng.gen_range(300..2500)));
                        azurite.restart();
                        restarts.fetch_add(1, Ordering::SeqCst);
                    } else {
                        let victim = rng.gen_range(0..servers.len());
                        let argv: Vec<&str> = args[victim].iter().map(String::as_str).collect();
                        incidents
                            .lock()
                            .unwrap()
                            .push((Utc::now().timestamp_millis(), format!("kill -9 of instance {victim}")));
                        servers[victim].kill_and_restart(&argv, &pairs(&instance_settings[victim]));
                        kills.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            let driver = drive(seed, scale, &bridge.truecontext, &bridge.provider, azure, &urls, kills);
            let stand_in = host_stand_in(&host_app, &urls[HOST], done);
            let outcome = tokio::runtime::Handle::current().block_on(async {
                let (outcome, processed) = tokio::join!(
                    async {
                        let outcome = driver.await;
                        done.store(true, Ordering::SeqCst);
                        outcome
                    },
                    stand_in
                );
                Driven { figures: Figures { host_messages_processed: processed, ..outcome.figures }, ..outcome }
            });
            done.store(true, Ordering::SeqCst);
            outcome
        })
    });
    let mut figures = Figures { seed, ..driven.figures };
    figures.driver_seconds = started.elapsed().as_secs();
    let acknowledged = driven.acknowledged;
    figures.kills = kills.load(Ordering::SeqCst);
    figures.azurite_restarts = restarts.load(Ordering::SeqCst);
    *figures.faults.entry("azurite stopped".into()).or_default() += figures.azurite_restarts;
    *figures.faults.entry("instance killed (kill -9)".into()).or_default() += figures.kills;

    // Quiet: no more faults; let the instances drain what they accepted and sync what is left.
    let sim = &bridge.truecontext;
    figures.faults_left_unused = clear_faults(&bridge.provider, bridge.azure.as_ref().unwrap(), sim).await;
    let app = bridge.instance();
    let incidents = incidents.into_inner().unwrap();
    settle(&bridge, &fleet, &app, &incidents).await;
    final_sync(&bridge).await;
    settle(&bridge, &fleet, &app, &incidents).await;

    figures.seconds = started.elapsed().as_secs();
    // Access tokens live 4 s: how many lifetimes the run spanned.
    figures.access_token_expiries = figures.seconds / 4;
    // Kept before verifying, whose checks panic: a failed run keeps what led to it too.
    println!("{}", keep_evidence(&bridge, &fleet, &incidents).await);
    verify(&mut figures, &bridge, &fleet, &app, sim, &acknowledged).await;
    println!("chaos figures: {}", serde_json::to_string(&figures).unwrap());
    assert_eq!(figures.losses, 0, "{figures:#?}");
    assert_eq!(figures.duplicates_landed, 0, "{figures:#?}");
    assert_eq!(figures.stale_content, 0, "{figures:#?}");
    assert_eq!(figures.refresh_tokens_burnt, 0, "{figures:#?}\n{}", grant_story(&bridge.provider, &incidents).await);
}

/// Every instance's logs (all of its lives), the token endpoint's and the vault's request logs and
/// the kills and outages into `target/chaos-evidence/`: the run's temporary directories go when
/// the test ends.
async fn keep_evidence(bridge: &Connected, fleet: &Fleet, incidents: &[(i64, String)]) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chaos-evidence");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let servers = std::iter::once(&bridge.server).chain(fleet.extra.iter());
    for (i, server) in servers.enumerate() {
        std::fs::write(dir.join(format!("instance-{i}.log")), server.all_logs()).unwrap();
    }
    let requests = serde_json::to_string_pretty(&bridge.provider.token_request_log().await).unwrap();
    std::fs::write(dir.join("token-requests.json"), requests).unwrap();
    if let Some(azure) = &bridge.azure {
        let vault: Vec<String> = azure
            .vault
            .requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r.at_ms,
                    r.method,
                    r.path,
                    r.fault.as_ref().map(|f| format!("{f:?}")).unwrap_or_default()
                )
            })
            .collect();
        std::fs::write(dir.join("vault-requests.txt"), vault.join("\n")).unwrap();
    }
    let incidents: Vec<String> = incidents.iter().map(|(at, what)| format!("{at} {what}")).collect();
    std::fs::write(dir.join("incidents.txt"), incidents.join("\n")).unwrap();
    format!("evidence kept in {}", dir.display())
}

/// What led up to the first refresh the provider refused with `invalid_grant` (a refresh token
/// presented again): every refresh-token request of the 30 s before it, beside the kills and
/// outages of that time. Refresh tokens appear as the provider logs them (sha256 prefixes).
async fn grant_story(provider: &OidcProvider, incidents: &[(i64, String)]) -> String {
    let log = provider.token_request_log().await;
    let refreshes: Vec<&Value> = log.iter().filter(|c| c["grant_type"] == "refresh_token").collect();
    let Some(refused) = refreshes.iter().find(|c| c["error"] == "invalid_grant" && c["fault"].is_null()) else {
        return "the provider refused no refresh with invalid_grant".into();
    };
    let until = refused["at"].as_i64().unwrap_or(0);
    let from = until - 30_000;
    let mut lines: Vec<(i64, String)> = refreshes
        .iter()
        .filter_map(|c| {
            let at = c["at"].as_i64()?;
            (from..=until).contains(&at).then(|| {
                let said = format!(
                    "refresh presented {} issued {} status {} fault {} error {}",
                    c["presented_refresh_token"], c["issued_refresh_token"], c["status"], c["fault"], c["error"]
                );
                (at, said)
            })
        })
        .collect();
    lines.extend(incidents.iter().filter(|(at, _)| (from..=until).contains(at)).cloned());
    lines.sort();
    let story: Vec<String> = lines.iter().map(|(at, said)| format!("{:>6} ms  {said}", at - until)).collect();
    let rotation = rotation_story(&refreshes, refused, incidents);
    format!("before the first invalid_grant:\n{}\n{rotation}", story.join("\n"))
}

/// Where the refused refresh token was spent: the earlier request that presented it and was
/// answered 200, whether what that answer issued was ever presented, and the kills and outages
/// of the 10 s after it. A kill there, before the new token set reached the secret store, loses
/// the grant against a server that revokes it on reuse: no client can keep a token it was
/// killed before writing down.
fn rotation_story(refreshes: &[&Value], refused: &Value, incidents: &[(i64, String)]) -> String {
    let presented = &refused["presented_refresh_token"];
    let Some(spent) = refreshes.iter().find(|c| &c["presented_refresh_token"] == presented && c["ok"] == true) else {
        return format!("{presented} was never answered 200 before: it was not spent by a rotation we saw");
    };
    let at = spent["at"].as_i64().unwrap_or(0);
    let issued = &spent["issued_refresh_token"];
    let used_later = refreshes.iter().any(|c| &c["presented_refresh_token"] == issued);
    let after: Vec<String> = incidents
        .iter()
        .filter(|(when, _)| (at..=at + 10_000).contains(when))
        .map(|(when, what)| format!("  +{} ms  {what}", when - at))
        .collect();
    format!(
        "{presented} was spent by a refresh that arrived {} ms before the refused one (fault {}), \
         answered 200 issuing {issued}, which was {}presented afterwards; in the 10 s after it:\n{}",
        refused["at"].as_i64().unwrap_or(0) - at,
        spent["fault"],
        if used_later { "" } else { "never " },
        if after.is_empty() { "  nothing".to_string() } else { after.join("\n") }
    )
}

/// Posts an envelope to the host-mode instance; its reply, or `Err` when it did not answer
/// (killed) or answered with an error.
async fn invoke_host(http: &reqwest::Client, base: &str, function: &str, envelope: &Value) -> Result<Value, ()> {
    let response = http
        .post(format!("{base}/{function}"))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", host::guid())
        .timeout(Duration::from_secs(60))
        .body(envelope.to_string())
        .send()
        .await
        .map_err(|_| ())?;
    if !response.status().is_success() {
        return Err(());
    }
    response.json::<Value>().await.map_err(|_| ())
}

/// What the Functions host does for the host-mode instance, as its triggers would: the timer
/// every 15 s, and the queue trigger on the incoming queue (a message is deleted once `process`
/// answers 200, comes back after its visibility timeout otherwise, and goes to the poison queue
/// after `QUEUE_MAX_DEQUEUE_COUNT` deliveries). It competes for messages with the standalone
/// instances' own workers, as instances do.
async fn host_stand_in(app: &truecontext_bridge::handlers::App, base: &str, done: &AtomicBool) -> usize {
    let http = client();
    let incoming = app.settings.queues.incoming.clone();
    let poison = format!("{incoming}-poison");
    let max = app.settings.queues.max_dequeue_count;
    let mut next_timer = Instant::now();
    let mut processed = 0;
    while !done.load(Ordering::SeqCst) {
        if Instant::now() >= next_timer {
            let _ = invoke_host(&http, base, "sync", &host::timer_envelope(json!({}), false)).await;
            next_timer = Instant::now() + Duration::from_secs(15);
        }
        let Ok(messages) = app.stores.queues.dequeue(&incoming, 4, Duration::from_secs(15)).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for message in messages {
            if message.dequeue_count > max {
                if app.stores.queues.enqueue(&poison, &message.body, Duration::ZERO).await.is_ok() {
                    let _ = app.stores.queues.delete_message(&incoming, &message.id, &message.pop_receipt).await;
                }
                continue;
            }
            let metadata = [
                ("DequeueCount", json!(message.dequeue_count.to_string())),
                ("Id", json!(format!("\"{}\"", message.id))),
            ];
            let envelope = host::queue_envelope(json!(message.body), &metadata);
            if invoke_host(&http, base, "process", &envelope).await.is_ok() {
                processed += 1;
                let _ = app.stores.queues.delete_message(&incoming, &message.id, &message.pop_receipt).await;
            }
        }
    }
    processed
}

fn standalone_args(port: u16) -> Vec<String> {
    vec!["serve".to_owned(), "--standalone".into(), "--port".into(), port.to_string()]
}

struct Driven {
    figures: Figures,
    /// Submission id → the latest document a delivery of it was acknowledged with.
    acknowledged: HashMap<String, Vec<u8>>,
}

/// Deliveries (current documents, duplicates, stale versions) to the three instances, new and
/// re-processed submissions in TrueContext, and a fault every few steps, until the scale's
/// deliveries and submissions are done and the monkey has made its kills.
async fn drive(
    seed: u64,
    scale: &Scale,
    sim: &TrueContextSim,
    provider: &OidcProvider,
    azure: &AzureBackend,
    urls: &[String],
    kills: &AtomicUsize,
) -> Driven {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut figures = Figures::default();
    let http = client();
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("tc:{PUSH_PASSWORD}")));
    let mut acknowledged: HashMap<String, Vec<u8>> = HashMap::new();
    let mut sent: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    let mut ids: Vec<String> = sim.add_records(scale.submissions / 10, "form-1", Utc::now() - TimeDelta::hours(1));
    figures.submissions_created = ids.len();
    let mut step = 0usize;
    while figures.deliveries < scale.deliveries
        || figures.submissions_created < scale.submissions
        || kills.load(Ordering::SeqCst) < scale.kills
    {
        step += 1;
        let roll: f64 = rng.gen();
        if figures.submissions_created < scale.submissions && roll < 0.25 {
            let count = rng.gen_range(1..=5).min(scale.submissions - figures.submissions_created);
            ids.extend(sim.add_records(count, if rng.gen_bool(0.5) { "form-1" } else { "form-2" }, Utc::now()));
            figures.submissions_created += count;
            continue;
        }
        if roll < 0.30 {
            let id = ids[rng.gen_range(0..ids.len())].clone();
            sim.edit(&id);
            figures.edits += 1;
            continue;
        }
        if step.is_multiple_of(7) {
            inject_fault(provider, azure, sim, &mut rng, &mut figures).await;
        }
        // A delivery: the current document, or (sometimes) one sent before: a duplicate or stale.
        let id = ids[rng.gen_range(0..ids.len())].clone();
        let current = sim.record(&id).unwrap().document;
        let earlier = sent.get(&id).filter(|s| !s.is_empty() && rng.gen_bool(0.2));
        let body = match earlier {
            Some(versions) => {
                let old = versions[rng.gen_range(0..versions.len())].clone();
                if old == current {
                    figures.duplicates_sent += 1;
                } else {
                    figures.stale_versions_sent += 1;
                }
                old
            }
            None => current.clone(),
        };
        figures.deliveries += 1;
        let target = rng.gen_range(0..urls.len());
        if target == HOST {
            figures.deliveries_through_host += 1;
        }
        let status = if target == HOST {
            // Through the host: the delivery becomes an HTTP envelope, the answer its `res`.
            let text = String::from_utf8(body.clone()).unwrap();
            let headers = [("Authorization", basic.as_str()), ("Content-Type", "application/json")];
            let envelope = host::http_envelope("webhook", "POST", &[], &headers, Some(&text));
            invoke_host(&http, &urls[target], "webhook", &envelope)
                .await
                .and_then(|reply| reply["Outputs"]["res"]["statusCode"].as_u64().map(|s| s as u16).ok_or(()))
        } else {
            http.post(format!("{}/api/webhook", urls[target]))
                .header("authorization", &basic)
                .header("content-type", "application/json")
                .timeout(Duration::from_secs(30))
                .body(body.clone())
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|_| ())
        };
        match status {
            Ok(status) if (200..300).contains(&status) => {
                figures.deliveries_acknowledged += 1;
                if body == current {
                    acknowledged.insert(id.clone(), body.clone());
                }
                sent.entry(id).or_default().push(body);
            }
            Ok(_) => figures.deliveries_refused += 1,
            Err(_) => figures.deliveries_failed_in_transit += 1,
        }
    }
    Driven { figures, acknowledged }
}

/// Injects one fault into a dependency drawn at random, unless that dependency still has one
/// queued: each fault is used up by one request, and some dependencies see few requests (the
/// token endpoint about one per access-token lifetime, the identity endpoint one per instance
/// start), so queueing a fault every few steps regardless would build a backlog that faults
/// every request they get, SDK retries included: an outage, not the intermittent faults this
/// run is about.
async fn inject_fault(
    provider: &OidcProvider,
    azure: &AzureBackend,
    sim: &TrueContextSim,
    rng: &mut StdRng,
    figures: &mut Figures,
) {
    let draw = rng.gen_range(0..10);
    let pending = match draw {
        0..=3 => sim.pending_faults() as u64,
        4 | 5 => provider.pending_token_faults().await,
        6..=8 => azure.vault.pending_faults() as u64,
        _ => azure.identity.pending_faults() as u64,
    };
    if pending > 0 {
        figures.faults_not_injected_one_pending += 1;
        return;
    }
    let kind = match draw {
        0 => {
            sim.fault(TcFault::Status { status: 429, code: "TooManyRequests", retry_after: Some(0) });
            "truecontext 429"
        }
        1 => {
            sim.fault(TcFault::Status { status: 503, code: "ServiceUnavailable", retry_after: None });
            "truecontext 503"
        }
        2 => {
            sim.fault(TcFault::Malformed);
            "truecontext malformed body"
        }
        3 => {
            sim.fault(TcFault::Delay(Duration::from_secs(4)));
            "truecontext timeout"
        }
        4 => {
            provider.token_faults(vec![json!({ "status": 503, "retry_after": "0" })]).await;
            "token endpoint 503"
        }
        5 => {
            provider.token_faults(vec![json!({ "delay_ms": 2500 })]).await;
            "token endpoint slow"
        }
        6 => {
            azure.vault.inject(VaultFault::Throttle { retry_after_secs: 0 }, 1);
            "key vault 429"
        }
        7 => {
            azure.vault.inject(VaultFault::Unavailable, 1);
            "key vault 503"
        }
        8 => {
            azure.vault.inject(VaultFault::Delay(Duration::from_millis(1500)), 1);
            "key vault slow"
        }
        _ => {
            azure.identity.fail(500, 1);
            "identity endpoint 500"
        }
    };
    *figures.faults.entry(kind.into()).or_default() += 1;
}

/// Drops the faults no request took; answers how many there were.
async fn clear_faults(provider: &OidcProvider, azure: &AzureBackend, sim: &TrueContextSim) -> usize {
    sim.clear_faults()
        + provider.clear_token_faults().await as usize
        + azure.vault.clear_faults()
        + azure.identity.clear_faults()
}

/// Syncs until a completed run lands nothing. A run that resumes a window a killed run left
/// finishes that window only; the next one reaches now.
async fn final_sync(bridge: &Connected) {
    let mut runs = Vec::new();
    for _ in 0..8 {
        let output =
            tokio::task::block_in_place(|| bridge.command(&["sync", "--once", "--json"], &[]).output().unwrap());
        let said = String::from_utf8_lossy(&output.stdout).into_owned();
        runs.push(format!("{:?} {said} {}", output.status.code(), String::from_utf8_lossy(&output.stderr)));
        if output.status.code() == Some(6) {
            tokio::time::sleep(Duration::from_secs(2)).await; // a timer run holds the lease
            continue;
        }
        let summary: Value = serde_json::from_str(said.trim()).unwrap_or_else(|_| panic!("{runs:#?}"));
        if output.status.success() && summary["completed"] == true && summary["documents_landed"] == 0 && runs.len() > 1
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await; // windows end on whole seconds
    }
    panic!("the sync did not come to rest: {runs:#?}");
}

/// Waits until the incoming queue is empty and stays so for a few seconds; poisoned messages
/// are replayed (a fault may have failed one on every allowed delivery).
async fn settle(
    bridge: &Connected,
    fleet: &Fleet,
    app: &truecontext_bridge::handlers::App,
    incidents: &[(i64, String)],
) {
    let incoming = app.settings.queues.incoming.clone();
    let poison = format!("{incoming}-poison");
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut quiet_since: Option<Instant> = None;
    loop {
        let waiting = app.stores.queues.len(&incoming).await.unwrap_or(1);
        let poisoned = app.stores.queues.len(&poison).await.unwrap_or(0);
        if poisoned > 0 {
            let output =
                tokio::task::block_in_place(|| bridge.command(&["poison", "replay", "--all"], &[]).output().unwrap());
            assert!(output.status.success(), "replay: {}", String::from_utf8_lossy(&output.stderr));
        }
        if waiting == 0 && poisoned == 0 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(5) {
                return;
            }
        } else {
            quiet_since = None;
        }
        if Instant::now() >= deadline {
            let run = |args: &[&str]| {
                let output = tokio::task::block_in_place(|| bridge.command(args, &[]).output().unwrap());
                String::from_utf8_lossy(&output.stdout).into_owned()
            };
            let log = bridge.server.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            let kept = keep_evidence(bridge, fleet, incidents).await;
            panic!(
                "the queues did not drain: {waiting} waiting, {poisoned} poisoned\npoison: {}\nstatus: {}\n{}\n{kept}\ninstance 0, last lines (newest first):\n{}",
                run(&["poison", "list", "--json"]),
                run(&["status"]),
                grant_story(&bridge.provider, incidents).await,
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn verify(
    figures: &mut Figures,
    bridge: &Connected,
    fleet: &Fleet,
    app: &truecontext_bridge::handlers::App,
    sim: &TrueContextSim,
    acknowledged: &HashMap<String, Vec<u8>>,
) {
    let container = app.settings.landing.container.clone();
    let landed = truecontext_bridge::landing::list(&app.stores, "default").await.unwrap();
    let landed_ids: BTreeSet<String> = landed.iter().map(|l| l.id.clone()).collect();
    let truth: BTreeSet<String> = sim.ids().into_iter().collect();
    figures.submissions_verified = truth.len();
    figures.losses =
        truth.difference(&landed_ids).count() + acknowledged.keys().filter(|id| !landed_ids.contains(*id)).count();
    figures.duplicates_landed = landed.len() - landed_ids.len();
    for listed in &landed {
        let raw = app.stores.blobs.get(&container, &format!("raw/default/{}.json", listed.id)).await.unwrap();
        let latest = sim.record(&listed.id).map(|r| r.document);
        if raw.map(|b| b.content) != latest {
            figures.stale_content += 1;
            let truth = sim.record(&listed.id).map(|r| r.processed);
            eprintln!("stale: {} landed {:?}; TrueContext processed it at {truth:?}", listed.id, listed.row);
        }
    }
    // One landed event per real change: distinct (id, version) pairs = the versions landed.
    let mut events = BTreeSet::new();
    let queue = app.settings.landing.landed_queue.clone();
    loop {
        let taken = app.stores.queues.dequeue(&queue, 32, Duration::from_secs(600)).await.unwrap();
        if taken.is_empty() {
            break;
        }
        for message in taken {
            let event: Value = serde_json::from_str(&message.body).unwrap();
            figures.landed_events += 1;
            if !events.insert((event["id"].as_str().unwrap_or_default().to_owned(), event["version"].as_u64())) {
                figures.landed_event_duplicates += 1;
            }
        }
    }
    let versions: u64 = landed.iter().map(|l| l.row.version).sum();
    assert_eq!(events.len() as u64, versions, "one landed event per version landed");

    // The grant: still alive (a forced refresh works) and no refresh token presented twice.
    let output = tokio::task::block_in_place(|| bridge.command(&["token", "--force"], &[]).output().unwrap());
    assert!(output.status.success(), "the grant survived: {}", String::from_utf8_lossy(&output.stderr));
    let log = bridge.provider.token_request_log().await;
    // A token presented again inside the provider's grace period (the kill came after the
    // provider rotated it and before the new set was stored) is counted apart: a server without
    // a grace period would have revoked the grant there.
    figures.refresh_tokens_reused_within_grace =
        log.iter().filter(|c| c["reused_within_grace"] == true && c["ok"] == true).count();
    let mut presented = HashMap::<String, usize>::new();
    for call in log
        .iter()
        .filter(|c| c["grant_type"] == "refresh_token" && c["fault"].is_null() && c["reused_within_grace"] != true)
    {
        if let Some(hash) = call["presented_refresh_token"].as_str() {
            *presented.entry(hash.to_owned()).or_default() += 1;
        }
    }
    figures.refresh_tokens_burnt = presented.values().filter(|n| **n > 1).count()
        + log.iter().filter(|c| c["error"] == "invalid_grant" && c["fault"].is_null()).count();
    figures.token_endpoint_refreshes = log.iter().filter(|c| c["grant_type"] == "refresh_token").count() as u64;

    let report = truecontext_bridge::handlers::StatusReport::gather(app).await.unwrap();
    figures.sync_runs_recorded = report.truecontext.iter().filter_map(|t| t.last_sync.as_ref()).map(|l| l.runs).sum();

    // TrueContext: never more than 3 at once, never past the budget.
    figures.truecontext_calls = sim.calls().len();
    figures.truecontext_max_in_flight = sim.max_in_flight();
    assert!(figures.truecontext_max_in_flight <= 3, "{figures:#?}");
    assert!((figures.truecontext_calls as u64) <= BUDGET, "{figures:#?}");

    // No secret in any log.
    let azure = bridge.azure.as_ref().unwrap();
    let mut logs = bridge.server.all_logs();
    for server in &fleet.extra {
        logs.push_str(&server.all_logs());
    }
    for secret in [CLIENT_SECRET, PUSH_PASSWORD, azure.vault.token(), azure.identity.header.as_str()] {
        assert!(!logs.contains(secret), "a secret reached a log");
    }
}
