//! Table storage over its REST API, on azure_core 1.x's pipeline.
//!
//! No Tables crate exists for azure_core 1.x (the SDK's request for one is open), and the old
//! generation (`azure_data_tables` 0.21 on azure_core 0.21) brought a second HTTP stack with
//! its own TLS roots. What we use of the service is small — create a table, insert, replace
//! with `If-Match`, insert-or-replace, delete, get, and query one partition with continuation
//! — so this speaks it directly ("Table service REST API", x-ms-version 2019-02-02) through the
//! same pipeline the Blob and Queue clients use: the shared credential (managed identity or
//! the account SAS of a keyed account), the bounded retries and the shared transport
//! (`TLS_EXTRA_CA_FILE`, `.localhost` names).
//!
//! Entities map onto Table storage properties one to one where the types allow it: strings,
//! booleans, 64-bit integers (`Edm.Int64`) and doubles (`Edm.Double`) are native properties, so
//! the records stay readable in the portal. Arrays and objects, which Table storage has no type
//! for, are stored as JSON text and listed in the `_json` property so they come back as they
//! went in. Nulls are not stored (Table storage has no null), and read back as absent.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::policies::Policy;
use azure_core::http::{Context, Method, Pipeline, PipelineSendOptions, RawResponse, Request, Url};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::connection::StorageAccount;
use super::service::{client_setup, service_root, without_url_queries, Service};
use crate::store::*;

const JSON_PROPERTIES: &str = "_json";
/// The Table service version we speak: the first with Entra (OAuth) authorization.
const SERVICE_VERSION: &str = "2019-02-02";
const ENTITY_METADATA: &str = "application/json;odata=fullmetadata";
const NEXT_PARTITION: HeaderName = HeaderName::from_static("x-ms-continuation-nextpartitionkey");
const NEXT_ROW: HeaderName = HeaderName::from_static("x-ms-continuation-nextrowkey");
/// The most entities one query page returns ("Query Entities": `$top` at most 1,000).
const MAX_TOP: usize = 1000;
const ERROR_CODE: HeaderName = HeaderName::from_static("x-ms-error-code");

pub struct AzureTables {
    pipeline: Pipeline,
    /// The service root, without a trailing slash (`…/devstoreaccount1`, `https://acct.table…`).
    root: Url,
    account: String,
    prefix: String,
}

/// What the service answered, read whole: a status, the headers we use, and the body.
struct Answer {
    status: u16,
    raw: RawResponse,
}

impl Answer {
    fn etag(&self) -> StoreResult<ETag> {
        self.raw
            .headers()
            .get_optional_str(&HeaderName::from_static("etag"))
            .map(|e| ETag(e.to_owned()))
            .ok_or_else(|| StoreError::Backend("Table storage answered a write without an ETag".into()))
    }

    /// The service's error code: the `x-ms-error-code` header, or the OData error body.
    fn error_code(&self) -> String {
        if let Some(code) = self.raw.headers().get_optional_str(&ERROR_CODE) {
            return code.to_owned();
        }
        let body: Value = serde_json::from_slice(self.raw.body().as_ref()).unwrap_or_default();
        body.pointer("/odata.error/code").and_then(Value::as_str).unwrap_or("no error code").to_owned()
    }

    fn json(&self) -> StoreResult<Map<String, Value>> {
        match serde_json::from_slice(self.raw.body().as_ref()) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(StoreError::Backend("Table storage answered with a body that is not a JSON object".into())),
        }
    }
}

impl AzureTables {
    /// `prefix` goes in front of every table name (letters and digits only), so one account can
    /// hold several deployments' tables.
    pub fn new(
        account: &StorageAccount,
        credential: Option<Arc<dyn TokenCredential>>,
        prefix: &str,
    ) -> StoreResult<Self> {
        Self::with_transport(account, credential, prefix, None)
    }

    /// As [`Self::new`], over `transport` instead of the SDK's own HTTP client.
    pub fn with_transport(
        account: &StorageAccount,
        credential: Option<Arc<dyn TokenCredential>>,
        prefix: &str,
        transport: Option<azure_core::http::Transport>,
    ) -> StoreResult<Self> {
        if !prefix.chars().all(|c| c.is_ascii_alphanumeric()) || !prefix.starts_with(|c: char| c.is_ascii_alphabetic())
        {
            return Err(StoreError::invalid("table prefix", "letters and digits only, starting with a letter"));
        }
        let (credential, options) = client_setup(account, credential, Service::Table, transport)?;
        let mut per_try: Vec<Arc<dyn Policy>> = Vec::new();
        if let Some(credential) = credential {
            per_try.push(Arc::new(BearerTokenAuthorizationPolicy::new(
                credential,
                vec!["https://storage.azure.com/.default"],
            )));
        }
        let pipeline = Pipeline::new(
            Some(env!("CARGO_PKG_NAME")),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            Vec::new(),
            per_try,
            None,
        );
        Ok(Self {
            pipeline,
            root: service_root(&account.table),
            account: account.name.clone(),
            prefix: prefix.to_owned(),
        })
    }

