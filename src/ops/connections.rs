//! The consented connections: turn one off or on (saying what changed, or that nothing had to),
//! or delete one with its tokens.

use crate::connections::ConnectionState;
use crate::handlers::App;
use crate::tokens::{Deleted, TokenError};

/// What `switch` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switched {
    Disabled,
    AlreadyDisabled,
    Enabled,
    WasNotDisabled,
}

impl Switched {
    pub fn describe(self) -> &'static str {
        match self {
            Switched::AlreadyDisabled => "was already disabled",
            Switched::Disabled => "disabled: no sync, no token refresh, no pushes accepted for it",
            Switched::Enabled => "enabled: the next sync run includes it",
            Switched::WasNotDisabled => "was not disabled",
        }
    }
}

/// Turns a connection off (no sync, no refresh, no pushes) or back on.
pub async fn switch(app: &App, id: &str, enable: bool) -> Result<Switched, TokenError> {
    let before = app.tokens().set_enabled(id, enable).await?;
    Ok(match (enable, before == ConnectionState::Disabled) {
        (false, true) => Switched::AlreadyDisabled,
        (false, false) => Switched::Disabled,
        (true, true) => Switched::Enabled,
        (true, false) => Switched::WasNotDisabled,
    })
}

/// Deletes a connection: its token set (every version), its record and its alerts. Landed
/// submissions and the sync cursor stay.
pub async fn delete(app: &App, id: &str) -> Result<Deleted, TokenError> {
    app.tokens().delete(id).await
}
