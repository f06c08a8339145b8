//! `tcbridge poison list | replay`: messages that failed every delivery.

use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config::RawSettings;
use crate::handlers::Mode;
use crate::telemetry::{self, Output};

use super::{load_settings, open_app, PoisonCommand};

pub(super) async fn poison(raw: &RawSettings, command: PoisonCommand) -> anyhow::Result<ExitCode> {
    use crate::ops::poison;
    use std::io::Write;
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
