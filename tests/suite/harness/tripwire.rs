//! Stores that panic on cue: the embedded store wrapped so that a blob write or read whose name
//! contains an armed marker, or a read of an armed table, panics, the way a bug in a unit of
//! work would. The isolation tests use them to prove that such a panic stays inside its unit.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Map, Value};
use truecontext_bridge::store::{
    Blob, BlobStore, ETag, Entity, IfMatch, Page, RowRange, StoreResult, Stores, Table, TableStore,
};

/// What is armed: blob-name markers for writes and reads, and tables whose reads panic.
#[derive(Default)]
pub struct Wires {
    pub blob_put: Vec<String>,
    pub blob_get: Vec<String>,
    pub table_get: Vec<Table>,
}

#[derive(Clone, Default)]
pub struct Tripwire(pub Arc<Mutex<Wires>>);

impl Tripwire {
    /// `inner` with its blobs and tables behind this tripwire.
    pub fn wrap(&self, inner: Stores) -> Stores {
        Stores {
            blobs: Arc::new(Blobs { inner: inner.blobs.clone(), wires: self.clone() }),
            tables: Arc::new(Tables { inner: inner.tables.clone(), wires: self.clone() }),
            ..inner
        }
    }

    pub fn arm(&self, change: impl FnOnce(&mut Wires)) {
        change(&mut self.0.lock().unwrap());
    }

    pub fn disarm(&self) {
        *self.0.lock().unwrap() = Wires::default();
    }

    fn trips(&self, which: impl FnOnce(&Wires) -> bool) -> bool {
        which(&self.0.lock().unwrap())
    }
}

struct Blobs {
    inner: Arc<dyn BlobStore>,
    wires: Tripwire,
}

#[async_trait]
impl BlobStore for Blobs {
    async fn put(&self, container: &str, name: &str, content: &[u8], kind: &str, absent: bool) -> StoreResult<ETag> {
        if self.wires.trips(|w| w.blob_put.iter().any(|m| name.contains(m.as_str()))) {
            panic!("tripwire: writing {name}");
        }
        self.inner.put(container, name, content, kind, absent).await
    }

    async fn get(&self, container: &str, name: &str) -> StoreResult<Option<Blob>> {
        if self.wires.trips(|w| w.blob_get.iter().any(|m| name.contains(m.as_str()))) {
            panic!("tripwire: reading {name}");
        }
        self.inner.get(container, name).await
    }

    async fn delete(&self, container: &str, name: &str) -> StoreResult<()> {
        self.inner.delete(container, name).await
    }

    async fn list(&self, container: &str, prefix: &str) -> StoreResult<Vec<String>> {
        self.inner.list(container, prefix).await
    }
}

struct Tables {
    inner: Arc<dyn TableStore>,
    wires: Tripwire,
}

#[async_trait]
impl TableStore for Tables {
    async fn get(&self, table: Table, pk: &str, rk: &str) -> StoreResult<Option<Entity>> {
        if self.wires.trips(|w| w.table_get.contains(&table)) {
            panic!("tripwire: reading {table:?}");
        }
        self.inner.get(table, pk, rk).await
    }

    async fn insert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag> {
        self.inner.insert(table, pk, rk, props).await
    }

    async fn update(
        &self,
        table: Table,
        pk: &str,
        rk: &str,
        props: Map<String, Value>,
        condition: IfMatch,
    ) -> StoreResult<ETag> {
        self.inner.update(table, pk, rk, props, condition).await
    }

    async fn upsert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag> {
        self.inner.upsert(table, pk, rk, props).await
    }

    async fn delete(&self, table: Table, pk: &str, rk: &str, condition: IfMatch) -> StoreResult<()> {
        self.inner.delete(table, pk, rk, condition).await
    }

    async fn query(
        &self,
        table: Table,
        pk: &str,
        range: &RowRange,
        limit: usize,
        continuation: Option<&str>,
    ) -> StoreResult<Page> {
        if self.wires.trips(|w| w.table_get.contains(&table)) {
            panic!("tripwire: querying {table:?}");
        }
        self.inner.query(table, pk, range, limit, continuation).await
    }
}
