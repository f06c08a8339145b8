//! `tcbridge connection list | add | team | disable | enable | delete` and `tcbridge consent-url`.

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
        ConnectionCommand::List { json } => list(&app, json, &mut stdout).await,
        ConnectionCommand::Add { id, team, key_id, secret_setting } => {
            add(&app, &id, &team, key_id, secret_setting, &mut stdout).await
        }
        ConnectionCommand::Team { id, team, none } => set_team(&app, &id, team, none, &mut stdout).await,
        ConnectionCommand::Disable { id } => switch_connection(&app, &id, false).await,
        ConnectionCommand::Enable { id } => switch_connection(&app, &id, true).await,
        ConnectionCommand::Delete { id } if connections::keyed::remove(&app.stores, &id).await? => {
            writeln!(stdout, "API-key connection {id} deleted. Landed submissions and the sync cursor stay.")?;
            Ok(ExitCode::SUCCESS)
        }
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

/// `connection list`: every consented and API-key connection with its team.
async fn list(app: &App, json: bool, stdout: &mut impl std::io::Write) -> anyhow::Result<ExitCode> {
    use crate::connections;
    let listed = connections::list(&app.stores).await.context("cannot read the connections")?;
    let added = connections::keyed::list(&app.stores).await.context("cannot read the API-key connections")?;
    for c in &listed {
        let team = c.team.as_ref().map_or(c.id.clone(), ToString::to_string);
        if json {
            let line = serde_json::json!({
                "id": c.id, "kind": "oauth", "team": team, "state": c.state, "reason": c.reason,
                "account": c.display_account(), "account_key": c.account,
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
                "{}  team {team}  {}  {} ({})  tenant {}  refreshed {refreshed}  {}",
                c.id,
                state.as_str().unwrap_or_default(),
                c.display_account(),
                c.account,
                c.tenant.as_deref().unwrap_or("-"),
                c.reason.as_deref().unwrap_or(""),
            )?;
        }
    }
    for c in &added {
        let secret_set = app.settings.truecontext.key_secrets.contains_key(&c.secret_setting);
        if json {
            let line = serde_json::json!({
                "id": c.id, "kind": "api_key", "team": c.team, "state": "active", "key_id": c.key_id,
                "secret_setting": c.secret_setting, "secret_set": secret_set, "added_at": c.added_at,
            });
            writeln!(stdout, "{line}")?;
        } else {
            let secret = if secret_set { "set" } else { "NOT SET: the sync of this connection stops until it is" };
            writeln!(
                stdout,
                "{}  team {}  api key {}  secret in {} ({secret})  added {}",
                c.id,
                c.team,
                c.key_id,
                c.secret_setting,
                c.added_at.to_rfc3339()
            )?;
        }
    }
    if !json && listed.is_empty() && added.is_empty() {
        writeln!(
            stdout,
            "no connection yet (tcbridge consent-url prints the link; tcbridge connection add adds an API key)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `connection add`: an API-key connection in a team.
async fn add(
    app: &App,
    id: &str,
    team: &str,
    key_id: String,
    secret_setting: String,
    stdout: &mut impl std::io::Write,
) -> anyhow::Result<ExitCode> {
    use crate::connections::keyed::{self, ApiKeyConnection, Team};
    let record = ApiKeyConnection {
        id: crate::naming::ConnectionId::parse(id).map_err(|e| anyhow::anyhow!("{id:?}: {e}"))?,
        team: Team::parse(team)?,
        key_id,
        secret_setting,
        added_at: chrono::Utc::now(),
    };
    let added = match keyed::add(&app.stores, &app.settings.truecontext, &record).await {
        Ok(added) => added,
        Err(keyed::KeyedError::Store(e)) => return Err(anyhow::Error::new(e).context("cannot record the connection")),
        Err(refused) => {
            esay!("error: {refused}")?;
            return Ok(ExitCode::from(2));
        }
    };
    let what = if added { "added" } else { "was already there, unchanged" };
    writeln!(stdout, "API-key connection {id} {what}: team {team}, key {}.", record.key_id)?;
    if !app.settings.truecontext.key_secrets.contains_key(&record.secret_setting) {
        esay!(
            "warning: {} is not set here; set it (in Azure, as a Key Vault reference) before the next sync",
            record.secret_setting
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `connection team`: a consented connection joins a team (or leaves for one of its own).
async fn set_team(
    app: &App,
    id: &str,
    team: Option<String>,
    none: bool,
    stdout: &mut impl std::io::Write,
) -> anyhow::Result<ExitCode> {
    use crate::connections::keyed::{self, KeyedError, Team};
    let team = match (team, none) {
        (Some(team), false) => Some(Team::parse(&team)?),
        (None, true) => None,
        _ => anyhow::bail!("name the team, or --none for a team of its own"),
    };
    match keyed::set_team(&app.stores, id, team.clone()).await {
        Ok(()) => {
            let team = team.map_or(format!("a team of its own ({id})"), |t| format!("team {t}"));
            writeln!(stdout, "connection {id} now counts its calls against {team}")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(KeyedError::NotFound(_)) => {
            esay!("error: no consented connection {id} (an API-key connection's team is set when it is added)")?;
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}
