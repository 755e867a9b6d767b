//! Contacts: the contact rpc request (friend requests and answers,
//! friends, blocks). The rules a send between users passes are in
//! [`policy`](crate::policy).
//!
//! # Invariants
//! - Events a change appends (a request to the addressee, an answer to the
//!   requester) are handed to the fan-out after the store made them
//!   durable.

use qim_proto::v1::{self, contact_request, rpc_response};
use qim_storage::contacts::ContactOp;
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
    if let Some(op) = op {
        let applied = contacts
            .contact_apply(user, op, qim_proto::now_ms())
            .await
            .inspect_err(|e| debug!(user, error = %e, "contact operation refused"))?;
        ctx.fanout.deliver_all(applied.events).await;
    }
    Ok(rpc_response::Kind::Contacts(contacts.contacts(user).await?))
}
