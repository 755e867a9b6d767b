//! The public types of what is sent and received: messages in and out,
//! the receipt of a stored send, conversations' peers, quotes and
//! mentions, the changes ([`Event`]) an inbox entry can carry, history
//! pages, and the ephemeral [`Signal`]s (typing, presence). Each maps from
//! (and where the app sends it, to) its wire form here, in one place.
//!
//! With the `ffi` feature, each also derives its uniffi record or enum, so
//! the bindings use these types as they are.

use qim_proto::v1;

/// A message received for this user.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct IncomingMessage {
    /// Position in this user's inbox; persist it with the message and pass
    /// it as `resume_from` when the app starts again.
    pub seq: u64,
    /// The server's id of the message.
    pub msg_id: String,
    /// Sender.
    pub from_user: String,
    /// Sender's device.
    pub from_device: String,
    /// The sender's id for the message.
    pub client_msg_id: String,
    /// Application content type.
    pub kind: String,
    /// Body.
    pub body: Vec<u8>,
    /// When the server stored it, milliseconds since the Unix epoch.
    pub server_time_ms: i64,
    /// The conversation it belongs to (the other user, or the group).
    pub conversation: Peer,
    /// Sent by this user (a copy from another of the user's devices).
    pub outgoing: bool,
    /// Set when this entry is a change to earlier state (read on another
    /// device, a recall, an edit), not a chat message.
    pub event: Option<Event>,
    /// The message this one replies to.
    pub reply_to: Option<Quote>,
    /// Users mentioned.
    pub mentions: Vec<String>,
    /// `@all` was used.
    pub mention_all: bool,
    /// This user is mentioned (by name or `@all`): flag it.
    pub mentions_me: bool,
    /// When the sender last edited it; 0 when never.
    pub edited_at_ms: i64,
    /// The sender recalled it; the body is gone.
    pub recalled: bool,
    /// For a read-diffusion group's message: its seq in the group's log
    /// (`seq` is then 0, the message is not in the inbox).
    pub group_seq: u64,
    /// Blobs the message carries; fetch them with
    /// [`Client::download`](crate::Client::download). Not kept by the
    /// local store.
    pub attachments: Vec<Attachment>,
}

impl IncomingMessage {
    pub(crate) fn from_wire(seq: u64, m: v1::Message, me: &str, my_device: &str) -> Self {
        let conversation = Peer::conversation_of(me, &m);
        let outgoing = !me.is_empty() && m.from_user == me;
        let mentions_me =
            !outgoing && (m.mention_all || m.mentions.iter().any(|u| !me.is_empty() && u == me));
        let _ = my_device;
        Self {
            seq,
            msg_id: m.msg_id,
            from_user: m.from_user,
            from_device: m.from_device,
            client_msg_id: m.client_msg_id,
            kind: m.kind,
            body: m.body.to_vec(),
            server_time_ms: m.server_time_ms,
            conversation,
            outgoing,
            event: m.event.and_then(Event::from_wire),
            reply_to: m.reply_to.map(Quote::from_wire),
            mentions: m.mentions,
            mention_all: m.mention_all,
            mentions_me,
            edited_at_ms: m.edited_at_ms,
            recalled: m.recalled,
            group_seq: 0,
            attachments: m
                .attachments
                .into_iter()
                .map(Attachment::from_wire)
                .collect(),
        }
    }

    /// A copy of a message this very device sent: kept out of
    /// `next_message` (the app has it from `send`), but acknowledged.
    pub(crate) fn sent_here(&self, my_device: &str) -> bool {
        self.outgoing && self.event.is_none() && self.from_device == my_device
    }
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct OutgoingMessage {
    /// Recipient user id.
    pub to: String,
    /// Application content type, e.g. `"text"`.
    #[cfg_attr(feature = "ffi", uniffi(default = "text"))]
    pub kind: String,
    /// Body (at most the server's `max_body_bytes`).
    pub body: Vec<u8>,
    /// Idempotency key; a fresh one is made when `None`. Sending again with
    /// the same id never stores the message twice.
    #[cfg_attr(feature = "ffi", uniffi(default = None))]
    pub client_msg_id: Option<String>,
}

/// The server's acknowledgement: the message is durably stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct SendReceipt {
    /// The id the message was sent with.
    pub client_msg_id: String,
    /// The server's id.
    pub msg_id: String,
    /// The message's seq in the recipient's inbox.
    pub seq: u64,
    /// When the server stored it.
    pub server_time_ms: i64,
}

/// A fresh client message id, time-ordered: this device's clock and 80
/// random bits ([`qim_proto::ids::time_ordered_client_msg_id`]). The
/// gateway's store keeps a sender's sends in the order of these ids.
pub fn new_client_msg_id() -> String {
    let now_ms = u64::try_from(qim_proto::now_ms()).unwrap_or(0);
    qim_proto::ids::time_ordered_client_msg_id(now_ms, rand::random::<u128>())
}

