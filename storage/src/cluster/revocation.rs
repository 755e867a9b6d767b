//! The cluster backend's [`RevocationStore`]: one Redis key per user,
//! `<prefix>revoked:{<user>}` → unix seconds, read by every node at each
//! login and token refresh.
//!
//! Raised by a script (the mark never goes down) and kept without expiry.
//! The mark lives as long as Redis keeps its data: run the cluster's Redis
//! with persistence (AOF) for revocations to survive a Redis restart.

use async_trait::async_trait;
use fred::interfaces::{KeysInterface as _, LuaInterface as _};

use super::ClusterStore;
use crate::StoreError;
use crate::redis::unavailable;
use crate::revocation::RevocationStore;

/// Raises the mark in `KEYS[1]` to `ARGV[1]`; returns the mark.
const RAISE: &str = r"
local old = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local new = tonumber(ARGV[1])
if new > old then
  redis.call('SET', KEYS[1], ARGV[1])
  return new
end
return old
";

impl ClusterStore {
    fn revoked_key(&self, user: &str) -> Result<String, StoreError> {
        if !qim_proto::ids::is_valid_id(user) {
            return Err(StoreError::Invalid("bad user id".into()));
        }
        Ok(format!("{}revoked:{{{user}}}", self.prefix))
    }
}

#[async_trait]
impl RevocationStore for ClusterStore {
    async fn revoke_tokens(&self, user: &str, before: u64) -> Result<u64, StoreError> {
        let key = self.revoked_key(user)?;
        // Lua numbers are doubles: marks stay far below 2^53 (unix seconds).
        let mark: i64 = self
            .redis
            .eval(RAISE, vec![key], vec![before.to_string()])
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(mark).unwrap_or(0))
    }

    async fn tokens_revoked_before(&self, user: &str) -> Result<u64, StoreError> {
        let key = self.revoked_key(user)?;
        let mark: Option<String> = self.redis.get(key).await.map_err(unavailable)?;
        mark.map_or(Ok(0), |m| {
            m.parse()
                .map_err(|_| StoreError::Corrupt(format!("revocation mark {m:?}")))
        })
    }
}
