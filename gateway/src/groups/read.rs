//! What a user may read of a group: its info, its member list and other
//! lists, its log (read diffusion), and the user's own invitations.
//!
//! # Rules
//! - A private group (the default) is invisible to non-members: its info,
//!   lists and log answer `NOT_FOUND`, as for a group that does not exist.
//!   A user with a pending invitation may read its info.
//! - A public group's info is open to anyone; its lists and log to members
//!   (`NOT_A_MEMBER` otherwise).
//! - Join requests and bans are listed to admins and the owner only
//!   (`PERMISSION_DENIED`); members and pending invitations to members.

use qim_proto::v1::{self, ErrorCode, rpc_response};
use qim_storage::conversations::group_log;
use qim_storage::groups::List;

use super::not_found;
use crate::ctx::Ctx;
use crate::reply::{Refusal, Reply, entries_in_frame, page_size};

/// Members listed per page when the request names no limit.
const DEFAULT_MEMBERS_PAGE: u32 = 100;

/// Members listed per page at most (the store's page).
const MAX_MEMBERS_PAGE: u32 = 1_000;

/// Log entries per pull when the request names no limit, and at most.
const DEFAULT_PULL: u32 = 100;
const MAX_PULL: u32 = 500;

/// The group and `user`'s membership, when `user` may see the group:
/// `NOT_FOUND` for a missing group and for a private one `user` is not in.
async fn visible(
    ctx: &Ctx,
    group: &str,
    user: &str,
) -> Result<(v1::GroupInfo, Option<v1::GroupMember>), Refusal> {
    if !qim_proto::ids::is_valid_id(group) {
        return Err(Refusal::invalid("bad group id"));
    }
    let groups = &ctx.stores.groups;
    let Some(info) = groups.group(group).await? else {
        return Err(not_found());
    };
    let member = groups.member(group, user).await?;
    if member.is_none() && !info.public {
        return Err(not_found());
    }
    Ok((info, member))
}

fn not_a_member() -> Refusal {
    Refusal::new(ErrorCode::NotAMember, "not a member of the group")
}

/// A group's info: to members, to anyone for a public group, and to a user
/// invited to it.
pub(super) async fn info(ctx: &Ctx, user: &str, group: &str) -> Reply {
    let info = match visible(ctx, group, user).await {
        Ok((info, _)) => info,
        Err(refusal) if refusal.code == ErrorCode::NotFound => {
            let groups = &ctx.stores.groups;
            let invited = groups.listing(group, List::Invited, user).await?.is_some();
            match groups.group(group).await? {
                Some(info) if invited => info,
                _ => return Err(refusal),
            }
        }
        Err(refusal) => return Err(refusal),
    };
    Ok(rpc_response::Kind::Group(v1::GroupResponse {
        group: Some(info),
        ..Default::default()
    }))
}

/// A page of one of a group's lists.
pub(super) async fn members(ctx: &Ctx, user: &str, r: v1::MembersRequest) -> Reply {
    let Ok(list) = v1::MemberList::try_from(r.list) else {
        return Err(Refusal::invalid("unknown member list"));
    };
    let (_, member) = visible(ctx, &r.group, user).await?;
    let Some(member) = member else {
        return Err(not_a_member());
    };
    let limit = page_size(r.limit, DEFAULT_MEMBERS_PAGE, MAX_MEMBERS_PAGE);
    let groups = &ctx.stores.groups;
    let admin = member.role() != v1::GroupRole::Member;
    let list = match list {
        v1::MemberList::Members => None,
        v1::MemberList::Invited => Some(List::Invited),
        v1::MemberList::JoinRequests if admin => Some(List::Requested),
        v1::MemberList::Banned if admin => Some(List::Banned),
        _ => {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                "only admins see join requests and bans",
            ));
        }
    };
    let members = match list {
        None => groups.members(&r.group, &r.after, limit).await?,
        Some(list) => groups
            .listed(&r.group, list, &r.after, limit)
            .await?
            .into_iter()
            .map(|l| v1::GroupMember {
                user: l.user,
                ..Default::default()
            })
            .collect(),
    };
    let next = if members.len() == limit {
        members.last().map(|m| m.user.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(rpc_response::Kind::Members(v1::MembersResponse {
        members,
        next,
    }))
}

/// A pull of a read-diffusion group's log, from the member's first
/// readable seq at the earliest.
pub(super) async fn sync(ctx: &Ctx, user: &str, r: v1::GroupSyncRequest) -> Reply {
    let (_, member) = visible(ctx, &r.group, user).await?;
    let Some(member) = member else {
        return Err(not_a_member());
    };
    let limit = page_size(r.limit, DEFAULT_PULL, MAX_PULL);
    let log = group_log(&r.group);
    let after = r.after_seq.max(member.joined_seq);
    let messages = &ctx.stores.messages;
    let head = messages.inbox_head(&log).await?;
    let entries = messages.read_inbox(&log, after, limit).await?;
    let (mut entries, _) = entries_in_frame(entries, ctx.config.limits.max_frame_bytes);
    crate::policy::hide_blocked(ctx, user, &mut entries).await?;
    Ok(rpc_response::Kind::GroupSync(v1::GroupSyncResponse {
        entries,
        head,
    }))
}

/// `user`'s pending invitations (at most `quotas.pending_requests`).
pub(crate) async fn invitations(ctx: &Ctx, user: &str) -> Reply {
    Ok(rpc_response::Kind::Invitations(v1::InvitationsResponse {
        invitations: ctx.stores.groups.invitations(user).await?,
    }))
}
