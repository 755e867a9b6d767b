//! Groups in the client: create and change groups, list members, send to a
//! group; the trust rules around them: join policies, join requests and
//! their answers, invitations, bans, member limits, private groups, and
//! the user's own "who may add me" setting ([`GroupAdds`]).
//!
//! A create or invite names users; each is added at once or sent an
//! invitation, by that user's [`GroupAdds`] setting ([`GroupOutcome::invited`]
//! says who was invited). A join of an approval group is a request
//! ([`GroupOutcome::requested`]); the answer arrives as an
//! [`Event::JoinAnswer`](crate::Event::JoinAnswer), invitations as
//! [`Event::GroupInvitation`](crate::Event::GroupInvitation), requests to
//! admins as [`Event::JoinRequest`](crate::Event::JoinRequest).
//! Refusals keep the wire code: `INVITE_ONLY`, `BANNED`, `GROUP_FULL`,
//! `BLOCKED`, `QUOTA_EXCEEDED`, `NOT_FOUND` (also for a private group the
//! user is not in), `PERMISSION_DENIED`.
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

/// Who may become a member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum JoinPolicy {
    /// Only by invitation of a member (the default).
    #[default]
    InviteOnly,
    /// Anyone not banned joins.
    Open,
    /// Anyone not banned asks; an admin approves or denies.
    Approval,
}

impl JoinPolicy {
    fn from_wire(p: i32) -> JoinPolicy {
        match v1::JoinPolicy::try_from(p) {
            Ok(v1::JoinPolicy::Open) => JoinPolicy::Open,
            Ok(v1::JoinPolicy::Approval) => JoinPolicy::Approval,
            _ => JoinPolicy::InviteOnly,
        }
    }

    fn to_wire(self) -> v1::JoinPolicy {
        match self {
            JoinPolicy::InviteOnly => v1::JoinPolicy::InviteOnly,
            JoinPolicy::Open => v1::JoinPolicy::Open,
            JoinPolicy::Approval => v1::JoinPolicy::Approval,
        }
    }
}

/// Who may add this user to a group without asking; everyone else's adds
/// become invitations. A user who blocked the adder is never added nor
/// invited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum GroupAdds {
    /// Friends add directly; others invite.
    Contacts,
    /// Anyone adds directly.
    Anyone,
    /// Every add is an invitation.
    Nobody,
}

impl GroupAdds {
    fn from_wire(a: i32) -> GroupAdds {
        match v1::GroupAdds::try_from(a) {
            Ok(v1::GroupAdds::Anyone) => GroupAdds::Anyone,
            Ok(v1::GroupAdds::Nobody) => GroupAdds::Nobody,
            _ => GroupAdds::Contacts,
        }
    }

    fn to_wire(self) -> v1::GroupAdds {
        match self {
            GroupAdds::Contacts => v1::GroupAdds::Contacts,
            GroupAdds::Anyone => v1::GroupAdds::Anyone,
            GroupAdds::Nobody => v1::GroupAdds::Nobody,
        }
    }
}

/// Which list of a group to page through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum GroupList {
    /// The members.
    #[default]
    Members,
    /// Users asking to join (admins only).
    JoinRequests,
    /// Banned users (admins only).
    Banned,
    /// Users invited who have not answered.
    Invited,
}

impl GroupList {
    fn to_wire(self) -> v1::MemberList {
        match self {
            GroupList::Members => v1::MemberList::Members,
            GroupList::JoinRequests => v1::MemberList::JoinRequests,
            GroupList::Banned => v1::MemberList::Banned,
            GroupList::Invited => v1::MemberList::Invited,
        }
    }
}

/// A group to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct NewGroup {
    /// Its id (a valid id, not taken).
    pub group: String,
    /// Name.
    pub name: String,
    /// Users to add or invite (by each one's [`GroupAdds`]).
    pub members: Vec<String>,
    /// Who may join.
    pub join_policy: JoinPolicy,
    /// Member limit (members and pending invitations); 0: the server's.
    pub max_members: u32,
    /// Non-members may read the group's info.
    pub public: bool,
}

/// What a group request did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct GroupOutcome {
    /// The group afterwards.
    pub group: GroupInfo,
    /// Users sent an invitation instead of being added.
    pub invited: Vec<String>,
    /// A join request waits for an admin (approval groups).
    pub requested: bool,
}

