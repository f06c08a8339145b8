//! The properties the fuzz targets check, one function per target, each taking any bytes.
//!
//! Shared by the libFuzzer targets (`fuzz/fuzz_targets/*.rs`, nightly, `bash scripts/fuzz.sh`)
//! and by the stable test suite (`tests/suite/fuzz_corpus.rs`), which replays every file of
//! `fuzz/corpus/<target>/` through the same function, so a crash once found stays fixed.
//! "No panic" is the least each checks; each also checks what the parser promises.

#![allow(dead_code)]

use std::sync::OnceLock;

use serde_json::{json, Value};
use truecontext_bridge::config::{RawSettings, Settings};
use truecontext_bridge::functions;
use truecontext_bridge::handlers::HttpRequest;
use truecontext_bridge::host::{decode_invocation, Invocation};
use truecontext_bridge::landing::normalise;
use truecontext_bridge::naming;
use truecontext_bridge::schedule::Schedule;
use truecontext_bridge::truecontext::model::{Page, RecordHeader};
use truecontext_bridge::webhook::payload;

/// A target's property: panics when `data` breaks it.
pub type Property = fn(&[u8]);

/// Every target by name, as the corpus folders are named.
pub const TARGETS: &[(&str, Property)] = &[
    ("envelope", envelope),
    ("callback_params", callback_params),
    ("token_response", token_response),
    ("jwt", jwt),
    ("webhook_body", webhook_body),
    ("list_page", list_page),
    ("document", document),
    ("document_structured", document_structured),
    ("schedule", schedule),
    ("settings", settings),
];

/// Longest error text any parser may give back: errors name what is wrong, they do not echo
/// whole inputs (which may carry secrets) into logs and replies.
const MAX_ERROR_CHARS: usize = 600;

fn assert_bounded(what: &str, message: &str) {
    assert!(message.chars().count() <= MAX_ERROR_CHARS, "{what}: an error of {} chars", message.chars().count());
}

/// The invocation envelope, for each kind of trigger (the first byte picks the function).
/// An accepted HTTP request is within the body limit; a refused one is a 413 or a bounded message.
pub fn envelope(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else { return };
    let function = &functions::FUNCTIONS[usize::from(pick) % functions::FUNCTIONS.len()];
    const MAX_BODY: usize = 4096;
    match decode_invocation(function, body, MAX_BODY) {
        Ok(Invocation::Http(Ok(request))) => assert!(request.body.len() <= MAX_BODY, "a body over the limit"),
        Ok(Invocation::Http(Err(refused))) => assert_eq!(refused.status.as_u16(), 413),
        Ok(Invocation::Timer(_) | Invocation::Queue(_)) => {}
        Err(message) => {
            assert!(!message.is_empty());
            assert_bounded("envelope", &message);
        }
    }
}

/// The callback's parameters: whatever arrives, what is kept is a known name within its limit,
/// and a query and the same pairs posted as a form read alike.
pub fn callback_params(data: &[u8]) {
    use truecontext_bridge::handlers::callback::{read_params, LIMITS};
    let text = String::from_utf8_lossy(data);
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(text.as_bytes()).into_owned().collect();
    let get = HttpRequest {
        method: axum::http::Method::GET,
        query: pairs.clone(),
        headers: Default::default(),
        body: vec![],
        peer: None,
    };
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
    let form = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
    let post =
        HttpRequest { method: axum::http::Method::POST, query: vec![], headers, body: form.into_bytes(), peer: None };
    let from_get = read_params(&get, "code");
    let from_post = read_params(&post, "code");
    assert_eq!(from_get, from_post, "a query and a form of the same pairs read alike");
    match from_get {
        Ok(params) => {
            for (name, value) in &params {
                let limit = LIMITS.iter().find(|(n, _)| n == name).map(|(_, l)| *l);
                assert!(limit.is_some_and(|l| value.len() <= l), "{name} kept beyond its limit");
            }
        }
        Err(message) => assert_bounded("callback", &message),
    }
}

