//! One TLS crypto provider for the whole process: *ring*.
//!
//! One HTTP stack serves the process: reqwest 0.13, in our own clients and under `azure_core`
//! 1.x (Blob, Queue, Key Vault, and our Table client on its pipeline). reqwest 0.13's default
//! TLS feature would compile in a second provider, aws-lc-rs, with its C build, so it is built
//! with `rustls-no-provider` instead, and that needs a process
//! default provider installed before any client is built. Every constructor of an HTTP client
//! in this crate calls [`install_crypto_provider`] first, and so must code that builds reqwest
//! clients of its own (tests); `main` does it before anything else.

/// Installs *ring* as rustls' process-wide default provider; later calls do nothing.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first (by an embedding program): keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The certificates of a PEM bundle (`TLS_EXTRA_CA_FILE`); other PEM sections are skipped.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM bundle: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn clients_can_be_built_once_the_provider_is_installed() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        reqwest::Client::builder().build().expect("a client with the process provider");
    }
}
