//! Secrets in Azure Key Vault (`STORE=azure`), through the official
//! `azure_security_keyvault_secrets` client on azure_core 1.x.
//!
//! How the [`SecretStore`] contract maps onto Key Vault:
//!
//! * **set** is Key Vault's Set Secret, which adds a new version every time; the version id
//!   comes from the returned secret id. Each version also carries a tag with our own write
//!   time in nanoseconds ([`WRITTEN_TAG`]): Key Vault's `created` attribute has whole-second
//!   resolution and Get Secret Versions returns versions in no documented order, so
//!   [`SecretStore::versions`] sorts by (`created`, written tag, version id).
//! * **get** is Get Secret, with or without a version; 404 is `None`.
//! * **delete** is Delete Secret, then purge. Vaults soft-delete (it cannot be turned off any
//!   more), and a soft-deleted name cannot be set again until it is purged or recovered, which
//!   would break "delete every version; the name can be used again". Recovering on a later set
//!   would bring the old versions back, so we purge: deletion is asynchronous in Key Vault
//!   (Get Deleted Secret answers 404 and Purge answers 409 `ObjectIsBeingDeleted` until it
//!   completes), so delete polls Get Deleted Secret until the secret shows as deleted and then
//!   purges it. Purging is asynchronous too: a set right after a purge gets 409
//!   `ObjectIsBeingDeleted`, so set retries those for a while. Set also purges a name it finds
//!   soft-deleted (409 `ObjectIsDeletedButRecoverable`: a delete whose purge did not happen,
//!   or someone deleting in the portal), since a soft-deleted secret is already invisible
//!   through this store. A vault with purge protection refuses purges; delete then leaves the
//!   secret soft-deleted (it is gone as far as this store can tell) and a set of the same name
//!   fails with a message saying why, until Key Vault purges it at the end of its retention.
//! * **Reads of the latest version are cached** for [`KeyVaultTuning::cache_ttl`] (30 s), so
//!   the hot path (a refresh token read per sync) does not call the vault every time. Our own
//!   set and delete invalidate the entry; a write by another instance becomes visible within
//!   the TTL. Reads of a given version are not cached.
//! * **Retries**: azure_core's retry policy already honours `Retry-After` (and
//!   `x-ms-retry-after-ms`, `retry-after-ms`) on 429 and 503 and retries 408/429/500/502/503/504
//!   and I/O or connection errors, so it is configured rather than duplicated. Its one gap is
//!   that it sleeps for any `Retry-After` however long; `BoundedRetry` is the same policy
//!   (same loop, via the SDK's `RetryPolicy` trait) with the server's delay capped. A per-try
//!   timeout policy turns a hung exchange into an I/O error, which that loop retries.
//! * **Errors**: 403 names the role assignment that is missing ("Key Vault Secrets Officer on
//!   vault X") and the identity; 401 talks about the credential; anything else gives the
//!   status, the service's error code and its message. Messages never contain a secret value
//!   (the service never echoes values; set also scrubs its own value from the message).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::headers::{RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS};
use azure_core::http::policies::{Policy, PolicyResult, RetryHeaders, RetryPolicy};
use azure_core::http::{AsyncRawResponse, ClientOptions, Context, Request, RetryOptions, StatusCode};
use azure_security_keyvault_secrets::models::{
    KeyVaultError, Secret, SecretClientGetSecretOptions, SecretProperties, SetSecretParameters,
};
use azure_security_keyvault_secrets::{ResourceExt, SecretClient, SecretClientOptions};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;

use super::super::{validate_secret_name, SecretStore, SecretVersion, StoreError, StoreResult};
use super::service::error_chain;
use crate::secret::SecretString;

mod cache;
mod errors;
mod policies;

use cache::{LatestCache, VersionKey};
use errors::{Op, ServiceError};
use policies::{BoundedRetry, TryTimeout};

/// The tag holding our own write time of a version (RFC 3339, nanoseconds), to order versions
/// Key Vault created within the same second.
pub const WRITTEN_TAG: &str = "tcbridge-written";

