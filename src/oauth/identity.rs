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
    /// The account's e-mail address, lower-cased, only when the server vouches for it
    /// (`email_verified`, or Entra's `xms_edov`), for `ALLOWED_USERS`.
    pub verified_email: Option<String>,
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
            verified_email: None,
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
    // A name alone (a UPN, an unverified e-mail, a bare `oid` or `sub`) can be held by an account
    // of another tenant or issuer; only a verified address is matched by name.
    let vouched =
        |name: &str| claims.claims.get(name).is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"));
    let verified = vouched("email_verified") || (kind == OAuthProvider::Entra && vouched("xms_edov"));
    let verified_email = claims.email.as_ref().filter(|_| verified).map(|e| e.to_ascii_lowercase());
    Identity { account, name, tenant: claims.tid.clone(), issuer: Some(claims.iss.clone()), verified_email }
}

/// Whether an `ALLOWED_USERS` entry names this account: its immutable, issuer-bound key
/// (`tenant-id/object-id` on Entra, `issuer|subject` elsewhere, as `tcbridge connection list`
/// and the refusal page show it), or an e-mail address the server verified.
fn names_account(entry: &str, identity: &Identity) -> bool {
    if entry.eq_ignore_ascii_case(&identity.account) {
        return true;
    }
    entry.contains('@') && identity.verified_email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(entry))
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
    if !settings.allowed_users.is_empty() && !settings.allowed_users.iter().any(|u| names_account(u, identity)) {
        return Err(format!(
            "The account {} ({}) may not connect this bridge (ALLOWED_USERS).",
            identity.name.as_deref().unwrap_or("without a name"),
            identity.account
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(extra: serde_json::Value) -> IdTokenClaims {
        let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        IdTokenClaims {
            iss: "https://login.microsoftonline.com/tid-1/v2.0".into(),
            sub: "sub-1".into(),
            aud: vec!["client".into()],
            azp: None,
            tid: text(&extra, "tid"),
            oid: text(&extra, "oid"),
            preferred_username: text(&extra, "preferred_username"),
            email: text(&extra, "email"),
            name: None,
            upn: None,
            nonce_checked: true,
            exp: 0,
            iat: 0,
            claims: extra.as_object().unwrap().clone(),
        }
    }

    fn allows(users: &[&str], kind: OAuthProvider, extra: serde_json::Value) -> bool {
        let raw = crate::config::RawSettings::from_pairs([("OAUTH_CLIENT_ID", "x")]);
        let mut settings = crate::config::Settings::load(&raw).unwrap().oauth;
        settings.allowed_users = users.iter().map(|u| (*u).to_owned()).collect();
        allowed(&settings, &identity_from_claims(kind, &claims(extra))).is_ok()
    }

    /// Issue 20: a name (a UPN, an e-mail nobody verified, a bare `oid` or `sub`) can be held by
    /// an account of another tenant or issuer.
    #[test]
    fn allowed_users_match_issuer_bound_keys_or_verified_addresses_only() {
        let entra = serde_json::json!({"tid": "tid-1", "oid": "oid-1", "preferred_username": "admin@contoso.com", "email": "admin@contoso.com"});
        assert!(allows(&["tid-1/oid-1"], OAuthProvider::Entra, entra.clone()));
        assert!(allows(&["TID-1/OID-1"], OAuthProvider::Entra, entra.clone()));
        assert!(!allows(&["oid-1"], OAuthProvider::Entra, entra.clone()), "a bare oid");
        assert!(!allows(&["tid-2/oid-1"], OAuthProvider::Entra, entra.clone()), "another tenant's object");
        assert!(!allows(&["admin@contoso.com"], OAuthProvider::Entra, entra.clone()), "an unverified address");
        let mut vouched = entra.clone();
        vouched["xms_edov"] = serde_json::json!(true);
        assert!(allows(&["Admin@Contoso.com"], OAuthProvider::Entra, vouched));
        let oidc = serde_json::json!({"email": "ops@example.com", "email_verified": true});
        assert!(allows(&["ops@example.com"], OAuthProvider::Oidc, oidc.clone()));
        assert!(allows(&["https://login.microsoftonline.com/tid-1/v2.0|sub-1"], OAuthProvider::Oidc, oidc.clone()));
        assert!(!allows(&["sub-1"], OAuthProvider::Oidc, oidc), "a bare sub");
        let unverified = serde_json::json!({"email": "ops@example.com", "email_verified": false});
        assert!(!allows(&["ops@example.com"], OAuthProvider::Oidc, unverified));
    }
}
