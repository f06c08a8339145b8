//! OAuth 2.0 and OpenID Connect: the authorization server's endpoints ([`provider`]), the
//! token endpoint ([`token`]), id_token validation, and the sign-in flow's records.

pub mod assertion;
pub mod flow;
pub mod id_token;
pub mod identity;
pub mod provider;
pub mod token;

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
    pub jwks: identity::JwksCaches,
}

impl OAuthRuntime {
    pub fn new(settings: &OAuthSettings) -> Self {
        let http = token::http_client();
        Self {
            provider: provider::ProviderResolver::new(settings.clone(), http.clone()),
            client_id: settings.client_id.clone().unwrap_or_default(),
            client_secret: settings.client_secret.clone(),
            certificate: settings.client_certificate_path.as_deref().map(assertion::ClientCertificate::from_pem_file),
            jwks: identity::JwksCaches::default(),
            http,
        }
    }

    /// How to authenticate at this provider's token endpoint: a certificate-signed assertion
    /// when a certificate is configured; else the secret, in the body unless the server only
    /// supports Basic; else nothing (a public client).
    pub fn client_auth(&self, provider: &provider::Provider) -> Result<ClientAuth, String> {
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
