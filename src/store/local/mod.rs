//! The embedded store: one SQLite database (WAL mode) under `LOCAL_STORE_PATH`.
//!
//! Several processes may open the same directory at once (the CLI beside a running server,
//! several instances on one machine): SQLite's file locks serialise writers, every
//! read-modify-write runs in a `BEGIN IMMEDIATE` transaction, and the busy timeout turns
//! contention into waiting rather than errors.
//!
//! Inside one process every call goes to one writer thread that owns the connection and commits
//! in groups: it takes every call waiting, runs each in a savepoint of one `BEGIN IMMEDIATE`
//! transaction, commits once, and only then answers each call. `synchronous = FULL` makes the
//! commit durable (an answered write survives `kill -9` and power loss), and one fsync for a
//! group instead of one per write is what lets the webhook acknowledge thousands of durable
//! pushes a second. A call that fails rolls back its own savepoint only; a group whose commit
//! fails answers every call in it with the error.
//!
//! Conditional writes follow Azure Tables exactly (see the `store` module docs), and the
//! same key, property, name and size rules are enforced, so data valid here is valid there.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::crypto::SecretCipher;
use super::*;

mod blobs;
mod queues;
mod secrets;
mod tables;

pub const DB_FILE: &str = "tcbridge.db";

/// Opens (creating when needed) the store in `dir`.
pub fn open(dir: &Path, encryption_key: Option<&SecretString>) -> StoreResult<Stores> {
    open_with(dir, encryption_key, crate::config::LocalSync::Full)
}

/// [`open`] with the durability `LOCAL_STORE_SYNC` names.
pub fn open_with(
    dir: &Path,
    encryption_key: Option<&SecretString>,
    sync: crate::config::LocalSync,
) -> StoreResult<Stores> {
    create_private_dir(dir)?;
    make_private_files(dir)?;
    let cipher = SecretCipher::load(dir, encryption_key)?;
    let conn = open_connection(&dir.join(DB_FILE))?;
    if sync == crate::config::LocalSync::Normal {
        conn.execute_batch("PRAGMA synchronous = NORMAL;").map_err(db_error)?;
    }
    let reader = std::sync::Mutex::new(open_connection(&dir.join(DB_FILE))?);
    let cipher = Arc::new(cipher);
    let (jobs, queue) = mpsc::channel::<Job>();
    let writer_cipher = cipher.clone();
    let writer = std::thread::Builder::new()
        .name("tcbridge-store".into())
        .spawn(move || write_groups(conn, &writer_cipher, queue))
        .map_err(|e| StoreError::Backend(format!("could not start the store's writer thread: {e}")))?;
    let store = LocalStore(Arc::new(LocalDb { jobs: Some(jobs), writer: Some(writer), reader, cipher }));
    Ok(Stores {
        kind: StoreKind::Local,
        tables: Arc::new(store.clone()),
        blobs: Arc::new(store.clone()),
        queues: Arc::new(store.clone()),
        secrets: Arc::new(store),
        // No Azure identity is needed here; one is made on first use if something asks.
        identity: super::azure::credential::SharedCredential::new(None),
    })
}

/// One handle on the database, shared by the four trait objects of [`Stores`].
#[derive(Clone)]
struct LocalStore(Arc<LocalDb>);

struct LocalDb {
    /// To the writer thread; it stops when this is dropped.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Reads go here, beside the writer (WAL readers see every committed write, and a write is
    /// answered only once committed, so a caller always reads what it wrote).
    reader: std::sync::Mutex<Connection>,
    cipher: Arc<SecretCipher>,
}

impl Drop for LocalDb {
    /// The last handle closes the database before it returns (WAL checkpointed, files settled),
    /// as dropping a connection does.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Told, after the group's commit, whether it failed (and why); then answers its caller.
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;
/// One call: runs against the connection inside its savepoint; says whether it succeeded.
type Job = Box<dyn FnOnce(&mut Connection, &SecretCipher) -> (bool, Finish) + Send>;

/// The most calls committed together (a bound on how long one group holds the write lock).
const MAX_GROUP: usize = 256;

/// The writer thread: group commits until every handle on the store is gone.
fn write_groups(mut conn: Connection, cipher: &SecretCipher, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        run_group(&mut conn, cipher, group);
    }
}