/// Key Vault's limit on a secret value.
pub const MAX_SECRET_VALUE_BYTES: usize = 25 * 1024;

/// The data-plane role the store needs: it sets, reads, lists, deletes and purges secrets.
pub const REQUIRED_ROLE: &str = "Key Vault Secrets Officer";

/// Timing of the Key Vault store: cache, timeouts, retries, waits for soft delete.
#[derive(Debug, Clone)]
pub struct KeyVaultTuning {
    /// How long a read of a secret's latest version is served from memory.
    pub cache_ttl: Duration,
    /// Longest one HTTP exchange (headers and body) may take before it counts as a timeout,
    /// which is retried like a connection error.
    pub try_timeout: Duration,
    /// Retries after the first try, on 408/429/500/502/503/504, timeouts and I/O errors.
    pub max_retries: u32,
    /// First back-off; doubles per retry (plus up to 250 ms of jitter) up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; a longer one is cut to this.
    pub max_retry_after: Duration,
    /// No retry starts once this long has passed since the first try.
    pub max_retry_elapsed: Duration,
    /// How long delete waits for Key Vault's asynchronous soft delete before purging, and set
    /// waits for a name that is still being deleted or purged.
    pub soft_delete_wait: Duration,
}

impl Default for KeyVaultTuning {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(30),
            try_timeout: Duration::from_secs(20),
            max_retries: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(20),
            max_retry_elapsed: Duration::from_secs(45),
            soft_delete_wait: Duration::from_secs(60),
        }
    }
}

/// [`SecretStore`] on one Azure Key Vault.
pub struct KeyVaultSecrets {
    client: SecretClient,
    vault_url: String,
    vault_name: String,
    identity: String,
    tuning: KeyVaultTuning,
    cache: LatestCache,
    last_written: Mutex<i64>,
}

impl std::fmt::Debug for KeyVaultSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVaultSecrets").field("vault_url", &self.vault_url).finish_non_exhaustive()
    }
}

impl KeyVaultSecrets {
    /// A store on the vault at `vault_url` (`KEYVAULT_URI`, e.g.
    /// `https://myvault.vault.azure.net/`). `client_options` can bring a transport (tests use
    /// one that trusts a test CA); its retry settings are replaced by ours and a per-try
    /// timeout policy is added.
    pub fn new(
        vault_url: &str,
        credential: Arc<dyn TokenCredential>,
        client_options: Option<ClientOptions>,
    ) -> StoreResult<Self> {
        Self::with_tuning(vault_url, credential, client_options, KeyVaultTuning::default())
    }

    pub fn with_tuning(
        vault_url: &str,
        credential: Arc<dyn TokenCredential>,
        client_options: Option<ClientOptions>,
        tuning: KeyVaultTuning,
    ) -> StoreResult<Self> {
        crate::tls::install_crypto_provider();
        let url = url::Url::parse(vault_url)
            .map_err(|e| StoreError::invalid("KEYVAULT_URI", format!("{vault_url:?} is not a URL: {e}")))?;
        if url.scheme() != "https" {
            return Err(StoreError::invalid(
                "KEYVAULT_URI",
                format!("{vault_url:?} must be an https:// URL (Key Vault sends tokens over TLS only)"),
            ));
        }
        let vault_name = url.host_str().and_then(|h| h.split('.').next()).unwrap_or_default().to_owned();
        if vault_name.is_empty() {
            return Err(StoreError::invalid("KEYVAULT_URI", format!("{vault_url:?} has no host")));
        }

        let mut options = client_options.unwrap_or_default();
        options.retry = RetryOptions::custom(Arc::new(BoundedRetry::new(&tuning)));
        options.per_try_policies.push(Arc::new(TryTimeout(tuning.try_timeout)));
        let client = SecretClient::new(
            vault_url,
            credential,
            Some(SecretClientOptions { client_options: options, ..Default::default() }),
        )
        .map_err(|e| StoreError::Backend(format!("cannot set up the Key Vault client for {vault_url}: {e}")))?;

        Ok(Self {
            client,
            vault_url: vault_url.to_owned(),
            vault_name,
            identity: default_identity_hint(),
            cache: LatestCache::new(tuning.cache_ttl),
            tuning,
            last_written: Mutex::new(0),
        })
    }

