//! The sign-in flow's server-side records.
//!
//! `begin` makes the per-flow secrets — `state` (256 bits), a PKCE S256 verifier, an OIDC
//! `nonce` and a browser-binding value — and stores the pending flow under a hash of `state`,
//! with the hash of the binding value, the expected issuer and a 10-minute expiry. The binding
//! value goes to the browser in an HttpOnly cookie; the callback must see both the `state` and
//! that cookie before anything is redeemed, and `take` deletes the record under its ETag so a
//! `state` works once. Results for the page after the redirect are single-view records too.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::provider::ExpectedIssuer;
use crate::secret::SecretString;
use crate::store::{IfMatch, StoreError, Stores, Table, TypedTable};

pub const FLOW_LIFETIME: Duration = Duration::from_secs(600);
pub const RESULT_LIFETIME: Duration = Duration::from_secs(300);
const FLOW_PARTITION: &str = "flow";
const RESULT_PARTITION: &str = "result";
/// Prefix of the browser-binding cookie; the rest of its name ties it to one flow, so two
/// sign-ins in one browser do not overwrite each other.
pub const COOKIE_PREFIX: &str = "tcb_flow_";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingFlow {
    pub connection_id: String,
    pub code_verifier: String,
    pub nonce: String,
    pub expected_issuer: Option<String>,
    pub issuer_is_template: bool,
    pub binding_hash: String,
    pub replace: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl PendingFlow {
    pub fn expected_issuer(&self) -> ExpectedIssuer {
        match (&self.expected_issuer, self.issuer_is_template) {
            (Some(issuer), true) => ExpectedIssuer::TenantTemplate(issuer.clone()),
            (Some(issuer), false) => ExpectedIssuer::Exact(issuer.clone()),
            (None, _) => ExpectedIssuer::None,
        }
    }

    /// Constant-time check that `cookie_value` is this flow's browser-binding value.
    pub fn binding_matches(&self, cookie_value: &str) -> bool {
        let hash = hash_hex(cookie_value);
        hash.as_bytes().ct_eq(self.binding_hash.as_bytes()).into()
    }
}

/// The secrets of a new flow. Only `state`, the PKCE challenge and the nonce leave the server
/// (in the authorization request); the binding value goes to the browser as a cookie.
pub struct NewFlow {
    pub state: SecretString,
    pub code_challenge: String,
    pub nonce: SecretString,
    pub binding: SecretString,
    pub cookie_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("this sign-in is unknown, was already completed, or has expired; start again from the authorize link")]
    Unknown,
    #[error("this sign-in has expired (sign-ins must finish within 10 minutes); start again from the authorize link")]
    Expired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

pub fn hash_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// The cookie name for the flow whose `state` hashes to `state_hash`.
pub fn cookie_name(state_hash: &str) -> String {
    format!("{COOKIE_PREFIX}{}", state_hash.chars().take(16).collect::<String>())
}

/// Creates and stores a pending flow.
pub async fn begin(
    stores: &Stores,
    connection_id: &str,
    issuer: &ExpectedIssuer,
    replace: bool,
) -> Result<NewFlow, FlowError> {
    let state = random_token();
    let verifier = random_token(); // 43 characters of base64url: RFC 7636's range is 43-128
    let nonce = random_token();
    let binding = random_token();
    let code_challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let now = Utc::now();
    let (expected_issuer, issuer_is_template) = match issuer {
        ExpectedIssuer::Exact(i) => (Some(i.clone()), false),
        ExpectedIssuer::TenantTemplate(i) => (Some(i.clone()), true),
        ExpectedIssuer::None => (None, false),
    };
    let record = PendingFlow {
        connection_id: connection_id.to_owned(),
        code_verifier: verifier,
        nonce: nonce.clone(),
        expected_issuer,
        issuer_is_template,
        binding_hash: hash_hex(&binding),
        replace,
        created_at: now,
        expires_at: now + chrono::TimeDelta::from_std(FLOW_LIFETIME).expect("ten minutes fit"),
    };
    let key = hash_hex(&state);
    TypedTable::new(stores.tables.as_ref(), Table::PendingFlows).insert(FLOW_PARTITION, &key, &record).await?;
    Ok(NewFlow {
        cookie_name: cookie_name(&key),
        state: SecretString::new(state),
        code_challenge,
        nonce: SecretString::new(nonce),
        binding: SecretString::new(binding),
    })
}

/// The pending flow for `state`, if it exists (not yet consumed).
pub async fn find(stores: &Stores, state: &str) -> Result<Option<(PendingFlow, crate::store::ETag)>, FlowError> {
    let table = TypedTable::new(stores.tables.as_ref(), Table::PendingFlows);
    Ok(table.get::<PendingFlow>(FLOW_PARTITION, &hash_hex(state)).await?.map(|v| (v.value, v.etag)))
}

/// Consumes the flow: deletes it under its ETag, so of two callbacks racing with the same
/// `state` exactly one proceeds. Checks expiry after consuming, so an expired flow is gone too.
pub async fn consume(
    stores: &Stores,
    state: &str,
    flow: &PendingFlow,
    etag: crate::store::ETag,
) -> Result<(), FlowError> {
    match stores.tables.delete(Table::PendingFlows, FLOW_PARTITION, &hash_hex(state), IfMatch::ETag(etag)).await {
        Ok(()) => {}
        Err(StoreError::NotFound { .. } | StoreError::PreconditionFailed { .. }) => return Err(FlowError::Unknown),
        Err(e) => return Err(e.into()),
    }
    if flow.expires_at <= Utc::now() {
        return Err(FlowError::Expired);
    }
    Ok(())
}

/// What the success page shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectResult {
    pub connection_id: String,
    pub account: String,
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
    pub replaced_account: Option<String>,
    pub next_sync: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

/// Stores a result and returns the unguessable reference for the result page's URL.
pub async fn store_result(stores: &Stores, result: &ConnectResult) -> Result<String, FlowError> {
    let reference = random_token();
    TypedTable::new(stores.tables.as_ref(), Table::PendingFlows)
        .insert(RESULT_PARTITION, &hash_hex(&reference), result)
        .await?;
    Ok(reference)
}

/// Reads a result once: it is deleted as it is shown.
pub async fn take_result(stores: &Stores, reference: &str) -> Result<ConnectResult, FlowError> {
    let table = TypedTable::new(stores.tables.as_ref(), Table::PendingFlows);
    let key = hash_hex(reference);
    let Some(found) = table.get::<ConnectResult>(RESULT_PARTITION, &key).await? else {
        return Err(FlowError::Unknown);
    };
    match stores.tables.delete(Table::PendingFlows, RESULT_PARTITION, &key, IfMatch::ETag(found.etag)).await {
        Ok(()) => {}
        Err(StoreError::NotFound { .. } | StoreError::PreconditionFailed { .. }) => return Err(FlowError::Unknown),
        Err(e) => return Err(e.into()),
    }
    if found.value.expires_at <= Utc::now() {
        return Err(FlowError::Expired);
    }
    Ok(found.value)
}
