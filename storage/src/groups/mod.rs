//! Groups: membership, roles, mutes, who may become a member (join
//! policies, invitations, join requests, bans, the member limit) and the
//! switch from write to read diffusion, as the gateway needs them.
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
//! Beside its members a group keeps three lists ([`List`]): users
//! **invited** and not answered yet, users who **requested** to join an
//! approval group, and users **banned** by an admin. The rules of who may
//! join, invite, answer, ban and change settings are in [`plan`]:
//! - A join follows the group's [`v1::JoinPolicy`]: refused
//!   ([`OpError::InviteOnly`]) in an invite-only group, a member at once in
//!   an open group, a join request in an approval group (an event to every
//!   admin and the owner; an admin approves or denies, the asker gets a
//!   `JoinAnswer`).
//! - A banned user cannot join, ask to join, be added, be invited or accept
//!   an earlier invitation ([`OpError::Banned`]); a ban removes the member
//!   and their invitation or request, and stays until an admin unbans.
//! - Members and pending invitations together never exceed the group's
//!   `max_members` (at most the server's), on every path that adds one
//!   (create, add, invite, join, approve, accept): [`OpError::GroupFull`].
//! - An invitee has at most [`GroupLimits::invitations_per_user`] pending
//!   invitations, and a group at most [`GroupLimits::join_requests`] pending
//!   join requests ([`OpError::QuotaExceeded`] beyond), so no one stores
//!   unbounded lists in another user's name.
//! - A user owns at most [`GroupLimits::groups_owned`] groups (create and
//!   hand-over refused with [`OpError::QuotaExceeded`]).
//!
//! Who is added directly and who is invited (the invitee's
//! [`v1::GroupAdds`] setting, blocks) is the caller's decision: a
//! [`GroupOp::Create`] or [`GroupOp::Invite`] names both lists.
//!
//! # Contract (every backend)
//! - Each [`GroupOp`] is one atomic write (group record, member rows, the
//!   group's lists, each member's group index); a CQL backend uses a
//!   lightweight transaction on the group row (its `version`) so concurrent
//!   changes serialise.
//! - The events a change appends (invitations, join requests, answers) are
//!   returned in [`GroupApplied::events`], durable when it returns.
//! - `joined_seq` of a member is the log head when they joined: a member
//!   reads only after it.
//! - Posts to a group check membership and mutes in the same serialised
//!   step as they store the message.
//! - [`GroupStore::invitations`] lists only invitations the group still
//!   holds.
//!
//! [`ConversationStore::post`]: crate::ConversationStore::post
//! [`group_log`]: crate::conversations::group_log

mod plan;

use async_trait::async_trait;
use qim_proto::v1;

use crate::OpError;
use crate::StoreError;
use crate::StoredMessage;

pub(crate) use plan::{GroupChange, PlanInput, Roster, check_post, plan};

/// A change to a group, made by `by`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GroupOp {
    /// Creates the group with `by` as owner, `members` as members and
    /// `invited` sent an invitation.
    Create {
        /// Name.
        name: String,
        /// Initial members besides the owner.
        members: Vec<String>,
        /// Users invited (they accept or decline).
        invited: Vec<String>,
        /// Who may join.
        join_policy: v1::JoinPolicy,
        /// Member limit; 0: the server's.
        max_members: u32,
        /// Non-members may read the group's info.
        public: bool,
        /// Now.
        now_ms: i64,
    },
    /// Renames (admins).
    Rename(String),
    /// Dissolves (owner); members stop receiving, sends are refused.
    Dissolve,
    /// `by` joins (open group, or accepting a pending invitation) or asks
    /// to join (approval group).
    Join,
    /// `by` leaves (an owner must hand over first).
    Leave,
    /// `by` (a member) adds `add` and invites `invite`.
    Invite {
        /// Added at once.
        add: Vec<String>,
        /// Sent an invitation.
        invite: Vec<String>,
    },
    /// `by` (an admin, or the owner for admins) removes users.
    Remove(Vec<String>),
    /// The owner sets a role; giving `Owner` hands the group over.
    SetRole(String, v1::GroupRole),
    /// An admin mutes or unmutes a member.
    MuteMember(String, bool),
    /// An admin mutes or unmutes everyone but admins.
    MuteAll(bool),
    /// `by` accepts their pending invitation.
    AcceptInvitation,
    /// `by` declines their pending invitation.
    DeclineInvitation,
    /// An admin approves join requests.
    Approve(Vec<String>),
    /// An admin denies join requests.
    Deny(Vec<String>),
    /// An admin bans users (removing members, invitations and requests).
    Ban(Vec<String>),
    /// An admin lifts bans.
    Unban(Vec<String>),
    /// An admin changes settings (unset fields stay).
    Settings(v1::GroupSettings),
}

