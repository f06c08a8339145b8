//! Leases: a named mutex with a time-to-live, shared by every instance that sees the store.
//!
//! A lease is one row in [`Table::Leases`]. Taking it is a compare-and-swap: insert when the
//! row is absent, or replace an expired holder's row under its ETag, so exactly one of any
//! number of racing callers wins. The holder proves ownership with its token (a random id)
//! and the row's ETag; a crashed holder simply stops renewing and the lease expires.
//! Clocks of instances are assumed to agree within a few seconds; keep TTLs well above that.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ETag, IfMatch, StoreError, StoreResult, Table, TableStore, TypedTable};

const PARTITION: &str = "lease";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    token: String,
    expires_at: DateTime<Utc>,
}

/// Proof of holding a lease. Pass it back to renew or release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub expires_at: DateTime<Utc>,
    token: String,
    etag: ETag,
}

/// Tries to take `name` for `ttl`. `Ok(None)` when someone else holds it and it has not expired.
/// A holder name for one piece of work: this process and a random part, so two tasks of one
/// process never take each other's lease for their own.
pub fn holder() -> String {
    format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 4]>()))
}

pub async fn acquire(store: &dyn TableStore, name: &str, holder: &str, ttl: Duration) -> StoreResult<Option<Lease>> {
    let table = TypedTable::new(store, Table::Leases);
    let now = Utc::now();
    let record = LeaseRecord { holder: holder.to_owned(), token: new_token(), expires_at: now + ttl_delta(ttl)? };
    let written = match table.get::<LeaseRecord>(PARTITION, name).await? {
        None => table.insert(PARTITION, name, &record).await,
        Some(current) if current.value.expires_at <= now => {
            table.update(PARTITION, name, &record, IfMatch::ETag(current.etag)).await
        }
        Some(_) => return Ok(None),
    };
    match written {
        Ok(etag) => Ok(Some(Lease {
            name: name.to_owned(),
            holder: record.holder,
            expires_at: record.expires_at,
            token: record.token,
            etag,
        })),
        // Someone else took it between our read and our write: they won the race.
        Err(StoreError::AlreadyExists { .. } | StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Extends a held lease to `ttl` from now. `Ok(false)` when it was lost (expired and taken).
pub async fn renew(store: &dyn TableStore, lease: &mut Lease, ttl: Duration) -> StoreResult<bool> {
    let table = TypedTable::new(store, Table::Leases);
    let record = LeaseRecord {
        holder: lease.holder.clone(),
        token: lease.token.clone(),
        expires_at: Utc::now() + ttl_delta(ttl)?,
    };
    match table.update(PARTITION, &lease.name, &record, IfMatch::ETag(lease.etag.clone())).await {
        Ok(etag) => {
            lease.etag = etag;
            lease.expires_at = record.expires_at;
            Ok(true)
        }
        Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Who holds `name` and until when, if anyone's row is there (expired or not).
pub async fn peek(store: &dyn TableStore, name: &str) -> StoreResult<Option<(String, DateTime<Utc>)>> {
    let table = TypedTable::new(store, Table::Leases);
    Ok(table.get::<LeaseRecord>(PARTITION, name).await?.map(|r| (r.value.holder, r.value.expires_at)))
}

/// Gives a lease up early. Releasing a lease that was already lost is not an error.
pub async fn release(store: &dyn TableStore, lease: Lease) -> StoreResult<()> {
    match store.delete(Table::Leases, PARTITION, &lease.name, IfMatch::ETag(lease.etag)).await {
        Ok(()) | Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

fn ttl_delta(ttl: Duration) -> StoreResult<chrono::TimeDelta> {
    chrono::TimeDelta::from_std(ttl).map_err(|_| StoreError::invalid("lease ttl", "out of range"))
}

fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Runs `work` while holding `lease`, as one scope: the lease is kept alive in the background
/// ([`Keeper`]) for as long as the work takes and released when it ends. A release that fails
/// is logged, not returned: the work is done, and the lease lapses by itself within `ttl`.
pub async fn hold<T>(
    store: std::sync::Arc<dyn TableStore>,
    lease: Lease,
    ttl: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    let name = lease.name.clone();
    let keeper = Keeper::keep(store.clone(), lease, ttl);
    // Boxed: a held scope wraps large futures (a timer tick, a connection's run), and nested
    // inline they outgrow a worker thread's stack in a debug build (as `telemetry::isolate`).
    let value = Box::pin(work).await;
    if let Some(held) = keeper.finish().await {
        if let Err(e) = release(store.as_ref(), held).await {
            tracing::warn!(lease = %name, error = %e, "a lease could not be released; it lapses by itself");
        }
    }
    value
}

/// Takes `name` for `holder` if it is free and runs `work` under it ([`hold`]); `None` when
/// another holder has it (the work is not run).
pub async fn with_lease<T>(
    store: &std::sync::Arc<dyn TableStore>,
    name: &str,
    holder: &str,
    ttl: Duration,
    work: impl std::future::Future<Output = T>,
) -> StoreResult<Option<T>> {
    match acquire(store.as_ref(), name, holder, ttl).await? {
        Some(lease) => Ok(Some(hold(store.clone(), lease, ttl, work).await)),
        None => Ok(None),
    }
}

/// A held lease kept alive in the background (renewed every third of its TTL) for as long as
/// its holder works, however long a store write or a retry takes. If a renewal finds the lease
/// taken (it expired, e.g. the process was paused), [`Keeper::is_lost`] says so and the holder
/// must stop before doing anything the lease protects.
pub struct Keeper {
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<Lease>>,
}

impl Keeper {
    pub fn keep(store: std::sync::Arc<dyn TableStore>, lease: Lease, ttl: Duration) -> Keeper {
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = tokio_util::sync::CancellationToken::new();
        let (flag, stopped) = (lost.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut lease = lease;
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return lease,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
                match renew(store.as_ref(), &mut lease, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        stopped.cancelled().await;
                        return lease;
                    }
                    // The next tick tries again; the lease is good for two more.
                    Err(e) => tracing::warn!(lease = %lease.name, error = %e, "a lease could not be renewed"),
                }
            }
        });
        Keeper { lost, stop, task: Some(task) }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops renewing and hands the lease back for release.
    pub async fn finish(mut self) -> Option<Lease> {
        self.stop.cancel();
        self.task.take()?.await.ok()
    }
}

/// A keeper dropped without [`Keeper::finish`] (its holder panicked, or its future was
/// dropped) stops renewing: the lease then lapses within its TTL instead of being held for as
/// long as the process lives.
impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn with_lease_runs_the_work_once_under_the_lease_and_gives_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let stores = crate::store::local::open(dir.path(), None).unwrap();
        let ttl = Duration::from_millis(600);
        let tables = stores.tables.clone();
        let inner = tables.clone();
        let ran = with_lease(&tables, "scope", "a", ttl, async move {
            // Held throughout, past its TTL: the keeper renews it.
            tokio::time::sleep(ttl * 2).await;
            acquire(inner.as_ref(), "scope", "b", ttl).await.unwrap().is_none()
        })
        .await
        .unwrap();
        assert_eq!(ran, Some(true), "held while the work ran");
        assert!(acquire(tables.as_ref(), "scope", "b", ttl).await.unwrap().is_some(), "released after it");
        let skipped = with_lease(&tables, "scope", "c", ttl, async { unreachable!("not run while held") }).await;
        assert!(matches!(skipped, Ok(None)));
    }

    #[tokio::test]
    async fn a_kept_lease_outlives_its_ttl_and_a_taken_one_is_reported_lost() {
        let dir = tempfile::tempdir().unwrap();
        let stores = crate::store::local::open(dir.path(), None).unwrap();
        let ttl = Duration::from_millis(600);
        let held = acquire(stores.tables.as_ref(), "kept", "a", ttl).await.unwrap().expect("free");
        let keeper = Keeper::keep(stores.tables.clone(), held, ttl);
        tokio::time::sleep(ttl * 3).await;
        assert!(acquire(stores.tables.as_ref(), "kept", "b", ttl).await.unwrap().is_none(), "still held");
        assert!(!keeper.is_lost());
        release(stores.tables.as_ref(), keeper.finish().await.unwrap()).await.unwrap();
        assert!(acquire(stores.tables.as_ref(), "kept", "b", ttl).await.unwrap().is_some(), "released");

        // Someone takes it over (here: the row is replaced behind the keeper's back).
        let held = acquire(stores.tables.as_ref(), "lost", "a", ttl).await.unwrap().unwrap();
        let keeper = Keeper::keep(stores.tables.clone(), held, ttl);
        stores.tables.delete(Table::Leases, PARTITION, "lost", IfMatch::Any).await.unwrap();
        acquire(stores.tables.as_ref(), "lost", "c", Duration::from_secs(60)).await.unwrap().unwrap();
        tokio::time::sleep(ttl).await;
        assert!(keeper.is_lost());
        let lease = keeper.finish().await.unwrap();
        release(stores.tables.as_ref(), lease).await.unwrap();
        assert!(acquire(stores.tables.as_ref(), "lost", "d", ttl).await.unwrap().is_none(), "c's lease stands");
    }
}
