//! The embedded backend's [`ContactStore`], written by the writer thread.
//!
//! # Keys
//! - `contacts`: `[len][user][other]` → `[state]` (1 friend, 2 request sent)
//!   or `[3][at_ms i64 BE][message]` (request received).
//! - `blocks`: `[len][user][other]` → empty: `user` blocked `other`.

use async_trait::async_trait;
use qim_proto::v1;
use tokio::sync::oneshot;

use super::EmbeddedStore;
use super::tables::{check_key_part, prefixed, unavailable};
use super::writer::{Op, Request, Stage, Writer};
use crate::OpError;
use crate::StoreError;
use crate::contacts::{ContactOp, ContactStore, MAX_CONTACTS, Relation};
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
            ContactOp::Request { other, message } => {
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
                        stage
                            .batch
                            .insert(&t.contacts, key(user, &other), vec![FRIEND]);
                        stage
                            .batch
                            .insert(&t.contacts, key(&other, user), vec![FRIEND]);
                        answer(self, stage, &mut applied, &other, true)?;
                    }
                    _ => {
                        stage
                            .batch
                            .insert(&t.contacts, key(user, &other), vec![SENT]);
                        let mut value = vec![RECEIVED];
                        value.extend_from_slice(&now_ms.to_be_bytes());
                        value.extend_from_slice(message.as_bytes());
                        stage.batch.insert(&t.contacts, key(&other, user), value);
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
                stage
                    .batch
                    .insert(&t.contacts, key(user, &other), vec![FRIEND]);
                stage
                    .batch
                    .insert(&t.contacts, key(&other, user), vec![FRIEND]);
                answer(self, stage, &mut applied, &other, true)?;
            }
            ContactOp::Reject(other) => {
                check_key_part(&other)?;
                if self.contact_state(user, &other)? != Some(RECEIVED) {
                    return Err(OpError::NotFound);
                }
                stage.batch.remove(&t.contacts, key(user, &other));
                stage.batch.remove(&t.contacts, key(&other, user));
                answer(self, stage, &mut applied, &other, false)?;
            }
            ContactOp::Remove(other) => {
                check_key_part(&other)?;
                if self.contact_state(user, &other)? != Some(FRIEND) {
                    return Err(OpError::NotFound);
                }
                stage.batch.remove(&t.contacts, key(user, &other));
                stage.batch.remove(&t.contacts, key(&other, user));
            }
            ContactOp::Block(other) => {
                check_key_part(&other)?;
                stage.batch.insert(&t.blocks, key(user, &other), Vec::new());
                stage.batch.remove(&t.contacts, key(user, &other));
                stage.batch.remove(&t.contacts, key(&other, user));
            }
            ContactOp::Unblock(other) => {
                check_key_part(&other)?;
                stage.batch.remove(&t.blocks, key(user, &other));
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
        for guard in self.tables.blocks.prefix(&prefix).take(MAX_CONTACTS) {
            let (k, _) = guard.into_inner().map_err(unavailable)?;
            out.blocked.push(name(&k)?);
        }
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
        Ok(Relation { friends, blocked })
    }
}