    fn table_name(&self, table: Table) -> String {
        format!("{}{}", self.prefix, table.name())
    }

    /// The URL of `path` (already percent-encoded) below the service root.
    fn url(&self, path: &str) -> Url {
        let mut url = self.root.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{path}"));
        url
    }

    fn entity_url(&self, table: Table, pk: &str, rk: &str) -> Url {
        self.url(&format!(
            "{}(PartitionKey={},RowKey={})",
            self.table_name(table),
            encode_path(&odata_quote(pk)),
            encode_path(&odata_quote(rk))
        ))
    }

    /// One request through the pipeline (credential, retries, transport), its answer read whole.
    /// Status codes are ours to judge: the pipeline does not turn them into errors.
    async fn send(&self, mut request: Request, what: &str) -> StoreResult<Answer> {
        request.insert_header("x-ms-version", SERVICE_VERSION);
        request.insert_header("dataserviceversion", "3.0");
        request.insert_header("maxdataserviceversion", "3.0;NetFx");
        let options = PipelineSendOptions { skip_checks: true, ..Default::default() };
        // Boxed: the pipeline's future (every policy's state) is large, and a store call sits deep in
        // the futures of a timer run; inline, a debug build outgrew a worker's 2 MiB stack.
        match Box::pin(self.pipeline.send(&Context::new(), &mut request, Some(options))).await {
            Ok(raw) => Ok(Answer { status: u16::from(raw.status()), raw }),
            // Transport errors can carry the request URL; a SAS would be in its query.
            Err(e) => Err(StoreError::Backend(format!(
                "Table storage could not be reached for {}: {}",
                what,
                without_url_queries(&super::service::error_chain(&e))
            ))),
        }
    }

    /// Sends what `build` makes; when the table does not exist yet, creates it and sends once
    /// more. Every caller that finds the table missing creates it (creating is idempotent):
    /// callers racing on a new table's first writes must all wait for it, not only the first.
    async fn with_table(&self, table: Table, what: &str, build: &(dyn Fn() -> Request + Sync)) -> StoreResult<Answer> {
        let answer = self.send(build(), what).await?;
        if answer.status == 404 && answer.error_code() == "TableNotFound" {
            self.create_table(table).await?;
            return self.send(build(), what).await;
        }
        Ok(answer)
    }

    async fn create_table(&self, table: Table) -> StoreResult<()> {
        let mut request = Request::new(self.url("Tables"), Method::Post);
        request.insert_header("accept", "application/json;odata=nometadata");
        request.insert_header("content-type", "application/json");
        request.insert_header("prefer", "return-no-content");
        request.set_body(serde_json::json!({ "TableName": self.table_name(table) }).to_string());
        let what = format!("table {}", table.name());
        let answer = self.send(request, &what).await?;
        match answer.status {
            200..=299 => Ok(()),
            409 if answer.error_code() == "TableAlreadyExists" => Ok(()),
            _ => Err(self.refusal(&answer, &what)),
        }
    }

    /// A write: checks and encodes the entity, then sends it with `method` (POST inserts into
    /// the table, PUT replaces the entity) and the `If-Match` given, if any.
    async fn write(
        &self,
        table: Table,
        pk: &str,
        rk: &str,
        props: &Map<String, Value>,
        method: Method,
        if_match: Option<&IfMatch>,
    ) -> StoreResult<ETag> {
        check_entity(pk, rk, Some(props))?;
        let body = encode(pk, rk, props).to_string();
        let url = match method {
            Method::Post => self.url(&self.table_name(table)),
            _ => self.entity_url(table, pk, rk),
        };
        let build = || {
            let mut request = Request::new(url.clone(), method);
            request.insert_header("accept", "application/json;odata=nometadata");
            request.insert_header("content-type", "application/json");
            request.insert_header("prefer", "return-no-content");
            if let Some(condition) = if_match {
                request.insert_header("if-match", if_match_value(condition));
            }
            request.set_body(body.clone());
            request
        };
        let what = entity_name(table, pk, rk);
        let answer = self.with_table(table, &what, &build).await?;
        match answer.status {
            200..=299 => answer.etag(),
            _ => Err(self.refusal(&answer, &what)),
        }
    }

    /// A status the service refused with, as the store's error: 409, 404 and 412 are the
    /// conditions callers act on; 403 names the role the identity lacks.
    fn refusal(&self, answer: &Answer, what: &str) -> StoreError {
        let code = answer.error_code();
        match answer.status {
            409 => StoreError::AlreadyExists { what: what.to_owned() },
            404 => StoreError::NotFound { what: what.to_owned() },
            412 => StoreError::PreconditionFailed { what: what.to_owned() },
            403 => StoreError::Backend(format!(
                "Table storage refused access to {what} ({code}): give this app's identity the \
                 \"Storage Table Data Contributor\" role on storage account {} (or, with a connection \
                 string, check its key or SAS)",
                self.account
            )),
            400 => StoreError::Backend(format!("Table storage rejected the request for {what}: {code}")),
            status => StoreError::Backend(format!("Table storage answered {status} {code} for {what}")),
        }
    }
}