/// An invitation to a group, waiting for this user's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct GroupInvitation {
    /// The group.
    pub group: String,
    /// Its name.
    pub name: String,
    /// Who invited.
    pub by: String,
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
    /// Who may join.
    pub join_policy: JoinPolicy,
    /// Member limit (members and pending invitations).
    pub max_members: u32,
    /// Non-members may read the info.
    pub public: bool,
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
            join_policy: JoinPolicy::from_wire(g.join_policy),
            max_members: g.max_members,
            public: g.public,
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
    /// Join (open group), ask to join (approval group), or accept a
    /// pending invitation.
    Join,
    /// Leave.
    Leave,
    /// Add users, or invite those whose setting asks for an invitation.
    Invite(Vec<String>),
    /// Remove users (admins).
    Remove(Vec<String>),
    /// Set a member's role (owner); `Owner` hands the group over.
    SetRole(String, GroupRole),
    /// Mute or unmute a member (admins).
    MuteMember(String, bool),
    /// Mute or unmute everyone but admins.
    MuteAll(bool),
    /// Accept this user's pending invitation.
    AcceptInvitation,
    /// Decline this user's pending invitation.
    DeclineInvitation,
    /// Approve join requests (admins).
    Approve(Vec<String>),
    /// Deny join requests (admins).
    Deny(Vec<String>),
    /// Ban users, removing members among them (admins).
    Ban(Vec<String>),
    /// Lift bans (admins).
    Unban(Vec<String>),
    /// Change settings (admins); `None` leaves one as it is.
    Settings {
        /// Who may join.
        join_policy: Option<JoinPolicy>,
        /// Member limit; 0: the server's. Never below members and
        /// invitations the group has.
        max_members: Option<u32>,
        /// Non-members may read the info.
        public: Option<bool>,
    },
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
            GroupChange::AcceptInvitation => Op::AcceptInvitation(true),
            GroupChange::DeclineInvitation => Op::DeclineInvitation(true),
            GroupChange::Approve(users) => Op::Approve(group_request::Users { users }),
            GroupChange::Deny(users) => Op::Deny(group_request::Users { users }),
            GroupChange::Ban(users) => Op::Ban(group_request::Users { users }),
            GroupChange::Unban(users) => Op::Unban(group_request::Users { users }),
            GroupChange::Settings {
                join_policy,
                max_members,
                public,
            } => Op::Settings(v1::GroupSettings {
                join_policy: join_policy.map(|p| p.to_wire() as i32),
                max_members,
                public,
            }),
        }
    }
}

impl Client {
    /// Creates `group` with this user as owner, an invite-only private
    /// group with the server's member limit; `members` are added or
    /// invited (see [`Client::create_group_with`] for who was invited).
    pub async fn create_group(
        &self,
        group: String,
        name: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, Error> {
        let new = NewGroup {
            group,
            name,
            members,
            ..NewGroup::default()
        };
        Ok(self.create_group_with(new).await?.group)
    }

    /// Creates a group with its policy, limit and visibility; says who was
    /// invited instead of added.
    pub async fn create_group_with(&self, new: NewGroup) -> Result<GroupOutcome, Error> {
        self.group_reply(rpc_request::Kind::CreateGroup(v1::CreateGroupRequest {
            group: new.group,
            name: new.name,
            members: new.members,
            join_policy: new.join_policy.to_wire() as i32,
            max_members: new.max_members,
            public: new.public,
        }))
        .await
    }

    /// Changes a group.
    pub async fn change_group(
        &self,
        group: String,
        change: GroupChange,
    ) -> Result<GroupInfo, Error> {
        Ok(self.update_group(group, change).await?.group)
    }

    /// Changes a group; says who was invited and whether a join became a
    /// request.
    pub async fn update_group(
        &self,
        group: String,
        change: GroupChange,
    ) -> Result<GroupOutcome, Error> {
        self.group_reply(rpc_request::Kind::Group(v1::GroupRequest {
            group,
            op: Some(change.into_wire()),
        }))
        .await
    }

    /// A group's info (`NOT_FOUND` for a private group this user is not
    /// in nor invited to).
    pub async fn group_info(&self, group: String) -> Result<GroupInfo, Error> {
        Ok(self
            .group_reply(rpc_request::Kind::Group(v1::GroupRequest {
                group,
                op: Some(group_request::Op::Info(true)),
            }))
            .await?
            .group)
    }

    async fn group_reply(&self, request: rpc_request::Kind) -> Result<GroupOutcome, Error> {
        match self.rpc(request).await? {
            rpc_response::Kind::Group(v1::GroupResponse {
                group: Some(g),
                invited,
                requested,
            }) => Ok(GroupOutcome {
                group: GroupInfo::from_wire(g),
                invited,
                requested,
            }),
            _ => Err(unexpected()),
        }
    }

    /// This user's pending group invitations.
    pub async fn group_invitations(&self) -> Result<Vec<GroupInvitation>, Error> {
        match self
            .rpc(rpc_request::Kind::Invitations(v1::InvitationsRequest {}))
            .await?
        {
            rpc_response::Kind::Invitations(r) => Ok(r
                .invitations
                .into_iter()
                .map(|i| GroupInvitation {
                    group: i.group,
                    name: i.name,
                    by: i.by,
                })
                .collect()),
            _ => Err(unexpected()),
        }
    }

    /// Who may add this user to groups directly; `Some` sets it first.
    pub async fn group_adds(&self, set: Option<GroupAdds>) -> Result<GroupAdds, Error> {
        match self
            .rpc(rpc_request::Kind::Settings(v1::SettingsRequest {
                group_adds: set.map(|a| a.to_wire() as i32),
            }))
            .await?
        {
            rpc_response::Kind::Settings(r) => Ok(GroupAdds::from_wire(r.group_adds)),
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
        self.group_list(group, GroupList::Members, after, limit)
            .await
    }

    /// A page of one of a group's lists (members, invited; join requests
    /// and bans for admins), after user id `after`, and where the next page
    /// starts (`None` on the last). Entries of the other lists carry only
    /// the user.
    pub async fn group_list(
        &self,
        group: String,
        list: GroupList,
        after: String,
        limit: u32,
    ) -> Result<(Vec<GroupMember>, Option<String>), Error> {
        match self
            .rpc(rpc_request::Kind::Members(v1::MembersRequest {
                group,
                after,
                limit,
                list: list.to_wire() as i32,
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
