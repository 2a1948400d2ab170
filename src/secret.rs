//! Token values as a type that cannot be printed. Every credential scopegate handles is a
//! [`Secret`]; its `Debug` and `Display` say `[MASKED]`, so a token cannot reach a log line,
//! an error message or a panic by accident.

use sha2::{Digest, Sha256};
use std::fmt;

/// A credential value. Compare and hash it, never print it. Shared rather than copied: a
/// request's candidates are cloned into its look-ups, its answers and its log record.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Secret(std::sync::Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(std::sync::Arc::from(value.into()))
    }

    /// The raw value, for the one place that must send it (the forge look-up).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A stable digest: the key of every cache that is keyed by a token.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[MASKED]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[MASKED]")
    }
}
