//! Conversations, read state and message operations: the storage contract
//! behind a user's conversation list, unread counts, recall, edit and
//! delete-for-me.
//!
//! # The model
//! Every user has one inbox (per-user seq, see [`MessageStore`](crate::MessageStore)).
//! A chat message is *posted* ([`ConversationStore::post`]): one copy is
//! appended to each inbox that should hold it (the addressee's, the sender's
//! own for multi-device sync, each member's in a write-diffusion group), all
//! copies sharing one `msg_id`. Each copy belongs to one **conversation** of
//! the inbox's owner, derived from the message ([`conversation_of`]): a
//! group's messages belong to the group, a one-to-one message to the other
//! user.
//!
//! A conversation record ([`v1::Conversation`]) holds the newest message,
//! its inbox seq (`last_seq`), the read cursor (`read_seq`), the unread
//! count, and the pinned and muted flags. `unread` is, exactly, the number of
//! copies in the conversation that
//! - came from another user (a user's own messages are never unread),
//! - are chat messages (events are never unread),
//! - were neither recalled nor deleted for the user,
//! - and have a seq above `read_seq`.
//!
//! Changes that other devices of the user must learn (read state, flags,
//! recall, edit, delete) are appended to the affected inboxes as *events*
//! (`v1::Message.event`): they take a seq like a message and flow through the
//! same delivery guarantee (ordered, exactly once per device, also to devices
//! that were offline).
//!
//! # Contract (every backend)
//! - **Atomicity.** Each call below is one atomic, durable write: a post's
//!   copies, their idempotency key, the `msg_id` index and the conversation
//!   records they change; a `mark_read`'s cursor, unread count and event; a
//!   recall's rewritten copies, unread decrements and events. After a crash
//!   either all of it is visible or none. A CQL backend gets this with a
//!   logged batch per inbox partition plus a per-user lightweight
//!   transaction on the conversation row (or by serialising writes per user
//!   on the owning node), and must never expose a seq before it is durable.
//! - **Durable before visible.** As for `append`: a call returns only after
//!   everything it wrote is durable; no reader sees a seq a crash could take
//!   back.
//! - **Idempotency.** `(sender, client_msg_id)` identifies a post; posting it
//!   again returns the original copies with `duplicate = true` and writes
//!   nothing. The key is shared with `MessageStore::append`. The key's
//!   record keeps the post's [digest](Post::digest) (recipient and body):
//!   posting the key again with another recipient or body is refused with
//!   [`OpError::Conflict`] and writes nothing.
//! - **Seqs.** Copies and events take seqs from the same per-inbox counter as
//!   `append`, strictly increasing, never reused.
//! - **Ordering of the list.** Pinned conversations first, then by
//!   `last_seq` descending (newest activity first); events do not move a
//!   conversation.
//! - **Read cursors never move backwards**; `mark_read` below the cursor
//!   changes nothing and appends no event.

use async_trait::async_trait;
use bytes::Bytes;
use qim_proto::v1;

/// Also at [`crate::OpError`], where it is defined; kept here for callers
/// that name it by this path.
pub use crate::error::OpError;
use crate::{StoreError, StoredMessage};

/// Bytes of a body kept in a conversation's `last_message` and in a quote.
pub const PREVIEW_BYTES: usize = 256;

/// A chat message to post: one logical message, one copy per inbox.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Post {
    /// Sending user; with `client_msg_id`, the idempotency key.
    pub sender: String,
    /// Sending device.
    pub sender_device: String,
    /// The sender's id for the message.
    pub client_msg_id: String,
    /// The addressee as the sender wrote it.
    pub to: v1::Peer,
    /// Application content type.
    pub kind: String,
    /// Opaque body.
    pub body: Bytes,
    /// Server receive time, milliseconds since the Unix epoch.
    pub server_time_ms: i64,
    /// The message replied to, as quoted by the sender.
    pub reply_to: Option<v1::Quote>,
    /// Mentioned users.
    pub mentions: Vec<String>,
    /// `@all`.
    pub mention_all: bool,
    /// Blobs the message carries, checked by the gateway (sender may share
    /// each; size and type from the blob's record).
    pub attachments: Vec<v1::Attachment>,
    /// Inboxes that get a copy, without repeats; the first is the primary
    /// copy, whose seq the sender's ack carries.
    pub inboxes: Vec<String>,
    /// The sender vouches that no earlier attempt of this post exists (see
    /// `Send.first_attempt`): a store may skip looking for one before it
    /// takes seqs. Wrong, it costs only seqs never written; the result is
    /// the same.
    pub first_attempt: bool,
}

