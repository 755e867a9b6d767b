//! Groups: membership, roles, mutes and the switch from write to read
//! diffusion, as the gateway needs them.
//!
//! # Model
//! A group has members with roles (owner, admin, member) and mutes. While it
//! has at most `threshold` members, a message is copied to every member's
//! inbox (write diffusion, see [`ConversationStore::post`]). When a change
//! takes it past the threshold, it switches to **read diffusion** for good:
//! messages are appended once to the group's log (an inbox named
//! [`group_log`], with its own seq), pushed to online members, and pulled by
//! members in ranges. Since the switch and every post are serialised by the
//! same store write path, each message takes exactly one of the two paths:
//! none is lost or stored twice across the switch.
//!
//! # Contract (every backend)
//! - Each [`GroupOp`] is one atomic write (group record, member rows, each
//!   member's group index); a CQL backend uses a lightweight transaction on
//!   the group row (its `version`) so concurrent changes serialise.
//! - `joined_seq` of a member is the log head when they joined: a member
//!   reads only after it.
//! - Posts to a group check membership and mutes in the same serialised
//!   step as they store the message.
//!
//! [`ConversationStore::post`]: crate::ConversationStore::post
//! [`group_log`]: crate::conversations::group_log

use async_trait::async_trait;
use qim_proto::v1;

use crate::StoreError;
use crate::conversations::OpError;

/// A change to a group, made by `by`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GroupOp {
    /// Creates the group with `by` as owner and `members` as members.
    Create {
        /// Name.
        name: String,
        /// Initial members besides the owner.
        members: Vec<String>,
        /// Now.
        now_ms: i64,
    },
    /// Renames (admins).
    Rename(String),
    /// Dissolves (owner); members stop receiving, sends are refused.
    Dissolve,
    /// `by` joins.
    Join,
    /// `by` leaves (an owner must hand over first).
    Leave,
    /// `by` (a member) adds users.
    Invite(Vec<String>),
    /// `by` (an admin, or the owner for admins) removes users.
    Remove(Vec<String>),
    /// The owner sets a role; giving `Owner` hands the group over.
    SetRole(String, v1::GroupRole),
    /// An admin mutes or unmutes a member.
    MuteMember(String, bool),
    /// An admin mutes or unmutes everyone but admins.
    MuteAll(bool),
}

/// Groups and their members.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Applies `op` by `by` to `group` atomically; a group past `threshold`
    /// members switches to read diffusion in the same write.
    async fn group_apply(
        &self,
        group: &str,
        by: &str,
        op: GroupOp,
        threshold: u32,
    ) -> Result<v1::GroupInfo, OpError>;

    /// The group, if it exists (dissolved ones too).
    async fn group(&self, group: &str) -> Result<Option<v1::GroupInfo>, StoreError>;

    /// One member, if `user` is one.
    async fn member(&self, group: &str, user: &str) -> Result<Option<v1::GroupMember>, StoreError>;

    /// Members after user id `after` (empty: from the start), by user id, at
    /// most `limit`.
    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<v1::GroupMember>, StoreError>;

    /// The groups `user` is a member of.
    async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError>;
}
