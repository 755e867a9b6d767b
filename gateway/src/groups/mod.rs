//! Groups: the rpc requests (create, change, members and the other lists,
//! pull a read-diffusion group's log, invitations, the group-adds
//! setting).
//!
//! A write-diffusion group's messages are ordinary inbox copies: they take
//! the inbox delivery path with its acks and retransmits. A read-diffusion
//! group's messages are stored once in the group's log and pushed to online
//! members best effort ([`push`](crate::push)); members pull what they
//! missed with `GroupSyncRequest`, answered in `read.rs`.
//!
//! Who may do what to whom (join policies, bans, member limits, owned
//! groups) is the store's rule (`qim_storage::groups`); who is added
//! directly and who is invited (the invitee's setting, blocks) is decided
//! here before the store is asked, in `consent.rs`. What a non-member may
//! read of a group is in `read.rs`.
//!
//! # Invariants
//! - Removing a member (remove, ban, leave, dissolve) unsubscribes their
//!   sessions from the group's pushes in the same request, before it
//!   answers, on every node; pulls check membership.
//! - Events a change appends (invitations, join requests, answers) are
//!   handed to the fan-out after the store made them durable.

mod consent;
mod read;

use qim_proto::v1::{self, ErrorCode, group_request, rpc_response};
use qim_storage::groups::{GroupApplied, GroupLimits, GroupOp};
use qim_storage::redis::signals::FollowChange;
use tracing::debug;

use crate::ctx::Ctx;
use crate::reply::{Refusal, Reply};

pub(crate) use consent::settings;
pub(crate) use read::invitations;

/// Users a create or a change may name at once.
const MAX_USERS_PER_REQUEST: usize = 5_000;

/// Bytes a group name may have.
const MAX_NAME_BYTES: usize = 256;

fn valid_users(users: &[String]) -> bool {
    users.len() <= MAX_USERS_PER_REQUEST && users.iter().all(|u| qim_proto::ids::is_valid_id(u))
}

/// The limits of this server that group changes are checked against.
pub(crate) fn limits(ctx: &Ctx) -> GroupLimits {
    let c = &ctx.config;
    GroupLimits {
        threshold: c.groups.read_diffusion_threshold,
        max_members: c.groups.max_members,
        groups_owned: c.quotas.groups_owned,
        invitations_per_user: c.quotas.pending_requests,
        join_requests: c.groups.max_join_requests,
    }
}

/// Answers a group rpc request of `user`.
pub(crate) async fn rpc(ctx: &Ctx, user: &str, request: GroupRpc) -> Reply {
    match request {
        GroupRpc::Create(r) => create(ctx, user, r).await,
        GroupRpc::Change(r) => change(ctx, user, r).await,
        GroupRpc::Members(r) => read::members(ctx, user, r).await,
        GroupRpc::Sync(r) => read::sync(ctx, user, r).await,
    }
}

async fn create(ctx: &Ctx, user: &str, r: v1::CreateGroupRequest) -> Reply {
    if !qim_proto::ids::is_valid_id(&r.group)
        || !valid_users(&r.members)
        || r.name.len() > MAX_NAME_BYTES
    {
        return Err(Refusal::invalid("bad group id, name or member list"));
    }
    let Ok(join_policy) = v1::JoinPolicy::try_from(r.join_policy) else {
        return Err(Refusal::invalid("unknown join policy"));
    };
    let (members, invited) = consent::split(ctx, user, &r.members).await?;
    let op = GroupOp::Create {
        name: r.name,
        members,
        invited,
        join_policy,
        max_members: r.max_members,
        public: r.public,
        now_ms: qim_proto::now_ms(),
    };
    apply(ctx, user, &r.group, op).await
}

