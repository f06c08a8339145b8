//! The short cache of latest versions: a read per sync need not call the vault every time;
//! our own writes invalidate it, another instance's become visible within the TTL.

use super::*;

/// Ordering of versions: Key Vault's `created` (whole seconds), then our written tag, then
/// the id, so the order is total and stable.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct VersionKey {
    pub(super) created: i64,
    pub(super) written: Option<i64>,
    pub(super) version: String,
}

impl VersionKey {
    pub(super) fn of(properties: &SecretProperties) -> Self {
        let created =
            properties.attributes.as_ref().and_then(|a| a.created).map(|t| t.unix_timestamp()).unwrap_or(i64::MAX);
        let written = properties
            .tags
            .as_ref()
            .and_then(|tags| tags.get(WRITTEN_TAG))
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| t.timestamp_nanos_opt());
        let version = properties.resource_id().ok().and_then(|id| id.version).unwrap_or_default();
        VersionKey { created, written, version }
    }
}

/// Latest versions read recently. Each name has a generation, bumped by our own set and
/// delete; a read stores its result only if no set or delete happened while it was in flight.
pub(super) struct LatestCache {
    pub(super) ttl: Duration,
    pub(super) inner: Mutex<CacheInner>,
}

#[derive(Default)]
pub(super) struct CacheInner {
    /// Bumped on every invalidation; a name without a slot is at this generation.
    pub(super) epoch: u64,
    pub(super) slots: HashMap<String, CacheSlot>,
}

pub(super) struct CacheSlot {
    pub(super) generation: u64,
    pub(super) entry: Option<(Instant, SecretVersion)>,
}

/// Cache slots kept before expired ones are dropped.
pub(super) const CACHE_PRUNE_AT: usize = 1024;

impl LatestCache {
    pub(super) fn new(ttl: Duration) -> Self {
        Self { ttl, inner: Mutex::new(CacheInner::default()) }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached latest version, or the generation to pass to [`Self::store`].
    pub(super) fn lookup(&self, name: &str) -> Result<SecretVersion, u64> {
        let inner = self.lock();
        match inner.slots.get(name) {
            Some(CacheSlot { entry: Some((at, v)), .. }) if at.elapsed() < self.ttl => Ok(v.clone()),
            Some(slot) => Err(slot.generation),
            None => Err(inner.epoch),
        }
    }

    pub(super) fn store(&self, name: &str, generation: u64, value: SecretVersion) {
        if self.ttl.is_zero() {
            return;
        }
        let mut inner = self.lock();
        let current = inner.slots.get(name).map_or(inner.epoch, |s| s.generation);
        if current != generation {
            return;
        }
        if inner.slots.len() >= CACHE_PRUNE_AT {
            let ttl = self.ttl;
            inner.slots.retain(|_, s| s.entry.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl));
        }
        inner.slots.insert(name.to_owned(), CacheSlot { generation, entry: Some((Instant::now(), value)) });
    }

    pub(super) fn invalidate(&self, name: &str) {
        let mut inner = self.lock();
        inner.epoch += 1;
        let generation = inner.epoch;
        inner.slots.insert(name.to_owned(), CacheSlot { generation, entry: None });
    }
}
