//! The storage conformance suite's table and lease checks against Table storage (Azurite),
//! through our REST client on azure_core 1.x's pipeline, and a compare-and-swap race between two
//! processes.

use crate::{common, harness};
use std::sync::Arc;

use common::conformance as c;
use harness::azurite::Azurite;
use truecontext_bridge::store::azure::connection::StorageAccount;
use truecontext_bridge::store::azure::tables::AzureTables;
use truecontext_bridge::store::{local, Stores};

/// Tables in Azurite; the other primitives from an embedded store (they have their own suites).
fn stores(azurite: &Azurite, dir: &std::path::Path) -> Stores {
    let account = StorageAccount::from_connection_string(&azurite.connection_string()).unwrap();
    let mut stores = local::open(dir, None).unwrap();
    stores.tables = Arc::new(AzureTables::new(&account, None, "tcbtest").unwrap());
    stores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_pass_the_conformance_suite_on_azurite() {
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let s = stores(&azurite, dir.path());
    c::tables_all(&s).await;
    c::ranges_all(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_swap_and_leases_hold_across_handles_on_azurite() {
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let handles: Vec<Stores> = (0..3).map(|_| stores(&azurite, dir.path())).collect();
    c::cas_all(&handles).await;
    c::leases_all(&handles).await;
}
