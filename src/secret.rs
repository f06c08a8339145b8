//! Secret values that cannot be printed.
//!
//! `SecretString` redacts itself in `Debug` and `Display`, zeroes its memory on drop and
//! can only be read through [`SecretString::expose`], which makes every place that touches
//! a secret easy to find with grep. Long-lived secrets (settings such as the function key)
//! are also registered with the log scrubber in [`crate::telemetry`], so even a value that
//! escapes through a `format!` is blanked before it reaches a log line.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

#[derive(Clone, Default)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret itself. Call only where the value must leave the process (a header,
    /// a request body, an encrypted store), never to log or format it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time equality, so a caller guessing a key learns nothing from timing.
    /// (Lengths are not secret: keys have a fixed, public shape.)
    pub fn ct_eq(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([REDACTED])")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other.expose())
    }
}

impl Eq for SecretString {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let secret = SecretString::new("hunter2-very-secret");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{secret}").contains("hunter2"));
        assert!(!format!("{:#?}", Some(&secret)).contains("hunter2"));
    }

    #[test]
    fn compares_in_constant_time() {
        let secret = SecretString::new("abc");
        assert!(secret.ct_eq("abc"));
        assert!(!secret.ct_eq("abd"));
        assert!(!secret.ct_eq("ab"));
        assert!(!secret.ct_eq(""));
    }
}
