//! `tcbridge connection list | disable | enable | delete` and `tcbridge consent-url`.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::RawSettings;
use crate::handlers::{App, Mode};
use crate::ops;
use crate::telemetry::{self, Output};

use super::token::token_failure;
use super::{load_settings, open_app, ConnectionCommand};

pub(super) fn consent_url(raw: &RawSettings, connection: &str) -> anyhow::Result<ExitCode> {
    let settings = load_settings(raw)?;
    let url = crate::connections::consent_url(&settings, connection).map_err(anyhow::Error::msg)?;
    say!("{url}")?;
    esay!("The link needs the function key: add &code=<key>, or send it as the x-functions-key header.")?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn connection(raw: &RawSettings, command: ConnectionCommand) -> anyhow::Result<ExitCode> {
    use crate::connections;
    use std::io::Write;
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let app = open_app(settings, Mode::Cli)?;
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
        ConnectionCommand::Disable { id } => switch_connection(&app, &id, false).await,
        ConnectionCommand::Enable { id } => switch_connection(&app, &id, true).await,
        ConnectionCommand::Delete { id } => match ops::connections::delete(&app, &id).await {
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
async fn switch_connection(app: &App, id: &str, enable: bool) -> anyhow::Result<ExitCode> {
    match ops::connections::switch(app, id, enable).await {
        Ok(switched) => {
            say!("connection {id} {}", switched.describe())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(token_failure(&e)),
    }
}
