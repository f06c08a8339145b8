//! The store: embedded (SQLite and files) or Azure (Storage by connection string or identity,
//! Key Vault), and the transport settings for local stand-ins.

use super::*;

#[derive(Debug, Clone)]
pub struct AzureStorageSettings {
    /// `AzureWebJobsStorage` as a connection string (it may hold an account key).
    pub connection_string: Option<SecretString>,
    pub account_name: Option<String>,
    pub table_service_uri: Option<Url>,
    pub blob_service_uri: Option<Url>,
    pub queue_service_uri: Option<Url>,
    /// A user-assigned managed identity's client id (`AZURE_CLIENT_ID`).
    pub managed_identity_client_id: Option<String>,
}

impl AzureStorageSettings {
    /// True when the settings point at a real account, not only at the local emulator the
    /// Functions template names by default.
    fn names_a_cloud_account(&self) -> bool {
        let real_connection = self
            .connection_string
            .as_ref()
            .is_some_and(|c| !c.expose().trim().eq_ignore_ascii_case("UseDevelopmentStorage=true"));
        real_connection
            || self.account_name.is_some()
            || self.table_service_uri.is_some()
            || self.blob_service_uri.is_some()
            || self.queue_service_uri.is_some()
    }

    fn is_configured(&self) -> bool {
        self.connection_string.is_some() || self.names_a_cloud_account()
    }
}

/// How the embedded store makes a commit durable (SQLite's `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalSync {
    /// fsync at every commit: survives power loss.
    Full,
    /// fsync at checkpoints: survives the process being killed, not power loss.
    Normal,
}

/// Which storage backend: the embedded one, or Azure Storage with Key Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Local,
    Azure,
}

impl StoreKind {
    /// The setting's own spelling (`STORE=local`), as status and start-up lines show it.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::Azure => "azure",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub kind: StoreKind,
    pub local_path: PathBuf,
    pub local_key: Option<SecretString>,
    /// `LOCAL_STORE_SYNC`: `full` (default: a commit survives power loss) or `normal` (it
    /// survives the process being killed, not the machine losing power; fewer fsyncs).
    pub local_sync: LocalSync,
    pub azure: AzureStorageSettings,
    pub keyvault_uri: Option<Url>,
    /// `TLS_EXTRA_CA_FILE`: a PEM bundle the Azure clients (Key Vault, Blob, Queue, the
    /// managed-identity endpoint) trust besides the system roots. Only for local stand-ins
    /// (a simulator's test CA): refused unless every Azure endpoint is on this machine.
    pub tls_extra_ca_file: Option<PathBuf>,
}

