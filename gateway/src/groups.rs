//! Groups: the rpc requests (create, change, members, pull a
//! read-diffusion group's log).
//!
//! A write-diffusion group's messages are ordinary inbox copies: they take
//! the inbox delivery path with its acks and retransmits. A read-diffusion
//! group's messages are stored once in the group's log and pushed to online
//! members best effort ([`push`](crate::push)); members pull what they
//! missed with `GroupSyncRequest`, answered here.
//!
//! # Invariants
//! - Removing a member (remove, leave, dissolve) unsubscribes their sessions
//!   from the group's pushes in the same request, before it answers, on
//!   every node; pulls check membership.

use qim_proto::v1::{self, ErrorCode, group_request, rpc_response};
use qim_storage::conversations::group_log;
use qim_storage::groups::GroupOp;
use qim_storage::redis::signals::FollowChange;
use tracing::debug;

use crate::ctx::Ctx;
use crate::reply::{Refusal, Reply, entries_in_frame, page_size};

/// Members a create or invite may name at once.
const MAX_USERS_PER_REQUEST: usize = 5_000;

/// Members listed per page when the request names no limit.
const DEFAULT_MEMBERS_PAGE: u32 = 100;

/// Log entries per pull when the request names no limit, and at most.
const DEFAULT_PULL: u32 = 100;
const MAX_PULL: u32 = 500;

fn valid_users(users: &[String]) -> bool {
    users.len() <= MAX_USERS_PER_REQUEST && users.iter().all(|u| qim_proto::ids::is_valid_id(u))
}

/// Answers a group rpc request of `user`.
pub(crate) async fn rpc(ctx: &Ctx, user: &str, request: GroupRpc) -> Reply {
    let groups = ctx.stores.groups.as_ref();
    let threshold = ctx.config.groups.read_diffusion_threshold;
    let (group, op) = match request {
        GroupRpc::Create(r) => {
            if !qim_proto::ids::is_valid_id(&r.group)
                || !valid_users(&r.members)
                || r.name.len() > 256
            {
                return Err(Refusal::invalid("bad group id, name or member list"));
            }
            if r.members.len() + 1 > ctx.config.groups.max_members as usize {
                return Err(Refusal::invalid("more members than groups.max_members"));
            }
            (
                r.group,
                GroupOp::Create {
                    name: r.name,
                    members: r.members,
                    now_ms: qim_proto::now_ms(),
                },
            )
        }
        GroupRpc::Change(r) => {
            if !qim_proto::ids::is_valid_id(&r.group) {
                return Err(Refusal::invalid("bad group id"));
            }
            let op = match r.op {
                Some(group_request::Op::Info(_)) => {
                    return match groups.group(&r.group).await? {
                        Some(info) => Ok(rpc_response::Kind::Group(v1::GroupResponse {
                            group: Some(info),
                            ..Default::default()
                        })),
                        None => Err(Refusal::new(ErrorCode::NotFound, "no such group")),
                    };
                }
                Some(group_request::Op::Rename(name)) if name.len() <= 256 => GroupOp::Rename(name),
                Some(group_request::Op::Dissolve(true)) => GroupOp::Dissolve,
                Some(group_request::Op::Join(true)) => GroupOp::Join,
                Some(group_request::Op::Leave(true)) => GroupOp::Leave,
                Some(group_request::Op::Invite(u)) if valid_users(&u.users) => {
                    GroupOp::Invite(u.users)
                }
                Some(group_request::Op::Remove(u)) if valid_users(&u.users) => {
                    GroupOp::Remove(u.users)
                }
                Some(group_request::Op::SetRole(s)) if qim_proto::ids::is_valid_id(&s.user) => {
                    GroupOp::SetRole(
                        s.user,
                        v1::GroupRole::try_from(s.role).unwrap_or(v1::GroupRole::Member),
                    )
                }
                Some(group_request::Op::MuteMember(m)) if qim_proto::ids::is_valid_id(&m.user) => {
                    GroupOp::MuteMember(m.user, m.muted)
                }
                Some(group_request::Op::MuteAll(true)) => GroupOp::MuteAll(true),
                Some(group_request::Op::UnmuteAll(true)) => GroupOp::MuteAll(false),
                _ => {
                    return Err(Refusal::invalid("unknown or malformed group operation"));
                }
            };
            (r.group, op)
        }
        GroupRpc::Members(r) => {
            let limit = page_size(r.limit, DEFAULT_MEMBERS_PAGE, u32::MAX);
            if groups.member(&r.group, user).await?.is_none() {
                return Err(Refusal::new(
                    ErrorCode::NotAMember,
                    "not a member of the group",
                ));
            }
            let members = groups.members(&r.group, &r.after, limit).await?;
            let next = if members.len() == limit.min(1000) {
                members.last().map(|m| m.user.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            return Ok(rpc_response::Kind::Members(v1::MembersResponse {
                members,
                next,
            }));
        }
        GroupRpc::Sync(r) => return sync(ctx, user, r).await,
    };
    let before = groups.group(&group).await.ok().flatten();
    let touched: Vec<String> = match &op {
        GroupOp::Create { members, .. } => {
            members.iter().cloned().chain([user.to_owned()]).collect()
        }
        GroupOp::Join | GroupOp::Leave => vec![user.to_owned()],
        GroupOp::Invite(u) | GroupOp::Remove(u) => u.clone(),
        _ => Vec::new(),
    };
    let leaving = matches!(op, GroupOp::Leave | GroupOp::Remove(_));
    match groups.group_apply(&group, user, op, threshold).await {
        Ok(info) => {
            let change = if info.dissolved {
                Some(FollowChange::Dissolved)
            } else if leaving {
                Some(FollowChange::Leave(touched))
            } else if info.read_diffusion {
                if before.is_some_and(|b| !b.read_diffusion) {
                    Some(FollowChange::All)
                } else {
                    Some(FollowChange::Join(touched))
                }
            } else {
                None
            };
            if let Some(change) = change {
                ctx.fanout.refollow(groups, &group, change).await;
            }
            Ok(rpc_response::Kind::Group(v1::GroupResponse {
                group: Some(info),
                ..Default::default()
            }))
        }
        Err(e) => {
            debug!(user, group, error = %e, "group operation refused");
            Err(e.into())
        }
    }
}

/// A pull of a read-diffusion group's log, from the member's first
/// readable seq at the earliest.
async fn sync(ctx: &Ctx, user: &str, r: v1::GroupSyncRequest) -> Reply {
    if !qim_proto::ids::is_valid_id(&r.group) {
        return Err(Refusal::invalid("bad group id"));
    }
    let Some(member) = ctx.stores.groups.member(&r.group, user).await? else {
        return Err(Refusal::new(
            ErrorCode::NotAMember,
            "not a member of the group",
        ));
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

/// The group requests of the rpc stream.
pub(crate) enum GroupRpc {
    Create(v1::CreateGroupRequest),
    Change(v1::GroupRequest),
    Members(v1::MembersRequest),
    Sync(v1::GroupSyncRequest),
}
