//! Where the storage account is and how to authenticate to it, from the settings the
//! Functions host itself reads: `AzureWebJobsStorage` as a connection string (an account key,
//! a SAS, or `UseDevelopmentStorage=true` for Azurite), or the identity-based
//! `AzureWebJobsStorage__accountName` / `__tableServiceUri` / `__blobServiceUri` /
//! `__queueServiceUri` with a managed identity.

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

use crate::config::AzureStorageSettings;
use crate::secret::SecretString;
use crate::store::{StoreError, StoreResult};

/// Azurite's well-known development account (public, documented by Microsoft).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[derive(Debug, Clone)]
pub enum StorageAuth {
    /// Shared key from a connection string (Azurite, or an account with keys enabled).
    AccountKey(SecretString),
    /// A SAS token from a connection string, without the leading `?`.
    Sas(SecretString),
    /// An Entra token for the managed identity (or the developer's login).
    Identity,
}

#[derive(Debug, Clone)]
pub struct StorageAccount {
    pub name: String,
    pub auth: StorageAuth,
    /// Service endpoints, without a trailing slash (a trailing slash makes `//container`,
    /// which Azurite refuses with a 400).
    pub table: Url,
    pub blob: Url,
    pub queue: Url,
}

impl StorageAccount {
    pub fn from_settings(settings: &AzureStorageSettings) -> StoreResult<Self> {
        if let Some(connection) = &settings.connection_string {
            let trimmed = connection.expose().trim();
            let identity_configured = settings.account_name.is_some() || settings.table_service_uri.is_some();
            // The Functions template's `UseDevelopmentStorage=true` gives way to explicit
            // identity-based settings, as it does for the host.
            if !(identity_configured && trimmed.eq_ignore_ascii_case("UseDevelopmentStorage=true")) {
                return Self::from_connection_string(trimmed);
            }
        }
        let name = match (&settings.account_name, &settings.table_service_uri) {
            (Some(name), _) => name.clone(),
            (None, Some(uri)) => uri
                .host_str()
                .and_then(|h| h.split('.').next())
                .map(str::to_owned)
                .ok_or_else(|| invalid("AzureWebJobsStorage__tableServiceUri has no account host name"))?,
            (None, None) => return Err(invalid(
                "set AzureWebJobsStorage (a connection string) or AzureWebJobsStorage__accountName (managed identity)",
            )),
        };
        let default = |service: &str| Url::parse(&format!("https://{name}.{service}.core.windows.net"));
        let pick = |explicit: &Option<Url>, service: &str| -> StoreResult<Url> {
            match explicit {
                Some(url) => Ok(trim_slash(url.clone())),
                None => default(service).map_err(|_| invalid("the account name is not a valid host name")),
            }
        };
        Ok(StorageAccount {
            table: pick(&settings.table_service_uri, "table")?,
            blob: pick(&settings.blob_service_uri, "blob")?,
            queue: pick(&settings.queue_service_uri, "queue")?,
            name,
            auth: StorageAuth::Identity,
        })
    }

    /// Parses a storage connection string. Error messages never include the string itself.
    pub fn from_connection_string(text: &str) -> StoreResult<Self> {
        let mut fields = std::collections::HashMap::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| invalid("a part of it has no '='"))?;
            fields.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        if fields.get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            let host =
                fields.get("developmentstorageproxyuri").cloned().unwrap_or_else(|| "http://127.0.0.1".to_owned());
            let endpoint = |port: u16| parse_endpoint(&format!("{host}:{port}/{DEV_ACCOUNT}"));
            return Ok(StorageAccount {
                name: DEV_ACCOUNT.into(),
                auth: StorageAuth::AccountKey(SecretString::new(DEV_ACCOUNT_KEY)),
                blob: endpoint(10000)?,
                queue: endpoint(10001)?,
                table: endpoint(10002)?,
            });
        }
        let name = fields.get("accountname").cloned();
        let auth = if let Some(key) = fields.get("accountkey") {
            if base64::engine::general_purpose::STANDARD.decode(key).is_err() {
                return Err(invalid("AccountKey is not base64"));
            }
            StorageAuth::AccountKey(SecretString::new(key.clone()))
        } else if let Some(sas) = fields.get("sharedaccesssignature") {
            StorageAuth::Sas(SecretString::new(sas.trim_start_matches('?')))
        } else {
            return Err(invalid("it has neither AccountKey nor SharedAccessSignature"));
        };
        let protocol = fields.get("defaultendpointsprotocol").map(String::as_str).unwrap_or("https");
        let suffix = fields.get("endpointsuffix").map(String::as_str).unwrap_or("core.windows.net");
        let endpoint = |explicit: &str, service: &str| -> StoreResult<Url> {
            match (fields.get(explicit), &name) {
                (Some(url), _) => parse_endpoint(url),
                (None, Some(name)) => parse_endpoint(&format!("{protocol}://{name}.{service}.{suffix}")),
                (None, None) => Err(invalid("it has neither AccountName nor explicit endpoints")),
            }
        };
        let table = endpoint("tableendpoint", "table")?;
        let (blob, queue) = (endpoint("blobendpoint", "blob")?, endpoint("queueendpoint", "queue")?);
        let name = match name {
            Some(name) => name,
            // Explicit endpoints only: the account is the host's first label, or the first path
            // segment for emulator-style URLs (http://127.0.0.1:10002/devstoreaccount1).
            None => account_from_endpoint(&table).ok_or_else(|| invalid("cannot tell the account name"))?,
        };
        Ok(StorageAccount { blob, queue, table, name, auth })
    }

    pub fn is_emulator(&self) -> bool {
        self.name == DEV_ACCOUNT || self.table.host_str().is_some_and(|h| h == "127.0.0.1" || h == "localhost")
    }

    /// An account SAS for the blob, queue and table services, signed with the account key: the
    /// storage SDK 1.x clients (and our Table client on the same pipeline) take only Entra
    /// credentials, so keyed accounts (Azurite) are reached with a SAS in the URL instead. Returns the query string without `?`.
    pub fn account_sas(&self, expiry: DateTime<Utc>) -> StoreResult<Option<SecretString>> {
        match &self.auth {
            StorageAuth::AccountKey(key) => Ok(Some(sign_account_sas(&self.name, key, expiry)?)),
            StorageAuth::Sas(sas) => Ok(Some(sas.clone())),
            StorageAuth::Identity => Ok(None),
        }
    }
}

