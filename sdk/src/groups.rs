//! Groups in the client: create and change groups, list members, send to a
//! group.
//!
//! A write-diffusion group's messages arrive in the inbox like any message;
//! a read-diffusion group's are ordered per group by the receive path
//! (`receive`) and reach [`Client::next_message`] with
//! [`IncomingMessage::group_seq`](crate::IncomingMessage::group_seq) set.

use qim_proto::v1::{self, group_request, rpc_request, rpc_response};

use crate::Error;
use crate::client::Client;
use crate::message::{MessageExtras, OutgoingMessage, Peer, SendReceipt};
use crate::rpc::unexpected;

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum GroupRole {
    /// Sends and invites.
    #[default]
    Member,
    /// Also renames, mutes, removes members, uses `@all`.
    Admin,
    /// Also sets roles and dissolves.
    Owner,
}

impl GroupRole {
    fn from_wire(r: i32) -> GroupRole {
        match v1::GroupRole::try_from(r) {
            Ok(v1::GroupRole::Admin) => GroupRole::Admin,
            Ok(v1::GroupRole::Owner) => GroupRole::Owner,
            _ => GroupRole::Member,
        }
    }

    fn to_wire(self) -> v1::GroupRole {
        match self {
            GroupRole::Member => v1::GroupRole::Member,
            GroupRole::Admin => v1::GroupRole::Admin,
            GroupRole::Owner => v1::GroupRole::Owner,
        }
    }
}

/// A group as the server describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct GroupInfo {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Owner.
    pub owner: String,
    /// Members now.
    pub member_count: u32,
    /// Only admins may send.
    pub muted_all: bool,
    /// Dissolved.
    pub dissolved: bool,
    /// Messages are in one group log (pushed, pulled) instead of inboxes.
    pub read_diffusion: bool,
}

impl GroupInfo {
    fn from_wire(g: v1::GroupInfo) -> GroupInfo {
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct GroupMember {
    /// User id.
    pub user: String,
    /// Role.
    pub role: GroupRole,
    /// Muted by an admin.
    pub muted: bool,
}

/// A change to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum GroupChange {
    /// New name (admins).
    Rename(String),
    /// Dissolve (owner).
    Dissolve,
    /// Join.
    Join,
    /// Leave.
    Leave,
    /// Add users.
    Invite(Vec<String>),
    /// Remove users (admins).
    Remove(Vec<String>),
    /// Set a member's role (owner); `Owner` hands the group over.
    SetRole(String, GroupRole),
    /// Mute or unmute a member (admins).
    MuteMember(String, bool),
    /// Mute or unmute everyone but admins.
    MuteAll(bool),
}

impl GroupChange {
    fn into_wire(self) -> group_request::Op {
        use group_request::Op;
        match self {
            GroupChange::Rename(n) => Op::Rename(n),
            GroupChange::Dissolve => Op::Dissolve(true),
            GroupChange::Join => Op::Join(true),
            GroupChange::Leave => Op::Leave(true),
            GroupChange::Invite(users) => Op::Invite(group_request::Users { users }),
            GroupChange::Remove(users) => Op::Remove(group_request::Users { users }),
            GroupChange::SetRole(user, role) => Op::SetRole(group_request::SetRole {
                user,
                role: role.to_wire() as i32,
            }),
            GroupChange::MuteMember(user, muted) => {
                Op::MuteMember(group_request::SetMute { user, muted })
            }
            GroupChange::MuteAll(true) => Op::MuteAll(true),
            GroupChange::MuteAll(false) => Op::UnmuteAll(true),
        }
    }
}

impl Client {
    /// Creates `group` with this user as owner.
    pub async fn create_group(
        &self,
        group: String,
        name: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, Error> {
        self.group_reply(rpc_request::Kind::CreateGroup(v1::CreateGroupRequest {
            group,
            name,
            members,
            ..Default::default()
        }))
        .await
    }

    /// Changes a group.
    pub async fn change_group(
        &self,
        group: String,
        change: GroupChange,
    ) -> Result<GroupInfo, Error> {
        self.group_reply(rpc_request::Kind::Group(v1::GroupRequest {
            group,
            op: Some(change.into_wire()),
        }))
        .await
    }

    /// A group's info.
    pub async fn group_info(&self, group: String) -> Result<GroupInfo, Error> {
        self.group_reply(rpc_request::Kind::Group(v1::GroupRequest {
            group,
            op: Some(group_request::Op::Info(true)),
        }))
        .await
    }

    async fn group_reply(&self, request: rpc_request::Kind) -> Result<GroupInfo, Error> {
        match self.rpc(request).await? {
            rpc_response::Kind::Group(v1::GroupResponse { group: Some(g), .. }) => {
                Ok(GroupInfo::from_wire(g))
            }
            _ => Err(unexpected()),
        }
    }

    /// Members after user id `after` (empty: from the start), and where the
    /// next page starts (`None` on the last).
    pub async fn group_members(
        &self,
        group: String,
        after: String,
        limit: u32,
    ) -> Result<(Vec<GroupMember>, Option<String>), Error> {
        match self
            .rpc(rpc_request::Kind::Members(v1::MembersRequest {
                group,
                after,
                limit,
                list: v1::MemberList::Members as i32,
            }))
            .await?
        {
            rpc_response::Kind::Members(m) => Ok((
                m.members
                    .into_iter()
                    .map(|m| GroupMember {
                        user: m.user,
                        role: GroupRole::from_wire(m.role),
                        muted: m.muted,
                    })
                    .collect(),
                (!m.next.is_empty()).then_some(m.next),
            )),
            _ => Err(unexpected()),
        }
    }

    /// Sends a text message to a group.
    pub async fn send_group(&self, group: String, text: String) -> Result<SendReceipt, Error> {
        self.send_group_with(
            group,
            OutgoingMessage {
                to: String::new(),
                kind: "text".into(),
                body: text.into_bytes(),
                client_msg_id: None,
            },
            MessageExtras::default(),
        )
        .await
    }

    /// Sends a message to a group (`message.to` is ignored). Refused with
    /// `NOT_A_MEMBER`, `MUTED` or `PERMISSION_DENIED` (`@all` by a member).
    pub async fn send_group_with(
        &self,
        group: String,
        message: OutgoingMessage,
        extras: MessageExtras,
    ) -> Result<SendReceipt, Error> {
        self.send_to_peer(Peer::Group(group), message, extras).await
    }
}
