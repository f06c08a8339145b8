use super::*;

fn load(pairs: &[(&str, &str)]) -> Result<Settings, Vec<Problem>> {
    Settings::load(&RawSettings::from_pairs(pairs.iter().copied()))
}

#[test]
fn defaults_from_nothing() {
    let s = load(&[]).unwrap();
    assert_eq!(s.oauth.provider, OAuthProvider::Entra);
    assert_eq!(s.oauth.grant, OAuthGrant::AuthorizationCode);
    assert_eq!(s.truecontext.auth, TrueContextAuth::Bearer);
    assert_eq!(s.truecontext.base_url.as_str(), DEFAULT_TRUECONTEXT_BASE_URL);
    assert_eq!(s.store.kind, StoreKind::Local);
    assert_eq!(s.tokens.refresh_margin, Duration::from_secs(600));
    assert_eq!(s.queues.max_dequeue_count, 5);
}

#[test]
fn connection_strings_are_local_only_when_every_endpoint_is_loopback() {
    assert!(connection_string_is_local("UseDevelopmentStorage=true"));
    assert!(connection_string_is_local(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;\
         BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;\
         TableEndpoint=http://localhost:10002/devstoreaccount1;"
    ));
    assert!(!connection_string_is_local("AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net"));
    assert!(!connection_string_is_local(
        "AccountName=a;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/a;QueueEndpoint=https://a.queue.core.windows.net"
    ));
    assert!(!connection_string_is_local("BlobEndpoint=not a url"));
}

#[test]
fn an_extra_ca_is_refused_next_to_a_cloud_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let pem = rcgen::generate_simple_self_signed(vec!["v.vault.localhost".into()]).unwrap().cert.pem();
    std::fs::write(&ca, pem).unwrap();
    let ca = ca.display().to_string();
    let local = [
        ("STORE", "azure"),
        ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
        ("KEYVAULT_URI", "https://v.vault.localhost:8443"),
        ("TLS_EXTRA_CA_FILE", ca.as_str()),
    ];
    assert_eq!(load(&local).unwrap().store.tls_extra_ca_file.unwrap().display().to_string(), ca);
    let mut cloud = local;
    cloud[2] = ("KEYVAULT_URI", "https://v.vault.azure.net");
    let problems = load(&cloud).unwrap_err();
    assert!(problems.iter().any(|p| p.setting == "TLS_EXTRA_CA_FILE" && p.message.contains("KEYVAULT_URI")));
    let identity = load(&[("AzureWebJobsStorage__accountName", "acct"), ("TLS_EXTRA_CA_FILE", ca.as_str())]);
    assert!(identity.unwrap_err().iter().any(|p| p.message.contains("AzureWebJobsStorage__accountName")));
    assert!(load(&[("TLS_EXTRA_CA_FILE", "/nonexistent.pem")]).is_err());
}

#[test]
fn development_storage_keeps_the_embedded_store_but_a_real_account_switches() {
    assert_eq!(load(&[("AzureWebJobsStorage", "UseDevelopmentStorage=true")]).unwrap().store.kind, StoreKind::Local);
    let s =
        load(&[("AzureWebJobsStorage__accountName", "acct"), ("KEYVAULT_URI", "https://v.vault.azure.net")]).unwrap();
    assert_eq!(s.store.kind, StoreKind::Azure);
}

#[test]
fn every_problem_is_reported_at_once_and_names_its_setting() {
    let problems = load(&[
        ("OAUTH_PROVIDER", "okta"),
        ("OAUTH_AUTHORITY", "not a url"),
        ("OAUTH_REDIRECT_URI", "http://example.com/cb"),
        ("SYNC_SCHEDULE", "*/5 * * * *"),
        ("STORE", "azure"),
        ("TOKEN_REFRESH_MARGIN_SECONDS", "ten"),
    ])
    .unwrap_err();
    let named: Vec<&str> = problems.iter().map(|p| p.setting.as_str()).collect();
    for setting in [
        "OAUTH_PROVIDER",
        "OAUTH_AUTHORITY",
        "OAUTH_REDIRECT_URI",
        "SYNC_SCHEDULE",
        "AzureWebJobsStorage",
        "KEYVAULT_URI",
        "TOKEN_REFRESH_MARGIN_SECONDS",
    ] {
        assert!(named.contains(&setting), "{setting} missing from {named:?}");
    }
    assert!(problems.iter().all(|p| p.example.is_some()));
}

