//! The Azure backend (`STORE=azure`): Table storage, Blob storage, Queue storage and Key Vault,
//! with account keys (Azurite), SAS, or a managed identity.

pub mod blobs;
pub mod connection;
pub mod credential;
pub mod queues;
pub mod tables;
