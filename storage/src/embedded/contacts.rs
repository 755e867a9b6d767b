//! The embedded backend's [`ContactStore`], written by the writer thread.
//!
//! # Keys
//! - `contacts`: `[len][user][other]` → `[state]` (1 friend, 2 request sent)
//!   or `[3][at_ms i64 BE][message]` (request received).
//! - `blocks`: `[len][user][other]` → empty: `user` blocked `other`.
//! - `blocked_by`: `[len][other][user]` → empty: the reverse of `blocks`
//!   (who blocked `other`), written in the same batch. The key `[0]` marks
//!   that the indexes were built (stores older than them are indexed once
//!   at open, [`build_indexes`]).
//! - `outgoing`: `[len][user][other]` → empty: `user`'s request to `other`
//!   is pending (kept with the `contacts` row in state 2), counted for the
//!   quota with a prefix scan bounded by it.
//! - `rejections`: `[len][user][other]` → `[at_ms i64 BE]`: `other`
//!   rejected `user`'s request then (the cool-down's start).

use async_trait::async_trait;
use qim_proto::v1;
use tokio::sync::oneshot;

use super::EmbeddedStore;
use super::kv;
use super::tables::{Tables, check_key_part, prefixed, unavailable};
use super::writer::{Op, Request, Stage, Writer};
use crate::OpError;
use crate::StoreError;
use crate::contacts::{
    ContactOp, ContactStore, MAX_CONTACTS, Relation, RequestLimits, check_new_request,
};
use crate::conversations::Applied;

const FRIEND: u8 = 1;
const SENT: u8 = 2;
const RECEIVED: u8 = 3;

fn key(user: &str, other: &str) -> Vec<u8> {
    let mut k = prefixed(user, other.len());
    k.extend_from_slice(other.as_bytes());
    k
}

impl Writer {
    fn contact_state(&self, user: &str, other: &str) -> Result<Option<u8>, StoreError> {
        Ok(self
            .tables
            .contacts
            .get(key(user, other))
            .map_err(unavailable)?
            .and_then(|v| v.first().copied()))
    }

    /// Stages `owner`'s side of the relation with `other` (`None`: none),
    /// keeping the pending-request index in step.
    fn stage_side(&self, stage: &mut Stage, owner: &str, other: &str, value: Option<Vec<u8>>) {
        let t = &self.tables;
        let k = key(owner, other);
        if value.as_deref().and_then(<[u8]>::first) == Some(&SENT) {
            stage.batch.insert(&t.outgoing, k.clone(), Vec::new());
        } else {
            stage.batch.remove(&t.outgoing, k.clone());
        }
        match value {
            Some(v) => stage.batch.insert(&t.contacts, k, v),
            None => stage.batch.remove(&t.contacts, k),
        }
    }

    /// Stages friendship of `a` and `b` (clearing cool-downs between them).
    fn stage_friends(&self, stage: &mut Stage, a: &str, b: &str) {
        self.stage_side(stage, a, b, Some(vec![FRIEND]));
        self.stage_side(stage, b, a, Some(vec![FRIEND]));
        stage.batch.remove(&self.tables.rejections, key(a, b));
        stage.batch.remove(&self.tables.rejections, key(b, a));
    }

    /// Refuses `user`'s new request to `other` when it breaks a rule of
    /// `limits` (cool-down after a rejection, pending quota).
    fn new_request_allowed(
        &self,
        user: &str,
        other: &str,
        limits: &RequestLimits,
        now_ms: i64,
    ) -> Result<(), OpError> {
        let t = &self.tables;
        let rejected = t
            .rejections
            .get(key(user, other))
            .map_err(unavailable)?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(i64::from_be_bytes);
        let mut pending = 0;
        for guard in t
            .outgoing
            .prefix(prefixed(user, 0))
            .take(limits.max_pending)
        {
            guard.into_inner().map_err(unavailable)?;
            pending += 1;
        }
        check_new_request(rejected, pending, limits, now_ms)
    }

    /// Applies one contact change in a batch of its own.
    pub(super) fn contact_op(
        &mut self,
        user: &str,
        op: ContactOp,
        now_ms: i64,
    ) -> Result<Applied, OpError> {
        check_key_part(user)?;
        let mut stage = self.new_stage();
        let result = self.stage_contact(&mut stage, user, op, now_ms);
        match result {
            Ok(applied) => {
                self.commit_stage(stage)?;
                Ok(applied)
            }
            Err(e) => {
                self.abandon_stage();
                Err(e)
            }
        }
    }

