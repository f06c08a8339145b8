//! `tcbridge resync` (a past range walked again, resumable, within its budget share) and
//! `tcbridge refetch` (one submission fetched again, one call).

use std::process::ExitCode;

use anyhow::{anyhow, Context};
use chrono::{DateTime, NaiveDate, Utc};

use crate::config::RawSettings;
use crate::handlers::Mode;
use crate::sync::resync::{Range, Resync, ResyncError};
use crate::sync::{Fetched, StopClass};
use crate::telemetry::{self, Output};

use super::{load_settings, open_app};

/// The range as typed.
pub(super) struct Request {
    pub from: String,
    pub to: Option<String>,
    pub form: Option<String>,
}

/// An RFC 3339 instant, or a date: `--from 2026-03-01` is the start of that day (UTC) and
/// `--to 2026-03-31` its end (the next midnight), so a range of dates includes both.
fn instant(text: &str, flag: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        anyhow!("{flag}: {:?} is neither YYYY-MM-DD nor an RFC 3339 time", telemetry::printable(text, 40))
    })?;
    let day = if flag == "--to" { day.succ_opt().unwrap_or(day) } else { day };
    Ok(day.and_time(chrono::NaiveTime::MIN).and_utc())
}

pub(super) async fn resync(
    raw: &RawSettings,
    connection: &str,
    request: Request,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let connection = crate::naming::ConnectionId::parse(connection).map_err(|e| anyhow!("--connection: {e}"))?;
    if let Some(form) = &request.form {
        crate::naming::RecordId::parse(form).map_err(|_| anyhow!("--form: {form:?} is not a form id"))?;
    }
    let range = Range {
        from: instant(&request.from, "--from")?,
        to: request.to.as_deref().map(|t| instant(t, "--to")).transpose()?,
        form: request.form,
    };
    let app = open_app(settings, Mode::Cli)?;
    match crate::handlers::resync(&app, &connection, &range).await {
        Ok(state) => {
            if json {
                say!("{}", serde_json::to_string(&state)?)?;
            } else {
                say!("{}", describe(&state))?;
            }
            Ok(match &state.stopped {
                None => ExitCode::SUCCESS,
                Some(_) => {
                    esay!("the re-sync stopped; run the same command again to resume it")?;
                    ExitCode::from(3)
                }
            })
        }
        Err(e @ (ResyncError::BeyondRetention(..) | ResyncError::Empty(..))) => {
            esay!("error: {e}")?;
            Ok(ExitCode::from(2))
        }
        Err(ResyncError::Busy) => {
            esay!("error: a re-sync of {connection} is running elsewhere; try again when it ends")?;
            Ok(ExitCode::from(6))
        }
        Err(ResyncError::Sync(e)) if e.class() == StopClass::Configuration => {
            esay!("error: {e}")?;
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(anyhow::Error::new(e).context("the re-sync could not read or write the store")),
    }
}

fn describe(state: &Resync) -> String {
    let (listed, total) = state.progress();
    let total = total.map_or("?".to_owned(), |t| t.to_string());
    let form = state.form.as_deref().map_or(String::new(), |f| format!(" (form {f})"));
    let mut line = format!(
        "{}: re-sync {} .. {}{form}: {listed} of {total} listed in {} page(s), {} landed, {} unchanged, {} gone",
        state.connection,
        state.from.to_rfc3339(),
        state.to.to_rfc3339(),
        state.pages,
        state.landed,
        state.unchanged,
        state.gone
    );
    if state.quarantined > 0 {
        line.push_str(&format!(", {} quarantined", state.quarantined));
    }
    match (&state.finished_at, &state.stopped) {
        (Some(at), _) => line.push_str(&format!("; done at {}", at.to_rfc3339())),
        (None, Some(why)) => {
            line.push_str(&format!("; stopped: {}", telemetry::redact(why)));
            if let Some(days) = state.days_needed {
                line.push_str(&format!("; about {days} day(s) of its budget share to go"));
            }
        }
        (None, None) => {}
    }
    line
}

pub(super) async fn refetch(raw: &RawSettings, id: &str, connection: Option<String>) -> anyhow::Result<ExitCode> {
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let id = crate::naming::RecordId::parse(id).map_err(|e| anyhow!("{e}"))?;
    let app = open_app(settings, Mode::Cli)?;
    let connection = match connection {
        Some(c) => crate::naming::ConnectionId::parse(&c).map_err(|e| anyhow!("--connection: {e}"))?.to_string(),
        None => {
            let known = crate::ops::submissions::data_connections(&app).await.context("cannot list the connections")?;
            match crate::landing::find(&app.stores, &known, &id).await.context("cannot read the landed submissions")? {
                Some(found) => found.connection,
                None if known.len() == 1 => known.into_iter().next().unwrap_or_default(),
                None => {
                    esay!("error: {id} is not landed under any connection; name one with --connection")?;
                    return Ok(ExitCode::from(2));
                }
            }
        }
    };
    match crate::handlers::refetch(&app, &connection, &id).await {
        Ok(fetched) => {
            let what = match fetched {
                Fetched::Landed(outcome) => format!("landed ({outcome:?})").to_lowercase(),
                Fetched::Gone => "gone: TrueContext no longer serves it (404)".to_owned(),
                Fetched::Quarantined => "quarantined (tcbridge quarantine list says why)".to_owned(),
                Fetched::Skipped => "skipped".to_owned(),
            };
            say!("{connection}/{id}: {what}")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            esay!("error: the refetch of {id} failed: {}", telemetry::redact(&e.to_string()))?;
            Ok(ExitCode::from(if e.class().is_budget() { 3 } else { 1 }))
        }
    }
}
