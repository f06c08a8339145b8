//! The operator commands: `check`, `status`, and `serve` refusing to start half-configured.

use crate::harness;
use std::process::Output;

fn run(args: &[&str], settings: &[(&str, &str)]) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = harness::command(dir.path(), settings).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output, text)
}

const COMPLETE: &[(&str, &str)] = &[
    ("OAUTH_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
    ("OAUTH_AUTHORITY", "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0"),
    ("OAUTH_REDIRECT_URI", "https://bridge.example.com/api/callback"),
    ("OAUTH_CLIENT_SECRET", "client-secret-value-must-not-print"),
    ("WEBHOOK_AUTH", "header"),
    ("WEBHOOK_HEADER_NAME", "x-api-key"),
    ("WEBHOOK_HEADER_VALUE", "header-secret-value-must-not-print"),
];

#[test]
fn check_passes_on_a_complete_configuration() {
    let (output, text) = run(&["check"], COMPLETE);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("configuration OK"));
    assert!(!text.contains("must-not-print"), "{text}");
}

#[test]
fn check_lists_what_is_missing_in_plain_words() {
    let (output, text) = run(&["check"], &[]);
    assert!(!output.status.success());
    for setting in ["OAUTH_CLIENT_ID", "OAUTH_AUTHORITY", "OAUTH_CLIENT_SECRET", "OAUTH_REDIRECT_URI", "WEBHOOK_AUTH"] {
        assert!(text.contains(setting), "{setting} not reported:\n{text}");
    }
    assert!(text.contains("for example"), "{text}");
}

#[test]
fn check_reports_every_wrong_value_at_once_without_printing_secrets() {
    let mut settings = COMPLETE.to_vec();
    settings.extend([
        ("OAUTH_PROVIDER", "keycloak"),
        ("SYNC_SCHEDULE", "*/5 * * * *"),
        ("TRUECONTEXT_BASE_URL", "ftp://api.example.com"),
        ("STORE", "cloud"),
        ("AzureWebJobsStorage", "connection-string-secret-must-not-print"),
        ("FUNCTION_KEY", "short"),
    ]);
    let (output, text) = run(&["check"], &settings);
    assert!(!output.status.success());
    for setting in
        ["OAUTH_PROVIDER", "SYNC_SCHEDULE", "TRUECONTEXT_BASE_URL", "STORE", "AzureWebJobsStorage", "FUNCTION_KEY"]
    {
        assert!(text.contains(setting), "{setting} not reported:\n{text}");
    }
    assert!(text.contains("6 wrong value(s)"), "{text}");
    assert!(!text.contains("must-not-print") && !text.contains("short\""), "{text}");
}

/// Wrong values (the server will not start) and missing settings (a feature will not work) are
/// two groups, both always reported: a wrong value does not hide what is missing.
#[test]
fn check_reports_wrong_values_and_missing_settings_as_two_groups() {
    let (output, text) = run(&["check"], &[("SYNC_SCHEDULE", "bogus"), ("FUNCTION_KEY", "short")]);
    assert!(!output.status.success());
    let (wrong, missing) = text.split_once("setting(s) missing").unwrap_or_else(|| panic!("no missing group:\n{text}"));
    assert!(wrong.contains("2 wrong value(s)") && wrong.contains("refuses to start"), "{text}");
    assert!(wrong.contains("SYNC_SCHEDULE") && wrong.contains("FUNCTION_KEY"), "{text}");
    for setting in ["OAUTH_CLIENT_ID", "OAUTH_AUTHORITY", "WEBHOOK_AUTH"] {
        assert!(missing.contains(setting), "{setting} missing is not reported beside the wrong values:\n{text}");
        assert!(!wrong.contains(setting), "{setting} is not wrong, only missing:\n{text}");
    }
    assert!(!text.contains("short\""), "{text}");
}

