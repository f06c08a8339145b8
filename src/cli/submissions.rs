//! `tcbridge submissions list | show`: the landed submissions, from the index and the blobs.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::RawSettings;
use crate::handlers::Mode;
use crate::ops::submissions;
use crate::telemetry::{self, Output};

use super::{load_settings, open_app, SubmissionsCommand};

pub(super) async fn submissions(raw: &RawSettings, command: SubmissionsCommand) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings, Mode::Cli)?;
    match command {
        SubmissionsCommand::List { connection, json } => {
            let mut stdout = std::io::stdout().lock();
            let chosen = submissions::chosen(&app, connection).await.context("cannot list the connections")?;
            for connection in chosen {
                let listed = submissions::list(&app, &connection).await.context("cannot read the submissions index")?;
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
            let searched = submissions::chosen(&app, connection).await.context("cannot list the connections")?;
            let content = submissions::content(&app, &searched, &id, raw).await?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&content)?;
            if !raw {
                writeln!(stdout)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