/// Bytes of a post's [digest](Post::digest).
pub const DIGEST_BYTES: usize = 16;

/// The digest of a message's recipient and body ([`Post::digest`]).
pub fn digest(to: &v1::Peer, body: &[u8]) -> [u8; DIGEST_BYTES] {
    use prost::Message as _;
    let mut input = to.encode_length_delimited_to_vec();
    input.extend_from_slice(body);
    xxhash_rust::xxh3::xxh3_128(&input).to_be_bytes()
}

impl Post {
    /// What the idempotency record of a post remembers of it: a digest of
    /// its recipient and body (xxh3-128; stable across versions, as it is
    /// stored). A resend of the key with another digest is a conflict
    /// ([`OpError::Conflict`]); a record stored without one (by an older
    /// version) is taken as the same message.
    pub fn digest(&self) -> [u8; DIGEST_BYTES] {
        digest(&self.to, &self.body)
    }

    /// The wire message every copy carries (without seq).
    pub fn to_message(&self, msg_id: String) -> v1::Message {
        v1::Message {
            msg_id,
            from_user: self.sender.clone(),
            from_device: self.sender_device.clone(),
            client_msg_id: self.client_msg_id.clone(),
            to: Some(self.to.clone()),
            kind: self.kind.clone(),
            body: self.body.clone(),
            server_time_ms: self.server_time_ms,
            event: None,
            reply_to: self.reply_to.clone(),
            mentions: self.mentions.clone(),
            mention_all: self.mention_all,
            edited_at_ms: 0,
            recalled: false,
            attachments: self.attachments.clone(),
        }
    }
}

/// The outcome of one post.
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    /// Every copy, the primary first (for a duplicate: the copies stored
    /// the first time).
    pub copies: Vec<StoredMessage>,
    /// True when `(sender, client_msg_id)` was already stored.
    pub duplicate: bool,
}

/// One page of a conversation list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConversationPage {
    /// Conversations in list order.
    pub conversations: Vec<v1::Conversation>,
    /// Where the next page starts; empty on the last page.
    pub next: Vec<u8>,
}

/// A change to a conversation or a message, made by `user`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConversationOp {
    /// Moves the read cursor up to `up_to_seq` (clamped to the
    /// conversation's `last_seq`) and recounts unread; appends a
    /// `ReadState` event to the user's inbox when the cursor moved, and in a
    /// one-to-one chat a `ReadReceipt` to the other user's inbox (same
    /// write).
    MarkRead {
        /// The reader.
        user: String,
        /// The conversation.
        conversation: v1::Peer,
        /// Inbox seq read up to.
        up_to_seq: u64,
        /// Now, milliseconds since the Unix epoch.
        now_ms: i64,
    },
    /// A device of `recipient` acknowledged `msg_id` from `sender` (a
    /// one-to-one message): appends a `DeliveryReceipt` to the sender's
    /// inbox, once per `(recipient, msg_id)`: the same message reaching
    /// another device of the recipient (on any node) appends nothing.
    Delivered {
        /// Whose device received it.
        recipient: String,
        /// Who sent it; gets the receipt.
        sender: String,
        /// The newest message of `sender` acknowledged.
        msg_id: String,
        /// When it was sent.
        sent_ms: i64,
        /// Now, milliseconds since the Unix epoch.
        now_ms: i64,
    },
    /// Sets flags; appends a `ConversationFlags` event when one changed.
    SetFlags {
        /// The owner of the list.
        user: String,
        /// The conversation.
        conversation: v1::Peer,
        /// New pinned flag, if set.
        pinned: Option<bool>,
        /// New muted flag, if set.
        muted: Option<bool>,
        /// Now.
        now_ms: i64,
    },
    /// Recalls a message `user` sent, in every copy: bodies removed,
    /// `recalled` set, unread copies no longer counted, a `MessageRecalled`
    /// event in every inbox that held a copy and in the sender's.
    Recall {
        /// The sender.
        user: String,
        /// The message.
        msg_id: String,
        /// Now.
        now_ms: i64,
        /// Recalls later than this after the message are refused.
        window_ms: i64,
    },
    /// Replaces the body of a message `user` sent, in every copy, with a
    /// `MessageEdited` event in every inbox that held a copy and in the
    /// sender's.
    Edit {
        /// The sender.
        user: String,
        /// The message.
        msg_id: String,
        /// New content type.
        kind: String,
        /// New body.
        body: Bytes,
        /// Now.
        now_ms: i64,
    },
    /// Deletes the message at `seq` of `user`'s inbox for `user` only, with
    /// a `MessageDeleted` event for the user's other devices.
    Delete {
        /// The owner of the inbox.
        user: String,
        /// The message's seq in the inbox.
        seq: u64,
        /// Now.
        now_ms: i64,
    },
}