/// Issue 20: `jwt` with neither a role nor a client list would take a push from any app or
/// managed identity of the tenant. `check` refuses it, naming both settings.
#[test]
fn check_refuses_a_jwt_webhook_open_to_the_whole_tenant() {
    let mut settings: Vec<(&str, &str)> =
        COMPLETE.iter().filter(|(k, _)| !k.starts_with("WEBHOOK_")).copied().collect();
    settings.extend([("WEBHOOK_AUTH", "jwt"), ("WEBHOOK_AUDIENCE", "api://tcbridge-webhook")]);
    let (output, text) = run(&["check"], &settings);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let (wrong, _) = text.split_once("dependencies:").unwrap_or((&text, ""));
    assert!(wrong.contains("WEBHOOK_REQUIRED_ROLE") && wrong.contains("WEBHOOK_ALLOWED_CLIENT_IDS"), "{text}");
    settings.push(("WEBHOOK_REQUIRED_ROLE", "Submissions.Push"));
    let (output, text) = run(&["check"], &settings);
    assert!(output.status.success(), "{text}");
}

#[test]
fn status_prints_json_and_exits_zero_when_healthy() {
    let (output, text) = run(&["status"], &[]);
    assert!(output.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mode"], "cli");
    assert_eq!(report["healthy"], true);
    assert_eq!(report["store"], "local");
}

#[test]
fn serve_without_the_host_port_exits_non_zero_with_a_reason() {
    let (output, text) = run(&["serve"], &[]);
    // Exit code 0 would leave the host without a worker; it must be an error.
    assert!(!output.status.success());
    assert!(text.contains("FUNCTIONS_CUSTOMHANDLER_PORT"), "{text}");
}

#[test]
fn serve_with_a_bad_setting_exits_non_zero_naming_it() {
    let (output, text) = run(&["serve", "--standalone", "--port", "0"], &[("SYNC_SCHEDULE", "every minute")]);
    assert!(!output.status.success());
    assert!(text.contains("SYNC_SCHEDULE"), "{text}");
}

#[test]
fn local_settings_values_fill_what_the_environment_lacks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("local.settings.json"),
        r#"{"IsEncrypted": false, "Values": {"SYNC_SCHEDULE": "0 0 3 * * *", "OAUTH_CLIENT_ID": "from-file"}}"#,
    )
    .unwrap();
    let output = harness::command(dir.path(), &[("SYNC_SCHEDULE", "0 0 4 * * *")]).arg("status").output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["sync"]["schedule"], "0 0 4 * * *", "the environment wins");
    let missing = report["configuration_missing"].as_array().unwrap();
    assert!(!missing.iter().any(|m| m == "OAUTH_CLIENT_ID"), "the file filled OAUTH_CLIENT_ID");
}

#[test]
fn only_the_verbs_of_this_version_exist() {
    let (output, text) = run(&["--help"], &[]);
    assert!(output.status.success());
    for verb in ["serve", "status", "check"] {
        assert!(text.contains(verb), "{text}");
    }
}

#[test]
fn consent_url_is_derived_from_the_redirect_uri() {
    let (output, text) = run(
        &["consent-url", "--connection", "prod-eu"],
        &[("OAUTH_REDIRECT_URI", "https://bridge.example.com/api/callback")],
    );
    assert!(output.status.success(), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "https://bridge.example.com/api/authorize?connection=prod-eu"
    );
    let (output, text) = run(
        &["consent-url", "--connection", "../etc"],
        &[("OAUTH_REDIRECT_URI", "https://b.example.com/api/callback")],
    );
    assert!(!output.status.success());
    assert!(text.contains("connection id"), "{text}");
    let (output, text) = run(&["consent-url"], &[]);
    assert!(!output.status.success());
    assert!(text.contains("OAUTH_REDIRECT_URI"), "{text}");
}

