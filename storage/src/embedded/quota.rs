//! Quota counters on the embedded store: one `quota_bytes` row per user and
//! day, read, added to and written by the writer thread, one charge after
//! another. The write goes to the journal and is made durable by the
//! writer's next sync (the sync of the post it was charged for, which
//! comes after it on the writer's queue), or at the latest when the store
//! is closed.
//!
//! A charge is a request to the writer, not a write of the caller's own: a
//! write takes the journal's lock, which the writer holds while it syncs,
//! so a charge written on a runtime thread held that thread (and every task
//! queued on it) for a sync with every send (`BENCHMARKS.md`, "The quota
//! charge").

use std::collections::HashMap;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::EmbeddedStore;
use super::tables::{Tables, check_key_part, quota_key, unavailable};
use super::writer::{Charge, Op, Writer};
use crate::StoreError;
use crate::quota::{Charged, QuotaStore};

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

impl Writer {
    /// Decides the group's charges in arrival order, writes the counts
    /// that moved in one batch (no sync of its own), then answers.
    pub(super) fn charge(&mut self, charges: Vec<Charge>) {
        if charges.is_empty() {
            return;
        }
        let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut answers = Vec::with_capacity(charges.len());
        for Charge {
            key,
            bytes,
            limit,
            reply,
        } in charges
        {
            let used = match counts.get(&key) {
                Some(used) => Ok(*used),
                None => read_count(&self.tables, &key),
            };
            let answer = used.map(|used| {
                let after = used.saturating_add(bytes);
                if after > limit {
                    Charged::Refused { used }
                } else {
                    counts.insert(key, after);
                    Charged::Taken { used: after }
                }
            });
            answers.push((reply, answer));
        }
        let mut batch = self.tables.db.batch();
        for (key, used) in counts {
            batch.insert(&self.tables.quota_bytes, key, used.to_be_bytes().to_vec());
        }
        let written = batch.commit().map_err(|e| {
            tracing::error!(error = %e, "store commit failed; the store takes no more writes until restarted");
            self.failed = Some(e.to_string());
            StoreError::Failed(e.to_string())
        });
        for (reply, answer) in answers {
            let _ = reply.send(written.clone().and(answer));
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
        let (reply, rx) = oneshot::channel();
        let charge = Charge {
            key: quota_key(user, day),
            bytes,
            limit,
            reply,
        };
        self.submit(Op::Charge(charge), rx).await
    }

    async fn stored_bytes(&self, user: &str, day: u32) -> Result<u64, StoreError> {
        check_key_part(user)?;
        read_count(&self.tables, &quota_key(user, day))
    }
}