/// Where a history page starts (exclusive for a seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryAnchor {
    /// The newest (backward) or oldest (forward) end.
    End,
    /// After (forward) or before (backward) this seq.
    Seq(u64),
    /// At or after (forward) / at or before (backward) this server time.
    Time(i64),
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryPage {
    /// Entries in the direction asked.
    pub entries: Vec<StoredMessage>,
    /// More exist beyond the last entry.
    pub more: bool,
    /// Messages in the direction asked are older than the retention and
    /// no longer readable (see [`HistoryPage`] in the wire protocol): a
    /// boundary, not a gap.
    pub expired: bool,
}

/// What an operation changed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    /// Events appended (to publish to their inboxes' devices).
    pub events: Vec<StoredMessage>,
    /// Stored copies rewritten in place (recall, edit, delete-for-me), so
    /// caches of recent messages can be refreshed.
    pub rewritten: Vec<StoredMessage>,
    /// Seq of the event in the requester's own inbox; 0 when none.
    pub event_seq: u64,
    /// The requester's conversation after the operation, when it has one.
    pub conversation: Option<v1::Conversation>,
}

/// Conversations, read state and message operations (see the module docs
/// for the contract every backend keeps).
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Posts a batch in order; one result per input once all are durable.
    /// Each copy's conversation record is updated in the same write.
    ///
    /// A post to a group with no `inboxes` is resolved against the group in
    /// the same write (so membership changes and mode switches are
    /// serialised with it): refused with [`OpError::NotAMember`],
    /// [`OpError::Muted`], [`OpError::NotAllowed`] (`@all` by a member) or
    /// [`OpError::Dissolved`]; otherwise copied to every member's inbox (the
    /// sender's first) while the group is in write diffusion, or appended
    /// once to the group's log (inbox [`group_log`]) in read diffusion.
    async fn post(&self, batch: Vec<Post>) -> Result<Vec<Result<Posted, OpError>>, StoreError>;

    /// A page of `user`'s conversation list after `after` (empty: from the
    /// start), at most `limit` entries.
    async fn conversations(
        &self,
        user: &str,
        after: &[u8],
        limit: usize,
    ) -> Result<ConversationPage, StoreError>;

    /// One conversation of `user`, if it exists.
    async fn conversation(
        &self,
        user: &str,
        peer: &v1::Peer,
    ) -> Result<Option<v1::Conversation>, StoreError>;

    /// Applies one operation atomically.
    async fn apply(&self, op: ConversationOp) -> Result<Applied, OpError>;

    /// How many of the recipients of `msg_id` (sent by `user` to a group)
    /// have read it, from their read cursors: `(read, total)`.
    async fn read_count(&self, user: &str, msg_id: &str) -> Result<(u32, u32), OpError>;

    /// A page of `user`'s history with `peer` (see [`HistoryAnchor`]), at
    /// most `limit` chat messages (events and deleted entries left out),
    /// in the direction asked. For a read-diffusion group, the group log
    /// after the member joined; otherwise the user's inbox copies.
    async fn history(
        &self,
        user: &str,
        peer: &v1::Peer,
        anchor: HistoryAnchor,
        forward: bool,
        limit: usize,
    ) -> Result<HistoryPage, OpError>;
}

/// The conversation a copy in `owner`'s inbox belongs to: the group for a
/// group message, otherwise the other user (the addressee for the sender's
/// own copy).
pub fn conversation_of(owner: &str, message: &v1::Message) -> v1::Peer {
    match message.to.as_ref().and_then(|p| p.target.as_ref()) {
        Some(v1::peer::Target::Group(g)) => group(g),
        Some(v1::peer::Target::User(to)) if message.from_user == owner => user(to),
        _ => user(&message.from_user),
    }
}

/// A user peer.
pub fn user(id: &str) -> v1::Peer {
    v1::Peer {
        target: Some(v1::peer::Target::User(id.to_owned())),
    }
}

/// The inbox name of a group's log in read diffusion: `#` and the group
/// id (user ids never contain `#`).
pub fn group_log(group: &str) -> String {
    format!("#{group}")
}

/// A group peer.
pub fn group(id: &str) -> v1::Peer {
    v1::Peer {
        target: Some(v1::peer::Target::Group(id.to_owned())),
    }
}

