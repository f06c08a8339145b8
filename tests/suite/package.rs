//! The deploy package `bash scripts/package.sh` writes (`dist/functionapp.zip`, or the zip
//! `PACKAGE_ZIP` names): exactly host.json, the function folders and the binary with its exec
//! bit; and the binary from the zip, started with only what the Functions host gives it,
//! answers the readiness probe and each function's envelope.
//!
//! The test command (`scripts/test.sh`) builds the package first; run alone, these tests fail
//! saying how to build it, never pass without looking at one.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::host::{http_envelope, invoke, queue_envelope, status_envelope, timer_envelope};
use crate::harness::{client, free_port, Server};

fn zip_path() -> PathBuf {
    let path = std::env::var_os("PACKAGE_ZIP")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/functionapp.zip"));
    assert!(path.exists(), "{} is missing: build it with `bash scripts/package.sh`", path.display());
    path
}

/// The zip's entries as (name, Unix mode, size), read by Python's zipfile (no zip crate needed
/// for a test), and, with `into`, extracted there with the modes the zip records.
fn entries(zip: &Path, into: Option<&Path>) -> Vec<(String, u32, u64)> {
    let script = r#"
import json, os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
out = []
for i in z.infolist():
    mode = (i.external_attr >> 16) & 0o7777
    out.append([i.filename, mode, i.file_size])
    if len(sys.argv) > 2:
        target = z.extract(i, sys.argv[2])
        os.chmod(target, mode)
print(json.dumps(out))
"#;
    let mut command = Command::new("python3");
    command.arg("-c").arg(script).arg(zip);
    if let Some(dir) = into {
        command.arg(dir);
    }
    let output = command.output().expect("python3");
    assert!(output.status.success(), "reading the zip: {}", String::from_utf8_lossy(&output.stderr));
    let listed: Vec<(String, u32, u64)> = serde_json::from_slice(&output.stdout).unwrap();
    listed
}

fn function_folders() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("function.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_zip_holds_host_json_the_functions_and_an_executable_binary_only() {
    let listed = entries(&zip_path(), None);
    let names: Vec<&str> = listed.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut expected = vec!["host.json".to_owned(), "tcbridge".to_owned()];
    expected.extend(function_folders().iter().map(|f| format!("{f}/function.json")));
    expected.sort();
    let mut sorted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    sorted.sort();
    assert_eq!(sorted, expected, "exactly these entries, nothing else");
    assert_eq!(function_folders().len(), 6, "the six functions");
    for (name, mode, size) in &listed {
        match name.as_str() {
            "tcbridge" => {
                assert_eq!(mode & 0o111, 0o111, "the binary keeps its exec bit: {mode:o}");
                assert!(*size > 1_000_000, "a real binary, not a stub: {size} bytes");
            }
            _ => assert_eq!(mode & 0o111, 0, "{name} is data, not executable: {mode:o}"),
        }
    }
    // host.json in the zip is the repository's, and names the binary at the zip's root.
    let host: Value = serde_json::from_str(&std::fs::read_to_string("host.json").unwrap()).unwrap();
    assert_eq!(host["customHandler"]["description"]["defaultExecutablePath"], "tcbridge");
}

#[test]
fn the_zipped_binary_is_static() {
    let dir = tempfile::tempdir().unwrap();
    entries(&zip_path(), Some(dir.path()));
    let binary = std::fs::read(dir.path().join("tcbridge")).unwrap();
    assert_eq!(&binary[..4], b"\x7fELF", "an ELF executable");
    // A dynamically linked ELF names its loader in a PT_INTERP segment; a static one has none.
    assert!(
        !binary.windows(b"/lib64/ld-linux".len()).any(|w| w == b"/lib64/ld-linux"),
        "no dynamic loader: the binary runs on any Linux without glibc"
    );
}

#[tokio::test]
async fn the_zipped_handler_starts_under_a_fake_host_and_answers_every_function() {
    let dir = tempfile::tempdir().unwrap();
    entries(&zip_path(), Some(dir.path()));
    let program = dir.path().join("tcbridge");
    let port = free_port();
    let port_text = port.to_string();
    // What the host gives a worker: its port, the app settings, the app root as working
    // directory (no local.settings.json is in the package).
    let settings = [
        ("FUNCTIONS_CUSTOMHANDLER_PORT", port_text.as_str()),
        ("FUNCTIONS_WORKER_RUNTIME", "custom"),
        ("WEBSITE_HOSTNAME", "localhost:7071"),
        ("SYNC_SCHEDULE", "0 */30 * * * *"),
        ("INCOMING_QUEUE_NAME", "incoming-submissions"),
        ("WEBHOOK_AUTH", "basic"),
        ("WEBHOOK_BASIC_USERNAME", "tc"),
        ("WEBHOOK_BASIC_PASSWORD", "push-password-0123456789"),
    ];
    let server = Server::start_program(&program, dir, &["serve"], port, &settings);
    let probe = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(probe.status(), 200, "the readiness probe: {}", server.log());

    let status = invoke(&server, "status", &status_envelope("GET")).await;
    assert_eq!(status.status, 200);
    let res = &status.json["Outputs"]["res"];
    let report: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert_eq!(report["service"], "truecontext-bridge");
    assert_eq!(report["mode"], "functions");

    let sync = invoke(&server, "sync", &timer_envelope(Value::Null, false)).await;
    assert_eq!(sync.status, 200, "sync: {}", sync.json);

    let authorize = invoke(&server, "authorize", &http_envelope("authorize", "GET", &[], &[], None)).await;
    assert_eq!(authorize.status, 200, "authorize travels in a 200 envelope: {}", authorize.json);
    let callback = invoke(&server, "callback", &http_envelope("callback", "GET", &[], &[], None)).await;
    assert_eq!(
        callback.json["Outputs"]["res"]["statusCode"],
        json!(400),
        "a callback without state: {}",
        callback.json
    );

    let unauthenticated = http_envelope("webhook", "POST", &[], &[("Content-Type", "application/json")], Some("{}"));
    let webhook = invoke(&server, "webhook", &unauthenticated).await;
    assert_eq!(webhook.json["Outputs"]["res"]["statusCode"], json!(401), "{}", webhook.json);

    // A queue message naming a push that is not stored: processed, with nothing to do.
    let message =
        json!({ "kind": "push", "connection": "default", "key": format!("sub-1.{}", "0".repeat(64)) }).to_string();
    let process = invoke(&server, "process", &queue_envelope(Value::String(message), &[])).await;
    assert_eq!(process.status, 200, "process: {}", process.json);
    let logs = process.json["Logs"].to_string();
    assert!(logs.contains("nothing to do"), "the invocation says what it did: {logs}\n{}", server.log());
}
