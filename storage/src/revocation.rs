//! [`RevocationStore`]: per user, the time before which that user's login
//! tokens are refused ("revoked before T"), kept where every gateway node
//! reads it.
//!
//! The mark only rises: revoking again with an earlier time changes
//! nothing, so two revocations racing keep the later one.

use async_trait::async_trait;

use crate::StoreError;

/// Revocations of users' tokens.
#[async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    /// Refuses `user`'s tokens issued before `before` (unix seconds) from
    /// now on, durably; returns the mark in force afterwards (the higher of
    /// `before` and an earlier mark).
    async fn revoke_tokens(&self, user: &str, before: u64) -> Result<u64, StoreError>;

    /// The time before which `user`'s tokens are refused (unix seconds; 0:
    /// never revoked).
    async fn tokens_revoked_before(&self, user: &str) -> Result<u64, StoreError>;
}
