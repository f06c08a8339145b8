//! `tcbridge sync --once`: one run per connection now, until current, with a spinner on a
//! terminal and a summary line (or JSON) each; exit codes by why a run stopped.

use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config::RawSettings;
use crate::handlers::{App, Mode};
use crate::sync::{RunOutcome, StopClass, SyncSummary};
use crate::telemetry::{self, Output};

use super::{load_settings, open_app};

pub(super) async fn sync_once(
    raw: &RawSettings,
    once: bool,
    connection: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !once {
        bail!("`tcbridge sync` needs --once: the scheduled sync runs inside `tcbridge serve`");
    }
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings.clone(), Mode::Cli)?;
    let connections = match connection {
        Some(id) => {
            vec![crate::naming::ConnectionId::parse(&id).map_err(|e| anyhow::anyhow!("--connection: {e}"))?.to_string()]
        }
        None => crate::connections::known_ids(&app.stores, &settings).await?,
    };
    if connections.is_empty() {
        bail!(
            "no connection to sync: connect one (tcbridge consent-url), or set TRUECONTEXT_AUTH=basic with an API key"
        );
    }
    let mut exit = ExitCode::SUCCESS;
    for connection in connections {
        let Some(summary) = run_one(&app, &connection, json).await? else {
            esay!(
                "error: the sync of {connection} is running elsewhere (its lease is held and renewed); try again later"
            )?;
            exit = ExitCode::from(SYNC_EXIT_BUSY);
            continue;
        };
        if json {
            say!("{}", serde_json::to_string(&summary)?)?;
        } else {
            say!("{}", summary_line(&summary))?;
        }
        if let Some(reason) = &summary.stopped_reason {
            esay!("error: the sync of {} stopped: {}", summary.connection, telemetry::redact(reason))?;
            exit = ExitCode::from(sync_exit_code(summary.stopped_class));
        }
    }
    Ok(exit)
}

/// One connection's run, with a spinner on a terminal; `None` when it runs elsewhere.
async fn run_one(app: &App, connection: &str, json: bool) -> anyhow::Result<Option<SyncSummary>> {
    let bar = progress_bar(connection, json);
    let show = |summary: &SyncSummary| {
        if let Some(bar) = &bar {
            bar.set_message(format!(
                "{} page(s) listed, {} landed, {} unchanged",
                summary.pages, summary.documents_landed, summary.documents_unchanged
            ));
            bar.tick();
        }
    };
    let deadline = crate::handlers::run_deadline(app);
    let mut outcome = crate::handlers::pull(app, connection, Some(&show), deadline).await;
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
        let wait = crate::sync::wait_out_lease(&app.stores, connection, &waiting).await;
        if wait.context("the sync could not read the store")? == crate::sync::LeaseWait::Free {
            outcome = crate::handlers::pull(app, connection, Some(&show), deadline).await;
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match outcome.context("the sync could not read or write the store")? {
        RunOutcome::Ran(summary) => Ok(Some(summary)),
        RunOutcome::Busy => Ok(None),
    }
}

/// `sync --once` exit codes (README): 0 completed, 3 a budget or TrueContext's call count is
/// spent, 4 credentials refused or no token, 5 a transient failure or the run's time limit (run
/// again later), 6 another run holds the lease, 1 anything else (configuration, a malformed or
/// refused request).
const SYNC_EXIT_BUSY: u8 = 6;

fn sync_exit_code(class: Option<StopClass>) -> u8 {
    match class {
        Some(class) if class.is_budget() => 3,
        Some(StopClass::Auth | StopClass::Token) => 4,
        Some(class) if class.is_retryable() || class == StopClass::Deadline => 5,
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
