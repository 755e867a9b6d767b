//! The quota request: each of the requester's quotas with its limit and
//! what is used of it now. The send quotas are read from
//! [`quota`](crate::quota); the others from the stores that hold what they
//! count (the groups the user owns, the friend requests waiting for an
//! answer).

use qim_proto::v1::{self, rpc_response};

use crate::ctx::Ctx;
use crate::quota::{SENDS_PER_SECOND, STORED_BYTES_PER_DAY};
use crate::reply::Reply;

/// Answers a quota request of `user`.
pub(crate) async fn quota(ctx: &Ctx, user: &str, _request: v1::QuotaRequest) -> Reply {
    let limits = &ctx.config.quotas;
    let (rate, copies_used) = ctx.quotas.copies_used(user);
    let (bytes_limit, bytes_used) = ctx.quotas.stored_bytes(user).await?;
    let mut owned = 0u64;
    for group in ctx.stores.groups.user_groups(user).await? {
        if let Some(info) = ctx.stores.groups.group(&group).await? {
            if info.owner == user && !info.dissolved {
                owned += 1;
            }
        }
    }
    let outgoing = ctx.stores.contacts.contacts(user).await?.outgoing.len() as u64;
    let schedules = ctx
        .stores
        .schedules
        .pending(user, limits.pending_schedules as usize)
        .await? as u64;
    let quota = |name: &str, limit: u64, used: u64| v1::Quota {
        name: name.to_owned(),
        limit,
        used,
    };
    Ok(rpc_response::Kind::Quota(v1::QuotaResponse {
        quotas: vec![
            // Limit: copies per second; used: copies of the burst in use.
            quota(SENDS_PER_SECOND, rate, copies_used),
            quota(STORED_BYTES_PER_DAY, bytes_limit, bytes_used),
            quota("groups_owned", u64::from(limits.groups_owned), owned),
            quota(
                "pending_requests",
                u64::from(limits.pending_requests),
                outgoing,
            ),
            quota(
                "pending_schedules",
                u64::from(limits.pending_schedules),
                schedules,
            ),
        ],
    }))
}