fn if_match_value(condition: &IfMatch) -> String {
    match condition {
        IfMatch::Any => "*".to_owned(),
        IfMatch::ETag(etag) => etag.0.clone(),
    }
}

/// Percent-encodes text for one path segment (everything but RFC 3986's unreserved set and
/// the OData punctuation that must stay literal).
fn encode_path(text: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'\'');
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
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

/// A key or value as an OData string literal: in quotes, with each quote doubled. Keys go
/// inside `(PartitionKey='…',RowKey='…')` that way too, so a key holding a `'` can be read,
/// replaced and deleted, not only inserted.
fn odata_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
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
        let url = self.entity_url(table, pk, rk);
        let build = || {
            let mut request = Request::new(url.clone(), Method::Get);
            request.insert_header("accept", ENTITY_METADATA);
            request
        };
        let what = entity_name(table, pk, rk);
        let answer = self.with_table(table, &what, &build).await?;
        match answer.status {
            200 => {
                let mut raw = answer.json()?;
                if !raw.contains_key("odata.etag") {
                    raw.insert("odata.etag".into(), Value::String(answer.etag()?.0));
                }
                decode(raw).map(Some)
            }
            404 => Ok(None),
            _ => Err(self.refusal(&answer, &what)),
        }
    }

    async fn insert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag> {
        self.write(table, pk, rk, &props, Method::Post, None).await
    }

    async fn update(
        &self,
        table: Table,
        pk: &str,
        rk: &str,
        props: Map<String, Value>,
        if_match: IfMatch,
    ) -> StoreResult<ETag> {
        self.write(table, pk, rk, &props, Method::Put, Some(&if_match)).await
    }

    async fn upsert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag> {
        // A PUT without If-Match is "insert or replace".
        self.write(table, pk, rk, &props, Method::Put, None).await
    }

    async fn delete(&self, table: Table, pk: &str, rk: &str, if_match: IfMatch) -> StoreResult<()> {
        check_entity(pk, rk, None)?;
        let url = self.entity_url(table, pk, rk);
        let build = || {
            let mut request = Request::new(url.clone(), Method::Delete);
            request.insert_header("accept", "application/json;odata=nometadata");
            request.insert_header("if-match", if_match_value(&if_match));
            request
        };
        let what = entity_name(table, pk, rk);
        let answer = self.with_table(table, &what, &build).await?;
        match answer.status {
            200..=299 => Ok(()),
            _ => Err(self.refusal(&answer, &what)),
        }
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
        // its pages short (at most 1,000 rows, or five seconds' work, a page), so keep
        // reading its continuation until we have enough.
        let want = limit + 1;
        let what = format!("partition {pk:?} of table {}", table.name());
        let mut rows: Vec<Map<String, Value>> = Vec::with_capacity(want);
        let mut next: Option<(String, Option<String>)> = None;
        loop {
            let mut url = self.url(&format!("{}()", self.table_name(table)));
            {
                let mut query = url.query_pairs_mut();
                // The service takes at most 1,000 a page (`$top` above that is refused); more come by
                // the continuation.
                let top = (want - rows.len()).min(MAX_TOP);
                query.append_pair("$filter", &filter).append_pair("$top", &top.to_string());
                if let Some((next_pk, next_rk)) = &next {
                    query.append_pair("NextPartitionKey", next_pk);
                    if let Some(next_rk) = next_rk {
                        query.append_pair("NextRowKey", next_rk);
                    }
                }
            }
            let build = || {
                let mut request = Request::new(url.clone(), Method::Get);
                request.insert_header("accept", ENTITY_METADATA);
                request
            };
            let answer = self.with_table(table, &what, &build).await?;
            if answer.status != 200 {
                return Err(self.refusal(&answer, &what));
            }
            match answer.json()?.remove("value") {
                Some(Value::Array(values)) => rows.extend(values.into_iter().filter_map(|v| match v {
                    Value::Object(map) => Some(map),
                    _ => None,
                })),
                _ => return Err(StoreError::Backend(format!("Table storage answered a query of {what} without rows"))),
            }
            let headers = answer.raw.headers();
            next = headers
                .get_optional_string(&NEXT_PARTITION)
                .map(|next_pk| (next_pk, headers.get_optional_string(&NEXT_ROW)));
            if rows.len() >= want || next.is_none() {
                break;
            }
        }
        let entities = rows.into_iter().take(want).map(decode).collect::<StoreResult<Vec<_>>>()?;
        Ok(page_of(entities, limit))
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

    #[test]
    fn entity_urls_quote_and_encode_their_keys() {
        let account = StorageAccount::from_connection_string("UseDevelopmentStorage=true").unwrap();
        let tables = AzureTables::new(&account, None, "tcb").unwrap();
        let url = tables.entity_url(Table::Connections, "it's", "a b%ü");
        assert!(
            url.as_str().ends_with("/devstoreaccount1/tcbconnections(PartitionKey='it''s',RowKey='a%20b%25%C3%BC')"),
            "{url}"
        );
    }
}
