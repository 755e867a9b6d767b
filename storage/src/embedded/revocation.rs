//! The embedded backend's [`RevocationStore`].
//!
//! # Keys
//! - `revoked`: `[user]` → unix seconds `u64 BE`.
//!
//! Written directly (not through the writer thread) and synced before the
//! call returns: revocations are rare, and one must survive a crash.

use std::sync::Mutex;

use async_trait::async_trait;

use super::EmbeddedStore;
use super::tables::unavailable;
use crate::StoreError;
use crate::revocation::RevocationStore;

/// Serialises the read-raise-write of marks (revocations are rare).
static RAISING: Mutex<()> = Mutex::new(());

fn check_user(user: &str) -> Result<(), StoreError> {
    if qim_proto::ids::is_valid_id(user) {
        Ok(())
    } else {
        Err(StoreError::Invalid("bad user id".into()))
    }
}

fn be_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[async_trait]
impl RevocationStore for EmbeddedStore {
    async fn revoke_tokens(&self, user: &str, before: u64) -> Result<u64, StoreError> {
        check_user(user)?;
        let t = self.tables.clone();
        let key = user.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || {
            let _raising = RAISING.lock().unwrap_or_else(|e| e.into_inner());
            let old = t
                .revoked
                .get(&key)
                .map_err(unavailable)?
                .map_or(0, |v| be_u64(&v));
            let mark = old.max(before);
            if mark != old {
                t.revoked
                    .insert(key, mark.to_be_bytes().to_vec())
                    .map_err(unavailable)?;
                t.db.sync().map_err(unavailable)?;
            }
            Ok(mark)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("revocation task: {e}")))?
    }

    async fn tokens_revoked_before(&self, user: &str) -> Result<u64, StoreError> {
        check_user(user)?;
        Ok(self
            .tables
            .revoked
            .get(user.as_bytes())
            .map_err(unavailable)?
            .map_or(0, |v| be_u64(&v)))
    }
}
