//! A send becomes a post: validated, checked against the rules between
//! sender and recipient, charged to the sender's quotas (its inbox copies
//! and stored bytes, [`quota`](crate::quota)), stored with one copy per
//! inbox in one atomic
//! store call, then handed to the fan-out. Chat streams post their sends
//! here ([`post_sends`]); scheduled sends are checked here when they are
//! scheduled ([`Extras`], [`check_send`]).
//!
//! # Invariants
//! - A send is acknowledged only from the result of the store call, i.e.
//!   after it is durable; a store error refuses the whole batch as
//!   retryable.
//! - A store call once started runs to its end, even when the session
//!   that made it ends first (it runs on a task of its own).
//! - Copies are handed to the fan-out after the store call returned,
//!   duplicates too: the first attempt's session may have ended between
//!   its commit and its fan-out; feeds ignore seqs they have.
//! - A batch keeps its order: sends are stored in the order they arrived,
//!   and none is stored after an earlier one of its stream was refused as
//!   retryable until that one is sent again (`order`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use qim_proto::v1::{self, ErrorCode, server_ack};
use qim_storage::conversations::{PREVIEW_BYTES, Post};
use qim_storage::{StoreError, StoredMessage};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::ctx::Ctx;
use crate::order::OrderHold;
use crate::quota::Cost;
use crate::reply::Refusal;

/// Who sends: a logged-in user on one device.
pub(crate) struct Sender<'a> {
    pub(crate) user: &'a str,
    pub(crate) device: &'a str,
    /// Whether the sender's `Send.first_attempt` flags are believed: set
    /// for a session until one proves false, then cleared for the rest of
    /// it (a wrong flag only wastes seqs, but those are gaps a recipient
    /// waits on until they settle). `None`: never believed (the admin
    /// API, whose callers retry with the same key).
    pub(crate) first_attempts: Option<&'a AtomicBool>,
}