/// A stable string key for a peer: `u:<id>` or `g:<id>`; `None` for an
/// empty peer.
pub fn peer_key(peer: &v1::Peer) -> Option<String> {
    match peer.target.as_ref()? {
        v1::peer::Target::User(u) => Some(format!("u:{u}")),
        v1::peer::Target::Group(g) => Some(format!("g:{g}")),
    }
}

/// `message` with its body cut to [`PREVIEW_BYTES`] (for `last_message`).
pub fn preview(message: &v1::Message) -> v1::Message {
    let mut m = message.clone();
    if m.body.len() > PREVIEW_BYTES {
        m.body = m.body.slice(..PREVIEW_BYTES);
    }
    m
}

/// Whether a copy in `owner`'s inbox counts as unread above the read
/// cursor: a chat message from someone else, not recalled.
pub(crate) fn counts_as_unread(owner: &str, message: &v1::Message) -> bool {
    message.event.is_none() && !message.recalled && message.from_user != owner
}

/// An event message (`v1::Message.event`) from `from_user`, without seq.
pub(crate) fn event_message(
    from_user: &str,
    event: v1::inbox_event::Kind,
    now_ms: i64,
) -> v1::Message {
    v1::Message {
        msg_id: crate::model::new_msg_id(now_ms),
        from_user: from_user.to_owned(),
        server_time_ms: now_ms,
        event: Some(v1::InboxEvent { kind: Some(event) }),
        ..Default::default()
    }
}

/// The event a delivery receipt appends to the sender's inbox.
pub(crate) fn delivery_receipt(
    recipient: &str,
    msg_id: String,
    sent_ms: i64,
) -> v1::inbox_event::Kind {
    v1::inbox_event::Kind::DeliveryReceipt(v1::DeliveryReceipt {
        recipient: recipient.to_owned(),
        msg_id,
        sent_ms,
    })
}

impl Applied {
    /// An outcome that only appended `events`.
    pub(crate) fn appended(events: Vec<StoredMessage>) -> Self {
        Applied {
            events,
            ..Applied::default()
        }
    }
}

/// How recall and edit change every copy of a message.
pub(crate) enum Rewrite {
    /// Delete for everyone.
    Recall,
    /// New content.
    Edit {
        /// New content type.
        kind: String,
        /// New body.
        body: Bytes,
    },
}

impl Rewrite {
    /// The sender, message and time of a `Recall` or `Edit` op.
    pub(crate) fn target(op: &ConversationOp) -> Result<(&str, &str, i64), OpError> {
        match op {
            ConversationOp::Recall {
                user,
                msg_id,
                now_ms,
                ..
            }
            | ConversationOp::Edit {
                user,
                msg_id,
                now_ms,
                ..
            } => Ok((user.as_str(), msg_id.as_str(), *now_ms)),
            _ => Err(OpError::NotFound),
        }
    }

    /// The rewrite a `Recall` or `Edit` op asks for, after checking it
    /// against the original (`None` for other ops).
    pub(crate) fn checked(op: &ConversationOp, original: &v1::Message) -> Result<Self, OpError> {
        if original.recalled {
            return Err(OpError::Recalled);
        }
        match op {
            ConversationOp::Recall {
                now_ms, window_ms, ..
            } => {
                if now_ms.saturating_sub(original.server_time_ms) > *window_ms {
                    return Err(OpError::WindowPassed);
                }
                Ok(Rewrite::Recall)
            }
            ConversationOp::Edit { kind, body, .. } => Ok(Rewrite::Edit {
                kind: kind.clone(),
                body: body.clone(),
            }),
            _ => Err(OpError::NotFound),
        }
    }

    /// Rewrites one stored copy in place.
    pub(crate) fn apply(&self, message: &mut v1::Message, now_ms: i64) {
        match self {
            Rewrite::Recall => {
                message.recalled = true;
                message.body = Bytes::new();
                message.mentions.clear();
                message.mention_all = false;
                message.reply_to = None;
                message.attachments.clear();
            }
            Rewrite::Edit { kind, body } => {
                message.kind = kind.clone();
                message.body = body.clone();
                message.edited_at_ms = now_ms;
            }
        }
    }

