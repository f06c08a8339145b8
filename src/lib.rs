//! truecontext-bridge: an Azure Functions custom handler that connects TrueContext to Azure.
//! See ARCHITECTURE.md for the map.

pub mod alerts;
pub mod clock;
pub mod config;
pub mod connections;
pub mod functions;
pub mod handlers;
pub mod host;
pub mod naming;
pub mod oauth;
pub mod schedule;
pub mod secret;
pub mod standalone;
pub mod store;
pub mod telemetry;
pub mod tokens;