impl Sender<'_> {
    fn believes_first_attempt(&self, send: &v1::Send) -> bool {
        send.first_attempt
            && self
                .first_attempts
                .is_some_and(|b| b.load(Ordering::Relaxed))
    }

    /// A post sent as a first attempt was not one: stop believing the flag.
    fn first_attempt_was_wrong(&self, ctx: &Ctx, client_msg_id: &str) {
        if let Some(believed) = self.first_attempts
            && believed.swap(false, Ordering::Relaxed)
        {
            ctx.metrics.first_attempts_wrong.inc();
            warn!(user = %self.user, device = %self.device, client_msg_id, "a send marked first_attempt was claimed before; the flag is ignored for the rest of the session");
        }
    }
}

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

    /// Takes the extras out of `send`, checked.
    pub(crate) fn take(send: &mut v1::Send, ctx: &Ctx) -> Result<Extras, Refusal> {
        let mentions = std::mem::take(&mut send.mentions);
        if mentions.len() > ctx.config.im.max_mentions as usize {
            return Err(Refusal::invalid("too many mentions"));
        }
        if !mentions.iter().all(|m| qim_proto::ids::is_valid_id(m)) {
            return Err(Refusal::invalid("a mention is not a valid user id"));
        }
        let reply_to = match send.reply_to.take() {
            Some(mut quote) => {
                if quote.msg_id.is_empty() || quote.msg_id.len() > qim_proto::ids::MAX_ID_LEN {
                    return Err(Refusal::invalid("reply_to.msg_id is not a message id"));
                }
                if quote.from_user.len() > qim_proto::ids::MAX_ID_LEN
                    || quote.kind.len() > qim_proto::ids::MAX_ID_LEN
                {
                    return Err(Refusal::invalid("reply_to field too long"));
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

/// Where a send goes.
pub(crate) enum Target {
    /// One user's inbox (and the sender's own with `im.sync_sent`).
    User(String),
    /// A group; the store resolves the members.
    Group,
}

/// Checks what every send must be, wherever it comes from: its id, body
/// size, kind and recipient.
pub(crate) fn check_send(ctx: &Ctx, send: &v1::Send) -> Result<Target, Refusal> {
    if !qim_proto::ids::is_valid_client_msg_id(&send.client_msg_id) {
        return Err(Refusal::invalid(
            "client_msg_id must be 1-64 printable ASCII bytes",
        ));
    }
    check_content(ctx, &send.body, &send.kind)?;
    match send.to.as_ref().and_then(|p| p.target.as_ref()) {
        Some(v1::peer::Target::User(user)) if qim_proto::ids::is_valid_id(user) => {
            Ok(Target::User(user.clone()))
        }
        Some(v1::peer::Target::Group(group)) if qim_proto::ids::is_valid_id(group) => {
            Ok(Target::Group)
        }
        Some(v1::peer::Target::Group(_)) => Err(Refusal::new(
            ErrorCode::InvalidRecipient,
            "the group id is invalid",
        )),
        _ => Err(Refusal::new(
            ErrorCode::InvalidRecipient,
            "recipient is not a valid user id",
        )),
    }
}

/// Checks a message's content (a send's or an edit's): the body within
/// `limits.max_body_bytes`, the kind an id-sized string.
pub(crate) fn check_content(ctx: &Ctx, body: &[u8], kind: &str) -> Result<(), Refusal> {
    if body.len() > ctx.config.limits.max_body_bytes as usize {
        return Err(Refusal::new(
            ErrorCode::MessageTooLarge,
            "body exceeds limits.max_body_bytes",
        ));
    }
    if kind.len() > qim_proto::ids::MAX_ID_LEN {
        return Err(Refusal::invalid("kind is longer than 64 bytes"));
    }
    Ok(())
}

/// The inboxes a one-to-one send is copied to: the recipient's, and the
/// sender's own with `im.sync_sent`.
pub(crate) fn direct_inboxes(ctx: &Ctx, sender: &str, recipient: &str) -> Vec<String> {
    let mut inboxes = vec![recipient.to_owned()];
    if ctx.config.im.sync_sent && sender != recipient {
        inboxes.push(sender.to_owned());
    }
    inboxes
}

/// Which of a sender's rules a post is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trust {
    /// A user's send (a client's, or the admin API's on a user's behalf):
    /// blocks, `im.direct_policy`, the sender's quotas, the sender's own
    /// copy with `im.sync_sent`.
    User,
    /// The system account's send through the admin API (a business
    /// notification): no user's rules or quotas apply, and the system
    /// account keeps no copy of its own.
    System,
}

/// Validates, checks and stores a batch of sends in order, hands the
/// copies to the fan-out, and answers each with an ack or a nack.
/// `hold` is the chat stream's [`OrderHold`]: sends behind a held one are
/// refused with `ORDER_HELD`, and the first send refused as retryable
/// holds what follows.
pub(crate) async fn post_sends(
    ctx: &Ctx,
    sender: &Sender<'_>,
    sends: Vec<v1::Send>,
    hold: &mut OrderHold,
) -> Vec<v1::ServerAck> {
    post_sends_as(ctx, sender, sends, Trust::User, Some(hold)).await
}

/// [`post_sends`] with the sender's rules `trust` says: the one path of
/// chat streams and the admin API. The admin API has no stream to hold
/// (`hold` None): each of its sends is answered on its own.
pub(crate) async fn post_sends_as(
    ctx: &Ctx,
    sender: &Sender<'_>,
    sends: Vec<v1::Send>,
    trust: Trust,
    mut hold: Option<&mut OrderHold>,
) -> Vec<v1::ServerAck> {
    let now = qim_proto::now_ms();
    // One verdict per send, in order (an admitted one with whether it was
    // posted as a first attempt: a duplicate or conflict then proves the
    // flag wrong); the posts that passed, in order.
    let mut verdicts: Vec<Result<(String, bool), (String, Refusal)>> =
        Vec::with_capacity(sends.len());
    let mut posts = Vec::with_capacity(sends.len());
    // Sends refused for order are not the stream's earliest refusal.
    let mut held_here = std::collections::HashSet::new();
    let mut checked = DirectChecks::default();
    for send in sends {
        let id = send.client_msg_id.clone();
        if let Some(hold) = hold.as_deref_mut()
            && !hold.admits(&id)
        {
            held_here.insert(id.clone());
            verdicts.push(Err((id, Refusal::order_held())));
            continue;
        }
        match admit(ctx, sender, send, now, trust, &mut checked).await {
            Ok(post) => {
                verdicts.push(Ok((id, post.first_attempt)));
                posts.push(post);
            }
            Err(refusal) => {
                if let Some(hold) = hold.as_deref_mut()
                    && refusal.code.is_retryable()
                {
                    hold.hold(&id);
                }
                verdicts.push(Err((id, refusal)));
            }
        }
    }
    let stored = if posts.is_empty() {
        Ok(Vec::new())
    } else {
        let started = Instant::now();
        // On a task of its own: a post the store started (seqs taken, the
        // key claimed) is finished even if this session ends meanwhile (the
        // client moved, or went away), so its resend finds it stored rather
        // than a claim whose write never came.
        let store = Arc::clone(&ctx.stores.conversations);
        let result = tokio::spawn(async move { store.post(posts).await })
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Unavailable(format!(
                    "the post's task failed: {e}"
                )))
            });
        ctx.metrics
            .store_latency
            .observe(started.elapsed().as_secs_f64());
        result
    };
    let mut stored = match stored {
        Ok(posted) => Ok(posted.into_iter()),
        Err(e) => {
            if !matches!(e, StoreError::Full(_)) {
                warn!(user = %sender.user, error = %e, "store append failed; sends refused as retryable");
            }
            ctx.store_failed(&e);
            // Mapped once: every send of the batch gets the same refusal.
            Err(Refusal::from(e))
        }
    };
    let mut acks = Vec::with_capacity(verdicts.len());
    let mut earliest_found = false;
    for verdict in verdicts {
        let outcome = match (verdict, &mut stored) {
            (Err((id, refusal)), _) => Err((id, refusal)),
            (Ok((id, first)), Ok(posted)) => match posted.next() {
                Some(Ok(p)) => {
                    if p.duplicate && first {
                        sender.first_attempt_was_wrong(ctx, &id);
                    }
                    match recorded_and_published(ctx, id.clone(), p).await {
                        Ok(Some(ack)) => Ok(ack),
                        Ok(None) => Err((
                            id,
                            Refusal::from(StoreError::Corrupt("a post without copies".into())),
                        )),
                        Err(e) => Err((id, Refusal::from(e))),
                    }
                }
                Some(Err(e)) => {
                    if first && matches!(e, qim_storage::OpError::Conflict) {
                        sender.first_attempt_was_wrong(ctx, &id);
                    }
                    Err((id, crate::reply::post_refused(e)))
                }
                None => Err((
                    id,
                    Refusal::from(StoreError::Corrupt(
                        "the store returned fewer results than sends".into(),
                    )),
                )),
            },
            (Ok((id, _)), Err(refusal)) => Err((id, refusal.clone())),
        };
        if let Err((id, refusal)) = &outcome
            && refusal.code.is_retryable()
            && !held_here.contains(id)
            && !earliest_found
        {
            // Admission refusals held already; a store refusal comes
            // earlier in the batch than any admitted send after it.
            earliest_found = true;
            if let Some(hold) = hold.as_deref_mut() {
                hold.hold_first(id);
            }
        }
        let kind = match outcome {
            Ok(ack) => {
                ctx.metrics.sends.inc();
                server_ack::Kind::Ack(ack)
            }
            Err((client_msg_id, refusal)) => {
                server_ack::Kind::Nack(nack(ctx, sender, client_msg_id, refusal))
            }
        };
        acks.push(v1::ServerAck { kind: Some(kind) });
    }
    acks
}

