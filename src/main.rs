//! `tcbridge`: the one binary. `serve` behind the Functions host, `serve --standalone` on its
//! own, and the operator commands. Errors surface here as `anyhow` with plain-words context.

#![deny(clippy::string_slice, clippy::indexing_slicing)]

/// `println!` for the commands' output that returns the error instead of panicking when stdout
/// cannot be written (a full disk, a closed descriptor); `?` carries it to `main`, which says so.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

/// The same for stderr.
macro_rules! esay {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stderr(), $($arg)*)
    }};
}

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use truecontext_bridge::config::{RawSettings, Settings};
use truecontext_bridge::functions::{self, Trigger};
use truecontext_bridge::handlers::{App, Mode, StatusReport};
use truecontext_bridge::sync::{RunOutcome, SyncSummary};
use truecontext_bridge::telemetry::{self, Output};
use truecontext_bridge::{host, landing, standalone, store};

#[derive(Parser)]
#[command(name = "tcbridge", version, about = "TrueContext ⇄ Azure bridge: an Azure Functions custom handler")]
struct Cli {
    /// The local settings file whose `Values` fill in settings the environment lacks.
    #[arg(long, global = true, value_name = "FILE")]
    settings: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the functions: behind the Functions host (default) or on its own (--standalone).
    Serve {
        /// Serve plain HTTP under /api/... and run the timer and the queue in-process.
        #[arg(long)]
        standalone: bool,
        /// Standalone port (default 7071).
        #[arg(long, requires = "standalone")]
        port: Option<u16>,
        /// Standalone listen address (default 127.0.0.1).
        #[arg(long, requires = "standalone")]
        address: Option<IpAddr>,
        /// Run a built-in TrueContext simulator (seeded, with new submissions every few
        /// seconds) and sync it with an API key on the embedded store: no account needed.
        #[arg(long, requires = "standalone")]
        demo: bool,
    },
    /// Print the status report as JSON; exit 1 when something needs attention.
    Status,
    /// Validate the configuration and say in plain words what is missing or wrong; name each
    /// dependency with its endpoint and the kind of credential it will use.
    Check {
        /// Also reach each dependency once and say whether it answers and takes the credential.
        #[arg(long)]
        online: bool,
    },
    /// Obtain a fresh access token through the same path as the sync (cache, lease, refresh) and
    /// print its expiry and scopes, never the token. Exits non-zero with the failure class.
    Token {
        /// The connection (default: `default`, or `app` with OAUTH_GRANT=client_credentials).
        #[arg(long)]
        connection: Option<String>,
        /// Refresh even when the current token is still good.
        #[arg(long)]
        force: bool,
    },
    /// Pull new and changed submissions from TrueContext now, once, and say what happened.
    Sync {
        /// Required: the schedule itself runs under `serve`.
        #[arg(long)]
        once: bool,
        /// The connection (default: every known connection).
        #[arg(long)]
        connection: Option<String>,
        /// The summary as one JSON object per connection.
        #[arg(long)]
        json: bool,
    },
    /// The submissions landed in the store.
    Submissions {
        #[command(subcommand)]
        command: SubmissionsCommand,
    },
    /// Messages that failed on every allowed delivery (the incoming queue's poison queue).
    Poison {
        #[command(subcommand)]
        command: PoisonCommand,
    },
    /// Submissions that could not be landed (refused for good, kept as received with the reason).
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// The consented connections: list them, turn one off or on, or delete one with its tokens.
    Connection {
        #[command(subcommand)]
        command: ConnectionCommand,
    },
    /// Print the link an administrator opens to connect (or reconnect) a connection.
    ConsentUrl {
        /// The connection to connect.
        #[arg(long, default_value = "default")]
        connection: String,
    },
}

