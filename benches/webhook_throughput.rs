//! The webhook under load from a real load generator (Debian's `wrk`, `scripts/bench-webhook.sh`
//! installs it): `tcbridge serve --standalone` with `WEBHOOK_AUTH=jwt` (an RS256 bearer token,
//! validated against a JWKS on loopback), every request a distinct submission, so each one is
//! a full durable write (body blob, pending row, queue message, row update) before its 202,
//! while the standalone queue worker processes what was accepted. Against the embedded store
//! and against Azurite. Then the server is killed with `kill -9` and the store is read: every
//! delivery answered 202 must be there.
//!
//! A second part measures what pushes save the sync: 1,000 submissions processed over half an
//! hour, each pushed 2 s after it was processed, then the sync's run; document calls with no
//! pushes, with pushes under the default rule, and with `SYNC_TRUST_PUSHES` (in-process, on the
//! simulator).
//!
//! Run: `bash scripts/bench-webhook.sh` (release build, about two minutes); the numbers go in
//! the README. `BENCH_SECONDS` (default 10) and `BENCH_CONNECTIONS` (default 32) tune it.

#[path = "../tests/suite/harness/azurite.rs"]
#[allow(dead_code)]
mod azurite;
#[path = "../tests/suite/harness/issuer.rs"]
#[allow(dead_code)]
mod issuer;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use truecontext_bridge::store::{Stores, Table};

const AUDIENCE: &str = "api://truecontext-bridge-webhook";
const LUA: &str = r#"
local counter = 0
function setup(thread)
  thread:set("id", math.random(1, 2147483647))
end
function init(args)
  token = args[1]
end
request = function()
  counter = counter + 1
  local body = '{"identifier":"b' .. id .. '-' .. counter .. '","referenceNumber":"20261202-' .. counter ..
    '","state":"Complete","form":{"identifier":"1001","name":"Pump"},' ..
    '"pages":[{"sections":[{"answers":[{"label":"Result","type":"Select","values":["Pass"]}]}]}]}'
  return wrk.format("POST", "/api/webhook", {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("RESULT requests=%d non2xx=%d socket_errors=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, non2xx, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
"#;

struct Result {
    store: &'static str,
    requests: u64,
    non2xx: u64,
    socket_errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    durable: usize,
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no {name}: {line}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(store: &'static str, extra: &[(&str, String)], token: &str, issuer: &str) -> Result {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcbridge"))
        .args(["serve", "--standalone", "--port", &port.to_string()])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LOCAL_STORE_PATH", dir.path().join("store"))
        .env("FUNCTION_KEY", "bench-function-key-0123456789")
        .env("TRUECONTEXT_BASE_URL", "http://127.0.0.1:9/api/1.1")
        .env("TRUECONTEXT_AUTH", "basic")
        .env("TRUECONTEXT_API_KEY_ID", "bench")
        .env("TRUECONTEXT_API_KEY_SECRET", "bench-secret")
        .env("WEBHOOK_AUTH", "jwt")
        .env("WEBHOOK_JWT_ISSUER", issuer)
        .env("WEBHOOK_AUDIENCE", AUDIENCE)
        // The issuer's tokens are issued to `tc-client` (harness/issuer.rs).
        .env("WEBHOOK_ALLOWED_CLIENT_IDS", "tc-client")
        // wrk's connections all come from one address.
        .env("STANDALONE_MAX_CONNECTIONS_PER_ADDRESS", "256")
        .env("SYNC_SCHEDULE", "0 0 0 1 1 *")
        .env("RUST_LOG", "warn")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tcbridge did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = dir.path().join("push.lua");
    std::fs::write(&script, LUA).unwrap();
    let seconds = std::env::var("BENCH_SECONDS").unwrap_or_else(|_| "10".into());
    let connections = std::env::var("BENCH_CONNECTIONS").unwrap_or_else(|_| "32".into());
    let output = Command::new("wrk")
        .args(["-t2", "-c", &connections, "-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--", token])
        .output()
        .expect("wrk is not installed: run `bash scripts/bench-webhook.sh`, which installs it");
    // kill -9 at once: what was acknowledged must already be on disk.
    child.kill().unwrap();
    child.wait().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("RESULT")).unwrap_or_else(|| panic!("wrk said:\n{text}"));
    let stores = reopen(store, dir.path(), extra);
    let durable = count_durable(&stores);
    Result {
        store,
        requests: field(line, "requests"),
        non2xx: field(line, "non2xx"),
        socket_errors: field(line, "socket_errors"),
        seconds: field(line, "duration_us") as f64 / 1e6,
        p50_ms: field(line, "p50_us") as f64 / 1000.0,
        p99_ms: field(line, "p99_us") as f64 / 1000.0,
        durable,
    }
}

fn reopen(store: &str, dir: &std::path::Path, extra: &[(&str, String)]) -> Stores {
    if store.starts_with("local") {
        return truecontext_bridge::store::local::open(&dir.join("store"), None).unwrap();
    }
    let mut raw =
        truecontext_bridge::config::RawSettings::from_pairs(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    raw.set("OAUTH_CLIENT_ID", "x");
    let settings = truecontext_bridge::config::Settings::load(&raw).unwrap();
    truecontext_bridge::store::open(&settings.store).unwrap()
}

/// Deliveries on record: pending (not yet processed) plus processed.
fn count_durable(stores: &Stores) -> usize {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut total = 0;
        for table in [Table::Incoming, Table::Deliveries] {
            let mut continuation = None;
            loop {
                let range = truecontext_bridge::store::RowRange::all();
                let page = stores.tables.query(table, "default", &range, 1000, continuation.as_deref()).await.unwrap();
                total += page.entities.len();
                match page.continuation {
                    Some(next) => continuation = Some(next),
                    None => break,
                }
            }
        }
        total
    })
}

/// Document calls of one sync run after 1,000 submissions were processed over 30 minutes and,
/// unless `pushes` is false, each pushed (landed from the webhook) 2 s after it was processed.
fn sync_after_pushes(pushes: bool, trust: bool) -> (usize, usize) {
    use truecontext_bridge::landing::{Arrival, Landing, Source};
    use truecontext_bridge::simulator::{TrueContextSim, KEY_ID, KEY_SECRET};
    let sim = TrueContextSim::start();
    let now = chrono::Utc::now();
    let ids =
        sim.add_spaced(1000, "1001", now - chrono::TimeDelta::seconds(130), chrono::TimeDelta::milliseconds(1800));
    let dir = tempfile::tempdir().unwrap();
    let stores = truecontext_bridge::store::local::open(dir.path(), None).unwrap();
    let base = sim.base_url();
    let raw = truecontext_bridge::config::RawSettings::from_pairs([
        ("TRUECONTEXT_BASE_URL", base.as_str()),
        ("TRUECONTEXT_AUTH", "basic"),
        ("SYNC_BACKFILL_DAYS", "1"),
        ("SYNC_TRUST_PUSHES", if trust { "true" } else { "false" }),
    ]);
    let settings = truecontext_bridge::config::Settings::load(&raw).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let landing = Landing::new(&stores, &settings.landing.container, &settings.landing.landed_queue);
        if pushes {
            for id in &ids {
                let record = sim.record(id).unwrap();
                let pushed_at = record.processed + chrono::TimeDelta::seconds(2);
                let arrival = Arrival {
                    connection: "default",
                    source: Source::Webhook,
                    raw: &record.document,
                    order: pushed_at,
                    processed_date: None,
                };
                landing.land(&arrival).await.unwrap();
            }
        }
        let before = sim.calls().len();
        let client = truecontext_bridge::truecontext::TrueContextClient::new(&settings.truecontext, stores.clone());
        let secret = truecontext_bridge::secret::SecretString::new(KEY_SECRET);
        let credentials = truecontext_bridge::truecontext::Credentials::basic(KEY_ID, &secret);
        let parts = truecontext_bridge::sync::SyncParts {
            client: &client,
            credentials: &credentials,
            stores: &stores,
            landing: &landing,
            settings: &settings.sync,
            alert_webhook: None,
            progress: None,
            deadline: tokio::time::Instant::now() + Duration::from_secs(600),
        };
        let summary = truecontext_bridge::sync::sync_connection(&parts, "default", chrono::Utc::now()).await;
        assert!(summary.stopped_reason.is_none(), "{summary:?}");
        let calls: Vec<_> = sim.calls().into_iter().skip(before).collect();
        let documents = calls.iter().filter(|c| c.path.ends_with("document.json")).count();
        (calls.len() - documents, documents)
    })
}

