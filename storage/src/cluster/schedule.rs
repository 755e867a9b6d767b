//! The cluster backend's [`ScheduleStore`]: pending sends in CQL, fired
//! once by whichever node gets there first.
//!
//! # Tables
//! - `schedules` (by id): the entry, its state (0 pending, 1 being posted
//!   since `claimed_ms`). Every write to a row is a lightweight transaction
//!   (Paxos on the one partition), so they are linearizable: a cancel
//!   (`DELETE ... IF state = 0`) and a claim (`UPDATE ... IF state = 0`)
//!   never both succeed.
//! - `schedules_due` (by time, spread over [`SHARDS`] partitions): what
//!   [`ScheduleStore::due`] scans. Its row is written *before* the entry and
//!   deleted *after* it, so an entry is never pending without its index
//!   row; an index row without an entry (a crash in between) is removed by
//!   the first `due` that sees it after [`ORPHAN_AFTER`].
//!
//! # Firing
//! A node claims the entry, posts it through
//! [`ConversationStore::post`] with the send's own `(sender,
//! client_msg_id)`, then deletes it. A node that dies after claiming leaves
//! the entry claimed; after [`RECLAIM_AFTER`] another node takes the claim
//! over (an LWT on the old claim time, so only one does) and posts again,
//! which the idempotency key turns into the original message. So a
//! scheduled send is stored exactly once, also across crashes. A refused
//! entry (the caller's [`Verdict`], or the post refused) appends its
//! `ScheduleRefused` event before the entry is deleted: a crash in between
//! tells the sender twice after the claim is taken over, never not at all.
//!
//! # Quota
//! `schedules_by_owner` lists each sender's entries; its row is written
//! with the index row (before the entry) and deleted after the entry. A
//! schedule reads at most `max_pending` of them; only when that reaches the
//! quota are the listed entries read, and rows whose entry is gone (a
//! crash) removed, before the count is final.

use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use qim_proto::v1;

use super::ClusterStore;
use crate::StoreError;
use crate::conversations::ConversationStore;
use crate::cql::social::{Row, applied, decode_schedule};
use crate::schedule::{Fired, MAX_DUE, ScheduleStore, Verdict, refused_event, to_post};
use crate::{OpError, Quota};

/// Partitions of the time index.
pub(crate) const SHARDS: i32 = 8;

/// A claim older than this is taken over (the claiming node is presumed
/// dead; posting again is harmless).
pub(crate) const RECLAIM_AFTER: Duration = Duration::from_secs(60);

/// An index row without an entry is removed once it is this old.
pub(crate) const ORPHAN_AFTER: Duration = Duration::from_secs(60);

/// `state` of a pending entry (1: being posted).
const PENDING: i32 = 0;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The index partition of `id` (FNV-1a, stable across builds and nodes).
fn shard(id: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % SHARDS as u32) as i32
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A row of `schedules`.
struct Entry {
    owner: String,
    due_ms: i64,
    entry: v1::ScheduledSend,
    state: i32,
    claimed_ms: i64,
}

impl ClusterStore {
    async fn read_schedule(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        let rows = self
            .social
            .exec(&self.social.schedule_read, (id,))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        let Some((owner, due_ms, entry, state, claimed_ms)) = rows
            .maybe_first_row::<(String, i64, Vec<u8>, i32, i64)>()
            .map_err(corrupt)?
        else {
            return Ok(None);
        };
        Ok(Some(Entry {
            owner,
            due_ms,
            entry: decode_schedule(&entry)?,
            state,
            claimed_ms,
        }))
    }

    async fn delete_due_row(&self, id: &str, due_ms: i64) -> Result<(), StoreError> {
        self.social
            .exec(&self.social.schedule_due_delete, (shard(id), due_ms, id))
            .await?;
        Ok(())
    }

    /// `owner`'s pending entries, at most `limit`, by id.
    async fn owned_schedules(&self, owner: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = self
            .social
            .exec(&self.social.schedules_of_owner, (owner, limit))
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        let mut out = Vec::new();
        for row in rows.rows::<(String,)>().map_err(corrupt)? {
            out.push(row.map_err(corrupt)?.0);
        }
        Ok(out)
    }