#[derive(Subcommand)]
enum SubmissionsCommand {
    /// List the landed submissions (all connections unless --connection).
    List {
        #[arg(long)]
        connection: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print one submission's normalised record, or with --raw its document exactly as stored.
    Show {
        id: String,
        #[arg(long)]
        connection: Option<String>,
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Subcommand)]
enum ConnectionCommand {
    /// One line per consented connection (state, account, tenant, last refresh, reason).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Stop syncing, refreshing and taking pushes for a connection; status says it is disabled.
    Disable { id: String },
    /// Turn a disabled connection back on.
    Enable { id: String },
    /// Delete a connection: its token set (every version, from the secret store), its record and
    /// its alerts. Landed submissions and the sync cursor stay.
    Delete { id: String },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List the quarantined submissions with the reason each could not be landed.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Land quarantined submissions again from their kept bytes (after a fix): one (by
    /// submission id or `{id}.{sha256}` key) or, with --all, every one. Those that land leave
    /// the quarantine; the others stay with the new reason.
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum PoisonCommand {
    /// List the poisoned messages with the error their push last recorded.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Put poisoned messages back on the incoming queue: one (by message id or submission id)
    /// or, with --all, every one.
    Replay {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    truecontext_bridge::tls::install_crypto_provider();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        quiet_on_closed_output();
    }
    let raw = RawSettings::from_environment(cli.settings.as_deref());
    // Blocking threads serve the embedded store, whose one SQLite connection is behind a mutex:
    // past a few, extra threads only queue on it, each with its stack (tokio's default of 512
    // let a long sync grow to 40 threads).
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(8).enable_all().build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = esay!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Check { online } => check(&raw, online).await,
            Command::Status => status(&raw).await,
            Command::ConsentUrl { connection } => consent_url(&raw, &connection),
            Command::Submissions { command } => submissions(&raw, command).await,
            Command::Poison { command } => poison(&raw, command).await,
            Command::Quarantine { command } => quarantine(&raw, command).await,
            Command::Connection { command } => connection(&raw, command).await,
            Command::Sync { once, connection, json } => sync_once(&raw, once, connection, json).await,
            Command::Token { connection, force } => token(&raw, connection, force).await,
            Command::Serve { standalone: false, .. } => serve_host(&raw).await,
            Command::Serve { standalone: true, port, address, demo: false } => {
                serve_standalone(&raw, port, address, None).await
            }
            Command::Serve { standalone: true, port, address, demo: true } => serve_demo(raw, port, address).await,
        }
    });
    match result {
        Ok(code) => code,
        // The reader went away (`tcbridge submissions list | head`): nothing left to say.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // `{:#}` prints the whole context chain on one line.
            tracing::error!("{e:#}");
            let _ = esay!("error: {}", telemetry::redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// A command whose output goes to a reader that leaves early (`| head`) ends there, quietly, as
/// other command-line tools do. Rust starts with SIGPIPE ignored, so a write to the closed pipe
/// failed and `println!` panicked. Never for `serve`: a client's closed socket must not stop a
/// server.
fn quiet_on_closed_output() {
    #[cfg(unix)]
    // SAFETY: called once at start, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Settings or a readable list of what is wrong with them.
fn load_settings(raw: &RawSettings) -> anyhow::Result<Arc<Settings>> {
    match Settings::load(raw) {
        Ok(settings) => {
            for secret in settings.secret_values() {
                telemetry::register_secret(secret);
            }
            Ok(Arc::new(settings))
        }
        Err(problems) => {
            let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
            bail!("the configuration has {} problem(s):\n{}", problems.len(), list.join("\n"))
        }
    }
}

fn open_app(settings: Arc<Settings>, mode: Mode) -> anyhow::Result<App> {
    let stores = store::open(&settings.store).context("cannot open the store")?;
    Ok(App::new(settings, stores, mode))
}

async fn check(raw: &RawSettings, online: bool) -> anyhow::Result<ExitCode> {
    telemetry::init(truecontext_bridge::config::LogFormat::Text, Output::Stderr);
    // Wrong values stop the server from starting; missing ones only keep a feature from working.
    // Both are reported, always: the missing ones are judged with defaults for the wrong ones.
    let (settings, wrong) = Settings::parse(raw);
    let mut missing = settings.missing();
    if wrong.is_empty() {
        if let Err(e) = store::open(&settings.store) {
            missing.push(truecontext_bridge::config::Problem {
                setting: "STORE".into(),
                message: format!("the store cannot be opened: {e}"),
                example: None,
            });
        }
    }
    if !wrong.is_empty() {
        say!("{} wrong value(s) — the server refuses to start until they are fixed:", wrong.len())?;
        for problem in &wrong {
            say!("  - {}", telemetry::redact(&problem.to_string()))?;
        }
    }
    if !missing.is_empty() {
        say!(
            "{} setting(s) missing — the server starts, but the feature named cannot work until they are set:",
            missing.len()
        )?;
        for problem in &missing {
            say!("  - {}", telemetry::redact(&problem.to_string()))?;
        }
    }
    let configured = wrong.is_empty() && missing.is_empty();
    if configured {
        say!("configuration OK")?;
        say!("  OAUTH_PROVIDER    {:?}", settings.oauth.provider)?;
        say!("  OAUTH_GRANT       {:?}", settings.oauth.grant)?;
        say!("  STORE             {}", settings.store.kind.name())?;
        say!("  SYNC_SCHEDULE     {}", settings.sync_schedule.describe())?;
    }
    let probed_ok = if online && wrong.is_empty() {
        check_online(settings).await?
    } else {
        print_dependencies(&settings)?;
        if online {
            say!("not reaching the dependencies (--online) until the wrong values are fixed")?;
        }
        !online
    };
    Ok(if configured && probed_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_dependencies(settings: &Settings) -> std::io::Result<()> {
    say!("dependencies:")?;
    for d in truecontext_bridge::handlers::dependencies::describe(settings) {
        say!("  - {}: {}", d.name, telemetry::redact(&d.endpoint))?;
        say!("      credential: {}", telemetry::redact(&d.credential))?;
    }
    Ok(())
}

/// Reaches each dependency once; true when none failed.
async fn check_online(settings: Settings) -> anyhow::Result<bool> {
    for secret in settings.secret_values() {
        telemetry::register_secret(secret);
    }
    let settings = Arc::new(settings);
    let app = match open_app(settings.clone(), Mode::Cli) {
        Ok(app) => app,
        Err(e) => {
            print_dependencies(&settings)?;
            say!("FAILED: {}", telemetry::redact(&format!("{e:#}")))?;
            return Ok(false);
        }
    };
    say!("dependencies (reached once each):")?;
    let mut failures = 0;
    for (d, verdict) in truecontext_bridge::handlers::dependencies::probe(&app).await {
        failures += usize::from(verdict.is_failure());
        say!("  - {}: {}", d.name, telemetry::redact(&d.endpoint))?;
        say!("      credential: {}", telemetry::redact(&d.credential))?;
        say!("      {}: {}", verdict.label(), telemetry::redact(verdict.detail()))?;
    }
    match failures {
        0 => say!("every dependency answered")?,
        n => say!("{n} dependenc{} failed", if n == 1 { "y" } else { "ies" })?,
    }
    Ok(failures == 0)
}

fn consent_url(raw: &RawSettings, connection: &str) -> anyhow::Result<ExitCode> {
    let settings = load_settings(raw)?;
    let url = truecontext_bridge::connections::consent_url(&settings, connection).map_err(anyhow::Error::msg)?;
    say!("{url}")?;
    esay!("The link needs the function key: add &code=<key>, or send it as the x-functions-key header.")?;
    Ok(ExitCode::SUCCESS)
}

async fn status(raw: &RawSettings) -> anyhow::Result<ExitCode> {
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings, Mode::Cli)?;
    let report = StatusReport::gather(&app).await.context("cannot read the status from the store")?;
    say!("{}", serde_json::to_string_pretty(&report)?)?;
    Ok(if report.healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Exit codes of `tcbridge token` by failure class, so scripts can tell them apart.
fn token_exit_code(class: &str) -> u8 {
    match class {
        "needs_reauth" | "disabled" => 3,
        "app_credentials" => 4,
        "transient" | "busy" => 5,
        "rejected" => 6,
        "not_connected" | "invalid_connection" => 7,
        _ => 1,
    }
}

async fn token(raw: &RawSettings, connection: Option<String>, force: bool) -> anyhow::Result<ExitCode> {
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let connection = connection.unwrap_or_else(|| match settings.oauth.grant {
        truecontext_bridge::config::OAuthGrant::ClientCredentials => {
            truecontext_bridge::connections::APP_ONLY_CONNECTION.to_owned()
        }
        truecontext_bridge::config::OAuthGrant::AuthorizationCode => "default".to_owned(),
    });
    let app = open_app(settings, Mode::Cli)?;
    let tokens = app.tokens();
    let result = if force { tokens.refresh_now(&connection).await } else { tokens.access_token(&connection).await };
    match result {
        Ok(token) => {
            let now = chrono::Utc::now();
            let report = serde_json::json!({
                "connection": token.connection,
                "refreshed": token.source == truecontext_bridge::tokens::TokenSource::TokenEndpoint,
                "source": token.source,
                "expires_at": token.expires_at,
                "expires_in_seconds": (token.expires_at - now).num_seconds().max(0),
                "refresh_at": token.refresh_at,
                "expires_in_assumed": token.expires_in_assumed,
                "scopes": token.scopes,
            });
            say!("{}", serde_json::to_string_pretty(&report)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let message = telemetry::redact(&e.to_string()).into_owned();
            let report =
                serde_json::json!({ "connection": connection, "error": { "class": e.class(), "message": message } });
            say!("{}", serde_json::to_string_pretty(&report)?)?;
            esay!("error: {}: {message}", e.class())?;
            Ok(ExitCode::from(token_exit_code(e.class())))
        }
    }
}

async fn sync_once(raw: &RawSettings, once: bool, connection: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    if !once {
        bail!("`tcbridge sync` needs --once: the scheduled sync runs inside `tcbridge serve`");
    }
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings.clone(), Mode::Cli)?;
    let connections = match connection {
        Some(id) => {
            truecontext_bridge::connections::validate_id(&id).map_err(|e| anyhow::anyhow!("--connection: {e}"))?;
            vec![id]
        }
        None => truecontext_bridge::connections::known_ids(&app.stores, &settings).await?,
    };
    if connections.is_empty() {
        bail!(
            "no connection to sync: connect one (tcbridge consent-url), or set TRUECONTEXT_AUTH=basic with an API key"
        );
    }
    let mut exit = ExitCode::SUCCESS;
    for connection in connections {
        let bar = progress_bar(&connection, json);
        let show = |summary: &SyncSummary| {
            if let Some(bar) = &bar {
                bar.set_message(format!(
                    "{} page(s) listed, {} landed, {} unchanged",
                    summary.pages, summary.documents_landed, summary.documents_unchanged
                ));
                bar.tick();
            }
        };
        let deadline = truecontext_bridge::handlers::run_deadline(&app);
        let mut outcome = truecontext_bridge::handlers::pull(&app, &connection, Some(&show), deadline).await;
        if matches!(outcome, Ok(RunOutcome::Busy)) {
            // A run killed outright leaves its lease until it lapses: wait that out (showing the
            // wait) rather than say "running elsewhere" when nothing runs. A live run renews its
            // lease, and then it is running elsewhere indeed.
            let told = std::sync::atomic::AtomicBool::new(false);
            let waiting = |left: std::time::Duration| match &bar {
                Some(bar) => {
                    bar.set_message(format!("waiting {} s for the lease a stopped run left to lapse", left.as_secs()))
                }
                None if !told.swap(true, std::sync::atomic::Ordering::Relaxed) => {
                    let _ = esay!(
                        "the sync of {connection} holds a lease; waiting up to {} s to see whether its run is alive",
                        left.as_secs()
                    );
                }
                None => {}
            };
            let wait = truecontext_bridge::sync::wait_out_lease(&app.stores, &connection, &waiting).await;
            if wait.context("the sync could not read the store")? == truecontext_bridge::sync::LeaseWait::Free {
                outcome = truecontext_bridge::handlers::pull(&app, &connection, Some(&show), deadline).await;
            }
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let summary = match outcome.context("the sync could not read or write the store")? {
            RunOutcome::Ran(summary) => summary,
            RunOutcome::Busy => {
                esay!(
                    "error: the sync of {connection} is running elsewhere (its lease is held and renewed); try again later"
                )?;
                exit = ExitCode::from(SYNC_EXIT_BUSY);
                continue;
            }
        };
        if json {
            say!("{}", serde_json::to_string(&summary)?)?;
        } else {
            say!("{}", summary_line(&summary))?;
        }
        if let Some(reason) = &summary.stopped_reason {
            esay!("error: the sync of {} stopped: {}", summary.connection, telemetry::redact(reason))?;
            exit = ExitCode::from(sync_exit_code(summary.stopped_class.as_deref()));
        }
    }
    Ok(exit)
}

/// `sync --once` exit codes (README): 0 completed, 3 a budget or TrueContext's call count is
/// spent, 4 credentials refused or no token, 5 a transient failure or the run's time limit (run
/// again later), 6 another run holds the lease, 1 anything else (configuration, a malformed or
/// refused request).
const SYNC_EXIT_BUSY: u8 = 6;

fn sync_exit_code(class: Option<&str>) -> u8 {
    match class {
        Some("budget" | "call_count_expended") => 3,
        Some("auth" | "token") => 4,
        Some("transient" | "store" | "landing" | "unstable" | "deadline") => 5,
        _ => 1,
    }
}

fn summary_line(summary: &SyncSummary) -> String {
    format!(
        "{}: {} window(s), {} page(s), {} landed, {} unchanged, {} gone, {}{}{} API call(s), {} left today, cursor {}{}",
        summary.connection,
        summary.windows,
        summary.pages,
        summary.documents_landed,
        summary.documents_unchanged,
        summary.documents_gone,
        match summary.documents_quarantined {
            0 => String::new(),
            kept => format!("{kept} quarantined (tcbridge quarantine list), "),
        },
        match summary.records_refused {
            0 => String::new(),
            refused => format!("{refused} refused (not a TrueContext identifier), "),
        },
        summary.api_calls,
        summary.budget_left,
        summary.cursor.map_or_else(|| "none".to_owned(), |c| c.to_rfc3339()),
        match summary.stopped_reason.as_deref() {
            Some(reason) => format!("; stopped before it was current: {reason}"),
            None => "; current".to_owned(),
        },
    )
}

/// A spinner with the running totals, on a terminal only (never under --json or in a pipe).
fn progress_bar(connection: &str, json: bool) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_prefix(connection.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(bar)
}

async fn submissions(raw: &RawSettings, command: SubmissionsCommand) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings, Mode::Cli)?;
    let app_ref = &app;
    let connections = |only: Option<String>| async move {
        match only {
            Some(id) => {
                truecontext_bridge::connections::validate_id(&id).map_err(|e| anyhow::anyhow!("--connection: {e}"))?;
                Ok(vec![id])
            }
            None => data_connections(app_ref).await,
        }
    };
    match command {
        SubmissionsCommand::List { connection, json } => {
            let mut stdout = std::io::stdout().lock();
            for connection in connections(connection).await.context("cannot list the connections")? {
                let listed =
                    landing::list(&app.stores, &connection).await.context("cannot read the submissions index")?;
                for item in listed {
                    if json {
                        writeln!(stdout, "{}", serde_json::to_string(&item)?)?;
                    } else {
                        let row = &item.row;
                        writeln!(
                            stdout,
                            "{}  {}  {}  v{}  {}  {}",
                            item.connection,
                            item.id,
                            row.reference_number.as_deref().unwrap_or("-"),
                            row.version,
                            row.state.as_deref().unwrap_or("-"),
                            row.form_name.as_deref().or(row.form_id.as_deref()).unwrap_or("-"),
                        )?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SubmissionsCommand::Show { id, connection, raw } => {
            let searched = connections(connection).await.context("cannot list the connections")?;
            let Some(found) =
                landing::find(&app.stores, &searched, &id).await.context("cannot read the submissions index")?
            else {
                bail!("no landed submission {id:?} (looked in: {})", searched.join(", "));
            };
            let path = if raw { &found.row.raw_path } else { &found.row.record_path };
            let container = &app.settings.landing.container;
            let blob = app.stores.blobs.get(container, path).await.context("cannot read the submission's blob")?;
            let blob = blob.with_context(|| format!("{path} is named by the index but missing from {container}"))?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&blob.content)?;
            if !raw {
                writeln!(stdout)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connection(raw: &RawSettings, command: ConnectionCommand) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use truecontext_bridge::connections;
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings, Mode::Cli)?;
    let tokens = app.tokens();
    let mut stdout = std::io::stdout().lock();
    match command {
        ConnectionCommand::List { json } => {
            let listed = connections::list(&app.stores).await.context("cannot read the connections")?;
            for c in &listed {
                if json {
                    let line = serde_json::json!({
                        "id": c.id, "state": c.state, "reason": c.reason, "account": c.display_account(),
                        "account_key": c.account,
                        "tenant": c.tenant, "provider": c.provider, "scopes": c.scopes,
                        "consented_at": c.consented_at, "last_refresh_success": c.last_refresh_success,
                        "last_refresh_failure": c.last_refresh_failure, "consecutive_failures": c.consecutive_failures,
                    });
                    writeln!(stdout, "{line}")?;
                } else {
                    let state = serde_json::to_value(c.state)?;
                    let refreshed = c.last_refresh_success.map_or("never".to_owned(), |t| t.to_rfc3339());
                    writeln!(
                        stdout,
                        "{}  {}  {} ({})  tenant {}  refreshed {refreshed}  {}",
                        c.id,
                        state.as_str().unwrap_or_default(),
                        c.display_account(),
                        c.account,
                        c.tenant.as_deref().unwrap_or("-"),
                        c.reason.as_deref().unwrap_or(""),
                    )?;
                }
            }
            if !json && listed.is_empty() {
                writeln!(stdout, "no consented connection yet (tcbridge consent-url prints the link)")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ConnectionCommand::Disable { id } => switch_connection(&tokens, &id, false).await,
        ConnectionCommand::Enable { id } => switch_connection(&tokens, &id, true).await,
        ConnectionCommand::Delete { id } => match tokens.delete(&id).await {
            Ok(deleted) => {
                let secret = if deleted.secret_existed { "deleted" } else { "was already gone" };
                writeln!(
                    stdout,
                    "connection {id} ({}) deleted; its token set {} {secret}. Landed submissions and the sync cursor \
                     stay; consent again (tcbridge consent-url --connection {id}) to reconnect.",
                    deleted.account, deleted.secret
                )?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(token_failure(&e)),
        },
    }
}

/// `connection disable` / `enable`: says what changed (or that nothing had to).
async fn switch_connection(
    tokens: &truecontext_bridge::tokens::Tokens<'_>,
    id: &str,
    enable: bool,
) -> anyhow::Result<ExitCode> {
    use truecontext_bridge::connections::ConnectionState;
    match tokens.set_enabled(id, enable).await {
        Ok(before) => {
            let said = match (enable, before == ConnectionState::Disabled) {
                (false, true) => "was already disabled",
                (false, false) => "disabled: no sync, no token refresh, no pushes accepted for it",
                (true, true) => "enabled: the next sync run includes it",
                (true, false) => "was not disabled",
            };
            say!("connection {id} {said}")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(token_failure(&e)),
    }
}

/// Prints a token-lifecycle error as the CLI does everywhere, and its exit code.
fn token_failure(e: &truecontext_bridge::tokens::TokenError) -> ExitCode {
    let message = telemetry::redact(&e.to_string()).into_owned();
    let _ = esay!("error: {}: {message}", e.class());
    ExitCode::from(token_exit_code(e.class()))
}

async fn poison(raw: &RawSettings, command: PoisonCommand) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use truecontext_bridge::handlers::poison;
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings, Mode::Cli)?;
    let line = |p: &poison::Poisoned| {
        format!(
            "{}  {}  {}  {}  attempts {}  {}",
            p.id,
            p.kind,
            p.connection.as_deref().unwrap_or("-"),
            p.submission.as_deref().unwrap_or("-"),
            p.attempts.map_or("-".to_owned(), |a| a.to_string()),
            p.last_error.as_deref().unwrap_or("-"),
        )
    };
    let mut stdout = std::io::stdout().lock();
    match command {
        PoisonCommand::List { json } => {
            let listed = poison::list(&app).await.context("cannot read the poison queue")?;
            for item in &listed {
                if json {
                    writeln!(stdout, "{}", serde_json::to_string(item)?)?;
                } else {
                    writeln!(stdout, "{}", line(item))?;
                }
            }
            if !json && listed.is_empty() {
                writeln!(stdout, "the poison queue {} is empty", poison::poison_queue(&app))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PoisonCommand::Replay { id, all: _ } => {
            let replayed = poison::replay(&app, id.as_deref()).await.context("cannot replay the poison queue")?;
            for item in &replayed {
                writeln!(stdout, "replayed {}", line(item))?;
            }
            if replayed.is_empty() {
                match id {
                    Some(id) => bail!("no poisoned message has the id or submission {id:?}"),
                    None => writeln!(stdout, "the poison queue {} is empty", poison::poison_queue(&app))?,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn quarantine(raw: &RawSettings, command: QuarantineCommand) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use truecontext_bridge::landing::quarantine::{self, Retried};
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings.clone(), Mode::Cli)?;
    let connections = data_connections(&app).await.context("cannot list the connections")?;
    let entries = quarantine::list(&app.stores, &connections).await.context("cannot read the quarantine")?;
    let line = |e: &quarantine::Entry| {
        format!(
            "{}  {}  {}  {}  retries {}  {}",
            e.connection,
            e.row.identifier,
            e.row.source.name(),
            e.row.quarantined_at.format("%Y-%m-%d %H:%M:%S UTC"),
            e.row.retries,
            e.row.reason
        )
    };
    let mut stdout = std::io::stdout().lock();
    match command {
        QuarantineCommand::List { json } => {
            for entry in &entries {
                if json {
                    writeln!(stdout, "{}", serde_json::to_string(entry)?)?;
                } else {
                    writeln!(stdout, "{}", line(entry))?;
                }
            }
            if !json && entries.is_empty() {
                writeln!(stdout, "nothing is quarantined")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineCommand::Retry { id, all: _ } => {
            let chosen: Vec<quarantine::Entry> = match &id {
                Some(id) => entries.into_iter().filter(|e| &e.key == id || &e.row.identifier == id).collect(),
                None => entries,
            };
            if chosen.is_empty() {
                match id {
                    Some(id) => bail!("no quarantined submission has the id or key {id:?}"),
                    None => writeln!(stdout, "nothing is quarantined")?,
                }
                return Ok(ExitCode::SUCCESS);
            }
            let settings = &app.settings;
            let landing =
                landing::Landing::new(&app.stores, &settings.landing.container, &settings.landing.landed_queue);
            let retried = quarantine::retry(&landing, &chosen).await.context("the retry stopped on a store error")?;
            let mut refused = 0;
            for (entry, result) in &retried {
                match result {
                    Retried::Landed { landed } => writeln!(
                        stdout,
                        "landed {} {} (v{}, {:?})",
                        entry.connection, entry.row.identifier, landed.version, landed.outcome
                    )?,
                    Retried::Refused { reason } => {
                        refused += 1;
                        writeln!(stdout, "still refused {} {}: {reason}", entry.connection, entry.row.identifier)?
                    }
                }
            }
            Ok(if refused == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// Every connection that may have data: the known ones, and any that synced under another
/// configuration (the demo's, say).
async fn data_connections(app: &App) -> anyhow::Result<Vec<String>> {
    let mut ids = truecontext_bridge::connections::known_ids(&app.stores, &app.settings).await?;
    ids.extend(truecontext_bridge::sync::last_syncs(&app.stores).await?.into_iter().map(|l| l.connection));
    ids.sort();
    ids.dedup();
    Ok(ids)
}

async fn serve_host(raw: &RawSettings) -> anyhow::Result<ExitCode> {
    let port = raw
        .get("FUNCTIONS_CUSTOMHANDLER_PORT")
        .or_else(|| raw.get("FUNCTIONS_HTTPWORKER_PORT"))
        .context("FUNCTIONS_CUSTOMHANDLER_PORT is not set: `tcbridge serve` runs under the Functions host; use `tcbridge serve --standalone` to run on its own")?;
    let port: u16 =
        port.parse().with_context(|| format!("FUNCTIONS_CUSTOMHANDLER_PORT {port:?} is not a port number"))?;
    // Bind before anything else: the host's readiness probe starts at once.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stdout);
    let app = open_app(settings, Mode::Functions)?;
    tracing::info!(port, store = app.stores.kind.name(), "custom handler listening on 127.0.0.1:{port}");
    let stop = CancellationToken::new();
    let workers = [
        supervised(&app, "housekeeping", &stop, |app, stop| {
            standalone::run_housekeeping(app, HOUSEKEEPING_EVERY, stop)
        }),
        supervised(&app, "counters", &stop, standalone::run_counters),
    ];
    let served = axum::serve(listener, host::router(app)).with_graceful_shutdown(shutdown_signal()).await;
    stop.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// `first_sync`: a connection synced at once on start (the demo's), not at the first tick.
async fn serve_standalone(
    raw: &RawSettings,
    port: Option<u16>,
    address: Option<IpAddr>,
    first_sync: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stdout);
    let app = open_app(settings.clone(), Mode::Standalone)?;
    let addr = SocketAddr::new(address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), port.unwrap_or(7071));
    // The key is settled (and a generated one printed) before the port opens, so whoever sees
    // the port open can already read the key.
    let (key, generated) = standalone::function_key(settings.function_key.as_ref(), &app.stores)
        .await
        .context("cannot read or create the standalone function key")?;
    if generated {
        // Shown once, on the terminal only; later starts reuse the stored key.
        say!("A function key was generated for this standalone server and kept in the store.")?;
        say!("Pass it as the x-functions-key header or ?code= on /api/authorize and /api/status:")?;
        say!("    {}", key.expose())?;
    } else if settings.function_key.is_none() {
        say!(
            "Using the function key generated on an earlier start. It is not shown again: if it is lost, \
             set FUNCTION_KEY to a key of your choice (at least 16 characters); while it is set, only it is accepted."
        )?;
    }
    telemetry::register_secret(&key);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let local_addr = listener.local_addr()?;
    say!("truecontext-bridge listening on http://{local_addr}/api/ (standalone, store: {})", app.stores.kind.name())?;
    tracing::info!(%local_addr, "standalone server started");

    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for function in functions::FUNCTIONS {
        match function.trigger {
            Trigger::Timer => {
                let schedule = settings.sync_schedule.clone();
                workers.push(supervised(&app, "timer", &stop, move |app, stop| {
                    standalone::run_timer(app, function, schedule.clone(), stop)
                }));
            }
            Trigger::Queue => workers.push(supervised(&app, "queue worker", &stop, move |app, stop| {
                let worker = standalone::QueueWorker::for_function(app.clone(), function);
                worker.run(app.stores.queues.clone(), stop)
            })),
            Trigger::Http { .. } => {}
        }
    }
    workers.push(supervised(&app, "housekeeping", &stop, |app, stop| {
        standalone::run_housekeeping(app, HOUSEKEEPING_EVERY, stop)
    }));
    workers.push(supervised(&app, "counters", &stop, standalone::run_counters));
    if let Some(connection) = first_sync {
        app.sync_soon(connection).await;
    }
    let limits = standalone::ServerLimits {
        max_connections: settings.max_connections,
        max_connections_per_address: settings.max_connections_per_address,
        header_timeout: settings.header_timeout,
        body_timeout: settings.body_timeout,
        ..Default::default()
    };
    let router = standalone::router(app.clone(), key, limits);
    let served = standalone::serve(&app, listener, router, limits, shutdown_signal()).await;
    stop.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// `serve --standalone --demo`: the simulator in-process, the settings pointed at it.
#[cfg(feature = "demo")]
async fn serve_demo(mut raw: RawSettings, port: Option<u16>, address: Option<IpAddr>) -> anyhow::Result<ExitCode> {
    use truecontext_bridge::simulator::{TrueContextSim, KEY_ID, KEY_SECRET};
    // Started off the runtime: the simulator runs its own, on a thread of its own.
    let sim = tokio::task::spawn_blocking(|| TrueContextSim::start_demo(300, std::time::Duration::from_secs(4)))
        .await
        .context("cannot start the TrueContext simulator")?;
    let base_url = sim.base_url();
    for (name, value) in [
        ("TRUECONTEXT_BASE_URL", base_url.as_str()),
        ("TRUECONTEXT_AUTH", "basic"),
        ("TRUECONTEXT_API_KEY_ID", KEY_ID),
        ("TRUECONTEXT_API_KEY_SECRET", KEY_SECRET),
        ("TRUECONTEXT_CONNECTION", "demo"),
        ("STORE", "local"),
        ("SYNC_BACKFILL_DAYS", "7"),
        ("SYNC_SETTLE_SECONDS", "2"),
        ("SYNC_OVERLAP_SECONDS", "30"),
    ] {
        raw.set(name, value);
    }
    // The committed local.settings.json's schedule (every 30 minutes, for the Functions tools)
    // once made a fresh clone's demo show nothing for half an hour: only the environment may
    // slow the demo down.
    raw.set_unless_environment("SYNC_SCHEDULE", "*/10 * * * * *");
    say!("demo: a TrueContext simulator at {base_url} with 300 submissions and a new one every few seconds;")?;
    say!("demo: synced as connection \"demo\" every 10 s. Try `tcbridge submissions list` and /api/status.")?;
    let served = serve_standalone(&raw, port, address, Some("demo")).await;
    tokio::task::spawn_blocking(move || drop(sim)).await.ok();
    served
}

#[cfg(not(feature = "demo"))]
async fn serve_demo(_: RawSettings, _: Option<u16>, _: Option<IpAddr>) -> anyhow::Result<ExitCode> {
    bail!("this build has no demo: it was built without the `demo` feature (the deploy package leaves it out)")
}

/// How often a running server of either mode runs its housekeeping.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Spawns one of a server's long-lived tasks under [`standalone::supervise`].
fn supervised<Fut>(
    app: &App,
    task: &'static str,
    stop: &CancellationToken,
    start: impl Fn(App, CancellationToken) -> Fut + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (app, stop) = (app.clone(), stop.clone());
    let starter = (app.clone(), stop.clone());
    tokio::spawn(standalone::supervise(app, task, stop, move || start(starter.0.clone(), starter.1.clone())))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
