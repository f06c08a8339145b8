//! What TrueContext's REST API answers, as far as the product reads it. Ids are strings, unknown
//! fields are ignored (TrueContext adds properties and never removes them), and dates are read
//! in any ISO-8601 form the API sends (see docs/truecontext-api.md, "Listing submissions").

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer};

/// The paged envelope every list endpoint answers with.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    #[serde(default)]
    pub total_number_of_results: u64,
    #[serde(default)]
    pub total_number_of_pages: u64,
    #[serde(default = "Vec::new")]
    pub page_data: Vec<T>,
}

/// What every view of a submission says: who it is and its processing state.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordSummary {
    #[serde(deserialize_with = "id")]
    pub identifier: String,
    #[serde(default)]
    pub reference_number: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub data_state: Option<String>,
}

/// One submission as `data.json` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordHeader {
    #[serde(flatten)]
    pub summary: RecordSummary,
    #[serde(default, deserialize_with = "optional_time")]
    pub server_receive_date: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "optional_id")]
    pub form_id: Option<String>,
    #[serde(default, deserialize_with = "optional_id")]
    pub form_version_id: Option<String>,
    #[serde(default, deserialize_with = "optional_id")]
    pub user_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

/// One submission's metadata (`data/{id}`): the only place the processed date is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordMetadata {
    #[serde(flatten)]
    pub summary: RecordSummary,
    #[serde(default, deserialize_with = "optional_time")]
    pub processed_timestamp: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "optional_time")]
    pub uploaded_timestamp: Option<DateTime<Utc>>,
}

/// A FormSpace (`formspaces`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FormSpace {
    #[serde(deserialize_with = "id")]
    pub identifier: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// A form of a FormSpace (`formspaces/{id}/forms`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Form {
    #[serde(deserialize_with = "id")]
    pub identifier: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
}

/// Ids are strings in the API; a number is accepted too, as some clients have seen.
fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    optional_id(d)?.ok_or_else(|| serde::de::Error::custom("the identifier is missing or empty"))
}

fn optional_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::Null) | None => None,
        Some(serde_json::Value::String(_)) => None,
        Some(other) => return Err(serde::de::Error::custom(format!("an identifier is not a string: {other}"))),
    })
}

fn optional_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => {
            parse_time(&text).map(Some).ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a date")))
        }
    }
}

/// An ISO-8601 instant as the API writes them: with `Z` or an offset (`+0000` or `+00:00`), with
/// or without fractions; a time without a zone is UTC (the API's default `tz`).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::<FixedOffset>::parse_from_str(text, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    None
}

/// How the list filters write an instant: UTC, milliseconds, `Z`.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_every_form_the_api_sends() {
        let expected = "2025-03-04T15:20:41Z".parse::<DateTime<Utc>>().unwrap();
        for text in [
            "2025-03-04T15:20:41Z",
            "2025-03-04T15:20:41.000Z",
            "2025-03-04T10:20:41-05:00",
            "2025-03-04T10:20:41.000-0500",
            "2025-03-04T15:20:41",
            "2025-03-04 15:20:41",
            " 2025-03-04T15:20:41+00:00 ",
        ] {
            assert_eq!(parse_time(text), Some(expected), "{text}");
        }
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(format_time(expected), "2025-03-04T15:20:41.000Z");
    }

    #[test]
    fn a_list_page_with_unknown_fields_and_numeric_ids() {
        let page: Page<RecordHeader> = serde_json::from_str(
            r#"{"totalNumberOfResults": 2, "totalNumberOfPages": 1, "zone": null, "somethingNew": [1],
                "pageData": [
                  {"identifier": "3051172209", "referenceNumber": "20250304-3051172209", "state": "Complete",
                   "dataState": "Processed", "serverReceiveDate": "2025-03-04T15:20:41Z", "formId": 207761540,
                   "extra": {"x": 1}},
                  {"identifier": 42}
                ]}"#,
        )
        .unwrap();
        assert_eq!(page.total_number_of_results, 2);
        assert_eq!(page.page_data[0].form_id.as_deref(), Some("207761540"));
        assert_eq!(page.page_data[1].summary.identifier, "42");
        assert!(serde_json::from_str::<Page<RecordHeader>>(r#"{"pageData": [{"state": "Complete"}]}"#).is_err());
        let empty: Page<RecordHeader> = serde_json::from_str("{}").unwrap();
        assert!(empty.page_data.is_empty());
    }
}
