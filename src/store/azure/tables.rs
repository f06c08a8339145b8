//! Table storage with `azure_data_tables` 0.21.
//!
//! That crate belongs to the older SDK generation (azure_core 0.21); the Entra credentials of
//! azure_identity 1.x implement azure_core 1.x's `TokenCredential`, so [`LegacyCredential`]
//! adapts one to the other — the one gap we fill by hand.
//!
//! Entities map onto Table storage properties one to one where the types allow it: strings,
//! booleans, 64-bit integers (`Edm.Int64`) and doubles (`Edm.Double`) are native properties, so
//! the records stay readable in the portal. Arrays and objects, which Table storage has no type
//! for, are stored as JSON text and listed in the `_json` property so they come back as they
//! went in. Nulls are not stored (Table storage has no null), and read back as absent.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core_legacy::error::Error as LegacyError;
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_data_tables::prelude::{Filter, TableClient, TableServiceClient, Top};
use azure_data_tables::IfMatchCondition;
use azure_storage::{CloudLocation, StorageCredentials};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Map, Value};

use super::connection::{StorageAccount, StorageAuth};
use crate::store::*;

const JSON_PROPERTIES: &str = "_json";

pub struct AzureTables {
    service: TableServiceClient,
    account: String,
    prefix: String,
}

impl AzureTables {
    /// `prefix` goes in front of every table name (letters and digits only), so one account can
    /// hold several deployments' tables.
    pub fn new(
        account: &StorageAccount,
        credential: Option<Arc<dyn azure_core::credentials::TokenCredential>>,
        prefix: &str,
    ) -> StoreResult<Self> {
        let credentials = match (&account.auth, credential) {
            (StorageAuth::AccountKey(key), _) => {
                StorageCredentials::access_key(account.name.clone(), key.expose().to_owned())
            }
            (StorageAuth::Sas(sas), _) => StorageCredentials::sas_token(sas.expose())
                .map_err(|_| StoreError::invalid("AzureWebJobsStorage", "its SharedAccessSignature cannot be read"))?,
            (StorageAuth::Identity, Some(credential)) => {
                StorageCredentials::token_credential(Arc::new(LegacyCredential(credential)))
            }
            (StorageAuth::Identity, None) => {
                return Err(StoreError::Backend("identity-based Table storage needs a token credential".into()))
            }
        };
        if !prefix.chars().all(|c| c.is_ascii_alphanumeric()) || !prefix.starts_with(|c: char| c.is_ascii_alphabetic())
        {
            return Err(StoreError::invalid("table prefix", "letters and digits only, starting with a letter"));
        }
        let location = CloudLocation::Custom { account: account.name.clone(), uri: account.table.to_string() };
        let service = TableServiceClientBuilder::with_location(location, credentials)
            .retry(azure_core_legacy::RetryOptions::exponential(
                azure_core_legacy::ExponentialRetryOptions::default()
                    .max_retries(4u32)
                    .initial_delay(std::time::Duration::from_millis(200))
                    .max_total_elapsed(std::time::Duration::from_secs(30)),
            ))
            .build();
        Ok(Self { service, account: account.name.clone(), prefix: prefix.to_owned() })
    }

    fn client(&self, table: Table) -> TableClient {
        self.service.table_client(format!("{}{}", self.prefix, table.name()))
    }