/// Who a conversation is with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
pub enum Peer {
    /// A one-to-one conversation with this user.
    User(String),
    /// A group.
    Group(String),
}

impl Default for Peer {
    fn default() -> Self {
        Peer::User(String::new())
    }
}

impl Peer {
    pub(crate) fn to_wire(&self) -> v1::Peer {
        v1::Peer {
            target: Some(match self {
                Peer::User(u) => v1::peer::Target::User(u.clone()),
                Peer::Group(g) => v1::peer::Target::Group(g.clone()),
            }),
        }
    }

    pub(crate) fn from_wire(peer: Option<&v1::Peer>) -> Peer {
        match peer.and_then(|p| p.target.as_ref()) {
            Some(v1::peer::Target::User(u)) => Peer::User(u.clone()),
            Some(v1::peer::Target::Group(g)) => Peer::Group(g.clone()),
            None => Peer::default(),
        }
    }

    /// The conversation a message in `me`'s inbox belongs to.
    pub(crate) fn conversation_of(me: &str, m: &v1::Message) -> Peer {
        match m.to.as_ref().and_then(|p| p.target.as_ref()) {
            Some(v1::peer::Target::Group(g)) => Peer::Group(g.clone()),
            Some(v1::peer::Target::User(to)) if m.from_user == me => Peer::User(to.clone()),
            _ => Peer::User(m.from_user.clone()),
        }
    }
}

/// A quoted message in a reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Quote {
    /// The quoted message's id.
    pub msg_id: String,
    /// Its sender.
    pub from_user: String,
    /// Its content type.
    pub kind: String,
    /// The start of its body (the server keeps 256 bytes).
    pub excerpt: Vec<u8>,
}

impl Quote {
    pub(crate) fn from_wire(q: v1::Quote) -> Quote {
        Quote {
            msg_id: q.msg_id,
            from_user: q.from_user,
            kind: q.kind,
            excerpt: q.excerpt.to_vec(),
        }
    }

    fn to_wire(&self) -> v1::Quote {
        v1::Quote {
            msg_id: self.msg_id.clone(),
            from_user: self.from_user.clone(),
            kind: self.kind.clone(),
            excerpt: self.excerpt.clone().into(),
        }
    }
}

/// Reply and mentions of an outgoing message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct MessageExtras {
    /// The message replied to.
    #[cfg_attr(feature = "ffi", uniffi(default = None))]
    pub reply_to: Option<Quote>,
    /// Users mentioned (`@user`).
    #[cfg_attr(feature = "ffi", uniffi(default = []))]
    pub mentions: Vec<String>,
    /// `@all` (in groups, admins only).
    #[cfg_attr(feature = "ffi", uniffi(default = false))]
    pub mention_all: bool,
    /// Blobs to carry, each uploaded by this user or received by them
    /// ([`Client::upload_file`](crate::Client::upload_file)).
    pub attachments: Vec<Attachment>,
}

impl MessageExtras {
    pub(crate) fn apply(&self, send: &mut v1::Send) {
        send.reply_to = self.reply_to.as_ref().map(Quote::to_wire);
        send.mentions = self.mentions.clone();
        send.mention_all = self.mention_all;
        send.attachments = self.attachments.iter().map(Attachment::to_wire).collect();
    }
}

