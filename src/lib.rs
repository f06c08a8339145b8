//! truecontext-bridge: an Azure Functions custom handler that connects TrueContext to Azure.
//!
//! # Map
//!
//! Layers, top to bottom; a module uses only modules below its own layer
//! (`scripts/check-layers.py` holds the order and fails CI when an import goes up or sideways).
//! ARCHITECTURE.md walks through how a request, a token, a sync and a push flow through them.
//!
//! **The command line**: `main.rs` (the `tcbridge` binary) parses it and starts the runtime;
//! [`cli`] has one file per verb (`anyhow` only there), over [`ops`]: what an operator does
//! (check, poison, submissions, connections), as data.
//!
//! **Front doors** turn what arrives into plain calls on the handlers:
//! - [`host`]: behind the Functions host, its invocation envelopes.
//! - [`standalone`]: plain HTTP under `/api/`, its own bounded server, the function key, the
//!   supervised timer, queue worker, housekeeping and counters.
//!
//! **Handlers** say what each function does:
//! - [`handlers`]: [`handlers::App`] is the composition root (settings, stores, the OAuth
//!   runtime, the token service) and matches [`functions::FunctionId`] exhaustively; each
//!   function is one file (`status/` one way: the function, its page, the report).
//!
//! **Domain** modules get their parts passed in and never reach back up:
//! - [`tokens`]: a fresh access token for any caller on any instance, never burning a refresh
//!   token.
//! - [`connections`]: consented connections, their records and their token sets.
//! - [`oauth`]: the client side of OAuth 2.0 / OpenID Connect: provider discovery, the token
//!   endpoint, JWKS and id_token validation, the sign-in flow's records.
//! - [`alerts`]: [`alerts::AlertKind`] (each with its advice and its Azure Monitor rule); alerts
//!   raised once and cleared when the cause is gone; the table is the outbox of the alert webhook.
//! - [`truecontext`]: the only code that speaks TrueContext's HTTP: typed calls, the daily call
//!   budget and the 402 stop, the cluster-wide call cap (slots given back by a guard), the
//!   credentials `TRUECONTEXT_AUTH` names, [`truecontext::StopClass`].
//! - [`landing`]: the one path by which any submission becomes stored data (raw document,
//!   normalised record, media, index row, landed event), idempotent and monotonic; a document is
//!   read once (`prepare`); the quarantine of documents that can never land.
//! - [`sync`]: the incremental, skip-proof walk of one connection's submissions, and its runs
//!   (the connection's lease, the last-run record, the stall alert).
//! - [`webhook`]: what a push does: the caller verified, the body durable and queued before it
//!   is acknowledged, processed into the landing, counted for status; the incoming queue's one
//!   message type ([`webhook::IncomingMessage`]).
//!
//! **Storage, configuration and telemetry**:
//! - [`store`]: the four storage traits with an embedded ([`store::local`]) and an Azure
//!   ([`store::azure`]) backend, and leases ([`store::lease`], held as one scope).
//! - [`telemetry`]: logging, the secret scrubber, per-invocation log capture, the isolation of
//!   a unit of work.
//! - [`config`]: every setting, typed and validated, one file per section; `settings.tsv` is
//!   the one table of settings.
//! - `simulator` (cargo feature `demo`): a TrueContext simulator for the demo and the tests; it
//!   uses nothing of ours but the TLS provider.
//!
//! **Leaves**: [`functions`] (the function table), [`schedule`] (NCRONTAB), [`secret`]
//! (`SecretString`), [`clock`] (injectable time), [`naming`] (Azure's naming rules,
//! [`naming::ConnectionId`] and [`naming::RecordId`]), [`tls`] (the one TLS crypto provider).

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
