//! Quota counters on the embedded store: one `quota_bytes` row per user and
//! day.
//!
//! A charge is decided in memory ([`Counts`]) and its row is written by the
//! writer thread with its next group, the way cursors are. The request to
//! write it goes on the writer's queue before the charge returns, so the
//! charged post, which comes later on that queue, is synced with it (or
//! after it): a count is durable when the send it was charged for is acked,
//! or at the latest when the store is closed.
//!
//! Neither a write of the caller's own nor a round trip to the writer: a
//! write takes the journal's lock, which the writer holds while it syncs,
//! so a charge written on a runtime thread held that thread (and every task
//! queued on it) for a sync with every send; and a round trip per charge
//! put a sync between each send of a batch and the next (`BENCHMARKS.md`,
//! "The quota charge").
//!
//! A count in memory is the authority while it has writes still queued; a
//! written one is dropped when the map grows past [`MAX_COUNTS`] and read
//! back from its row when next charged.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::EmbeddedStore;
use super::tables::{Tables, check_key_part, prefixed, quota_key, unavailable};
use super::writer::Op;
use crate::StoreError;
use crate::quota::{Charged, QuotaStore};

/// Counts kept in memory before the written ones are dropped.
const MAX_COUNTS: usize = 1 << 16;

fn read_count(t: &Tables, key: &[u8]) -> Result<u64, StoreError> {
    match t.quota_bytes.get(key).map_err(unavailable)? {
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

/// A count and how many of its writes are still queued.
struct Count {
    used: u64,
    unwritten: u32,
}

/// The counts charged lately, shared by the store and its writer.
#[derive(Default)]
pub(super) struct Counts {
    map: Mutex<HashMap<Vec<u8>, Count>>,
}

impl Counts {
    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Count>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `bytes` to the count under `key` unless that passes `limit`;
    /// `Some(key)` when the count moved and its row is to be written.
    fn charge(
        &self,
        t: &Tables,
        key: Vec<u8>,
        bytes: u64,
        limit: u64,
    ) -> Result<(Charged, Option<Vec<u8>>), StoreError> {
        let mut map = self.lock();
        if map.len() >= MAX_COUNTS {
            map.retain(|_, c| c.unwritten > 0);
        }
        // The key is copied only when its count is read from its row.
        if !map.contains_key(&key) {
            let used = read_count(t, &key)?;
            map.insert(key.clone(), Count { used, unwritten: 0 });
        }
        let Some(count) = map.get_mut(&key) else {
            return Err(StoreError::Corrupt("quota count vanished".into()));
        };
        let after = count.used.saturating_add(bytes);
        if after > limit {
            return Ok((Charged::Refused { used: count.used }, None));
        }
        count.used = after;
        count.unwritten += 1;
        Ok((Charged::Taken { used: after }, Some(key)))
    }

    /// The count under `key` if it is held here.
    fn get(&self, key: &[u8]) -> Option<u64> {
        self.lock().get(key).map(|c| c.used)
    }

    /// For the writer: the counts to write for `keys` (those still held).
    pub(super) fn to_write(&self, keys: &HashMap<Vec<u8>, u32>) -> Vec<(Vec<u8>, u64)> {
        let map = self.lock();
        keys.keys()
            .filter_map(|k| map.get(k).map(|c| (k.clone(), c.used)))
            .collect()
    }

    /// For the writer: `keys` were written (`n` queued writes each).
    pub(super) fn written(&self, keys: &HashMap<Vec<u8>, u32>) {
        let mut map = self.lock();
        for (key, n) in keys {
            if let Some(c) = map.get_mut(key) {
                c.unwritten = c.unwritten.saturating_sub(*n);
            }
        }
    }

    /// Drops every count of `user` (its rows are being deleted).
    pub(super) fn forget_user(&self, user: &str) {
        let prefix = prefixed(user, 0);
        self.lock().retain(|k, _| !k.starts_with(&prefix));
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
        let (charged, moved) =
            self.counts
                .charge(&self.tables, quota_key(user, day), bytes, limit)?;
        if let Some(key) = moved {
            self.ops
                .send(Op::Quota(key))
                .await
                .map_err(|_| StoreError::Closed)?;
        }
        Ok(charged)
    }

    async fn stored_bytes(&self, user: &str, day: u32) -> Result<u64, StoreError> {
        check_key_part(user)?;
        let key = quota_key(user, day);
        match self.counts.get(&key) {
            Some(used) => Ok(used),
            None => read_count(&self.tables, &key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageStore as _;

    /// Past the map's bound, the written counts are dropped and read back
    /// from their rows when charged again: no charge is lost or doubled.
    #[tokio::test]
    async fn counts_dropped_from_memory_are_read_back_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let day = 20_000;
        let charge = |user: String, bytes: u64| {
            let store = &store;
            async move {
                store
                    .charge_stored_bytes(&user, day, bytes, 1_000)
                    .await
                    .expect("charge")
            }
        };
        assert_eq!(
            charge("first".into(), 600).await,
            Charged::Taken { used: 600 }
        );
        for i in 0..MAX_COUNTS {
            charge(format!("u{i}"), 1).await;
        }
        store.flush().await.expect("flush");
        // The map reached its bound with everything written: the next
        // charge drops the written counts.
        charge("last".into(), 1).await;
        assert!(store.counts.get(&quota_key("first", day)).is_none());
        assert_eq!(
            charge("first".into(), 500).await,
            Charged::Refused { used: 600 }
        );
        assert_eq!(
            charge("first".into(), 400).await,
            Charged::Taken { used: 1_000 }
        );
        assert_eq!(store.stored_bytes("u7", day).await.expect("read"), 1);
    }

    /// A charged count is in its row by the time a later request to the
    /// writer (here a sync) is answered, and is then no longer pinned in
    /// memory.
    #[tokio::test]
    async fn a_count_is_written_before_the_next_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        store
            .charge_stored_bytes("alice", 7, 300, 1_000)
            .await
            .expect("charge");
        store.flush().await.expect("flush");
        let key = quota_key("alice", 7);
        assert_eq!(read_count(&store.tables, &key).expect("read"), 300);
        assert_eq!(store.counts.lock().get(&key).map(|c| c.unwritten), Some(0));
    }
}
