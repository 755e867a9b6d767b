//! Contacts at the gateway: the contact rpc request, and the direct-message
//! policy every one-to-one send passes (`im.direct_policy`, blocks).
//!
//! # Invariants
//! - A send to a user who blocked the sender is refused with `BLOCKED`;
//!   with `direct_policy = "friends"`, a send between non-friends with
//!   `NOT_FRIENDS`. Both are final (not retryable) and logged.
//! - Events a change appends (a request to the addressee, an answer to the
//!   requester) are published after the store made them durable.

use std::sync::Arc;

use qim_proto::v1::{self, ErrorCode, contact_request, rpc_response};
use qim_storage::contacts::ContactOp;
use tracing::{debug, warn};

use crate::conversations::{Refused, op_error};
use crate::server::Ctx;

/// Bytes a friend request's message may have.
const MAX_REQUEST_MESSAGE: usize = 512;

fn error(code: ErrorCode, message: impl Into<String>) -> rpc_response::Kind {
    rpc_response::Kind::Error(v1::RpcError {
        code: code as i32,
        message: message.into(),
    })
}

/// Whether `sender` may message `recipient` one to one.
pub(crate) async fn check_direct(ctx: &Ctx, sender: &str, recipient: &str) -> Result<(), Refused> {
    let Some(contacts) = &ctx.contacts else {
        return Ok(());
    };
    if sender == recipient {
        return Ok(());
    }
    match contacts.relation(sender, recipient).await {
        Ok(r) if r.blocked => {
            debug!(sender, recipient, "send refused: blocked");
            Err((ErrorCode::Blocked, "the recipient has blocked you".into()))
        }
        Ok(r) if !r.friends && ctx.config.im.direct_policy == "friends" => {
            debug!(sender, recipient, "send refused: not friends");
            Err((
                ErrorCode::NotFriends,
                "this server only allows messages between friends".into(),
            ))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            warn!(sender, error = %e, "reading the contact relation failed");
            Err((ErrorCode::StoreUnavailable, e.to_string()))
        }
    }
}

/// Answers a contact request of `user`.
pub(crate) async fn rpc(ctx: &Ctx, user: &str, request: v1::ContactRequest) -> rpc_response::Kind {
    let Some(contacts) = &ctx.contacts else {
        return error(
            ErrorCode::Unsupported,
            "this server's store has no contacts",
        );
    };
    let valid = |u: &str| qim_proto::ids::is_valid_id(u);
    let op = match request.op {
        Some(contact_request::Op::Request(r)) if valid(&r.user) => {
            if r.message.len() > MAX_REQUEST_MESSAGE {
                return error(
                    ErrorCode::InvalidArgument,
                    "request message above 512 bytes",
                );
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
            return error(
                ErrorCode::InvalidArgument,
                "unknown contact operation or bad user id",
            );
        }
    };
    if let Some(op) = op {
        match contacts.contact_apply(user, op, qim_proto::now_ms()).await {
            Ok(applied) => {
                for event in applied.events {
                    crate::cluster::deliver(ctx, Arc::new(event)).await;
                }
            }
            Err(e) => {
                let (code, message) = op_error(&e);
                debug!(user, ?code, "contact operation refused");
                return error(code, message);
            }
        }
    }
    match contacts.contacts(user).await {
        Ok(list) => rpc_response::Kind::Contacts(list),
        Err(e) => error(ErrorCode::StoreUnavailable, e.to_string()),
    }
}
