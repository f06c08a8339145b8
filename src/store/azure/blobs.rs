//! Blob storage with `azure_storage_blob` 1.x (submission documents).
//!
//! The 1.x storage clients authenticate with an Entra token credential only. Keyed accounts
//! (Azurite, connection strings with `AccountKey` or `SharedAccessSignature`) are reached with
//! an account SAS instead: `SasPolicy` adds it to each request's query string, re-signing
//! before it runs out, so the clients' own URLs never carry it. Error messages strip query
//! strings from any URL they quote (the transport's errors name the request URL).
//!
//! Client options, the SAS policy and error mapping are shared with the queue store, in
//! `service.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::RequestContent;
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobContainerClientListBlobsOptions, BlockBlobClientUploadOptions,
};
use azure_storage_blob::{BlobContainerClient, BlobServiceClient, BlobServiceClientOptions};
use futures::TryStreamExt;

use super::connection::StorageAccount;
use super::service::{backend_error, client_setup, error_code, service_root, setup_error, status, Service};
use crate::store::*;

/// Blob storage, one container per `container` argument (created on first use).
pub struct AzureBlobs {
    service: BlobServiceClient,
    account: String,
}

impl AzureBlobs {
    /// `credential` is used (and required) when the account is reached with a managed identity
    /// ([`StorageAuth::Identity`](super::connection::StorageAuth::Identity)); keyed and SAS accounts ignore it.
    pub fn new(account: &StorageAccount, credential: Option<Arc<dyn TokenCredential>>) -> StoreResult<Self> {
        Self::with_transport(account, credential, None)
    }

    /// As [`Self::new`], over `transport` instead of the SDK's own HTTP client.
    pub fn with_transport(
        account: &StorageAccount,
        credential: Option<Arc<dyn TokenCredential>>,
        transport: Option<azure_core::http::Transport>,
    ) -> StoreResult<Self> {
        let (credential, client_options) = client_setup(account, credential, Service::Blob, transport)?;
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
