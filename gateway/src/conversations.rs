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

use qim_proto::v1::{self, rpc_response};
use qim_storage::conversations::{ConversationOp, HistoryAnchor};
use tracing::{debug, warn};

use crate::ctx::Ctx;
use crate::post::check_content;
use crate::reply::{Refusal, Reply, entries_in_frame, page_size};

/// Conversations per page when the request names no limit.
const DEFAULT_PAGE: u32 = 50;

/// History entries per page when the request names no limit.
const DEFAULT_HISTORY_PAGE: u32 = 100;

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
    let limit = page_size(r.limit, DEFAULT_PAGE, u32::MAX);
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

/// The requests that change a conversation or a message, each one store
/// call.
pub(crate) enum Change {
    /// Read up to a seq.
    MarkRead(v1::MarkReadRequest),
    /// Pin or mute.
    SetFlags(v1::SetFlagsRequest),
    /// Recall a message the user sent, within `im.recall_window_ms`.
    Recall(v1::RecallRequest),
    /// Edit a message the user sent.
    Edit(v1::EditRequest),
    /// Delete a copy from the user's own inbox (for all their devices).
    Delete(v1::DeleteRequest),
}

/// Applies a change of `user`'s in one store call, then hands its events
/// to the fan-out.
pub(crate) async fn change(ctx: &Ctx, user: &str, change: Change) -> Reply {
    let owner = user.to_owned();
    let now_ms = qim_proto::now_ms();
    let op = match change {
        Change::MarkRead(r) => ConversationOp::MarkRead {
            user: owner,
            conversation: valid_peer(&r.conversation)?,
            up_to_seq: r.up_to_seq,
            now_ms,
        },
        Change::SetFlags(r) => ConversationOp::SetFlags {
            user: owner,
            conversation: valid_peer(&r.conversation)?,
            pinned: r.pinned,
            muted: r.muted,
            now_ms,
        },
        Change::Recall(r) => {
            valid_msg_id(&r.msg_id)?;
            let window_ms = i64::try_from(ctx.config.im.recall_window_ms).unwrap_or(i64::MAX);
            ConversationOp::Recall {
                user: owner,
                msg_id: r.msg_id,
                now_ms,
                window_ms,
            }
        }
        Change::Edit(r) => {
            valid_msg_id(&r.msg_id)?;
            check_content(ctx, &r.body, &r.kind)?;
            ConversationOp::Edit {
                user: owner,
                msg_id: r.msg_id,
                kind: r.kind,
                body: r.body,
                now_ms,
            }
        }
        Change::Delete(r) => ConversationOp::Delete {
            user: owner,
            seq: r.seq,
            now_ms,
        },
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
    let limit = page_size(r.limit, DEFAULT_HISTORY_PAGE, u32::MAX);
    let page = ctx
        .stores
        .conversations
        .history(user, &peer, anchor, r.forward, limit)
        .await?;
    // Fill up to the frame limit; `more` tells the client to go on.
    let (mut entries, cut) = entries_in_frame(page.entries, ctx.config.limits.max_frame_bytes);
    if matches!(peer.target, Some(v1::peer::Target::Group(_))) {
        crate::policy::hide_blocked(ctx, user, &mut entries).await?;
    }
    Ok(rpc_response::Kind::History(v1::HistoryResponse {
        entries,
        more: page.more || cut,
        // Cut by the frame budget: the boundary was not reached.
        expired: page.expired && !cut,
    }))
}
