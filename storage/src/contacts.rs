//! Contacts: friend requests, friends and blocks.
//!
//! # Contract (every backend)
//! - Each [`ContactOp`] is one atomic write of both users' rows and of the
//!   events it appends (a request to the addressee's inbox, an answer to the
//!   requester's), durable before it returns. A CQL backend writes both rows
//!   and the events with a logged batch, serialised per user pair.
//! - A request to someone who already asked you accepts theirs.
//! - One pending request per pair: asking again while your request waits
//!   is refused [`OpError::Pending`] and appends no event.
//! - A rejected request cannot be repeated within
//!   [`RequestLimits::cooldown_ms`] of the rejection
//!   ([`OpError::Cooldown`], with the time left); becoming friends or a
//!   block clears the record.
//! - A user has at most [`RequestLimits::max_pending`] outgoing requests
//!   waiting ([`OpError::QuotaExceeded`]). Counted under the pair's lock
//!   only, so requests of one user racing on several nodes may pass the
//!   count by the number that raced.
//! - Blocks are one-way and independent of friendship; blocking ends a
//!   friendship and drops pending requests between the two, both ways. A
//!   request to someone who blocked you is refused [`OpError::Blocked`]
//!   and appends no event.
//! - Each block is also kept in a reverse index, "who blocked X"
//!   ([`ContactStore::blockers`]), written in the same write as the
//!   block, so a group post learns with one read which members must not
//!   get it.

use async_trait::async_trait;
use qim_proto::v1;

use crate::StoreError;
use crate::conversations::Applied;
use crate::{OpError, Quota};

/// A change to `user`'s contacts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ContactOp {
    /// Ask `other` to be friends.
    Request {
        /// The addressee.
        other: String,
        /// A message for them.
        message: String,
        /// The rules the request is held to.
        limits: RequestLimits,
    },
    /// Accept `other`'s request.
    Accept(String),
    /// Reject `other`'s request.
    Reject(String),
    /// End the friendship with `other`.
    Remove(String),
    /// Block `other`.
    Block(String),
    /// Unblock `other`.
    Unblock(String),
}

/// The rules a friend request is held to (from the gateway's
/// configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Milliseconds after a rejection before the requester may ask the
    /// same user again.
    pub cooldown_ms: i64,
    /// Outgoing requests a user may have waiting at once.
    pub max_pending: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            cooldown_ms: 24 * 3_600_000,
            max_pending: 100,
        }
    }
}

/// Whether `from` may message `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relation {
    /// They are friends.
    pub friends: bool,
    /// `to` has blocked `from`.
    pub blocked: bool,
    /// `to`'s account is deleted (a tombstone,
    /// [`AccountStore::mark_deleted`](crate::AccountStore::mark_deleted)):
    /// nothing may be sent to it. Read with the two above at no extra
    /// round trip (the same local read on the embedded store, in
    /// parallel on the cluster).
    pub deleted: bool,
}

/// Friends, blocks and friend requests.
#[async_trait]
pub trait ContactStore: Send + Sync + 'static {
    /// Applies `op` for `user` atomically; returns the events appended.
    async fn contact_apply(
        &self,
        user: &str,
        op: ContactOp,
        now_ms: i64,
    ) -> Result<Applied, OpError>;

    /// `user`'s friends, blocks and pending requests (each list capped at
    /// [`MAX_CONTACTS`]).
    async fn contacts(&self, user: &str) -> Result<v1::ContactsResponse, StoreError>;

    /// How `from` stands with `to`.
    async fn relation(&self, from: &str, to: &str) -> Result<Relation, StoreError>;

    /// The users `user` blocked (at most [`MAX_CONTACTS`]).
    async fn blocked(&self, user: &str) -> Result<Vec<String>, StoreError>;

    /// The users who blocked `user` (at most [`MAX_CONTACTS`]), from the
    /// reverse index.
    async fn blockers(&self, user: &str) -> Result<Vec<String>, StoreError>;
}

/// Whether a new request passes `limits`, given when the addressee last
/// rejected the requester (if they did) and how many of the requester's
/// requests wait (counted up to `limits.max_pending`). Both backends decide
/// with it.
pub(crate) fn check_new_request(
    rejected_ms: Option<i64>,
    pending: usize,
    limits: &RequestLimits,
    now_ms: i64,
) -> Result<(), OpError> {
    if let Some(at) = rejected_ms {
        let left = at.saturating_add(limits.cooldown_ms).saturating_sub(now_ms);
        if left > 0 {
            return Err(OpError::Cooldown {
                retry_after_ms: u64::try_from(left).unwrap_or(u64::MAX),
            });
        }
    }
    if pending >= limits.max_pending {
        return Err(OpError::QuotaExceeded(Quota::PendingFriendRequests));
    }
    Ok(())
}

/// Entries listed per contact list at most.
pub const MAX_CONTACTS: usize = 10_000;