#[tokio::test]
async fn submissions_list_and_show_read_what_landed() {
    use truecontext_bridge::landing::{Arrival, Landing, Source};
    let dir = tempfile::tempdir().unwrap();
    let stores = truecontext_bridge::store::local::open(&dir.path().join("store"), None).unwrap();
    let landing = Landing::new(&stores, "submissions", "landed-submissions");
    let raw = br#"{ "identifier": "3051",  "referenceNumber": "20250304-3051", "state": "Complete",
                    "form": {"identifier": "f1", "name": "Pump"}, "pages": [] }"#;
    let order = chrono::Utc::now();
    let arrival = Arrival { connection: "default", source: Source::Sync, raw, order, processed_date: None };
    landing.land(&arrival).await.unwrap();
    drop(stores);
    let settings = [("TRUECONTEXT_AUTH", "basic")];
    let output = harness::command(dir.path(), &settings).args(["submissions", "list", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    for field in
        ["connection", "id", "reference_number", "form_id", "state", "processed_date", "version", "sha256", "sources"]
    {
        assert!(lines[0].get(field).is_some(), "{field} in {}", lines[0]);
    }
    assert_eq!((lines[0]["id"].as_str(), lines[0]["version"].as_u64()), (Some("3051"), Some(1)));

    let shown =
        harness::command(dir.path(), &settings).args(["submissions", "show", "3051", "--raw"]).output().unwrap();
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    assert_eq!(shown.stdout, raw, "the document exactly as stored");
    let record = harness::command(dir.path(), &settings).args(["submissions", "show", "3051"]).output().unwrap();
    let record: serde_json::Value = serde_json::from_slice(&record.stdout).unwrap();
    assert_eq!(record["form"]["name"], "Pump");

    let missing = harness::command(dir.path(), &settings).args(["submissions", "show", "999"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no landed submission"));
    let bad =
        harness::command(dir.path(), &settings).args(["submissions", "list", "--connection", "../x"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--connection"));
}

/// `connection add / list / team / delete` for API-key connections: the secret stays in its
/// setting (only the `TRUECONTEXT_KEY_SECRET_*` family may hold it), one key is one team, the
/// same add is a no-op, and every refusal names what is wrong and changes nothing.
#[test]
fn api_key_connections_are_added_listed_with_their_team_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("TRUECONTEXT_KEY_SECRET_ACME", "acme-secret-value-must-not-print")];
    let run = |args: &[&str]| {
        let output = harness::command(dir.path(), &settings).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code(), text)
    };
    let add = ["connection", "add", "acme-eu", "--team", "acme", "--key-id", "key-1", "--secret-setting"];
    let (code, text) = run(&[&add[..], &["TRUECONTEXT_KEY_SECRET_ACME"]].concat());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("added") && text.contains("team acme"), "{text}");
    let (code, text) = run(&[&add[..], &["TRUECONTEXT_KEY_SECRET_ACME"]].concat());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("already there"), "{text}");

    // Refused, naming why, changing nothing.
    let (code, text) = run(&[&add[..], &["OAUTH_CLIENT_SECRET"]].concat());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("TRUECONTEXT_KEY_SECRET_"), "{text}");
    let other_team = ["connection", "add", "acme-us", "--team", "other", "--key-id", "key-1", "--secret-setting"];
    let (code, text) = run(&[&other_team[..], &["TRUECONTEXT_KEY_SECRET_ACME"]].concat());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("one key is one team"), "{text}");
    let (code, text) = run(&[
        "connection",
        "add",
        "bad/id",
        "--team",
        "acme",
        "--key-id",
        "k",
        "--secret-setting",
        "TRUECONTEXT_KEY_SECRET_ACME",
    ]);
    assert_ne!(code, Some(0), "{text}");
    let (code, text) = run(&["connection", "team", "nobody", "acme"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no consented connection nobody"), "{text}");

    let (code, text) = run(&["connection", "list", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let rows: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!((rows[0]["id"].as_str(), rows[0]["team"].as_str()), (Some("acme-eu"), Some("acme")));
    assert_eq!((rows[0]["kind"].as_str(), rows[0]["secret_set"].as_bool()), (Some("api_key"), Some(true)));
    assert!(!text.contains("must-not-print"), "the secret is never shown: {text}");

    let (code, text) = run(&["connection", "delete", "acme-eu"]);
    assert_eq!(code, Some(0), "{text}");
    let (_, text) = run(&["connection", "list", "--json"]);
    assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()), "{text}");
}