/// A 2xx token response: a usable one has an access token; neither the value's `Debug` nor the
/// error's text shows a token the body carried.
pub fn token_response(data: &[u8]) {
    use truecontext_bridge::oauth::token::parse_token_response;
    let secrets: Vec<String> = serde_json::from_slice::<Value>(data)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|o| {
            ["access_token", "refresh_token", "id_token"]
                .iter()
                .filter_map(|k| o.get(*k)?.as_str().map(str::to_owned))
                .filter(|s| s.len() >= 8)
                // A value the body also carries elsewhere (in `scope`, say) may be shown there.
                .filter(|s| String::from_utf8_lossy(data).matches(s.as_str()).count() == 1)
                .collect()
        })
        .unwrap_or_default();
    let shown = match parse_token_response(data) {
        Ok(response) => {
            assert!(!response.access_token.expose().is_empty(), "accepted without an access token");
            format!("{response:?}")
        }
        Err(e) => {
            let text = e.to_string();
            assert_bounded("token response", &text);
            format!("{text} {e:?}")
        }
    };
    for secret in secrets {
        assert!(!shown.contains(&secret), "a token reached Debug or an error");
    }
}

/// A JWT (id_token or webhook bearer) against a fixed key set: accepted only when it carries
/// exactly claims we signed, whatever was changed around them.
pub fn jwt(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    let jwks = jwks();
    let result = runtime().block_on(truecontext_bridge::oauth::id_token::verify_signature(
        &jwks.cache,
        &token,
        &[jsonwebtoken::Algorithm::RS256],
    ));
    match result {
        Ok((claims, _key)) => {
            assert!(jwks.signed_claims.contains(&Value::Object(claims)), "a token we did not sign was accepted")
        }
        Err(e) => {
            let text = format!("{e} {e:?}");
            assert_bounded("jwt", &e.to_string());
            // The claims must not reach the error. Only a segment that could be real base64url
            // is checked: a fuzzed "token" made of the error's own words is not a leak.
            let base64url = |part: &&str| {
                part.len() >= 16 && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            for part in token.split('.').skip(1).filter(base64url) {
                assert!(!text.contains(part), "a part of the token reached the error");
            }
        }
    }
}

/// A webhook body: an accepted push names a valid identifier, the one the document carries
/// where it has one.
pub fn webhook_body(data: &[u8]) {
    for id_field in [None, Some("submission.id")] {
        match payload::read(data, id_field) {
            Ok((push, value)) => {
                assert!(naming::is_record_id(&push.identifier), "{:?} accepted", push.identifier);
                if id_field.is_none() {
                    if let Ok(id) = normalise::identifier(&value) {
                        if push.format.is_complete() {
                            assert_eq!(push.identifier, id, "the push names another submission than its document");
                        }
                    }
                }
            }
            Err(e) => assert_bounded("webhook body", &e.to_string()),
        }
    }
}

/// A `data.json` list page: a listed identifier may be anything (the sync leaves out one that
/// is not an identifier, see `sync::usable`), and one the sync keeps cannot split or escape the
/// API path, blob path and table key it goes into. The page reads the same after a round trip
/// through its own JSON.
pub fn list_page(data: &[u8]) {
    let Ok(page) = serde_json::from_slice::<Page<RecordHeader>>(data) else { return };
    for record in &page.page_data {
        let id = &record.summary.identifier;
        if naming::is_record_id(id) {
            let splits =
                |c: char| matches!(c, '/' | '\\' | '?' | '#' | '%' | '.' | '\'' | '"') || !c.is_ascii_graphic();
            assert!(!id.contains(splits) && id.len() <= 64, "{id:?} kept");
        }
    }
    // A field the page ignores may hold what a `Value` refuses (a lone surrogate escape).
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let again: Page<RecordHeader> = serde_json::from_value(value).expect("a page that parsed parses from its Value");
    assert_eq!(again.page_data, page.page_data);
}

/// A submission document: one that normalises gives a record whose identifier is the
/// document's, and a content hash that does not depend on how the JSON was laid out.
pub fn document(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let media_path = |name: &str| format!("media/{name}");
    match normalise::normalise(&value, &media_path) {
        Ok(normalised) => {
            assert_eq!(Ok(normalised.identifier.clone()), normalise::identifier(&value));
            assert_eq!(normalised.record.get("identifier"), Some(&json!(normalised.identifier)));
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            let relaid: Value = serde_json::from_slice(&pretty).unwrap();
            let again = normalise::normalise(&relaid, &media_path).expect("the same document normalises again");
            assert_eq!(normalise::content_hash(&again.record), normalise::content_hash(&normalised.record));
        }
        Err(e) => assert_bounded("document", &e.to_string()),
    }
}

/// An NCRONTAB schedule: one that parses has occurrences that move strictly forward.
pub fn schedule(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match text.parse::<Schedule>() {
        Ok(schedule) => {
            let start = chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap();
            let mut at = start;
            for _ in 0..3 {
                match schedule.next_after(at) {
                    Some(next) => {
                        assert!(next > at, "{text:?}: {next} is not after {at}");
                        at = next;
                    }
                    None => break,
                }
            }
            assert!(!schedule.describe().is_empty());
        }
        Err(e) => assert_bounded("schedule", &e.to_string()),
    }
}

/// Settings as `NAME=value` lines: every problem names a setting, and no problem shows the
/// value of a secret setting.
pub fn settings(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let pairs: Vec<(String, String)> =
        text.lines().filter_map(|line| line.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let raw = RawSettings::from_pairs(pairs.clone());
    let is_secret = |k: &str| Settings::secret_settings().contains(&k);
    // A secret value that is also part of a plain setting's value may be shown with that one.
    let plain: Vec<&str> = pairs.iter().filter(|(k, _)| !is_secret(k)).map(|(_, v)| v.as_str()).collect();
    let secrets: Vec<&str> = pairs
        .iter()
        .filter(|(k, v)| is_secret(k) && v.trim().len() >= 6)
        .map(|(_, v)| v.trim())
        .filter(|secret| !plain.iter().any(|v| v.contains(secret)))
        .collect();
    // What the problems say with every secret value replaced: a secret that shows there too is
    // part of the messages' own words (a setting's name, an example), not a leak.
    let masked: Vec<(String, String)> =
        pairs.iter().map(|(k, v)| (k.clone(), if is_secret(k) { "#".repeat(v.len()) } else { v.clone() })).collect();
    let vocabulary = match Settings::load(&RawSettings::from_pairs(masked)) {
        Err(problems) => problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"),
        Ok(_) => String::new(),
    };
    if let Err(problems) = Settings::load(&raw) {
        assert!(!problems.is_empty());
        for problem in &problems {
            assert!(!problem.setting.is_empty(), "a problem that names no setting");
            let shown = problem.to_string();
            for secret in &secrets {
                assert!(
                    !shown.contains(secret) || vocabulary.contains(secret),
                    "{}: a secret value reached a problem",
                    problem.setting
                );
            }
        }
    }
}

/// A current-thread runtime for the async parsers.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

struct Jwks {
    cache: truecontext_bridge::oauth::jwks::JwksCache,
    signed_claims: Vec<Value>,
}

/// A key set served once from loopback (the fixture's test keys), and the claims of the
/// tokens the seeds carry, signed with its private key.
fn jwks() -> &'static Jwks {
    static JWKS: OnceLock<Jwks> = OnceLock::new();
    JWKS.get_or_init(|| {
        truecontext_bridge::tls::install_crypto_provider();
        let body = std::fs::read_to_string(fixtures().join("test-jwks.json")).expect("tests/fixtures/test-jwks.json");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}/keys", listener.local_addr().unwrap());
        std::thread::spawn(move || serve_forever(listener, body));
        let http = truecontext_bridge::oauth::token::http_client();
        let cache = truecontext_bridge::oauth::jwks::JwksCache::new(uri.parse().unwrap(), http);
        Jwks { cache, signed_claims: seed_claims() }
    })
}

