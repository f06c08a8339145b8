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

#[async_trait]
impl TableStore for LocalStore {
    async fn get(&self, table: Table, pk: &str, rk: &str) -> StoreResult<Option<Entity>> {
        check_entity(pk, rk, None)?;
        let (pk, rk) = (pk.to_owned(), rk.to_owned());
        self.read(move |conn, _| {
            let row = conn
                .query_row(
                    "SELECT pk, rk, etag, ts, props FROM entities WHERE tbl = ?1 AND pk = ?2 AND rk = ?3",
                    params![table.name(), pk, rk],
                    row_to_entity,
                )
                .optional()
                .map_err(db_error)?;
            row.map(build_entity).transpose()
        })
        .await
    }

    async fn insert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag> {
        check_entity(pk, rk, Some(&props))?;
        let (pk, rk) = (pk.to_owned(), rk.to_owned());
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            if current_etag(&tx, table, &pk, &rk)?.is_some() {
                return Err(StoreError::AlreadyExists { what: entity_name(table, &pk, &rk) });
            }
            let etag = write_entity(&tx, table, &pk, &rk, &props)?;
            tx.commit().map_err(db_error)?;
            Ok(etag)
        })
        .await
    }

    async fn update(
        &self,
        table: Table,
        pk: &str,
        rk: &str,
        props: Map<String, Value>,
        condition: IfMatch,
    ) -> StoreResult<ETag> {
        check_entity(pk, rk, Some(&props))?;
        let (pk, rk) = (pk.to_owned(), rk.to_owned());
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            let current = current_etag(&tx, table, &pk, &rk)?;
            check_condition(current.as_deref(), &condition, || entity_name(table, &pk, &rk))?;
            let etag = write_entity(&tx, table, &pk, &rk, &props)?;
            tx.commit().map_err(db_error)?;
            Ok(etag)
        })
        .await
    }

    async fn upsert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag> {
        check_entity(pk, rk, Some(&props))?;
        let (pk, rk) = (pk.to_owned(), rk.to_owned());
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            let etag = write_entity(&tx, table, &pk, &rk, &props)?;
            tx.commit().map_err(db_error)?;
            Ok(etag)
        })
        .await
    }

    async fn delete(&self, table: Table, pk: &str, rk: &str, condition: IfMatch) -> StoreResult<()> {
        check_entity(pk, rk, None)?;
        let (pk, rk) = (pk.to_owned(), rk.to_owned());
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            let current = current_etag(&tx, table, &pk, &rk)?;
            check_condition(current.as_deref(), &condition, || entity_name(table, &pk, &rk))?;
            tx.execute("DELETE FROM entities WHERE tbl = ?1 AND pk = ?2 AND rk = ?3", params![table.name(), pk, rk])
                .map_err(db_error)?;
            tx.commit().map_err(db_error)
        })
        .await
    }

    async fn query(
        &self,
        table: Table,
        pk: &str,
        range: &RowRange,
        limit: usize,
        continuation: Option<&str>,
    ) -> StoreResult<Page> {
        validate_key("partition key", pk)?;
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        let after = continuation.map(decode_continuation).transpose()?;
        let (pk, range) = (pk.to_owned(), range.clone());
        self.read(move |conn, _| {
            // Fetch one extra row to learn whether another page follows.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT pk, rk, etag, ts, props FROM entities
                     WHERE tbl = ?1 AND pk = ?2
                       AND (?3 IS NULL OR rk >= ?3) AND (?4 IS NULL OR rk < ?4) AND (?5 IS NULL OR rk > ?5)
                     ORDER BY rk LIMIT ?6",
                )
                .map_err(db_error)?;
            let rows = stmt
                .query_map(params![table.name(), pk, range.start, range.end, after, (limit + 1) as i64], row_to_entity)
                .map_err(db_error)?;
            let mut entities = Vec::with_capacity(limit + 1);
            for row in rows {
                entities.push(build_entity(row.map_err(db_error)?)?);
            }
            Ok(page_of(entities, limit))
        })
        .await
    }
}

