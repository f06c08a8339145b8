//! The token lifecycle's budget: token-endpoint calls per hour per connection under a
//! continuous sync, secret-store reads and writes per refresh, and the cost of a cached token.
//!
//! A real authorization server (node-oidc-provider, rotating refresh tokens; `npm ci` first)
//! issues tokens; a connection is consented through the real flow; then a day of sync runs every
//! five minutes is played on a clock that moves without waiting, by three instances that also
//! ask for the token on every webhook (one a minute each). Secret-store calls are counted by a
//! wrapper around the embedded store. Run with `cargo bench --bench token_budget`; numbers go in
//! the README.

#[path = "../tests/suite/harness/mod.rs"]
mod harness;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use harness::connected::{Connected, Options};
use truecontext_bridge::handlers::{App, TimerInfo};
use truecontext_bridge::secret::SecretString;
use truecontext_bridge::store::{self, SecretStore, SecretVersion, StoreResult};

#[derive(Default)]
struct Counts {
    writes: AtomicUsize,
    reads: AtomicUsize,
}

struct Counting {
    inner: Arc<dyn SecretStore>,
    counts: Arc<Counts>,
}

#[async_trait]
impl SecretStore for Counting {
    async fn set(&self, name: &str, value: &SecretString) -> StoreResult<String> {
        self.counts.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.set(name, value).await
    }
    async fn get(&self, name: &str, version: Option<&str>) -> StoreResult<Option<SecretVersion>> {
        self.counts.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get(name, version).await
    }
    async fn versions(&self, name: &str) -> StoreResult<Vec<String>> {
        self.inner.versions(name).await
    }
    async fn delete(&self, name: &str) -> StoreResult<()> {
        self.inner.delete(name).await
    }
    async fn get_latest_uncached(&self, name: &str) -> StoreResult<Option<SecretVersion>> {
        self.counts.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_latest_uncached(name).await
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        for lifetime in [3600u64, 4500] {
            budget(lifetime).await;
        }
        cached_cost().await;
    });
}

/// One simulated day: a sync every 5 minutes on one instance, and each of three instances asking
/// for the token every minute.
async fn budget(access_token_lifetime: u64) {
    let bridge = Connected::start(Options { access_token_ttl: access_token_lifetime, ..Default::default() }).await;
    let counts = Arc::new(Counts::default());
    let instances: Vec<App> = (0..3)
        .map(|_| {
            let mut stores = store::open(&bridge.settings().store).unwrap();
            stores.secrets = Arc::new(Counting { inner: stores.secrets, counts: counts.clone() });
            bridge.instance_on(stores)
        })
        .collect();
    let sync = truecontext_bridge::functions::by_name("sync").unwrap();
    let minutes = 24 * 60;
    let mut token_calls = 0u64;
    for minute in 0..minutes {
        if minute % 5 == 0 {
            instances[0].timer(sync, TimerInfo::default()).await.unwrap();
        }
        for app in &instances {
            app.tokens().access_token("default").await.unwrap();
            token_calls += 1;
        }
        bridge.advance(60);
    }
    let refreshes = bridge.refresh_calls().await;
    let writes = counts.writes.load(Ordering::SeqCst);
    let reads = counts.reads.load(Ordering::SeqCst);
    println!(
        "access tokens living {access_token_lifetime} s, margin 600 s, 24 h: {token_calls} token requests by 3 instances \
         + 288 sync runs -> {refreshes} token-endpoint calls = {:.2} per hour per connection; \
         secret-store writes {writes} ({:.2} per refresh), reads {reads} ({:.2} per refresh)",
        refreshes as f64 / 24.0,
        writes as f64 / refreshes as f64,
        reads as f64 / refreshes as f64,
    );
}

/// What a caller pays for a token this process already holds.
async fn cached_cost() {
    let bridge = Connected::start(Options::default()).await;
    let app = bridge.instance();
    app.tokens().access_token("default").await.unwrap();
    let n = 200_000;
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(app.tokens().access_token("default").await.unwrap());
    }
    let per_call = started.elapsed() / n;
    println!("cached access_token: {per_call:?} per call ({n} calls)");
}
