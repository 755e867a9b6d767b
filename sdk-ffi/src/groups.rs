//! Groups through the bindings: create (with a join policy, a member
//! limit, public or private), change (rename, dissolve, join or ask to
//! join, leave, invite, remove, roles, mutes, accept or decline an
//! invitation, approve or deny join requests, ban and unban, settings),
//! member, invitation, join-request and ban pages, the user's pending
//! invitations and "who may add me" setting, sends and read counts.
//!
//! Group messages arrive through `ClientListener.on_message` like any
//! message, with `conversation = Peer.Group(id)` (and, in a large
//! read-diffusion group, `group_seq` set and `seq` 0; the SDK pulls what a
//! nudge announces by itself, so nudges never reach the app). Refusals
//! keep the wire code: `NOT_A_MEMBER`, `MUTED`, `PERMISSION_DENIED`,
//! `NOT_FOUND`, `INVITE_ONLY`, `BANNED`, `GROUP_FULL`, `BLOCKED`,
//! `QUOTA_EXCEEDED`. Invitations, join requests and answers arrive through
//! `on_message` as events.

use qim_sdk::{
    GroupAdds, GroupChange, GroupInfo, GroupInvitation, GroupList, GroupMember, GroupOutcome,
    MessageExtras, NewGroup, OutgoingMessage, SendReceipt,
};

use crate::{QimClient, QimError};

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
        MemberPage { members, next }
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

#[uniffi::export]
impl QimClient {
    /// Creates `group` (a new id) named `name`, with this user as owner and
    /// `members` added or invited (each by their own setting).
    pub async fn create_group(
        &self,
        group: String,
        name: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, QimError> {
        self.call(move |c| async move { c.create_group(group, name, members).await })
            .await
    }

    /// Creates a group with its join policy, member limit and visibility;
    /// says who was invited instead of added.
    pub async fn create_group_with(&self, new: NewGroup) -> Result<GroupOutcome, QimError> {
        self.call(move |c| async move { c.create_group_with(new).await })
            .await
    }

    /// Changes a group; says who was invited and whether a join became a
    /// request waiting for an admin.
    pub async fn update_group(
        &self,
        group: String,
        change: GroupChange,
    ) -> Result<GroupOutcome, QimError> {
        self.call(move |c| async move { c.update_group(group, change).await })
            .await
    }

    /// A page of one of a group's lists (join requests and bans: admins
    /// only), after user id `after` (`None`: from the first).
    pub async fn group_list(
        &self,
        group: String,
        list: GroupList,
        after: Option<String>,
        limit: u32,
    ) -> Result<MemberPage, QimError> {
        self.call(move |c| async move {
            c.group_list(group, list, after.unwrap_or_default(), limit)
                .await
        })
        .await
    }

    /// This user's pending group invitations.
    pub async fn group_invitations(&self) -> Result<Vec<GroupInvitation>, QimError> {
        self.call(move |c| async move { c.group_invitations().await })
            .await
    }

    /// Who may add this user to groups directly; `set` changes it first.
    pub async fn group_adds(&self, set: Option<GroupAdds>) -> Result<GroupAdds, QimError> {
        self.call(move |c| async move { c.group_adds(set).await })
            .await
    }

    /// Changes a group; returns it as it is afterwards.
    pub async fn change_group(
        &self,
        group: String,
        change: GroupChange,
    ) -> Result<GroupInfo, QimError> {
        self.call(move |c| async move { c.change_group(group, change).await })
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
        self.call(move |c| async move { c.send_group_with(group, message, extras).await })
            .await
    }

    /// How many members have read a group message this user sent.
    pub async fn read_count(&self, msg_id: String) -> Result<ReadCount, QimError> {
        self.call(move |c| async move { c.read_count(msg_id).await })
            .await
    }
}
