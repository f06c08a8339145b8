//! A TrueContext document (the Standard JSON format; docs/truecontext-api.md, "One submission")
//! as the normalised record the product lands: answers keyed by question label with typed
//! values, repeat sections as arrays of rows, media taken out as references.
//!
//! The document format is only partly documented, so this reads defensively: a field that is
//! missing or has an unexpected shape becomes `null` (or the value as sent), never an error.
//! Only a document without an identifier is refused.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::truecontext::model::parse_time;

/// A media item cut out of the document: stored once, referenced from the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    pub id: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// The normalised record (without the landing's own fields) and the media it references.
#[derive(Debug, Clone)]
pub struct Normalised {
    pub identifier: String,
    pub record: Map<String, Value>,
    pub media: Vec<Media>,
}

/// Why a document cannot be landed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocumentError {
    #[error("the document is not a JSON object")]
    NotAnObject,
    #[error("the document has no identifier")]
    NoIdentifier,
    #[error("the document's identifier {0:?} is not a TrueContext identifier")]
    BadIdentifier(String),
    #[error("the document holds more than {0} JSON values; a submission never does, and reading it would take too much memory")]
    TooManyValues(usize),
    #[error("the document carries more than {0} media items; a submission never does")]
    TooManyMedia(usize),
}

/// The most JSON values (objects, arrays, strings, numbers, booleans, nulls) a document may
/// hold. A form with a thousand questions in a hundred repeat rows stays well inside; a body of
/// five million zeros (10 MiB) does not, and parsed whole it once took 600 MiB.
pub const MAX_DOCUMENT_VALUES: usize = 200_000;

/// Counts the values of a JSON text without building it, stopping at `max`: what a document
/// would cost parsed is known before it is parsed. A text that is not JSON passes (the real
/// parse then says where it is wrong).
pub fn within_values(bytes: &[u8], max: usize) -> Result<(), DocumentError> {
    use serde::de::DeserializeSeed;
    let left = std::cell::Cell::new(max);
    let hit = std::cell::Cell::new(false);
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let counted = Counter { left: &left, hit: &hit }.deserialize(&mut reader);
    match counted {
        Err(_) if hit.get() => Err(DocumentError::TooManyValues(max)),
        _ => Ok(()),
    }
}

/// serde's visitor over any JSON value that only counts (serde has no "count the nodes";
/// `IgnoredAny` skips without counting).
#[derive(Clone, Copy)]
struct Counter<'a> {
    left: &'a std::cell::Cell<usize>,
    hit: &'a std::cell::Cell<bool>,
}

