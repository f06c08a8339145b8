//! Who signed in: the id_token validated against the flow (issuer, audience, nonce, keys), the
//! account identified the way each server defines it — (`tid`, `oid`) on Entra, (`iss`, `sub`)
//! elsewhere — and `ALLOWED_TENANTS` / `ALLOWED_USERS` applied before anything is stored.

use super::flow::PendingFlow;
use super::id_token::{Expectations, IdTokenClaims, IdTokenValidator};
use super::provider::{ExpectedIssuer, Provider};
use super::token::TokenResponse;
use super::OAuthRuntime;
use crate::config::{OAuthProvider, OAuthSettings};

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The stable account key stored with the connection.
    pub account: String,
    pub name: Option<String>,
    pub tenant: Option<String>,
    pub issuer: Option<String>,
    /// Lower-cased names the account is known by, for `ALLOWED_USERS`.
    pub aliases: Vec<String>,
}

/// Validates the id_token of a code redemption and says who signed in. Servers without OpenID
/// Connect (plain OAuth 2.0) have no id_token; their connections are identified by the server.
pub async fn identify(
    oauth: &OAuthRuntime,
    provider: &Provider,
    flow: &PendingFlow,
    tokens: &TokenResponse,
) -> Result<Identity, String> {
    if !provider.is_openid() {
        let server = provider.token_endpoint.origin().ascii_serialization();
        return Ok(Identity {
            account: format!("{server}|{}", flow.connection_id),
            name: None,
            tenant: None,
            issuer: None,
            aliases: Vec::new(),
        });
    }
    let Some(id_token) = &tokens.id_token else {
        return Err("the authorization server returned no id_token although openid was requested".into());
    };
    let jwks_uri = provider.jwks_uri.as_ref().ok_or("the authorization server publishes no keys (jwks_uri)")?;
    let validator = IdTokenValidator::new(oauth.jwks.get(jwks_uri, &oauth.http));
    let client_id = oauth.client_id.clone();
    let expectations = match flow.expected_issuer() {
        ExpectedIssuer::Exact(issuer) => Expectations::exact(issuer, client_id, flow.nonce.clone()),
        ExpectedIssuer::TenantTemplate(template) => {
            Expectations::tenant_template(template, client_id, flow.nonce.clone())
        }
        ExpectedIssuer::None => return Err("no issuer is known for this sign-in".into()),
    };
    let claims = validator.validate(id_token, &expectations).await.map_err(|e| e.to_string())?;
    Ok(identity_from_claims(provider.kind, &claims))
}

fn identity_from_claims(kind: OAuthProvider, claims: &IdTokenClaims) -> Identity {
    let name = claims.preferred_username.clone().or_else(|| claims.email.clone()).or_else(|| claims.name.clone());
    let account = match (kind, &claims.tid, &claims.oid) {
        (OAuthProvider::Entra, Some(tid), Some(oid)) => format!("{tid}/{oid}"),
        _ => format!("{}|{}", claims.iss, claims.sub),
    };
    let aliases = [&claims.preferred_username, &claims.email, &claims.upn, &claims.oid]
        .into_iter()
        .flatten()
        .map(|s| s.to_ascii_lowercase())
        .chain(std::iter::once(claims.sub.to_ascii_lowercase()))
        .collect();
    Identity { account, name, tenant: claims.tid.clone(), issuer: Some(claims.iss.clone()), aliases }
}

/// `ALLOWED_TENANTS` and `ALLOWED_USERS`, from the validated identity. Empty lists allow all.
pub fn allowed(settings: &OAuthSettings, identity: &Identity) -> Result<(), String> {
    if !settings.allowed_tenants.is_empty() {
        let tenant = identity.tenant.as_deref().unwrap_or("");
        if !settings.allowed_tenants.iter().any(|t| t.eq_ignore_ascii_case(tenant)) {
            return Err(format!(
                "Accounts from tenant {} may not connect this bridge (ALLOWED_TENANTS).",
                if tenant.is_empty() { "(none)" } else { tenant }
            ));
        }
    }
    if !settings.allowed_users.is_empty()
        && !settings.allowed_users.iter().any(|u| identity.aliases.contains(&u.to_ascii_lowercase()))
    {
        return Err(format!(
            "The account {} may not connect this bridge (ALLOWED_USERS).",
            identity.name.as_deref().unwrap_or(&identity.account)
        ));
    }
    Ok(())
}
