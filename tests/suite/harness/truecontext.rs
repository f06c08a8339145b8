//! The TrueContext simulator lives in the crate (`truecontext_bridge::simulator`, cargo feature
//! `demo`) because `tcbridge serve --standalone --demo` runs it too; the tests use it from there.
pub use truecontext_bridge::simulator::*;
