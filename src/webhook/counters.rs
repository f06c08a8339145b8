//! The webhook's and the processing's counters, for status: counted in memory on the hot path
//! (atomics, no store write per request) and written to the `runs` table (partition
//! `webhook-counters`, one row per process) at most every [`FLUSH_EVERY`], so status can add up
//! every instance's. A process killed outright loses at most its last interval's counts; the
//! data itself is never at stake, only these figures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, Stores, Table, TypedTable};

const PARTITION: &str = "webhook-counters";
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Sources of refused pushes remembered per process (the most refused are kept).
const MAX_SOURCES: usize = 50;

/// The figures, as stored and as status shows them (summed over processes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub received: u64,
    pub accepted: u64,
    pub duplicates: u64,
    /// Refused pushes by reason (`wrong_credentials`, `body_too_large`, `not_json`, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Refused authentications by the caller's address, so a caller that keeps failing shows.
    pub auth_failures_by_source: BTreeMap<String, u64>,
    pub processed: u64,
    pub retried: u64,
    pub poisoned: u64,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

impl Figures {
    fn add(&mut self, other: &Figures) {
        self.received += other.received;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.processed += other.processed;
        self.retried += other.retried;
        self.poisoned += other.poisoned;
        for (k, v) in &other.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.auth_failures_by_source {
            *self.auth_failures_by_source.entry(k.clone()).or_default() += v;
        }
        self.updated_at = self.updated_at.max(other.updated_at);
    }
}

/// This process's counters.
pub struct Counters {
    instance: String,
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub processed: AtomicU64,
    pub retried: AtomicU64,
    pub poisoned: AtomicU64,
    refusals: Mutex<(BTreeMap<String, u64>, BTreeMap<String, u64>)>,
    last_flush: Mutex<Instant>,
    flushing: AtomicBool,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            instance: format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 4]>())),
            received: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            poisoned: AtomicU64::new(0),
            refusals: Mutex::default(),
            last_flush: Mutex::new(Instant::now()),
            flushing: AtomicBool::new(false),
        }
    }
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A refused push; `source` is set for a failed authentication.
    pub fn rejected(&self, reason: &str, source: Option<&str>) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        *refusals.0.entry(reason.to_owned()).or_default() += 1;
        if let Some(source) = source {
            let by_source = &mut refusals.1;
            if by_source.len() < MAX_SOURCES || by_source.contains_key(source) {
                *by_source.entry(source.to_owned()).or_default() += 1;
            } else {
                *by_source.entry("(other sources)".to_owned()).or_default() += 1;
            }
        }
    }

    fn snapshot(&self) -> Figures {
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Figures {
            received: load(&self.received),
            accepted: load(&self.accepted),
            duplicates: load(&self.duplicates),
            rejected: refusals.0.clone(),
            auth_failures_by_source: refusals.1.clone(),
            processed: load(&self.processed),
            retried: load(&self.retried),
            poisoned: load(&self.poisoned),
            updated_at: Some(Utc::now()),
        }
    }

    /// Writes this process's row when the last write is older than [`FLUSH_EVERY`]; one writer
    /// at a time, in the background, so no request waits for it.
    pub fn flush_soon(self: &std::sync::Arc<Self>, stores: &Stores) {
        {
            let mut last = self.last_flush.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < FLUSH_EVERY || self.flushing.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Instant::now();
        }
        let (counters, stores) = (self.clone(), stores.clone());
        tokio::spawn(async move {
            if let Err(e) = counters.flush(&stores).await {
                tracing::debug!(error = %e, "the webhook counters could not be written");
            }
            counters.flushing.store(false, Ordering::Release);
        });
    }

    /// Writes this process's row now.
    pub async fn flush(&self, stores: &Stores) -> Result<(), StoreError> {
        let table = TypedTable::new(stores.tables.as_ref(), Table::Runs);
        table.upsert(PARTITION, &self.instance, &self.snapshot()).await.map(|_| ())
    }
}

/// Every process's figures added up (this process's as it counts now).
pub async fn totals(stores: &Stores, this: &Counters) -> Result<Figures, StoreError> {
    let mut total = Figures::default();
    for entity in crate::store::query_partition(stores.tables.as_ref(), Table::Runs, PARTITION).await? {
        if entity.row_key == this.instance {
            continue;
        }
        let figures: Figures = crate::store::from_properties(entity.properties)?;
        total.add(&figures);
    }
    total.add(&this.snapshot());
    Ok(total)
}
