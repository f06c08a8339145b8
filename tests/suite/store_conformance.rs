//! The storage conformance suite (`tests/suite/common/conformance.rs`) against the embedded store,
//! plus checks only the embedded store can be held to (encryption at rest, sharing a
//! directory between handles).

use crate::common;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use tempfile::TempDir;

use common::conformance as c;
use truecontext_bridge::secret::SecretString;
use truecontext_bridge::store::{local, StoreError, Stores};

fn open(dir: &Path) -> Stores {
    local::open(dir, None).unwrap_or_else(|e| panic!("open the local store in {}: {e}", dir.display()))
}

fn fresh() -> (TempDir, Stores) {
    let dir = TempDir::new().expect("temp dir");
    let stores = open(dir.path());
    (dir, stores)
}

fn random_key() -> SecretString {
    SecretString::new(base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_crud() {
    let (_dir, s) = fresh();
    c::table_insert_get(&s).await;
    c::table_insert_conflict(&s).await;
    c::table_update(&s).await;
    c::table_upsert(&s).await;
    c::table_delete(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_validation() {
    let (_dir, s) = fresh();
    c::table_invalid_keys(&s).await;
    c::table_invalid_properties(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn table_range_reads() {
    let (_dir, s) = fresh();
    c::query_order_and_paging(&s).await;
    c::query_ranges(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn table_page_cap() {
    let (_dir, s) = fresh();
    c::query_page_cap(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn table_cas_race() {
    let (_dir, s) = fresh();
    c::cas_counter_race(std::slice::from_ref(&s)).await;
    c::cas_rounds(std::slice::from_ref(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases() {
    let (_dir, s) = fresh();
    c::lease_exclusive(std::slice::from_ref(&s)).await;
    c::lease_expiry(std::slice::from_ref(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_basics() {
    let (_dir, s) = fresh();
    c::queue_roundtrip(&s).await;
    c::queue_order_and_max(&s).await;
    c::queue_invalid(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_visibility() {
    let (_dir, s) = fresh();
    c::queue_visibility_timeout(&s).await;
    c::queue_delay(&s).await;
    c::queue_set_visibility(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_concurrent_dequeue() {
    let (_dir, s) = fresh();
    c::queue_concurrent_dequeue(std::slice::from_ref(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs() {
    let (_dir, s) = fresh();
    c::blob_roundtrip(&s).await;
    c::blob_list(&s).await;
    c::blob_delete_and_invalid(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets() {
    let (_dir, s) = fresh();
    c::secret_versions(&s).await;
    c::secret_reuse_after_delete(&s).await;
    c::secret_invalid_names(&s).await;
}

/// Two handles on one directory, as two instances of the function app sharing a volume:
/// CAS, leases and queue delivery must hold across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_same_dir() {
    let dir = TempDir::new().unwrap();
    let pair = [open(dir.path()), open(dir.path())];

    // What one writes, the other reads.
    let pk = c::unique("shared");
    let etag = pair[0]
        .tables
        .insert(truecontext_bridge::store::Table::Runs, &pk, "r", c::props(serde_json::json!({"v": 1})))
        .await
        .unwrap();
    let seen = pair[1]
        .tables
        .get(truecontext_bridge::store::Table::Runs, &pk, "r")
        .await
        .unwrap()
        .expect("visible to the other handle");
    assert_eq!(seen.etag, etag);
    let name = c::unique("shared-");
    pair[0].secrets.set(&name, &SecretString::new("both")).await.unwrap();
    let got = pair[1].secrets.get(&name, None).await.unwrap().expect("secret visible to the other handle");
    assert_eq!(got.value.expose(), "both", "both handles use the same generated key file");

    c::cas_counter_race(&pair).await;
    c::cas_rounds(&pair).await;
    c::lease_exclusive(&pair).await;
    c::lease_expiry(&pair).await;
    c::queue_concurrent_dequeue(&pair).await;
}

/// The whole suite through `run_all`, all checks sharing one directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_on_one_shared_dir() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().to_owned();
    c::run_all(&|| open(&path)).await;
}

/// Data survives closing every handle and opening the directory again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_survives_reopen() {
    use truecontext_bridge::store::Table;
    let dir = TempDir::new().unwrap();
    let pk = c::unique("persist");
    let name = c::unique("persist-");
    let q = c::unique("q-persist-");
    let etag = {
        let s = open(dir.path());
        s.queues.enqueue(&q, "still here", Duration::ZERO).await.unwrap();
        s.blobs.put("docs", "a.json", b"{}", "application/json", false).await.unwrap();
        s.secrets.set(&name, &SecretString::new("kept")).await.unwrap();
        s.tables.insert(Table::Runs, &pk, "r", c::props(serde_json::json!({"v": 7}))).await.unwrap()
    };
    let s = open(dir.path());
    let e = s.tables.get(Table::Runs, &pk, "r").await.unwrap().expect("entity after reopen");
    assert_eq!((e.etag, e.properties), (etag, c::props(serde_json::json!({"v": 7}))));
    assert_eq!(s.secrets.get(&name, None).await.unwrap().expect("secret after reopen").value.expose(), "kept");
    assert_eq!(s.blobs.get("docs", "a.json").await.unwrap().expect("blob after reopen").content, b"{}");
    let m = s.queues.dequeue(&q, 1, Duration::from_secs(30)).await.unwrap().pop().expect("message after reopen");
    assert_eq!(m.body, "still here");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that no file under `dir` holds `plaintext`, in UTF-8 or UTF-16.
fn assert_not_on_disk(dir: &Path, plaintext: &str) {
    let utf16le: Vec<u8> = plaintext.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let files = files_under(dir);
    assert!(
        files.iter().any(|f| f.file_name().is_some_and(|n| n == "tcbridge.db")),
        "expected tcbridge.db in {files:?}"
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!contains(&bytes, plaintext.as_bytes()), "{} holds the secret in plain text", file.display());
        assert!(!contains(&bytes, &utf16le), "{} holds the secret in plain text (UTF-16)", file.display());
    }
}

/// Secrets are encrypted at rest, with an explicit key or with the generated key file, while
/// the store is open (WAL and all) and after it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_encrypted_at_rest() {
    for explicit in [true, false] {
        let dir = TempDir::new().unwrap();
        let key = random_key();
        let plaintext = format!("plain-{}-refresh-token-value", c::unique("marker"));
        let name = c::unique("at-rest-");
        let s = local::open(dir.path(), explicit.then_some(&key)).unwrap();
        let v1 = s.secrets.set(&name, &SecretString::new(plaintext.clone())).await.unwrap();
        // A second version too, so old versions are covered.
        s.secrets.set(&name, &SecretString::new(format!("{plaintext}-v2"))).await.unwrap();
        assert_eq!(s.secrets.get(&name, Some(&v1)).await.unwrap().unwrap().value.expose(), plaintext);
        assert_not_on_disk(dir.path(), &plaintext);
        drop(s);
        assert_not_on_disk(dir.path(), &plaintext);
    }
}

/// Opening a directory with a different key cannot read its secrets: an error, never another
/// value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_key_fails_to_read() {
    let dir = TempDir::new().unwrap();
    let key = random_key();
    let name = c::unique("keyed-");
    let version = {
        let s = local::open(dir.path(), Some(&key)).unwrap();
        s.secrets.set(&name, &SecretString::new("only-with-the-right-key")).await.unwrap()
    };

    let assert_unreadable = |result: Result<Option<truecontext_bridge::store::SecretVersion>, StoreError>,
                             what: &str| match result {
        Err(StoreError::Backend(_)) | Err(StoreError::Invalid { .. }) => {}
        Ok(Some(v)) => panic!(
            "{what}: read a secret with the wrong key (matches the original: {})",
            v.value.expose() == "only-with-the-right-key"
        ),
        other => panic!("{what}: expected an error, got {other:?}"),
    };

    // Another explicit key, and the generated key file (no explicit key), are both wrong.
    for (label, other_key) in [("another explicit key", Some(random_key())), ("the key file", None)] {
        match local::open(dir.path(), other_key.as_ref()) {
            // Refusing to open at all is also acceptable: it is an error, not garbage.
            Err(_) => {}
            Ok(s) => {
                assert_unreadable(s.secrets.get(&name, None).await, label);
                assert_unreadable(s.secrets.get(&name, Some(&version)).await, label);
            }
        }
    }

    // The right key still works.
    let s = local::open(dir.path(), Some(&key)).unwrap();
    assert_eq!(s.secrets.get(&name, None).await.unwrap().unwrap().value.expose(), "only-with-the-right-key");
}

/// A malformed explicit key is refused when opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_key_is_refused() {
    let dir = TempDir::new().unwrap();
    for bad in ["", "not base64!", "c2hvcnQ="] {
        match local::open(dir.path(), Some(&SecretString::new(bad))) {
            Err(StoreError::Invalid { .. }) => {}
            Err(other) => panic!("key {bad:?}: expected Invalid, got {other:?}"),
            Ok(_) => panic!("key {bad:?}: opened with a malformed key"),
        }
    }
}

/// Issue 20: the embedded store holds every landed document and the sealed refresh tokens; its
/// folder and files are its owner's alone, even where the folder or an older file existed.
#[cfg(unix)]
#[tokio::test]
async fn the_embedded_store_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("store");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stores = truecontext_bridge::store::local::open(&dir, None).unwrap();
    stores.blobs.put("submissions", "raw/c/1.json", b"{}", "application/json", false).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path) & 0o077, 0, "{} is readable by others", path.display());
        files += 1;
    }
    assert!(files >= 2, "the database and its write-ahead log at least");
}
