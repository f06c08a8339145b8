//! Which Entra credential the Azure backend uses: the managed identity in Azure
//! (user-assigned when `AZURE_CLIENT_ID` is set), workload identity where a federated token
//! file is mounted, and the developer's own `az`/`azd` login on a workstation.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};

use crate::store::{StoreError, StoreResult};

pub fn default_credential(user_assigned_client_id: Option<&str>) -> StoreResult<Arc<dyn TokenCredential>> {
    let in_azure =
        ["IDENTITY_ENDPOINT", "MSI_ENDPOINT", "WEBSITE_INSTANCE_ID"].iter().any(|v| std::env::var_os(v).is_some());
    let credential: azure_core::Result<Arc<dyn TokenCredential>> = if in_azure {
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: user_assigned_client_id.map(|id| UserAssignedId::ClientId(id.to_owned())),
            ..Default::default()
        };
        ManagedIdentityCredential::new(Some(options)).map(|c| c as Arc<dyn TokenCredential>)
    } else if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        azure_identity::WorkloadIdentityCredential::new(None).map(|c| c as Arc<dyn TokenCredential>)
    } else {
        DeveloperToolsCredential::new(None).map(|c| c as Arc<dyn TokenCredential>)
    };
    credential.map_err(|e| StoreError::Backend(format!("cannot set up the Azure credential: {e}")))
}
