//! Per-user quotas that must be counted durably and, in a cluster, once for
//! every node: the bytes a user's posts store per UTC day.
//!
//! # Contract (every backend)
//! - [`QuotaStore::charge_stored_bytes`] is atomic: of concurrent charges
//!   (from any node), those that fit under the limit are taken, the others
//!   are refused and add nothing.
//! - Counts are durable: they survive a restart of the gateway (embedded: a
//!   table in the store; cluster: a Redis counter per user and day, which
//!   lives as long as Redis keeps its data, and expires two days after the
//!   day it counts).
//! - Each UTC day ([`utc_day`]) counts from zero.

use async_trait::async_trait;

use crate::StoreError;

/// A day's count outlives its day by this long in stores that expire it.
pub const DAY_COUNT_TTL_SECS: u64 = 2 * 86_400;

/// The UTC day of a time: days since the Unix epoch.
pub fn utc_day(now_ms: i64) -> u32 {
    u32::try_from(now_ms.max(0) / 86_400_000).unwrap_or(u32::MAX)
}

/// The outcome of a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charged {
    /// Taken; `used` is the day's count with it.
    Taken {
        /// The day's count after the charge.
        used: u64,
    },
    /// Refused: it would pass the limit; `used` is the day's count, unchanged.
    Refused {
        /// The day's count.
        used: u64,
    },
}

/// Durable per-user counters behind the quotas.
#[async_trait]
pub trait QuotaStore: Send + Sync + 'static {
    /// Adds `bytes` to what `user` stored on `day`, unless the sum would
    /// pass `limit`.
    async fn charge_stored_bytes(
        &self,
        user: &str,
        day: u32,
        bytes: u64,
        limit: u64,
    ) -> Result<Charged, StoreError>;

    /// What `user` stored on `day`.
    async fn stored_bytes(&self, user: &str, day: u32) -> Result<u64, StoreError>;
}
