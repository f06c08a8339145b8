//! The custom-handler protocol as the Functions host speaks it (see
//! shared/reference/azure-functions-custom-handler.md): realistic envelopes posted to the real
//! binary, replies checked where the host is strict (status, content type, `Outputs` keys).

mod harness;

use futures::stream;
use harness::{client, Server};
use serde_json::{json, Value};

const INVOCATION_HEADERS: [(&str, &str); 3] = [
    ("X-Azure-Functions-InvocationId", "3f2a4c1e-8d2b-4a6f-9b1e-5c7d8e9f0a1b"),
    ("X-Azure-Functions-HostVersion", "4.1037.1.1"),
    ("User-Agent", "Azure-Functions-Host/4.1037.1.1"),
];

struct Reply {
    status: u16,
    content_type: String,
    body: Value,
}

async fn invoke_raw(server: &Server, function: &str, body: impl Into<reqwest::Body>) -> Reply {
    let mut request =
        client().post(server.url(&format!("/{function}"))).header("Content-Type", "application/json; charset=utf-8");
    for (name, value) in INVOCATION_HEADERS {
        request = request.header(name, value);
    }
    let response = request.body(body).send().await.expect("the handler answers");
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = response.text().await.unwrap();
    assert!(!text.is_empty(), "an empty reply leaves the host's invocation hanging");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {text}"));
    Reply { status, content_type, body }
}

async fn invoke(server: &Server, function: &str, envelope: &Value) -> Reply {
    invoke_raw(server, function, envelope.to_string()).await
}

/// `Data.req` as the host builds it for a GET with a function key.
fn http_request(method: &str, url: &str) -> Value {
    json!({
        "Url": url,
        "Method": method,
        "Query": { "code": "not-checked-here", "a": "1,2" },
        "Headers": {
            "Accept": ["application/json"],
            "Host": ["bridge.azurewebsites.net"],
            "User-Agent": ["curl/8.5.0"],
            "X-Forwarded-For": ["203.0.113.7:51234"]
        },
        "Params": {},
        "Identities": [{
            "AuthenticationType": "WebJobsAuthLevel",
            "IsAuthenticated": true,
            "Actor": null, "BootstrapContext": null, "Label": null, "Name": null,
            "NameClaimType": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
            "RoleClaimType": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
            "Claims": [
                { "Type": "http://schemas.microsoft.com/2017/07/functions/claims/authlevel", "Value": "Function" },
                { "Type": "http://schemas.microsoft.com/2017/07/functions/claims/keyid", "Value": "default" }
            ]
        }]
    })
}

fn http_envelope(req: Value) -> Value {
    json!({
        "Data": { "req": req },
        "Metadata": {
            "Query": { "a": "1,2" },
            "Headers": { "Accept": "application/json", "Host": "bridge.azurewebsites.net" },
            "a": "\"1,2\"",
            "sys": { "MethodName": "status", "UtcNow": "2026-11-23T10:00:00.1234567Z", "RandGuid": "0f8fad5b-d9cb-469f-a165-70867728950e" }
        }
    })
}

fn status_envelope() -> Value {
    http_envelope(http_request("GET", "https://bridge.azurewebsites.net/api/status?code=k&a=1&a=2"))
}

fn timer_envelope(schedule_status: Value, past_due: bool) -> Value {
    json!({
        "Data": { "timer": { "Schedule": { "AdjustForDST": true }, "ScheduleStatus": schedule_status, "IsPastDue": past_due } },
        "Metadata": { "sys": { "MethodName": "sync", "UtcNow": "2026-11-23T10:00:00.0105419+00:00", "RandGuid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427" } }
    })
}

fn queue_envelope(msg: Value) -> Value {
    json!({
        "Data": { "msg": msg },
        "Metadata": {
            "DequeueCount": "1",
            "ExpirationTime": "2026-11-30T10:00:00+00:00",
            "Id": "\"b4a1c3d2-0e5f-4a6b-8c7d-9e0f1a2b3c4d\"",
            "InsertionTime": "2026-11-23T10:00:00+00:00",
            "NextVisibleTime": "2026-11-23T10:10:00+00:00",
            "PopReceipt": "\"AgAAAAMAAAAAAAAA\"",
            "sys": { "MethodName": "process", "UtcNow": "2026-11-23T10:00:01Z", "RandGuid": "6ba7b810-9dad-11d1-80b4-00c04fd430c8" }
        }
    })
}

/// The shape the host requires of a successful reply: exactly Outputs, Logs, ReturnValue.
fn assert_host_reply(reply: &Reply) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.content_type.starts_with("application/json"), "{}", reply.content_type);
    let keys: Vec<&str> = reply.body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["Logs", "Outputs", "ReturnValue"], "top-level keys");
    assert!(reply.body["Logs"].as_array().unwrap().iter().all(Value::is_string));
    assert!(reply.body["ReturnValue"].is_null());
}