    fn stage_contact(
        &mut self,
        stage: &mut Stage,
        user: &str,
        op: ContactOp,
        now_ms: i64,
    ) -> Result<Applied, OpError> {
        let t = self.tables.clone();
        let mut applied = Applied::default();
        let answer = |this: &mut Writer,
                      stage: &mut Stage,
                      applied: &mut Applied,
                      other: &str,
                      accepted: bool|
         -> Result<(), OpError> {
            let event = v1::inbox_event::Kind::FriendResponse(v1::FriendResponseEvent {
                from: user.to_owned(),
                accepted,
            });
            applied
                .events
                .push(this.stage_event(stage, other, user, event, now_ms)?);
            Ok(())
        };
        match op {
            ContactOp::Request {
                other,
                message,
                limits,
            } => {
                check_key_part(&other)?;
                if other == user {
                    return Err(OpError::NotAllowed);
                }
                if t.blocks
                    .contains_key(key(&other, user))
                    .map_err(unavailable)?
                {
                    return Err(OpError::Blocked);
                }
                match self.contact_state(user, &other)? {
                    Some(FRIEND) => {}
                    Some(RECEIVED) => {
                        // They asked first: this accepts.
                        self.stage_friends(stage, user, &other);
                        answer(self, stage, &mut applied, &other, true)?;
                    }
                    Some(SENT) => return Err(OpError::Pending),
                    _ => {
                        self.new_request_allowed(user, &other, &limits, now_ms)?;
                        self.stage_side(stage, user, &other, Some(vec![SENT]));
                        let mut value = vec![RECEIVED];
                        value.extend_from_slice(&now_ms.to_be_bytes());
                        value.extend_from_slice(message.as_bytes());
                        self.stage_side(stage, &other, user, Some(value));
                        let event = v1::inbox_event::Kind::FriendRequest(v1::FriendRequestEvent {
                            from: user.to_owned(),
                            message,
                        });
                        applied
                            .events
                            .push(self.stage_event(stage, &other, user, event, now_ms)?);
                    }
                }
            }
            ContactOp::Accept(other) => {
                check_key_part(&other)?;
                if self.contact_state(user, &other)? != Some(RECEIVED) {
                    return Err(OpError::NotFound);
                }
                self.stage_friends(stage, user, &other);
                answer(self, stage, &mut applied, &other, true)?;
            }
            ContactOp::Reject(other) => {
                check_key_part(&other)?;
                if self.contact_state(user, &other)? != Some(RECEIVED) {
                    return Err(OpError::NotFound);
                }
                self.stage_side(stage, user, &other, None);
                self.stage_side(stage, &other, user, None);
                // The requester's cool-down starts now.
                stage.batch.insert(
                    &t.rejections,
                    key(&other, user),
                    now_ms.to_be_bytes().to_vec(),
                );
                answer(self, stage, &mut applied, &other, false)?;
            }
            ContactOp::Remove(other) => {
                check_key_part(&other)?;
                if self.contact_state(user, &other)? != Some(FRIEND) {
                    return Err(OpError::NotFound);
                }
                self.stage_side(stage, user, &other, None);
                self.stage_side(stage, &other, user, None);
            }
            ContactOp::Block(other) => {
                check_key_part(&other)?;
                stage.batch.insert(&t.blocks, key(user, &other), Vec::new());
                stage
                    .batch
                    .insert(&t.blocked_by, key(&other, user), Vec::new());
                self.stage_side(stage, user, &other, None);
                self.stage_side(stage, &other, user, None);
            }
            ContactOp::Unblock(other) => {
                check_key_part(&other)?;
                stage.batch.remove(&t.blocks, key(user, &other));
                stage.batch.remove(&t.blocked_by, key(&other, user));
            }
        }
        Ok(applied)
    }
}

