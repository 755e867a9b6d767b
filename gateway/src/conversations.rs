//! Conversations and message operations: the rpc requests for the
//! conversation list, read state, flags, recall, edit, delete-for-me,
//! history and read counts.
//!
//! # Invariants
//! - Everything a request changes is written by one atomic store call
//!   ([`ConversationStore::apply`](qim_storage::ConversationStore::apply));
//!   events it appends are handed to the fan-out only after that call
//!   returned (durable), so they reach every device through the ordinary
//!   delivery path, in seq order, exactly once, also devices that connect
//!   later.

use qim_proto::v1::{self, ErrorCode, rpc_response};
use qim_storage::conversations::{ConversationOp, HistoryAnchor};
use tracing::{debug, warn};

use crate::ctx::Ctx;
use crate::reply::{Refusal, Reply, fill_frame};

/// Conversations per page when the request names no limit.
const DEFAULT_PAGE: usize = 50;

/// History entries per page when the request names no limit.
const DEFAULT_HISTORY_PAGE: usize = 100;

fn valid_peer(peer: &Option<v1::Peer>) -> Result<v1::Peer, Refusal> {
    let valid = peer.as_ref().and_then(|peer| {
        let ok = match peer.target.as_ref()? {
            v1::peer::Target::User(u) => qim_proto::ids::is_valid_id(u),
            v1::peer::Target::Group(g) => qim_proto::ids::is_valid_id(g),
        };
        ok.then(|| peer.clone())
    });
    valid.ok_or_else(|| Refusal::invalid("conversation is not a valid peer"))
}

fn valid_msg_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > qim_proto::ids::MAX_ID_LEN {
        return Err(Refusal::invalid("msg_id is not a message id"));
    }
    Ok(())
}

/// A page of `user`'s conversation list.
pub(crate) async fn list(ctx: &Ctx, user: &str, r: v1::ConversationsRequest) -> Reply {
    if r.after.len() > 1024 {
        return Err(Refusal::invalid("page token too long"));
    }
    let limit = match r.limit {
        0 => DEFAULT_PAGE,
        n => n as usize,
    };
    let page = ctx
        .stores
        .conversations
        .conversations(user, &r.after, limit)
        .await
        .inspect_err(|e| warn!(user, error = %e, "listing conversations failed"))?;
    Ok(rpc_response::Kind::Conversations(
        v1::ConversationsResponse {
            conversations: page.conversations,
            next: page.next.into(),
        },
    ))
}

/// Marks a conversation read up to a seq.
pub(crate) async fn mark_read(ctx: &Ctx, user: &str, r: v1::MarkReadRequest) -> Reply {
    let op = ConversationOp::MarkRead {
        user: user.to_owned(),
        conversation: valid_peer(&r.conversation)?,
        up_to_seq: r.up_to_seq,
        now_ms: qim_proto::now_ms(),
    };
    apply(ctx, user, op).await
}

/// Pins or mutes a conversation.
pub(crate) async fn set_flags(ctx: &Ctx, user: &str, r: v1::SetFlagsRequest) -> Reply {
    let op = ConversationOp::SetFlags {
        user: user.to_owned(),
        conversation: valid_peer(&r.conversation)?,
        pinned: r.pinned,
        muted: r.muted,
        now_ms: qim_proto::now_ms(),
    };
    apply(ctx, user, op).await
}

/// Recalls a message the user sent, within `im.recall_window_ms`.
pub(crate) async fn recall(ctx: &Ctx, user: &str, r: v1::RecallRequest) -> Reply {
    valid_msg_id(&r.msg_id)?;
    let op = ConversationOp::Recall {
        user: user.to_owned(),
        msg_id: r.msg_id,
        now_ms: qim_proto::now_ms(),
        window_ms: i64::try_from(ctx.config.im.recall_window_ms).unwrap_or(i64::MAX),
    };
    apply(ctx, user, op).await
}

/// Edits a message the user sent.
pub(crate) async fn edit(ctx: &Ctx, user: &str, r: v1::EditRequest) -> Reply {
    valid_msg_id(&r.msg_id)?;
    if r.body.len() > ctx.config.limits.max_body_bytes as usize {
        return Err(Refusal::new(
            ErrorCode::MessageTooLarge,
            "body exceeds limits.max_body_bytes",
        ));
    }
    if r.kind.len() > qim_proto::ids::MAX_ID_LEN {
        return Err(Refusal::invalid("kind is longer than 64 bytes"));
    }
    let op = ConversationOp::Edit {
        user: user.to_owned(),
        msg_id: r.msg_id,
        kind: r.kind,
        body: r.body,
        now_ms: qim_proto::now_ms(),
    };
    apply(ctx, user, op).await
}

/// Deletes a copy from the user's own inbox (for all their devices).
pub(crate) async fn delete(ctx: &Ctx, user: &str, r: v1::DeleteRequest) -> Reply {
    let op = ConversationOp::Delete {
        user: user.to_owned(),
        seq: r.seq,
        now_ms: qim_proto::now_ms(),
    };
    apply(ctx, user, op).await
}

/// How many members read a group message the user sent.
pub(crate) async fn read_count(ctx: &Ctx, user: &str, r: v1::ReadCountRequest) -> Reply {
    valid_msg_id(&r.msg_id)?;
    let (read, total) = ctx.stores.conversations.read_count(user, &r.msg_id).await?;
    Ok(rpc_response::Kind::ReadCount(v1::ReadCountResponse {
        read,
        total,
    }))
}

/// Applies an operation in one store call, then hands its events to the
/// fan-out.
async fn apply(ctx: &Ctx, user: &str, op: ConversationOp) -> Reply {
    match ctx.stores.conversations.apply(op).await {
        Ok(applied) => {
            for copy in applied.rewritten {
                ctx.fanout.replace(copy);
            }
            ctx.fanout.deliver_all(applied.events).await;
            Ok(rpc_response::Kind::Op(v1::OpResponse {
                event_seq: applied.event_seq,
                conversation: applied.conversation,
            }))
        }
        Err(e) => {
            if let qim_storage::OpError::Store(store) = &e {
                warn!(user, error = %store, "conversation operation failed");
                ctx.store_failed(store);
            } else {
                debug!(user, error = %e, "conversation operation refused");
            }
            Err(e.into())
        }
    }
}

/// A page of one conversation's history.
pub(crate) async fn history(ctx: &Ctx, user: &str, r: v1::HistoryRequest) -> Reply {
    let peer = valid_peer(&r.conversation)?;
    let anchor = match (r.seq, r.time_ms) {
        (0, 0) => HistoryAnchor::End,
        (0, t) => HistoryAnchor::Time(t),
        (s, _) => HistoryAnchor::Seq(s),
    };
    let limit = match r.limit {
        0 => DEFAULT_HISTORY_PAGE,
        n => n as usize,
    };
    let page = ctx
        .stores
        .conversations
        .history(user, &peer, anchor, r.forward, limit)
        .await?;
    let entries = page.entries.into_iter().map(|m| v1::InboxEntry {
        seq: m.seq,
        message: Some(m.message),
    });
    // Fill up to the frame limit; `more` tells the client to go on.
    let (entries, cut) = fill_frame(entries, ctx.config.limits.max_frame_bytes);
    Ok(rpc_response::Kind::History(v1::HistoryResponse {
        entries,
        more: page.more || cut,
        // Cut by the frame budget: the boundary was not reached.
        expired: page.expired && !cut,
    }))
}