    /// Whether `owner` has `max_pending` entries waiting, not counting
    /// index rows whose entry is gone (those are removed).
    async fn schedules_full(&self, owner: &str, max_pending: usize) -> Result<bool, StoreError> {
        let ids = self.owned_schedules(owner, max_pending).await?;
        if ids.len() < max_pending {
            return Ok(false);
        }
        let mut live = 0;
        for id in ids {
            if self.read_schedule(&id).await?.is_some() {
                live += 1;
            } else {
                self.social
                    .exec(&self.social.schedule_owner_delete, (owner, id.as_str()))
                    .await?;
            }
        }
        Ok(live >= max_pending)
    }

    /// Removes a fired entry (posted or refused) and its index rows.
    async fn finish_fire(&self, id: &str, found: &Entry) -> Result<(), StoreError> {
        self.social
            .exec(&self.social.schedule_delete, (id,))
            .await?;
        self.delete_due_row(id, found.due_ms).await?;
        self.social
            .exec(
                &self.social.schedule_owner_delete,
                (found.owner.as_str(), id),
            )
            .await?;
        Ok(())
    }

    /// Takes the claim on `id` if it is pending, or over a stale claim.
    async fn claim_schedule(
        &self,
        id: &str,
        found: &Entry,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let result = if found.state == PENDING {
            self.social
                .exec(&self.social.schedule_claim, (now_ms, id))
                .await?
        } else if found.claimed_ms < now_ms - ms(RECLAIM_AFTER) {
            tracing::info!(
                id,
                "taking over a scheduled send claimed by a node that did not finish"
            );
            self.social
                .exec(
                    &self.social.schedule_reclaim,
                    (now_ms, id, found.claimed_ms),
                )
                .await?
        } else {
            return Ok(false);
        };
        applied(result)
    }
}

#[async_trait]
impl ScheduleStore for ClusterStore {
    async fn schedule(&self, entry: v1::ScheduledSend, max_pending: usize) -> Result<(), OpError> {
        if entry.id.is_empty() || !qim_proto::ids::is_valid_id(&entry.id) {
            return Err(StoreError::Invalid("schedule id is not a valid id".into()).into());
        }
        if self.schedules_full(&entry.sender, max_pending).await? {
            return Err(OpError::QuotaExceeded(Quota::PendingSchedules));
        }
        let id = entry.id.clone();
        let now = qim_proto::now_ms();
        // The index rows first: an entry never exists without them.
        let index: Row = (
            self.social.schedule_due_put.clone(),
            Box::new((shard(&id), entry.deliver_at_ms, id.clone(), now)),
        );
        let owner: Row = (
            self.social.schedule_owner_put.clone(),
            Box::new((entry.sender.clone(), id.clone())),
        );
        self.social.batch(vec![index, owner]).await?;
        let result = self
            .social
            .exec(
                &self.social.schedule_put,
                (
                    id.as_str(),
                    entry.sender.as_str(),
                    entry.deliver_at_ms,
                    entry.encode_to_vec(),
                ),
            )
            .await?;
        if applied(result)? {
            return Ok(());
        }
        match self.read_schedule(&id).await? {
            Some(found) if found.entry == entry => Ok(()),
            _ => Err(StoreError::Invalid(format!("schedule id {id} is taken")).into()),
        }
    }

    async fn cancel(&self, user: &str, id: &str) -> Result<(), OpError> {
        if !qim_proto::ids::is_valid_id(id) {
            return Err(OpError::NotFound);
        }
        let Some(found) = self.read_schedule(id).await? else {
            return Err(OpError::NotFound);
        };
        if found.owner != user || found.state != PENDING {
            return Err(OpError::NotFound);
        }
        let result = self
            .social
            .exec(&self.social.schedule_cancel, (id, user))
            .await?;
        if !applied(result)? {
            // Claimed for delivery (or cancelled) in between.
            return Err(OpError::NotFound);
        }
        self.delete_due_row(id, found.due_ms).await?;
        self.social
            .exec(&self.social.schedule_owner_delete, (user, id))
            .await?;
        Ok(())
    }

