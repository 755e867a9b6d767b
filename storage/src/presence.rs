//! Presence records: each session's start and end per user, for last seen
//! and online-time statistics.
//!
//! # Contract (every backend)
//! - Records are statistics, not messages: a write need not be durable
//!   before it returns (a crash may lose the newest few), but must be
//!   visible to reads once it returned.
//! - A session that never ended cleanly (node crash) keeps `end_ms = 0`.
//! - Live status (who is online now) is not stored here: the gateway keeps
//!   it in memory on one node, and a cluster keeps it in Redis with TTLs.

use async_trait::async_trait;
use qim_proto::v1;

use crate::StoreError;

/// Spans returned by one query at most.
pub const MAX_SPANS: usize = 10_000;

/// Session records per user.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Records that `device` of `user` started a session at `start_ms`
    /// (`end_ms` 0) or ended the one that started at `start_ms`.
    async fn record_session(
        &self,
        user: &str,
        device: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<(), StoreError>;

    /// `user`'s sessions that overlap `[from_ms, to_ms)`, oldest first.
    async fn sessions(
        &self,
        user: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<v1::SessionSpan>, StoreError>;

    /// When `user`'s last ended session ended (0 when none).
    async fn last_seen(&self, user: &str) -> Result<i64, StoreError>;
}