    /// Runs `op`; when the table does not exist yet, creates it and runs `op` once more. Every
    /// caller that finds the table missing creates it (creating is idempotent): callers racing
    /// on a new table's first writes must all wait for it, not only the first.
    async fn with_table<T, F, Fut>(&self, table: Table, what: impl Fn() -> String, op: F) -> StoreResult<T>
    where
        F: Fn(TableClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, LegacyError>>,
    {
        match op(self.client(table)).await {
            Err(e) if error_code(&e).as_deref() == Some("TableNotFound") => {
                self.create_table(table).await?;
                op(self.client(table)).await.map_err(|e| self.map_error(e, &what()))
            }
            other => other.map_err(|e| self.map_error(e, &what())),
        }
    }

    /// Checks and encodes an entity, then writes it with `op` (see [`Self::with_table`]).
    async fn write<F, Fut>(
        &self,
        table: Table,
        pk: &str,
        rk: &str,
        props: &Map<String, Value>,
        op: F,
    ) -> StoreResult<ETag>
    where
        F: Fn(TableClient, Value) -> Fut,
        Fut: std::future::Future<Output = Result<ETag, LegacyError>>,
    {
        check_entity(pk, rk, Some(props))?;
        let body = encode(pk, rk, props);
        self.with_table(table, || entity_name(table, pk, rk), |client| op(client, body.clone())).await
    }

    async fn create_table(&self, table: Table) -> StoreResult<()> {
        match self.client(table).create().await {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e).as_deref() == Some("TableAlreadyExists") => Ok(()),
            Err(e) => Err(self.map_error(e, &format!("table {}", table.name()))),
        }
    }

    fn map_error(&self, error: LegacyError, what: &str) -> StoreError {
        let status = error.as_http_error().map(|h| u16::from(h.status()));
        let code = error_code(&error).unwrap_or_default();
        match (status, code.as_str()) {
            (Some(409), _) => StoreError::AlreadyExists { what: what.to_owned() },
            (Some(404), _) => StoreError::NotFound { what: what.to_owned() },
            (Some(412), _) => StoreError::PreconditionFailed { what: what.to_owned() },
            (Some(403), _) => StoreError::Backend(format!(
                "Table storage refused access to {what} ({code}): give this app's identity the \
                 \"Storage Table Data Contributor\" role on storage account {}",
                self.account
            )),
            (Some(400), _) => StoreError::Backend(format!("Table storage rejected the request for {what}: {code}")),
            (Some(status), _) => StoreError::Backend(format!("Table storage answered {status} {code} for {what}")),
            // Transport errors can carry the request URL; a SAS would be in its query.
            (None, _) => StoreError::Backend(format!(
                "Table storage could not be reached for {what}: {}",
                crate::telemetry::redact(&error.to_string())
            )),
        }
    }
}

fn error_code(error: &LegacyError) -> Option<String> {
    error.as_http_error().and_then(|h| h.error_code().map(str::to_owned))
}

fn entity_name(table: Table, pk: &str, rk: &str) -> String {
    format!("entity {pk:?}/{rk:?} in table {}", table.name())
}

/// Our properties as a Table storage entity body.
fn encode(pk: &str, rk: &str, props: &Map<String, Value>) -> Value {
    let mut body = Map::new();
    body.insert("PartitionKey".into(), pk.into());
    body.insert("RowKey".into(), rk.into());
    let mut json_names = Vec::new();
    for (name, value) in props {
        match value {
            Value::Null => {}
            Value::String(_) | Value::Bool(_) => {
                body.insert(name.clone(), value.clone());
            }
            Value::Number(n) if n.is_i64() || n.is_u64() => {
                body.insert(name.clone(), Value::String(n.to_string()));
                body.insert(format!("{name}@odata.type"), "Edm.Int64".into());
            }
            Value::Number(_) => {
                body.insert(name.clone(), value.clone());
                body.insert(format!("{name}@odata.type"), "Edm.Double".into());
            }
            Value::Array(_) | Value::Object(_) => {
                body.insert(name.clone(), Value::String(value.to_string()));
                json_names.push(name.as_str());
            }
        }
    }
    if !json_names.is_empty() {
        body.insert(JSON_PROPERTIES.into(), Value::String(json_names.join(",")));
    }
    Value::Object(body)
}

