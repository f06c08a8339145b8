//! The HTTP transport the Azure SDK clients (Key Vault, Blob, Queue, the managed-identity
//! endpoint) use when the SDK's default will not do: on a workstation running local
//! stand-ins, a simulator's test CA (`TLS_EXTRA_CA_FILE`) and host names under `.localhost`.
//!
//! azure_core builds its own reqwest client with no way to add a root or a resolver
//! (azure-sdk-for-rust #4217), so this builds one with the same timeouts and redirect policy
//! and hands it over as a [`Transport`]. In Azure nothing here applies and the SDK's own
//! client is used: the configuration refuses an extra CA unless every endpoint is loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ClientOptions, Transport};
use url::Url;

use crate::config::StoreSettings;
use crate::store::{StoreError, StoreResult};

/// What `typespec_client_core` gives its own client (its `DEFAULT_CONNECTION_TIMEOUT` and
/// `DEFAULT_READ_TIMEOUT`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The transport for these settings, or `None` when the SDK's default client is right.
pub fn from_settings(settings: &StoreSettings) -> StoreResult<Option<Transport>> {
    let endpoints = endpoints(settings);
    let local_names: Vec<&str> =
        endpoints.iter().filter_map(|u| u.host_str()).filter(|h| is_localhost_name(h)).collect();
    if settings.tls_extra_ca_file.is_none() && local_names.is_empty() {
        return Ok(None);
    }
    crate::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &settings.tls_extra_ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| StoreError::invalid("TLS_EXTRA_CA_FILE", format!("cannot read {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| StoreError::invalid("TLS_EXTRA_CA_FILE", format!("{}: {e}", path.display())))?;
        builder = builder.tls_certs_merge(certs);
    }
    // RFC 6761 §6.3: names under `.localhost` are loopback. The system resolver here does
    // not know that (glibc resolves only `localhost` itself), and Key Vault's challenge needs
    // a vault host under its resource's host, so a local vault is `<name>.vault.localhost`.
    for host in local_names {
        builder = builder.resolve(host, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    }
    let client = builder
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot set up the HTTP client for the Azure services: {e}")))?;
    Ok(Some(Transport::new(Arc::new(client))))
}

/// Client options carrying `transport` (or the SDK defaults).
pub fn client_options(transport: Option<&Transport>) -> ClientOptions {
    ClientOptions { transport: transport.cloned(), ..Default::default() }
}

/// Every Azure endpoint the settings name (the identity endpoint is the process's own
/// environment, as Azure sets it).
fn endpoints(settings: &StoreSettings) -> Vec<Url> {
    let azure = &settings.azure;
    let mut urls: Vec<Url> = [&settings.keyvault_uri, &azure.blob_service_uri, &azure.queue_service_uri]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    urls.extend(["IDENTITY_ENDPOINT", "MSI_ENDPOINT"].iter().filter_map(|v| std::env::var(v).ok()?.parse().ok()));
    urls
}

fn is_localhost_name(host: &str) -> bool {
    host.to_ascii_lowercase().ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawSettings, Settings};

    fn store(pairs: &[(&str, &str)]) -> StoreSettings {
        Settings::load(&RawSettings::from_pairs(pairs.iter().copied())).unwrap().store
    }

    #[test]
    fn the_sdk_default_is_kept_unless_something_local_needs_otherwise() {
        let cloud = store(&[
            ("STORE", "azure"),
            ("AzureWebJobsStorage__accountName", "acct"),
            ("KEYVAULT_URI", "https://v.vault.azure.net"),
        ]);
        assert!(from_settings(&cloud).unwrap().is_none());
        let local = store(&[
            ("STORE", "azure"),
            ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
            ("KEYVAULT_URI", "https://v.vault.localhost:8443"),
        ]);
        assert!(from_settings(&local).unwrap().is_some());
    }
}