/// Records the copies of a post that carry blobs (for their collection),
/// then publishes it; a failed record is the send's (retryable) failure.
async fn recorded_and_published(
    ctx: &Ctx,
    client_msg_id: String,
    posted: qim_storage::conversations::Posted,
) -> Result<Option<v1::SendAck>, StoreError> {
    crate::media::record_copies(ctx, &posted.copies).await?;
    Ok(published(ctx, client_msg_id, posted.copies, !posted.duplicate).await)
}

/// The verdicts of one batch's direct sends by recipient: its sends to one
/// recipient share one read of the pair's relation (contacts, blocks, the
/// recipient's account), rather than one read each, in turn. A batch is
/// what a chat stream read at once, so a block set meanwhile applies to
/// all of it or none, as it would to one send.
#[derive(Default)]
struct DirectChecks(HashMap<String, Result<(), Refusal>>);

impl DirectChecks {
    async fn check(&mut self, ctx: &Ctx, sender: &str, recipient: &str) -> Result<(), Refusal> {
        if let Some(verdict) = self.0.get(recipient) {
            return verdict.clone();
        }
        let verdict = crate::policy::check_direct(ctx, sender, recipient).await;
        self.0.insert(recipient.to_owned(), verdict.clone());
        verdict
    }
}

/// A send checked and made into a post, or why not.
async fn admit(
    ctx: &Ctx,
    sender: &Sender<'_>,
    mut send: v1::Send,
    now: i64,
    trust: Trust,
    checked: &mut DirectChecks,
) -> Result<Post, Refusal> {
    let extras = Extras::take(&mut send, ctx)?;
    let target = check_send(ctx, &send)?;
    let first_attempt = sender.believes_first_attempt(&send);
    let inboxes = match (&target, trust) {
        (Target::User(recipient), Trust::User) => {
            checked.check(ctx, sender.user, recipient).await?;
            direct_inboxes(ctx, sender.user, recipient)
        }
        (Target::User(recipient), Trust::System) => {
            crate::policy::check_not_deleted(ctx, recipient).await?;
            vec![recipient.clone()]
        }
        (Target::Group, _) => Vec::new(),
    };
    // The system account has no blobs of its own: it can attach none.
    crate::media::check_attachments(ctx, sender.user, &send.to, &target, &mut send.attachments)
        .await?;
    if trust == Trust::User {
        // The business may refuse or rewrite it (before it is charged).
        crate::webhook::before_send(ctx, sender.user, sender.device, &mut send).await?;
        let cost = Cost {
            copies: copies(ctx, &send.to, &inboxes).await,
            body_bytes: send.body.len() as u64,
        };
        ctx.quotas.admit_send(sender.user, cost).await?;
    }
    Ok(Post {
        sender: sender.user.to_owned(),
        sender_device: sender.device.to_owned(),
        client_msg_id: send.client_msg_id,
        to: send.to.unwrap_or_default(),
        kind: send.kind,
        body: send.body,
        server_time_ms: now,
        reply_to: extras.reply_to,
        mentions: extras.mentions,
        mention_all: extras.mention_all,
        attachments: send.attachments,
        inboxes,
        first_attempt,
    })
}

