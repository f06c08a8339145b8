//! No secret reaches a log line or a reply: a run with every secret setting set and
//! credential-shaped inputs, then a scan of everything the process wrote and answered.

use crate::harness;
use harness::Server;
use serde_json::{json, Value};

const CLIENT_SECRET: &str = "oauth-client-secret-Zx81";
const STORE_KEY: &str = "c2VjcmV0LWtleS1mb3ItdGhlLWxvY2FsLXN0b3JlISE="; // 32 bytes
const ACCOUNT_KEY: &str = "QWNjb3VudEtleVNlY3JldFZhbHVlMTIzNDU2Nzg=";
const WEBHOOK_PASSWORD: &str = "webhook-password-Qp27-long";
const API_KEY_SECRET: &str = "truecontext-api-secret-Lm55";
const FUNCTION_KEY: &str = "function-key-value-Hh92-long";
// Credential-shaped inputs from callers.
const BEARER: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJlLXNlY3JldA";
const AUTH_CODE: &str = "0.AUTHCODE-secret-Kk11";
const REFRESH_TOKEN: &str = "1.REFRESH-secret-Rr42";

fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("OAUTH_CLIENT_ID", "11111111-2222-3333-4444-555555555555".into()),
        ("OAUTH_CLIENT_SECRET", CLIENT_SECRET.into()),
        ("LOCAL_STORE_KEY", STORE_KEY.into()),
        ("STORE", "local".into()),
        ("AzureWebJobsStorage", format!("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net")),
        ("WEBHOOK_AUTH", "basic".into()),
        ("WEBHOOK_BASIC_USERNAME", "truecontext".into()),
        ("WEBHOOK_BASIC_PASSWORD", WEBHOOK_PASSWORD.into()),
        ("TRUECONTEXT_AUTH", "basic".into()),
        ("TRUECONTEXT_API_KEY_ID", "key-id".into()),
        ("TRUECONTEXT_API_KEY_SECRET", API_KEY_SECRET.into()),
        ("FUNCTION_KEY", FUNCTION_KEY.into()),
        ("RUST_LOG", "debug".into()),
    ]
}

const SECRETS: &[&str] = &[
    CLIENT_SECRET,
    STORE_KEY,
    ACCOUNT_KEY,
    WEBHOOK_PASSWORD,
    API_KEY_SECRET,
    FUNCTION_KEY,
    BEARER,
    AUTH_CODE,
    REFRESH_TOKEN,
];

fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} contains a secret ({}…):\n{text}", &secret[..6]);
    }
}

#[tokio::test]
async fn a_host_run_logs_and_answers_no_secret() {
    // The sync reaches a TrueContext that refuses this API key (401): the key was sent, and
    // must still appear nowhere.
    let truecontext = crate::harness::truecontext::TrueContextSim::start();
    let mut owned = settings();
    owned.push(("TRUECONTEXT_BASE_URL", truecontext.base_url()));
    let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::host(&pairs);
    let mut replies = String::new();
    let http = |function: &str, method: &str, url: String, body: Option<String>| {
        let mut req = json!({
            "Url": url, "Method": method, "Query": {},
            "Headers": { "Authorization": [format!("Bearer {BEARER}")], "Content-Type": ["application/json"] },
            "Params": {}, "Identities": []
        });
        if let Some(body) = body {
            req["Body"] = json!(body);
        }
        (function.to_owned(), harness::host::req_envelope(function, req))
    };
    let invocations = vec![
        http("status", "GET", format!("https://app/api/status?code={FUNCTION_KEY}"), None),
        http("callback", "GET", format!("https://app/api/callback?code={AUTH_CODE}&state=abc"), None),
        http(
            "webhook",
            "POST",
            "https://app/api/webhook".into(),
            Some(json!({ "refresh_token": REFRESH_TOKEN }).to_string()),
        ),
        basic_push(WEBHOOK_PASSWORD),
        basic_push("a-wrong-password-guess-Gg31"),
        ("sync".into(), harness::host::timer_envelope(Value::Null, true)),
        (
            "process".into(),
            harness::host::queue_envelope(
                json!(json!(json!({ "access_token": BEARER }).to_string()).to_string()),
                &[("DequeueCount", json!("5"))],
            ),
        ),
        ("process".into(), harness::host::queue_envelope(json!(format!("\"not json {REFRESH_TOKEN}\"")), &[])),
    ];
    for (function, envelope) in invocations {
        let reply = harness::host::invoke(&server, &function, &envelope).await;
        replies.push_str(&reply.json.to_string());
    }
    let truncated = harness::host::invoke_raw(&server, "status", format!("{{\"Data\": {{\"req\": \"{BEARER}")).await;
    replies.push_str(&truncated.json.to_string());

    assert_clean("the replies", &replies);
    let log = server.log();
    assert!(log.contains("push accepted") && log.contains("a push was refused"), "both pushes logged:\n{log}");
    for credential in [WEBHOOK_PASSWORD, "a-wrong-password-guess-Gg31"] {
        let encoded =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("truecontext:{credential}"));
        assert!(!log.contains(&encoded) && !replies.contains(&encoded), "a Basic credential was logged");
        assert!(!log.contains("Gg31"), "a refused password was logged");
    }
    assert!(log.contains("sync finished"), "the run logged something to scan:\n{log}");
    assert_clean("the server log", &log);
}

/// A push with Basic credentials (the right password or a guess), as the host hands it over.
fn basic_push(password: &str) -> (String, Value) {
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("truecontext:{password}"));
    let req = json!({
        "Url": "https://app/api/webhook", "Method": "POST", "Query": {},
        "Headers": { "Authorization": [format!("Basic {encoded}")], "Content-Type": ["application/json"] },
        "Params": {}, "Identities": [],
        "Body": json!({ "identifier": "9001", "secretAnswer": REFRESH_TOKEN }).to_string()
    });
    ("webhook".to_owned(), harness::host::req_envelope("webhook", req))
}

#[tokio::test]
async fn check_and_status_print_no_secret() {
    let owned = settings();
    let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for verb in ["check", "status"] {
        let dir = tempfile::tempdir().unwrap();
        let output = harness::command(dir.path(), &pairs).arg(verb).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert_clean(verb, &text);
    }
    // A wrong value for a secret setting is reported without the value.
    let dir = tempfile::tempdir().unwrap();
    let output = harness::command(dir.path(), &[("LOCAL_STORE_KEY", "not-base64-but-secret-Yy77")])
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("LOCAL_STORE_KEY") && !text.contains("Yy77"), "{text}");
}