async fn change(ctx: &Ctx, user: &str, r: v1::GroupRequest) -> Reply {
    use group_request::Op;
    if !qim_proto::ids::is_valid_id(&r.group) {
        return Err(Refusal::invalid("bad group id"));
    }
    let valid = qim_proto::ids::is_valid_id;
    let op = match r.op {
        Some(Op::Info(_)) => return read::info(ctx, user, &r.group).await,
        Some(Op::Rename(name)) if name.len() <= MAX_NAME_BYTES => GroupOp::Rename(name),
        Some(Op::Dissolve(true)) => GroupOp::Dissolve,
        Some(Op::Join(true)) => GroupOp::Join,
        Some(Op::Leave(true)) => GroupOp::Leave,
        Some(Op::Invite(u)) if valid_users(&u.users) => {
            let (add, invite) = consent::split(ctx, user, &u.users).await?;
            GroupOp::Invite { add, invite }
        }
        Some(Op::Remove(u)) if valid_users(&u.users) => GroupOp::Remove(u.users),
        Some(Op::SetRole(s)) if valid(&s.user) => GroupOp::SetRole(
            s.user,
            v1::GroupRole::try_from(s.role).unwrap_or(v1::GroupRole::Member),
        ),
        Some(Op::MuteMember(m)) if valid(&m.user) => GroupOp::MuteMember(m.user, m.muted),
        Some(Op::MuteAll(true)) => GroupOp::MuteAll(true),
        Some(Op::UnmuteAll(true)) => GroupOp::MuteAll(false),
        Some(Op::AcceptInvitation(true)) => GroupOp::AcceptInvitation,
        Some(Op::DeclineInvitation(true)) => GroupOp::DeclineInvitation,
        Some(Op::Approve(u)) if valid_users(&u.users) => {
            // A request left by a deletion in flight adds no deleted id.
            for user in &u.users {
                crate::policy::check_not_deleted(ctx, user).await?;
            }
            GroupOp::Approve(u.users)
        }
        Some(Op::Deny(u)) if valid_users(&u.users) => GroupOp::Deny(u.users),
        Some(Op::Ban(u)) if valid_users(&u.users) => GroupOp::Ban(u.users),
        Some(Op::Unban(u)) if valid_users(&u.users) => GroupOp::Unban(u.users),
        Some(Op::Settings(s)) => GroupOp::Settings(s),
        _ => return Err(Refusal::invalid("unknown or malformed group operation")),
    };
    apply(ctx, user, &r.group, op).await
}

/// Applies `op` by `user`; moves the group's followers on every node and
/// hands the events to the fan-out before it answers.
async fn apply(ctx: &Ctx, user: &str, group: &str, op: GroupOp) -> Reply {
    let groups = ctx.stores.groups.as_ref();
    let before = groups.group(group).await.ok().flatten();
    let op_name = op_name(&op);
    let applied = match groups.group_apply(group, user, op, limits(ctx)).await {
        Ok(applied) => applied,
        Err(e) => {
            debug!(user, group, error = %e, "group operation refused");
            return Err(e.into());
        }
    };
    let GroupApplied {
        info,
        added,
        removed,
        invited,
        requested,
        events,
    } = applied;
    let event = serde_json::json!({
        "group": group,
        "by": user,
        "op": op_name,
        "added": added,
        "removed": removed,
        "invited": invited,
        "join_requested": requested,
        "dissolved": info.dissolved,
        "members": info.member_count,
    });
    let change = if info.dissolved {
        Some(FollowChange::Dissolved)
    } else if !removed.is_empty() {
        Some(FollowChange::Leave(removed))
    } else if info.read_diffusion && before.as_ref().is_none_or(|b| !b.read_diffusion) {
        Some(FollowChange::All)
    } else if info.read_diffusion && !added.is_empty() {
        Some(FollowChange::Join(added))
    } else {
        None
    };
    if let Some(change) = change {
        ctx.fanout.refollow(groups, group, change).await;
    }
    ctx.fanout.deliver_all(events).await;
    ctx.webhooks.emit("group_changed", || event);
    Ok(rpc_response::Kind::Group(v1::GroupResponse {
        group: Some(info),
        invited,
        requested,
    }))
}

/// The name of a group operation in webhook events.
fn op_name(op: &GroupOp) -> &'static str {
    match op {
        GroupOp::Create { .. } => "create",
        GroupOp::Rename(_) => "rename",
        GroupOp::Dissolve => "dissolve",
        GroupOp::Join => "join",
        GroupOp::Leave => "leave",
        GroupOp::Invite { .. } => "invite",
        GroupOp::Remove(_) => "remove",
        GroupOp::SetRole(..) => "set_role",
        GroupOp::MuteMember(..) => "mute_member",
        GroupOp::MuteAll(_) => "mute_all",
        GroupOp::AcceptInvitation => "accept_invitation",
        GroupOp::DeclineInvitation => "decline_invitation",
        GroupOp::Approve(_) => "approve",
        GroupOp::Deny(_) => "deny",
        GroupOp::Ban(_) => "ban",
        GroupOp::Unban(_) => "unban",
        GroupOp::Settings(_) => "settings",
        _ => "other",
    }
}

/// The refusal a non-member gets for a group they may not see.
fn not_found() -> Refusal {
    Refusal::new(ErrorCode::NotFound, "no such group")
}

/// The group requests of the rpc stream.
pub(crate) enum GroupRpc {
    Create(v1::CreateGroupRequest),
    Change(v1::GroupRequest),
    Members(v1::MembersRequest),
    Sync(v1::GroupSyncRequest),
}
