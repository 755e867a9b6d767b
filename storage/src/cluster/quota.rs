//! Quota counters on the cluster store: one Redis counter per user and day
//! (`{prefix}quota:bytes:{user}:{day}`), shared by every node, changed by
//! one script so a charge is checked and added atomically, and expired
//! [`DAY_COUNT_TTL_SECS`] after it was first written.

use async_trait::async_trait;
use fred::interfaces::KeysInterface as _;
use fred::types::scripts::Script;

use super::ClusterStore;
use crate::StoreError;
use crate::quota::{Charged, DAY_COUNT_TTL_SECS, QuotaStore};
use crate::redis::unavailable;

/// KEYS[1] the counter; ARGV[1] bytes, ARGV[2] limit, ARGV[3] TTL seconds.
/// Returns `{1, used}` when taken, `{0, used}` when refused.
const CHARGE: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local bytes = tonumber(ARGV[1])
if used + bytes > tonumber(ARGV[2]) then return {0, used} end
used = redis.call('INCRBY', KEYS[1], bytes)
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return {1, used}
";

impl ClusterStore {
    pub(super) fn quota_key(&self, user: &str, day: u32) -> String {
        format!("{}quota:bytes:{{{user}}}:{day}", self.prefix)
    }
}

#[async_trait]
impl QuotaStore for ClusterStore {
    async fn charge_stored_bytes(
        &self,
        user: &str,
        day: u32,
        bytes: u64,
        limit: u64,
    ) -> Result<Charged, StoreError> {
        // Lua numbers are doubles: counts stay far below 2^53.
        let reply: Vec<i64> = Script::from_lua(CHARGE)
            .evalsha_with_reload(
                &self.redis,
                vec![self.quota_key(user, day)],
                vec![
                    bytes.to_string(),
                    limit.to_string(),
                    DAY_COUNT_TTL_SECS.to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [1, used] => Ok(Charged::Taken {
                used: u64::try_from(*used).unwrap_or(0),
            }),
            [0, used] => Ok(Charged::Refused {
                used: u64::try_from(*used).unwrap_or(0),
            }),
            _ => Err(StoreError::Corrupt(format!(
                "quota script answered {reply:?}"
            ))),
        }
    }

    async fn stored_bytes(&self, user: &str, day: u32) -> Result<u64, StoreError> {
        let used: Option<u64> = self
            .redis
            .get(self.quota_key(user, day))
            .await
            .map_err(unavailable)?;
        Ok(used.unwrap_or(0))
    }
}