fn run_group(conn: &mut Connection, cipher: &SecretCipher, group: Vec<Job>) {
    let mut finished: Vec<Finish> = Vec::with_capacity(group.len());
    let mut open = conn.execute_batch("BEGIN IMMEDIATE");
    for job in group {
        if open.is_err() {
            // No group transaction (the write lock stayed busy past the timeout): the call runs
            // on its own, in autocommit, and reports what it met.
            let (_, finish) = job(conn, cipher);
            finish(None);
            continue;
        }
        let savepoint = conn.execute_batch("SAVEPOINT call");
        let (ok, finish) = job(conn, cipher);
        let _ = savepoint.and_then(|_| {
            if ok {
                conn.execute_batch("RELEASE call")
            } else {
                conn.execute_batch("ROLLBACK TO call; RELEASE call")
            }
        });
        finished.push(finish);
        if conn.is_autocommit() {
            // SQLite ended the transaction itself (I/O error, disk full): what this group did is
            // gone, so every call so far fails, and the rest start a new transaction.
            let reason = "embedded store: the transaction was rolled back by SQLite".to_owned();
            for finish in finished.drain(..) {
                finish(Some(&reason));
            }
            open = conn.execute_batch("BEGIN IMMEDIATE");
        }
    }
    if open.is_err() {
        return;
    }
    let failure = conn.execute_batch("COMMIT").err().map(|e| db_error(e).to_string());
    if failure.is_some() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for finish in finished {
        finish(failure.as_deref());
    }
}

/// The store's folder, created (or narrowed) to its owner only: it holds every landed document
/// and, sealed, every refresh token.
fn create_private_dir(dir: &Path) -> StoreResult<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    let failed =
        |e: std::io::Error| StoreError::Backend(format!("could not create the store directory {}: {e}", dir.display()));
    builder.create(dir).map_err(failed)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    }
    Ok(())
}

/// The database file is created owner-only before SQLite opens it (SQLite gives its `-wal` and
/// `-shm` files the database file's permissions); files an older version left readable are
/// narrowed.
fn make_private_files(dir: &Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let db = dir.join(DB_FILE);
        let failed = |e: std::io::Error| StoreError::Backend(format!("could not create {}: {e}", db.display()));
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&db).map_err(failed)?;
        for suffix in ["", "-wal", "-shm"] {
            let path = dir.join(format!("{DB_FILE}{suffix}"));
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entities (
    tbl TEXT NOT NULL, pk TEXT NOT NULL, rk TEXT NOT NULL,
    etag TEXT NOT NULL, ts TEXT NOT NULL, props TEXT NOT NULL,
    PRIMARY KEY (tbl, pk, rk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    container TEXT NOT NULL, name TEXT NOT NULL,
    content BLOB NOT NULL, content_type TEXT NOT NULL, etag TEXT NOT NULL, modified TEXT NOT NULL,
    PRIMARY KEY (container, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL,
    inserted_ms INTEGER NOT NULL, visible_ms INTEGER NOT NULL,
    dequeue_count INTEGER NOT NULL, pop_receipt TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_ms, seq);
CREATE TABLE IF NOT EXISTS secrets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, version TEXT NOT NULL, created TEXT NOT NULL, sealed BLOB NOT NULL,
    UNIQUE (name, version)
);
";

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(db_error)?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(db_error)?;
    // FULL: a write we acknowledge (a submission, a rotated refresh token) survives a crash.
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;").map_err(db_error)?;
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;")).map_err(db_error)?;
    Ok(conn)
}

fn db_error(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("embedded store: {e}"))
}

