//! The integration tests, as one test binary: each file is a module, and `harness` and
//! `common` are shared by all of them. One binary links the crate (and the Azure SDKs) once
//! instead of once per file, which is most of the build time on a small machine.
//!
//! Run one file's tests with `cargo test --test suite <module>::`, e.g.
//! `cargo test --test suite standalone::`.

mod common;
mod harness;

mod alerts_outbox;
mod azure_binary;
mod azure_blob_queue;
mod azure_end_to_end;
mod azure_keyvault;
mod azure_tables;
mod cas_processes;
mod chaos;
mod cli;
mod connect_flow;
mod demo;
mod function_json;
mod fuzz_corpus;
mod host_protocol;
mod hostile_documents;
mod hostile_run;
mod id_token;
mod id_token_attacks;
mod infra;
mod isolation;
mod landing_props;
mod log_secrets;
mod many_connections;
mod missed_pushes;
mod oidc_peer;
mod operate;
mod package;
mod queue_worker;
mod request_cost;
mod resync;
mod standalone;
mod status_page;
mod storage_requests;
mod store_conformance;
mod sync_connected;
mod sync_processes;
mod sync_walk;
mod token_lifecycle;
mod token_processes;
mod truecontext_client;
mod webhook_auth;
mod webhook_azure;
mod webhook_intake;
mod webhook_processes;