    /// Who we are, as error messages should name it (default: from `AZURE_CLIENT_ID`).
    pub fn with_identity_hint(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    pub fn vault_url(&self) -> &str {
        &self.vault_url
    }

    pub fn vault_name(&self) -> &str {
        &self.vault_name
    }

    /// Our write time for a new version: now, in nanoseconds, strictly after the last one we
    /// wrote, so versions written by this process in one second still sort in order.
    fn next_written_time(&self) -> DateTime<Utc> {
        let now = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let mut last = self.last_written.lock().unwrap_or_else(|e| e.into_inner());
        *last = now.max(*last + 1);
        DateTime::from_timestamp_nanos(*last)
    }

    async fn fetch(&self, name: &str, version: Option<&str>) -> StoreResult<Option<SecretVersion>> {
        let options = SecretClientGetSecretOptions { secret_version: version.map(str::to_owned), ..Default::default() };
        let secret = match self.client.get_secret(name, Some(options)).await {
            Ok(response) => response.into_model().map_err(|e| self.error(Op::Get, name, &e, None))?,
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => return Ok(None),
            Err(e) => return Err(self.error(Op::Get, name, &e, None)),
        };
        self.to_version(name, secret).map(Some)
    }

    fn to_version(&self, name: &str, mut secret: Secret) -> StoreResult<SecretVersion> {
        let malformed = |what: &str| {
            StoreError::Backend(format!("Key Vault {} returned secret {name} without {what}", self.vault_name))
        };
        let version = secret.resource_id().ok().and_then(|id| id.version).ok_or_else(|| malformed("a version id"))?;
        let created = secret
            .attributes
            .as_ref()
            .and_then(|a| a.created)
            .and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()))
            .ok_or_else(|| malformed("its creation time"))?;
        let value = SecretString::new(secret.value.take().ok_or_else(|| malformed("a value"))?);
        Ok(SecretVersion { value, version, created })
    }

    /// Sets a new version; retries while the name is still being deleted or purged, and
    /// purges it once if it is soft-deleted (see the module docs).
    async fn set_version(&self, name: &str, value: &SecretString) -> StoreResult<String> {
        let deadline = Instant::now() + self.tuning.soft_delete_wait;
        let mut delay = Duration::from_millis(100);
        let mut purged = false;
        loop {
            let written = self.next_written_time();
            let tags = HashMap::from([(WRITTEN_TAG.to_owned(), written.to_rfc3339_opts(SecondsFormat::Nanos, true))]);
            let parameters =
                SetSecretParameters { value: Some(value.expose().to_owned()), tags: Some(tags), ..Default::default() };
            let body = parameters.try_into().map_err(|e| self.error(Op::Set, name, &e, Some(value)))?;
            let err = match self.client.set_secret(name, body, None).await {
                Ok(response) => {
                    let secret = response.into_model().map_err(|e| self.error(Op::Set, name, &e, Some(value)))?;
                    return secret.resource_id().ok().and_then(|id| id.version).ok_or_else(|| {
                        StoreError::Backend(format!(
                            "Key Vault {} did not return a version id for secret {name}",
                            self.vault_name
                        ))
                    });
                }
                Err(e) if e.http_status() == Some(StatusCode::Conflict) => e,
                Err(e) => return Err(self.error(Op::Set, name, &e, Some(value))),
            };
            let detail = ServiceError::of(&err);
            if detail.is("ObjectIsDeletedButRecoverable") && !purged {
                tracing::info!(secret = name, vault = %self.vault_name, "secret name is soft-deleted; purging it");
                self.purge(name).await?;
                purged = true;
                continue;
            }
            if Instant::now() + delay > deadline {
                return Err(StoreError::Backend(if detail.is("ObjectIsDeletedButRecoverable") {
                    format!(
                        "secret {name} is soft-deleted in Key Vault {} and its name cannot be reused until it is \
                         purged; a purge was requested but the name is still taken after {:?} ({})",
                        self.vault_name,
                        self.tuning.soft_delete_wait,
                        detail.summary()
                    )
                } else {
                    format!(
                        "Key Vault {} still refused to set secret {name} after {:?}: 409 {}",
                        self.vault_name,
                        self.tuning.soft_delete_wait,
                        detail.summary()
                    )
                }));
            }
            tracing::debug!(secret = name, "secret name is still being deleted; retrying the set");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Waits until a deleted secret shows as deleted, then purges it.
    async fn purge_after_delete(&self, name: &str) -> StoreResult<()> {
        let deadline = Instant::now() + self.tuning.soft_delete_wait;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.client.get_deleted_secret(name, None).await {
                Ok(_) => break,
                Err(e) if e.http_status() == Some(StatusCode::NotFound) => {}
                Err(e) => return Err(self.error(Op::GetDeleted, name, &e, None)),
            }
            if Instant::now() + delay > deadline {
                // Still not listed as deleted: either Key Vault is slow, or someone purged it
                // already. The secret is gone either way; a set of the name retries or purges.
                tracing::warn!(secret = name, vault = %self.vault_name, "deleted secret did not show as deleted in time; not purged");
                return Ok(());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        self.purge(name).await
    }

    /// Purges a soft-deleted secret; retries while it is still being deleted. A secret that is
    /// not (or no longer) soft-deleted is fine.
    async fn purge(&self, name: &str) -> StoreResult<()> {
        let deadline = Instant::now() + self.tuning.soft_delete_wait;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.client.purge_deleted_secret(name, None).await {
                Ok(_) => return Ok(()),
                Err(e) if e.http_status() == Some(StatusCode::NotFound) => return Ok(()),
                Err(e) if e.http_status() == Some(StatusCode::Conflict) && Instant::now() + delay <= deadline => {}
                Err(e) => return Err(self.error(Op::Purge, name, &e, None)),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// A [`StoreError`] for a failed call, in words an operator can act on.
    fn error(&self, op: Op, name: &str, err: &azure_core::Error, value: Option<&SecretString>) -> StoreError {
        let vault = &self.vault_name;
        let message = match err.kind() {
            ErrorKind::HttpResponse { status, .. } => {
                let detail = ServiceError::of(err);
                match *status {
                    StatusCode::Forbidden if detail.is("SecretDisabled") => {
                        format!("secret {name} is disabled in Key Vault {vault}: {}", detail.summary())
                    }
                    StatusCode::Forbidden if op == Op::Purge && !detail.is("ForbiddenByRbac") => format!(
                        "Key Vault {vault} refused to purge deleted secret {name} (403): if the vault has purge \
                         protection, the name cannot be reused until its retention period ends; otherwise the role \
                         assignment {REQUIRED_ROLE} on vault {vault} for {} is missing. Key Vault said: {}",
                        self.identity,
                        detail.summary()
                    ),
                    StatusCode::Forbidden => format!(
                        "Key Vault {vault} refused to let us {} secret {name} (403): missing role assignment \
                         {REQUIRED_ROLE} on vault {vault} for {} (a vault on access policies instead of Azure RBAC \
                         needs an access policy with the secret permissions get, list, set, delete and purge; new \
                         role assignments take a few minutes to apply). Key Vault said: {}",
                        op.verb(),
                        self.identity,
                        detail.summary()
                    ),
                    StatusCode::Unauthorized => format!(
                        "Key Vault {vault} rejected our access token (401) to {} secret {name}: check that the \
                         credential, {}, belongs to the vault's tenant and that AZURE_CLIENT_ID (and \
                         AZURE_TENANT_ID) name the right identity. Key Vault said: {}",
                        op.verb(),
                        self.identity,
                        detail.summary()
                    ),
                    StatusCode::TooManyRequests | StatusCode::ServiceUnavailable => format!(
                        "Key Vault {vault} was still {} after {} retries to {} secret {name}: {} {}",
                        if *status == StatusCode::TooManyRequests { "throttling us" } else { "unavailable" },
                        self.tuning.max_retries,
                        op.verb(),
                        u16::from(*status),
                        detail.summary()
                    ),
                    other => format!(
                        "Key Vault {vault} answered {} to {} secret {name}: {}",
                        u16::from(other),
                        op.verb(),
                        detail.summary()
                    ),
                }
            }
            ErrorKind::Credential => format!(
                "could not get an access token for Key Vault {vault} from the credential ({}): {}",
                self.identity,
                error_chain(err)
            ),
            ErrorKind::Io | ErrorKind::Connection => format!(
                "Key Vault {vault} ({}) could not be reached to {} secret {name} (after retries): {}",
                self.vault_url,
                op.verb(),
                error_chain(err)
            ),
            _ => format!("Key Vault {vault}: cannot {} secret {name}: {}", op.verb(), error_chain(err)),
        };
        StoreError::Backend(without_value(message, value))
    }
}

#[async_trait]
impl SecretStore for KeyVaultSecrets {
    async fn set(&self, name: &str, value: &SecretString) -> StoreResult<String> {
        validate_secret_name(name)?;
        if value.expose().len() > MAX_SECRET_VALUE_BYTES {
            return Err(StoreError::invalid("secret value", format!("longer than {MAX_SECRET_VALUE_BYTES} bytes")));
        }
        self.cache.invalidate(name);
        let result = self.set_version(name, value).await;
        // Again: a read that raced the set must not have cached the old value.
        self.cache.invalidate(name);
        result
    }

    async fn get(&self, name: &str, version: Option<&str>) -> StoreResult<Option<SecretVersion>> {
        validate_secret_name(name)?;
        match version {
            Some(version) => {
                // Key Vault version ids are 32 hex digits; anything else names no version (and
                // must not reach the URL path).
                if version.is_empty() || version.len() > 64 || !version.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Ok(None);
                }
                self.fetch(name, Some(version)).await
            }
            None => {
                let ticket = match self.cache.lookup(name) {
                    Ok(hit) => return Ok(Some(hit)),
                    Err(ticket) => ticket,
                };
                let found = self.fetch(name, None).await?;
                if let Some(latest) = &found {
                    self.cache.store(name, ticket, latest.clone());
                }
                Ok(found)
            }
        }
    }

    async fn versions(&self, name: &str) -> StoreResult<Vec<String>> {
        validate_secret_name(name)?;
        let mut pager = self
            .client
            .list_secret_properties_versions(name, None)
            .map_err(|e| self.error(Op::List, name, &e, None))?;
        let mut versions = Vec::new();
        loop {
            match pager.try_next().await {
                Ok(Some(properties)) => versions.push(VersionKey::of(&properties)),
                Ok(None) => break,
                Err(e) if e.http_status() == Some(StatusCode::NotFound) => return Ok(Vec::new()),
                Err(e) => return Err(self.error(Op::List, name, &e, None)),
            }
        }
        versions.sort();
        Ok(versions.into_iter().map(|v| v.version).collect())
    }

    async fn get_latest_uncached(&self, name: &str) -> StoreResult<Option<SecretVersion>> {
        validate_secret_name(name)?;
        self.fetch(name, None).await
    }

    async fn delete(&self, name: &str) -> StoreResult<()> {
        validate_secret_name(name)?;
        self.cache.invalidate(name);
        let deleted = match self.client.delete_secret(name, None).await {
            Ok(response) => response.into_model().map_err(|e| self.error(Op::Delete, name, &e, None))?,
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => {
                return Err(StoreError::NotFound { what: format!("secret {name}") })
            }
            Err(e) => return Err(self.error(Op::Delete, name, &e, None)),
        };
        self.cache.invalidate(name);
        if deleted.recovery_id.is_none() {
            // Not soft-deleted (a vault from before soft delete was mandatory): already gone.
            return Ok(());
        }
        let level = deleted.attributes.as_ref().and_then(|a| a.recovery_level.as_ref()).map(<&str>::from);
        if level.is_some_and(|level| !level.contains("Purgeable")) {
            tracing::warn!(
                secret = name,
                vault = %self.vault_name,
                recovery_level = level.unwrap_or_default(),
                "the vault does not allow purging (purge protection): the secret stays soft-deleted and its name \
                 cannot be set again until Key Vault purges it"
            );
            return Ok(());
        }
        self.purge_after_delete(name).await
    }
}

fn default_identity_hint() -> String {
    match std::env::var("AZURE_CLIENT_ID") {
        Ok(id) if !id.trim().is_empty() => {
            format!("the user-assigned managed identity with client id {} (AZURE_CLIENT_ID)", id.trim())
        }
        _ => "the app's system-assigned managed identity (or, run locally, the account signed in with `az login`)"
            .to_owned(),
    }
}

/// Removes a secret value from a message, should anything have echoed it.
fn without_value(message: String, value: Option<&SecretString>) -> String {
    match value {
        Some(v) if v.expose().len() >= 4 && message.contains(v.expose()) => message.replace(v.expose(), "[REDACTED]"),
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str) -> SecretVersion {
        SecretVersion { value: SecretString::new(v), version: v.to_owned(), created: Utc::now() }
    }

    #[test]
    fn cache_serves_until_invalidated() {
        let cache = LatestCache::new(Duration::from_secs(30));
        let ticket = cache.lookup("a").unwrap_err();
        cache.store("a", ticket, version("v1"));
        assert_eq!(cache.lookup("a").unwrap().version, "v1");
        cache.invalidate("a");
        assert!(cache.lookup("a").is_err());
    }

    #[test]
    fn cache_ignores_a_read_that_raced_a_write() {
        let cache = LatestCache::new(Duration::from_secs(30));
        let ticket = cache.lookup("a").unwrap_err();
        cache.invalidate("a"); // our own set, while the read was in flight
        cache.store("a", ticket, version("stale"));
        assert!(cache.lookup("a").is_err(), "a read older than the set must not be cached");
        // Another name's invalidation does not block this one for good.
        let ticket = cache.lookup("a").unwrap_err();
        cache.invalidate("b");
        cache.store("a", ticket, version("fresh"));
        assert_eq!(cache.lookup("a").unwrap().version, "fresh");
    }

    #[test]
    fn cache_expires() {
        let cache = LatestCache::new(Duration::from_millis(1));
        let ticket = cache.lookup("a").unwrap_err();
        cache.store("a", ticket, version("v1"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.lookup("a").is_err());
    }

    #[test]
    fn versions_order_by_created_then_written_then_id() {
        let mut keys = [
            VersionKey { created: 10, written: Some(3), version: "a".into() },
            VersionKey { created: 10, written: Some(1), version: "z".into() },
            VersionKey { created: 9, written: Some(9), version: "m".into() },
            VersionKey { created: 10, written: None, version: "b".into() },
        ];
        keys.sort();
        let order: Vec<_> = keys.iter().map(|k| k.version.as_str()).collect();
        assert_eq!(order, ["m", "b", "z", "a"]);
    }

    #[test]
    fn scrub_removes_the_value() {
        let v = SecretString::new("hunter2-secret");
        assert_eq!(without_value("oops hunter2-secret echoed".into(), Some(&v)), "oops [REDACTED] echoed");
        assert_eq!(without_value("nothing here".into(), Some(&v)), "nothing here");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let retry = BoundedRetry::new(&KeyVaultTuning::default());
        assert!(retry.backoff(1) >= Duration::from_millis(500) && retry.backoff(1) < Duration::from_millis(800));
        assert!(retry.backoff(2) >= Duration::from_secs(1));
        assert_eq!(retry.backoff(30), Duration::from_secs(8));
    }
}
