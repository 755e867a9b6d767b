//! Message operations through the bindings: replies and mentions on send,
//! recall, edit, delete-for-me, conversation flags, scheduled sends, and
//! the device's local store (history and full-text search offline).
//!
//! What these change reaches the other side as entries in the message
//! stream ([`MessageEvent`](crate::MessageEvent)): a recall or an edit
//! goes to every recipient, a delete or a flag change to this user's other
//! devices. Refusals keep the wire code (`RECALL_WINDOW_PASSED`,
//! `ALREADY_RECALLED`, `PERMISSION_DENIED`, `NOT_FOUND`).

use crate::{
    Conversation, HistoryAnchor, HistoryPage, Message, OutgoingMessage, Peer, QimClient, QimError,
    Quote, SendReceipt, list,
};

/// A reply quote and mentions to send with a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct MessageExtras {
    /// The message replied to (its id, sender, kind and the start of its
    /// body, as received).
    #[uniffi(default = None)]
    pub reply_to: Option<Quote>,
    /// Users mentioned (`@user`): their SDK sets `mentions_me`.
    #[uniffi(default = [])]
    pub mentions: Vec<String>,
    /// `@all` (in groups, admins only: `PERMISSION_DENIED` otherwise).
    #[uniffi(default = false)]
    pub mention_all: bool,
}

impl From<MessageExtras> for qim_sdk::MessageExtras {
    fn from(e: MessageExtras) -> Self {
        qim_sdk::MessageExtras {
            reply_to: e.reply_to.map(Into::into),
            mentions: e.mentions,
            mention_all: e.mention_all,
        }
    }
}

#[uniffi::export]
impl QimClient {
    /// Sends a message to a user with a reply quote and mentions; returns
    /// when the server stored it.
    pub async fn send_with(
        &self,
        message: OutgoingMessage,
        extras: MessageExtras,
    ) -> Result<SendReceipt, QimError> {
        self.call(move |c| async move { c.send_with(message.into(), extras.into()).await })
            .await
    }

    /// Recalls (deletes for everyone) a message this user sent. Recipients
    /// get `MessageEvent.Recalled`; refused with `RECALL_WINDOW_PASSED`
    /// after the server's window. Returns the seq of the recall in this
    /// user's inbox.
    pub async fn recall(&self, msg_id: String) -> Result<u64, QimError> {
        self.call(move |c| async move { c.recall(msg_id).await })
            .await
    }

    /// Replaces the text of a message this user sent. Recipients get
    /// `MessageEvent.Edited`, and the message reads as edited in history.
    /// Returns the seq of the edit in this user's inbox.
    pub async fn edit(&self, msg_id: String, text: String) -> Result<u64, QimError> {
        self.call(move |c| async move { c.edit(msg_id, text).await })
            .await
    }

    /// Deletes the message at `seq` of this user's inbox for this user
    /// only; the user's other devices get `MessageEvent.Deleted`. Returns
    /// the seq of that event.
    pub async fn delete_for_me(&self, seq: u64) -> Result<u64, QimError> {
        self.call(move |c| async move { c.delete_for_me(seq).await })
            .await
    }

    /// Pins or mutes a conversation (`None` leaves a flag as it is);
    /// returns the conversation. The user's other devices get
    /// `MessageEvent.Flags`.
    pub async fn set_flags(
        &self,
        peer: Peer,
        pinned: Option<bool>,
        muted: Option<bool>,
    ) -> Result<Conversation, QimError> {
        self.call(move |c| async move { c.set_flags(peer.into(), pinned, muted).await })
            .await
    }

    /// Schedules a text message to `to` for `deliver_at_ms` (server time,
    /// ms since the Unix epoch). The server stores it and delivers it once
    /// at that time, also across its restarts. Returns the schedule id.
    pub async fn schedule(
        &self,
        to: Peer,
        text: String,
        deliver_at_ms: i64,
    ) -> Result<String, QimError> {
        self.call(move |c| async move { c.schedule(to.into(), text, deliver_at_ms).await })
            .await
    }

    /// Cancels a scheduled message; `Rejected` with `NOT_FOUND` once it
    /// was delivered (or cancelled).
    pub async fn cancel_scheduled(&self, schedule_id: String) -> Result<(), QimError> {
        self.call(move |c| async move { c.cancel_scheduled(schedule_id).await })
            .await
    }

    /// A page of a conversation from this device's local store (works
    /// offline; needs `ClientOptions.local_store`): like `history`, over
    /// what this device received.
    pub async fn local_history(
        &self,
        peer: Peer,
        anchor: HistoryAnchor,
        forward: bool,
        limit: u32,
    ) -> Result<HistoryPage, QimError> {
        self.call(
            move |c| async move { c.local_history(peer.into(), anchor.into(), forward, limit) },
        )
        .await
    }

    /// Received messages holding every word of `query` (full text, whole
    /// words, any case), newest first, from this device's local store
    /// (works offline; needs `ClientOptions.local_store`). Recalled and
    /// deleted messages are never found.
    pub async fn search(&self, query: String, limit: u32) -> Result<Vec<Message>, QimError> {
        self.call(move |c| async move { c.search(&query, limit).map(list::<_, Message>) })
            .await
    }
}
