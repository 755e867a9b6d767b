//! Conversations and message operations at the gateway: how a chat send
//! becomes a post (one copy per inbox), and the rpc requests for the
//! conversation list, read state, flags, recall, edit and delete-for-me.
//!
//! # Invariants
//! - Everything a request changes is written by one atomic store call
//!   ([`ConversationStore`]); events it appends are published to the
//!   affected users' feeds only after that call returned (durable), so they
//!   reach every device through the ordinary delivery path, in seq order,
//!   exactly once, also devices that connect later.
//! - Store refusals map to wire codes in one place, [`op_error`].

use std::sync::Arc;

use qim_proto::v1::{self, ErrorCode, rpc_request, rpc_response};
use qim_storage::conversations::{ConversationOp, OpError, PREVIEW_BYTES, Post};
use qim_storage::{Appended, NewMessage, StoreError, StoredMessage};
use tracing::{debug, warn};

use crate::groups::GroupRpc;
use crate::server::Ctx;

/// Conversations per page when the request names no limit.
const DEFAULT_PAGE: usize = 50;

/// The parts of a `Send` beyond the plain message: reply quote, mentions.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    reply_to: Option<v1::Quote>,
    mentions: Vec<String>,
    mention_all: bool,
}

impl Extras {
    /// Puts checked extras back into a send (for a scheduled send, stored
    /// whole).
    pub(crate) fn put_back(self, send: &mut v1::Send) {
        send.reply_to = self.reply_to;
        send.mentions = self.mentions;
        send.mention_all = self.mention_all;
    }

    /// Takes the extras out of `send`, checked; a refusal names its code.
    pub(crate) fn take(
        send: &mut v1::Send,
        ctx: &Ctx,
    ) -> Result<Extras, (ErrorCode, &'static str)> {
        let mentions = std::mem::take(&mut send.mentions);
        if mentions.len() > ctx.config.im.max_mentions as usize {
            return Err((ErrorCode::InvalidArgument, "too many mentions"));
        }
        if !mentions.iter().all(|m| qim_proto::ids::is_valid_id(m)) {
            return Err((
                ErrorCode::InvalidArgument,
                "a mention is not a valid user id",
            ));
        }
        let reply_to = match send.reply_to.take() {
            Some(mut quote) => {
                if quote.msg_id.is_empty() || quote.msg_id.len() > qim_proto::ids::MAX_ID_LEN {
                    return Err((
                        ErrorCode::InvalidArgument,
                        "reply_to.msg_id is not a message id",
                    ));
                }
                if quote.from_user.len() > qim_proto::ids::MAX_ID_LEN
                    || quote.kind.len() > qim_proto::ids::MAX_ID_LEN
                {
                    return Err((ErrorCode::InvalidArgument, "reply_to field too long"));
                }
                if quote.excerpt.len() > PREVIEW_BYTES {
                    quote.excerpt = quote.excerpt.slice(..PREVIEW_BYTES);
                }
                Some(quote)
            }
            None => None,
        };
        Ok(Extras {
            reply_to,
            mentions,
            mention_all: std::mem::take(&mut send.mention_all),
        })
    }
}

/// A send the store refused (group rules), with its wire code.
pub(crate) type Refused = (ErrorCode, String);