#[test]
fn every_secret_setting_is_handed_to_the_scrubber() {
    use base64::Engine;
    // Each secret must be valid on its own terms, so that the whole set loads.
    let values: Vec<(&str, String)> = Settings::secret_settings()
        .iter()
        .map(|name| match *name {
            "LOCAL_STORE_KEY" => (*name, base64::engine::general_purpose::STANDARD.encode([7u8; 32])),
            "AzureWebJobsStorage" => (*name, "UseDevelopmentStorage=true".to_owned()),
            "WEBHOOK_CONNECTION_SECRETS" => (*name, "contoso=value-of-its-own-1234567890".to_owned()),
            _ => (*name, format!("value-of-{name}-1234567890")),
        })
        .collect();
    let pairs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let settings = load(&pairs).unwrap_or_else(|p| panic!("{p:?}"));
    let registered: Vec<&str> = settings.secret_values().iter().map(SecretString::expose).collect();
    for (name, value) in &values {
        assert!(registered.contains(&value.as_str()), "{name} is not handed to the scrubber");
    }
}

#[test]
fn secret_values_never_appear_in_problems_or_debug() {
    let secret = "sup3r-s3cret-value-that-must-not-leak";
    let problems = load(&[
        ("AzureWebJobsStorage", secret),
        ("LOCAL_STORE_KEY", secret),
        ("FUNCTION_KEY", "fk-Q7x"),
        ("WEBHOOK_AUTH", "basic"),
        ("WEBHOOK_BASIC_USERNAME", "tc"),
        ("WEBHOOK_BASIC_PASSWORD", "pw-Z3k"),
    ])
    .unwrap_err();
    let text = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert!(!text.contains(secret) && !text.contains("fk-Q7x") && !text.contains("pw-Z3k"), "{text}");
    let ok = load(&[("OAUTH_CLIENT_SECRET", secret)]).unwrap();
    assert!(!format!("{ok:?}").contains(secret));
}

#[test]
fn local_settings_fill_only_what_the_environment_lacks() {
    let mut raw = RawSettings::from_pairs([("SYNC_SCHEDULE", "0 0 * * * *")]);
    raw.fill_from_local_settings(
        Path::new("local.settings.json"),
        r#"{"IsEncrypted":false,"Values":{"SYNC_SCHEDULE":"0 */5 * * * *","OAUTH_CLIENT_ID":"abc"}}"#,
    );
    assert_eq!(raw.get("SYNC_SCHEDULE"), Some("0 0 * * * *"));
    assert_eq!(raw.get("OAUTH_CLIENT_ID"), Some("abc"));
}

#[test]
fn a_broken_local_settings_file_is_a_problem() {
    let mut raw = RawSettings::default();
    raw.fill_from_local_settings(Path::new("local.settings.json"), "{\"Values\": ");
    let problems = Settings::load(&raw).unwrap_err();
    assert!(problems[0].message.contains("not valid JSON"));
}

