//! The embedded backend's [`AccountStore`].
//!
//! # Keys
//! - `accounts`: `[user]` → `[state u8][registered_ms i64 BE]` (state 0
//!   enabled, 1 disabled, 2 deleted: a tombstone, skipped by listings).
//!
//! Written directly (not through the writer thread) in one batch and synced
//! before the call returns, like revocations: account changes are rare and
//! must survive a crash.

use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;

use super::EmbeddedStore;
use super::tables::unavailable;
use crate::StoreError;
use crate::accounts::{Account, AccountStore, DELETED, check_user, decode, encode};

/// Serialises read-modify-writes of accounts.
static CHANGING: Mutex<()> = Mutex::new(());

impl EmbeddedStore {
    /// Runs `f` on the store's tables off the async threads, one change at
    /// a time.
    async fn accounts_change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&super::tables::Tables) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let t = self.tables.clone();
        tokio::task::spawn_blocking(move || {
            let _one = CHANGING.lock().unwrap_or_else(|e| e.into_inner());
            f(&t)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("account task: {e}")))?
    }
}

/// Whether `user`'s account is a tombstone (one local read; an id never
/// registered is not).
pub(super) fn is_deleted(t: &super::tables::Tables, user: &str) -> Result<bool, StoreError> {
    Ok(t.accounts
        .get(user.as_bytes())
        .map_err(unavailable)?
        .is_some_and(|v| v.first() == Some(&DELETED)))
}

#[async_trait]
impl AccountStore for EmbeddedStore {
    async fn register(&self, users: &[String], now_ms: i64) -> Result<u32, StoreError> {
        for user in users {
            check_user(user)?;
        }
        let users = users.to_vec();
        self.accounts_change(move |t| {
            let mut batch = t.db.batch();
            let mut new = std::collections::BTreeSet::new();
            for user in &users {
                if t.accounts
                    .get(user.as_bytes())
                    .map_err(unavailable)?
                    .is_none()
                    && new.insert(user.as_str())
                {
                    batch.insert(&t.accounts, user.as_bytes(), encode(now_ms, 0));
                }
            }
            if !new.is_empty() {
                batch.commit().map_err(unavailable)?;
                t.db.sync().map_err(unavailable)?;
            }
            Ok(u32::try_from(new.len()).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn set_disabled(
        &self,
        user: &str,
        disabled: bool,
    ) -> Result<Option<Account>, StoreError> {
        check_user(user)?;
        let user = user.to_owned();
        self.accounts_change(move |t| {
            let Some(v) = t.accounts.get(user.as_bytes()).map_err(unavailable)? else {
                return Ok(None);
            };
            let mut account = decode(&user, &v)?;
            if !account.deleted && account.disabled != disabled {
                account.disabled = disabled;
                t.accounts
                    .insert(
                        user.as_bytes(),
                        encode(account.registered_ms, u8::from(disabled)),
                    )
                    .map_err(unavailable)?;
                t.db.sync().map_err(unavailable)?;
            }
            Ok(Some(account))
        })
        .await
    }

    async fn mark_deleted(&self, user: &str) -> Result<Option<Account>, StoreError> {
        check_user(user)?;
        let user = user.to_owned();
        self.accounts_change(move |t| {
            let Some(v) = t.accounts.get(user.as_bytes()).map_err(unavailable)? else {
                return Ok(None);
            };
            let mut account = decode(&user, &v)?;
            if !account.deleted {
                account.deleted = true;
                account.disabled = true;
                t.accounts
                    .insert(user.as_bytes(), encode(account.registered_ms, DELETED))
                    .map_err(unavailable)?;
                t.db.sync().map_err(unavailable)?;
            }
            Ok(Some(account))
        })
        .await
    }

    async fn account(&self, user: &str) -> Result<Option<Account>, StoreError> {
        check_user(user)?;
        self.tables
            .accounts
            .get(user.as_bytes())
            .map_err(unavailable)?
            .map(|v| decode(user, &v))
            .transpose()
    }

    async fn accounts_after(&self, after: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after.as_bytes().to_vec())
        };
        let mut out = Vec::new();
        for guard in self
            .tables
            .accounts
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            if out.len() >= limit {
                break;
            }
            let (key, value) = guard.into_inner().map_err(unavailable)?;
            if value.first() != Some(&DELETED) {
                out.push(String::from_utf8_lossy(&key).into_owned());
            }
        }
        Ok(out)
    }
}
