//! Message operations through the bindings: replies and mentions on send,
//! recall, edit, delete-for-me, conversation flags, scheduled sends, and
//! the device's local store (history and full-text search offline).
//!
//! What these change reaches the other side as entries in the message
//! stream ([`qim_sdk::Event`]): a recall or an edit
//! goes to every recipient, a delete or a flag change to this user's other
//! devices. Refusals keep the wire code (`RECALL_WINDOW_PASSED`,
//! `ALREADY_RECALLED`, `PERMISSION_DENIED`, `NOT_FOUND`).

use qim_sdk::{
    Conversation, HistoryAnchor, HistoryPage, IncomingMessage, MessageExtras, OutgoingMessage,
    Peer, SendReceipt,
};

use crate::{QimClient, QimError};

#[uniffi::export]
impl QimClient {
    /// Sends a message to a user with a reply quote and mentions; returns
    /// when the server stored it.
    pub async fn send_with(
        &self,
        message: OutgoingMessage,
        extras: MessageExtras,
    ) -> Result<SendReceipt, QimError> {
        self.call(move |c| async move { c.send_with(message, extras).await })
            .await
    }

    /// Recalls (deletes for everyone) a message this user sent. Recipients
    /// get `Event.Recalled`; refused with `RECALL_WINDOW_PASSED`
    /// after the server's window. Returns the seq of the recall in this
    /// user's inbox.
    pub async fn recall(&self, msg_id: String) -> Result<u64, QimError> {
        self.call(move |c| async move { c.recall(msg_id).await })
            .await
    }

    /// Replaces the text of a message this user sent. Recipients get
    /// `Event.Edited`, and the message reads as edited in history.
    /// Returns the seq of the edit in this user's inbox.
    pub async fn edit(&self, msg_id: String, text: String) -> Result<u64, QimError> {
        self.call(move |c| async move { c.edit(msg_id, text).await })
            .await
    }

    /// Deletes the message at `seq` of this user's inbox for this user
    /// only; the user's other devices get `Event.Deleted`. Returns
    /// the seq of that event.
    pub async fn delete_for_me(&self, seq: u64) -> Result<u64, QimError> {
        self.call(move |c| async move { c.delete_for_me(seq).await })
            .await
    }

    /// Pins or mutes a conversation (`None` leaves a flag as it is);
    /// returns the conversation. The user's other devices get
    /// `Event.Flags`.
    pub async fn set_flags(
        &self,
        peer: Peer,
        pinned: Option<bool>,
        muted: Option<bool>,
    ) -> Result<Conversation, QimError> {
        self.call(move |c| async move { c.set_flags(peer, pinned, muted).await })
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
        self.call(move |c| async move { c.schedule(to, text, deliver_at_ms).await })
            .await
    }

    /// Cancels a scheduled message; `Rejected` with `NOT_FOUND` once it
    /// was delivered (or cancelled).
    pub async fn cancel_scheduled(&self, schedule_id: String) -> Result<(), QimError> {
        self.call(move |c| async move { c.cancel_scheduled(schedule_id).await })
            .await
    }

    /// A page of a conversation from this device's local store (works
    /// offline; needs `ClientConfig.local_store`): like `history`, over
    /// what this device received.
    pub async fn local_history(
        &self,
        peer: Peer,
        anchor: HistoryAnchor,
        forward: bool,
        limit: u32,
    ) -> Result<HistoryPage, QimError> {
        self.call(move |c| async move { c.local_history(peer, anchor, forward, limit) })
            .await
    }

    /// Received messages holding every word of `query` (full text, whole
    /// words, any case), newest first, from this device's local store
    /// (works offline; needs `ClientConfig.local_store`). Recalled and
    /// deleted messages are never found.
    pub async fn search(
        &self,
        query: String,
        limit: u32,
    ) -> Result<Vec<IncomingMessage>, QimError> {
        self.call(move |c| async move { c.search(&query, limit) })
            .await
    }
}
