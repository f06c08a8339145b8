//! `tcbridge quarantine list | retry`: submissions that could not be landed, kept as received.

use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config::RawSettings;
use crate::handlers::Mode;
use crate::telemetry::{self, Output};

use super::{load_settings, open_app, QuarantineCommand};
use crate::ops::submissions::data_connections;

pub(super) async fn quarantine(raw: &RawSettings, command: QuarantineCommand) -> anyhow::Result<ExitCode> {
    use crate::landing::quarantine::{self, Retried};
    use std::io::Write;
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
            let landing = app.landing();
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
