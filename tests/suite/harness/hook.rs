//! The webhook and the process function in-process: an [`App`] on its own embedded store (or
//! any given stores), pushes sent as the front doors hand them over, the incoming queue worked
//! the way the standalone worker does (poison queue included), and what is stored read back.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;
use truecontext_bridge::config::{RawSettings, Settings};
use truecontext_bridge::functions;
use truecontext_bridge::handlers::{App, HttpRequest, HttpResponse, Mode};
use truecontext_bridge::standalone::QueueWorker;
use truecontext_bridge::store::{local, Stores, Table};

use super::truecontext::{TrueContextSim, KEY_ID, KEY_SECRET};

pub const PASSWORD: &str = "push-password-0123456789";
pub const PASSWORD_NEXT: &str = "push-password-next-0123456789";

pub struct Hook {
    pub app: App,
    pub sim: TrueContextSim,
    pub stores: Stores,
    _dir: Option<tempfile::TempDir>,
}

impl Hook {
    /// Basic auth (`tc` / [`PASSWORD`]), an API-key connection `default` on the simulator.
    pub fn new(extra: &[(&str, &str)]) -> Hook {
        let dir = tempfile::tempdir().unwrap();
        let stores = local::open(dir.path(), None).unwrap();
        let mut hook = Self::on(stores, extra);
        hook._dir = Some(dir);
        hook
    }

    /// On Azure Storage (Azurite), through the same settings an operator would give.
    pub fn azurite(azurite: &super::azurite::Azurite, extra: &[(&str, &str)]) -> Hook {
        let connection = azurite.connection_string();
        let mut all = vec![
            ("STORE", "azure"),
            ("AzureWebJobsStorage", connection.as_str()),
            ("KEYVAULT_URI", "https://unused.vault.localhost"),
        ];
        all.extend_from_slice(extra);
        Self::build(&all, |settings| truecontext_bridge::store::open(&settings.store).unwrap())
    }

    pub fn on(stores: Stores, extra: &[(&str, &str)]) -> Hook {
        Self::build(extra, |_| stores)
    }

    fn build(extra: &[(&str, &str)], open: impl FnOnce(&Settings) -> Stores) -> Hook {
        let sim = TrueContextSim::start();
        let base = sim.base_url();
        let mut pairs = vec![
            ("TRUECONTEXT_BASE_URL", base.as_str()),
            ("TRUECONTEXT_AUTH", "basic"),
            ("TRUECONTEXT_API_KEY_ID", KEY_ID),
            ("TRUECONTEXT_API_KEY_SECRET", KEY_SECRET),
            ("WEBHOOK_AUTH", "basic"),
            ("WEBHOOK_BASIC_USERNAME", "tc"),
            ("WEBHOOK_BASIC_PASSWORD", PASSWORD),
            ("QUEUE_RETRY_DELAY_SECONDS", "0"),
            ("SYNC_SETTLE_SECONDS", "0"),
        ];
        let mut raw = RawSettings::from_pairs(pairs.drain(..));
        for (k, v) in extra {
            raw.set(k, v);
        }
        let settings = Settings::load(&raw).unwrap_or_else(|p| panic!("{p:?}"));
        let stores = open(&settings);
        let app = App::new(Arc::new(settings), stores.clone(), Mode::Standalone);
        Hook { app, sim, stores, _dir: None }
    }

    pub fn basic_auth(password: &str) -> (HeaderName, HeaderValue) {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("tc:{password}"));
        (axum::http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {encoded}")).unwrap())
    }

    /// A push as a front door hands it over.
    pub async fn send(&self, query: &str, headers: &[(HeaderName, HeaderValue)], body: &[u8]) -> HttpResponse {
        let mut map = HeaderMap::new();
        map.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in headers {
            map.insert(k.clone(), v.clone());
        }
        let query =
            url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let request = HttpRequest { method: Method::POST, query, headers: map, body: body.to_vec(), peer: None };
        self.app.http(functions::by_name("webhook").unwrap(), request).await
    }

    /// A push with the right credentials.
    pub async fn push(&self, body: &[u8]) -> HttpResponse {
        self.send("", &[Self::basic_auth(PASSWORD)], body).await
    }

    pub fn worker(&self) -> QueueWorker {
        let mut worker = QueueWorker::for_function(self.app.clone(), functions::by_name("process").unwrap());
        worker.retry_delay = Duration::ZERO;
        worker
    }

    /// Works the incoming queue until it is empty (visible or not). Returns the messages taken.
    pub async fn drain(&self) -> usize {
        let worker = self.worker();
        let mut taken = 0;
        for _ in 0..200 {
            let n = worker.poll_once(self.stores.queues.as_ref()).await.unwrap();
            taken += n;
            if self.queue_len().await == 0 {
                return taken;
            }
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("the incoming queue did not drain");
    }

    pub async fn queue_len(&self) -> usize {
        self.stores.queues.len(&self.app.settings.queues.incoming).await.unwrap()
    }

    pub async fn poison_len(&self) -> usize {
        self.stores.queues.len(&format!("{}-poison", self.app.settings.queues.incoming)).await.unwrap()
    }

    /// Landed events on the landed queue, taken.
    pub async fn landed_events(&self) -> Vec<Value> {
        let queue = &self.app.settings.landing.landed_queue;
        let mut out = Vec::new();
        loop {
            let batch = self.stores.queues.dequeue(queue, 32, Duration::from_secs(600)).await.unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch.iter().map(|m| serde_json::from_str::<Value>(&m.body).unwrap()));
        }
    }

    pub async fn blobs(&self, prefix: &str) -> Vec<String> {
        self.stores.blobs.list(&self.app.settings.landing.container, prefix).await.unwrap()
    }

    pub async fn rows(&self, table: Table, partition: &str) -> usize {
        let range = truecontext_bridge::store::RowRange::all();
        self.stores.tables.query(table, partition, &range, 1000, None).await.unwrap().entities.len()
    }

    /// Nothing of a push is stored anywhere: no blob, no row, no message.
    pub async fn assert_nothing_stored(&self, why: &str) {
        assert!(self.blobs("").await.is_empty(), "{why}: a blob was stored");
        assert_eq!(self.rows(Table::Incoming, "default").await, 0, "{why}: a pending row was stored");
        assert_eq!(self.queue_len().await, 0, "{why}: a message was queued");
    }
}
