//! IM features of the client: conversations with unread counts, read
//! state synced across devices, recall, edit, delete-for-me, replies and
//! mentions.
//!
//! Requests go over an rpc stream of the current connection (one stream per
//! request); a request made while disconnected waits for the next
//! connection up to `send_timeout`. Changes made on another device arrive
//! as [`Event`]s in [`IncomingMessage::event`](crate::IncomingMessage::event)
//! through [`Client::next_message`], in inbox order and exactly once, like
//! messages.

use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, rpc_request, rpc_response};

use crate::Error;
use crate::client::{Client, OutgoingMessage, SendReceipt};

/// Who a conversation is with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
pub struct MessageExtras {
    /// The message replied to.
    pub reply_to: Option<Quote>,
    /// Users mentioned (`@user`).
    pub mentions: Vec<String>,
    /// `@all` (in groups, admins only).
    pub mention_all: bool,
}

impl MessageExtras {
    pub(crate) fn apply(&self, send: &mut v1::Send) {
        send.reply_to = self.reply_to.as_ref().map(Quote::to_wire);
        send.mentions = self.mentions.clone();
        send.mention_all = self.mention_all;
    }
}

/// A change made on another device or by another user, delivered in inbox
/// order like a message.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        })
    }
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
pub struct HistoryPage {
    /// In the direction asked.
    pub messages: Vec<crate::IncomingMessage>,
    /// More exist beyond the last.
    pub more: bool,
    /// The server no longer has the messages in the direction asked (older
    /// than its retention): backward, nothing older than the last message
    /// is left; forward, expired messages before the first were skipped.
    /// A boundary, not a gap.
    pub expired: bool,
}

/// One entry of the conversation list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    /// Who the conversation is with.
    pub peer: Peer,
    /// The newest message (body cut to 256 bytes).
    pub last_message: Option<crate::IncomingMessage>,
    /// Inbox seq of the newest message.
    pub last_seq: u64,
    /// Read up to this inbox seq.
    pub read_seq: u64,
    /// Messages from others after `read_seq`, not recalled or deleted.
    pub unread: u32,
    /// Pinned to the top of the list.
    pub pinned: bool,
    /// Muted (no notifications; unread still counts).
    pub muted: bool,
    /// Server time of the last activity.
    pub updated_ms: i64,
    /// Read-diffusion groups: read up to this seq of the group's log.
    pub group_read_seq: u64,
    /// Read-diffusion groups: the newest seq of the group's log.
    pub group_head: u64,
}

impl Conversation {
    fn from_wire(c: v1::Conversation, me: &str) -> Conversation {
        Conversation {
            peer: Peer::from_wire(c.peer.as_ref()),
            last_message: c
                .last_message
                .map(|m| crate::IncomingMessage::from_wire(c.last_seq, m, me, "")),
            last_seq: c.last_seq,
            read_seq: c.read_seq,
            unread: c.unread,
            pinned: c.pinned,
            muted: c.muted,
            updated_ms: c.updated_ms,
            group_read_seq: c.group_read_seq,
            group_head: c.group_head,
        }
    }
}

/// A page of the conversation list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationPage {
    /// Pinned first, then newest activity first.
    pub conversations: Vec<Conversation>,
    /// Pass to the next call; `None` on the last page.
    pub next: Option<Vec<u8>>,
}

impl Client {
    /// Sends a message with a reply quote and mentions.
    pub async fn send_with(
        &self,
        message: OutgoingMessage,
        extras: MessageExtras,
    ) -> Result<SendReceipt, Error> {
        self.send_message_with(message, extras).await
    }

