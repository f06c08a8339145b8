//! Which Entra credential the Azure backend uses: the managed identity in Azure
//! (user-assigned when `AZURE_CLIENT_ID` is set), workload identity where a federated token
//! file is mounted, and the developer's own `az`/`azd` login on a workstation.

use std::sync::{Arc, OnceLock};

use azure_core::credentials::TokenCredential;
use azure_core::http::Transport;
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};

use crate::store::{StoreError, StoreResult};

/// The process's one Entra credential, made on first use and shared by everything that
/// authenticates as the app's identity (the Azure stores, the federated client assertion), so
/// its token cache is shared too. Cheap to clone; a failure to make it is kept as text.
#[derive(Clone)]
pub struct SharedCredential {
    user_assigned_client_id: Option<String>,
    /// The HTTP transport for the identity endpoint (see [`super::transport`]); the SDK's own
    /// when `None`.
    transport: Option<Transport>,
    cell: Arc<OnceLock<Result<Arc<dyn TokenCredential>, String>>>,
}

impl SharedCredential {
    /// `user_assigned_client_id` is `AZURE_CLIENT_ID`, when a user-assigned identity is meant.
    pub fn new(user_assigned_client_id: Option<String>) -> Self {
        Self { user_assigned_client_id, transport: None, cell: Arc::default() }
    }

    /// The same identity, reached over `transport`. Called before first use (by the store
    /// that owns the settings), so the one credential is made with it.
    pub fn with_transport(self, transport: Option<Transport>) -> Self {
        Self { transport, ..self }
    }

    pub fn user_assigned_client_id(&self) -> Option<&str> {
        self.user_assigned_client_id.as_deref()
    }

    pub fn get(&self) -> StoreResult<Arc<dyn TokenCredential>> {
        self.cell
            .get_or_init(|| default_credential(self.user_assigned_client_id.as_deref(), self.transport.as_ref()))
            .clone()
            .map_err(StoreError::Backend)
    }
}

/// Whether the process runs in Azure (App Service / Functions give a managed identity).
fn in_azure() -> bool {
    ["IDENTITY_ENDPOINT", "MSI_ENDPOINT", "WEBSITE_INSTANCE_ID"].iter().any(|v| std::env::var_os(v).is_some())
}

/// The credential [`SharedCredential::get`] will make here, in plain words (`tcbridge check`).
pub fn describe(user_assigned_client_id: Option<&str>) -> String {
    if in_azure() {
        match user_assigned_client_id {
            Some(id) => format!("the user-assigned managed identity {id} (AZURE_CLIENT_ID)"),
            None => "the system-assigned managed identity".to_owned(),
        }
    } else if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        "workload identity (AZURE_FEDERATED_TOKEN_FILE)".to_owned()
    } else {
        "the developer's Azure login (az or azd; outside Azure, no managed identity here)".to_owned()
    }
}

/// The credential for where the process runs (see the module documentation).
fn default_credential(
    user_assigned_client_id: Option<&str>,
    transport: Option<&Transport>,
) -> Result<Arc<dyn TokenCredential>, String> {
    crate::tls::install_crypto_provider();
    let credential: azure_core::Result<Arc<dyn TokenCredential>> = if in_azure() {
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: user_assigned_client_id.map(|id| UserAssignedId::ClientId(id.to_owned())),
            client_options: super::transport::client_options(transport),
        };
        ManagedIdentityCredential::new(Some(options)).map(|c| c as Arc<dyn TokenCredential>)
    } else if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        azure_identity::WorkloadIdentityCredential::new(None).map(|c| c as Arc<dyn TokenCredential>)
    } else {
        DeveloperToolsCredential::new(None).map(|c| c as Arc<dyn TokenCredential>)
    };
    credential.map_err(|e| format!("cannot set up the Azure credential: {e}"))
}
