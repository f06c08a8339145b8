//! The cluster-wide cap on simultaneous calls (`TRUECONTEXT_CONCURRENCY`, TrueContext's 3 per
//! API key): N leases `tc-slot:<scope>:<i>` in the store (the scope is the API key's hash, or the
//! connection for bearer tokens), one held for the length of each
//! call. Any number of processes share them, and a crashed holder's slot frees itself when its
//! lease runs out (its time-to-live is the call timeout plus a margin).

//!
//! A slot is kept between calls ([`Pool`]): taking and giving back a lease is two store writes,
//! which at 50 ms a call cost more than the calls themselves. A kept slot is reused while it has
//! more life left than a call can take, renewed otherwise, and given back when the caller says
//! ([`Pool::release_all`]: the sync does after every page), so other instances get their turn.

use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;

use super::TrueContextError;
use crate::store::lease::{self, Lease};
use crate::store::TableStore;

/// The slots this client holds between calls.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Lease>>,
}

impl Pool {
    /// A slot of `scope` for one call of at most `call_time`: a kept one, or a new one.
    pub async fn take(
        &self,
        tables: &dyn TableStore,
        scope: &str,
        slots: u32,
        holder: &str,
        ttl: Duration,
        call_time: Duration,
    ) -> Result<Lease, TrueContextError> {
        let prefix = format!("tc-slot:{scope}:");
        let kept = {
            let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            idle.iter().position(|l| l.name.starts_with(&prefix)).map(|i| idle.swap_remove(i))
        };
        if let Some(mut kept) = kept {
            let margin = crate::clock::delta(call_time + Duration::from_secs(5));
            if kept.expires_at - Utc::now() > margin || lease::renew(tables, &mut kept, ttl).await? {
                return Ok(kept);
            }
            // Lost (this process was paused past its life): someone else may hold it now.
        }
        acquire(tables, scope, slots, holder, ttl).await
    }

    /// Keeps `slot` for the next call.
    pub fn put_back(&self, slot: Lease) {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(slot);
    }

    /// Gives every kept slot back to the cluster.
    pub async fn release_all(&self, tables: &dyn TableStore) {
        let kept = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for slot in kept {
            release(tables, slot).await;
        }
    }
}

/// Longest wait for a free slot before the call gives up as transient.
const MAX_SLOT_WAIT: Duration = Duration::from_secs(120);

pub async fn acquire(
    tables: &dyn TableStore,
    scope: &str,
    slots: u32,
    holder: &str,
    ttl: Duration,
) -> Result<Lease, TrueContextError> {
    let deadline = tokio::time::Instant::now() + MAX_SLOT_WAIT;
    let start = rand::random::<u32>();
    loop {
        // Each caller starts at another slot, so they do not all contend for the first.
        for i in 0..slots {
            let name = format!("tc-slot:{scope}:{}", (start.wrapping_add(i)) % slots);
            if let Some(held) = lease::acquire(tables, &name, holder, ttl).await? {
                return Ok(held);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TrueContextError::Unavailable {
                call: "waiting for a call slot".into(),
                reason: format!("all {slots} TrueContext call slots stayed busy for {}s", MAX_SLOT_WAIT.as_secs()),
                retry_after: Duration::from_secs(30),
            });
        }
        tokio::time::sleep(Duration::from_millis(20 + u64::from(rand::random::<u8>() / 4))).await;
    }
}

pub async fn release(tables: &dyn TableStore, held: Lease) {
    if let Err(e) = lease::release(tables, held).await {
        // It expires by itself; until then one slot fewer is usable.
        tracing::warn!(error = %e, "a TrueContext call slot could not be released");
    }
}
