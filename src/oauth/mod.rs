//! OAuth 2.0 and OpenID Connect: the authorization server's endpoints ([`provider`]), the
//! token endpoint ([`token`]), id_token validation, and the sign-in flow's records.

pub mod assertion;
pub mod flow;
pub mod id_token;
pub mod identity;
pub mod jwks;
pub mod provider;
pub mod token;

use crate::config::{OAuthProvider, OAuthSettings};
use crate::store::azure::credential::SharedCredential;
use token::ClientAuth;

/// What the sign-in and token code share: one HTTP client (no redirects), the provider's
/// metadata, and the JWKS caches.
pub struct OAuthRuntime {
    pub http: reqwest::Client,
    pub provider: provider::ProviderResolver,
    pub client_id: String,
    pub client_secret: Option<crate::secret::SecretString>,
    /// Loaded from `OAUTH_CLIENT_CERTIFICATE_PATH` on first use; an error is kept as text.
    certificate: Option<Result<assertion::ClientCertificate, String>>,
    /// `OAUTH_FEDERATED_CREDENTIAL`: the managed identity whose token is the client assertion.
    federated: Option<SharedCredential>,
    pub jwks: jwks::JwksCaches,
}

impl OAuthRuntime {
    /// `identity` is the process's Azure credential (the stores'), used for a federated
    /// credential.
    pub fn new(settings: &OAuthSettings, identity: SharedCredential) -> Self {
        let http = token::http_client();
        Self {
            provider: provider::ProviderResolver::new(settings.clone(), http.clone()),
            client_id: settings.client_id.clone().unwrap_or_default(),
            client_secret: settings.client_secret.clone(),
            certificate: settings.client_certificate_path.as_deref().map(assertion::ClientCertificate::from_pem_file),
            federated: settings.federated_credential.then_some(identity),
            jwks: jwks::JwksCaches::default(),
            http,
        }
    }

    /// How to authenticate at this provider's token endpoint: a certificate-signed assertion
    /// when a certificate is configured; else the secret, in the body unless the server only
    /// supports Basic; else nothing (a public client).
    pub async fn client_auth(&self, provider: &provider::Provider) -> Result<ClientAuth, String> {
        if let Some(credential) = &self.federated {
            return federated_assertion(credential).await.map(ClientAuth::Assertion);
        }
        if let Some(certificate) = &self.certificate {
            let certificate = certificate.as_ref().map_err(Clone::clone)?;
            return certificate.assertion(&self.client_id, provider.token_endpoint.as_str()).map(ClientAuth::Assertion);
        }
        Ok(match &self.client_secret {
            None => ClientAuth::None,
            Some(secret) => {
                let basic_only = !provider.auth_methods.is_empty()
                    && !provider.auth_methods.iter().any(|m| m == "client_secret_post")
                    && provider.auth_methods.iter().any(|m| m == "client_secret_basic");
                if basic_only && provider.kind != OAuthProvider::Oauth2 {
                    ClientAuth::SecretBasic(secret.clone())
                } else {
                    ClientAuth::SecretPost(secret.clone())
                }
            }
        })
    }
}

/// The scopes to request: the configured ones plus `openid` (OIDC servers) and
/// `offline_access` (always: without it there is no refresh token).
pub fn requested_scopes(configured: &[String], openid: bool) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    if openid {
        scopes.push("openid".into());
    }
    scopes.push("offline_access".into());
    for scope in configured {
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    scopes
}

/// The audience Entra expects of a managed-identity token used as a federated credential.
pub const TOKEN_EXCHANGE_SCOPE: &str = "api://AzureADTokenExchange/.default";

/// A managed-identity token for `api://AzureADTokenExchange`, used as the app's client
/// assertion (Entra workload identity federation), so production needs no secret at all.
/// The credential caches its token and refreshes it before expiry.
async fn federated_assertion(credential: &SharedCredential) -> Result<crate::secret::SecretString, String> {
    let credential = credential.get().map_err(|e| e.to_string())?;
    let token = credential
        .get_token(&[TOKEN_EXCHANGE_SCOPE], None)
        .await
        .map_err(|e| format!("the managed identity gave no token for the federated credential: {e}"))?;
    Ok(crate::secret::SecretString::new(token.token.secret()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_access_and_openid_are_always_requested_once() {
        let scopes = requested_scopes(&["api://tc/.default".into(), "offline_access".into()], true);
        assert_eq!(scopes, ["openid", "offline_access", "api://tc/.default"]);
        assert_eq!(requested_scopes(&[], false), ["offline_access"]);
    }
}
