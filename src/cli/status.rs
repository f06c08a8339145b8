//! `tcbridge status`: the status report as JSON; exit 1 when something needs attention.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::RawSettings;
use crate::handlers::{Mode, StatusReport};
use crate::telemetry::{self, Output};

use super::{load_settings, open_app};

pub(super) async fn status(raw: &RawSettings) -> anyhow::Result<ExitCode> {
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings, Mode::Cli)?;
    let report = StatusReport::gather(&app).await.context("cannot read the status from the store")?;
    say!("{}", serde_json::to_string_pretty(&report)?)?;
    Ok(if report.healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