/// A Table storage entity (full metadata) back into an [`Entity`].
fn decode(mut raw: Map<String, Value>) -> StoreResult<Entity> {
    let take_string = |raw: &mut Map<String, Value>, key: &str| match raw.remove(key) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(StoreError::Backend(format!("Table storage returned an entity without {key}"))),
    };
    let partition_key = take_string(&mut raw, "PartitionKey")?;
    let row_key = take_string(&mut raw, "RowKey")?;
    let etag = ETag(take_string(&mut raw, "odata.etag")?);
    let timestamp = raw
        .remove("Timestamp")
        .and_then(|v| v.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()))
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default();
    let json_names: HashSet<String> = match raw.remove(JSON_PROPERTIES) {
        Some(Value::String(list)) => list.split(',').map(str::to_owned).collect(),
        _ => HashSet::new(),
    };
    let types: Map<String, Value> = raw
        .iter()
        .filter_map(|(k, v)| k.strip_suffix("@odata.type").map(|name| (name.to_owned(), v.clone())))
        .collect();
    let mut properties = Map::new();
    for (name, value) in raw {
        if name.contains('@') || name.starts_with("odata.") {
            continue;
        }
        let value = match (types.get(&name).and_then(Value::as_str), value) {
            (Some("Edm.Int64"), Value::String(s)) => s
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| s.parse::<u64>().map(Value::from))
                .map_err(|_| StoreError::Backend(format!("property {name} is not an Int64")))?,
            (Some("Edm.Double"), Value::String(s)) => {
                // Non-finite doubles arrive as strings ("NaN", "Infinity"); JSON cannot hold them.
                s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number).unwrap_or(Value::Null)
            }
            (_, Value::String(s)) if json_names.contains(&name) => serde_json::from_str(&s)
                .map_err(|_| StoreError::Backend(format!("property {name} holds unreadable JSON")))?,
            (_, other) => other,
        };
        properties.insert(name, value);
    }
    Ok(Entity { partition_key, row_key, etag, timestamp, properties })
}

/// The client of one entity of `client`'s table.
fn entity(client: TableClient, pk: &str, rk: &str) -> azure_data_tables::prelude::EntityClient {
    client.partition_key_client(url_key(pk)).entity_client(url_key(rk))
}

/// A key as it goes inside `(PartitionKey='…',RowKey='…')` in an entity URL: OData doubles
/// single quotes there. `azure_data_tables` 0.21 inserts keys verbatim (a gap we fill here),
/// so an entity whose key holds a `'` could be inserted but never read, updated or deleted.
fn url_key(key: &str) -> String {
    key.replace('\'', "''")
}

fn odata_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn legacy_etag(etag: &ETag) -> IfMatchCondition {
    IfMatchCondition::Etag(azure_core_legacy::Etag::from(etag.0.clone()))
}

fn condition(condition: &IfMatch) -> IfMatchCondition {
    match condition {
        IfMatch::Any => IfMatchCondition::Any,
        IfMatch::ETag(etag) => legacy_etag(etag),
    }
}

/// The shared checks, plus our own reserved property.
fn check_entity(pk: &str, rk: &str, props: Option<&Map<String, Value>>) -> StoreResult<()> {
    crate::store::check_entity(pk, rk, props)?;
    if props.is_some_and(|p| p.contains_key(JSON_PROPERTIES)) {
        return Err(StoreError::invalid("properties", format!("{JSON_PROPERTIES:?} is reserved")));
    }
    Ok(())
}

