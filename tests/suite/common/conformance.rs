//! Backend-agnostic conformance suite for the storage primitives in `truecontext_bridge::store`.
//!
//! Every backend (the embedded SQLite store, the Azure store) must pass every check here. The
//! checks hold the backends to Azure Tables / Blobs / Queues and Key Vault semantics.
//!
//! Each check uses its own randomly suffixed partition keys, lease names, queue names,
//! containers and secret names, so checks never interfere with each other and can run against
//! a shared (even long-lived) backend. Checks that race take a slice of handles: pass one
//! handle to race inside one instance, or several handles on the same backend to race as
//! several instances would.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::seq::SliceRandom;
use serde_json::{json, Map, Value};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use truecontext_bridge::secret::SecretString;
use truecontext_bridge::store::lease;
use truecontext_bridge::store::{
    ETag, Entity, IfMatch, RowRange, StoreError, Stores, Table, MAX_PAGE_SIZE, MAX_QUEUE_MESSAGE_BYTES,
};

/// Asserts that `$e` is `Err` matching the given `StoreError` pattern, printing what it was
/// otherwise.
macro_rules! assert_err {
    ($e:expr, $p:pat $(,)?) => {
        match $e {
            Err($p) => {}
            other => panic!("expected Err({}), got {:?} at {}:{}", stringify!($p), other, file!(), line!()),
        }
    };
    ($e:expr, $p:pat, $($ctx:tt)+) => {
        match $e {
            Err($p) => {}
            other => panic!(
                "expected Err({}), got {:?} [{}] at {}:{}",
                stringify!($p),
                other,
                format!($($ctx)+),
                file!(),
                line!()
            ),
        }
    };
}

/// Tolerance for "recent" timestamps: generous, so clock skew against a remote backend
/// does not make the check flaky.
const CLOCK_SKEW_SECS: i64 = 120;

/// A short visibility / TTL and the sleep that outlasts it.
const SHORT: Duration = Duration::from_secs(1);
const PAST_SHORT: Duration = Duration::from_millis(1300);

/// A name unique to one check: `prefix` followed by 16 lowercase hex digits. Valid as a
/// partition key, row key, lease name, queue name, container name and secret name as long
/// as `prefix` is.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// A property map from a `json!({...})` object.
pub fn props(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("props() needs a JSON object, got {other}"),
    }
}

fn assert_recent(t: DateTime<Utc>, before: DateTime<Utc>, after: DateTime<Utc>, what: &str) {
    let lo = before - chrono::TimeDelta::seconds(CLOCK_SKEW_SECS);
    let hi = after + chrono::TimeDelta::seconds(CLOCK_SKEW_SECS);
    assert!(lo <= t && t <= hi, "{what} timestamp {t} is not between {before} and {after} (±{CLOCK_SKEW_SECS}s)");
}

fn row_keys(entities: &[Entity]) -> Vec<String> {
    entities.iter().map(|e| e.row_key.clone()).collect()
}

