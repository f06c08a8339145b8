//! What the Azure Storage clients (blobs, queues, tables) share: the client options (bounded retries,
//! the SAS policy for keyed accounts), the service URL as the SDK joins it, and the mapping of
//! SDK errors to [`StoreError`]s that never carry a SAS or a secret.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{ClientOptions, Context, ExponentialRetryOptions, Request, RetryOptions, Url};
use chrono::{DateTime, Utc};

use super::connection::{StorageAccount, StorageAuth};
use crate::secret::SecretString;
use crate::store::{StoreError, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Service {
    Blob,
    Queue,
    Table,
}

impl Service {
    pub(super) fn label(self) -> &'static str {
        match self {
            Service::Blob => "Blob storage",
            Service::Queue => "Queue storage",
            Service::Table => "Table storage",
        }
    }

    fn role(self) -> &'static str {
        match self {
            Service::Blob => "Storage Blob Data Contributor",
            Service::Queue => "Storage Queue Data Contributor",
            Service::Table => "Storage Table Data Contributor",
        }
    }
}

/// Bounded retries: azure_core's retry policy already retries 408/429/500/502/503/504 and
/// transport errors (connection refused, timeouts), waiting for the longer of its own backoff
/// and the server's `Retry-After` / `x-ms-retry-after-ms` on 429 and 503. We only bound it:
/// four retries, 0.2 s doubling, at most 8 s between tries and 30 s in all.
fn retry_options() -> RetryOptions {
    RetryOptions::exponential(ExponentialRetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(200),
        max_retries: 4,
        max_total_elapsed: azure_core::time::Duration::seconds(30),
        max_delay: azure_core::time::Duration::seconds(8),
    })
}

/// The credential to hand the SDK client and its client options (retries, and the SAS policy
/// for keyed accounts).
pub(super) fn client_setup(
    account: &StorageAccount,
    credential: Option<Arc<dyn TokenCredential>>,
    service: Service,
    transport: Option<azure_core::http::Transport>,
) -> StoreResult<(Option<Arc<dyn TokenCredential>>, ClientOptions)> {
    crate::tls::install_crypto_provider();
    let mut options = ClientOptions { retry: retry_options(), transport, ..Default::default() };
    match &account.auth {
        StorageAuth::Identity => {
            let credential = credential.ok_or_else(|| {
                StoreError::Backend(format!("identity-based {} needs a token credential", service.label()))
            })?;
            Ok((Some(credential), options))
        }
        StorageAuth::AccountKey(_) | StorageAuth::Sas(_) => {
            // Fail now, not on the first request, when the key cannot sign.
            account.account_sas(Utc::now() + SAS_LIFETIME)?;
            options.per_try_policies.push(Arc::new(SasPolicy { account: account.clone(), cached: Mutex::new(None) }));
            Ok((None, options))
        }
    }
}

/// The service URL as the SDK joins it: `path_segments_mut().push(name)` appends `/name` to a
/// path that does not end in `/` (`http://127.0.0.1:10000/devstoreaccount1` →
/// `…/devstoreaccount1/name`) and replaces the root `/` of a cloud URL
/// (`https://acct.blob.core.windows.net/` → `…/name`); a path-style URL that kept its
/// trailing slash would give `…/devstoreaccount1//name`, which Azurite refuses. So: no trailing
/// slash except the root, and no query or fragment.
pub(super) fn service_root(endpoint: &Url) -> Url {
    let mut url = endpoint.clone();
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(if path.is_empty() { "/" } else { &path });
    url
}

/// An account SAS lives this long; it is re-signed when less than [`SAS_RENEW`] is left.
const SAS_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(2);
const SAS_RENEW: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// Adds the account SAS (or the connection string's SAS) to every request's query string, for
/// one try only, so the clients' URLs and the request after the try stay SAS-free.
struct SasPolicy {
    account: StorageAccount,
    cached: Mutex<Option<(SecretString, DateTime<Utc>)>>,
}

impl std::fmt::Debug for SasPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasPolicy").field("account", &self.account.name).finish_non_exhaustive()
    }
}

impl SasPolicy {
    fn current(&self) -> azure_core::Result<SecretString> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let now = Utc::now();
        if let Some((sas, expiry)) = cached.as_ref() {
            if *expiry - now > SAS_RENEW {
                return Ok(sas.clone());
            }
        }
        let expiry = now + SAS_LIFETIME;
        let sas = self
            .account
            .account_sas(expiry)
            .map_err(|e| azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, e.to_string()))?
            .ok_or_else(|| {
                azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, "the account has no key")
            })?;
        let expiry = match self.account.auth {
            // A SAS from the connection string is what it is; keep it for good.
            StorageAuth::Sas(_) => DateTime::<Utc>::MAX_UTC,
            _ => expiry,
        };
        *cached = Some((sas.clone(), expiry));
        Ok(sas)
    }
}

