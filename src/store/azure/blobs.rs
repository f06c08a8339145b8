//! Blob storage with `azure_storage_blob` 1.x (submission documents).
//!
//! The 1.x storage clients authenticate with an Entra token credential only. Keyed accounts
//! (Azurite, connection strings with `AccountKey` or `SharedAccessSignature`) are reached with
//! an account SAS instead: `SasPolicy` adds it to each request's query string, re-signing
//! before it runs out, so the clients' own URLs never carry it. Error messages strip query
//! strings from any URL they quote (the transport's errors name the request URL).
//!
//! The helpers shared with [`super::queues`] live here: client options (retries), the SAS
//! policy, service URL joining, and error mapping.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{ClientOptions, Context, ExponentialRetryOptions, Request, RequestContent, RetryOptions, Url};
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobContainerClientListBlobsOptions, BlockBlobClientUploadOptions,
};
use azure_storage_blob::{BlobContainerClient, BlobServiceClient, BlobServiceClientOptions};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;

use super::connection::{StorageAccount, StorageAuth};
use crate::secret::SecretString;
use crate::store::*;

/// Blob storage, one container per `container` argument (created on first use).
pub struct AzureBlobs {
    service: BlobServiceClient,
    account: String,
}

impl AzureBlobs {
    /// `credential` is used (and required) when the account is reached with a managed identity
    /// ([`StorageAuth::Identity`]); keyed and SAS accounts ignore it.
    pub fn new(account: &StorageAccount, credential: Option<Arc<dyn TokenCredential>>) -> StoreResult<Self> {
        let (credential, client_options) = client_setup(account, credential, Service::Blob)?;
        let options = BlobServiceClientOptions { client_options, ..Default::default() };
        let service = BlobServiceClient::new(service_root(&account.blob), credential, Some(options))
            .map_err(|e| setup_error(Service::Blob, &e))?;
        Ok(Self { service, account: account.name.clone() })
    }

    fn container(&self, container: &str) -> BlobContainerClient {
        self.service.blob_container_client(container)
    }

    fn error(&self, error: &azure_core::Error, what: &str) -> StoreError {
        backend_error(Service::Blob, &self.account, error, what)
    }

    async fn create_container(&self, container: &str) -> StoreResult<()> {
        match self.container(container).create(None).await {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("ContainerAlreadyExists") => Ok(()),
            Err(e) => Err(self.error(&e, &format!("container {container}"))),
        }
    }

    async fn upload(
        &self,
        container: &str,
        name: &str,
        content: &[u8],
        content_type: &str,
        only_if_absent: bool,
    ) -> azure_core::Result<ETag> {
        let mut options = BlockBlobClientUploadOptions {
            blob_content_type: (!content_type.is_empty()).then(|| content_type.to_owned()),
            ..Default::default()
        };
        if only_if_absent {
            options = options.if_not_exists();
        }
        let client = self.container(container).blob_client(name);
        let result = client.upload(RequestContent::from(content.to_vec()), Some(options)).await?;
        let etag = result.etag.map(String::from).unwrap_or_default();
        Ok(ETag(etag))
    }

    async fn download(&self, container: &str, name: &str) -> azure_core::Result<Blob> {
        let client = self.container(container).blob_client(name);
        let result = client.download(Some(BlobClientDownloadOptions::default())).await?;
        let content_type = result.properties.content_type.clone().unwrap_or_default();
        let etag = ETag(result.properties.etag.clone().map(String::from).unwrap_or_default());
        let content = result.body.collect().await?.to_vec();
        Ok(Blob { content, content_type, etag })
    }
}

/// Azure's blob name rules as the embedded store enforces them.
fn validate_blob_name(name: &str) -> StoreResult<()> {
    if name.is_empty() || name.len() > 1024 || name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(StoreError::invalid(
            "blob name",
            format!("{name:?} must be 1-1024 characters, no control characters"),
        ));
    }
    Ok(())
}

fn blob_name(container: &str, name: &str) -> String {
    format!("blob {container}/{name}")
}