const SAS_VERSION: &str = "2022-11-02";

/// Account SAS (services blob+queue+table, all resource types, the permissions we use), per
/// "Create an account SAS" (string-to-sign for version 2020-12-06 and later).
fn sign_account_sas(account: &str, key: &SecretString, expiry: DateTime<Utc>) -> StoreResult<SecretString> {
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(key.expose())
        .map_err(|_| invalid("AccountKey is not base64"))?;
    let (permissions, services, resource_types) = ("rwdlacup", "bqt", "sco");
    let start = (Utc::now() - chrono::TimeDelta::minutes(5)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let expiry = expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let protocol = "https,http";
    let to_sign = format!(
        "{account}\n{permissions}\n{services}\n{resource_types}\n{start}\n{expiry}\n\n{protocol}\n{SAS_VERSION}\n\n"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_bytes).map_err(|_| invalid("AccountKey has a bad length"))?;
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", SAS_VERSION)
        .append_pair("ss", services)
        .append_pair("srt", resource_types)
        .append_pair("sp", permissions)
        .append_pair("st", &start)
        .append_pair("se", &expiry)
        .append_pair("spr", protocol)
        .append_pair("sig", &signature)
        .finish();
    Ok(SecretString::new(query))
}

fn parse_endpoint(text: &str) -> StoreResult<Url> {
    let url = Url::parse(text).map_err(|_| invalid("an endpoint in it is not a URL"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(invalid("an endpoint in it is not http(s)"));
    }
    Ok(trim_slash(url))
}

fn trim_slash(mut url: Url) -> Url {
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    url
}

fn account_from_endpoint(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    if host == "127.0.0.1" || host == "localhost" {
        url.path_segments()?.next().filter(|s| !s.is_empty()).map(str::to_owned)
    } else {
        host.split('.').next().map(str::to_owned)
    }
}

fn invalid(reason: &str) -> StoreError {
    StoreError::invalid("AzureWebJobsStorage", reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_storage_is_azurite_on_its_default_ports() {
        let account = StorageAccount::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(account.name, DEV_ACCOUNT);
        assert_eq!(account.table.as_str(), "http://127.0.0.1:10002/devstoreaccount1");
        assert_eq!(account.blob.as_str(), "http://127.0.0.1:10000/devstoreaccount1");
        assert!(matches!(account.auth, StorageAuth::AccountKey(_)));
    }

    #[test]
    fn explicit_endpoints_and_cloud_accounts() {
        let text = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_ACCOUNT_KEY};\
             BlobEndpoint=http://127.0.0.1:4100/devstoreaccount1/;QueueEndpoint=http://127.0.0.1:4101/devstoreaccount1;\
             TableEndpoint=http://127.0.0.1:4102/devstoreaccount1;"
        );
        let account = StorageAccount::from_connection_string(&text).unwrap();
        assert_eq!(account.blob.as_str(), "http://127.0.0.1:4100/devstoreaccount1", "trailing slash removed");
        let cloud = StorageAccount::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(cloud.queue.as_str(), "https://acct.queue.core.windows.net/");
    }

    #[test]
    fn bad_connection_strings_name_the_problem_but_not_the_value() {
        for text in ["garbage", "AccountName=a", "AccountName=a;AccountKey=!!notbase64!!"] {
            let err = StorageAccount::from_connection_string(text).unwrap_err().to_string();
            assert!(err.contains("AzureWebJobsStorage"), "{err}");
            assert!(!err.contains("notbase64"), "{err}");
        }
    }

    #[test]
    fn identity_based_settings_derive_service_urls() {
        let settings = AzureStorageSettings {
            connection_string: Some(SecretString::new("UseDevelopmentStorage=true")),
            account_name: Some("prodacct".into()),
            table_service_uri: None,
            blob_service_uri: None,
            queue_service_uri: None,
            managed_identity_client_id: None,
        };
        let account = StorageAccount::from_settings(&settings).unwrap();
        assert!(matches!(account.auth, StorageAuth::Identity));
        assert_eq!(account.table.as_str(), "https://prodacct.table.core.windows.net/");
    }

    #[test]
    fn account_sas_is_signed_and_complete() {
        let account = StorageAccount::from_connection_string("UseDevelopmentStorage=true").unwrap();
        let sas = account.account_sas(Utc::now() + chrono::TimeDelta::hours(1)).unwrap().unwrap();
        for part in ["sv=2022-11-02", "ss=bq", "srt=sco", "sp=rwdlacup", "sig="] {
            assert!(sas.expose().contains(part), "{part}");
        }
    }
}
