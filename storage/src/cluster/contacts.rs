//! The cluster backend's [`ContactStore`]: relations in CQL, one change at
//! a time per pair of users.
//!
//! # How a change stays atomic
//! A change reads both users' rows, decides, and writes. Two changes of the
//! same pair on two nodes (alice's request crossing bob's) must not
//! interleave, so each holds a short lease on the pair in Redis
//! ([`PairLock`]: `SET NX PX` with a random token, released by a script
//! that deletes only its own token). Everything the change writes (both
//! rows and the events appended to the users' inboxes) goes into one
//! logged batch, so after a crash either all of it is applied or none
//! (the batch log replays it).
//!
//! The lease lasts [`LEASE`], far longer than a change (a handful of CQL
//! requests, each bounded by the request timeout); a node that dies
//! holding it delays that pair's next change by at most the lease. Event
//! seqs come from the inbox counters like messages; a batch that fails
//! leaves a gap that clients skip.
//!
//! # The rules' state
//! Beside both users' `contacts` rows the same batch keeps `blocked_by`
//! (the reverse of `blocks`), `contact_outgoing` (pending requests, counted
//! for the quota with a query bounded by it) and `contact_rejections` (the
//! start of a cool-down, until the two become friends). Every
//! write of a `contacts` row goes through [`ClusterStore::side_rows`], which
//! keeps `contact_outgoing` in step.

use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::{KeysInterface as _, LuaInterface as _};
use fred::types::{Expiration, SetOptions};
use qim_proto::v1;

use super::ClusterStore;
use crate::OpError;
use crate::StoreError;
use crate::contacts::{
    ContactOp, ContactStore, MAX_CONTACTS, Relation, RequestLimits, check_new_request,
};
use crate::conversations::Applied;
use crate::cql::social::Row;
use crate::redis::unavailable;

const FRIEND: i32 = 1;
const SENT: i32 = 2;
const RECEIVED: i32 = 3;

/// How long a pair's lease lasts unless released.
pub(crate) const LEASE: Duration = Duration::from_secs(10);

/// How long a change waits for a pair's lease before failing (retryable).
const LEASE_WAIT: Duration = Duration::from_secs(3);

/// Deletes the lease only if it still holds the caller's token.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

fn check_id(id: &str) -> Result<(), StoreError> {
    if qim_proto::ids::is_valid_id(id) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("{id:?} is not a valid id")))
    }
}

/// A held lease on a pair of users; release it with
/// [`unlock_pair`](ClusterStore::unlock_pair).
pub(crate) struct PairLock {
    key: String,
    token: String,
}

impl ClusterStore {
    fn pair_key(&self, a: &str, b: &str) -> String {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        format!("{{{}c:{x}:{y}}}:lock", self.prefix)
    }

