//! What a push carries. TrueContext's HTTP Data Destination sends one of (docs/truecontext-api.md,
//! "Pushes"): the submission's *Standard* JSON document (the same shape `document.json` serves,
//! sometimes wrapped in `dataRecord`), its *Labels as Node Names* variant (answers named after
//! their question labels), or a body its owner wrote as a FreeMarker template, which may carry
//! anything. A template body is accepted when it names the submission; its document is then
//! fetched when it is processed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How much of the submission a push carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushFormat {
    /// The Standard document: pages → sections → answers → values.
    Standard,
    /// Labels as Node Names: the pages are there, with answers named by label.
    Labels,
    /// Anything else that names the submission: the document must be fetched.
    Template,
}

impl PushFormat {
    /// True when processing can land the push as it is, without a TrueContext call.
    pub fn is_complete(self) -> bool {
        !matches!(self, PushFormat::Template)
    }
}

/// A push, read enough to store it and know what processing will need.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub identifier: String,
    pub format: PushFormat,
}

/// Why a body is not a push we can take; answered 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is empty")]
    Empty,
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("the body names no submission: expected a top-level \"identifier\", \"dataRecord.identifier\"{0}")]
    NoIdentifier(String),
    #[error("the submission identifier {0:?} is not a TrueContext identifier (1-64 letters, digits, - or _)")]
    BadIdentifier(String),
    #[error("the body holds more than {0} JSON values; a submission never does")]
    TooManyValues(usize),
    #[error("the body is a submission document whose own identifier is missing or not a TrueContext identifier ({0}), though it names {1:?} elsewhere")]
    DocumentIdentifier(String, String),
}

/// Reads a pushed body. `id_field` is `WEBHOOK_ID_FIELD`, a dotted path.
pub fn read(body: &[u8], id_field: Option<&str>) -> Result<(Push, Value), PayloadError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Empty);
    }
    let values = crate::landing::normalise::MAX_DOCUMENT_VALUES;
    if crate::landing::normalise::within_values(body, values).is_err() {
        return Err(PayloadError::TooManyValues(values));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        PayloadError::NotJson(format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()))
    })?;
    let root = value.as_object().ok_or(PayloadError::NotAnObject)?;
    let record = root.get("dataRecord").and_then(Value::as_object).unwrap_or(root);
    let configured = id_field.and_then(|path| lookup(&value, path));
    let found = [record.get("identifier"), root.get("identifier"), configured].into_iter().flatten().find_map(text);
    let Some(identifier) = found else {
        let also = id_field.map(|f| format!(" or {f:?} (WEBHOOK_ID_FIELD)")).unwrap_or_default();
        return Err(PayloadError::NoIdentifier(also));
    };
    if !crate::naming::is_record_id(&identifier) {
        return Err(PayloadError::BadIdentifier(identifier.chars().take(80).collect()));
    }
    let format = match record.get("pages") {
        Some(Value::Array(pages)) if pages.iter().any(is_standard_page) => PushFormat::Standard,
        Some(Value::Array(pages)) if pages.is_empty() => PushFormat::Standard,
        Some(Value::Array(_) | Value::Object(_)) => PushFormat::Labels,
        _ => PushFormat::Template,
    };
    if format.is_complete() {
        // A document is landed under its own identifier (the landing's rule): the push must
        // be answered, stored and queued under that same one, or refused now. They once
        // disagreed: `{"identifier": "222", "dataRecord": {"identifier": -3, …}}` was
        // acknowledged as 222 and landed as -3.
        let own = crate::landing::normalise::identifier(&value)
            .ok()
            .filter(|id| crate::naming::is_record_id(id) && *id == identifier)
            .ok_or_else(|| PayloadError::DocumentIdentifier(document_identifier_shown(&value), identifier.clone()))?;
        return Ok((Push { identifier: own, format }, value));
    }
    Ok((Push { identifier, format }, value))
}

/// A Standard page: `sections[].answers[]`, or (older documents) `answers[]` directly.
fn is_standard_page(page: &Value) -> bool {
    let has_answer_list = |v: &Value| v.get("answers").is_some_and(Value::is_array);
    has_answer_list(page)
        || page.get("sections").and_then(Value::as_array).is_some_and(|s| s.iter().any(has_answer_list))
}

fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// What a document's own identifier is, for the refusal (bounded, never the whole body).
fn document_identifier_shown(value: &Value) -> String {
    match crate::landing::normalise::identifier(value) {
        Ok(id) => format!("{:?}", id.chars().take(80).collect::<String>()),
        Err(e) => e.to_string(),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read_json(value: Value, field: Option<&str>) -> Result<Push, PayloadError> {
        read(&serde_json::to_vec(&value).unwrap(), field).map(|(push, _)| push)
    }

    #[test]
    fn each_format_is_recognised() {
        let standard = json!({"identifier": "1813302612", "pages": [{"sections": [{"answers": [{"label": "A", "values": ["x"]}]}]}]});
        assert_eq!(read_json(standard.clone(), None).unwrap().format, PushFormat::Standard);
        let wrapped = json!({"dataRecord": standard});
        assert_eq!(
            read_json(wrapped, None).unwrap(),
            Push { identifier: "1813302612".into(), format: PushFormat::Standard }
        );
        let labels = json!({"identifier": 7, "pages": [{"Inspection": {"Result": "Pass"}}]});
        assert_eq!(read_json(labels, None).unwrap(), Push { identifier: "7".into(), format: PushFormat::Labels });
        let template = json!({"submission": {"id": "42"}, "form": "Pump"});
        assert_eq!(read_json(template.clone(), Some("submission.id")).unwrap().format, PushFormat::Template);
        let no_id = read_json(template, None).unwrap_err();
        assert!(no_id.to_string().contains("dataRecord.identifier"), "{no_id}");
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        assert_eq!(read(b"  ", None).unwrap_err(), PayloadError::Empty);
        assert!(matches!(read(b"{\"identifier\":", None).unwrap_err(), PayloadError::NotJson(_)));
        assert_eq!(read(b"[1]", None).unwrap_err(), PayloadError::NotAnObject);
        assert!(matches!(
            read_json(json!({"identifier": "../etc"}), None).unwrap_err(),
            PayloadError::BadIdentifier(_)
        ));
        assert!(matches!(read_json(json!({"identifier": ""}), None).unwrap_err(), PayloadError::NoIdentifier(_)));
        assert!(matches!(read_json(json!({"identifier": -3}), None).unwrap_err(), PayloadError::NoIdentifier(_)));
    }

    /// Found by the outside review: the intake and the landing read the identifier of one body
    /// differently, so a push was acknowledged under one id and landed under another.
    #[test]
    fn a_document_is_taken_under_the_identifier_it_lands_under_or_refused() {
        let split = json!({"identifier": "222", "dataRecord": {"identifier": -3, "pages": []}});
        assert!(matches!(read_json(split, None).unwrap_err(), PayloadError::DocumentIdentifier(..)));
        let missing = json!({"identifier": "111", "dataRecord": {"pages": []}});
        assert!(matches!(read_json(missing, None).unwrap_err(), PayloadError::DocumentIdentifier(..)));
        let agreeing = json!({"identifier": "9", "dataRecord": {"identifier": 9, "pages": []}});
        assert_eq!(read_json(agreeing, None).unwrap().identifier, "9");
        let zeros = format!("{{\"identifier\": \"1\", \"pages\": [{}0]}}", "0,".repeat(250_000));
        assert!(matches!(read(zeros.as_bytes(), None).unwrap_err(), PayloadError::TooManyValues(_)));
    }
}
