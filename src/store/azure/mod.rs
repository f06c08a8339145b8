//! The Azure backend (`STORE=azure`): Table storage, Blob storage, Queue storage and Key Vault,
//! with account keys (Azurite), SAS, or a managed identity.

pub mod blobs;
pub mod connection;
pub mod credential;
pub mod keyvault;
pub mod queues;
mod service;
pub mod tables;
pub mod transport;

use std::sync::Arc;

use crate::config::{StoreKind, StoreSettings};
use crate::store::{StoreError, StoreResult, Stores};

/// Table names are `tcbridge<name>`, so the app's tables stand out in a shared account.
pub const TABLE_PREFIX: &str = "tcbridge";

/// The Azure store from the settings: storage by connection string or managed identity, and
/// Key Vault (`KEYVAULT_URI`) through the identity.
pub fn open(settings: &StoreSettings, identity: credential::SharedCredential) -> StoreResult<Stores> {
    let account = connection::StorageAccount::from_settings(&settings.azure)?;
    let vault = settings.keyvault_uri.as_ref().ok_or_else(|| {
        StoreError::invalid("KEYVAULT_URI", "STORE=azure keeps secrets in Key Vault; set KEYVAULT_URI")
    })?;
    let transport = transport::from_settings(settings)?;
    let identity = identity.with_transport(transport.clone());
    let client_id = identity.user_assigned_client_id().map(str::to_owned);
    let credential = identity.get()?;
    let storage_credential = matches!(account.auth, connection::StorageAuth::Identity).then(|| credential.clone());
    let options = transport::client_options(transport.as_ref());
    let mut secrets = keyvault::KeyVaultSecrets::new(vault.as_str(), credential, Some(options))?;
    if let Some(id) = &client_id {
        secrets = secrets.with_identity_hint(format!("the managed identity with client id {id}"));
    }
    Ok(Stores {
        kind: StoreKind::Azure,
        tables: Arc::new(tables::AzureTables::with_transport(
            &account,
            storage_credential.clone(),
            TABLE_PREFIX,
            transport.clone(),
        )?),
        blobs: Arc::new(blobs::AzureBlobs::with_transport(&account, storage_credential.clone(), transport.clone())?),
        queues: Arc::new(queues::AzureQueues::with_transport(&account, storage_credential, transport)?),
        secrets: Arc::new(secrets),
        identity,
    })
}
