//! This process's half of the token lifecycle: the memory cache and the single-flight locks.
//! Everything shared between instances lives in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{AccessToken, TokenSource, Want};
use crate::clock::{delta, Clock, SystemClock};

/// How long this process trusts its cached token before reading the record again.
pub(super) const CACHE_RECHECK: Duration = Duration::from_secs(60);

/// A token this process holds, and when the record was last looked at to confirm it.
struct Cached {
    token: AccessToken,
    checked_at: DateTime<Utc>,
}

/// The per-process half of the token lifecycle: the memory cache and the single-flight locks.
/// One per process (the app holds it); everything shared lives in the store.
pub struct TokenService {
    cache: Mutex<HashMap<String, Cached>>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// This process's name as a lease holder.
    pub(super) holder: String,
    clock: Arc<dyn Clock>,
}

impl Default for TokenService {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl TokenService {
    /// A service whose token times come from `clock` (tests and the budget benchmark move
    /// time forward without waiting; leases always use the real clock).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        TokenService {
            cache: Mutex::default(),
            flights: Mutex::default(),
            holder: format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 6]>())),
            clock,
        }
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.clock.utc()
    }

    /// The held token if it suits `want`, and whether the record was confirmed recently.
    pub(super) fn cached(&self, id: &str, want: Want, now: DateTime<Utc>) -> Option<(AccessToken, bool)> {
        let cache = self.cache.lock().expect("token cache lock");
        let entry = cache.get(id)?;
        let token = &entry.token;
        let confirmed = now - entry.checked_at < delta(CACHE_RECHECK);
        want.accepts(token.issued_at, token.refresh_at, now)
            .then(|| (AccessToken { source: TokenSource::Memory, ..token.clone() }, confirmed))
    }

    pub(super) fn remember(&self, token: &AccessToken, now: DateTime<Utc>) {
        let entry = Cached { token: token.clone(), checked_at: now };
        self.cache.lock().expect("token cache lock").insert(token.connection.clone(), entry);
    }

    pub(super) fn confirmed(&self, id: &str, now: DateTime<Utc>) {
        if let Some(entry) = self.cache.lock().expect("token cache lock").get_mut(id) {
            entry.checked_at = now;
        }
    }

    pub(super) fn forget(&self, id: &str) {
        self.cache.lock().expect("token cache lock").remove(id);
    }

    pub(super) fn flight(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.flights.lock().expect("flight lock").entry(id.to_owned()).or_default().clone()
    }
}