/// `Outputs.res` as the host reads it: numeric statusCode, string headers, string body.
fn http_output(reply: &Reply) -> (u64, serde_json::Map<String, Value>, String) {
    assert_host_reply(reply);
    let outputs = reply.body["Outputs"].as_object().unwrap();
    assert_eq!(outputs.keys().collect::<Vec<_>>(), ["res"], "the HTTP output binding is named res");
    let res = &outputs["res"];
    let headers = res["headers"].as_object().unwrap().clone();
    assert!(headers.values().all(Value::is_string), "header values must be strings: {headers:?}");
    (res["statusCode"].as_u64().expect("numeric statusCode"), headers, res["body"].as_str().unwrap().to_owned())
}

/// After any bad input the server still answers the readiness probe and a real invocation.
async fn assert_healthy(server: &Server) {
    let ready = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let (status, _, _) = http_output(&invoke(server, "status", &status_envelope()).await);
    assert_eq!(status, 200);
}

#[tokio::test]
async fn readiness_probe_answers_get_and_head() {
    let server = Server::host(&[]);
    let get = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(get.status(), 200);
    assert!(get.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let head = client().head(server.url("/")).send().await.unwrap();
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn status_over_the_http_envelope() {
    let server = Server::host(&[]);
    let reply = invoke(&server, "status", &status_envelope()).await;
    let (status, headers, body) = http_output(&reply);
    assert_eq!(status, 200);
    assert!(headers["Content-Type"].as_str().unwrap().starts_with("application/json"));
    assert_eq!(headers["Cache-Control"], "no-store");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["service"], "truecontext-bridge");
    assert_eq!(report["mode"], "functions");
    assert_eq!(report["store"], "local");
    assert_eq!(report["connections"], json!([]));
}

#[tokio::test]
async fn a_chunked_envelope_without_content_length_is_read() {
    let server = Server::host(&[]);
    let text = status_envelope().to_string();
    let (first, rest) = text.split_at(text.len() / 2);
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(first.to_owned()), Ok(rest.to_owned())];
    let reply = invoke_raw(&server, "status", reqwest::Body::wrap_stream(stream::iter(chunks))).await;
    assert_eq!(http_output(&reply).0, 200);
}

#[tokio::test]
async fn method_case_and_function_name_case_are_tolerated() {
    let server = Server::host(&[]);
    let lower = http_envelope(http_request("get", "https://bridge.azurewebsites.net/api/status"));
    assert_eq!(http_output(&invoke(&server, "status", &lower).await).0, 200);
    assert_eq!(http_output(&invoke(&server, "Status", &status_envelope()).await).0, 200);
}

#[tokio::test]
async fn a_wrong_method_is_405_inside_a_successful_envelope() {
    let server = Server::host(&[]);
    let post = http_envelope(http_request("POST", "https://bridge.azurewebsites.net/api/status"));
    let (status, headers, body) = http_output(&invoke(&server, "status", &post).await);
    assert_eq!(status, 405);
    assert_eq!(headers["Allow"], "GET");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn functions_not_in_this_version_answer_501() {
    let server = Server::host(&[]);
    for (function, method) in [("authorize", "GET"), ("callback", "GET"), ("callback", "POST"), ("webhook", "POST")] {
        let envelope = http_envelope(http_request(method, &format!("https://bridge.azurewebsites.net/api/{function}")));
        let (status, _, body) = http_output(&invoke(&server, function, &envelope).await);
        assert_eq!(status, 501, "{function}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "not_available");
    }
}

#[tokio::test]
async fn bodies_as_text_and_as_base64() {
    let server = Server::host(&[]);
    let mut text = http_request("POST", "https://bridge.azurewebsites.net/api/webhook");
    text["Headers"]["Content-Type"] = json!(["application/json"]);
    text["Body"] = json!("{\"dataRecordId\":\"123\"}");
    assert_eq!(http_output(&invoke(&server, "webhook", &http_envelope(text)).await).0, 501);

    let mut binary = http_request("POST", "https://bridge.azurewebsites.net/api/webhook");
    binary["Headers"]["Content-Type"] = json!(["application/octet-stream"]);
    binary["Body"] = json!("AAECAwQ=");
    assert_eq!(http_output(&invoke(&server, "webhook", &http_envelope(binary.clone())).await).0, 501);

    binary["Body"] = json!("this is not base64!");
    let reply = invoke(&server, "webhook", &http_envelope(binary)).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["code"], "invalid_envelope");
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("Body"));
    assert_healthy(&server).await;
}

#[tokio::test]
async fn a_request_body_over_the_limit_is_413_for_the_caller() {
    let server = Server::host(&[("MAX_REQUEST_BODY_BYTES", "4096")]);
    let mut req = http_request("POST", "https://bridge.azurewebsites.net/api/webhook");
    req["Body"] = json!("x".repeat(8192));
    let (status, _, body) = http_output(&invoke(&server, "webhook", &http_envelope(req)).await);
    assert_eq!(status, 413);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "body_too_large");
}

