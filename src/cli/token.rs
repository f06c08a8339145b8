//! `tcbridge token`: a fresh access token through the sync's own path, shown by its expiry
//! and scopes, never itself; exit codes by failure class.

use std::process::ExitCode;

use crate::config::RawSettings;
use crate::handlers::Mode;
use crate::telemetry::{self, Output};
use crate::tokens::ErrorClass;

use super::{load_settings, open_app};

/// Exit codes of `tcbridge token` by failure class, so scripts can tell them apart.
fn token_exit_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::NeedsReauth | ErrorClass::Disabled => 3,
        ErrorClass::AppCredentials => 4,
        ErrorClass::Transient | ErrorClass::Busy => 5,
        ErrorClass::Rejected => 6,
        ErrorClass::NotConnected | ErrorClass::InvalidConnection => 7,
        ErrorClass::Configuration | ErrorClass::Store => 1,
    }
}

pub(super) async fn token(raw: &RawSettings, connection: Option<String>, force: bool) -> anyhow::Result<ExitCode> {
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stderr);
    let connection = connection.unwrap_or_else(|| match settings.oauth.grant {
        crate::config::OAuthGrant::ClientCredentials => crate::connections::APP_ONLY_CONNECTION.to_owned(),
        crate::config::OAuthGrant::AuthorizationCode => "default".to_owned(),
    });
    let app = open_app(settings, Mode::Cli)?;
    let tokens = app.tokens();
    let result = if force { tokens.refresh_now(&connection).await } else { tokens.access_token(&connection).await };
    match result {
        Ok(token) => {
            let now = chrono::Utc::now();
            let report = serde_json::json!({
                "connection": token.connection,
                "refreshed": token.source == crate::tokens::TokenSource::TokenEndpoint,
                "source": token.source,
                "expires_at": token.expires_at,
                "expires_in_seconds": (token.expires_at - now).num_seconds().max(0),
                "refresh_at": token.refresh_at,
                "expires_in_assumed": token.expires_in_assumed,
                "scopes": token.scopes,
            });
            say!("{}", serde_json::to_string_pretty(&report)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let message = telemetry::redact(&e.to_string()).into_owned();
            let report =
                serde_json::json!({ "connection": connection, "error": { "class": e.class(), "message": message } });
            say!("{}", serde_json::to_string_pretty(&report)?)?;
            esay!("error: {}: {message}", e.class())?;
            Ok(ExitCode::from(token_exit_code(e.class())))
        }
    }
}

/// Prints a token-lifecycle error as the CLI does everywhere, and its exit code.
pub(super) fn token_failure(e: &crate::tokens::TokenError) -> ExitCode {
    let message = telemetry::redact(&e.to_string()).into_owned();
    let _ = esay!("error: {}: {message}", e.class());
    ExitCode::from(token_exit_code(e.class()))
}
