//! The cluster-wide cap on simultaneous calls (`TRUECONTEXT_CONCURRENCY`, TrueContext's 3 per
//! API key): N leases `tc-slot:<scope>:<i>` in the store (the scope is the API key's hash, or the
//! connection for bearer tokens), one held for the length of each
//! call. Any number of processes share them, and a crashed holder's slot frees itself when its
//! lease runs out (its time-to-live is the call timeout plus a margin).

use std::time::Duration;

use super::TrueContextError;
use crate::store::lease::{self, Lease};
use crate::store::TableStore;

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