/// Reads a whole range page by page; returns the entities and the size of each page.
pub async fn query_all(
    s: &Stores,
    table: Table,
    pk: &str,
    range: &RowRange,
    limit: usize,
) -> (Vec<Entity>, Vec<usize>) {
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    let mut continuation: Option<String> = None;
    for _ in 0..10_000 {
        let page = s
            .tables
            .query(table, pk, range, limit, continuation.as_deref())
            .await
            .unwrap_or_else(|e| panic!("query {pk} {range:?} limit {limit}: {e}"));
        sizes.push(page.entities.len());
        all.extend(page.entities);
        match page.continuation {
            Some(next) => {
                assert_ne!(continuation.as_deref(), Some(next.as_str()), "continuation token did not advance");
                continuation = Some(next);
            }
            None => return (all, sizes),
        }
    }
    panic!("query {pk} {range:?} did not finish within 10000 pages");
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

const T: Table = Table::Cursors;

/// Insert, then get: properties round-trip, the ETag is present and the timestamp is recent.
pub async fn table_insert_get(s: &Stores) {
    let pk = unique("ins");
    let rk = "row-1 with spaces and ünïcödé";
    let written = props(json!({
        "name": "alpha",
        "text": "line1\nline2 \"quoted\" ✓",
        "count": 42,
        "big": 9_007_199_254_740_000_i64,
        "negative": -7,
        "ratio": 1.5,
        "flag": true,
        "off": false,
        "empty": "",
    }));

    assert!(s.tables.get(T, &pk, rk).await.unwrap().is_none(), "get before insert must be None");

    let before = Utc::now();
    let etag = s.tables.insert(T, &pk, rk, written.clone()).await.expect("insert");
    let after = Utc::now();
    assert!(!etag.0.is_empty(), "insert returned an empty ETag");

    let entity = s.tables.get(T, &pk, rk).await.unwrap().expect("entity after insert");
    assert_eq!(entity.partition_key, pk);
    assert_eq!(entity.row_key, rk);
    assert_eq!(entity.etag, etag, "get must return the ETag insert returned");
    assert_eq!(entity.properties, written, "properties must round-trip exactly");
    assert_recent(entity.timestamp, before, after, "entity");

    // Same partition, other row; same row, other partition; same keys, other table: all absent.
    assert!(s.tables.get(T, &pk, "row-2").await.unwrap().is_none());
    assert!(s.tables.get(T, &unique("ins"), rk).await.unwrap().is_none());
    assert!(s.tables.get(Table::Submissions, &pk, rk).await.unwrap().is_none());
}

/// Inserting an existing entity fails with `AlreadyExists` and leaves it unchanged.
pub async fn table_insert_conflict(s: &Stores) {
    let pk = unique("dup");
    let etag = s.tables.insert(T, &pk, "r", props(json!({"v": 1}))).await.expect("first insert");
    assert_err!(
        s.tables.insert(T, &pk, "r", props(json!({"v": 2}))).await,
        StoreError::AlreadyExists { .. },
        "second insert"
    );
    let entity = s.tables.get(T, &pk, "r").await.unwrap().unwrap();
    assert_eq!(entity.properties, props(json!({"v": 1})));
    assert_eq!(entity.etag, etag);
}

/// Update with the current ETag replaces the properties and yields a new ETag; a stale ETag
/// fails with `PreconditionFailed` and changes nothing; updating a missing entity is `NotFound`.
pub async fn table_update(s: &Stores) {
    let pk = unique("upd");
    let e1 = s.tables.insert(T, &pk, "r", props(json!({"v": 1, "only_in_v1": "x"}))).await.unwrap();

    let e2 = s
        .tables
        .update(T, &pk, "r", props(json!({"v": 2})), IfMatch::ETag(e1.clone()))
        .await
        .expect("update with the current ETag");
    assert_ne!(e2, e1, "update must change the ETag");
    let entity = s.tables.get(T, &pk, "r").await.unwrap().unwrap();
    assert_eq!(entity.etag, e2);
    assert_eq!(entity.properties, props(json!({"v": 2})), "update replaces, it does not merge");

    // Stale ETag: refused, nothing changes.
    assert_err!(
        s.tables.update(T, &pk, "r", props(json!({"v": 3})), IfMatch::ETag(e1.clone())).await,
        StoreError::PreconditionFailed { .. },
        "update with a stale ETag"
    );
    let entity = s.tables.get(T, &pk, "r").await.unwrap().unwrap();
    assert_eq!(entity.etag, e2, "a failed update must not change the ETag");
    assert_eq!(entity.properties, props(json!({"v": 2})), "a failed update must not change the entity");

    // A fabricated ETag is just as stale.
    assert_err!(
        s.tables.update(T, &pk, "r", props(json!({"v": 3})), IfMatch::ETag(ETag("W/\"bogus\"".into()))).await,
        StoreError::PreconditionFailed { .. },
        "update with a fabricated ETag"
    );

    // `*` matches any version.
    let e3 = s.tables.update(T, &pk, "r", props(json!({"v": 4})), IfMatch::Any).await.expect("update *");
    assert_ne!(e3, e2);
    let entity = s.tables.get(T, &pk, "r").await.unwrap().unwrap();
    assert_eq!((entity.etag, entity.properties), (e3.clone(), props(json!({"v": 4}))));

    // The previous (now stale) ETag no longer works after the `*` update either.
    assert_err!(
        s.tables.update(T, &pk, "r", props(json!({"v": 5})), IfMatch::ETag(e2)).await,
        StoreError::PreconditionFailed { .. },
    );

    // Missing entity: NotFound, and nothing is created.
    assert_err!(
        s.tables.update(T, &pk, "missing", props(json!({"v": 1})), IfMatch::Any).await,
        StoreError::NotFound { .. },
        "update * of a missing entity"
    );
    assert_err!(
        s.tables.update(T, &pk, "missing", props(json!({"v": 1})), IfMatch::ETag(e3)).await,
        StoreError::NotFound { .. },
        "update with an ETag of a missing entity"
    );
    assert!(s.tables.get(T, &pk, "missing").await.unwrap().is_none(), "a failed update must not create");
}

/// Upsert creates a missing entity and replaces an existing one.
pub async fn table_upsert(s: &Stores) {
    let pk = unique("ups");
    let e1 = s.tables.upsert(T, &pk, "r", props(json!({"a": 1, "b": "x"}))).await.expect("upsert (create)");
    let entity = s.tables.get(T, &pk, "r").await.unwrap().expect("upsert must create");
    assert_eq!((entity.etag.clone(), entity.properties), (e1.clone(), props(json!({"a": 1, "b": "x"}))));

    let e2 = s.tables.upsert(T, &pk, "r", props(json!({"c": true}))).await.expect("upsert (replace)");
    assert_ne!(e2, e1, "upsert must change the ETag");
    let entity = s.tables.get(T, &pk, "r").await.unwrap().unwrap();
    assert_eq!(entity.etag, e2);
    assert_eq!(entity.properties, props(json!({"c": true})), "upsert replaces, it does not merge");

    // The ETag from before the upsert is stale now.
    assert_err!(
        s.tables.update(T, &pk, "r", props(json!({})), IfMatch::ETag(e1)).await,
        StoreError::PreconditionFailed { .. },
    );
}

/// Delete: stale ETag -> `PreconditionFailed` (entity kept); current ETag -> gone;
/// missing -> `NotFound`.
pub async fn table_delete(s: &Stores) {
    let pk = unique("del");
    let e1 = s.tables.insert(T, &pk, "r", props(json!({"v": 1}))).await.unwrap();
    let e2 = s.tables.update(T, &pk, "r", props(json!({"v": 2})), IfMatch::Any).await.unwrap();

    assert_err!(
        s.tables.delete(T, &pk, "r", IfMatch::ETag(e1.clone())).await,
        StoreError::PreconditionFailed { .. },
        "delete with a stale ETag"
    );
    let entity = s.tables.get(T, &pk, "r").await.unwrap().expect("a failed delete must keep the entity");
    assert_eq!((entity.etag, entity.properties), (e2.clone(), props(json!({"v": 2}))));

    s.tables.delete(T, &pk, "r", IfMatch::ETag(e2.clone())).await.expect("delete with the current ETag");
    assert!(s.tables.get(T, &pk, "r").await.unwrap().is_none(), "deleted entity must be gone");

    assert_err!(s.tables.delete(T, &pk, "r", IfMatch::Any).await, StoreError::NotFound { .. }, "delete * again");
    assert_err!(
        s.tables.delete(T, &pk, "r", IfMatch::ETag(e2)).await,
        StoreError::NotFound { .. },
        "delete with an ETag again"
    );
    assert_err!(
        s.tables.delete(T, &pk, "never-existed", IfMatch::Any).await,
        StoreError::NotFound { .. },
        "delete of a never-existing entity"
    );

    // `*` deletes whatever version is there; a re-insert after delete works and is fresh.
    s.tables.insert(T, &pk, "r", props(json!({"v": 3}))).await.expect("re-insert after delete");
    s.tables.delete(T, &pk, "r", IfMatch::Any).await.expect("delete *");
    assert!(s.tables.get(T, &pk, "r").await.unwrap().is_none());
}

fn invalid_keys() -> Vec<(String, &'static str)> {
    vec![
        ("a/b".to_owned(), "slash"),
        ("a#b".to_owned(), "hash"),
        ("a?b".to_owned(), "question mark"),
        ("a\\b".to_owned(), "backslash"),
        ("a\u{1}b".to_owned(), "control char U+0001"),
        ("a\nb".to_owned(), "newline"),
        ("a\tb".to_owned(), "tab"),
        ("a\u{7f}b".to_owned(), "DEL"),
        ("a\u{85}b".to_owned(), "C1 control"),
        ("k".repeat(1025), "1025 bytes"),
        ("é".repeat(513), "1026 bytes of 2-byte chars"),
    ]
}

/// Keys with `/ \ # ?`, control characters or more than 1024 bytes are `Invalid`, on every
/// write, and nothing gets written.
pub async fn table_invalid_keys(s: &Stores) {
    let pk = unique("badkey");
    let p = || props(json!({"v": 1}));
    for (bad, why) in invalid_keys() {
        // Bad row key.
        assert_err!(s.tables.insert(T, &pk, &bad, p()).await, StoreError::Invalid { .. }, "insert rk {why}");
        assert_err!(s.tables.upsert(T, &pk, &bad, p()).await, StoreError::Invalid { .. }, "upsert rk {why}");
        assert_err!(
            s.tables.update(T, &pk, &bad, p(), IfMatch::Any).await,
            StoreError::Invalid { .. },
            "update rk {why}"
        );
        assert_err!(s.tables.delete(T, &pk, &bad, IfMatch::Any).await, StoreError::Invalid { .. }, "delete rk {why}");
        // Bad partition key.
        assert_err!(s.tables.insert(T, &bad, "r", p()).await, StoreError::Invalid { .. }, "insert pk {why}");
        assert_err!(s.tables.upsert(T, &bad, "r", p()).await, StoreError::Invalid { .. }, "upsert pk {why}");
        assert_err!(
            s.tables.update(T, &bad, "r", p(), IfMatch::Any).await,
            StoreError::Invalid { .. },
            "update pk {why}"
        );
        assert_err!(s.tables.delete(T, &bad, "r", IfMatch::Any).await, StoreError::Invalid { .. }, "delete pk {why}");
    }
    let (rows, _) = query_all(s, T, &pk, &RowRange::all(), 1000).await;
    assert!(rows.is_empty(), "invalid keys must write nothing, found {:?}", row_keys(&rows));

    // Keys that are unusual but valid still work, and 1024 bytes is the limit, not past it.
    let valid = ["with space", "dash-dot.under_score", "ünïcödé ✓", "(parens)[brackets]{braces}", "'quote\"", "%20"];
    for rk in valid {
        s.tables.insert(T, &pk, rk, p()).await.unwrap_or_else(|e| panic!("insert valid row key {rk:?}: {e}"));
        assert!(s.tables.get(T, &pk, rk).await.unwrap().is_some(), "get valid row key {rk:?}");
    }
}

/// Property names must be identifiers and not reserved; long strings are refused. Nothing is
/// written, and an existing entity is left unchanged.
pub async fn table_invalid_properties(s: &Stores) {
    let pk = unique("badprop");
    let etag = s.tables.insert(T, &pk, "existing", props(json!({"v": 1}))).await.unwrap();
    let bad_names = [
        "1starts_with_digit",
        "has space",
        "has-dash",
        "has.dot",
        "",
        "ünïcode",
        "PartitionKey",
        "RowKey",
        "Timestamp",
        "ETag",
    ];
    let mut bad_maps: Vec<(Map<String, Value>, String)> = bad_names
        .iter()
        .map(|name| {
            let mut m = Map::new();
            m.insert("ok".into(), json!(1));
            m.insert((*name).to_owned(), json!("x"));
            (m, format!("property name {name:?}"))
        })
        .collect();
    bad_maps.push((props(json!({"long": "x".repeat(32 * 1024 + 1)})), "string over 32768 chars".into()));
    let too_many: Map<String, Value> = (0..253).map(|i| (format!("p{i}"), json!(i))).collect();
    bad_maps.push((too_many, "253 properties".into()));

    for (m, why) in bad_maps {
        assert_err!(s.tables.insert(T, &pk, "new", m.clone()).await, StoreError::Invalid { .. }, "insert {why}");
        assert_err!(s.tables.upsert(T, &pk, "new", m.clone()).await, StoreError::Invalid { .. }, "upsert {why}");
        assert_err!(s.tables.upsert(T, &pk, "existing", m.clone()).await, StoreError::Invalid { .. }, "upsert {why}");
        assert_err!(
            s.tables.update(T, &pk, "existing", m.clone(), IfMatch::Any).await,
            StoreError::Invalid { .. },
            "update {why}"
        );
    }
    let (rows, _) = query_all(s, T, &pk, &RowRange::all(), 1000).await;
    assert_eq!(row_keys(&rows), vec!["existing".to_owned()], "invalid properties must write nothing");
    assert_eq!(rows[0].etag, etag, "invalid writes must not touch the existing entity");
    assert_eq!(rows[0].properties, props(json!({"v": 1})));

    // The limits themselves are fine: 252 properties, a 32768-char string, `_leading`.
    let at_limit: Map<String, Value> = (0..252).map(|i| (format!("p{i}"), json!(i))).collect();
    s.tables.insert(T, &pk, "limit-count", at_limit).await.expect("252 properties");
    s.tables
        .insert(T, &pk, "limit-len", props(json!({"_leading": "y".repeat(32 * 1024)})))
        .await
        .expect("32768-char string");
}

// ---------------------------------------------------------------------------------------------
// Range reads
// ---------------------------------------------------------------------------------------------

/// 25 rows inserted in shuffled order come back in byte-wise row-key order; paging with
/// limit 7 yields pages of 7, 7, 7, 4 with continuation tokens and no gaps or duplicates.
pub async fn query_order_and_paging(s: &Stores) {
    let pk = unique("order");
    let mut keys: Vec<String> = [
        "a", "A", "aa", "aA", "a-1", "a_1", "a0", "a1", "a10", "a2", "b", "B", "Z", "z", "0", "00", "9", "~", " lead",
        "é", "ü", "zz", "ab", "Ab", "a.b",
    ]
    .iter()
    .map(|k| (*k).to_owned())
    .collect();
    assert_eq!(keys.len(), 25);
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 25);
    keys.shuffle(&mut rand::thread_rng());
    for (i, k) in keys.iter().enumerate() {
        s.tables.insert(T, &pk, k, props(json!({"i": i as i64, "k": k}))).await.unwrap();
    }
    let mut expected = keys.clone();
    expected.sort(); // str's Ord is byte-wise lexicographic.

    let page = s.tables.query(T, &pk, &RowRange::all(), 1000, None).await.unwrap();
    assert_eq!(row_keys(&page.entities), expected, "rows must come back in byte-wise row-key order");
    assert!(page.continuation.is_none(), "a range that fits in one page has no continuation");
    for e in &page.entities {
        assert_eq!(e.partition_key, pk);
        assert_eq!(e.properties["k"], json!(e.row_key), "properties belong to their row");
        assert!(!e.etag.0.is_empty());
    }
    // The ETags from a query are the real ones: they work for a conditional update.
    let first = &page.entities[0];
    s.tables
        .update(T, &pk, &first.row_key, first.properties.clone(), IfMatch::ETag(first.etag.clone()))
        .await
        .expect("ETag from a query must be usable for update");

    // Manual paging, checking every page.
    let mut seen = Vec::new();
    let mut continuation: Option<String> = None;
    for (n, want) in [7usize, 7, 7, 4].into_iter().enumerate() {
        let page = s.tables.query(T, &pk, &RowRange::all(), 7, continuation.as_deref()).await.unwrap();
        assert_eq!(page.entities.len(), want, "page {n} size");
        seen.extend(row_keys(&page.entities));
        if n < 3 {
            let next = page.continuation.unwrap_or_else(|| panic!("page {n} must carry a continuation"));
            assert!(!next.is_empty(), "continuation token must not be empty");
            continuation = Some(next);
        } else {
            assert!(page.continuation.is_none(), "the last page must not carry a continuation");
        }
    }
    assert_eq!(seen, expected, "paging must produce every row once, in order");

    // The same through the helper (which also checks that tokens advance).
    let (all, sizes) = query_all(s, T, &pk, &RowRange::all(), 7).await;
    assert_eq!(sizes, vec![7, 7, 7, 4]);
    assert_eq!(row_keys(&all), expected);

    // A partition with nothing in it.
    let empty = s.tables.query(T, &unique("nothing"), &RowRange::all(), 10, None).await.unwrap();
    assert!(empty.entities.is_empty() && empty.continuation.is_none());
}

