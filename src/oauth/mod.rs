//! OAuth 2.0 and OpenID Connect: the authorization server's endpoints ([`provider`]), the
//! token endpoint ([`token`]), id_token validation, and the sign-in flow's records.

pub mod assertion;
pub mod flow;
pub mod id_token;
pub mod identity;
pub mod provider;
pub mod token;

use std::sync::Arc;

use azure_core::credentials::TokenCredential;

use crate::config::{OAuthProvider, OAuthSettings};
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
    federated: Option<(Option<String>, LazyCredential)>,
    pub jwks: identity::JwksCaches,
}

impl OAuthRuntime {
    /// `managed_identity_client_id` is `AZURE_CLIENT_ID` (a user-assigned identity), if any.
    pub fn new(settings: &OAuthSettings, managed_identity_client_id: Option<String>) -> Self {
        let http = token::http_client();
        Self {
            provider: provider::ProviderResolver::new(settings.clone(), http.clone()),
            client_id: settings.client_id.clone().unwrap_or_default(),
            client_secret: settings.client_secret.clone(),
            certificate: settings.client_certificate_path.as_deref().map(assertion::ClientCertificate::from_pem_file),
            federated: settings.federated_credential.then(|| (managed_identity_client_id, std::sync::OnceLock::new())),
            jwks: identity::JwksCaches::default(),
            http,
        }
    }

    /// How to authenticate at this provider's token endpoint: a certificate-signed assertion
    /// when a certificate is configured; else the secret, in the body unless the server only
    /// supports Basic; else nothing (a public client).
    pub async fn client_auth(&self, provider: &provider::Provider) -> Result<ClientAuth, String> {
        if let Some((client_id, credential)) = &self.federated {
            return federated_assertion(client_id.as_deref(), credential).await.map(ClientAuth::Assertion);
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

/// A credential made on first use; a failure to make it is kept as text.
type LazyCredential = std::sync::OnceLock<Result<Arc<dyn TokenCredential>, String>>;

/// The audience Entra expects of a managed-identity token used as a federated credential.
pub const TOKEN_EXCHANGE_SCOPE: &str = "api://AzureADTokenExchange/.default";

/// A managed-identity token for `api://AzureADTokenExchange`, used as the app's client
/// assertion (Entra workload identity federation), so production needs no secret at all.
/// The credential caches its token and refreshes it before expiry.
async fn federated_assertion(
    client_id: Option<&str>,
    credential: &LazyCredential,
) -> Result<crate::secret::SecretString, String> {
    let credential = credential
        .get_or_init(|| crate::store::azure::credential::default_credential(client_id).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)?;
    let token = credential
        .get_token(&[TOKEN_EXCHANGE_SCOPE], None)
        .await
        .map_err(|e| format!("the managed identity gave no token for the federated credential: {e}"))?;
    Ok(crate::secret::SecretString::new(token.token.secret()))
}