impl Counter<'_> {
    fn tick<E: serde::de::Error>(self) -> Result<(), E> {
        match self.left.get() {
            0 => {
                self.hit.set(true);
                Err(E::custom("too many values"))
            }
            n => {
                self.left.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Counter<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Counter<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.tick()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.tick()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.tick()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.tick()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.tick()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.tick()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.tick()?;
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

/// The submission's identifier, read without normalising the rest.
pub fn identifier(document: &Value) -> Result<String, DocumentError> {
    let root = document.as_object().ok_or(DocumentError::NotAnObject)?;
    let record = root.get("dataRecord").and_then(Value::as_object).unwrap_or(root);
    text(record.get("identifier")).ok_or(DocumentError::NoIdentifier)
}

/// Normalises `document`; `media_path` names where a media item of this submission is stored.
pub fn normalise(document: &Value, media_path: &dyn Fn(&str) -> String) -> Result<Normalised, DocumentError> {
    let identifier = identifier(document)?;
    let root = document.as_object().ok_or(DocumentError::NotAnObject)?;
    // Some renderings wrap the record in `dataRecord`.
    let record = root.get("dataRecord").and_then(Value::as_object).unwrap_or(root);
    let mut sink = MediaSink::default();
    let answers = answers_of_pages(record.get("pages"), &mut sink, media_path);
    if sink.overflowed {
        return Err(DocumentError::TooManyMedia(MAX_MEDIA_ITEMS));
    }
    let media = sink.items;
    let form = record.get("form");
    let out = json!({
        "identifier": identifier,
        "reference_number": text(record.get("referenceNumber")),
        "form": {
            "id": text(form.and_then(|f| f.get("identifier")).or(record.get("formId"))),
            "name": text(form.and_then(|f| f.get("name"))).or_else(|| text(record.get("name"))),
            "version": form.and_then(|f| f.get("version")).cloned().unwrap_or(Value::Null),
        },
        "formspace": {
            "id": text(form.and_then(|f| f.get("formSpaceId")).or(record.get("formSpaceId"))),
            "name": text(record.get("formSpaceName")),
        },
        "user": {
            "id": text(record.get("user").and_then(|u| u.get("identifier")).or(record.get("userId"))),
            "username": text(record.get("user").and_then(|u| u.get("username")).or(record.get("username"))),
        },
        "device_submit": instant(record.get("deviceSubmitDate")),
        "server_receive": instant(record.get("serverReceiveDate")),
        "state": text(record.get("state")),
        "data_state": text(record.get("dataState")),
        "zone": text(record.get("zone")),
        "geo_stamp": location(record.get("geoStamp")),
        "answers": answers,
        "media": media.iter().map(|m| json!({
            "id": m.id, "filename": m.filename, "content_type": m.content_type,
            "size": m.bytes.len(), "sha256": hex::encode(Sha256::digest(&m.bytes)), "path": media_path(&m.id),
        })).collect::<Vec<_>>(),
    });
    let Value::Object(record) = out else { unreachable!("built as an object") };
    Ok(Normalised { identifier, record, media })
}

/// The hash of what the record says (its own bookkeeping fields left out), so the same content
/// from a push and from a pull is one version however the bytes were laid out.
pub fn content_hash(record: &Map<String, Value>) -> String {
    // serde_json's maps are ordered by key, so this serialisation is canonical.
    hex::encode(Sha256::digest(Value::Object(record.clone()).to_string().as_bytes()))
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A date-time as the document gives it: a string, or `{provided: {time, zone}}` (older
/// documents: `{time}`), as UTC plus the zone provided.
fn instant(value: Option<&Value>) -> Value {
    let Some(value) = value else { return Value::Null };
    let (time, zone) = match value {
        Value::String(s) => (Some(s.as_str()), None),
        Value::Object(o) => {
            let provided = o.get("provided").and_then(Value::as_object).unwrap_or(o);
            (provided.get("time").and_then(Value::as_str), provided.get("zone").and_then(Value::as_str))
        }
        _ => (None, None),
    };
    match time.and_then(parse_time) {
        Some(utc) => {
            json!({ "utc": utc.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "zone": zone, "provided": time })
        }
        None => Value::Null,
    }
}

fn location(value: Option<&Value>) -> Value {
    let Some(Value::Object(o)) = value else { return Value::Null };
    let coordinates = o.get("coordinates").and_then(Value::as_object).unwrap_or(o);
    let number = |names: &[&str]| names.iter().find_map(|n| coordinates.get(*n).and_then(Value::as_f64));
    json!({
        "lat": number(&["latitude", "lat"]),
        "long": number(&["longitude", "long", "lng"]),
        "alt": number(&["altitude", "alt"]),
        "address": text(o.get("address")),
    })
}

/// Answers of all pages, keyed by label (question when there is no label). Repeat sections
/// become arrays of rows, each row the answers of its own pages.
fn answers_of_pages(
    pages: Option<&Value>,
    media: &mut MediaSink,
    media_path: &dyn Fn(&str) -> String,
) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(Value::Object(tree)) = pages {
        // Labels as Node Names, pages keyed by label.
        add_labelled(&mut out, tree, media, media_path);
        return out;
    }
    for page in pages.and_then(Value::as_array).into_iter().flatten() {
        let standard =
            page.get("answers").is_some_and(Value::is_array) || page.get("sections").is_some_and(Value::is_array);
        if let (false, Some(tree)) = (standard, page.as_object()) {
            // Labels as Node Names: questions are nodes named by their labels (the layout is
            // not documented; docs/truecontext-api.md). Every leaf is an answer.
            add_labelled(&mut out, tree, media, media_path);
            continue;
        }
        // Older documents have answers directly on the page.
        add_answers(&mut out, page.get("answers"), media, media_path);
        for section in page.get("sections").and_then(Value::as_array).into_iter().flatten() {
            let is_repeat =
                section.get("type").and_then(Value::as_str).is_some_and(|t| t.eq_ignore_ascii_case("repeat"));
            if is_repeat {
                let rows: Vec<Value> = section
                    .get("rows")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|row| Value::Object(answers_of_pages(row.get("pages"), media, media_path)))
                    .collect();
                let name =
                    text(section.get("label")).or_else(|| text(section.get("name"))).unwrap_or_else(|| "repeat".into());
                out.insert(name, Value::Array(rows));
            } else {
                add_answers(&mut out, section.get("answers"), media, media_path);
            }
        }
    }
    out
}

/// The answers of a Labels-as-Node-Names tree: a node whose value is not itself a group of
/// nodes (a scalar, a list, a media item, a date-time) is a question named by its key; pages and
/// sections are the groups around them. Later duplicates of a label win, as in the Standard form.
fn add_labelled(
    out: &mut Map<String, Value>,
    tree: &Map<String, Value>,
    media: &mut MediaSink,
    media_path: &dyn Fn(&str) -> String,
) {
    for (label, node) in tree {
        let is_value =
            |o: &Map<String, Value>| ["bytes", "provided", "time", "identifier"].iter().any(|k| o.contains_key(*k));
        match node {
            Value::Object(group) if !is_value(group) => add_labelled(out, group, media, media_path),
            Value::Array(values) => {
                out.insert(label.clone(), typed("", values.clone(), media, media_path));
            }
            Value::Null => {
                out.insert(label.clone(), Value::Array(Vec::new()));
            }
            single => {
                out.insert(label.clone(), typed("", vec![single.clone()], media, media_path));
            }
        }
    }
}

fn add_answers(
    out: &mut Map<String, Value>,
    answers: Option<&Value>,
    media: &mut MediaSink,
    media_path: &dyn Fn(&str) -> String,
) {
    for answer in answers.and_then(Value::as_array).into_iter().flatten() {
        let Some(label) = text(answer.get("label")).or_else(|| text(answer.get("question"))) else { continue };
        let kind = answer.get("type").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
        let values: Vec<Value> = match answer.get("values") {
            Some(Value::Array(values)) => values.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(single) => vec![single.clone()],
        };
        out.insert(label, typed(&kind, values, media, media_path));
    }
}

/// One answer's value by its question type (the type names are not documented: the common
/// ones are recognised, anything else keeps the value as sent).
fn typed(kind: &str, values: Vec<Value>, media: &mut MediaSink, media_path: &dyn Fn(&str) -> String) -> Value {
    let first = values.first().cloned().unwrap_or(Value::Null);
    match kind {
        "number" | "integer" | "decimal" | "numeric" | "calculation" => match &first {
            // "inf", "NaN" and "1e999" parse, but JSON has no such number: kept as sent.
            Value::String(s) => {
                s.trim().parse::<f64>().ok().filter(|n| n.is_finite()).map_or(first.clone(), |n| json!(n))
            }
            _ => first,
        },
        "date" => date(&first),
        "datetime" | "date_time" | "time" => instant(Some(&first)),
        "select" | "multiselect" | "multi_select" | "singleselect" | "dropdown" | "radio" | "checkbox" => {
            Value::Array(values)
        }
        "location" | "gps" | "geolocation" => location(Some(&first)),
        _ if values.iter().any(|v| v.get("bytes").is_some()) => {
            Value::Array(values.iter().filter_map(|v| media_reference(v, media, media_path)).collect())
        }
        _ if values.len() == 1 => first,
        _ => Value::Array(values),
    }
}

/// A Date answer as `YYYY-MM-DD`: the calendar date it starts with (the date as the user
/// entered it, whatever zone follows), else the UTC date of a date-time in any form
/// [`instant`] reads, else the value as sent (a date written in words, say), so nothing the
/// user entered is lost. Outside text is never cut by byte index: a date-like prefix is taken
/// with `str::get`, which refuses a cut inside a character (a French or Japanese date once
/// panicked here).
fn date(value: &Value) -> Value {
    let calendar = |text: &str| {
        let day = text.get(..10)?;
        chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok().map(|d| d.format("%Y-%m-%d").to_string())
    };
    if let Some(day) = value.as_str().and_then(|s| calendar(s.trim_start())) {
        return json!(day);
    }
    if let Some(day) = instant(Some(value)).get("utc").and_then(Value::as_str).and_then(calendar) {
        return json!(day);
    }
    match value {
        Value::String(s) if !s.trim().is_empty() => value.clone(),
        _ => Value::Null,
    }
}

/// Takes an inline media value (base64 `bytes`) out of the record: its bytes go to `media`,
/// the record keeps where they are.
fn media_reference(value: &Value, media: &mut MediaSink, media_path: &dyn Fn(&str) -> String) -> Option<Value> {
    let bytes = value.get("bytes").and_then(Value::as_str)?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(bytes.trim()).ok()?;
    if media.overflowed || media.items.len() >= MAX_MEDIA_ITEMS {
        // Beyond any form's media: the document is refused (normalise says so), and nothing
        // more is decoded or hashed for it.
        media.overflowed = true;
        return None;
    }
    let mut id = media_id(text(value.get("identifier")).as_deref(), &decoded);
    if media.get(&id).is_some_and(|m| m.bytes != decoded) {
        // The same identifier with other bytes (a hostile or broken document): both are kept.
        id = format!("{id}-{}", short_hash(&decoded));
    }
    let item = Media {
        id: id.clone(),
        filename: text(value.get("filename")),
        content_type: text(value.get("contentType")),
        bytes: decoded,
    };
    let reference = json!({ "media_id": id, "filename": item.filename, "content_type": item.content_type, "path": media_path(&id) });
    media.add(item);
    Some(reference)
}

/// The most media items one document may carry. A form's photos and signatures number in the
/// tens; a hundred thousand empty ones once took 800 MiB and minutes (each cost a search of
/// every item before it).
pub const MAX_MEDIA_ITEMS: usize = 1000;

/// The media cut out of a document so far, found by id in constant time.
#[derive(Default)]
struct MediaSink {
    items: Vec<Media>,
    by_id: std::collections::HashMap<String, usize>,
    overflowed: bool,
}

impl MediaSink {
    fn get(&self, id: &str) -> Option<&Media> {
        self.by_id.get(id).and_then(|&at| self.items.get(at))
    }

    /// Keeps `item` unless one of its id is kept already (the same item met twice).
    fn add(&mut self, item: Media) {
        if !self.by_id.contains_key(&item.id) {
            self.by_id.insert(item.id.clone(), self.items.len());
            self.items.push(item);
        }
    }
}

/// The name a media item is stored under, the last segment of a blob path: its identifier when
/// that is already safe (letters, digits, `-`, `_`, `.`; at most 64; not empty, `.` or `..`),
/// otherwise what is safe of it followed by a hash of the whole identifier, so two identifiers
/// that sanitise alike (`a/b`, `ab?`) never share a blob; without an identifier, a hash of the
/// bytes.
pub fn media_id(identifier: Option<&str>, bytes: &[u8]) -> String {
    let allowed = |c: &char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    match identifier {
        None => short_hash(bytes),
        Some(id) => {
            let safe: String = id.chars().filter(allowed).take(64).collect();
            if safe == id && !safe.is_empty() && safe != "." && safe != ".." {
                safe
            } else {
                let kept: String = safe.trim_matches('.').chars().take(40).collect();
                let hash = short_hash(id.as_bytes());
                if kept.is_empty() {
                    hash
                } else {
                    format!("{kept}-{hash}")
                }
            }
        }
    }
}

/// 16 hex digits of the SHA-256 of `bytes`.
fn short_hash(bytes: &[u8]) -> String {
    crate::naming::hex_prefix(&Sha256::digest(bytes), 16)
}

/// The time a record's order is judged by when nothing better is known.
pub fn received(record: &Map<String, Value>) -> Option<DateTime<Utc>> {
    record.get("server_receive")?.get("utc")?.as_str().and_then(parse_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(id: &str) -> String {
        format!("media/c/1/{id}")
    }

    fn document() -> Value {
        json!({
            "identifier": "3051172209", "referenceNumber": "20250304-3051172209", "version": "v2",
            "zone": "America/Toronto", "state": "Complete", "dataState": "Processed", "name": "Pump inspection",
            "form": { "identifier": "207761540", "name": "Pump inspection", "version": 3, "formSpaceId": "fs-9" },
            "user": { "identifier": "118800321", "username": "inspector@example.com" },
            "deviceSubmitDate": { "provided": { "time": "2025-03-04T10:20:07-05:00", "zone": "America/Toronto" } },
            "serverReceiveDate": "2025-03-04T15:20:41Z",
            "geoStamp": { "address": "1 Main St", "coordinates": { "latitude": 45.40, "longitude": -75.71 } },
            "somethingNew": { "x": 1 },
            "pages": [ { "name": "Page1", "label": "Overview", "sections": [
                { "name": "Section1", "type": "Flow", "answers": [
                    { "label": "Result", "question": "Inspection Result", "type": "Select", "values": ["Pass", "Clean"] },
                    { "label": "Units", "type": "Number", "values": ["3.5"] },
                    { "label": "Due", "type": "Date", "values": ["2025-03-10"] },
                    { "label": "Seen", "type": "DateTime", "values": [{ "provided": { "time": "2025-03-04T10:00:00-05:00", "zone": "America/Toronto" } }] },
                    { "label": "Where", "type": "Location", "values": [{ "coordinates": { "latitude": 1.5, "longitude": 2.5, "altitude": 30 }, "address": "Site" }] },
                    { "label": "Photo", "type": "Image", "values": [
                        { "identifier": "90117", "filename": "pump.jpg", "contentType": "image/jpeg", "bytes": "aGVsbG8=" } ] } ] },
                { "name": "Parts", "label": "Parts", "type": "Repeat", "rows": [
                    { "row": 0, "pages": [ { "sections": [ { "answers": [ { "label": "Part", "type": "Text", "values": ["Valve"] } ] } ] } ] },
                    { "row": 1, "pages": [ { "sections": [ { "answers": [ { "label": "Part", "type": "Text", "values": ["Seal"] } ] } ] } ] }
                ] } ] } ]
        })
    }

    #[test]
    fn answers_are_typed_and_media_taken_out() {
        let n = normalise(&document(), &path).unwrap();
        let r = &n.record;
        assert_eq!(n.identifier, "3051172209");
        assert_eq!(r["reference_number"], "20250304-3051172209");
        assert_eq!(r["form"], json!({ "id": "207761540", "name": "Pump inspection", "version": 3 }));
        assert_eq!(r["formspace"]["id"], "fs-9");
        assert_eq!(r["device_submit"]["utc"], "2025-03-04T15:20:07Z");
        assert_eq!(r["device_submit"]["zone"], "America/Toronto");
        assert_eq!(r["geo_stamp"]["lat"], 45.40);
        let a = &r["answers"];
        assert_eq!(a["Result"], json!(["Pass", "Clean"]));
        assert_eq!(a["Units"], json!(3.5));
        assert_eq!(a["Due"], "2025-03-10");
        assert_eq!(a["Seen"]["utc"], "2025-03-04T15:00:00Z");
        assert_eq!(a["Where"], json!({ "lat": 1.5, "long": 2.5, "alt": 30.0, "address": "Site" }));
        assert_eq!(a["Photo"][0]["path"], "media/c/1/90117");
        assert!(!r.values().any(|v| v.to_string().contains("aGVsbG8=")), "no media bytes in the record");
        assert_eq!(
            n.media,
            vec![Media {
                id: "90117".into(),
                filename: Some("pump.jpg".into()),
                content_type: Some("image/jpeg".into()),
                bytes: b"hello".to_vec()
            }]
        );
        assert_eq!(a["Parts"], json!([{ "Part": "Valve" }, { "Part": "Seal" }]));
    }

    #[test]
    fn the_same_content_hashes_alike_however_it_was_laid_out() {
        let compact = serde_json::to_vec(&document()).unwrap();
        let pretty = serde_json::to_vec_pretty(&document()).unwrap();
        let a = normalise(&serde_json::from_slice(&compact).unwrap(), &path).unwrap();
        let b = normalise(&serde_json::from_slice(&pretty).unwrap(), &path).unwrap();
        assert_eq!(content_hash(&a.record), content_hash(&b.record));
        let mut edited = document();
        edited["pages"][0]["sections"][0]["answers"][0]["values"] = json!(["Fail"]);
        assert_ne!(content_hash(&normalise(&edited, &path).unwrap().record), content_hash(&a.record));
    }

    fn answer(kind: &str, values: Value) -> Value {
        let document =
            json!({"identifier": "1", "pages": [{"answers": [{"label": "A", "type": kind, "values": values}]}]});
        normalise(&document, &path).unwrap().record["answers"]["A"].clone()
    }

    /// Issue 20: a multi-byte character across the tenth byte of a Date answer panicked.
    #[test]
    fn dates_in_any_text_are_read_or_kept_as_sent() {
        assert_eq!(answer("Date", json!(["2025-03-10"])), "2025-03-10");
        assert_eq!(answer("Date", json!(["2025-03-10T23:30:00-05:00"])), "2025-03-10", "the date as entered");
        assert_eq!(answer("Date", json!([{"provided": {"time": "2025-03-10T23:30:00-05:00"}}])), "2025-03-11");
        for text in ["7 décembre 2026", "2026年12月7日です", "202😀-12-07", "12/07/2026 é", "é".repeat(20).as_str()]
        {
            assert_eq!(answer("Date", json!([text])), text, "{text:?} kept as sent");
        }
        assert_eq!(answer("Date", json!(["2025-13-45"])), "2025-13-45", "not a calendar date: kept");
        assert_eq!(answer("Date", json!([" "])), Value::Null);
        assert_eq!(answer("Date", json!([17])), Value::Null);
        assert_eq!(answer("Date", json!([])), Value::Null);
    }

    /// Found by the outside review: a 10 MiB push of five million zeros took 600 MiB to read.
    #[test]
    fn a_document_with_too_many_values_is_refused_before_it_is_read() {
        let zeros = format!("{{\"identifier\": \"1\", \"values\": [{}0]}}", "0,".repeat(300_000));
        assert_eq!(
            within_values(zeros.as_bytes(), MAX_DOCUMENT_VALUES),
            Err(DocumentError::TooManyValues(MAX_DOCUMENT_VALUES))
        );
        assert_eq!(within_values(&serde_json::to_vec(&document()).unwrap(), MAX_DOCUMENT_VALUES), Ok(()));
        assert_eq!(within_values(br#"{"a": [1, 2, {"b": null}]}"#, 6), Ok(()), "six values");
        assert!(within_values(br#"{"a": [1, 2, {"b": null}]}"#, 5).is_err());
        assert_eq!(within_values(b"{not json", 10), Ok(()), "the parser names a syntax error");
    }

    /// Found by the outside review: 100,000 empty media values (1.3 MB) took 800 MiB.
    #[test]
    fn a_document_with_too_many_media_is_refused() {
        let values: Vec<Value> =
            (0..MAX_MEDIA_ITEMS + 1).map(|i| json!({"identifier": format!("m{i}"), "bytes": ""})).collect();
        let document =
            json!({"identifier": "1", "pages": [{"answers": [{"label": "P", "type": "Image", "values": values}]}]});
        assert_eq!(normalise(&document, &path).unwrap_err(), DocumentError::TooManyMedia(MAX_MEDIA_ITEMS));
        let fine: Vec<Value> = (0..MAX_MEDIA_ITEMS).map(|_| json!({"identifier": "same", "bytes": ""})).collect();
        let document =
            json!({"identifier": "1", "pages": [{"answers": [{"label": "P", "type": "Image", "values": fine}]}]});
        assert_eq!(normalise(&document, &path).unwrap().media.len(), 1, "the same item many times is one");
    }

    #[test]
    fn numbers_json_cannot_hold_are_kept_as_sent() {
        assert_eq!(answer("Number", json!(["1e999"])), "1e999");
        assert_eq!(answer("Number", json!(["NaN"])), "NaN");
        assert_eq!(answer("Number", json!([" 2.5 "])), 2.5);
    }

    /// Media names are blob path segments: never empty or a dot segment, and two identifiers
    /// never share one.
    #[test]
    fn media_are_stored_under_collision_free_names() {
        let item = |id: Value, bytes: &str| json!({"identifier": id, "bytes": bytes});
        let document = json!({"identifier": "1", "pages": [{"answers": [{"label": "P", "type": "Image", "values": [
            item(json!(""), "YQ=="), item(json!("."), "Yg=="), item(json!(".."), "Yw=="),
            item(json!("a/b"), "ZA=="), item(json!("ab"), "ZQ=="), item(json!("ab?"), "Zg=="),
            item(json!("x"), "Zw=="), item(json!("x"), "aA=="), item(json!("x"), "Zw=="),
            item(json!("é".repeat(80)), "aQ=="),
        ]}]}]});
        let n = normalise(&document, &path).unwrap();
        let ids: Vec<&str> = n.media.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids.len(), 9, "one item per distinct content: {ids:?}");
        let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        for id in &ids {
            assert!(!id.is_empty() && *id != "." && *id != "..", "{ids:?}");
            assert!(id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{id}");
        }
        assert!(ids.contains(&"ab") && ids.contains(&"x"), "safe identifiers keep their names: {ids:?}");
        let references = n.record["answers"]["P"].as_array().unwrap();
        assert_eq!(references.len(), 10);
        assert_eq!(references[6]["media_id"], references[8]["media_id"], "the same item twice is one");
    }

    #[test]
    fn odd_documents_are_read_or_refused_by_name() {
        assert_eq!(normalise(&json!([1]), &path).unwrap_err(), DocumentError::NotAnObject);
        assert_eq!(normalise(&json!({"pages": []}), &path).unwrap_err(), DocumentError::NoIdentifier);
        let wrapped = normalise(&json!({"dataRecord": {"identifier": 7, "pages": "nonsense"}}), &path).unwrap();
        assert_eq!(wrapped.identifier, "7");
        assert_eq!(wrapped.record["answers"], json!({}));
        let older = normalise(
            &json!({"identifier": "1", "deviceSubmitDate": {"time": "2025-01-01T00:00:00Z"},
            "pages": [{"answers": [{"question": "Q", "values": ["A"]}]}]}),
            &path,
        )
        .unwrap();
        assert_eq!(older.record["answers"]["Q"], "A");
        assert_eq!(older.record["device_submit"]["utc"], "2025-01-01T00:00:00Z");
    }
}