/// `RowRange::prefix` and explicit bounds (start inclusive, end exclusive); other partitions
/// and other tables never leak in.
pub async fn query_ranges(s: &Stores) {
    let pk = unique("range");
    let keys = ["a", "ap", "apa", "app", "apple", "apricot", "apz", "aq", "b", "ba", "c"];
    for k in keys {
        s.tables.insert(T, &pk, k, props(json!({"k": k}))).await.unwrap();
    }
    // Neighbours that must never show up: a partition key that extends ours, one that is a
    // prefix of ours, and the same partition key in another table.
    let longer_pk = format!("{pk}x");
    let shorter_pk = pk[..pk.len() - 1].to_owned();
    for k in ["ap", "apq", "b0", "a", "zz"] {
        s.tables.insert(T, &longer_pk, k, props(json!({"leak": true}))).await.unwrap();
        s.tables.insert(T, &shorter_pk, k, props(json!({"leak": true}))).await.unwrap();
        s.tables.insert(Table::Submissions, &pk, k, props(json!({"leak": true}))).await.unwrap();
    }

    let range = |start: Option<&str>, end: Option<&str>| RowRange {
        start: start.map(str::to_owned),
        end: end.map(str::to_owned),
    };
    let cases: Vec<(RowRange, Vec<&str>, &str)> = vec![
        (RowRange::all(), keys.to_vec(), "all"),
        (RowRange::prefix("ap"), vec!["ap", "apa", "app", "apple", "apricot", "apz"], "prefix ap"),
        (RowRange::prefix("app"), vec!["app", "apple"], "prefix app"),
        (RowRange::prefix("b"), vec!["b", "ba"], "prefix b"),
        (RowRange::prefix("nope"), vec![], "prefix with no match"),
        (RowRange::prefix(""), keys.to_vec(), "empty prefix"),
        (range(Some("apple"), Some("b")), vec!["apple", "apricot", "apz", "aq"], "start inclusive, end exclusive"),
        (range(Some("app"), Some("apple")), vec!["app"], "end is exclusive"),
        (range(Some("apo"), Some("apq")), vec!["app", "apple"], "bounds that are not keys"),
        (range(Some("b"), None), vec!["b", "ba", "c"], "start only"),
        (range(None, Some("ap")), vec!["a"], "end only"),
        (range(Some("app"), Some("app")), vec![], "empty range"),
        (range(Some("b"), Some("a")), vec![], "inverted range"),
    ];
    for (r, want, why) in &cases {
        for limit in [1000usize, 2] {
            let (rows, _) = query_all(s, T, &pk, r, limit).await;
            assert_eq!(row_keys(&rows), *want, "{why} (limit {limit})");
            assert!(rows.iter().all(|e| e.partition_key == pk && !e.properties.contains_key("leak")), "{why}: leaked");
        }
    }
    // Paging within a prefix: 3 full pages of 2. (A backend may end with one empty page when
    // it cannot tell that the last full page exhausted the range, as Azure can.)
    let (_, mut sizes) = query_all(s, T, &pk, &RowRange::prefix("ap"), 2).await;
    if sizes.len() == 4 && sizes[3] == 0 {
        sizes.pop();
    }
    assert_eq!(sizes, vec![2, 2, 2], "a prefix of 6 rows in pages of 2");
}