/// Stores validated sends in order. With a conversation store, each is
/// posted (addressee's copy first, whose seq is acknowledged; the sender's
/// own copy when `im.sync_sent`; a group's copies resolved by the store),
/// and copies other than the first are published here; the caller
/// publishes the returned primary copies.
pub(crate) async fn store(
    ctx: &Ctx,
    batch: Vec<(NewMessage, Extras)>,
) -> Result<Vec<Result<Appended, Refused>>, StoreError> {
    let Some(im) = &ctx.im else {
        let appended = ctx
            .store
            .append(batch.into_iter().map(|(m, _)| m).collect())
            .await?;
        return Ok(appended.into_iter().map(Ok).collect());
    };
    // One-to-one sends pass the contact policy first.
    let mut verdicts: Vec<Option<Refused>> = Vec::with_capacity(batch.len());
    let mut passed = Vec::with_capacity(batch.len());
    for (m, extras) in batch {
        let group = matches!(m.to.target, Some(v1::peer::Target::Group(_)));
        let verdict = if group {
            Ok(())
        } else {
            crate::contacts::check_direct(ctx, &m.sender, &m.inbox).await
        };
        match verdict {
            Ok(()) => {
                verdicts.push(None);
                passed.push((m, extras));
            }
            Err(refused) => verdicts.push(Some(refused)),
        }
    }
    let posts: Vec<Post> = passed
        .into_iter()
        .map(|(m, extras)| {
            let group = matches!(m.to.target, Some(v1::peer::Target::Group(_)));
            let mut inboxes = Vec::new();
            if !group {
                inboxes.push(m.inbox.clone());
                if ctx.config.im.sync_sent && m.sender != m.inbox {
                    inboxes.push(m.sender.clone());
                }
            }
            Post {
                sender: m.sender,
                sender_device: m.sender_device,
                client_msg_id: m.client_msg_id,
                to: m.to,
                kind: m.kind,
                body: m.body,
                server_time_ms: m.server_time_ms,
                reply_to: extras.reply_to,
                mentions: extras.mentions,
                mention_all: extras.mention_all,
                inboxes,
            }
        })
        .collect();
    let posted = if posts.is_empty() {
        Vec::new()
    } else {
        im.post(posts).await?
    };
    let mut out = Vec::with_capacity(verdicts.len());
    let mut posted = posted.into_iter();
    for verdict in verdicts {
        if let Some(refused) = verdict {
            out.push(Err(refused));
            continue;
        }
        let Some(p) = posted.next() else {
            return Err(StoreError::Corrupt("fewer post results than posts".into()));
        };
        let p = match p {
            Ok(p) => p,
            // A group that does not exist (any more) is a bad recipient.
            Err(OpError::NotFound | OpError::Dissolved) => {
                out.push(Err((
                    ErrorCode::InvalidRecipient,
                    "no such group, or it was dissolved".into(),
                )));
                continue;
            }
            Err(e) => {
                out.push(Err(op_error(&e)));
                continue;
            }
        };
        let mut copies = p.copies.into_iter();
        let Some(primary) = copies.next() else {
            return Err(StoreError::Corrupt("a post without copies".into()));
        };
        if let Some(group) = primary.inbox.strip_prefix('#') {
            crate::cluster::deliver_group(ctx, group, Arc::new(primary.clone())).await;
        }
        for copy in copies {
            crate::cluster::deliver(ctx, Arc::new(copy)).await;
        }
        out.push(Ok(Appended {
            message: primary,
            duplicate: p.duplicate,
        }));
    }
    Ok(out)
}

/// The wire code and message for a refused operation: the one place
/// [`OpError`] meets [`ErrorCode`].
pub(crate) fn op_error(e: &OpError) -> (ErrorCode, String) {
    let code = match e {
        OpError::Store(StoreError::Invalid(_)) => ErrorCode::InvalidArgument,
        OpError::Store(s) if s.is_retryable() => ErrorCode::StoreUnavailable,
        OpError::Store(_) => ErrorCode::Internal,
        OpError::NotFound => ErrorCode::NotFound,
        OpError::NotSender => ErrorCode::PermissionDenied,
        OpError::WindowPassed => ErrorCode::RecallWindowPassed,
        OpError::Recalled => ErrorCode::AlreadyRecalled,
        OpError::NotAMember => ErrorCode::NotAMember,
        OpError::Muted => ErrorCode::Muted,
        OpError::NotAllowed => ErrorCode::PermissionDenied,
        OpError::Exists => ErrorCode::InvalidArgument,
        OpError::Dissolved => ErrorCode::NotFound,
        OpError::Blocked => ErrorCode::Blocked,
        _ => ErrorCode::Internal,
    };
    (code, e.to_string())
}

fn error(code: ErrorCode, message: impl Into<String>) -> rpc_response::Kind {
    rpc_response::Kind::Error(v1::RpcError {
        code: code as i32,
        message: message.into(),
    })
}

fn valid_peer(peer: &Option<v1::Peer>) -> Option<v1::Peer> {
    let peer = peer.as_ref()?;
    let ok = match peer.target.as_ref()? {
        v1::peer::Target::User(u) => qim_proto::ids::is_valid_id(u),
        v1::peer::Target::Group(g) => qim_proto::ids::is_valid_id(g),
    };
    ok.then(|| peer.clone())
}

