//! Scheduled messages: sends stored durably with a delivery time, posted
//! once when due (also after a restart or a crash), cancellable until then.
//!
//! # Contract (every backend)
//! - [`ScheduleStore::schedule`] returns once the entry is durable.
//! - [`ScheduleStore::fire`] posts the entry and deletes it in one atomic
//!   write, and only if it is still pending: a cancel and a delivery never
//!   both succeed, and a crash between the two leaves either the pending
//!   entry (fired again after restart) or the posted message, never both.
//!   The post uses the send's `(sender, client_msg_id)`, so even a backend
//!   that cannot make the two one write stores the message once.

use async_trait::async_trait;
use qim_proto::v1;

use crate::OpError;
use crate::StoreError;
use crate::conversations::{Post, Posted};

/// Entries returned by one [`ScheduleStore::due`] call at most.
pub const MAX_DUE: usize = 1000;

/// Durable scheduled sends.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Stores a scheduled send (its `id` unique), durably.
    async fn schedule(&self, entry: v1::ScheduledSend) -> Result<(), StoreError>;

    /// Cancels `user`'s pending entry `id`; [`OpError::NotFound`] when there
    /// is none (unknown, someone else's, or already delivered).
    async fn cancel(&self, user: &str, id: &str) -> Result<(), OpError>;

    /// Pending entries due at `now_ms`, earliest first, at most [`MAX_DUE`].
    async fn due(&self, now_ms: i64) -> Result<Vec<v1::ScheduledSend>, StoreError>;

    /// The earliest pending delivery time.
    async fn next_due(&self) -> Result<Option<i64>, StoreError>;

    /// Posts pending entry `id` (server time `now_ms`) and removes it;
    /// `Ok(None)` when it is no longer pending.
    async fn fire(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<Result<Posted, OpError>>, StoreError>;
}

/// The post a scheduled send makes when it fires at `now_ms`.
pub fn to_post(entry: v1::ScheduledSend, now_ms: i64) -> Post {
    let send = entry.send.unwrap_or_default();
    Post {
        sender: entry.sender,
        sender_device: entry.sender_device,
        client_msg_id: send.client_msg_id,
        to: send.to.unwrap_or_default(),
        kind: send.kind,
        body: send.body,
        server_time_ms: now_ms,
        reply_to: send.reply_to,
        mentions: send.mentions,
        mention_all: send.mention_all,
        inboxes: entry.inboxes,
    }
}
