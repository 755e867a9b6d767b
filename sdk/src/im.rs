//! IM features of the client: conversations with unread counts, read
//! state synced across devices, recall, edit, delete-for-me, replies and
//! mentions.
//!
//! Requests go over an rpc stream of the current connection (one stream per
//! request); a request made while disconnected waits for the next
//! connection up to `send_timeout`. Changes made on another device arrive
//! as [`Event`](crate::Event)s in [`IncomingMessage::event`]
//! through [`Client::next_message`], in inbox order and exactly once, like
//! messages.

use qim_proto::v1::{self, rpc_request, rpc_response};

use crate::Error;
use crate::client::Client;
use crate::message::{
    HistoryAnchor, HistoryPage, IncomingMessage, MessageExtras, OutgoingMessage, Peer, SendReceipt,
    new_client_msg_id,
};
use crate::rpc::unexpected;

/// One entry of the conversation list.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Conversation {
    /// Who the conversation is with.
    pub peer: Peer,
    /// The newest message (body cut to 256 bytes).
    pub last_message: Option<IncomingMessage>,
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
                .map(|m| IncomingMessage::from_wire(c.last_seq, m, me, "")),
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
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
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
            client_msg_id: new_client_msg_id(),
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
                let next_seq = h.entries.last().map_or(0, |e| e.seq);
                Ok(HistoryPage {
                    next_seq,
                    messages: h
                        .entries
                        .into_iter()
                        // Hidden entries (a blocked sender's) hold only a seq.
                        .filter(|e| e.message.is_some())
                        .map(|e| {
                            IncomingMessage::from_wire(
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
}