fn valid_msg_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= qim_proto::ids::MAX_ID_LEN
}

/// Answers an IM rpc request of `user`.
pub(crate) async fn rpc(
    ctx: &Ctx,
    user: &str,
    device: &str,
    session_id: u64,
    request: rpc_request::Kind,
) -> rpc_response::Kind {
    // Groups, contacts, schedules and presence have stores of their own
    // (each handler checks its own); the rest needs conversations.
    let no_conversations = || {
        error(
            ErrorCode::Unsupported,
            "this server's store has no conversations",
        )
    };
    let im = ctx.im.as_ref();
    let now_ms = qim_proto::now_ms();
    let op = match request {
        rpc_request::Kind::Conversations(r) => {
            if r.after.len() > 1024 {
                return error(ErrorCode::InvalidArgument, "page token too long");
            }
            let limit = match r.limit {
                0 => DEFAULT_PAGE,
                n => n as usize,
            };
            let Some(im) = im else {
                return no_conversations();
            };
            return match im.conversations(user, &r.after, limit).await {
                Ok(page) => rpc_response::Kind::Conversations(v1::ConversationsResponse {
                    conversations: page.conversations,
                    next: page.next.into(),
                }),
                Err(e) => {
                    warn!(user, error = %e, "listing conversations failed");
                    let (code, message) = op_error(&OpError::Store(e));
                    error(code, message)
                }
            };
        }
        rpc_request::Kind::MarkRead(r) => {
            let Some(conversation) = valid_peer(&r.conversation) else {
                return error(
                    ErrorCode::InvalidArgument,
                    "conversation is not a valid peer",
                );
            };
            ConversationOp::MarkRead {
                user: user.to_owned(),
                conversation,
                up_to_seq: r.up_to_seq,
                now_ms,
            }
        }
        rpc_request::Kind::SetFlags(r) => {
            let Some(conversation) = valid_peer(&r.conversation) else {
                return error(
                    ErrorCode::InvalidArgument,
                    "conversation is not a valid peer",
                );
            };
            ConversationOp::SetFlags {
                user: user.to_owned(),
                conversation,
                pinned: r.pinned,
                muted: r.muted,
                now_ms,
            }
        }
        rpc_request::Kind::Recall(r) => {
            if !valid_msg_id(&r.msg_id) {
                return error(ErrorCode::InvalidArgument, "msg_id is not a message id");
            }
            ConversationOp::Recall {
                user: user.to_owned(),
                msg_id: r.msg_id,
                now_ms,
                window_ms: i64::try_from(ctx.config.im.recall_window_ms).unwrap_or(i64::MAX),
            }
        }
        rpc_request::Kind::Edit(r) => {
            if !valid_msg_id(&r.msg_id) {
                return error(ErrorCode::InvalidArgument, "msg_id is not a message id");
            }
            if r.body.len() > ctx.config.limits.max_body_bytes as usize {
                return error(
                    ErrorCode::MessageTooLarge,
                    "body exceeds limits.max_body_bytes",
                );
            }
            if r.kind.len() > qim_proto::ids::MAX_ID_LEN {
                return error(ErrorCode::InvalidArgument, "kind is longer than 64 bytes");
            }
            ConversationOp::Edit {
                user: user.to_owned(),
                msg_id: r.msg_id,
                kind: r.kind,
                body: r.body,
                now_ms,
            }
        }
        rpc_request::Kind::Delete(r) => ConversationOp::Delete {
            user: user.to_owned(),
            seq: r.seq,
            now_ms,
        },
        rpc_request::Kind::Sync(_) => {
            return error(ErrorCode::Internal, "sync is not an IM request");
        }
        rpc_request::Kind::CreateGroup(r) => {
            return crate::groups::rpc(ctx, user, GroupRpc::Create(r)).await;
        }
        rpc_request::Kind::Group(r) => {
            return crate::groups::rpc(ctx, user, GroupRpc::Change(r)).await;
        }
        rpc_request::Kind::Members(r) => {
            return crate::groups::rpc(ctx, user, GroupRpc::Members(r)).await;
        }
        rpc_request::Kind::GroupSync(r) => {
            return crate::groups::rpc(ctx, user, GroupRpc::Sync(r)).await;
        }
        rpc_request::Kind::Contacts(r) => return crate::contacts::rpc(ctx, user, r).await,
        rpc_request::Kind::Schedule(r) => {
            return crate::schedule::schedule(ctx, user, device, r).await;
        }
        rpc_request::Kind::CancelSchedule(r) => return crate::schedule::cancel(ctx, user, r).await,
        rpc_request::Kind::Typing(r) => return crate::presence::typing(ctx, user, r).await,
        rpc_request::Kind::History(r) => {
            let Some(im) = im else {
                return no_conversations();
            };
            return history(ctx, im.as_ref(), user, r).await;
        }
        rpc_request::Kind::ReadCount(r) => {
            if !valid_msg_id(&r.msg_id) {
                return error(ErrorCode::InvalidArgument, "msg_id is not a message id");
            }
            let Some(im) = im else {
                return no_conversations();
            };
            return match im.read_count(user, &r.msg_id).await {
                Ok((read, total)) => {
                    rpc_response::Kind::ReadCount(v1::ReadCountResponse { read, total })
                }
                Err(e) => {
                    let (code, message) = op_error(&e);
                    error(code, message)
                }
            };
        }
        rpc_request::Kind::Presence(r) => {
            return crate::presence::presence(ctx, user, session_id, r).await;
        }
        rpc_request::Kind::OnlineTime(r) => {
            return crate::presence::online_time(ctx, user, r).await;
        }
    };
    let Some(im) = im else {
        return no_conversations();
    };
    match im.apply(op).await {
        Ok(applied) => {
            for copy in applied.rewritten {
                ctx.routes.replace(Arc::new(copy));
            }
            publish(ctx, applied.events).await;
            rpc_response::Kind::Op(v1::OpResponse {
                event_seq: applied.event_seq,
                conversation: applied.conversation,
            })
        }
        Err(e) => {
            let (code, message) = op_error(&e);
            if let OpError::Store(e) = &e {
                warn!(user, error = %e, "conversation operation failed");
                if e.is_fatal() {
                    ctx.fatal.send_replace(Some(e.to_string()));
                }
            } else {
                debug!(user, ?code, "conversation operation refused");
            }
            error(code, message)
        }
    }
}

