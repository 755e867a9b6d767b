//! Contacts: friend requests, friends and blocks.
//!
//! # Contract (every backend)
//! - Each [`ContactOp`] is one atomic write of both users' rows and of the
//!   events it appends (a request to the addressee's inbox, an answer to the
//!   requester's), durable before it returns. A CQL backend writes both rows
//!   and the events with a logged batch, serialised per user pair.
//! - A request to someone who already asked you accepts theirs.
//! - Blocks are one-way and independent of friendship; blocking ends a
//!   friendship and drops pending requests between the two.

use async_trait::async_trait;
use qim_proto::v1;

use crate::OpError;
use crate::StoreError;
use crate::conversations::Applied;

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

/// Whether `from` may message `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relation {
    /// They are friends.
    pub friends: bool,
    /// `to` has blocked `from`.
    pub blocked: bool,
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
}

/// Entries listed per contact list at most.
pub const MAX_CONTACTS: usize = 10_000;