#[async_trait]
impl Policy for SasPolicy {
    // azure_core's pipeline always ends with its transport policy, so a policy's `next` is
    // never empty (our own pipeline, not outside input).
    #[allow(clippy::indexing_slicing)]
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let sas = self.current()?;
        let original = request.url().query().map(str::to_owned);
        let query = match original.as_deref() {
            Some(q) if !q.is_empty() => format!("{q}&{}", sas.expose()),
            _ => sas.expose().to_owned(),
        };
        request.url_mut().set_query(Some(&query));
        let result = next[0].send(ctx, request, &next[1..]).await;
        request.url_mut().set_query(original.as_deref());
        result
    }
}

pub(super) fn status(error: &azure_core::Error) -> Option<u16> {
    error.http_status().map(u16::from)
}

pub(super) fn error_code(error: &azure_core::Error) -> Option<&str> {
    match error.kind() {
        azure_core::error::ErrorKind::HttpResponse { error_code, .. } => error_code.as_deref(),
        _ => None,
    }
}

/// The text of an SDK error with every URL's query string (where a SAS travels) removed, and
/// then scrubbed as log lines are.
pub(super) fn without_url_queries(text: &str) -> String {
    static URL_QUERY: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let pattern = URL_QUERY
        .get_or_init(|| regex::Regex::new(r#"(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#"'<>()]*)\?[^\s"'<>()]*"#).unwrap());
    let without_queries = pattern.replace_all(text, "$1");
    crate::telemetry::redact(&without_queries).into_owned()
}

/// An error and its sources, without repeats (the transport's cause carries the detail).
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// The whole chain of an SDK error, without URL queries, scrubbed.
fn describe(error: &azure_core::Error) -> String {
    without_url_queries(&error_chain(error))
}

/// Any error the caller did not map itself: 403 names the role the identity lacks; transport
/// failures say the service could not be reached; anything else gives status and code.
pub(super) fn backend_error(service: Service, account: &str, error: &azure_core::Error, what: &str) -> StoreError {
    let label = service.label();
    let code = error_code(error).unwrap_or("no error code");
    match status(error) {
        Some(403) => StoreError::Backend(format!(
            "{label} refused access to {what} (403 {code}): give this app's identity the role {} on account {account} \
             (or, with a connection string, check its key or SAS)",
            service.role()
        )),
        Some(status) => StoreError::Backend(format!("{label} answered {status} ({code}) for {what}")),
        None => StoreError::Backend(format!("{label} could not be reached for {what}: {}", describe(error))),
    }
}

pub(super) fn setup_error(service: Service, error: &azure_core::Error) -> StoreError {
    StoreError::Backend(format!("cannot set up the {} client: {}", service.label(), describe(error)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_storage_blob::BlobServiceClient;

    #[test]
    fn service_urls_join_container_names_with_one_slash() {
        crate::tls::install_crypto_provider();
        for (endpoint, expected) in [
            ("http://127.0.0.1:10000/devstoreaccount1", "http://127.0.0.1:10000/devstoreaccount1/box"),
            ("http://127.0.0.1:10000/devstoreaccount1/", "http://127.0.0.1:10000/devstoreaccount1/box"),
            ("https://acct.blob.core.windows.net/", "https://acct.blob.core.windows.net/box"),
            ("https://acct.blob.core.windows.net", "https://acct.blob.core.windows.net/box"),
            ("https://acct.blob.core.windows.net/?sv=1&sig=x", "https://acct.blob.core.windows.net/box"),
        ] {
            let root = service_root(&Url::parse(endpoint).unwrap());
            let service = BlobServiceClient::new(root, None, None).unwrap();
            assert_eq!(service.blob_container_client("box").url().as_str(), expected, "{endpoint}");
        }
        // Blob names are one path segment: `/` is percent-encoded, which Azure decodes back.
        let root = service_root(&Url::parse("https://acct.blob.core.windows.net/").unwrap());
        let service = BlobServiceClient::new(root, None, None).unwrap();
        let blob = service.blob_container_client("box").blob_client("dir/a b%.json");
        assert_eq!(blob.url().path(), "/box/dir%2Fa%20b%25.json");
    }

    #[test]
    fn url_queries_are_removed_from_error_text() {
        let text = "error sending request for url (http://127.0.0.1:1/devstoreaccount1/box?restype=container&sv=2022-11-02&sig=abc%2Bdef): refused";
        let clean = without_url_queries(text);
        assert!(!clean.contains("sig="), "{clean}");
        assert!(clean.contains("http://127.0.0.1:1/devstoreaccount1/box)"), "{clean}");
        assert_eq!(without_url_queries("sig=abc"), "sig=[REDACTED]");
    }
}
