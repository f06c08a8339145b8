//! Compare-and-swap across separate processes, as several Functions instances do it: two
//! child processes (this test binary re-run in worker mode) and the parent's own tasks
//! increment one counter entity with if-match updates. Every successful update records the
//! count it wrote; the counts must be exactly 1..=N — one winner per version, no lost update.
//! Run against the embedded store (processes sharing one SQLite file) and against Azurite.

use crate::harness;
use std::process::Command;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use truecontext_bridge::store::azure::connection::StorageAccount;
use truecontext_bridge::store::azure::tables::AzureTables;
use truecontext_bridge::store::{local, IfMatch, StoreError, Table, TableStore};

const TASKS_PER_PROCESS: usize = 4;
const INCREMENTS_PER_TASK: usize = 10;

fn open(backend: &str, target: &str) -> Arc<dyn TableStore> {
    match backend {
        "local" => local::open(std::path::Path::new(target), None).unwrap().tables,
        "azure" => {
            let account = StorageAccount::from_connection_string(target).unwrap();
            Arc::new(AzureTables::new(&account, None, "tcbcas").unwrap())
        }
        other => panic!("unknown backend {other}"),
    }
}

/// Increments the counter `times` times; returns the counts this caller wrote.
async fn increment(tables: Arc<dyn TableStore>, pk: String, times: usize) -> Vec<u64> {
    let mut written = Vec::with_capacity(times);
    while written.len() < times {
        let current = tables.get(Table::Runs, &pk, "counter").await.unwrap().expect("counter exists");
        let next = current.properties["count"].as_u64().unwrap() + 1;
        let mut props = Map::new();
        props.insert("count".into(), json!(next));
        match tables.update(Table::Runs, &pk, "counter", props, IfMatch::ETag(current.etag)).await {
            Ok(_) => written.push(next),
            Err(StoreError::PreconditionFailed { .. }) => continue,
            Err(e) => panic!("update failed: {e}"),
        }
    }
    written
}

async fn workers(backend: &str, target: &str, pk: &str) -> Vec<u64> {
    let tables = open(backend, target);
    let tasks: Vec<_> = (0..TASKS_PER_PROCESS)
        .map(|_| tokio::spawn(increment(tables.clone(), pk.to_owned(), INCREMENTS_PER_TASK)))
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Worker mode: run only when the parent test starts this binary with CAS_WORKER set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "started by the cross-process tests as a child process"]
async fn cas_worker() {
    let (Ok(backend), Ok(target), Ok(pk)) =
        (std::env::var("CAS_WORKER"), std::env::var("CAS_TARGET"), std::env::var("CAS_PK"))
    else {
        return;
    };
    let written = workers(&backend, &target, &pk).await;
    println!("CAS-RESULT {}", serde_json::to_string(&written).unwrap());
}

async fn race_across_processes(backend: &str, target: &str) {
    let pk = format!("cas-{}", hex::encode(rand::random::<[u8; 4]>()));
    let tables = open(backend, target);
    let mut zero = Map::new();
    zero.insert("count".into(), json!(0));
    tables.insert(Table::Runs, &pk, "counter", zero).await.unwrap();

    let spawn_child = || {
        Command::new(std::env::current_exe().unwrap())
            .args(["cas_processes::cas_worker", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("CAS_WORKER", backend)
            .env("CAS_TARGET", target)
            .env("CAS_PK", &pk)
            .spawn_output()
    };
    let children = [spawn_child(), spawn_child()];
    let mut counts = workers(backend, target, &pk).await;
    for child in children {
        let output = child.join().unwrap();
        assert!(output.status.success(), "worker failed: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("CAS-RESULT ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no worker result in:\n{stdout}"));
        let theirs: Vec<u64> = serde_json::from_str(line).unwrap();
        assert_eq!(theirs.len(), TASKS_PER_PROCESS * INCREMENTS_PER_TASK, "each worker finished its increments");
        counts.extend(theirs);
    }
    let total = (3 * TASKS_PER_PROCESS * INCREMENTS_PER_TASK) as u64;
    counts.sort_unstable();
    assert_eq!(counts, (1..=total).collect::<Vec<_>>(), "each version had exactly one winner");
    let last = tables.get(Table::Runs, &pk, "counter").await.unwrap().unwrap();
    assert_eq!(last.properties["count"], Value::from(total), "no update was lost");
}

trait SpawnOutput {
    fn spawn_output(self) -> std::thread::JoinHandle<std::process::Output>;
}

impl SpawnOutput for &mut Command {
    fn spawn_output(self) -> std::thread::JoinHandle<std::process::Output> {
        let child = self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_share_one_embedded_store_without_lost_updates() {
    let dir = tempfile::tempdir().unwrap();
    race_across_processes("local", dir.path().to_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_share_azurite_tables_without_lost_updates() {
    let azurite = harness::azurite::Azurite::start();
    race_across_processes("azure", &azurite.connection_string()).await;
}