/// The claims of the genuine tokens in the seeds (see [`seed_jwt`]).
fn seed_claims() -> Vec<Value> {
    vec![
        json!({ "iss": "https://issuer.example/", "aud": "bridge", "sub": "admin", "nonce": "n-0", "exp": 4_000_000_000u64 }),
        json!({ "iss": "https://issuer.example/", "aud": "api://bridge", "roles": ["Submissions.Push"], "exp": 4_000_000_000u64 }),
    ]
}

/// A genuine token for seed `i`, signed with the fixture's key `test-key1` (the seeds).
pub fn seed_jwt(i: usize) -> String {
    let pem = std::fs::read(fixtures().join("test-key1.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key1".into());
    jsonwebtoken::encode(&header, &seed_claims()[i], &key).unwrap()
}

/// `tests/fixtures`, from the fuzz crate (`fuzz/`) or from the repository root (the suite).
fn fixtures() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    [here.join("tests/fixtures"), here.join("../tests/fixtures")]
        .into_iter()
        .find(|p| p.exists())
        .expect("tests/fixtures")
}

/// Answers every request with the key set, one request per connection.
fn serve_forever(listener: std::net::TcpListener, body: String) {
    use std::io::{Read, Write};
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut buffer = [0u8; 4096];
        let _ = stream.read(&mut buffer);
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes());
    }
}

