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
    /// The backend failed in a way only a restart repairs (a durable commit
    /// failed and the embedded database refuses further writes). The
    /// operation may succeed on a restarted or another node.
    #[error("store failed, restart required: {0}")]
    Failed(String),
}

impl StoreError {
    /// Whether the same operation may succeed later (here or elsewhere).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Closed | StoreError::Failed(_)
        )
    }

    /// Whether this store instance can no longer write; the process should
    /// drain and restart.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Failed(_))
    }
}
