//! Contacts: the contact rpc request (friend requests and answers,
//! friends, blocks). The rules a send between users passes are in
//! [`policy`](crate::policy).
//!
//! # Rules (kept by the store, see `qim_storage::contacts`)
//! - One pending request per pair (`ALREADY_EXISTS`); after a rejection,
//!   no new request to the same user within `im.friend_request_cooldown_ms`
//!   (`COOLDOWN` with `retry_after_ms`); at most `quotas.pending_requests`
//!   outgoing requests waiting (`QUOTA_EXCEEDED`); none to a user who
//!   blocked the requester (`BLOCKED`). A refused request appends no event.
//! - No request to, and no block of, a deleted account (`USER_DELETED`,
//!   checked here before the store is asked).
//!
//! # Invariants
//! - Events a change appends (a request to the addressee, an answer to the
//!   requester) are handed to the fan-out after the store made them
//!   durable.
//! - When a friendship ends (remove) or a block is set, each user's
//!   sessions stop watching the other's presence on every node
//!   ([`Fanout::unwatch`](crate::fanout::Fanout::unwatch)) before the
//!   answer is sent.

use qim_proto::v1::{self, contact_request, rpc_response};
use qim_storage::contacts::{ContactOp, RequestLimits};
use tracing::debug;

use crate::ctx::Ctx;
use crate::reply::{Refusal, Reply};

/// Bytes a friend request's message may have.
const MAX_REQUEST_MESSAGE: usize = 512;

/// Answers a contact request of `user`.
pub(crate) async fn rpc(ctx: &Ctx, user: &str, request: v1::ContactRequest) -> Reply {
    let contacts = &ctx.stores.contacts;
    let valid = |u: &str| qim_proto::ids::is_valid_id(u);
    let op = match request.op {
        Some(contact_request::Op::Request(r)) if valid(&r.user) => {
            if r.message.len() > MAX_REQUEST_MESSAGE {
                return Err(Refusal::invalid("request message above 512 bytes"));
            }
            Some(ContactOp::Request {
                other: r.user,
                message: r.message,
                limits: RequestLimits {
                    cooldown_ms: i64::try_from(ctx.config.im.friend_request_cooldown_ms)
                        .unwrap_or(i64::MAX),
                    max_pending: ctx.config.quotas.pending_requests as usize,
                },
            })
        }
        Some(contact_request::Op::Accept(u)) if valid(&u) => Some(ContactOp::Accept(u)),
        Some(contact_request::Op::Reject(u)) if valid(&u) => Some(ContactOp::Reject(u)),
        Some(contact_request::Op::Remove(u)) if valid(&u) => Some(ContactOp::Remove(u)),
        Some(contact_request::Op::Block(u)) if valid(&u) => Some(ContactOp::Block(u)),
        Some(contact_request::Op::Unblock(u)) if valid(&u) => Some(ContactOp::Unblock(u)),
        Some(contact_request::Op::List(_)) => None,
        _ => {
            return Err(Refusal::invalid("unknown contact operation or bad user id"));
        }
    };
    if let Some(ContactOp::Request { other, .. } | ContactOp::Block(other)) = &op {
        // Both would write rows under the deleted id.
        crate::policy::check_not_deleted(ctx, other).await?;
    }
    if let Some(op) = op {
        // Ending a friendship or blocking ends presence watching both ways.
        let unwatch = match &op {
            ContactOp::Remove(other) | ContactOp::Block(other) => Some(other.clone()),
            _ => None,
        };
        let applied = contacts
            .contact_apply(user, op, qim_proto::now_ms())
            .await
            .inspect_err(|e| debug!(user, error = %e, "contact operation refused"))?;
        if let Some(other) = unwatch {
            ctx.fanout.unwatch(user, &other).await;
        }
        ctx.fanout.deliver_all(applied.events).await;
    }
    Ok(rpc_response::Kind::Contacts(contacts.contacts(user).await?))
}
