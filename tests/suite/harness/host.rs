//! Talking to `tcbridge serve` as the Functions host does: envelopes built the way the host
//! builds them (docs/custom-handler-protocol.md), and posted with the host's headers. Every test
//! that plays the host uses these.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{client, Server};

pub const HOST_VERSION: &str = "4.1037.0.0";
/// Per request: a hang fails the test instead of blocking it.
pub const TIMEOUT: Duration = Duration::from_secs(15);

pub fn guid() -> String {
    let hex = format!("{:032x}", rand::random::<u128>());
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// `Metadata.sys` (`SystemBindingData`): always present.
pub fn sys(function: &str) -> Value {
    json!({ "MethodName": function, "UtcNow": "2026-11-23T10:00:00.1234567Z", "RandGuid": guid() })
}

/// `ClaimsIdentity` as serialized for a caller that passed a function key.
pub fn key_identities() -> Value {
    let claim = |kind: &str, value: &str| {
        json!({
            "Issuer": "LOCAL AUTHORITY", "OriginalIssuer": "LOCAL AUTHORITY", "Properties": {}, "Subject": null,
            "Type": format!("http://schemas.microsoft.com/2017/07/functions/claims/{kind}"), "Value": value,
            "ValueType": "http://www.w3.org/2001/XMLSchema#string"
        })
    };
    json!([{
        "AuthenticationType": "WebJobsAuthLevel", "IsAuthenticated": true, "Actor": null,
        "BootstrapContext": null, "Label": null, "Name": null,
        "Claims": [claim("authlevel", "Function"), claim("keyid", "default")],
        "NameClaimType": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
        "RoleClaimType": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
    }])
}

/// An HTTP-trigger envelope (`Data.req` from `GetRequestAsJObject`, forwarding off). `headers`
/// are single values here and go out as the host's arrays; `Body` is present only when given,
/// as the host omits it for an empty or chunked request.
pub fn http_envelope(
    function: &str,
    method: &str,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Value {
    let mut url = format!("http://localhost:7071/api/{function}");
    let mut joined: Vec<(String, String)> = Vec::new();
    for (i, (k, v)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&format!("{k}={v}"));
        match joined.iter_mut().find(|(name, _)| name == k) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(v);
            }
            None => joined.push((k.to_string(), v.to_string())),
        }
    }
    let mut all_headers = vec![("Host", "localhost:7071"), ("User-Agent", "curl/8.5.0"), ("Accept", "*/*")];
    all_headers.extend_from_slice(headers);
    let req_query: Map<String, Value> = joined.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let req_headers: Map<String, Value> = all_headers.iter().map(|(k, v)| (k.to_string(), json!([v]))).collect();
    let mut req = json!({
        "Url": url, "Method": method, "Query": req_query, "Headers": req_headers,
        "Params": {}, "Identities": key_identities()
    });
    if let Some(body) = body {
        req["Body"] = json!(body);
    }
    // Metadata: the query and headers as strings, each query parameter but `code` double-encoded.
    let mut metadata = Map::new();
    metadata.insert("Query".into(), Value::Object(req_query.clone()));
    let meta_headers: Map<String, Value> = all_headers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    metadata.insert("Headers".into(), Value::Object(meta_headers));
    for (k, v) in joined.iter().filter(|(k, _)| k != "code") {
        metadata.insert(k.clone(), json!(json!(v).to_string()));
    }
    metadata.insert("sys".into(), sys(function));
    json!({ "Data": { "req": req }, "Metadata": metadata })
}

pub fn status_envelope(method: &str) -> Value {
    http_envelope("status", method, &[("code", "x"), ("a", "1"), ("a", "2")], &[], None)
}

pub fn timer_envelope(schedule_status: Value, past_due: bool) -> Value {
    json!({
        "Data": { "timer": {
            "Schedule": { "AdjustForDST": true },
            "ScheduleStatus": schedule_status,
            "IsPastDue": past_due
        } },
        "Metadata": { "sys": sys("sync") }
    })
}

/// A queue envelope: `msg` as given (already in its wire form), queue binding data as strings.
pub fn queue_envelope(msg: Value, extra_metadata: &[(&str, Value)]) -> Value {
    let mut metadata = json!({
        "DequeueCount": "1",
        "ExpirationTime": "2026-11-30T10:00:00+00:00",
        "Id": format!("\"{}\"", guid()),
        "InsertionTime": "2026-11-23T10:00:00+00:00",
        "NextVisibleTime": "2026-11-23T10:10:00+00:00",
        "PopReceipt": "\"AgAAAAMAAAAAAAAAT6xrB0Xd2gE=\"",
        "sys": sys("process")
    });
    for (k, v) in extra_metadata {
        metadata[*k] = v.clone();
    }
    json!({ "Data": { "msg": msg }, "Metadata": metadata })
}

/// A reply, already checked for what the host needs of every reply: a body, and JSON.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

pub fn host_post(server: &Server, path: &str) -> reqwest::RequestBuilder {
    client()
        .post(server.url(path))
        .timeout(TIMEOUT)
        .header("X-Azure-Functions-InvocationId", guid())
        .header("X-Azure-Functions-HostVersion", HOST_VERSION)
        .header("User-Agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
        .header("Content-Type", "application/json; charset=utf-8")
}

pub async fn read_reply(what: &str, response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "{what}: the host needs application/json on every reply, got {content_type:?} ({status})"
    );
    let bytes = response.bytes().await.unwrap_or_else(|e| panic!("{what}: reading the reply failed: {e}"));
    assert!(!bytes.is_empty(), "{what}: an empty reply leaves the host's invocation hanging ({status})");
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{what}: the reply is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Reply { status, headers, json }
}

pub async fn send(what: &str, request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap_or_else(|e| panic!("{what}: the request failed: {e:?}"));
    read_reply(what, response).await
}

/// Posts `envelope` to `/<function>` as the host does (serialized JSON body).
pub async fn invoke(server: &Server, function: &str, envelope: &Value) -> Reply {
    send(&format!("POST /{function}"), host_post(server, &format!("/{function}")).body(envelope.to_string())).await
}

pub async fn invoke_raw(server: &Server, function: &str, body: impl Into<reqwest::Body>) -> Reply {
    send(&format!("POST /{function} (raw body)"), host_post(server, &format!("/{function}")).body(body)).await
}

/// An HTTP-trigger envelope around a `Data.req` the caller built.
pub fn req_envelope(function: &str, req: Value) -> Value {
    json!({ "Data": { "req": req }, "Metadata": { "sys": sys(function) } })
}

/// Invokes an HTTP function with `req`; its `Outputs.res`.
pub async fn invoke_http(server: &Server, function: &str, req: Value) -> Value {
    let reply = invoke(server, function, &req_envelope(function, req)).await;
    assert_eq!(reply.status, 200, "POST /{function}: {}", reply.json);
    reply.json["Outputs"]["res"].clone()
}