/// The inbox copies a send to `to` makes: one per inbox of a one-to-one
/// send, one per member of a write-diffusion group, one for a
/// read-diffusion group's log (and one for a group the store will refuse).
/// The member count is read before the post, so a group that grows in
/// between costs its former size once.
pub(crate) async fn copies(ctx: &Ctx, to: &Option<v1::Peer>, inboxes: &[String]) -> u32 {
    if !inboxes.is_empty() {
        return u32::try_from(inboxes.len()).unwrap_or(u32::MAX);
    }
    let Some(v1::peer::Target::Group(group)) = to.as_ref().and_then(|p| p.target.as_ref()) else {
        return 1;
    };
    match ctx.stores.groups.group(group).await {
        Ok(Some(info)) if !info.read_diffusion => info.member_count.max(1),
        Ok(_) => 1,
        Err(e) => {
            // The post reads the group again and refuses if it must.
            debug!(group, error = %e, "group read for the send quota failed");
            1
        }
    }
}

/// Hands a post's copies to the fan-out; returns the ack of the primary one
/// (the addressee's copy, or the group log's entry), whose seq is
/// acknowledged.
async fn published(
    ctx: &Ctx,
    client_msg_id: String,
    copies: Vec<StoredMessage>,
    first_time: bool,
) -> Option<v1::SendAck> {
    let primary = copies.first()?;
    if first_time {
        after_send(ctx, primary);
    }
    let ack = v1::SendAck {
        client_msg_id,
        msg_id: primary.message.msg_id.clone(),
        seq: primary.seq,
        server_time_ms: primary.message.server_time_ms,
    };
    ctx.fanout.deliver_all(copies).await;
    Some(ack)
}

/// Queues the after-send webhook event of a post stored for the first
/// time (its primary copy).
fn after_send(ctx: &Ctx, primary: &StoredMessage) {
    ctx.webhooks.emit("after_send", || {
        let m = &primary.message;
        let (body, text) = crate::webhook::body_fields(&m.body);
        let to = match m.to.as_ref().and_then(|p| p.target.as_ref()) {
            Some(v1::peer::Target::User(u)) => serde_json::json!({ "user": u }),
            Some(v1::peer::Target::Group(g)) => serde_json::json!({ "group": g }),
            None => serde_json::Value::Null,
        };
        serde_json::json!({
            "msg_id": m.msg_id,
            "from": m.from_user,
            "device": m.from_device,
            "client_msg_id": m.client_msg_id,
            "to": to,
            "kind": m.kind,
            "body": body,
            "text": text,
            "server_time_ms": m.server_time_ms,
            "attachments": m.attachments.len(),
        })
    });
}

/// A refusal of one send, counted and logged.
fn nack(ctx: &Ctx, sender: &Sender<'_>, client_msg_id: String, refusal: Refusal) -> v1::SendNack {
    ctx.metrics.send_refused(refusal.code);
    debug!(user = %sender.user, code = ?refusal.code, message = %refusal.message, "send refused");
    v1::SendNack {
        client_msg_id,
        code: refusal.code as i32,
        retryable: refusal.code.is_retryable(),
        message: refusal.message,
        retry_after_ms: refusal.retry_after_ms,
    }
}