    async fn due(&self, now_ms: i64) -> Result<Vec<v1::ScheduledSend>, StoreError> {
        let limit = i32::try_from(MAX_DUE).unwrap_or(i32::MAX);
        let mut index: Vec<(i64, String, i64)> = Vec::new();
        for s in 0..SHARDS {
            let rows = self
                .social
                .exec(&self.social.schedules_due, (s, now_ms, limit))
                .await?
                .into_rows_result()
                .map_err(corrupt)?;
            for row in rows.rows::<(i64, String, Option<i64>)>().map_err(corrupt)? {
                let (due_ms, id, written_ms) = row.map_err(corrupt)?;
                index.push((due_ms, id, written_ms.unwrap_or(0)));
            }
        }
        index.sort();
        let mut out = Vec::new();
        for (due_ms, id, written_ms) in index {
            if out.len() == MAX_DUE {
                break;
            }
            match self.read_schedule(&id).await? {
                Some(found)
                    if found.state == PENDING || found.claimed_ms < now_ms - ms(RECLAIM_AFTER) =>
                {
                    out.push(found.entry);
                }
                Some(_) => {}
                None if written_ms < now_ms - ms(ORPHAN_AFTER) => {
                    self.delete_due_row(&id, due_ms).await?;
                }
                None => {}
            }
        }
        Ok(out)
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let mut next: Option<i64> = None;
        for s in 0..SHARDS {
            let rows = self
                .social
                .exec(&self.social.schedules_due, (s, i64::MAX, 1))
                .await?
                .into_rows_result()
                .map_err(corrupt)?;
            if let Some((due_ms, _, _)) = rows
                .maybe_first_row::<(i64, String, Option<i64>)>()
                .map_err(corrupt)?
            {
                next = Some(next.map_or(due_ms, |n| n.min(due_ms)));
            }
        }
        Ok(next)
    }

    async fn pending(&self, user: &str, limit: usize) -> Result<usize, StoreError> {
        let ids = self.owned_schedules(user, limit).await?;
        let mut live = 0;
        for id in ids {
            if self.read_schedule(&id).await?.is_some() {
                live += 1;
            }
        }
        Ok(live)
    }

    async fn fire(
        &self,
        id: &str,
        now_ms: i64,
        verdict: Verdict,
    ) -> Result<Option<Fired>, StoreError> {
        let Some(found) = self.read_schedule(id).await? else {
            return Ok(None);
        };
        if !self.claim_schedule(id, &found, now_ms).await? {
            return Ok(None);
        }
        let (code, message) = match verdict {
            Verdict::Refuse { code, message } => (code, message),
            Verdict::Post(explain) => {
                let posted = self
                    .post(vec![to_post(found.entry.clone(), now_ms)])
                    .await?;
                let outcome = posted
                    .into_iter()
                    .next()
                    .ok_or_else(|| StoreError::Corrupt("a post without a result".into()))?;
                match outcome {
                    Ok(posted) => {
                        self.finish_fire(id, &found).await?;
                        return Ok(Some(Fired::Posted(posted)));
                    }
                    Err(OpError::Store(e)) => return Err(e),
                    // Refused for good (e.g. no longer a member).
                    Err(refused) => explain(&refused),
                }
            }
        };
        let sender = found.entry.sender.clone();
        let event = refused_event(&found.entry, code, message);
        let stored = self.event(&sender, &sender, event, now_ms).await?;
        self.social
            .batch(vec![self.cql.message_row(&stored)?])
            .await?;
        self.finish_fire(id, &found).await?;
        Ok(Some(Fired::Refused(Box::new(stored))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard("abc"), shard("abc"));
        let used: std::collections::HashSet<i32> =
            (0..200).map(|i| shard(&format!("id{i}"))).collect();
        assert_eq!(used.len(), SHARDS as usize);
        assert!(used.iter().all(|s| (0..SHARDS).contains(s)));
    }
}