fn validate_blob_name(name: &str) -> StoreResult<()> {
    if name.is_empty() || name.len() > 1024 || name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(StoreError::invalid(
            "blob name",
            format!("{name:?} must be 1-1024 characters, no control characters"),
        ));
    }
    Ok(())
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn put(
        &self,
        container: &str,
        name: &str,
        content: &[u8],
        content_type: &str,
        only_if_absent: bool,
    ) -> StoreResult<ETag> {
        validate_container_name("container", container)?;
        validate_blob_name(name)?;
        let (container, name, content, content_type) =
            (container.to_owned(), name.to_owned(), content.to_vec(), content_type.to_owned());
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            if only_if_absent {
                let exists: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM blobs WHERE container = ?1 AND name = ?2)",
                        params![container, name],
                        |row| row.get(0),
                    )
                    .map_err(db_error)?;
                if exists {
                    return Err(StoreError::AlreadyExists { what: format!("blob {container}/{name}") });
                }
            }
            let etag = new_etag();
            tx.execute(
                "INSERT OR REPLACE INTO blobs (container, name, content, content_type, etag, modified)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![container, name, content, content_type, etag.0, Utc::now().to_rfc3339()],
            )
            .map_err(db_error)?;
            tx.commit().map_err(db_error)?;
            Ok(etag)
        })
        .await
    }

    async fn get(&self, container: &str, name: &str) -> StoreResult<Option<Blob>> {
        validate_container_name("container", container)?;
        validate_blob_name(name)?;
        let (container, name) = (container.to_owned(), name.to_owned());
        self.read(move |conn, _| {
            conn.query_row(
                "SELECT content, content_type, etag FROM blobs WHERE container = ?1 AND name = ?2",
                params![container, name],
                |row| Ok(Blob { content: row.get(0)?, content_type: row.get(1)?, etag: ETag(row.get(2)?) }),
            )
            .optional()
            .map_err(db_error)
        })
        .await
    }

    async fn delete(&self, container: &str, name: &str) -> StoreResult<()> {
        validate_container_name("container", container)?;
        validate_blob_name(name)?;
        let (container, name) = (container.to_owned(), name.to_owned());
        self.run(move |conn, _| {
            let deleted = conn
                .execute("DELETE FROM blobs WHERE container = ?1 AND name = ?2", params![container, name])
                .map_err(db_error)?;
            if deleted == 0 {
                return Err(StoreError::NotFound { what: format!("blob {container}/{name}") });
            }
            Ok(())
        })
        .await
    }

    async fn list(&self, container: &str, prefix: &str) -> StoreResult<Vec<String>> {
        validate_container_name("container", container)?;
        let (container, prefix) = (container.to_owned(), prefix.to_owned());
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name FROM blobs WHERE container = ?1 AND substr(name, 1, ?3) = ?2 ORDER BY name",
                )
                .map_err(db_error)?;
            let names = stmt
                .query_map(params![container, prefix, prefix.chars().count() as i64], |row| row.get(0))
                .map_err(db_error)?;
            names.collect::<Result<Vec<String>, _>>().map_err(db_error)
        })
        .await
    }
}

fn new_receipt() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[async_trait]
impl QueueStore for LocalStore {
    async fn enqueue(&self, queue: &str, body: &str, delay: Duration) -> StoreResult<String> {
        validate_container_name("queue name", queue)?;
        if body.len() > MAX_QUEUE_MESSAGE_BYTES {
            return Err(StoreError::invalid(
                "queue message",
                format!("{} bytes is over the {} KiB limit", body.len(), MAX_QUEUE_MESSAGE_BYTES / 1024),
            ));
        }
        let (queue, body) = (queue.to_owned(), body.to_owned());
        self.run(move |conn, _| {
            let id = uuid_like();
            let now = now_ms();
            conn.execute(
                "INSERT INTO messages (queue, id, body, inserted_ms, visible_ms, dequeue_count, pop_receipt)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
                params![queue, id, body, now, now + duration_ms(delay), new_receipt()],
            )
            .map_err(db_error)?;
            Ok(id)
        })
        .await
    }

