//! Quota counters on the embedded store: one `quota_bytes` row per user and
//! day, read, added to and written under one lock. The write goes to the
//! journal and is made durable by the writer's next sync (the sync of the
//! post it was charged for), or at the latest when the store is closed.

use async_trait::async_trait;

use super::EmbeddedStore;
use super::tables::{check_key_part, quota_key, unavailable};
use crate::StoreError;
use crate::quota::{Charged, QuotaStore};

impl EmbeddedStore {
    fn read_count(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.tables.quota_bytes.get(key).map_err(unavailable)? {
            Some(value) => {
                let bytes: [u8; 8] = value
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("quota count is not 8 bytes".into()))?;
                Ok(u64::from_be_bytes(bytes))
            }
            None => Ok(0),
        }
    }
}

#[async_trait]
impl QuotaStore for EmbeddedStore {
    async fn charge_stored_bytes(
        &self,
        user: &str,
        day: u32,
        bytes: u64,
        limit: u64,
    ) -> Result<Charged, StoreError> {
        check_key_part(user)?;
        self.disk.check()?;
        let key = quota_key(user, day);
        let _one_at_a_time = self
            .quota_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let used = self.read_count(&key)?;
        let after = used.saturating_add(bytes);
        if after > limit {
            return Ok(Charged::Refused { used });
        }
        self.tables
            .quota_bytes
            .insert(key, after.to_be_bytes())
            .map_err(unavailable)?;
        Ok(Charged::Taken { used: after })
    }

    async fn stored_bytes(&self, user: &str, day: u32) -> Result<u64, StoreError> {
        check_key_part(user)?;
        self.read_count(&quota_key(user, day))
    }
}