#[async_trait]
impl BlobStore for AzureBlobs {
    async fn put(
        &self,
        container: &str,
        name: &str,
        content: &[u8],
        content_type: &str,
        only_if_absent: bool,
    ) -> StoreResult<ETag> {
        validate_container_name("container", container)?;
        validate_blob_name(name)?;
        let what = || blob_name(container, name);
        let mut result = self.upload(container, name, content, content_type, only_if_absent).await;
        if matches!(&result, Err(e) if error_code(e) == Some("ContainerNotFound")) {
            self.create_container(container).await?;
            result = self.upload(container, name, content, content_type, only_if_absent).await;
        }
        match result {
            Ok(etag) => Ok(etag),
            // If-None-Match: * on an existing blob: 409 BlobAlreadyExists, or 412 ConditionNotMet.
            Err(e) if only_if_absent && matches!(status(&e), Some(409 | 412)) => {
                Err(StoreError::AlreadyExists { what: what() })
            }
            Err(e) => Err(self.error(&e, &what())),
        }
    }

    async fn get(&self, container: &str, name: &str) -> StoreResult<Option<Blob>> {
        validate_container_name("container", container)?;
        validate_blob_name(name)?;
        // A download in several ranges is pinned to the first range's ETag; when the blob is
        // overwritten in between (412), read it again from the start, once.
        let mut result = self.download(container, name).await;
        if matches!(&result, Err(e) if status(e) == Some(412)) {
            result = self.download(container, name).await;
        }
        match result {
            Ok(blob) => Ok(Some(blob)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error(&e, &blob_name(container, name))),
        }
    }

    async fn delete(&self, container: &str, name: &str) -> StoreResult<()> {
        validate_container_name("container", container)?;
        validate_blob_name(name)?;
        match self.container(container).blob_client(name).delete(None).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(StoreError::NotFound { what: blob_name(container, name) }),
            Err(e) => Err(self.error(&e, &blob_name(container, name))),
        }
    }

    async fn list(&self, container: &str, prefix: &str) -> StoreResult<Vec<String>> {
        validate_container_name("container", container)?;
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
            ..Default::default()
        };
        let what = || format!("blobs under {prefix:?} in container {container}");
        let mut names = Vec::new();
        let mut items = self.container(container).list_blobs(Some(options)).map_err(|e| self.error(&e, &what()))?;
        loop {
            match items.try_next().await {
                Ok(Some(item)) => names.extend(item.name),
                Ok(None) => break,
                Err(e) if error_code(&e) == Some("ContainerNotFound") => return Ok(Vec::new()),
                Err(e) => return Err(self.error(&e, &what())),
            }
        }
        // Azure lists in its own collation; the contract is byte order.
        names.sort();
        Ok(names)
    }
}

// -------------------------------------------------------------------------------------------
// Shared with the queue store
// -------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Service {
    Blob,
    Queue,
}

impl Service {
    fn label(self) -> &'static str {
        match self {
            Service::Blob => "Blob storage",
            Service::Queue => "Queue storage",
        }
    }

    fn role(self) -> &'static str {
        match self {
            Service::Blob => "Storage Blob Data Contributor",
            Service::Queue => "Storage Queue Data Contributor",
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
) -> StoreResult<(Option<Arc<dyn TokenCredential>>, ClientOptions)> {
    let mut options = ClientOptions { retry: retry_options(), ..Default::default() };
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
pub(super) fn scrub(text: &str) -> String {
    static URL_QUERY: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let pattern = URL_QUERY
        .get_or_init(|| regex::Regex::new(r#"(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#"'<>()]*)\?[^\s"'<>()]*"#).unwrap());
    let without_queries = pattern.replace_all(text, "$1");
    crate::telemetry::redact(&without_queries).into_owned()
}

/// The whole chain of an SDK error (the transport's cause carries the detail), scrubbed.
fn describe(error: &azure_core::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    scrub(&text)
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

fn setup_error(service: Service, error: &azure_core::Error) -> StoreError {
    StoreError::Backend(format!("cannot set up the {} client: {}", service.label(), describe(error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_join_container_names_with_one_slash() {
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
    fn scrub_removes_url_queries() {
        let text = "error sending request for url (http://127.0.0.1:1/devstoreaccount1/box?restype=container&sv=2022-11-02&sig=abc%2Bdef): refused";
        let clean = scrub(text);
        assert!(!clean.contains("sig="), "{clean}");
        assert!(clean.contains("http://127.0.0.1:1/devstoreaccount1/box)"), "{clean}");
        assert_eq!(scrub("sig=abc"), "sig=[REDACTED]");
    }
}
