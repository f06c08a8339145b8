//! The command line: `tcbridge` parses into [`Cli`] (`args.rs`), and [`run`] hands each verb to
//! its file here. The commands are thin: they load the settings, open the app, call the layers
//! below, and print. Errors are `anyhow` with plain-words context; exit codes are per verb
//! (README).

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

mod args;
mod check;
mod connection;
mod poison;
mod quarantine;
mod resync;
mod serve;
mod status;
mod submissions;
mod sync;
mod token;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};

pub use args::{Cli, Command, ConnectionCommand, PoisonCommand, QuarantineCommand, SubmissionsCommand};

use crate::config::{RawSettings, Settings};
use crate::handlers::{App, Mode};
use crate::{store, telemetry};

/// Runs one verb to its exit code.
pub async fn run(command: Command, raw: RawSettings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { online } => check::check(&raw, online).await,
        Command::Status => status::status(&raw).await,
        Command::ConsentUrl { connection } => connection::consent_url(&raw, &connection),
        Command::Submissions { command } => submissions::submissions(&raw, command).await,
        Command::Poison { command } => poison::poison(&raw, command).await,
        Command::Quarantine { command } => quarantine::quarantine(&raw, command).await,
        Command::Connection { command } => connection::connection(&raw, command).await,
        Command::Sync { once, connection, json } => sync::sync_once(&raw, once, connection, json).await,
        Command::Resync { connection, from, to, form, json } => {
            resync::resync(&raw, &connection, resync::Request { from, to, form }, json).await
        }
        Command::Refetch { id, connection } => resync::refetch(&raw, &id, connection).await,
        Command::Token { connection, force } => token::token(&raw, connection, force).await,
        Command::Serve { standalone: false, .. } => serve::serve_host(&raw).await,
        Command::Serve { standalone: true, port, address, demo: false } => {
            serve::serve_standalone(&raw, port, address, None).await
        }
        Command::Serve { standalone: true, port, address, demo: true } => serve::serve_demo(raw, port, address).await,
    }
}

/// What a verb's result means for the process: its exit code, or the error said on stderr.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
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
pub fn quiet_on_closed_output() {
    #[cfg(unix)]
    // SAFETY: called once at start, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Settings or a readable list of what is wrong with them.
pub(super) fn load_settings(raw: &RawSettings) -> anyhow::Result<Arc<Settings>> {
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

pub(super) fn open_app(settings: Arc<Settings>, mode: Mode) -> anyhow::Result<App> {
    let stores = store::open(&settings.store).context("cannot open the store")?;
    Ok(App::new(settings, stores, mode))
}
