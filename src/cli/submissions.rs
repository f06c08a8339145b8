//! `tcbridge submissions list | show`: the landed submissions, from the index and the blobs.

use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config::RawSettings;
use crate::handlers::Mode;
use crate::landing;
use crate::telemetry::{self, Output};

use super::{data_connections, load_settings, open_app, SubmissionsCommand};

pub(super) async fn submissions(raw: &RawSettings, command: SubmissionsCommand) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings, Mode::Cli)?;
    let app_ref = &app;
    let connections = |only: Option<String>| async move {
        match only {
            Some(id) => {
                crate::connections::validate_id(&id).map_err(|e| anyhow::anyhow!("--connection: {e}"))?;
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