#[test]
fn missing_lists_what_the_connect_flow_needs() {
    let s = load(&[]).unwrap();
    let missing: Vec<String> = s.missing().into_iter().map(|p| p.setting).collect();
    for setting in ["OAUTH_CLIENT_ID", "OAUTH_AUTHORITY", "OAUTH_REDIRECT_URI", "OAUTH_CLIENT_SECRET", "WEBHOOK_AUTH"] {
        assert!(missing.iter().any(|m| m == setting), "{setting} not in {missing:?}");
    }
    let complete = load(&[
        ("OAUTH_CLIENT_ID", "id"),
        ("OAUTH_AUTHORITY", "https://login.microsoftonline.com/t/v2.0"),
        ("OAUTH_REDIRECT_URI", "https://app.example.com/api/callback"),
        ("OAUTH_CLIENT_SECRET", "s"),
        ("WEBHOOK_AUTH", "header"),
        ("WEBHOOK_HEADER_NAME", "x-api-key"),
        ("WEBHOOK_HEADER_VALUE", "0123456789abcdef0123"),
    ])
    .unwrap();
    assert!(complete.missing().is_empty(), "{:?}", complete.missing());
}

#[test]
fn webhook_settings_take_a_rotation_pair_and_say_what_is_wrong() {
    let load = |pairs: &[(&str, &str)]| Settings::load(&RawSettings::from_pairs(pairs.iter().copied()));
    let base = [("WEBHOOK_AUTH", "basic"), ("WEBHOOK_BASIC_USERNAME", "tc")];
    let pair = [base.as_slice(), &[("WEBHOOK_BASIC_PASSWORD", "old-0123456789abcdef, new-0123456789abcdef")]].concat();
    assert_eq!(load(&pair).unwrap().webhook.basic_passwords.len(), 2);
    let three =
        [base.as_slice(), &[("WEBHOOK_BASIC_PASSWORD", "a-0123456789abcdef,b-0123456789abcdef,c-0123456789abcdef")]]
            .concat();
    let problems = load(&three).unwrap_err();
    assert!(
        problems.iter().any(|p| p.setting == "WEBHOOK_BASIC_PASSWORD" && p.message.contains("two")),
        "{problems:?}"
    );
    assert!(!format!("{problems:?}").contains("0123456789abcdef"), "no value shown");
    let short = [base.as_slice(), &[("WEBHOOK_BASIC_PASSWORD", "long-enough-0123456789,short")]].concat();
    assert!(load(&short).unwrap_err().iter().any(|p| p.message.contains("shorter than 16")));
    let entra =
        load(&[("WEBHOOK_AUTH", "entra"), ("WEBHOOK_AUDIENCE", "api://hook"), ("WEBHOOK_REQUIRED_ROLE", "Push")])
            .unwrap();
    assert_eq!(entra.webhook.auth, Some(WebhookAuth::Jwt));
    // Issue 20: any principal of the tenant could push when neither a role nor a client
    // list narrows who may.
    let open = load(&[("WEBHOOK_AUTH", "jwt"), ("WEBHOOK_AUDIENCE", "api://hook")]).unwrap_err();
    let named = open.iter().find(|p| p.setting == "WEBHOOK_REQUIRED_ROLE").expect("refused");
    assert!(named.to_string().contains("WEBHOOK_ALLOWED_CLIENT_IDS"), "{named}");
    let by_connection = [
        ("WEBHOOK_AUTH", "jwt"),
        ("WEBHOOK_AUDIENCE", "api://hook"),
        ("WEBHOOK_CONNECTION_CLIENT_IDS", "contoso=client-a client-b; fabrikam=client-c"),
    ];
    let clients = load(&by_connection).unwrap().webhook.connection_client_ids;
    assert_eq!(clients["contoso"], ["client-a", "client-b"]);
    let bad = load(&[("WEBHOOK_CONNECTION_CLIENT_IDS", "../x=client"), ("WEBHOOK_CONNECTION_SECRETS", "a=tiny-value")]);
    let bad = bad.unwrap_err();
    assert!(bad.iter().any(|p| p.setting == "WEBHOOK_CONNECTION_CLIENT_IDS"), "{bad:?}");
    assert!(bad.iter().any(|p| p.setting == "WEBHOOK_CONNECTION_SECRETS"), "{bad:?}");
    assert!(!format!("{bad:?}").contains("tiny-value"), "no value shown");
    let clients_twice = load(&[("WEBHOOK_CONNECTION_CLIENT_IDS", "demo=a1;demo=b1")]).unwrap_err();
    assert!(clients_twice.iter().any(|p| p.message.contains("twice")), "{clients_twice:?}");
    let twice = load(&[("WEBHOOK_CONNECTION_SECRETS", "demo=first-value-0123456789;demo=second-value-0123456789")]);
    assert!(twice.unwrap_err().iter().any(|p| p.message.contains("twice")));
    let shared = load(&[
        ("WEBHOOK_AUTH", "basic"),
        ("WEBHOOK_BASIC_USERNAME", "tc"),
        ("WEBHOOK_BASIC_PASSWORD", "shared-value-0123456789"),
        ("WEBHOOK_CONNECTION_SECRETS", "demo=shared-value-0123456789"),
    ]);
    let shared = shared.unwrap_err();
    assert!(shared.iter().any(|p| p.message.contains("shared")), "{shared:?}");
    assert!(!format!("{shared:?}").contains("shared-value-0123456789"), "no value shown");
    assert!(load(&[("WEBHOOK_AUTH", "jwt")]).unwrap_err().iter().any(|p| p.setting == "WEBHOOK_AUDIENCE"));
    let limits = load(&[("WEBHOOK_MAX_BODY_BYTES", "2000000"), ("MAX_REQUEST_BODY_BYTES", "1000000")]).unwrap_err();
    assert!(limits.iter().any(|p| p.setting == "WEBHOOK_MAX_BODY_BYTES"), "{limits:?}");
    let header = load(&[
        ("WEBHOOK_AUTH", "header"),
        ("WEBHOOK_HEADER_NAME", "Authorization"),
        ("WEBHOOK_HEADER_VALUE", "0123456789abcdef0123"),
    ]);
    assert!(header.unwrap_err().iter().any(|p| p.setting == "WEBHOOK_HEADER_NAME"));
    let format =
        load(&[("ALERT_WEBHOOK_URL", "https://hooks.example/x"), ("ALERT_WEBHOOK_FORMAT", "adaptive-card")]).unwrap();
    assert_eq!(format.tokens.alert_webhook.unwrap().format, AlertFormat::AdaptiveCard);
}

