//! Groups through the bindings: create, change (rename, dissolve, join,
//! leave, invite, remove, roles, mutes), member pages, sends and read
//! counts.
//!
//! Group messages arrive through `ClientListener.on_message` like any
//! message, with `conversation = Peer.Group(id)` (and, in a large
//! read-diffusion group, `group_seq` set and `seq` 0; the SDK pulls what a
//! nudge announces by itself, so nudges never reach the app). Refusals
//! keep the wire code: `NOT_A_MEMBER`, `MUTED`, `PERMISSION_DENIED`,
//! `NOT_FOUND`.

use crate::{MessageExtras, OutgoingMessage, QimClient, QimError, SendReceipt};

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum GroupRole {
    /// Sends and invites.
    Member,
    /// Also renames, mutes, removes members, uses `@all`.
    Admin,
    /// Also sets roles and dissolves.
    Owner,
}

impl From<qim_sdk::GroupRole> for GroupRole {
    fn from(r: qim_sdk::GroupRole) -> Self {
        match r {
            qim_sdk::GroupRole::Owner => GroupRole::Owner,
            qim_sdk::GroupRole::Admin => GroupRole::Admin,
            _ => GroupRole::Member,
        }
    }
}

impl From<GroupRole> for qim_sdk::GroupRole {
    fn from(r: GroupRole) -> Self {
        match r {
            GroupRole::Owner => qim_sdk::GroupRole::Owner,
            GroupRole::Admin => qim_sdk::GroupRole::Admin,
            GroupRole::Member => qim_sdk::GroupRole::Member,
        }
    }
}

/// A group as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupInfo {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Owner's user id.
    pub owner: String,
    /// Members now.
    pub member_count: u32,
    /// Only admins may send.
    pub muted_all: bool,
    /// Dissolved.
    pub dissolved: bool,
    /// Messages live in one group log (pushed, pulled) instead of each
    /// member's inbox: a large group.
    pub read_diffusion: bool,
}

impl From<qim_sdk::GroupInfo> for GroupInfo {
    fn from(g: qim_sdk::GroupInfo) -> Self {
        GroupInfo {
            id: g.id,
            name: g.name,
            owner: g.owner,
            member_count: g.member_count,
            muted_all: g.muted_all,
            dissolved: g.dissolved,
            read_diffusion: g.read_diffusion,
        }
    }
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupMember {
    /// User id.
    pub user: String,
    /// Role.
    pub role: GroupRole,
    /// Muted by an admin: their sends are refused with `MUTED`.
    pub muted: bool,
}

impl From<qim_sdk::GroupMember> for GroupMember {
    fn from(m: qim_sdk::GroupMember) -> Self {
        GroupMember {
            user: m.user,
            role: m.role.into(),
            muted: m.muted,
        }
    }
}

/// A page of a group's members, ordered by user id.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MemberPage {
    /// The members.
    pub members: Vec<GroupMember>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
}

impl From<(Vec<qim_sdk::GroupMember>, Option<String>)> for MemberPage {
    fn from((members, next): (Vec<qim_sdk::GroupMember>, Option<String>)) -> Self {
        MemberPage {
            members: crate::list(members),
            next,
        }
    }
}

/// How many members read a group message: "read by `read` of `total`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct ReadCount {
    /// Members whose read cursor passed the message.
    pub read: u32,
    /// Members it counts over.
    pub total: u32,
}

impl From<(u32, u32)> for ReadCount {
    fn from((read, total): (u32, u32)) -> Self {
        ReadCount { read, total }
    }
}

/// A change to a group; who may make it is in each variant.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum GroupChange {
    /// New name (admins).
    Rename {
        /// The name.
        name: String,
    },
    /// Dissolve the group (owner).
    Dissolve,
    /// Join it.
    Join,
    /// Leave it.
    Leave,
    /// Add users (members).
    Invite {
        /// User ids.
        users: Vec<String>,
    },
    /// Remove users (admins): they stop receiving at once.
    Remove {
        /// User ids.
        users: Vec<String>,
    },
    /// Set a member's role (owner); `Owner` hands the group over.
    SetRole {
        /// The member.
        user: String,
        /// The new role.
        role: GroupRole,
    },
    /// Mute or unmute a member (admins).
    MuteMember {
        /// The member.
        user: String,
        /// Muted now.
        muted: bool,
    },
    /// Mute or unmute everyone but admins (admins).
    MuteAll {
        /// Muted now.
        muted: bool,
    },
}

impl From<GroupChange> for qim_sdk::GroupChange {
    fn from(c: GroupChange) -> Self {
        use qim_sdk::GroupChange as G;
        match c {
            GroupChange::Rename { name } => G::Rename(name),
            GroupChange::Dissolve => G::Dissolve,
            GroupChange::Join => G::Join,
            GroupChange::Leave => G::Leave,
            GroupChange::Invite { users } => G::Invite(users),
            GroupChange::Remove { users } => G::Remove(users),
            GroupChange::SetRole { user, role } => G::SetRole(user, role.into()),
            GroupChange::MuteMember { user, muted } => G::MuteMember(user, muted),
            GroupChange::MuteAll { muted } => G::MuteAll(muted),
        }
    }
}

#[uniffi::export]
impl QimClient {
    /// Creates `group` (a new id) named `name`, with this user as owner and
    /// `members` invited.
    pub async fn create_group(
        &self,
        group: String,
        name: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, QimError> {
        self.call(move |c| async move { c.create_group(group, name, members).await })
            .await
    }

    /// Changes a group; returns it as it is afterwards.
    pub async fn change_group(
        &self,
        group: String,
        change: GroupChange,
    ) -> Result<GroupInfo, QimError> {
        self.call(move |c| async move { c.change_group(group, change.into()).await })
            .await
    }

    /// A group's info.
    pub async fn group_info(&self, group: String) -> Result<GroupInfo, QimError> {
        self.call(move |c| async move { c.group_info(group).await })
            .await
    }

    /// A page of a group's members, after user id `after` (`None`: from
    /// the first); `limit` 0 means the server's default page size.
    pub async fn group_members(
        &self,
        group: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<MemberPage, QimError> {
        self.call(move |c| async move {
            c.group_members(group, after.unwrap_or_default(), limit)
                .await
        })
        .await
    }

    /// Sends a text message to a group; returns when the server stored it.
    pub async fn send_group(&self, group: String, text: String) -> Result<SendReceipt, QimError> {
        self.call(move |c| async move { c.send_group(group, text).await })
            .await
    }

    /// Sends a message to a group (`message.to` is ignored) with a reply
    /// quote and mentions (`@all`: admins only).
    pub async fn send_group_with(
        &self,
        group: String,
        message: OutgoingMessage,
        extras: MessageExtras,
    ) -> Result<SendReceipt, QimError> {
        self.call(move |c| async move {
            c.send_group_with(group, message.into(), extras.into())
                .await
        })
        .await
    }

    /// How many members have read a group message this user sent.
    pub async fn read_count(&self, msg_id: String) -> Result<ReadCount, QimError> {
        self.call(move |c| async move { c.read_count(msg_id).await })
            .await
    }
}