#[async_trait]
impl TableStore for AzureTables {
    async fn get(&self, table: Table, pk: &str, rk: &str) -> StoreResult<Option<Entity>> {
        check_entity(pk, rk, None)?;
        let result = self
            .with_table(
                table,
                || entity_name(table, pk, rk),
                |client| async move { entity(client, pk, rk).get::<Map<String, Value>>().await },
            )
            .await;
        match result {
            Ok(response) => {
                let mut raw = response.entity;
                raw.entry("odata.etag").or_insert_with(|| Value::String(response.etag.to_string()));
                decode(raw).map(Some)
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn insert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag> {
        self.write(table, pk, rk, &props, |client, body| async move {
            client.insert::<Value, Value>(body)?.await.map(|r| ETag(r.etag.to_string()))
        })
        .await
    }

    async fn update(
        &self,
        table: Table,
        pk: &str,
        rk: &str,
        props: Map<String, Value>,
        if_match: IfMatch,
    ) -> StoreResult<ETag> {
        self.write(table, pk, rk, &props, |client, body| {
            let if_match = condition(&if_match);
            async move { entity(client, pk, rk).update(body, if_match)?.await.map(|r| ETag(r.etag.to_string())) }
        })
        .await
    }

    async fn upsert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag> {
        self.write(table, pk, rk, &props, |client, body| async move {
            entity(client, pk, rk).insert_or_replace(body)?.await.map(|r| ETag(r.etag.to_string()))
        })
        .await
    }

    async fn delete(&self, table: Table, pk: &str, rk: &str, if_match: IfMatch) -> StoreResult<()> {
        check_entity(pk, rk, None)?;
        self.with_table(
            table,
            || entity_name(table, pk, rk),
            |client| {
                let if_match = condition(&if_match);
                async move { entity(client, pk, rk).delete().if_match(if_match).await }
            },
        )
        .await
        .map(|_| ())
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
        let mut filter = format!("PartitionKey eq {}", odata_quote(pk));
        if let Some(start) = &range.start {
            filter.push_str(&format!(" and RowKey ge {}", odata_quote(start)));
        }
        if let Some(end) = &range.end {
            filter.push_str(&format!(" and RowKey lt {}", odata_quote(end)));
        }
        if let Some(after) = &after {
            filter.push_str(&format!(" and RowKey gt {}", odata_quote(after)));
        }
        // One more than asked for tells whether another page follows. The service may cut
        // its pages short, so keep reading its continuation until we have enough.
        let want = limit + 1;
        let collected = self
            .with_table(
                table,
                || format!("partition {pk:?} of table {}", table.name()),
                |client| {
                    let filter = filter.clone();
                    async move {
                        let mut stream = client
                            .query()
                            .filter(Filter::new(filter))
                            .top(Top::new(want as u32))
                            .into_stream::<Map<String, Value>>();
                        let mut rows = Vec::with_capacity(want);
                        while rows.len() < want {
                            match stream.next().await {
                                Some(page) => rows.extend(page?.entities),
                                None => break,
                            }
                        }
                        Ok(rows)
                    }
                },
            )
            .await?;
        let entities = collected.into_iter().take(want).map(decode).collect::<StoreResult<Vec<_>>>()?;
        Ok(page_of(entities, limit))
    }
}

/// azure_identity 1.x credentials, seen through azure_core 0.21's `TokenCredential`.
#[derive(Debug)]
pub struct LegacyCredential(pub Arc<dyn azure_core::credentials::TokenCredential>);

#[async_trait]
impl azure_core_legacy::auth::TokenCredential for LegacyCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core_legacy::Result<azure_core_legacy::auth::AccessToken> {
        let token = self.0.get_token(scopes, None).await.map_err(|e| {
            azure_core_legacy::error::Error::message(azure_core_legacy::error::ErrorKind::Credential, e.to_string())
        })?;
        Ok(azure_core_legacy::auth::AccessToken::new(token.token.secret().to_owned(), token.expires_on))
    }

    async fn clear_cache(&self) -> azure_core_legacy::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn properties_round_trip_through_the_table_encoding() {
        let props = json!({
            "name": "x", "flag": true, "count": 42, "big": 9_007_199_254_740_993i64, "ratio": 0.5,
            "scopes": ["a", "b"], "nested": {"k": 1}, "gone": null
        });
        let Value::Object(props) = props else { unreachable!() };
        let Value::Object(mut body) = encode("p", "r", &props) else { unreachable!() };
        assert_eq!(body["count@odata.type"], "Edm.Int64");
        body.insert("odata.etag".into(), "W/\"x\"".into());
        body.insert("Timestamp".into(), "2026-11-23T10:00:00.1234567Z".into());
        let entity = decode(body).unwrap();
        let mut expected = props.clone();
        expected.remove("gone");
        assert_eq!(entity.properties, expected);
        assert_eq!(entity.etag.0, "W/\"x\"");
    }

    #[test]
    fn odata_strings_escape_quotes() {
        assert_eq!(odata_quote("it's"), "'it''s'");
    }
}