/// The table (`settings.tsv`) and the parser agree: every name the parser reads is listed
/// (`Parser::get` asserts it), and every listed name outside the host's is read by one of these
/// configurations between them (settings read only when others are set need those set).
#[test]
fn the_parser_reads_exactly_the_settings_in_the_table() {
    let configurations: [&[(&str, &str)]; 5] = [
        &[],
        &[("STORE", "azure"), ("AzureWebJobsStorage__accountName", "acct"), ("TLS_EXTRA_CA_FILE", "/tmp/ca.pem")],
        &[
            ("STORE", "azure"),
            ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
            ("KEYVAULT_URI", "https://v.vault.azure.net"),
        ],
        &[
            ("WEBHOOK_AUTH", "jwt"),
            ("TRUSTED_PROXY_HOPS", "1"),
            ("OAUTH_PROVIDER", "oauth2"),
            ("OAUTH_GRANT", "client_credentials"),
        ],
        &[
            ("WEBHOOK_AUTH", "basic"),
            ("TRUECONTEXT_AUTH", "basic"),
            ("TRUECONTEXT_BASE_URL", "http://127.0.0.1:9/api/1.1"),
        ],
    ];
    let mut read = std::collections::BTreeSet::new();
    for pairs in configurations {
        let raw = RawSettings::from_pairs(pairs.iter().copied());
        let mut p = Parser::new(&raw);
        Settings::parse_with(&mut p);
        read.extend(p.read.into_inner());
    }
    let listed: std::collections::BTreeSet<String> =
        table::entries().iter().filter(|e| !["host", "env"].contains(&e.section)).map(|e| e.name.to_owned()).collect();
    let never_read: Vec<_> = listed.difference(&read).collect();
    assert!(never_read.is_empty(), "listed in settings.tsv but never read: {never_read:?}");
}
