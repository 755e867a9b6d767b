use thiserror::Error;

/// Why a storage operation failed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend cannot serve now (IO error, server unreachable); the
    /// operation may succeed if retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The input breaks a store rule (e.g. an id the key scheme refuses).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The store was shut down.
    #[error("store closed")]
    Closed,
}

impl StoreError {
    /// Whether the same operation may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Closed)
    }
}
