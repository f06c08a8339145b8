//! `tcbridge check [--online]`: what is wrong or missing in the configuration, and each
//! dependency with its endpoint and credential (reached once with `--online`).

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{RawSettings, Settings};
use crate::handlers::Mode;
use crate::store;
use crate::telemetry::{self, Output};

use super::open_app;

pub(super) async fn check(raw: &RawSettings, online: bool) -> anyhow::Result<ExitCode> {
    telemetry::init(crate::config::LogFormat::Text, Output::Stderr);
    // Wrong values stop the server from starting; missing ones only keep a feature from working.
    // Both are reported, always: the missing ones are judged with defaults for the wrong ones.
    let (settings, wrong) = Settings::parse(raw);
    let mut missing = settings.missing();
    if wrong.is_empty() {
        if let Err(e) = store::open(&settings.store) {
            missing.push(crate::config::Problem {
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
    for d in crate::ops::check::describe(settings) {
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
    for (d, verdict) in crate::ops::check::probe(&app).await {
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