/// A change made on another device or by another user, delivered in inbox
/// order like a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum Event {
    /// This user read `conversation` up to `read_seq` (on some device).
    Read {
        /// The conversation.
        conversation: Peer,
        /// Read up to this inbox seq.
        read_seq: u64,
        /// Unread messages left.
        unread: u32,
    },
    /// The sender recalled the message at `seq` of this inbox.
    Recalled {
        /// The conversation.
        conversation: Peer,
        /// The recalled message.
        msg_id: String,
        /// Its seq in this inbox (0 when this inbox held no copy).
        seq: u64,
        /// Who recalled it.
        by_user: String,
    },
    /// The sender edited the message at `seq` of this inbox.
    Edited {
        /// The conversation.
        conversation: Peer,
        /// The edited message.
        msg_id: String,
        /// Its seq in this inbox (0 when this inbox held no copy).
        seq: u64,
        /// New content type.
        kind: String,
        /// New body.
        body: Vec<u8>,
        /// When it was edited.
        edited_at_ms: i64,
    },
    /// This user deleted the message at `seq` for themselves.
    Deleted {
        /// The conversation.
        conversation: Peer,
        /// The message.
        msg_id: String,
        /// Its seq in this inbox.
        seq: u64,
    },
    /// `from` asks this user to be friends.
    FriendRequest {
        /// Who asks.
        from: String,
        /// Their message.
        message: String,
    },
    /// `from` answered this user's friend request.
    FriendResponse {
        /// Who answered.
        from: String,
        /// Accepted or rejected.
        accepted: bool,
    },
    /// The other user of a one-to-one chat read this user's messages up
    /// to `msg_id`: every message sent to them at or before `sent_ms`.
    ReadReceipt {
        /// Who read.
        reader: String,
        /// The newest message of this user they read.
        msg_id: String,
        /// When that message was sent.
        sent_ms: i64,
    },
    /// A device of the other user of a one-to-one chat received this
    /// user's messages up to `msg_id`: every message sent to them at or
    /// before `sent_ms`.
    DeliveryReceipt {
        /// Who received.
        recipient: String,
        /// The newest message of this user received.
        msg_id: String,
        /// When that message was sent.
        sent_ms: i64,
    },
    /// This user changed a conversation's flags.
    Flags {
        /// The conversation.
        conversation: Peer,
        /// Pinned now.
        pinned: bool,
        /// Muted now.
        muted: bool,
    },
    /// `by` invited this user to `group`.
    GroupInvitation {
        /// The group.
        group: String,
        /// Its name.
        name: String,
        /// Who invited.
        by: String,
    },
    /// To a group's admins: `user` asks to join `group`.
    JoinRequest {
        /// The group.
        group: String,
        /// Who asks.
        user: String,
        /// Their message.
        message: String,
    },
    /// An admin answered this user's request to join `group`.
    JoinAnswer {
        /// The group.
        group: String,
        /// Admitted.
        accepted: bool,
    },
    /// A scheduled send of this user was refused when it fell due; nothing
    /// was delivered.
    ScheduleRefused {
        /// The schedule.
        schedule_id: String,
        /// Its recipient.
        to: Peer,
        /// The send's id.
        client_msg_id: String,
        /// Why, as a wire error code (e.g. `BLOCKED`).
        code: i32,
        /// Why, in words.
        message: String,
    },
}

impl Event {
    pub(crate) fn from_wire(e: v1::InboxEvent) -> Option<Event> {
        use v1::inbox_event::Kind;
        Some(match e.kind? {
            Kind::Read(r) => Event::Read {
                conversation: Peer::from_wire(r.conversation.as_ref()),
                read_seq: r.read_seq,
                unread: r.unread,
            },
            Kind::Recalled(r) => Event::Recalled {
                conversation: Peer::from_wire(r.conversation.as_ref()),
                msg_id: r.msg_id,
                seq: r.seq,
                by_user: r.by_user,
            },
            Kind::Edited(r) => Event::Edited {
                conversation: Peer::from_wire(r.conversation.as_ref()),
                msg_id: r.msg_id,
                seq: r.seq,
                kind: r.kind,
                body: r.body.to_vec(),
                edited_at_ms: r.edited_at_ms,
            },
            Kind::Deleted(r) => Event::Deleted {
                conversation: Peer::from_wire(r.conversation.as_ref()),
                msg_id: r.msg_id,
                seq: r.seq,
            },
            Kind::FriendRequest(r) => Event::FriendRequest {
                from: r.from,
                message: r.message,
            },
            Kind::FriendResponse(r) => Event::FriendResponse {
                from: r.from,
                accepted: r.accepted,
            },
            Kind::ReadReceipt(r) => Event::ReadReceipt {
                reader: r.reader,
                msg_id: r.msg_id,
                sent_ms: r.sent_ms,
            },
            Kind::DeliveryReceipt(r) => Event::DeliveryReceipt {
                recipient: r.recipient,
                msg_id: r.msg_id,
                sent_ms: r.sent_ms,
            },
            Kind::Flags(r) => Event::Flags {
                conversation: Peer::from_wire(r.conversation.as_ref()),
                pinned: r.pinned,
                muted: r.muted,
            },
            Kind::GroupInvitation(r) => Event::GroupInvitation {
                group: r.group,
                name: r.name,
                by: r.by,
            },
            Kind::JoinRequest(r) => Event::JoinRequest {
                group: r.group,
                user: r.user,
                message: r.message,
            },
            Kind::JoinAnswer(r) => Event::JoinAnswer {
                group: r.group,
                accepted: r.accepted,
            },
            Kind::ScheduleRefused(r) => Event::ScheduleRefused {
                schedule_id: r.schedule_id,
                to: Peer::from_wire(r.to.as_ref()),
                client_msg_id: r.client_msg_id,
                code: r.code,
                message: r.message,
            },
        })
    }
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
pub enum HistoryAnchor {
    /// The newest end (backward) or the oldest (forward).
    End,
    /// After (forward) or before (backward) this seq.
    Seq(u64),
    /// From this server time, milliseconds since the Unix epoch.
    Time(i64),
}

/// A page of a conversation's history.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct HistoryPage {
    /// In the direction asked.
    pub messages: Vec<IncomingMessage>,
    /// More exist beyond the last.
    pub more: bool,
    /// The server no longer has the messages in the direction asked (older
    /// than its retention): backward, nothing older than the last message
    /// is left; forward, expired messages before the first were skipped.
    /// A boundary, not a gap.
    pub expired: bool,
    /// Where the next page starts when `more`: the seq of the last entry
    /// the server sent, also when that entry was hidden (a group message
    /// from a user this user blocked, left out of `messages`). 0 when the
    /// page was empty.
    pub next_seq: u64,
}

