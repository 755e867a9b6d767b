//! The embedded backend's [`ScheduleStore`], written by the writer thread
//! (so a fire and a cancel of one entry are serialised).
//!
//! # Keys
//! - `scheduled`: `[deliver_at i64 BE, offset so order is numeric][id]` →
//!   protobuf `v1.ScheduledSend`.
//! - `schedule_ids`: `[id]` → the `scheduled` key.

use std::collections::HashMap;

use async_trait::async_trait;

use prost::Message as _;
use qim_proto::v1;
use tokio::sync::oneshot;

use super::EmbeddedStore;
use super::tables::unavailable;
use super::writer::{Op, Request as ImRequest, ScheduleRequest as Request, Writer};
use crate::OpError;
use crate::StoreError;
use crate::conversations::Posted;
use crate::schedule::{MAX_DUE, ScheduleStore, to_post};

fn at_key(at: i64, id: &str) -> Vec<u8> {
    // Flip the sign bit so negative times sort first, byte-wise.
    let mut key = ((at as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

fn decode(bytes: &[u8]) -> Result<v1::ScheduledSend, StoreError> {
    v1::ScheduledSend::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Writer {
    pub(super) fn schedule_op(&mut self, request: Request) {
        let t = self.tables.clone();
        let commit = |batch: fjall::OwnedWriteBatch, this: &mut Writer| -> Result<(), StoreError> {
            batch
                .durability(Some(fjall::PersistMode::SyncAll))
                .commit()
                .map_err(|e| {
                    tracing::error!(error = %e, "store commit failed; the store takes no more writes until restarted");
                    this.failed = Some(e.to_string());
                    StoreError::Failed(e.to_string())
                })
        };
        match request {
            Request::Add(entry, reply) => {
                let key = at_key(entry.deliver_at_ms, &entry.id);
                let mut batch = t.db.batch();
                batch.insert(&t.schedule_ids, entry.id.clone().into_bytes(), key.clone());
                batch.insert(&t.scheduled, key, entry.encode_to_vec());
                let _ = reply.send(commit(batch, self));
            }
            Request::Cancel(user, id, reply) => {
                let result = (|| {
                    let Some(key) = t.schedule_ids.get(id.as_bytes()).map_err(unavailable)? else {
                        return Err(OpError::NotFound);
                    };
                    let Some(value) = t.scheduled.get(&key).map_err(unavailable)? else {
                        return Err(OpError::NotFound);
                    };
                    if decode(&value)?.sender != user {
                        return Err(OpError::NotFound);
                    }
                    let mut batch = t.db.batch();
                    batch.remove(&t.scheduled, key.to_vec());
                    batch.remove(&t.schedule_ids, id.into_bytes());
                    commit(batch, self)?;
                    Ok(())
                })();
                let _ = reply.send(result);
            }
            Request::Fire(id, now_ms, reply) => {
                let result = (|| {
                    let Some(key) = t.schedule_ids.get(id.as_bytes()).map_err(unavailable)? else {
                        return Ok(None);
                    };
                    let Some(value) = t.scheduled.get(&key).map_err(unavailable)? else {
                        return Ok(None);
                    };
                    let entry = decode(&value)?;
                    let mut stage = self.new_stage();
                    let mut pending = HashMap::new();
                    let posted =
                        match self.stage_post(&mut stage, &mut pending, to_post(entry, now_ms)) {
                            Ok(posted) => posted,
                            Err(e) => {
                                self.abandon_stage();
                                return Err(e);
                            }
                        };
                    // Delivered or refused for good (e.g. no longer a member):
                    // either way the entry is done.
                    stage.batch.remove(&t.scheduled, key.to_vec());
                    stage.batch.remove(&t.schedule_ids, id.into_bytes());
                    self.commit_stage(stage)?;
                    Ok(Some(posted))
                })();
                let _ = reply.send(result);
            }
        }
    }
}

impl EmbeddedStore {
    async fn schedule_request<T>(
        &self,
        request: Request,
        rx: oneshot::Receiver<T>,
    ) -> Result<T, StoreError> {
        self.ops
            .send(Op::Im(Box::new(ImRequest::Schedule(request))))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }
}

#[async_trait]
impl ScheduleStore for EmbeddedStore {
    async fn schedule(&self, entry: v1::ScheduledSend) -> Result<(), StoreError> {
        if entry.id.is_empty() || entry.id.len() > 255 {
            return Err(StoreError::Invalid("schedule id of 1 to 255 bytes".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.schedule_request(Request::Add(Box::new(entry), tx), rx)
            .await?
    }

    async fn cancel(&self, user: &str, id: &str) -> Result<(), OpError> {
        let (tx, rx) = oneshot::channel();
        self.schedule_request(Request::Cancel(user.to_owned(), id.to_owned(), tx), rx)
            .await?
    }

    async fn due(&self, now_ms: i64) -> Result<Vec<v1::ScheduledSend>, StoreError> {
        let end = at_key(now_ms.saturating_add(1), "");
        let mut out = Vec::new();
        for guard in self.tables.scheduled.range(..end).take(MAX_DUE) {
            let (_, value) = guard.into_inner().map_err(unavailable)?;
            out.push(decode(&value)?);
        }
        Ok(out)
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        match self.tables.scheduled.first_key_value() {
            None => Ok(None),
            Some(guard) => {
                let (_, value) = guard.into_inner().map_err(unavailable)?;
                Ok(Some(decode(&value)?.deliver_at_ms))
            }
        }
    }

    async fn fire(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<Result<Posted, OpError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.schedule_request(Request::Fire(id.to_owned(), now_ms, tx), rx)
            .await?
    }
}
