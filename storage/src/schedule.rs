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
//! - Every rule is checked again at fire time: the caller's checks decide a
//!   [`Verdict`], and the post itself still checks group membership and
//!   mutes. A refused entry posts nothing: it is removed and a
//!   `ScheduleRefused` event is appended to the sender's inbox in the same
//!   write (the cluster store: the event before the entry is removed, so a
//!   crash in between may tell the sender twice, never not at all).
//! - A user has at most `max_pending` entries waiting
//!   ([`OpError::QuotaExceeded`] at schedule time); an index of entries by
//!   owner counts them.

use async_trait::async_trait;
use qim_proto::v1;

use crate::OpError;
use crate::StoreError;
use crate::StoredMessage;
use crate::conversations::{Post, Posted};

/// Entries returned by one [`ScheduleStore::due`] call at most.
pub const MAX_DUE: usize = 1000;

/// Durable scheduled sends.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Stores a scheduled send (its `id` unique), durably, unless its
    /// sender has `max_pending` entries waiting already.
    async fn schedule(&self, entry: v1::ScheduledSend, max_pending: usize) -> Result<(), OpError>;

    /// Cancels `user`'s pending entry `id`; [`OpError::NotFound`] when there
    /// is none (unknown, someone else's, or already delivered).
    async fn cancel(&self, user: &str, id: &str) -> Result<(), OpError>;

    /// Pending entries due at `now_ms`, earliest first, at most [`MAX_DUE`].
    async fn due(&self, now_ms: i64) -> Result<Vec<v1::ScheduledSend>, StoreError>;

    /// The earliest pending delivery time.
    async fn next_due(&self) -> Result<Option<i64>, StoreError>;

    /// How many entries `user` has waiting, counted up to `limit`.
    async fn pending(&self, user: &str, limit: usize) -> Result<usize, StoreError>;

    /// Posts pending entry `id` (server time `now_ms`), or refuses it as
    /// `verdict` says, and removes it; `Ok(None)` when it is no longer
    /// pending.
    async fn fire(
        &self,
        id: &str,
        now_ms: i64,
        verdict: Verdict,
    ) -> Result<Option<Fired>, StoreError>;
}

/// Maps a post the store refused to the code and message its sender is
/// told (the caller's one mapping of refusals to wire codes).
pub type Explain = fn(&OpError) -> (v1::ErrorCode, String);

/// What the caller's checks at fire time decided about a due entry.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Post it. The post still checks group membership and mutes; when it
    /// is refused, `Explain` says what the sender is told.
    Post(Explain),
    /// Refused by the caller's checks (a block, the direct policy, the
    /// message checks): post nothing and tell the sender.
    Refuse {
        /// Why, as the sender sees it.
        code: v1::ErrorCode,
        /// For people.
        message: String,
    },
}

/// What firing a due entry did.
#[derive(Debug, Clone, PartialEq)]
pub enum Fired {
    /// The message was posted.
    Posted(Posted),
    /// Nothing was posted; this `ScheduleRefused` event was appended to the
    /// sender's inbox.
    Refused(Box<StoredMessage>),
}

/// The `ScheduleRefused` event for `entry`.
pub(crate) fn refused_event(
    entry: &v1::ScheduledSend,
    code: v1::ErrorCode,
    message: String,
) -> v1::inbox_event::Kind {
    let send = entry.send.as_ref();
    v1::inbox_event::Kind::ScheduleRefused(v1::ScheduleRefused {
        schedule_id: entry.id.clone(),
        to: send.and_then(|s| s.to.clone()),
        client_msg_id: send.map(|s| s.client_msg_id.clone()).unwrap_or_default(),
        code: code as i32,
        message,
    })
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
        // Scheduled sends carry no attachments (the gateway refuses them).
        attachments: Vec::new(),
        inboxes: entry.inboxes,
        // A scheduled send may fire twice (a node dying mid-fire).
        first_attempt: false,
    }
}