pub(super) fn parse_store(p: &mut Parser<'_>) -> StoreSettings {
    let azure = AzureStorageSettings {
        connection_string: p.secret("AzureWebJobsStorage"),
        account_name: p.text("AzureWebJobsStorage__accountName"),
        table_service_uri: p.url("AzureWebJobsStorage__tableServiceUri", "https://<account>.table.core.windows.net"),
        blob_service_uri: p.url("AzureWebJobsStorage__blobServiceUri", "https://<account>.blob.core.windows.net"),
        queue_service_uri: p.url("AzureWebJobsStorage__queueServiceUri", "https://<account>.queue.core.windows.net"),
        managed_identity_client_id: p.text("AZURE_CLIENT_ID"),
    };
    if let Some(conn) = &azure.connection_string {
        if !looks_like_connection_string(conn.expose()) {
            p.problem(
                "AzureWebJobsStorage",
                "is not a storage connection string (the value is not shown)",
                "UseDevelopmentStorage=true, or the storage account's connection string from the portal",
            );
        }
    }
    let default_kind = if azure.names_a_cloud_account() { StoreKind::Azure } else { StoreKind::Local };
    let problems_before = p.problems.len();
    let kind = p.choice("STORE", default_kind, &[("local", StoreKind::Local), ("azure", StoreKind::Azure)]);
    // An unreadable STORE is reported once; what azure would need is not piled on top.
    let store_readable = p.problems.len() == problems_before;
    let local_key = p.secret("LOCAL_STORE_KEY");
    if let Some(key) = &local_key {
        use base64::Engine;
        let valid = base64::engine::general_purpose::STANDARD.decode(key.expose()).is_ok_and(|k| k.len() == 32);
        if !valid {
            p.problem(
                "LOCAL_STORE_KEY",
                "must be the base64 of exactly 32 bytes (the value is not shown)",
                "the output of `openssl rand -base64 32`",
            );
        }
    }
    let keyvault_uri = p.url("KEYVAULT_URI", "https://<vault-name>.vault.azure.net");
    if kind == StoreKind::Azure && store_readable {
        if !azure.is_configured() {
            p.problem(
                "AzureWebJobsStorage",
                "STORE=azure needs a storage connection string or AzureWebJobsStorage__accountName (managed identity)",
                "UseDevelopmentStorage=true",
            );
        }
        if keyvault_uri.is_none() && p.get("KEYVAULT_URI").is_none() {
            p.problem(
                "KEYVAULT_URI",
                "STORE=azure keeps refresh tokens in Key Vault; name the vault",
                "https://<vault-name>.vault.azure.net",
            );
        }
    }
    StoreSettings {
        kind,
        local_path: p
            .text("LOCAL_STORE_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCAL_STORE_PATH)),
        local_key,
        local_sync: p.choice(
            "LOCAL_STORE_SYNC",
            LocalSync::Full,
            &[("full", LocalSync::Full), ("normal", LocalSync::Normal)],
        ),
        tls_extra_ca_file: parse_extra_ca(p, &azure, keyvault_uri.as_ref()),
        azure,
        keyvault_uri,
    }
}

/// `TLS_EXTRA_CA_FILE`: read now so a wrong file is a start-up problem, and refused unless
/// every Azure endpoint is a loopback one: trusting an extra CA for a real vault or account
/// would let whoever holds that CA's key read the refresh tokens.
pub(super) fn parse_extra_ca(p: &mut Parser<'_>, azure: &AzureStorageSettings, vault: Option<&Url>) -> Option<PathBuf> {
    const NAME: &str = "TLS_EXTRA_CA_FILE";
    const EXAMPLE: &str = "/path/to/test-ca.pem (local simulators only)";
    let path = PathBuf::from(p.get(NAME)?);
    match std::fs::read(&path) {
        Err(e) => p.problem(NAME, format!("cannot read {}: {e}", path.display()), EXAMPLE),
        Ok(pem) if crate::tls::pem_certificates(&pem).map_or(true, |certs| certs.is_empty()) => {
            p.problem(NAME, format!("{} holds no PEM certificate", path.display()), EXAMPLE)
        }
        Ok(_) => {}
    }
    let remote = remote_azure_endpoints(p, azure, vault);
    if !remote.is_empty() {
        p.problem(
            NAME,
            format!(
                "an extra CA is trusted only when every Azure endpoint is on this machine; not local: {}",
                remote.join(", ")
            ),
            EXAMPLE,
        );
    }
    Some(path)
}

/// The Azure endpoints an extra CA would apply to that are not loopback, by setting name.
pub(super) fn remote_azure_endpoints(p: &Parser<'_>, azure: &AzureStorageSettings, vault: Option<&Url>) -> Vec<String> {
    let mut remote = Vec::new();
    let mut check = |name: &str, url: Option<&Url>| {
        if url.is_some_and(|u| !is_loopback(u)) {
            remote.push(name.to_owned());
        }
    };
    check("KEYVAULT_URI", vault);
    check("AzureWebJobsStorage__tableServiceUri", azure.table_service_uri.as_ref());
    check("AzureWebJobsStorage__blobServiceUri", azure.blob_service_uri.as_ref());
    check("AzureWebJobsStorage__queueServiceUri", azure.queue_service_uri.as_ref());
    for name in ["IDENTITY_ENDPOINT", "MSI_ENDPOINT"] {
        let url = p.get(name).map(|text| Url::parse(text).ok());
        if url.as_ref().is_some_and(|u| u.as_ref().is_none_or(|u| !is_loopback(u))) {
            remote.push(name.to_owned());
        }
    }
    if azure.account_name.is_some() && azure.blob_service_uri.is_none() {
        remote.push("AzureWebJobsStorage__accountName (the cloud endpoints)".to_owned());
    }
    if let Some(conn) = &azure.connection_string {
        if !connection_string_is_local(conn.expose()) {
            remote.push("AzureWebJobsStorage".to_owned());
        }
    }
    remote
}

/// Whether a storage connection string names only loopback endpoints (Azurite's shortcut, or
/// explicit `…Endpoint=` values); an account name with no endpoints means the cloud.
pub(super) fn connection_string_is_local(text: &str) -> bool {
    let text = text.trim();
    if text.eq_ignore_ascii_case("UseDevelopmentStorage=true") {
        return true;
    }
    let endpoints: Vec<&str> = text
        .split(';')
        .filter_map(|part| part.split_once('='))
        .filter(|(key, _)| key.trim().ends_with("Endpoint"))
        .map(|(_, value)| value.trim())
        .collect();
    !endpoints.is_empty() && endpoints.iter().all(|e| Url::parse(e).is_ok_and(|u| is_loopback(&u)))
}

pub(super) fn looks_like_connection_string(text: &str) -> bool {
    let text = text.trim();
    text.eq_ignore_ascii_case("UseDevelopmentStorage=true")
        || text.split(';').filter(|part| !part.trim().is_empty()).all(|part| part.contains('='))
            && (text.contains("AccountName=") || text.contains("Endpoint="))
}