impl LocalStore {
    /// Runs a read on the blocking pool with the reader connection: no commit to wait for.
    async fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &SecretCipher) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut conn = db.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut conn, &db.cipher)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Runs `work` on the writer thread, in the next group; answers after its group committed.
    async fn run<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &SecretCipher) -> StoreResult<T> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel::<StoreResult<T>>();
        let job: Job = Box::new(move |conn, cipher| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn, cipher)))
                .unwrap_or_else(|_| Err(StoreError::Backend("a store call panicked".into())));
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |failed| {
                let result = match failed {
                    Some(reason) if result.is_ok() => Err(StoreError::Backend(reason.to_owned())),
                    _ => result,
                };
                let _ = answer.send(result);
            });
            (ok, finish)
        });
        let jobs = self.0.jobs.as_ref().expect("the sender lives as long as the store");
        jobs.send(job).map_err(|_| StoreError::Backend("the store's writer thread has stopped".into()))?;
        answered.await.unwrap_or_else(|_| Err(StoreError::Backend("the store call was not answered".into())))
    }
}

/// A read-modify-write: a savepoint inside the group's `BEGIN IMMEDIATE` transaction, which
/// holds SQLite's write lock, so two processes never both read before either writes.
fn write_tx(conn: &mut Connection) -> StoreResult<rusqlite::Savepoint<'_>> {
    conn.savepoint().map_err(db_error)
}

fn new_etag() -> ETag {
    ETag(format!("W/\"{}\"", hex::encode(rand::random::<[u8; 12]>())))
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

fn entity_name(table: Table, pk: &str, rk: &str) -> String {
    format!("entity {pk:?}/{rk:?} in table {}", table.name())
}

/// The current ETag of an entity, if it exists.
fn current_etag(tx: &Connection, table: Table, pk: &str, rk: &str) -> StoreResult<Option<String>> {
    tx.query_row(
        "SELECT etag FROM entities WHERE tbl = ?1 AND pk = ?2 AND rk = ?3",
        params![table.name(), pk, rk],
        |row| row.get(0),
    )
    .optional()
    .map_err(db_error)
}

/// Applies an if-match condition the way Azure Tables does: 404 before 412.
fn check_condition(current: Option<&str>, condition: &IfMatch, what: impl Fn() -> String) -> StoreResult<()> {
    match (current, condition) {
        (None, _) => Err(StoreError::NotFound { what: what() }),
        (Some(_), IfMatch::Any) => Ok(()),
        (Some(etag), IfMatch::ETag(expected)) if etag == expected.0 => Ok(()),
        (Some(_), IfMatch::ETag(_)) => Err(StoreError::PreconditionFailed { what: what() }),
    }
}

fn write_entity(tx: &Connection, table: Table, pk: &str, rk: &str, props: &Map<String, Value>) -> StoreResult<ETag> {
    let etag = new_etag();
    tx.execute(
        "INSERT INTO entities (tbl, pk, rk, etag, ts, props) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (tbl, pk, rk) DO UPDATE SET etag = excluded.etag, ts = excluded.ts, props = excluded.props",
        params![table.name(), pk, rk, etag.0, Utc::now().to_rfc3339(), Value::Object(props.clone()).to_string()],
    )
    .map_err(db_error)?;
    Ok(etag)
}

fn row_to_entity(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, String, String)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
}

fn build_entity((pk, rk, etag, ts, props): (String, String, String, String, String)) -> StoreResult<Entity> {
    let properties = match serde_json::from_str(&props) {
        Ok(Value::Object(map)) => map,
        _ => return Err(StoreError::Backend(format!("entity {pk:?}/{rk:?} holds unreadable properties"))),
    };
    Ok(Entity { partition_key: pk, row_key: rk, etag: ETag(etag), timestamp: parse_time(&ts), properties })
}

fn uuid_like() -> String {
    let hex = hex::encode(rand::random::<[u8; 16]>());
    let mut chars = hex.chars();
    [8, 4, 4, 4, 12].map(|n| chars.by_ref().take(n).collect::<String>()).join("-")
}