    /// Takes the lease on the pair `(a, b)`, waiting up to [`LEASE_WAIT`].
    pub(crate) async fn lock_pair(&self, a: &str, b: &str) -> Result<PairLock, StoreError> {
        let key = self.pair_key(a, b);
        let token = format!("{:032x}", rand::random::<u128>());
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        let mut pause = Duration::from_millis(2);
        loop {
            let taken: Option<String> = self
                .redis
                .set(
                    &key,
                    token.as_str(),
                    Some(Expiration::PX(LEASE.as_millis() as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(unavailable)?;
            if taken.is_some() {
                return Ok(PairLock { key, token });
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(StoreError::Unavailable(format!(
                    "contacts of {a} and {b} are being changed elsewhere"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Gives a lease back (if it is still ours; it expires anyway).
    pub(crate) async fn unlock_pair(&self, lock: PairLock) {
        let released: Result<i64, _> = self
            .redis
            .eval(RELEASE, vec![lock.key], vec![lock.token])
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "releasing a contacts lease failed; it expires");
        }
    }

    async fn contact_state(&self, owner: &str, other: &str) -> Result<Option<i32>, StoreError> {
        let rows = self
            .social
            .exec(&self.social.contact_read, (owner, other))
            .await?
            .into_rows_result()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(rows
            .maybe_first_row::<(Option<i32>,)>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .and_then(|(s,)| s))
    }

    async fn blocks(&self, owner: &str, other: &str) -> Result<bool, StoreError> {
        let rows = self
            .social
            .exec(&self.social.block_read, (owner, other))
            .await?
            .into_rows_result()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(rows.rows_num() > 0)
    }

    /// The rows that set `owner`'s side of the relation with `other` to
    /// `state` (`None`: no relation), with the pending-request index.
    fn side_rows(
        &self,
        rows: &mut Vec<Row>,
        owner: &str,
        other: &str,
        state: Option<(i32, i64, &str)>,
    ) {
        let pair = || Box::new((owner.to_owned(), other.to_owned()));
        match state {
            Some((state, at_ms, message)) => rows.push((
                self.social.contact_put.clone(),
                Box::new((
                    owner.to_owned(),
                    other.to_owned(),
                    state,
                    at_ms,
                    message.to_owned(),
                )),
            )),
            None => rows.push((self.social.contact_delete.clone(), pair())),
        }
        if matches!(state, Some((SENT, _, _))) {
            rows.push((self.social.outgoing_put.clone(), pair()));
        } else {
            rows.push((self.social.outgoing_delete.clone(), pair()));
        }
    }

    /// The rows that make `a` and `b` friends (ending cool-downs).
    fn friend_rows(&self, rows: &mut Vec<Row>, a: &str, b: &str) {
        self.side_rows(rows, a, b, Some((FRIEND, 0, "")));
        self.side_rows(rows, b, a, Some((FRIEND, 0, "")));
        for (x, y) in [(a, b), (b, a)] {
            rows.push((
                self.social.rejection_delete.clone(),
                Box::new((x.to_owned(), y.to_owned())),
            ));
        }
    }

    /// Refuses `user`'s new request to `other` when it breaks a rule of
    /// `limits` (cool-down after a rejection, pending quota).
    async fn new_request_allowed(
        &self,
        user: &str,
        other: &str,
        limits: &RequestLimits,
        now_ms: i64,
    ) -> Result<(), OpError> {
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
        let rows = self
            .social
            .exec(&self.social.rejection_read, (user, other))
            .await?
            .into_rows_result()
            .map_err(|e| corrupt(&e))?;
        let rejected = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| corrupt(&e))?
            .and_then(|(at,)| at);
        let limit = i32::try_from(limits.max_pending).unwrap_or(i32::MAX);
        let pending = self
            .social
            .exec(&self.social.outgoing_of, (user, limit))
            .await?
            .into_rows_result()
            .map_err(|e| corrupt(&e))?
            .rows_num();
        check_new_request(rejected, pending, limits, now_ms)
    }

    /// The first column of `statement`'s rows for `user` (at most
    /// [`MAX_CONTACTS`]).
    pub(crate) async fn names(
        &self,
        statement: &scylla::statement::prepared::PreparedStatement,
        user: &str,
    ) -> Result<Vec<String>, StoreError> {
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
        let limit = i32::try_from(MAX_CONTACTS).unwrap_or(i32::MAX);
        let rows = self
            .social
            .exec(statement, (user, limit))
            .await?
            .into_rows_result()
            .map_err(|e| corrupt(&e))?;
        let mut out = Vec::new();
        for row in rows.rows::<(String,)>().map_err(|e| corrupt(&e))? {
            out.push(row.map_err(|e| corrupt(&e))?.0);
        }
        Ok(out)
    }

    /// Decides and writes one change while holding the pair's lease.
    async fn contact_change(
        &self,
        user: &str,
        other: &str,
        op: ContactOp,
        now_ms: i64,
    ) -> Result<Applied, OpError> {
        let mut rows: Vec<Row> = Vec::new();
        let mut events: Vec<(&str, v1::inbox_event::Kind)> = Vec::new();
        let answer = |accepted: bool| {
            v1::inbox_event::Kind::FriendResponse(v1::FriendResponseEvent {
                from: user.to_owned(),
                accepted,
            })
        };
        match op {
            ContactOp::Request {
                message, limits, ..
            } => {
                if self.blocks(other, user).await? {
                    return Err(OpError::Blocked);
                }
                match self.contact_state(user, other).await? {
                    Some(FRIEND) => {}
                    Some(RECEIVED) => {
                        // They asked first: this accepts.
                        self.friend_rows(&mut rows, user, other);
                        events.push((other, answer(true)));
                    }
                    Some(SENT) => return Err(OpError::Pending),
                    _ => {
                        self.new_request_allowed(user, other, &limits, now_ms)
                            .await?;
                        self.side_rows(&mut rows, user, other, Some((SENT, 0, "")));
                        self.side_rows(&mut rows, other, user, Some((RECEIVED, now_ms, &message)));
                        events.push((
                            other,
                            v1::inbox_event::Kind::FriendRequest(v1::FriendRequestEvent {
                                from: user.to_owned(),
                                message,
                            }),
                        ));
                    }
                }
            }
            ContactOp::Accept(_) | ContactOp::Reject(_) => {
                if self.contact_state(user, other).await? != Some(RECEIVED) {
                    return Err(OpError::NotFound);
                }
                let accepted = matches!(op, ContactOp::Accept(_));
                if accepted {
                    self.friend_rows(&mut rows, user, other);
                } else {
                    self.side_rows(&mut rows, user, other, None);
                    self.side_rows(&mut rows, other, user, None);
                    // The requester's cool-down starts now.
                    rows.push((
                        self.social.rejection_put.clone(),
                        Box::new((other.to_owned(), user.to_owned(), now_ms)),
                    ));
                }
                events.push((other, answer(accepted)));
            }
            ContactOp::Remove(_) => {
                if self.contact_state(user, other).await? != Some(FRIEND) {
                    return Err(OpError::NotFound);
                }
                self.side_rows(&mut rows, user, other, None);
                self.side_rows(&mut rows, other, user, None);
            }
            ContactOp::Block(_) => {
                let pair = Box::new((user.to_owned(), other.to_owned()));
                let reverse = Box::new((other.to_owned(), user.to_owned()));
                rows.push((self.social.block_put.clone(), pair));
                rows.push((self.social.blocked_by_put.clone(), reverse));
                self.side_rows(&mut rows, user, other, None);
                self.side_rows(&mut rows, other, user, None);
            }
            ContactOp::Unblock(_) => {
                let pair = Box::new((user.to_owned(), other.to_owned()));
                let reverse = Box::new((other.to_owned(), user.to_owned()));
                rows.push((self.social.block_delete.clone(), pair));
                rows.push((self.social.blocked_by_delete.clone(), reverse));
            }
        }
        let mut applied = Applied::default();
        for (inbox, event) in events {
            let stored = self.event(inbox, user, event, now_ms).await?;
            rows.push(self.cql.message_row(&stored)?);
            applied.events.push(stored);
        }
        self.social.batch(rows).await?;
        Ok(applied)
    }
}

fn target(op: &ContactOp) -> &str {
    match op {
        ContactOp::Request { other, .. } => other,
        ContactOp::Accept(o)
        | ContactOp::Reject(o)
        | ContactOp::Remove(o)
        | ContactOp::Block(o)
        | ContactOp::Unblock(o) => o,
    }
}

#[async_trait]
impl ContactStore for ClusterStore {
    async fn contact_apply(
        &self,
        user: &str,
        op: ContactOp,
        now_ms: i64,
    ) -> Result<Applied, OpError> {
        let other = target(&op).to_owned();
        check_id(user)?;
        check_id(&other)?;
        if matches!(op, ContactOp::Request { .. }) && other == user {
            return Err(OpError::NotAllowed);
        }
        let lock = self.lock_pair(user, &other).await?;
        let result = self.contact_change(user, &other, op, now_ms).await;
        self.unlock_pair(lock).await;
        result
    }

    async fn contacts(&self, user: &str) -> Result<v1::ContactsResponse, StoreError> {
        check_id(user)?;
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
        let limit = i32::try_from(3 * MAX_CONTACTS).unwrap_or(i32::MAX);
        let rows = self
            .social
            .exec(&self.social.contacts_of, (user, limit))
            .await?
            .into_rows_result()
            .map_err(|e| corrupt(&e))?;
        let mut out = v1::ContactsResponse::default();
        for row in rows
            .rows::<(String, Option<i32>, Option<i64>, Option<String>)>()
            .map_err(|e| corrupt(&e))?
        {
            let (other, state, at_ms, message) = row.map_err(|e| corrupt(&e))?;
            match state {
                Some(FRIEND) => out.friends.push(other),
                Some(SENT) => out.outgoing.push(other),
                Some(RECEIVED) => out.incoming.push(v1::PendingRequest {
                    user: other,
                    message: message.unwrap_or_default(),
                    at_ms: at_ms.unwrap_or(0),
                }),
                _ => return Err(StoreError::Corrupt("bad contact state".into())),
            }
        }
        out.blocked = self.names(&self.social.blocks_of, user).await?;
        Ok(out)
    }

    async fn blocked(&self, user: &str) -> Result<Vec<String>, StoreError> {
        check_id(user)?;
        self.names(&self.social.blocks_of, user).await
    }

    async fn blockers(&self, user: &str) -> Result<Vec<String>, StoreError> {
        check_id(user)?;
        self.names(&self.social.blockers_of, user).await
    }

    async fn relation(&self, from: &str, to: &str) -> Result<Relation, StoreError> {
        check_id(from)?;
        check_id(to)?;
        let (state, blocked, deleted) = tokio::try_join!(
            self.contact_state(from, to),
            self.blocks(to, from),
            self.is_deleted(to)
        )?;
        Ok(Relation {
            friends: state == Some(FRIEND),
            blocked,
            deleted,
        })
    }
}