/// A limit above `MAX_PAGE_SIZE` is capped at 1000.
pub async fn query_page_cap(s: &Stores) {
    assert_eq!(MAX_PAGE_SIZE, 1000);
    let pk = unique("cap");
    const ROWS: usize = MAX_PAGE_SIZE + 5;
    const WORKERS: usize = 16;
    let mut set = JoinSet::new();
    for w in 0..WORKERS {
        let s = s.clone();
        let pk = pk.clone();
        set.spawn(async move {
            for i in (w..ROWS).step_by(WORKERS) {
                s.tables.insert(T, &pk, &format!("{i:05}"), props(json!({"i": i as i64}))).await.unwrap();
            }
        });
    }
    set.join_all().await;

    let first = s.tables.query(T, &pk, &RowRange::all(), 5000, None).await.unwrap();
    assert_eq!(first.entities.len(), MAX_PAGE_SIZE, "limit 5000 must be capped at {MAX_PAGE_SIZE}");
    let token = first.continuation.clone().expect("a capped page must carry a continuation");
    let second = s.tables.query(T, &pk, &RowRange::all(), 5000, Some(&token)).await.unwrap();
    assert_eq!(second.entities.len(), ROWS - MAX_PAGE_SIZE);
    assert!(second.continuation.is_none());
    let got: Vec<String> = row_keys(&first.entities).into_iter().chain(row_keys(&second.entities)).collect();
    let want: Vec<String> = (0..ROWS).map(|i| format!("{i:05}")).collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------------
// Compare-and-swap
// ---------------------------------------------------------------------------------------------

/// 16 tasks increment one counter by read + conditional update, retrying on
/// `PreconditionFailed`: no increment is lost. Tasks are spread over `handles`.
pub async fn cas_counter_race(handles: &[Stores]) {
    assert!(!handles.is_empty());
    const TASKS: usize = 16;
    const PER_TASK: i64 = 5;
    let pk = unique("cas");
    handles[0].tables.insert(T, &pk, "counter", props(json!({"n": 0}))).await.unwrap();

    let start = Arc::new(Barrier::new(TASKS));
    let mut set = JoinSet::new();
    for t in 0..TASKS {
        let s = handles[t % handles.len()].clone();
        let pk = pk.clone();
        let start = start.clone();
        set.spawn(async move {
            start.wait().await;
            let mut conflicts = 0u64;
            for _ in 0..PER_TASK {
                loop {
                    let e = s.tables.get(T, &pk, "counter").await.expect("get counter").expect("counter exists");
                    let n = e.properties["n"].as_i64().expect("n is an integer");
                    match s.tables.update(T, &pk, "counter", props(json!({"n": n + 1})), IfMatch::ETag(e.etag)).await {
                        Ok(_) => break,
                        Err(StoreError::PreconditionFailed { .. }) => {
                            conflicts += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(other) => panic!("task {t}: unexpected error in CAS loop: {other:?}"),
                    }
                }
            }
            conflicts
        });
    }
    let conflicts: u64 = set.join_all().await.into_iter().sum();
    let e = handles[0].tables.get(T, &pk, "counter").await.unwrap().unwrap();
    assert_eq!(
        e.properties["n"],
        json!(TASKS as i64 * PER_TASK),
        "lost update: counter does not match the number of successful increments ({conflicts} conflicts)"
    );
}

/// Round-based race: 8 tasks try to update from the same ETag at once; exactly one wins each
/// round, the others get `PreconditionFailed`, and the winner's write is what is stored.
pub async fn cas_rounds(handles: &[Stores]) {
    assert!(!handles.is_empty());
    const TASKS: usize = 8;
    const ROUNDS: usize = 6;
    let pk = unique("rounds");
    handles[0].tables.insert(T, &pk, "r", props(json!({"round": -1}))).await.unwrap();

    for round in 0..ROUNDS {
        let current = handles[round % handles.len()].tables.get(T, &pk, "r").await.unwrap().unwrap();
        let start = Arc::new(Barrier::new(TASKS));
        let mut set = JoinSet::new();
        for t in 0..TASKS {
            let s = handles[t % handles.len()].clone();
            let pk = pk.clone();
            let etag = current.etag.clone();
            let start = start.clone();
            set.spawn(async move {
                start.wait().await;
                let r = s
                    .tables
                    .update(T, &pk, "r", props(json!({"round": round as i64, "winner": t as i64})), IfMatch::ETag(etag))
                    .await;
                (t, r)
            });
        }
        let results = set.join_all().await;
        let mut winners = Vec::new();
        for (t, r) in results {
            match r {
                Ok(etag) => winners.push((t, etag)),
                Err(StoreError::PreconditionFailed { .. }) => {}
                Err(other) => panic!("round {round} task {t}: expected Ok or PreconditionFailed, got {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one update may win, got {winners:?}");
        let (winner, etag) = winners.pop().unwrap();
        let stored = handles[0].tables.get(T, &pk, "r").await.unwrap().unwrap();
        assert_eq!(stored.etag, etag, "round {round}: the stored ETag is the winner's");
        assert_eq!(stored.properties, props(json!({"round": round as i64, "winner": winner as i64})));
    }
}

// ---------------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------------

/// 10 concurrent acquirers: exactly one gets the lease; another acquire while it is held gets
/// `None`; the holder can renew; after release another holder acquires immediately.
pub async fn lease_exclusive(handles: &[Stores]) {
    assert!(!handles.is_empty());
    const TASKS: usize = 10;
    let name = unique("lease-x-");
    let ttl = Duration::from_secs(60);

    let start = Arc::new(Barrier::new(TASKS));
    let mut set = JoinSet::new();
    for t in 0..TASKS {
        let s = handles[t % handles.len()].clone();
        let name = name.clone();
        let start = start.clone();
        set.spawn(async move {
            start.wait().await;
            let got = lease::acquire(s.tables.as_ref(), &name, &format!("holder-{t}"), ttl).await;
            (t, got.unwrap_or_else(|e| panic!("acquire by holder-{t}: {e:?}")))
        });
    }
    let mut winners: Vec<(usize, lease::Lease)> =
        set.join_all().await.into_iter().filter_map(|(t, l)| l.map(|l| (t, l))).collect();
    assert_eq!(winners.len(), 1, "exactly one of {TASKS} acquirers may win, got {:?}", winners);
    let (winner, mut held) = winners.pop().unwrap();
    assert_eq!(held.name, name);
    assert_eq!(held.holder, format!("holder-{winner}"));
    assert!(held.expires_at > Utc::now() + chrono::TimeDelta::seconds(30), "expiry must be ~ttl from now");

    // Held: nobody else (on any handle) gets it, not even the same holder name.
    for (i, s) in handles.iter().enumerate() {
        let again = lease::acquire(s.tables.as_ref(), &name, &format!("late-{i}"), ttl).await.unwrap();
        assert!(again.is_none(), "acquire while held must be None, got {again:?}");
        let same = lease::acquire(s.tables.as_ref(), &name, &held.holder, ttl).await.unwrap();
        assert!(same.is_none(), "a second acquire under the same holder name must be None too");
    }

    // Renew keeps it.
    let s0 = &handles[0];
    let before = held.expires_at;
    assert!(lease::renew(s0.tables.as_ref(), &mut held, ttl).await.unwrap(), "renew of a held lease");
    assert!(held.expires_at >= before);
    assert!(lease::renew(s0.tables.as_ref(), &mut held, ttl).await.unwrap(), "second renew of a held lease");

    // Release, then someone else acquires at once (no waiting for the TTL).
    lease::release(s0.tables.as_ref(), held).await.expect("release");
    let other = handles[handles.len() - 1].clone();
    let next = lease::acquire(other.tables.as_ref(), &name, "next", ttl).await.unwrap();
    let next = next.expect("acquire right after release must succeed");
    assert_eq!(next.holder, "next");
    lease::release(other.tables.as_ref(), next).await.unwrap();
}

/// TTL expiry: after ~1s TTL runs out another holder takes over; the old holder's renew
/// returns `Ok(false)` and its release is a harmless `Ok`.
pub async fn lease_expiry(handles: &[Stores]) {
    assert!(!handles.is_empty());
    let a_store = handles[0].tables.clone();
    let b_store = handles[handles.len() - 1].tables.clone();
    let name = unique("lease-e-");

    let mut a = lease::acquire(a_store.as_ref(), &name, "a", SHORT).await.unwrap().expect("a acquires");
    assert!(lease::acquire(b_store.as_ref(), &name, "b", SHORT).await.unwrap().is_none(), "held by a");

    tokio::time::sleep(PAST_SHORT).await;
    let mut b = lease::acquire(b_store.as_ref(), &name, "b", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("b acquires after a's TTL ran out");
    assert_eq!(b.holder, "b");

    assert!(!lease::renew(a_store.as_ref(), &mut a, SHORT).await.unwrap(), "renew of a lost lease must be Ok(false)");
    lease::release(a_store.as_ref(), a).await.expect("release of a lost lease is Ok");

    // a's release must not have freed b's lease.
    assert!(
        lease::acquire(a_store.as_ref(), &name, "c", SHORT).await.unwrap().is_none(),
        "b still holds the lease after a's stale release"
    );
    assert!(lease::renew(b_store.as_ref(), &mut b, Duration::from_secs(60)).await.unwrap(), "b renews");
    lease::release(b_store.as_ref(), b).await.unwrap();
    let c = lease::acquire(a_store.as_ref(), &name, "c", SHORT).await.unwrap().expect("c acquires after release");
    lease::release(a_store.as_ref(), c).await.unwrap();

    // Released twice (after someone else's release) is fine too.
    let d = lease::acquire(a_store.as_ref(), &name, "d", SHORT).await.unwrap().expect("d acquires");
    let d_copy = d.clone();
    lease::release(a_store.as_ref(), d).await.unwrap();
    lease::release(a_store.as_ref(), d_copy).await.expect("double release is Ok");
}

// ---------------------------------------------------------------------------------------------
// Queues
// ---------------------------------------------------------------------------------------------

const LONG_VIS: Duration = Duration::from_secs(60);

/// Enqueue / dequeue round-trip, dequeue count 1, invisible while held, delete.
pub async fn queue_roundtrip(s: &Stores) {
    let q = unique("q-rt-");
    assert_eq!(s.queues.len(&q).await.unwrap(), 0, "a never-used queue is empty");
    assert!(s.queues.dequeue(&q, 1, LONG_VIS).await.unwrap().is_empty(), "dequeue of a never-used queue");

    let body = "{\"job\":\"sync\",\"text\":\"ünïcödé ✓ <xml> & \\n\"}\nsecond line";
    let before = Utc::now();
    let id = s.queues.enqueue(&q, body, Duration::ZERO).await.expect("enqueue");
    let after = Utc::now();
    assert!(!id.is_empty());
    assert_eq!(s.queues.len(&q).await.unwrap(), 1);

    let got = s.queues.dequeue(&q, 1, LONG_VIS).await.unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.id, id);
    assert_eq!(m.body, body, "body must round-trip exactly");
    assert_eq!(m.dequeue_count, 1);
    assert!(!m.pop_receipt.is_empty());
    assert_recent(m.inserted_at, before, after, "message");

    assert!(s.queues.dequeue(&q, 10, LONG_VIS).await.unwrap().is_empty(), "a dequeued message is invisible");
    assert_eq!(s.queues.len(&q).await.unwrap(), 1, "len counts invisible messages");

    s.queues.delete_message(&q, &m.id, &m.pop_receipt).await.expect("delete with the current receipt");
    assert_eq!(s.queues.len(&q).await.unwrap(), 0);
    assert_err!(
        s.queues.delete_message(&q, &m.id, &m.pop_receipt).await,
        StoreError::NotFound { .. },
        "delete of a deleted message"
    );

    // Empty body and a body at a healthy size round-trip too.
    let big = "x".repeat(40 * 1024);
    for b in ["", big.as_str()] {
        s.queues.enqueue(&q, b, Duration::ZERO).await.unwrap();
        let m = s.queues.dequeue(&q, 1, LONG_VIS).await.unwrap().pop().expect("message");
        assert_eq!(m.body, b);
        s.queues.delete_message(&q, &m.id, &m.pop_receipt).await.unwrap();
    }
}

/// After the visibility timeout a message is redelivered with dequeue count 2 and a new pop
/// receipt; the old receipt is stale (`NotFound`), the new one deletes.
pub async fn queue_visibility_timeout(s: &Stores) {
    let q = unique("q-vis-");
    let id = s.queues.enqueue(&q, "redeliver me", Duration::ZERO).await.unwrap();
    let m1 = s.queues.dequeue(&q, 1, SHORT).await.unwrap().pop().expect("first delivery");
    assert_eq!((m1.id.as_str(), m1.dequeue_count), (id.as_str(), 1));
    assert!(s.queues.dequeue(&q, 1, SHORT).await.unwrap().is_empty(), "hidden during its visibility timeout");

    tokio::time::sleep(PAST_SHORT).await;
    let m2 = s.queues.dequeue(&q, 1, LONG_VIS).await.unwrap().pop().expect("redelivery after the timeout");
    assert_eq!(m2.id, id);
    assert_eq!(m2.body, "redeliver me");
    assert_eq!(m2.dequeue_count, 2);
    assert_ne!(m2.pop_receipt, m1.pop_receipt, "a redelivery carries a new pop receipt");
    assert_eq!(m2.inserted_at, m1.inserted_at, "insertion time does not change on redelivery");

    assert_err!(
        s.queues.delete_message(&q, &id, &m1.pop_receipt).await,
        StoreError::NotFound { .. },
        "delete with a stale pop receipt"
    );
    assert_err!(
        s.queues.delete_message(&q, &id, "not-a-receipt").await,
        StoreError::NotFound { .. },
        "delete with a made-up pop receipt"
    );
    assert_eq!(s.queues.len(&q).await.unwrap(), 1, "a refused delete keeps the message");
    s.queues.delete_message(&q, &id, &m2.pop_receipt).await.expect("delete with the current receipt");
    assert_eq!(s.queues.len(&q).await.unwrap(), 0);
}

/// A message enqueued with a delay is invisible until then.
pub async fn queue_delay(s: &Stores) {
    let q = unique("q-delay-");
    let id = s.queues.enqueue(&q, "later", SHORT).await.unwrap();
    assert_eq!(s.queues.len(&q).await.unwrap(), 1, "len counts delayed messages");
    assert!(s.queues.dequeue(&q, 1, LONG_VIS).await.unwrap().is_empty(), "invisible during its delay");
    tokio::time::sleep(PAST_SHORT).await;
    let m = s.queues.dequeue(&q, 1, LONG_VIS).await.unwrap().pop().expect("visible after its delay");
    assert_eq!((m.id.as_str(), m.body.as_str(), m.dequeue_count), (id.as_str(), "later", 1));
    s.queues.delete_message(&q, &m.id, &m.pop_receipt).await.unwrap();
}

/// Visible messages come out oldest first; `max` limits how many one dequeue takes.
pub async fn queue_order_and_max(s: &Stores) {
    let q = unique("q-order-");
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(s.queues.enqueue(&q, &format!("m{i}"), Duration::ZERO).await.unwrap());
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 6, "message ids are unique");

    let first = s.queues.dequeue(&q, 4, LONG_VIS).await.unwrap();
    assert_eq!(
        first.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["m0", "m1", "m2", "m3"],
        "max 4, oldest first"
    );
    let rest = s.queues.dequeue(&q, 10, LONG_VIS).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["m4", "m5"]);
    let got_ids: Vec<String> = first.iter().chain(&rest).map(|m| m.id.clone()).collect();
    assert_eq!(got_ids, ids);
    let one = s.queues.dequeue(&q, 1, LONG_VIS).await.unwrap();
    assert!(one.is_empty());
    for m in first.iter().chain(&rest) {
        s.queues.delete_message(&q, &m.id, &m.pop_receipt).await.unwrap();
    }
    assert_eq!(s.queues.len(&q).await.unwrap(), 0);
}

/// `set_visibility` returns a new receipt, extends the hiding, and can make a message visible
/// again at once; the old receipt is stale afterwards.
pub async fn queue_set_visibility(s: &Stores) {
    let q = unique("q-setvis-");
    let id = s.queues.enqueue(&q, "extend me", Duration::ZERO).await.unwrap();
    let m = s.queues.dequeue(&q, 1, SHORT).await.unwrap().pop().unwrap();

    let r2 = s.queues.set_visibility(&q, &id, &m.pop_receipt, Duration::from_secs(4)).await.expect("set_visibility");
    assert!(!r2.is_empty());
    assert_ne!(r2, m.pop_receipt, "set_visibility must return a new pop receipt");

    tokio::time::sleep(PAST_SHORT).await;
    assert!(
        s.queues.dequeue(&q, 1, LONG_VIS).await.unwrap().is_empty(),
        "the extended visibility timeout must keep the message hidden past the original one"
    );

    assert_err!(
        s.queues.set_visibility(&q, &id, &m.pop_receipt, LONG_VIS).await,
        StoreError::NotFound { .. },
        "set_visibility with a stale receipt"
    );
    assert_err!(
        s.queues.delete_message(&q, &id, &m.pop_receipt).await,
        StoreError::NotFound { .. },
        "delete with the receipt replaced by set_visibility"
    );

    // Visible again right away.
    let r3 = s.queues.set_visibility(&q, &id, &r2, Duration::ZERO).await.expect("set_visibility 0");
    assert_ne!(r3, r2);
    let again = s.queues.dequeue(&q, 1, LONG_VIS).await.unwrap().pop().expect("visible after set_visibility 0");
    assert_eq!(again.id, id);
    assert_eq!(again.dequeue_count, 2, "set_visibility is not a dequeue");
    assert_err!(s.queues.delete_message(&q, &id, &r3).await, StoreError::NotFound { .. }, "receipt before redelivery");
    s.queues.delete_message(&q, &id, &again.pop_receipt).await.unwrap();
    assert_err!(
        s.queues.set_visibility(&q, &id, &again.pop_receipt, LONG_VIS).await,
        StoreError::NotFound { .. },
        "set_visibility of a deleted message"
    );
}

/// 4 concurrent dequeuers over 20 messages: every message is handed out exactly once within
/// its visibility window. Dequeuers are spread over `handles`.
pub async fn queue_concurrent_dequeue(handles: &[Stores]) {
    assert!(!handles.is_empty());
    const MESSAGES: usize = 20;
    const TASKS: usize = 4;
    let q = unique("q-conc-");
    for i in 0..MESSAGES {
        handles[i % handles.len()].queues.enqueue(&q, &format!("job-{i}"), Duration::ZERO).await.unwrap();
    }

    let start = Arc::new(Barrier::new(TASKS));
    let mut set = JoinSet::new();
    for t in 0..TASKS {
        let s = handles[t % handles.len()].clone();
        let q = q.clone();
        let start = start.clone();
        set.spawn(async move {
            start.wait().await;
            let mut got = Vec::new();
            loop {
                let batch = s.queues.dequeue(&q, 3, LONG_VIS).await.unwrap_or_else(|e| panic!("task {t}: {e:?}"));
                if batch.is_empty() {
                    break;
                }
                assert!(batch.len() <= 3, "dequeue returned more than max");
                got.extend(batch);
                tokio::task::yield_now().await;
            }
            got
        });
    }
    let all: Vec<_> = set.join_all().await.into_iter().flatten().collect();
    let mut seen = HashSet::new();
    for m in &all {
        assert!(seen.insert(m.id.clone()), "message {} ({}) was handed out twice", m.id, m.body);
        assert_eq!(m.dequeue_count, 1);
    }
    assert_eq!(all.len(), MESSAGES, "every message must be handed out once");
    let bodies: BTreeSet<String> = all.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, (0..MESSAGES).map(|i| format!("job-{i}")).collect());

    for (i, m) in all.iter().enumerate() {
        handles[i % handles.len()].queues.delete_message(&q, &m.id, &m.pop_receipt).await.unwrap();
    }
    assert_eq!(handles[0].queues.len(&q).await.unwrap(), 0);
}

/// Oversized bodies and bad queue names are `Invalid`.
pub async fn queue_invalid(s: &Stores) {
    let q = unique("q-inv-");
    let big = "x".repeat(MAX_QUEUE_MESSAGE_BYTES + 1);
    assert_err!(
        s.queues.enqueue(&q, &big, Duration::ZERO).await,
        StoreError::Invalid { .. },
        "body over MAX_QUEUE_MESSAGE_BYTES"
    );
    // The limit is measured in bytes, not chars.
    let big_multibyte = "é".repeat(MAX_QUEUE_MESSAGE_BYTES / 2 + 1);
    assert_err!(
        s.queues.enqueue(&q, &big_multibyte, Duration::ZERO).await,
        StoreError::Invalid { .. },
        "body over MAX_QUEUE_MESSAGE_BYTES in 2-byte chars"
    );
    assert_eq!(s.queues.len(&q).await.unwrap(), 0, "an invalid enqueue writes nothing");

    let long = "a".repeat(64);
    for bad in
        ["ab", "Upper-case", "-leading", "trailing-", "double--dash", "under_score", "with space", "", long.as_str()]
    {
        assert_err!(
            s.queues.enqueue(bad, "x", Duration::ZERO).await,
            StoreError::Invalid { .. },
            "enqueue to queue {bad:?}"
        );
        assert_err!(s.queues.dequeue(bad, 1, LONG_VIS).await, StoreError::Invalid { .. }, "dequeue from {bad:?}");
        assert_err!(s.queues.len(bad).await, StoreError::Invalid { .. }, "len of {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Blobs
// ---------------------------------------------------------------------------------------------

/// Put/get round-trip, only-if-absent, overwrite, list by prefix, delete.
pub async fn blob_roundtrip(s: &Stores) {
    let c = unique("c-");
    assert!(s.blobs.get(&c, "missing").await.unwrap().is_none(), "get from a never-used container");
    assert!(s.blobs.list(&c, "").await.unwrap().is_empty(), "list of a never-used container");

    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let e1 = s.blobs.put(&c, "dir/doc.bin", &bytes, "application/octet-stream", false).await.expect("put");
    assert!(!e1.0.is_empty());
    let b = s.blobs.get(&c, "dir/doc.bin").await.unwrap().expect("blob after put");
    assert_eq!(b.content, bytes, "content must round-trip byte for byte");
    assert_eq!(b.content_type, "application/octet-stream");
    assert_eq!(b.etag, e1);

    let json_ct = "application/json; charset=utf-8";
    s.blobs.put(&c, "empty.json", b"", json_ct, false).await.unwrap();
    let empty = s.blobs.get(&c, "empty.json").await.unwrap().unwrap();
    assert!(empty.content.is_empty());
    assert_eq!(empty.content_type, json_ct);

    // only_if_absent: first succeeds, second is AlreadyExists and changes nothing.
    let once = s.blobs.put(&c, "once.json", b"{\"v\":1}", json_ct, true).await.expect("put if absent");
    assert_err!(
        s.blobs.put(&c, "once.json", b"{\"v\":2}", "text/plain", true).await,
        StoreError::AlreadyExists { .. },
        "second put if absent"
    );
    let b = s.blobs.get(&c, "once.json").await.unwrap().unwrap();
    assert_eq!((b.content.as_slice(), b.content_type.as_str(), &b.etag), (&b"{\"v\":1}"[..], json_ct, &once));

    // Overwrite without the flag: new content, new ETag.
    let e2 = s.blobs.put(&c, "once.json", b"{\"v\":3}", "text/plain", false).await.expect("overwrite");
    assert_ne!(e2, once, "overwrite must change the ETag");
    let b = s.blobs.get(&c, "once.json").await.unwrap().unwrap();
    assert_eq!((b.content.as_slice(), b.content_type.as_str(), &b.etag), (&b"{\"v\":3}"[..], "text/plain", &e2));

    // Same name in another container is another blob.
    let other = unique("c-");
    assert!(s.blobs.get(&other, "once.json").await.unwrap().is_none());
}

/// `list` returns names under a prefix in lexicographic order.
pub async fn blob_list(s: &Stores) {
    let c = unique("c-list-");
    let mut names = vec!["b/2", "a/1", "a/10", "a/2", "ab", "a/sub/x", "c", "A/upper", "a"];
    names.shuffle(&mut rand::thread_rng());
    for n in &names {
        s.blobs.put(&c, n, n.as_bytes(), "text/plain", false).await.unwrap();
    }
    // Another container's blobs never show up.
    let other = unique("c-list-");
    s.blobs.put(&other, "a/0", b"x", "text/plain", false).await.unwrap();

    let mut all: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    all.sort();
    assert_eq!(s.blobs.list(&c, "").await.unwrap(), all);
    assert_eq!(s.blobs.list(&c, "a/").await.unwrap(), ["a/1", "a/10", "a/2", "a/sub/x"]);
    assert_eq!(s.blobs.list(&c, "a").await.unwrap(), ["a", "a/1", "a/10", "a/2", "a/sub/x", "ab"]);
    assert_eq!(s.blobs.list(&c, "a/sub/").await.unwrap(), ["a/sub/x"]);
    assert!(s.blobs.list(&c, "zzz").await.unwrap().is_empty());
    // Prefixes are literal, not patterns.
    assert!(s.blobs.list(&c, "a%").await.unwrap().is_empty());
    assert!(s.blobs.list(&c, "a_").await.unwrap().is_empty());
}

/// Delete then get is `None`; deleting a missing blob is `NotFound`; bad container names are
/// `Invalid`.
pub async fn blob_delete_and_invalid(s: &Stores) {
    let c = unique("c-del-");
    s.blobs.put(&c, "x", b"1", "text/plain", false).await.unwrap();
    s.blobs.put(&c, "y", b"2", "text/plain", false).await.unwrap();
    s.blobs.delete(&c, "x").await.expect("delete");
    assert!(s.blobs.get(&c, "x").await.unwrap().is_none(), "deleted blob must be gone");
    assert_eq!(s.blobs.list(&c, "").await.unwrap(), ["y"]);
    assert_err!(s.blobs.delete(&c, "x").await, StoreError::NotFound { .. }, "delete twice");
    assert_err!(s.blobs.delete(&c, "never").await, StoreError::NotFound { .. }, "delete never-existing");
    // After delete the name is free again, even for only_if_absent.
    s.blobs.put(&c, "x", b"3", "text/plain", true).await.expect("put if absent after delete");

    for bad in ["ab", "Upper", "under_score", "-lead", "double--dash"] {
        assert_err!(
            s.blobs.put(bad, "x", b"1", "text/plain", false).await,
            StoreError::Invalid { .. },
            "put into container {bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// Versioned secrets: set returns a version; get latest / by version; versions oldest first;
/// delete removes every version.
pub async fn secret_versions(s: &Stores) {
    let name = unique("secret-");
    assert!(s.secrets.get(&name, None).await.unwrap().is_none(), "never-set secret");
    assert!(s.secrets.versions(&name).await.unwrap().is_empty());

    let v1_value = SecretString::new("refresh-token-1 ünïcödé ✓ with = and / and +");
    let before = Utc::now();
    let v1 = s.secrets.set(&name, &v1_value).await.expect("set v1");
    let after = Utc::now();
    assert!(!v1.is_empty());

    let got = s.secrets.get(&name, None).await.unwrap().expect("latest after set");
    assert_eq!(got.value.expose(), v1_value.expose());
    assert_eq!(got.version, v1);
    assert_recent(got.created, before, after, "secret");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let v2_value = SecretString::new("r".repeat(8 * 1024));
    let v2 = s.secrets.set(&name, &v2_value).await.expect("set v2");
    assert_ne!(v2, v1, "a new set must produce a new version");

    let latest = s.secrets.get(&name, None).await.unwrap().expect("latest");
    assert_eq!(latest.version, v2);
    assert_eq!(latest.value.expose(), v2_value.expose());
    let old = s.secrets.get(&name, Some(&v1)).await.unwrap().expect("old version by id");
    assert_eq!(old.version, v1);
    assert_eq!(old.value.expose(), v1_value.expose());
    assert!(old.created <= latest.created);
    let explicit = s.secrets.get(&name, Some(&v2)).await.unwrap().expect("latest version by id");
    assert_eq!(explicit.value.expose(), v2_value.expose());

    let v3 = s.secrets.set(&name, &SecretString::new("third")).await.unwrap();
    assert_eq!(s.secrets.versions(&name).await.unwrap(), vec![v1.clone(), v2.clone(), v3.clone()], "oldest first");

    // Same value again is still a new version.
    let v4 = s.secrets.set(&name, &SecretString::new("third")).await.unwrap();
    assert!(![&v1, &v2, &v3].contains(&&v4));

    // An unknown version is None, not an error.
    let other = unique("secret-");
    s.secrets.set(&other, &SecretString::new("other")).await.unwrap();
    assert!(s.secrets.get(&name, Some("0123456789abcdef0123456789abcdef")).await.unwrap().is_none());

    s.secrets.delete(&name).await.expect("delete");
    assert!(s.secrets.get(&name, None).await.unwrap().is_none(), "get after delete");
    assert!(s.secrets.get(&name, Some(&v1)).await.unwrap().is_none(), "old version after delete");
    assert!(s.secrets.versions(&name).await.unwrap().is_empty(), "versions after delete");
    assert_err!(s.secrets.delete(&name).await, StoreError::NotFound { .. }, "delete twice");
    assert_err!(s.secrets.delete(&unique("never-")).await, StoreError::NotFound { .. }, "delete never-set");

    // The other secret is untouched.
    assert_eq!(s.secrets.get(&other, None).await.unwrap().expect("other secret").value.expose(), "other");
    s.secrets.delete(&other).await.unwrap();
}

/// A deleted secret's name can be used again.
pub async fn secret_reuse_after_delete(s: &Stores) {
    let name = unique("reuse-");
    s.secrets.set(&name, &SecretString::new("one")).await.unwrap();
    s.secrets.delete(&name).await.unwrap();
    let v = s.secrets.set(&name, &SecretString::new("two")).await.expect("set after delete");
    assert_eq!(s.secrets.versions(&name).await.unwrap(), vec![v.clone()], "only the new version exists");
    let got = s.secrets.get(&name, None).await.unwrap().unwrap();
    assert_eq!((got.version, got.value.expose()), (v, "two"));
    s.secrets.delete(&name).await.unwrap();
}

/// Key Vault names: 1-127 of `[0-9a-zA-Z-]`.
pub async fn secret_invalid_names(s: &Stores) {
    let v = SecretString::new("x");
    let too_long = "a".repeat(128);
    for bad in ["under_score", too_long.as_str(), "", "with space", "dot.ted", "slash/y", "ünï"] {
        assert_err!(s.secrets.set(bad, &v).await, StoreError::Invalid { .. }, "set secret {bad:?}");
    }
    let max = format!("{}{}", unique("Max-"), "a".repeat(127 - 20));
    assert_eq!(max.len(), 127);
    s.secrets.set(&max, &v).await.expect("127-char name is valid");
    assert_eq!(s.secrets.get(&max, None).await.unwrap().unwrap().value.expose(), "x");
    s.secrets.delete(&max).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Everything
// ---------------------------------------------------------------------------------------------

pub async fn tables_all(s: &Stores) {
    table_insert_get(s).await;
    table_insert_conflict(s).await;
    table_update(s).await;
    table_upsert(s).await;
    table_delete(s).await;
    table_invalid_keys(s).await;
    table_invalid_properties(s).await;
}

pub async fn ranges_all(s: &Stores) {
    query_order_and_paging(s).await;
    query_ranges(s).await;
    query_page_cap(s).await;
}

pub async fn cas_all(handles: &[Stores]) {
    cas_counter_race(handles).await;
    cas_rounds(handles).await;
}

pub async fn leases_all(handles: &[Stores]) {
    lease_exclusive(handles).await;
    lease_expiry(handles).await;
}

pub async fn queues_all(s: &Stores) {
    queue_roundtrip(s).await;
    queue_visibility_timeout(s).await;
    queue_delay(s).await;
    queue_order_and_max(s).await;
    queue_set_visibility(s).await;
    queue_concurrent_dequeue(std::slice::from_ref(s)).await;
    queue_invalid(s).await;
}

pub async fn blobs_all(s: &Stores) {
    blob_roundtrip(s).await;
    blob_list(s).await;
    blob_delete_and_invalid(s).await;
}

pub async fn secrets_all(s: &Stores) {
    secret_versions(s).await;
    secret_reuse_after_delete(s).await;
    secret_invalid_names(s).await;
}

/// Every check, on handles from `make`. Races run both within one handle and across two.
pub async fn run_all(make: &dyn Fn() -> Stores) {
    let s = make();
    let pair = [make(), make()];
    tables_all(&s).await;
    ranges_all(&s).await;
    cas_all(std::slice::from_ref(&s)).await;
    cas_all(&pair).await;
    leases_all(std::slice::from_ref(&s)).await;
    leases_all(&pair).await;
    queues_all(&s).await;
    queue_concurrent_dequeue(&pair).await;
    blobs_all(&s).await;
    secrets_all(&s).await;
}
