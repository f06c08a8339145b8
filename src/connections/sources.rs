//! The one answer to "which connections does the bridge read TrueContext as": each with its
//! team and the way it signs in. The timer fans out one sync per source, status lists them, and
//! the per-team budget is keyed by their team.

use super::keyed::{self, Team};
use super::{Connection, ConnectionState, APP_ONLY_CONNECTION};
use crate::config::{OAuthGrant, Settings, TrueContextAuth};
use crate::naming::ConnectionId;
use crate::store::{StoreError, Stores};

/// How a source signs in to TrueContext.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// Its OAuth access token (a consent, or the app itself under client credentials).
    OAuth,
    /// The API key of `TRUECONTEXT_API_KEY_ID` / `_SECRET` (`TRUECONTEXT_AUTH=basic`).
    ConfiguredKey,
    /// An API key added with `tcbridge connection add`; its secret is in `secret_setting`.
    ApiKey { key_id: String, secret_setting: String },
}

/// One connection the bridge reads TrueContext as.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub id: ConnectionId,
    pub team: Team,
    pub access: Access,
}

impl Source {
    pub fn is_oauth(&self) -> bool {
        self.access == Access::OAuth
    }

    /// Why this source cannot sign in with these settings (its key's secret is not set), if so.
    pub fn missing_secret(&self, tc: &crate::config::TrueContextSettings) -> Option<String> {
        match &self.access {
            Access::OAuth => None,
            Access::ConfiguredKey if tc.api_key_id.is_some() && tc.api_key_secret.is_some() => None,
            Access::ConfiguredKey => {
                Some("TRUECONTEXT_AUTH=basic needs TRUECONTEXT_API_KEY_ID and TRUECONTEXT_API_KEY_SECRET".to_owned())
            }
            Access::ApiKey { secret_setting, .. } if tc.key_secrets.contains_key(secret_setting) => None,
            Access::ApiKey { secret_setting, .. } => Some(format!(
                "its API key's secret setting {secret_setting} is not set; set it (in Azure, as a Key Vault reference)"
            )),
        }
    }
}

/// Every source, and the consented connections left out because they need an administrator.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub active: Vec<Source>,
    /// Consented connections that are not active (re-consent needed, or disabled).
    pub inactive: Vec<Connection>,
    /// Every consented connection as read (active or not), for callers that show them.
    pub consented: Vec<Connection>,
    /// Every API-key connection as read.
    pub added: Vec<super::ApiKeyConnection>,
}

impl Sources {
    /// The source `id`, if the bridge reads TrueContext as it.
    pub fn find(&self, id: &str) -> Option<&Source> {
        self.active.iter().find(|s| s.id.as_str() == id)
    }
}

/// The sources under these settings: with bearer tokens, every active consent (or the app-only
/// connection under client credentials); with `TRUECONTEXT_AUTH=basic`, the configured key's
/// connection; and, whatever the mode, every API-key connection added.
pub async fn sources(stores: &Stores, settings: &Settings) -> Result<Sources, StoreError> {
    let consented = super::list(stores).await?;
    let added = keyed::list(stores).await?;
    let mut out = Sources { consented: consented.clone(), added: added.clone(), ..Sources::default() };
    match settings.truecontext.auth {
        TrueContextAuth::Bearer if settings.oauth.grant == OAuthGrant::ClientCredentials => {
            out.active.push(own(APP_ONLY_CONNECTION, Access::OAuth));
        }
        TrueContextAuth::Bearer => {
            for connection in consented {
                if connection.state != ConnectionState::Active {
                    out.inactive.push(connection);
                    continue;
                }
                let Ok(id) = ConnectionId::parse(&connection.id) else { continue };
                let team = connection.team.clone().unwrap_or_else(|| Team::of_own(&id));
                out.active.push(Source { id, team, access: Access::OAuth });
            }
        }
        TrueContextAuth::Basic => out.active.push(own(&settings.truecontext.connection, Access::ConfiguredKey)),
    }
    for added in out.added.clone() {
        if out.find(&added.id).is_some() {
            continue;
        }
        let access = Access::ApiKey { key_id: added.key_id, secret_setting: added.secret_setting };
        out.active.push(Source { id: added.id, team: added.team, access });
    }
    out.active.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// A source from configuration, a team of its own. Its id was checked when the settings were.
fn own(id: &str, access: Access) -> Source {
    let id = ConnectionId::parse(id).unwrap_or_else(|_| ConnectionId::parse("default").expect("a valid id"));
    Source { team: Team::of_own(&id), id, access }
}