#[async_trait]
impl ContactStore for EmbeddedStore {
    async fn contact_apply(
        &self,
        user: &str,
        op: ContactOp,
        now_ms: i64,
    ) -> Result<Applied, OpError> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Im(Box::new(Request::Contact {
                user: user.to_owned(),
                op,
                now_ms,
                reply,
            })))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn contacts(&self, user: &str) -> Result<v1::ContactsResponse, StoreError> {
        check_key_part(user)?;
        let prefix = prefixed(user, 0);
        let mut out = v1::ContactsResponse::default();
        let name = |k: &[u8]| {
            std::str::from_utf8(&k[prefix.len()..])
                .map(str::to_owned)
                .map_err(|_| StoreError::Corrupt("bad contact key".into()))
        };
        for guard in self.tables.contacts.prefix(&prefix).take(3 * MAX_CONTACTS) {
            let (k, v) = guard.into_inner().map_err(unavailable)?;
            let other = name(&k)?;
            match v.first() {
                Some(&FRIEND) => out.friends.push(other),
                Some(&SENT) => out.outgoing.push(other),
                Some(&RECEIVED) if v.len() >= 9 => {
                    let at: [u8; 8] = v[1..9].try_into().unwrap_or_default();
                    out.incoming.push(v1::PendingRequest {
                        user: other,
                        message: String::from_utf8_lossy(&v[9..]).into_owned(),
                        at_ms: i64::from_be_bytes(at),
                    });
                }
                _ => return Err(StoreError::Corrupt("bad contact value".into())),
            }
        }
        out.blocked = names_under(&self.tables.blocks, user)?;
        Ok(out)
    }

    async fn relation(&self, from: &str, to: &str) -> Result<Relation, StoreError> {
        check_key_part(from)?;
        check_key_part(to)?;
        let friends = self
            .tables
            .contacts
            .get(key(from, to))
            .map_err(unavailable)?
            .is_some_and(|v| v.first() == Some(&FRIEND));
        let blocked = self
            .tables
            .blocks
            .contains_key(key(to, from))
            .map_err(unavailable)?;
        let deleted = super::accounts::is_deleted(&self.tables, to)?;
        Ok(Relation {
            friends,
            blocked,
            deleted,
        })
    }

    async fn blocked(&self, user: &str) -> Result<Vec<String>, StoreError> {
        check_key_part(user)?;
        names_under(&self.tables.blocks, user)
    }

    async fn blockers(&self, user: &str) -> Result<Vec<String>, StoreError> {
        check_key_part(user)?;
        names_under(&self.tables.blocked_by, user)
    }
}

/// Who blocked `user`, as a set (for a group post).
pub(super) fn blockers_of(
    t: &Tables,
    user: &str,
) -> Result<std::collections::HashSet<String>, StoreError> {
    Ok(names_under(&t.blocked_by, user)?.into_iter().collect())
}

/// The second ids of the `[len][user][other]` keys of `user` in `keyspace`.
fn names_under(keyspace: &kv::Table, user: &str) -> Result<Vec<String>, StoreError> {
    let prefix = prefixed(user, 0);
    let mut out = Vec::new();
    for guard in keyspace.prefix(&prefix).take(MAX_CONTACTS) {
        let (k, _) = guard.into_inner().map_err(unavailable)?;
        out.push(
            std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| StoreError::Corrupt("bad contact key".into()))?
                .to_owned(),
        );
    }
    Ok(out)
}

/// Builds the reverse block index and the pending-request index of a store
/// written before they existed; once (a marker key says it was done).
pub(super) fn build_indexes(t: &Tables) -> Result<(), StoreError> {
    const DONE: [u8; 1] = [0];
    if t.blocked_by.contains_key(DONE).map_err(unavailable)? {
        return Ok(());
    }
    let mut batch = t.db.batch();
    let split = |k: &[u8]| -> Option<(Vec<u8>, Vec<u8>)> {
        let len = usize::from(*k.first()?);
        let (user, other) = (k.get(1..1 + len)?, k.get(1 + len..)?);
        Some((user.to_vec(), other.to_vec()))
    };
    for guard in t.blocks.iter() {
        let (k, _) = guard.into_inner().map_err(unavailable)?;
        if let Some((user, other)) = split(&k) {
            let mut reverse = vec![other.len() as u8];
            reverse.extend_from_slice(&other);
            reverse.extend_from_slice(&user);
            batch.insert(&t.blocked_by, reverse, Vec::new());
        }
    }
    for guard in t.contacts.iter() {
        let (k, v) = guard.into_inner().map_err(unavailable)?;
        if v.first() == Some(&SENT) {
            batch.insert(&t.outgoing, k.to_vec(), Vec::new());
        }
    }
    batch.insert(&t.blocked_by, DONE.to_vec(), Vec::new());
    batch.durable().commit().map_err(unavailable)
}