    /// A page of this user's conversation list; start with `after = None`
    /// and pass the previous page's `next`.
    pub async fn conversations(
        &self,
        after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<ConversationPage, Error> {
        let kind = self
            .rpc(rpc_request::Kind::Conversations(v1::ConversationsRequest {
                after: after.unwrap_or_default().into(),
                limit,
            }))
            .await?;
        match kind {
            rpc_response::Kind::Conversations(page) => {
                let me = self.user_id();
                Ok(ConversationPage {
                    conversations: page
                        .conversations
                        .into_iter()
                        .map(|c| Conversation::from_wire(c, &me))
                        .collect(),
                    next: (!page.next.is_empty()).then(|| page.next.to_vec()),
                })
            }
            _ => Err(unexpected()),
        }
    }

    /// Every conversation, page by page.
    pub async fn all_conversations(&self) -> Result<Vec<Conversation>, Error> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.conversations(after, 200).await?;
            out.extend(page.conversations);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Marks `peer`'s conversation read up to inbox seq `up_to_seq`. The
    /// read cursor and unread count change together; the user's other
    /// devices get an [`Event::Read`].
    pub async fn mark_read(&self, peer: Peer, up_to_seq: u64) -> Result<Conversation, Error> {
        self.op(rpc_request::Kind::MarkRead(v1::MarkReadRequest {
            conversation: Some(peer.to_wire()),
            up_to_seq,
        }))
        .await
        .and_then(|(_, c)| c.ok_or_else(unexpected))
    }

    /// Pins or mutes a conversation (`None` leaves a flag as it is).
    pub async fn set_flags(
        &self,
        peer: Peer,
        pinned: Option<bool>,
        muted: Option<bool>,
    ) -> Result<Conversation, Error> {
        self.op(rpc_request::Kind::SetFlags(v1::SetFlagsRequest {
            conversation: Some(peer.to_wire()),
            pinned,
            muted,
        }))
        .await
        .and_then(|(_, c)| c.ok_or_else(unexpected))
    }

    /// Recalls a message this user sent, for everyone; refused with
    /// `RECALL_WINDOW_PASSED` after the server's window. Returns the seq of
    /// the recall event in this user's inbox.
    pub async fn recall(&self, msg_id: String) -> Result<u64, Error> {
        self.op(rpc_request::Kind::Recall(v1::RecallRequest {
            conversation: None,
            msg_id,
        }))
        .await
        .map(|(seq, _)| seq)
    }

    /// Replaces the text of a message this user sent; recipients get an
    /// [`Event::Edited`].
    pub async fn edit(&self, msg_id: String, text: String) -> Result<u64, Error> {
        self.op(rpc_request::Kind::Edit(v1::EditRequest {
            conversation: None,
            msg_id,
            kind: "text".into(),
            body: text.into_bytes().into(),
        }))
        .await
        .map(|(seq, _)| seq)
    }

    /// Schedules a text message to `to` for `deliver_at_ms` (server time,
    /// milliseconds since the Unix epoch). Stored durably by the server and
    /// delivered once at that time, also across server restarts. Returns
    /// the schedule id for [`cancel_scheduled`](Client::cancel_scheduled).
    pub async fn schedule(
        &self,
        to: Peer,
        text: String,
        deliver_at_ms: i64,
    ) -> Result<String, Error> {
        let send = v1::Send {
            client_msg_id: crate::client::new_client_msg_id(),
            to: Some(to.to_wire()),
            body: text.into_bytes().into(),
            kind: "text".into(),
            ..Default::default()
        };
        match self
            .rpc(rpc_request::Kind::Schedule(v1::ScheduleRequest {
                send: Some(send),
                deliver_at_ms,
            }))
            .await?
        {
            rpc_response::Kind::Schedule(s) => Ok(s.schedule_id),
            _ => Err(unexpected()),
        }
    }

    /// Cancels a scheduled message; `NOT_FOUND` once it was delivered.
    pub async fn cancel_scheduled(&self, schedule_id: String) -> Result<(), Error> {
        match self
            .rpc(rpc_request::Kind::CancelSchedule(
                v1::CancelScheduleRequest { schedule_id },
            ))
            .await?
        {
            rpc_response::Kind::Schedule(_) => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// A page of `peer`'s history from `anchor`, forward (older to newer)
    /// or backward; `more` says whether to go on from the last entry's
    /// `seq` (in a read-diffusion group, a seq of the group's log).
    pub async fn history(
        &self,
        peer: Peer,
        anchor: HistoryAnchor,
        forward: bool,
        limit: u32,
    ) -> Result<HistoryPage, Error> {
        let (seq, time_ms) = match anchor {
            HistoryAnchor::End => (0, 0),
            HistoryAnchor::Seq(s) => (s, 0),
            HistoryAnchor::Time(t) => (0, t),
        };
        match self
            .rpc(rpc_request::Kind::History(v1::HistoryRequest {
                conversation: Some(peer.to_wire()),
                seq,
                time_ms,
                forward,
                limit,
            }))
            .await?
        {
            rpc_response::Kind::History(h) => {
                let me = self.user_id();
                let device = self.config().device_id.clone();
                Ok(HistoryPage {
                    messages: h
                        .entries
                        .into_iter()
                        .map(|e| {
                            crate::IncomingMessage::from_wire(
                                e.seq,
                                e.message.unwrap_or_default(),
                                &me,
                                &device,
                            )
                        })
                        .collect(),
                    more: h.more,
                    expired: h.expired,
                })
            }
            _ => Err(unexpected()),
        }
    }

    /// How many members of the group have read a group message this user
    /// sent: `(read, total)`, "read by 12 of 40".
    pub async fn read_count(&self, msg_id: String) -> Result<(u32, u32), Error> {
        match self
            .rpc(rpc_request::Kind::ReadCount(v1::ReadCountRequest {
                msg_id,
            }))
            .await?
        {
            rpc_response::Kind::ReadCount(r) => Ok((r.read, r.total)),
            _ => Err(unexpected()),
        }
    }

    /// Deletes the message at `seq` of this user's inbox for this user only.
    pub async fn delete_for_me(&self, seq: u64) -> Result<u64, Error> {
        self.op(rpc_request::Kind::Delete(v1::DeleteRequest {
            conversation: None,
            seq,
        }))
        .await
        .map(|(seq, _)| seq)
    }

    async fn op(&self, request: rpc_request::Kind) -> Result<(u64, Option<Conversation>), Error> {
        match self.rpc(request).await? {
            rpc_response::Kind::Op(op) => {
                let me = self.user_id();
                Ok((
                    op.event_seq,
                    op.conversation.map(|c| Conversation::from_wire(c, &me)),
                ))
            }
            _ => Err(unexpected()),
        }
    }

    /// One request on its own rpc stream of the current connection,
    /// waiting for a connection up to `send_timeout`.
    pub(crate) async fn rpc(
        &self,
        request: rpc_request::Kind,
    ) -> Result<rpc_response::Kind, Error> {
        let timeout = self.config().send_timeout;
        let conn = tokio::time::timeout(timeout, self.connection())
            .await
            .map_err(|_| Error::Timeout)??;
        let max_frame = self.max_frame();
        let exchange = async {
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| Error::from_connection(&e))?;
            let mut send = FramedSend::new(send, StreamKind::Rpc, max_frame);
            let mut recv = FramedRecv::new(recv, max_frame);
            send.send(&v1::RpcRequest {
                kind: Some(request),
            })
            .await?;
            send.finish();
            recv.next::<v1::RpcResponse>()
                .await?
                .and_then(|r| r.kind)
                .ok_or_else(|| Error::Network("empty rpc response".into()))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(rpc_response::Kind::Error(e))) => Err(Error::from_code(
                ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                e.message,
            )),
            Ok(result) => result,
            Err(_) => Err(Error::Timeout),
        }
    }
}

fn unexpected() -> Error {
    Error::Network("unexpected rpc response".into())
}
