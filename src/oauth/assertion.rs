//! `private_key_jwt` client authentication (RFC 7523): a short-lived JWT signed with the app's
//! certificate key, sent as `client_assertion`. The `oauth2` crate has no support for client
//! assertions (its `endpoint.rs` FIXME); this is that gap, filled.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::secret::SecretString;

/// The app's signing key and, when the file holds one, its certificate's thumbprint (Entra
/// finds the registered certificate by `x5t#S256`).
pub struct ClientCertificate {
    key: EncodingKey,
    thumbprint_s256: Option<String>,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate").field("thumbprint_s256", &self.thumbprint_s256).finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// Reads a PEM file holding an RSA private key and, optionally, the certificate.
    pub fn from_pem_file(path: &std::path::Path) -> Result<Self, String> {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
        let key = EncodingKey::from_rsa_pem(text.as_bytes())
            .map_err(|_| format!("{} holds no RSA private key in PEM form", path.display()))?;
        let thumbprint_s256 = certificate_der(&text)
            .map(|der| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&der)));
        Ok(Self { key, thumbprint_s256 })
    }

    /// A fresh assertion for one token request to `audience` (the token endpoint).
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<SecretString, String> {
        let mut header = Header::new(Algorithm::RS256);
        header.x5t_s256 = self.thumbprint_s256.clone();
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": client_id, "sub": client_id, "aud": audience,
            "jti": hex::encode(rand::random::<[u8; 16]>()),
            "iat": now, "nbf": now, "exp": now + 300,
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::new)
            .map_err(|_| "the client assertion could not be signed".to_owned())
    }
}

fn certificate_der(pem: &str) -> Option<Vec<u8>> {
    let (_, after_begin) = pem.split_once("-----BEGIN CERTIFICATE-----")?;
    let (inside, _) = after_begin.split_once("-----END CERTIFICATE-----")?;
    let body: String = inside.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}
