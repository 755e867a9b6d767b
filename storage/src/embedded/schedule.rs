//! The embedded backend's [`ScheduleStore`], written by the writer thread
//! (so a fire and a cancel of one entry are serialised).
//!
//! # Keys
//! - `scheduled`: `[deliver_at i64 BE, offset so order is numeric][id]` →
//!   protobuf `v1.ScheduledSend`.
//! - `schedule_ids`: `[id]` → the `scheduled` key.
//! - `schedule_owners`: `[len][sender][id]` → empty: the sender's pending
//!   entries, counted for the quota with a prefix scan bounded by it. The
//!   key `[0]` marks that the index was built ([`build_index`]).

use std::collections::HashMap;

use async_trait::async_trait;

use prost::Message as _;
use qim_proto::v1;
use tokio::sync::oneshot;

use super::EmbeddedStore;
use super::kv;
use super::tables::{Tables, check_key_part, prefixed, unavailable};
use super::writer::{Op, Request as ImRequest, ScheduleRequest as Request, Writer};
use crate::StoreError;
use crate::schedule::{Fired, MAX_DUE, ScheduleStore, Verdict, refused_event, to_post};
use crate::{OpError, Quota};

fn at_key(at: i64, id: &str) -> Vec<u8> {
    // Flip the sign bit so negative times sort first, byte-wise.
    let mut key = ((at as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

fn owner_key(sender: &str, id: &str) -> Vec<u8> {
    let mut key = prefixed(sender, id.len());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Indexes the pending entries of a store written before the owner index
/// existed; once (a marker key says it was done).
pub(super) fn build_index(t: &Tables) -> Result<(), StoreError> {
    const DONE: [u8; 1] = [0];
    if t.schedule_owners.contains_key(DONE).map_err(unavailable)? {
        return Ok(());
    }
    let mut batch = t.db.batch();
    for guard in t.scheduled.iter() {
        let (_, value) = guard.into_inner().map_err(unavailable)?;
        let entry = decode(&value)?;
        if check_key_part(&entry.sender).is_ok() {
            batch.insert(
                &t.schedule_owners,
                owner_key(&entry.sender, &entry.id),
                Vec::new(),
            );
        }
    }
    batch.insert(&t.schedule_owners, DONE.to_vec(), Vec::new());
    batch.durable().commit().map_err(unavailable)
}

fn decode(bytes: &[u8]) -> Result<v1::ScheduledSend, StoreError> {
    v1::ScheduledSend::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Writer {
    pub(super) fn schedule_op(&mut self, request: Request) {
        let t = self.tables.clone();
        let commit = |batch: kv::Batch, this: &mut Writer| -> Result<(), StoreError> {
            batch
                .durable()
                .commit()
                .map_err(|e| {
                    tracing::error!(error = %e, "store commit failed; the store takes no more writes until restarted");
                    this.failed = Some(e.to_string());
                    StoreError::Failed(e.to_string())
                })
        };
        match request {
            Request::Add(entry, max_pending, reply) => {
                let result = (|| {
                    check_key_part(&entry.sender)?;
                    let mut pending = 0;
                    for guard in t
                        .schedule_owners
                        .prefix(prefixed(&entry.sender, 0))
                        .take(max_pending)
                    {
                        guard.into_inner().map_err(unavailable)?;
                        pending += 1;
                    }
                    if pending >= max_pending {
                        return Err(OpError::QuotaExceeded(Quota::PendingSchedules));
                    }
                    let key = at_key(entry.deliver_at_ms, &entry.id);
                    let mut batch = t.db.batch();
                    batch.insert(&t.schedule_ids, entry.id.clone().into_bytes(), key.clone());
                    batch.insert(
                        &t.schedule_owners,
                        owner_key(&entry.sender, &entry.id),
                        Vec::new(),
                    );
                    batch.insert(&t.scheduled, key, entry.encode_to_vec());
                    commit(batch, self)?;
                    Ok(())
                })();
                let _ = reply.send(result);
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
                    batch.remove(&t.schedule_owners, owner_key(&user, &id));
                    batch.remove(&t.scheduled, key.to_vec());
                    batch.remove(&t.schedule_ids, id.into_bytes());
                    commit(batch, self)?;
                    Ok(())
                })();
                let _ = reply.send(result);
            }
            Request::Fire(id, now_ms, verdict, reply) => {
                let result = (|| {
                    let Some(key) = t.schedule_ids.get(id.as_bytes()).map_err(unavailable)? else {
                        return Ok(None);
                    };
                    let Some(value) = t.scheduled.get(&key).map_err(unavailable)? else {
                        return Ok(None);
                    };
                    let entry = decode(&value)?;
                    let mut stage = self.new_stage();
                    let (code, message) = match verdict {
                        Verdict::Refuse { code, message } => (code, message),
                        Verdict::Post(explain) => {
                            let mut pending = HashMap::new();
                            let post = to_post(entry.clone(), now_ms);
                            match self.stage_post(&mut stage, &mut pending, post) {
                                Ok(Ok(posted)) => {
                                    self.finish_fire(stage, &entry, key.to_vec())?;
                                    pending.clear();
                                    let posted = std::sync::Arc::unwrap_or_clone(posted);
                                    return Ok(Some(Fired::Posted(posted)));
                                }
                                Ok(Err(refused)) => explain(&refused),
                                Err(e) => {
                                    self.abandon_stage();
                                    return Err(e);
                                }
                            }
                        }
                    };
                    let event = refused_event(&entry, code, message);
                    let stored = match self.stage_event(
                        &mut stage,
                        &entry.sender,
                        &entry.sender,
                        event,
                        now_ms,
                    ) {
                        Ok(stored) => stored,
                        Err(e) => {
                            self.abandon_stage();
                            return Err(e);
                        }
                    };
                    self.finish_fire(stage, &entry, key.to_vec())?;
                    Ok(Some(Fired::Refused(Box::new(stored))))
                })();
                let _ = reply.send(result);
            }
        }
    }

    /// Removes a fired entry (posted or refused for good) in `stage` and
    /// commits it.
    fn finish_fire(
        &mut self,
        mut stage: super::writer::Stage,
        entry: &v1::ScheduledSend,
        key: Vec<u8>,
    ) -> Result<(), StoreError> {
        let t = self.tables.clone();
        stage.batch.remove(&t.scheduled, key);
        stage
            .batch
            .remove(&t.schedule_ids, entry.id.clone().into_bytes());
        if check_key_part(&entry.sender).is_ok() {
            stage
                .batch
                .remove(&t.schedule_owners, owner_key(&entry.sender, &entry.id));
        }
        self.commit_stage(stage)
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
    async fn schedule(&self, entry: v1::ScheduledSend, max_pending: usize) -> Result<(), OpError> {
        if entry.id.is_empty() || entry.id.len() > 255 {
            return Err(StoreError::Invalid("schedule id of 1 to 255 bytes".into()).into());
        }
        let (tx, rx) = oneshot::channel();
        self.schedule_request(Request::Add(Box::new(entry), max_pending, tx), rx)
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

    async fn pending(&self, user: &str, limit: usize) -> Result<usize, StoreError> {
        check_key_part(user)?;
        let mut pending = 0;
        for guard in self
            .tables
            .schedule_owners
            .prefix(prefixed(user, 0))
            .take(limit)
        {
            guard.into_inner().map_err(unavailable)?;
            pending += 1;
        }
        Ok(pending)
    }

    async fn fire(
        &self,
        id: &str,
        now_ms: i64,
        verdict: Verdict,
    ) -> Result<Option<Fired>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.schedule_request(Request::Fire(id.to_owned(), now_ms, verdict, tx), rx)
            .await?
    }
}
