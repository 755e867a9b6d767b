//! Groups in the client: create and change groups, list members, send to a
//! group, and receive read-diffusion groups' logs.
//!
//! A write-diffusion group's messages arrive in the inbox like any message.
//! A read-diffusion group's messages are pushed on a stream of their own
//! with the group's seq (`Deliver.group`); this module keeps one
//! [`Inbox`](crate::inbox::Inbox) per group (in order, deduplicated), pulls
//! gaps and nudged ranges with `GroupSyncRequest`, and hands messages to the
//! same queue as [`Client::next_message`] with
//! [`IncomingMessage::group_seq`] set (and `seq` 0: they are not in the
//! inbox). Cursors per group last as long as the client.

use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, group_request, rpc_request, rpc_response};
use tracing::debug;

use crate::Error;
use crate::client::{
    Client, IncomingMessage, OutgoingMessage, SendReceipt, Shared, lock, push_ready,
};
use crate::im::{MessageExtras, Peer};
use crate::inbox::Inbox;

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

fn unexpected() -> Error {
    Error::Network("unexpected rpc response".into())
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
            rpc_response::Kind::Group(v1::GroupResponse { group: Some(g) }) => {
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

/// Handles a `Deliver` of a read-diffusion group: a pushed message or a
/// nudge. Pulls whatever is missing before returning.
pub(crate) async fn on_deliver(
    shared: &Shared,
    conn: &quinn::Connection,
    deliver: v1::Deliver,
) -> Result<(), Error> {
    let group = deliver.group;
    let from = deliver.group_from;
    let mut gap = match deliver.message {
        None => {
            let released = lock(&shared.groups)
                .entry(group.clone())
                .or_insert_with(|| Inbox::new(from))
                .released();
            (deliver.seq > released).then_some((released, deliver.seq))
        }
        Some(m) => {
            let me = lock(&shared.user_id).clone();
            let message = IncomingMessage::from_wire(deliver.seq, m, &me, &shared.config.device_id);
            accept(shared, &group, from, message)
        }
    };
    while let Some((after, up_to)) = gap {
        gap = match pull(shared, conn, &group, after, up_to).await {
            Ok(gap) => gap,
            // Refused (no longer a member): stop following; the session goes on.
            Err(e @ Error::Rejected { .. }) => {
                debug!(group, error = %e, "group pull refused");
                None
            }
            Err(e) => return Err(e),
        };
    }
    Ok(())
}

fn accept(shared: &Shared, group: &str, from: u64, message: IncomingMessage) -> Option<(u64, u64)> {
    let accepted = lock(&shared.groups)
        .entry(group.to_owned())
        .or_insert_with(|| Inbox::new(from))
        .accept(message);
    let ready = accepted
        .ready
        .into_iter()
        .map(|mut m| {
            m.group_seq = m.seq;
            m.seq = 0;
            m
        })
        .collect();
    push_ready(shared, ready);
    accepted.gap
}

/// Pulls `(after, up_to]` of a group's log; returns what is still missing
/// if the pull made progress.
async fn pull(
    shared: &Shared,
    conn: &quinn::Connection,
    group: &str,
    after: u64,
    up_to: u64,
) -> Result<Option<(u64, u64)>, Error> {
    debug!(group, after, up_to, "pulling group log");
    let max_frame = shared.max_frame();
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::from_connection(&e))?;
    let mut send = FramedSend::new(send, StreamKind::Rpc, max_frame);
    let mut recv = FramedRecv::new(recv, max_frame);
    let limit = u32::try_from(up_to - after).unwrap_or(u32::MAX).min(500);
    send.send(&v1::RpcRequest {
        kind: Some(rpc_request::Kind::GroupSync(v1::GroupSyncRequest {
            group: group.to_owned(),
            after_seq: after,
            limit,
        })),
    })
    .await?;
    send.finish();
    match recv.next::<v1::RpcResponse>().await?.and_then(|r| r.kind) {
        Some(rpc_response::Kind::GroupSync(sync)) => {
            let me = lock(&shared.user_id).clone();
            let mut gap = None;
            let mut last = after;
            for entry in sync.entries {
                last = last.max(entry.seq);
                let message = IncomingMessage::from_wire(
                    entry.seq,
                    entry.message.unwrap_or_default(),
                    &me,
                    &shared.config.device_id,
                );
                gap = accept(shared, group, after, message);
            }
            if last == after {
                return Ok(None);
            }
            // The nudged range may reach beyond what this page held.
            let released = lock(&shared.groups)
                .get(group)
                .map_or(last, Inbox::released);
            Ok(gap.or((released < up_to).then_some((released, up_to))))
        }
        Some(rpc_response::Kind::Error(e)) => Err(Error::from_code(
            ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            e.message,
        )),
        _ => Err(Error::Network("unexpected group sync response".into())),
    }
}