/// A user's presence, aggregated over their devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct PresenceStatus {
    /// The user.
    pub user: String,
    /// At least one device online.
    pub online: bool,
    /// When the last session ended (0: never, or online now).
    pub last_seen_ms: i64,
}

impl PresenceStatus {
    pub(crate) fn from_wire(p: v1::PresenceStatus) -> PresenceStatus {
        PresenceStatus {
            user: p.user,
            online: p.online,
            last_seen_ms: p.last_seen_ms,
        }
    }
}

/// Ephemeral news from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum Signal {
    /// Someone is typing (or stopped) in a conversation.
    Typing {
        /// The conversation, as this user sees it.
        conversation: Peer,
        /// Who types.
        from: String,
        /// Started (true) or stopped.
        typing: bool,
    },
    /// A subscribed user's presence changed.
    Presence(PresenceStatus),
}

impl Signal {
    pub(crate) fn from_wire(signal: v1::Signal) -> Option<Signal> {
        Some(match signal.kind? {
            v1::signal::Kind::Typing(t) => Signal::Typing {
                conversation: Peer::from_wire(t.conversation.as_ref()),
                from: t.from_user,
                typing: t.typing,
            },
            v1::signal::Kind::Presence(p) => Signal::Presence(PresenceStatus::from_wire(p)),
        })
    }
}

/// A blob a message carries (an image, a file): its id and what the
/// recipient shows before downloading it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Attachment {
    /// The blob's id: the BLAKE3 hash of its bytes, 64 hex digits.
    pub blob_id: String,
    /// Bytes (set by the server from the blob).
    #[cfg_attr(feature = "ffi", uniffi(default = 0))]
    pub size: u64,
    /// Media type, e.g. `image/png` (set by the server from the upload).
    #[cfg_attr(feature = "ffi", uniffi(default = ""))]
    pub media_type: String,
    /// File name to show.
    #[cfg_attr(feature = "ffi", uniffi(default = ""))]
    pub name: String,
    /// Pixels of an image or video, when known.
    #[cfg_attr(feature = "ffi", uniffi(default = 0))]
    pub width: u32,
    /// Pixels of an image or video, when known.
    #[cfg_attr(feature = "ffi", uniffi(default = 0))]
    pub height: u32,
    /// A small preview image sent inline (at most 8 KiB by default).
    pub thumbnail: Vec<u8>,
    /// A larger preview uploaded as a blob of its own.
    #[cfg_attr(feature = "ffi", uniffi(default = None))]
    pub thumbnail_blob_id: Option<String>,
}

/// Hex of blob id bytes (empty for a malformed id, which the server refuses).
pub(crate) fn blob_hex(bytes: &[u8]) -> String {
    <[u8; 32]>::try_from(bytes)
        .map(|b| blake3::Hash::from_bytes(b).to_hex().to_string())
        .unwrap_or_default()
}

/// Blob id bytes of `hex` (empty when it is not 64 hex digits; the server
/// refuses those).
pub(crate) fn blob_bytes(hex: &str) -> Vec<u8> {
    blake3::Hash::from_hex(hex)
        .map(|h| h.as_bytes().to_vec())
        .unwrap_or_default()
}

impl Attachment {
    pub(crate) fn to_wire(&self) -> v1::Attachment {
        v1::Attachment {
            blob_id: blob_bytes(&self.blob_id).into(),
            size: self.size,
            media_type: self.media_type.clone(),
            name: self.name.clone(),
            width: self.width,
            height: self.height,
            thumbnail: self.thumbnail.clone().into(),
            thumbnail_blob_id: self
                .thumbnail_blob_id
                .as_deref()
                .map(blob_bytes)
                .unwrap_or_default()
                .into(),
        }
    }

    pub(crate) fn from_wire(a: v1::Attachment) -> Attachment {
        Attachment {
            blob_id: blob_hex(&a.blob_id),
            size: a.size,
            media_type: a.media_type,
            name: a.name,
            width: a.width,
            height: a.height,
            thumbnail: a.thumbnail.to_vec(),
            thumbnail_blob_id: (!a.thumbnail_blob_id.is_empty())
                .then(|| blob_hex(&a.thumbnail_blob_id)),
        }
    }
}