async fn history(
    ctx: &Ctx,
    im: &dyn qim_storage::ConversationStore,
    user: &str,
    r: v1::HistoryRequest,
) -> rpc_response::Kind {
    use qim_storage::conversations::HistoryAnchor;
    let Some(peer) = valid_peer(&r.conversation) else {
        return error(
            ErrorCode::InvalidArgument,
            "conversation is not a valid peer",
        );
    };
    let anchor = match (r.seq, r.time_ms) {
        (0, 0) => HistoryAnchor::End,
        (0, t) => HistoryAnchor::Time(t),
        (s, _) => HistoryAnchor::Seq(s),
    };
    let limit = match r.limit {
        0 => 100,
        n => n as usize,
    };
    match im.history(user, &peer, anchor, r.forward, limit).await {
        Ok(page) => {
            // Fill up to the frame limit; `more` tells the client to go on.
            let budget = (ctx.config.limits.max_frame_bytes as usize).saturating_sub(64);
            let mut used = 0;
            let total = page.entries.len();
            let entries: Vec<v1::InboxEntry> = page
                .entries
                .into_iter()
                .map(|m| v1::InboxEntry {
                    seq: m.seq,
                    message: Some(m.message),
                })
                .take_while(|e| {
                    use prost::Message as _;
                    let len = e.encoded_len();
                    used += len + prost::length_delimiter_len(len) + 1;
                    used <= budget
                })
                .collect();
            let more = page.more || entries.len() < total;
            // Cut by the frame budget: the boundary was not reached.
            let expired = page.expired && entries.len() == total;
            rpc_response::Kind::History(v1::HistoryResponse {
                entries,
                more,
                expired,
            })
        }
        Err(e) => {
            let (code, message) = op_error(&e);
            error(code, message)
        }
    }
}

/// Hands durable events to their inboxes' sessions, on any node.
async fn publish(ctx: &Ctx, events: Vec<StoredMessage>) {
    for event in events {
        crate::cluster::deliver(ctx, Arc::new(event)).await;
    }
}