impl GroupOp {
    /// Who would own a group after this op by `by` (creator, new owner):
    /// the backend counts the groups they own for [`plan`].
    pub(crate) fn new_owner<'a>(&'a self, by: &'a str) -> Option<&'a str> {
        match self {
            GroupOp::Create { .. } => Some(by),
            GroupOp::SetRole(user, v1::GroupRole::Owner) => Some(user),
            _ => None,
        }
    }

    /// Users this op may send an invitation: the backend counts their
    /// pending invitations for [`plan`].
    pub(crate) fn invitees(&self) -> &[String] {
        match self {
            GroupOp::Create { invited, .. } => invited,
            GroupOp::Invite { invite, .. } => invite,
            _ => &[],
        }
    }
}

/// The server's limits a change is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Past this many members a group switches to read diffusion.
    pub threshold: u32,
    /// The server's member limit: members and pending invitations together.
    /// A group's own limit is at most this.
    pub max_members: u32,
    /// Groups one user may own at once.
    pub groups_owned: u32,
    /// Pending invitations one user may have at once.
    pub invitations_per_user: u32,
    /// Join requests one group may have waiting at once.
    pub join_requests: u32,
}

impl GroupLimits {
    /// Generous limits around a diffusion `threshold` (for tests and tools).
    pub fn with_threshold(threshold: u32) -> Self {
        GroupLimits {
            threshold,
            max_members: 100_000,
            groups_owned: 100,
            invitations_per_user: 100,
            join_requests: 100,
        }
    }
}

/// A group's lists besides its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum List {
    /// Invited, not answered yet.
    Invited,
    /// Asked to join (approval groups).
    Requested,
    /// Banned.
    Banned,
}

impl List {
    /// The byte a backend keys the list by.
    pub(crate) fn tag(self) -> u8 {
        match self {
            List::Invited => b'i',
            List::Requested => b'r',
            List::Banned => b'b',
        }
    }

    /// The list of a tag byte.
    pub(crate) fn from_tag(tag: u8) -> Option<List> {
        match tag {
            b'i' => Some(List::Invited),
            b'r' => Some(List::Requested),
            b'b' => Some(List::Banned),
            _ => None,
        }
    }
}

/// An entry of a group's [`List`]: who is on it and who put them there
/// (the inviter, the asker, the admin who banned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The user on the list.
    pub user: String,
    /// Who put them there.
    pub by: String,
}

/// What a [`GroupOp`] did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupApplied {
    /// The group after the change.
    pub info: v1::GroupInfo,
    /// Users who became members.
    pub added: Vec<String>,
    /// Users who stopped being members.
    pub removed: Vec<String>,
    /// Users sent an invitation by this change.
    pub invited: Vec<String>,
    /// A join request now waits for an admin.
    pub requested: bool,
    /// Events appended (invitations, join requests, answers), durable.
    pub events: Vec<StoredMessage>,
}

/// Groups and their members.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Applies `op` by `by` to `group` atomically under `limits`; a group
    /// past `limits.threshold` members switches to read diffusion in the
    /// same write.
    async fn group_apply(
        &self,
        group: &str,
        by: &str,
        op: GroupOp,
        limits: GroupLimits,
    ) -> Result<GroupApplied, OpError>;

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

    /// Entries of one of the group's lists after user id `after`, by user
    /// id, at most `limit`.
    async fn listed(
        &self,
        group: &str,
        list: List,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError>;

    /// Whether `user` is on one of the group's lists, and who put them there.
    async fn listing(
        &self,
        group: &str,
        list: List,
        user: &str,
    ) -> Result<Option<Listed>, StoreError>;

    /// The groups `user` is a member of.
    async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError>;

    /// `user`'s pending invitations (at most
    /// [`GroupLimits::invitations_per_user`] of them exist).
    async fn invitations(&self, user: &str) -> Result<Vec<v1::GroupInvitation>, StoreError>;

    /// Groups whose invited, requested or banned lists may name `user`, a
    /// superset (check each with [`GroupStore::listing`]); read when the
    /// user is deleted ([`Stores::delete_user`](crate::Stores::delete_user)).
    async fn listed_in(&self, user: &str) -> Result<Vec<String>, StoreError>;

    /// Who may add `user` to groups directly; `None` when never set.
    async fn group_adds(&self, user: &str) -> Result<Option<v1::GroupAdds>, StoreError>;

    /// Sets who may add `user` to groups directly; durable when it returns.
    async fn set_group_adds(&self, user: &str, adds: v1::GroupAdds) -> Result<(), StoreError>;
}

/// Members listed per page at most.
pub(crate) const MAX_MEMBERS_PAGE: usize = 1000;
