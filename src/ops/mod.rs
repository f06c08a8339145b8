//! Operations: what an operator does to a running bridge, over the app (`handlers::App`) and the
//! domain below it, for the command line (`cli/`) and any later HTTP verb to share. Each returns
//! data, never prints: the caller says it its own way.
//!
//! - [`check`]: each dependency with its endpoint and credential, and one harmless probe each.
//! - [`poison`]: list and replay the poison queue.
//! - [`submissions`]: which connections hold data, the landed submissions, one submission's bytes.
//! - [`connections`]: the consented connections, turned off, on, or deleted.

pub mod check;
pub mod connections;
pub mod poison;
pub mod submissions;
