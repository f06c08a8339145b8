//! OAuth 2.0 and OpenID Connect: the authorization server's endpoints ([`provider`]), the
//! token endpoint ([`token`]), id_token validation, and the sign-in flow's records.

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
    pub client_secret: Option<crate::secret::SecretString>,
    pub jwks: identity::JwksCaches,
}

impl OAuthRuntime {
    pub fn new(settings: &OAuthSettings) -> Self {
        let http = token::http_client();
        Self {
            provider: provider::ProviderResolver::new(settings.clone(), http.clone()),
            client_secret: settings.client_secret.clone(),
            jwks: identity::JwksCaches::default(),
            http,
        }
    }

    /// How to authenticate at this provider's token endpoint: with a secret, in the body unless
    /// the server only supports Basic.
    pub fn client_auth(&self, provider: &provider::Provider) -> ClientAuth {
        match &self.client_secret {
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
        }
    }
}
