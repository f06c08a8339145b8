//! truecontext-bridge: an Azure Functions custom handler that connects TrueContext to Azure.
//!
//! # Map
//!
//! Layers, top to bottom; a module uses only modules below its own layer
//! (`scripts/check-layers.py` holds the order and fails CI when an import goes up or sideways).
//! ARCHITECTURE.md walks through how a request, a token, a sync and a push flow through them.
//!
//! **Front doors** turn what arrives into plain calls on the handlers:
//! - `main.rs` (the `tcbridge` binary): the CLI, `anyhow` only there.
//! - [`host`]: behind the Functions host, its invocation envelopes.
//! - [`standalone`]: plain HTTP under `/api/`, the function key, the in-process timer and queue.
//!
//! **Handlers** say what each function does:
//! - [`handlers`]: [`handlers::App`] is the composition root (settings, stores, the OAuth
//!   runtime, the token service); each function is one file.
//!
//! **Domain** modules get their parts passed in and never reach back up:
//! - [`tokens`]: a fresh access token for any caller on any instance, never burning a refresh
//!   token.
//! - [`connections`]: consented connections, their records and their token sets.
//! - [`oauth`]: the client side of OAuth 2.0 / OpenID Connect: provider discovery, the token
//!   endpoint, JWKS and id_token validation, the sign-in flow's records.
//! - [`alerts`]: alerts raised once and cleared when the cause is gone; the table is the outbox
//!   of the alert webhook.
//! - [`truecontext`]: the only code that speaks TrueContext's HTTP: typed calls, the daily call
//!   budget and the 402 stop, the cluster-wide call cap.
//! - [`landing`]: the one path by which any submission becomes stored data (raw document,
//!   normalised record, media, index row, landed event), idempotent and monotonic.
//! - [`sync`]: the incremental, skip-proof walk of one connection's submissions, and its runs
//!   (the connection's lease, the last-run record, the stall alert).
//! - [`webhook`]: what a push does: the caller verified, the body durable and queued before it
//!   is acknowledged, processed into the landing, counted for status.
//!
//! **Storage, configuration and telemetry**:
//! - [`store`]: the four storage traits with an embedded ([`store::local`]) and an Azure
//!   ([`store::azure`]) backend, and leases ([`store::lease`]).
//! - [`telemetry`]: logging, the secret scrubber, per-invocation log capture.
//! - [`config`]: every setting, typed and validated.
//! - `simulator` (cargo feature `demo`): a TrueContext simulator for the demo and the tests; it
//!   uses nothing of ours but the TLS provider.
//!
//! **Leaves**: [`functions`] (the function table), [`schedule`] (NCRONTAB), [`secret`]
//! (`SecretString`), [`clock`] (injectable time), [`naming`] (Azure's naming rules), [`tls`] (the
//! one TLS crypto provider).

// Outside text is never cut or indexed by position: a byte index inside a character panics,
// and an index past the end does too (issue 20: a French date once stopped processing).
#![cfg_attr(not(test), deny(clippy::string_slice, clippy::indexing_slicing))]

pub mod alerts;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod functions;
pub mod handlers;
pub mod host;
pub mod landing;
pub mod naming;
pub mod oauth;
pub mod ops;
pub mod schedule;
pub mod secret;
#[cfg(feature = "demo")]
pub mod simulator;
pub mod standalone;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod truecontext;
pub mod webhook;