#[tokio::test]
async fn timer_envelopes_run_the_sync_and_are_recorded() {
    let server = Server::host(&[]);
    let with_status = json!({
        "Last": "2026-11-23T09:30:00.0105419+00:00",
        "Next": "2026-11-23T10:00:00+00:00",
        "LastUpdated": "2026-11-23T09:30:00.0105419+00:00"
    });
    for (i, (status, past_due)) in
        [(with_status, false), (Value::Null, false), (Value::Null, true)].into_iter().enumerate()
    {
        let reply = invoke(&server, "sync", &timer_envelope(status, past_due)).await;
        assert_host_reply(&reply);
        assert_eq!(reply.body["Outputs"], json!({}));
        let logs = reply.body["Logs"].as_array().unwrap();
        assert!(logs.iter().any(|l| l.as_str().unwrap().contains("sync finished")), "{logs:?}");
        if past_due {
            assert!(logs.iter().any(|l| l.as_str().unwrap().contains("past due")), "{logs:?}");
        }
        let (_, _, body) = http_output(&invoke(&server, "status", &status_envelope()).await);
        let report: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["sync"]["last_run"]["count"], i as u64 + 1);
        assert_eq!(report["sync"]["last_run"]["past_due"], past_due);
    }
}

#[tokio::test]
async fn queue_envelopes_fail_the_invocation_while_processing_is_unavailable() {
    let server = Server::host(&[]);
    let double_encoded = json!(json!("{\"submission\":\"1\"}").to_string());
    let base64 = json!("eyJzdWJtaXNzaW9uIjoiMSJ9");
    for msg in [double_encoded, base64] {
        let reply = invoke(&server, "process", &queue_envelope(msg)).await;
        assert_eq!(reply.status, 500, "a failed queue invocation is non-2xx so the host retries");
        assert!(reply.content_type.starts_with("application/json"));
        assert!(reply.body["error"]["message"].as_str().unwrap().contains("not available"));
    }
    let reply = invoke(&server, "process", &queue_envelope(json!("\"plain text\""))).await;
    assert_eq!(reply.status, 500);
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("not JSON"));
}

#[tokio::test]
async fn malformed_envelopes_get_a_clear_error_and_change_nothing() {
    let server = Server::host(&[]);
    let truncated = &status_envelope().to_string()[..40];
    let cases: Vec<(&str, String, &str)> = vec![
        ("truncated JSON", truncated.to_owned(), "not valid JSON"),
        ("an array", "[1,2]".into(), "JSON object"),
        ("empty", String::new(), "not valid JSON"),
        ("Data not an object", json!({"Data": 5}).to_string(), "Data must be an object"),
        ("no Data.req", json!({"Data": {}, "Metadata": {}}).to_string(), "Data.req"),
        (
            "Method a number",
            http_envelope(json!({"Url": "https://x/api/status", "Method": 7, "Headers": {}})).to_string(),
            "Method",
        ),
        (
            "Headers a number",
            http_envelope(json!({"Url": "https://x/api/status", "Method": "GET", "Headers": 3})).to_string(),
            "Headers",
        ),
    ];
    for (what, body, expected) in cases {
        let reply = invoke_raw(&server, "status", body).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.body);
        assert!(reply.content_type.starts_with("application/json"), "{what}");
        assert_eq!(reply.body["error"]["code"], "invalid_envelope", "{what}");
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{what}: {message}");
    }
    // A malformed timer envelope is refused too, and records no run.
    let reply = invoke(&server, "sync", &json!({"Data": {"timer": {"IsPastDue": "sometimes"}}})).await;
    assert_eq!(reply.status, 400);
    let (_, _, body) = http_output(&invoke(&server, "status", &status_envelope()).await);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["sync"]["last_run"], Value::Null);
    assert_healthy(&server).await;
}

#[tokio::test]
async fn unknown_functions_and_wrong_routes_are_refused_clearly() {
    let server = Server::host(&[]);
    let reply = invoke(&server, "nosuch", &status_envelope()).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body["error"]["code"], "unknown_function");
    let message = reply.body["error"]["message"].as_str().unwrap();
    for name in ["authorize", "callback", "webhook", "status", "sync", "process"] {
        assert!(message.contains(name), "{message}");
    }
    let get = client().get(server.url("/status")).send().await.unwrap();
    assert_eq!(get.status(), 405);
    assert!(get.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let nested = client().post(server.url("/api/status")).send().await.unwrap();
    assert_eq!(nested.status(), 404);
    assert_healthy(&server).await;
}

#[tokio::test]
async fn a_huge_envelope_is_refused_with_413_and_the_server_survives() {
    let server = Server::host(&[("MAX_REQUEST_BODY_BYTES", "1048576")]);
    let mut req = http_request("POST", "https://bridge.azurewebsites.net/api/webhook");
    req["Body"] = json!("y".repeat(3 * 1024 * 1024));
    let reply = invoke(&server, "webhook", &http_envelope(req)).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.body["error"]["code"], "envelope_too_large");
    assert_healthy(&server).await;
}

#[tokio::test]
async fn fifty_concurrent_invocations_all_succeed() {
    let server = Server::host(&[]);
    let envelope = status_envelope();
    let replies = futures::future::join_all((0..50).map(|_| invoke(&server, "status", &envelope))).await;
    for reply in &replies {
        assert_eq!(http_output(reply).0, 200);
    }
}