    async fn dequeue(&self, queue: &str, max: usize, visibility: Duration) -> StoreResult<Vec<QueueMessage>> {
        validate_container_name("queue name", queue)?;
        let queue = queue.to_owned();
        let max = max.clamp(1, 32); // Azure's per-call maximum.
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            let now = now_ms();
            let picked: Vec<(i64, String, String, i64, u32)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT seq, id, body, inserted_ms, dequeue_count FROM messages
                         WHERE queue = ?1 AND visible_ms <= ?2 ORDER BY seq LIMIT ?3",
                    )
                    .map_err(db_error)?;
                let rows = stmt
                    .query_map(params![queue, now, max as i64], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
                    })
                    .map_err(db_error)?;
                rows.collect::<Result<_, _>>().map_err(db_error)?
            };
            let mut messages = Vec::with_capacity(picked.len());
            for (seq, id, body, inserted_ms, count) in picked {
                let receipt = new_receipt();
                tx.execute(
                    "UPDATE messages SET visible_ms = ?1, dequeue_count = dequeue_count + 1, pop_receipt = ?2
                     WHERE seq = ?3",
                    params![now + duration_ms(visibility), receipt, seq],
                )
                .map_err(db_error)?;
                messages.push(QueueMessage {
                    id,
                    pop_receipt: receipt,
                    dequeue_count: count + 1,
                    inserted_at: ms_to_time(inserted_ms),
                    body,
                });
            }
            tx.commit().map_err(db_error)?;
            Ok(messages)
        })
        .await
    }

    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StoreResult<()> {
        validate_container_name("queue name", queue)?;
        let (queue, id, receipt) = (queue.to_owned(), id.to_owned(), pop_receipt.to_owned());
        self.run(move |conn, _| {
            let deleted = conn
                .execute(
                    "DELETE FROM messages WHERE queue = ?1 AND id = ?2 AND pop_receipt = ?3",
                    params![queue, id, receipt],
                )
                .map_err(db_error)?;
            if deleted == 0 {
                return Err(StoreError::NotFound { what: format!("message {id} with that pop receipt in {queue}") });
            }
            Ok(())
        })
        .await
    }

    async fn set_visibility(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
    ) -> StoreResult<String> {
        validate_container_name("queue name", queue)?;
        let (queue, id, receipt) = (queue.to_owned(), id.to_owned(), pop_receipt.to_owned());
        self.run(move |conn, _| {
            let fresh = new_receipt();
            let updated = conn
                .execute(
                    "UPDATE messages SET visible_ms = ?1, pop_receipt = ?2
                     WHERE queue = ?3 AND id = ?4 AND pop_receipt = ?5",
                    params![now_ms() + duration_ms(visibility), fresh, queue, id, receipt],
                )
                .map_err(db_error)?;
            if updated == 0 {
                return Err(StoreError::NotFound { what: format!("message {id} with that pop receipt in {queue}") });
            }
            Ok(fresh)
        })
        .await
    }

    async fn len(&self, queue: &str) -> StoreResult<usize> {
        validate_container_name("queue name", queue)?;
        let queue = queue.to_owned();
        self.read(move |conn, _| {
            conn.query_row("SELECT COUNT(*) FROM messages WHERE queue = ?1", params![queue], |row| row.get::<_, i64>(0))
                .map(|n| n as usize)
                .map_err(db_error)
        })
        .await
    }
}

fn uuid_like() -> String {
    let hex = hex::encode(rand::random::<[u8; 16]>());
    let mut chars = hex.chars();
    [8, 4, 4, 4, 12].map(|n| chars.by_ref().take(n).collect::<String>()).join("-")
}

fn secret_aad(name: &str, version: &str) -> Vec<u8> {
    format!("tcbridge-secret\0{name}\0{version}").into_bytes()
}

#[async_trait]
impl SecretStore for LocalStore {
    async fn set(&self, name: &str, value: &SecretString) -> StoreResult<String> {
        validate_secret_name(name)?;
        let name = name.to_owned();
        let value = value.clone();
        self.run(move |conn, cipher| {
            let version = hex::encode(rand::random::<[u8; 16]>());
            let sealed = cipher.seal(value.expose().as_bytes(), &secret_aad(&name, &version))?;
            conn.execute(
                "INSERT INTO secrets (name, version, created, sealed) VALUES (?1, ?2, ?3, ?4)",
                params![name, version, Utc::now().to_rfc3339(), sealed],
            )
            .map_err(db_error)?;
            Ok(version)
        })
        .await
    }

    async fn get(&self, name: &str, version: Option<&str>) -> StoreResult<Option<SecretVersion>> {
        validate_secret_name(name)?;
        let (name, version) = (name.to_owned(), version.map(str::to_owned));
        self.read(move |conn, cipher| {
            let row: Option<(String, String, Vec<u8>)> = conn
                .query_row(
                    "SELECT version, created, sealed FROM secrets
                     WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY seq DESC LIMIT 1",
                    params![name, version],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(db_error)?;
            let Some((version, created, sealed)) = row else {
                return Ok(None);
            };
            let plain = cipher.open(&sealed, &secret_aad(&name, &version))?;
            let text =
                std::str::from_utf8(&plain).map_err(|_| StoreError::Backend("a stored secret is not UTF-8".into()))?;
            Ok(Some(SecretVersion { value: SecretString::new(text), version, created: parse_time(&created) }))
        })
        .await
    }

    async fn versions(&self, name: &str) -> StoreResult<Vec<String>> {
        validate_secret_name(name)?;
        let name = name.to_owned();
        self.read(move |conn, _| {
            let mut stmt =
                conn.prepare_cached("SELECT version FROM secrets WHERE name = ?1 ORDER BY seq").map_err(db_error)?;
            let rows = stmt.query_map(params![name], |row| row.get(0)).map_err(db_error)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(db_error)
        })
        .await
    }

    async fn delete(&self, name: &str) -> StoreResult<()> {
        validate_secret_name(name)?;
        let name = name.to_owned();
        self.run(move |conn, _| {
            let deleted = conn.execute("DELETE FROM secrets WHERE name = ?1", params![name]).map_err(db_error)?;
            if deleted == 0 {
                return Err(StoreError::NotFound { what: format!("secret {name}") });
            }
            Ok(())
        })
        .await
    }
}