/// Choices drawn from fuzz bytes: each call takes the next byte (zero once they run out), so
/// libFuzzer's mutations steer the structure below rather than hoping random bytes are JSON.
pub struct Choices<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Choices<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    pub fn byte(&mut self) -> u8 {
        let byte = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }

    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    pub fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())].clone()
    }

    /// True about once in `n` draws.
    pub fn one_in(&mut self, n: u8) -> bool {
        self.byte().is_multiple_of(n.max(1))
    }

    fn exhausted(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// Pieces of text a hostile or merely foreign document carries: multi-byte and combining
/// characters, right-to-left marks, zero-width joiners, control characters, date-like prefixes
/// that a byte cut would split inside a character, numbers no JSON number holds, path pieces.
const FRAGMENTS: &[&str] = &[
    "2025-03-1",
    "2025-03-10",
    "2026-12-07T23:30:00-05:00",
    "7 décembre 2026",
    "2026年12月7日",
    "12/07/2026",
    "é",
    "e\u{301}",
    "日",
    "😀",
    "👩‍👩‍👧",
    "\u{202e}",
    "\u{200d}",
    "\u{0}",
    "\u{7f}",
    "\u{fffd}",
    "\u{10ffff}",
    "a",
    "Z",
    "0",
    "9",
    "-",
    ".",
    "..",
    "/",
    "\\",
    "?",
    "#",
    "%2e",
    " ",
    "\t",
    "\n",
    "'",
    "\"",
    "<b>",
    "&amp;",
    "1e999",
    "-1e999",
    "NaN",
    "inf",
    "-0",
    "0x1F",
    "12345678901234567890123",
    "3.5",
    " 2.5 ",
    "",
];

/// Text of 0–24 fragments, so a multi-byte character lands at every byte position by turns.
pub fn hostile_text(c: &mut Choices<'_>) -> String {
    let parts = c.below(25);
    (0..parts).map(|_| c.pick(FRAGMENTS)).collect()
}

/// The question types the normaliser knows, and some it does not.
const QUESTION_TYPES: &[&str] = &[
    "Text",
    "Number",
    "Integer",
    "Decimal",
    "Numeric",
    "Calculation",
    "Date",
    "DateTime",
    "Date_Time",
    "Time",
    "Select",
    "MultiSelect",
    "Multi_Select",
    "SingleSelect",
    "Dropdown",
    "Radio",
    "Checkbox",
    "Location",
    "GPS",
    "GeoLocation",
    "Image",
    "Signature",
    "Sketch",
    "Audio",
    "Barcode",
    "",
    "DATE",
    "dAtE",
    "Unknown",
    "日付",
];

/// Any JSON value, leaning to the shapes answers take, `depth` levels deep at most.
pub fn hostile_value(c: &mut Choices<'_>, depth: u32) -> Value {
    let kinds = if depth == 0 { 6 } else { 12 };
    match c.below(kinds) {
        0 => Value::Null,
        1 => json!(c.one_in(2)),
        2 => json!(hostile_text(c)),
        3 => [json!(i64::MIN), json!(u64::MAX), json!(-0.0), json!(1e308), json!(c.byte()), json!(0.1)][c.below(6)]
            .clone(),
        4 => json!(format!("{}-{:02}-{:02}", 1900 + u32::from(c.byte()) * 3, c.byte() % 14, c.byte() % 33)),
        5 => json!(c.pick(FRAGMENTS)),
        6 => json!({ "provided": { "time": hostile_text(c), "zone": hostile_text(c) } }),
        7 => json!({ "time": hostile_value(c, depth - 1) }),
        8 => {
            let bytes = ["aGVsbG8=", "", "!!!", "aGk", "////", "AA=="][c.below(6)];
            let mut media = serde_json::Map::new();
            media.insert("bytes".into(), json!(bytes));
            if !c.one_in(4) {
                media.insert("identifier".into(), hostile_value(c, 0));
            }
            media.insert("filename".into(), hostile_value(c, 0));
            media.insert("contentType".into(), hostile_value(c, 0));
            Value::Object(media)
        }
        9 => json!({ "coordinates": { "latitude": hostile_value(c, 0), "longitude": hostile_value(c, 0) },
                     "address": hostile_value(c, 0) }),
        10 => Value::Array((0..c.below(4)).map(|_| hostile_value(c, depth - 1)).collect()),
        _ => {
            let mut object = serde_json::Map::new();
            for _ in 0..c.below(4) {
                object.insert(hostile_text(c), hostile_value(c, depth - 1));
            }
            Value::Object(object)
        }
    }
}

fn hostile_answers(c: &mut Choices<'_>) -> Value {
    let answers: Vec<Value> = (0..c.below(8))
        .map(|_| {
            let values = match c.below(4) {
                0 => hostile_value(c, 2),
                1 => Value::Null,
                _ => Value::Array((0..c.below(4)).map(|_| hostile_value(c, 2)).collect()),
            };
            let mut answer = serde_json::Map::new();
            if !c.one_in(5) {
                answer.insert("label".into(), hostile_value(c, 0));
            }
            if c.one_in(3) {
                answer.insert("question".into(), json!(hostile_text(c)));
            }
            answer.insert("type".into(), if c.one_in(9) { hostile_value(c, 0) } else { json!(c.pick(QUESTION_TYPES)) });
            answer.insert("values".into(), values);
            Value::Object(answer)
        })
        .collect();
    Value::Array(answers)
}

fn hostile_pages(c: &mut Choices<'_>, depth: u32) -> Value {
    if c.one_in(7) {
        // Labels as Node Names: pages keyed by label, questions as nodes.
        return hostile_value(c, 3);
    }
    let pages: Vec<Value> = (0..c.below(3) + 1)
        .map(|_| {
            let sections: Vec<Value> = (0..c.below(3) + 1)
                .map(|_| {
                    if depth > 0 && c.one_in(4) {
                        let rows: Vec<Value> = (0..c.below(3))
                            .map(|row| json!({ "row": row, "pages": hostile_pages(c, depth - 1) }))
                            .collect();
                        json!({ "type": c.pick(&["Repeat", "repeat", "REPEAT"]), "label": hostile_value(c, 0), "rows": rows })
                    } else {
                        json!({ "type": "Flow", "answers": hostile_answers(c) })
                    }
                })
                .collect();
            let mut page = json!({ "label": hostile_text(c), "sections": sections });
            if c.one_in(5) {
                page["answers"] = hostile_answers(c);
            }
            page
        })
        .collect();
    Value::Array(pages)
}

/// A submission document built from `data`: the Standard format's shape (every question type,
/// repeats, media, dates, locations) filled with hostile values, or, now and then, a shape
/// TrueContext never sends (a `dataRecord` wrapper, wrong types at the top).
pub fn hostile_document(data: &[u8]) -> Value {
    let c = &mut Choices::new(data);
    let identifier = match c.below(6) {
        0 => json!(hostile_text(c)),
        1 => json!(u64::from(c.byte()) * 1_000_003),
        2 => hostile_value(c, 1),
        _ => json!(format!("{}", 1_000_000 + u32::from(c.byte()) * 977)),
    };
    let mut document = json!({
        "identifier": identifier,
        "referenceNumber": hostile_value(c, 0),
        "state": c.pick(&[json!("Complete"), json!("Dispatched"), json!(""), json!(7), json!(null)]),
        "name": hostile_value(c, 0),
        "form": { "identifier": hostile_value(c, 0), "name": hostile_value(c, 0), "version": hostile_value(c, 0),
                  "formSpaceId": hostile_value(c, 0) },
        "user": hostile_value(c, 1),
        "deviceSubmitDate": hostile_value(c, 1),
        "serverReceiveDate": hostile_value(c, 0),
        "geoStamp": hostile_value(c, 1),
        "zone": hostile_value(c, 0),
        "pages": hostile_pages(c, 2),
    });
    if !c.exhausted() && c.one_in(11) {
        document = json!({ "dataRecord": document });
    }
    document
}

/// The structure-aware document target: whatever the document holds, normalising it gives a
/// record or a typed refusal (never a panic), the record serialises, the same content hashes
/// alike however it is laid out, and every media item sits under a safe, distinct name.
pub fn document_structured(data: &[u8]) {
    let document = hostile_document(data);
    let media_path = |name: &str| format!("media/c/1/{name}");
    match normalise::normalise(&document, &media_path) {
        Ok(normalised) => {
            let bytes = serde_json::to_vec_pretty(&Value::Object(normalised.record.clone())).unwrap();
            assert!(!bytes.is_empty());
            let relaid: Value = serde_json::from_slice(&serde_json::to_vec(&document).unwrap()).unwrap();
            let again = normalise::normalise(&relaid, &media_path).expect("the same document normalises again");
            assert_eq!(normalise::content_hash(&again.record), normalise::content_hash(&normalised.record));
            let mut names = std::collections::HashSet::new();
            for media in &normalised.media {
                let id = media.id.as_str();
                assert!(!id.is_empty() && id != "." && id != ".." && id.len() <= 64, "media name {id:?}");
                assert!(id.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)), "media name {id:?}");
                assert!(names.insert(id), "two media items share {id:?}");
            }
        }
        Err(e) => assert_bounded("document_structured", &e.to_string()),
    }
}