    /// The event telling the owner of `copy` (in `conversation`).
    pub(crate) fn event(
        &self,
        conversation: v1::Peer,
        copy: &StoredMessage,
    ) -> v1::inbox_event::Kind {
        match self {
            Rewrite::Recall => v1::inbox_event::Kind::Recalled(v1::MessageRecalled {
                conversation: Some(conversation),
                msg_id: copy.message.msg_id.clone(),
                seq: copy.seq,
                by_user: copy.message.from_user.clone(),
            }),
            Rewrite::Edit { kind, body } => v1::inbox_event::Kind::Edited(v1::MessageEdited {
                conversation: Some(conversation),
                msg_id: copy.message.msg_id.clone(),
                seq: copy.seq,
                kind: kind.clone(),
                body: body.clone(),
                edited_at_ms: copy.message.edited_at_ms,
            }),
        }
    }

    /// The event for a sender who holds no copy (their other devices still
    /// learn; seq 0: not in their inbox), from the events already made.
    pub(crate) fn sender_event(
        &self,
        user: &str,
        msg_id: &str,
        events: &[StoredMessage],
    ) -> v1::inbox_event::Kind {
        let to = first_to(events);
        let placeholder = StoredMessage {
            inbox: user.to_owned(),
            seq: 0,
            message: v1::Message {
                msg_id: msg_id.to_owned(),
                from_user: user.to_owned(),
                to: to.clone(),
                ..Default::default()
            },
        };
        self.event(to.unwrap_or_default(), &placeholder)
    }
}

/// The sender's conversation for the first rewrite event: the group, or in
/// a one-to-one chat the recipient holding the copy.
fn first_to(events: &[StoredMessage]) -> Option<v1::Peer> {
    let first = events.first()?;
    let conversation = match first.message.event.as_ref()?.kind.as_ref()? {
        v1::inbox_event::Kind::Recalled(r) => r.conversation.as_ref(),
        v1::inbox_event::Kind::Edited(e) => e.conversation.as_ref(),
        _ => None,
    };
    match conversation?.target.as_ref()? {
        v1::peer::Target::Group(g) => Some(group(g)),
        v1::peer::Target::User(_) => Some(user(&first.inbox)),
    }
}

/// Delete-for-me: the tombstone that replaces the copy at `seq` (so the
/// inbox keeps no gap) and the event for the owner's other devices.
pub(crate) fn tombstone(
    message: &v1::Message,
    conversation: v1::Peer,
    seq: u64,
) -> (v1::Message, v1::MessageDeleted) {
    let deleted = v1::MessageDeleted {
        conversation: Some(conversation),
        msg_id: message.msg_id.clone(),
        seq,
    };
    let stone = v1::Message {
        msg_id: message.msg_id.clone(),
        from_user: message.from_user.clone(),
        to: message.to.clone(),
        server_time_ms: message.server_time_ms,
        event: Some(v1::InboxEvent {
            kind: Some(v1::inbox_event::Kind::Deleted(deleted.clone())),
        }),
        ..Default::default()
    };
    (stone, deleted)
}

/// The seq range `[lo, hi]` a history page may come from, given the
/// anchor and the first seq readable.
pub(crate) fn seq_bounds(anchor: HistoryAnchor, forward: bool, first: u64) -> Option<(u64, u64)> {
    match anchor {
        HistoryAnchor::Seq(s) if forward => Some((s.saturating_add(1).max(first), u64::MAX)),
        HistoryAnchor::Seq(s) => (s > first).then(|| (first, s - 1)),
        HistoryAnchor::End | HistoryAnchor::Time(_) => Some((first, u64::MAX)),
    }
}

/// Whether a history walk goes on after [`history_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Look at the next entry.
    Next,
    /// The page is complete.
    Done,
}

/// Adds one entry, met in the direction asked, to a history page: events
/// are left out, entries older than `cutoff_ms` mark the page expired (and
/// end a backward walk), a time anchor skips entries on its wrong side, and
/// one entry beyond `limit` sets `more`.
pub(crate) fn history_step(
    page: &mut HistoryPage,
    m: StoredMessage,
    forward: bool,
    anchor: HistoryAnchor,
    limit: usize,
    cutoff_ms: i64,
) -> Walk {
    if m.message.event.is_some() {
        return Walk::Next;
    }
    if m.message.server_time_ms < cutoff_ms {
        // Past the retention: backward, everything older is too.
        page.expired = true;
        return if forward { Walk::Next } else { Walk::Done };
    }
    if let HistoryAnchor::Time(t) = anchor {
        let t_ms = m.message.server_time_ms;
        if (forward && t_ms < t) || (!forward && t_ms > t) {
            return Walk::Next;
        }
    }
    if page.entries.len() == limit {
        page.more = true;
        return Walk::Done;
    }
    page.entries.push(m);
    Walk::Next
}