fn main() {
    println!("| 1,000 submissions, then one sync run | list calls | document calls |");
    println!("|---|---|---|");
    for (what, pushes, trust) in [
        ("no pushes (pull only)", false, false),
        ("each pushed 2 s after processing, default rule", true, false),
        ("each pushed, SYNC_TRUST_PUSHES=true", true, true),
    ] {
        let (lists, documents) = sync_after_pushes(pushes, trust);
        println!("| {what} | {lists} | {documents} |");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuer = runtime.block_on(issuer::Issuer::start(&["test-key1"]));
    let mut claims = issuer.claims(AUDIENCE);
    claims["exp"] = serde_json::json!(chrono::Utc::now().timestamp() + 3600);
    let token = issuer::sign("test-key1", "test-key1", &claims);
    let mut results = vec![run("local", &[], &token, &issuer.issuer)];
    let normal = [("LOCAL_STORE_SYNC", "normal".to_owned())];
    results.push(run("local, LOCAL_STORE_SYNC=normal", &normal, &token, &issuer.issuer));
    let azurite = azurite::Azurite::start();
    let azure = vec![
        ("STORE", "azure".to_owned()),
        ("AzureWebJobsStorage", azurite.connection_string()),
        ("KEYVAULT_URI", "https://unused.vault.localhost".to_owned()),
    ];
    results.push(run("azurite", &azure, &token, &issuer.issuer));
    println!("| store | requests/s | p50 | p99 | non-2xx | 2xx answered | on record after kill -9 |");
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        let answered = r.requests - r.non2xx - r.socket_errors;
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {} | {} | {} |",
            r.store,
            r.requests as f64 / r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.non2xx + r.socket_errors,
            answered,
            r.durable
        );
        assert!(r.durable as u64 >= answered, "{}: {} answered 2xx but {} on record", r.store, answered, r.durable);
    }
}
