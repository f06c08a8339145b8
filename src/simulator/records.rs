//! The simulator's records: how they are made (ids counted up, a Standard-format document
//! with a field TrueContext might add one day) and edited.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};

use super::{SimRecord, World};

pub(super) fn insert_records(
    world: &mut World,
    count: usize,
    form: &str,
    last: DateTime<Utc>,
    spacing: TimeDelta,
    team: &str,
) -> Vec<String> {
    let first = world.next_id;
    world.next_id += count as u64;
    (0..count)
        .map(|i| {
            let id = format!("{}", 3_000_000_000u64 + first + i as u64);
            let processed = last - spacing * (count - 1 - i) as i32;
            world.records.insert(id.clone(), new_record(&id, form, processed, team));
            id
        })
        .collect()
}

pub(super) fn new_record(id: &str, form: &str, processed: DateTime<Utc>, team: &str) -> SimRecord {
    SimRecord {
        id: id.to_owned(),
        form_id: form.to_owned(),
        formspace_id: "fs-1".into(),
        team: team.to_owned(),
        processed,
        state: "Complete".into(),
        document: document(id, form, processed).into_bytes(),
    }
}

/// A Standard-format document, with a field TrueContext might add one day.
pub(super) fn document(id: &str, form: &str, processed: DateTime<Utc>) -> String {
    let answers = json!([
        {"label": "Result", "question": "Inspection result", "type": "Select",
         "values": [if id.ends_with('7') { "Fail" } else { "Pass" }]},
        {"label": "Count", "question": "Units", "type": "Integer", "values": [id.len() % 5 + id.bytes().last().map_or(0, |b| b % 7) as usize]},
    ]);
    let doc = json!({
        "identifier": id, "referenceNumber": format!("{}-{id}", processed.format("%Y%m%d")), "version": "v2",
        "zone": "America/Toronto", "state": "Complete", "name": "Pump inspection",
        "form": {"identifier": form, "name": "Pump inspection", "version": 3},
        "user": {"identifier": "118800321", "username": "inspector@example.com"},
        "serverReceiveDate": processed.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "futureField": {"nested": true},
        "pages": [{"name": "Page1", "label": "Overview", "sections": [{"name": "S1", "type": "Flow", "answers": answers}]}],
    });
    // Pretty-printed, so "exactly as served" is not the same as re-serialised.
    serde_json::to_string_pretty(&doc).unwrap()
}

pub(super) fn edit(world: &mut World, id: &str) {
    if let Some(record) = world.records.get_mut(id) {
        record.processed = Utc::now();
        let Ok(mut doc) = serde_json::from_slice::<Value>(&record.document) else { return };
        if let Some(values) = doc.pointer_mut("/pages/0/sections/0/answers/0/values") {
            *values = json!([format!("Edited at {}", record.processed)]);
        }
        record.document = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    }
}
