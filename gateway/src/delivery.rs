//! The delivery engine of one device session.
//!
//! [`Window`] is the sans-IO core: which deliveries are unacknowledged and
//! when each is due again, with time passed in. `Delivery` is the thin
//! async driver: it fills the window from the user's feed (or the store when
//! catching up), writes `Deliver` frames in seq order on the delivery stream,
//! retransmits what is due with doubling timeouts, and saves the device's
//! cursor as acks arrive. It stops when the session ends.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use qim_proto::io::{FramedSend, SendError};
use qim_proto::v1::{self, rpc_response};
use qim_storage::conversations::ConversationOp;
use qim_storage::{StoreError, StoredMessage};
use thiserror::Error;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::ctx::Ctx;
use crate::deadline::sleep_until_opt;
use crate::queue;
use crate::reply::{Reply, entries_in_frame, page_size};
use crate::route::Feed;

/// A device's cursor is saved at most this often while acks flow, and when
/// its ack stream ends: it is advisory, clients resume from their own seq.
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(1);

/// An unacknowledged delivery.
#[derive(Debug)]
struct Slot {
    message: Arc<StoredMessage>,
    attempt: u32,
    timeout: Duration,
    due: Instant,
}

/// Unacknowledged deliveries of one device, by seq.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    initial: Duration,
    max: Duration,
    slots: BTreeMap<u64, Slot>,
}

impl Window {
    /// A window of `capacity` deliveries, retransmitting after `initial`,
    /// doubling up to `max`.
    pub fn new(capacity: usize, initial: Duration, max: Duration) -> Self {
        Self {
            capacity,
            initial,
            max,
            slots: BTreeMap::new(),
        }
    }

    /// Deliveries that may be sent before acks free room.
    pub fn free(&self) -> usize {
        self.capacity.saturating_sub(self.slots.len())
    }

    /// Deliveries waiting for an ack.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Records a first send at `now`.
    pub fn sent(&mut self, message: Arc<StoredMessage>, now: Instant) {
        self.slots.insert(
            message.seq,
            Slot {
                message,
                attempt: 0,
                timeout: self.initial,
                due: now + self.initial,
            },
        );
    }

    /// Removes everything up to `up_to` and the listed seqs; returns the
    /// removed messages, in seq order.
    pub fn ack(&mut self, up_to: u64, seqs: &[u64]) -> Vec<Arc<StoredMessage>> {
        let rest = self.slots.split_off(&up_to.saturating_add(1));
        let mut acked: Vec<_> = std::mem::replace(&mut self.slots, rest)
            .into_values()
            .map(|s| s.message)
            .collect();
        for seq in seqs {
            if let Some(slot) = self.slots.remove(seq) {
                acked.push(slot.message);
            }
        }
        acked
    }

    /// When the next retransmission is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots.values().map(|s| s.due).min()
    }

    /// The deliveries due at `now`, in seq order, with their new attempt
    /// numbers; each is rescheduled with a doubled timeout.
    pub fn take_due(&mut self, now: Instant) -> Vec<(Arc<StoredMessage>, u32)> {
        let mut out = Vec::new();
        for slot in self.slots.values_mut() {
            if slot.due <= now {
                slot.attempt += 1;
                slot.timeout = (slot.timeout * 2).min(self.max);
                slot.due = now + slot.timeout;
                out.push((Arc::clone(&slot.message), slot.attempt));
            }
        }
        out
    }
}

/// Why a session's delivery stopped.
#[derive(Debug, Error)]
pub(crate) enum DeliveryError {
    #[error("delivery stream: {0}")]
    Stream(#[from] SendError),
    #[error("catch-up read: {0}")]
    Store(#[from] StoreError),
}

/// The delivery of one session, polled by the session's task.
pub(crate) struct Delivery {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) feed: Arc<Feed>,
    pub(crate) user: String,
    pub(crate) device: String,
    pub(crate) stream: FramedSend,
    pub(crate) acks: queue::Receiver<Box<v1::DeliveryAck>>,
    /// The next seq to send for the first time.
    pub(crate) next: u64,
    /// The task writing the last delivery receipts: the next one waits for
    /// it, so a sender gets receipts in the order messages were acked.
    pub(crate) receipts_tail: Option<tokio::task::JoinHandle<()>>,
}

impl Delivery {
    /// Runs until the session's ack channel closes or the stream fails.
    ///
    /// Not an `async fn`: one keeps its arguments twice (as passed and as
    /// its locals), and this future lives as long as the session.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice"
    )]
    pub(crate) fn run(mut self) -> impl Future<Output = Result<(), DeliveryError>> + Send {
        async move {
            let d = &self.ctx.config.delivery;
            let mut window = Window::new(
                d.window as usize,
                Duration::from_millis(d.retransmit_initial_ms),
                Duration::from_millis(d.retransmit_max_ms),
            );
            let feed = Arc::clone(&self.feed);
            let mut cursor = self.next.saturating_sub(1);
            let (mut saved, mut saved_at) = (cursor, Instant::now());
            loop {
                // Enabled before the head is read: a rise after the read
                // wakes it.
                let mut raised = pin!(feed.raised());
                raised.as_mut().enable();
                let newest = feed.head();
                self.fill(&mut window, newest).await?;
                let due = window.next_due();
                tokio::select! {
                    () = &mut raised => {}
                    ack = self.acks.recv() => {
                        let acked = window.ack(ack.up_to_seq, &ack.seqs);
                        self.ctx.metrics.delivery_acks.inc_by(acked.len() as u64);
                        self.receipts(&acked);
                        cursor = cursor.max(ack.up_to_seq.min(self.next.saturating_sub(1)));
                        if cursor > saved && saved_at.elapsed() >= CURSOR_SAVE_EVERY {
                            self.save_cursor(cursor).await;
                            (saved, saved_at) = (cursor, Instant::now());
                        }
                    }
                    () = sleep_until_opt(due) => {
                        let now = Instant::now();
                        for (message, attempt) in window.take_due(now) {
                            self.stream.queue(&deliver(&message, attempt)).map_err(SendError::from)?;
                            self.ctx.metrics.retransmits.inc();
                        }
                        self.stream.flush().await?;
                    }
                }
            }
        }
    }

    /// With `im.delivery_receipts`, delivery receipts for acknowledged
    /// one-to-one messages: per sender,
    /// one receipt naming the newest message acknowledged. Only messages
    /// above the inbox's receipt mark are counted, so the user's other
    /// devices on this node acknowledging the same messages send none
    /// again (a device on another node may: receipts name a position, so
    /// a repeat is harmless). Written by a task of its own, so a slow
    /// store never holds back delivery; each such task waits for the one
    /// before, so receipts keep their order.
    fn receipts(&mut self, acked: &[Arc<StoredMessage>]) {
        if !self.ctx.config.im.delivery_receipts {
            return;
        }
        let Some(newest) = acked.iter().map(|m| m.seq).max() else {
            return;
        };
        let mark = self.feed.receipted_up_to(newest);
        let mut newest_by_sender: std::collections::BTreeMap<&str, &StoredMessage> =
            std::collections::BTreeMap::new();
        for m in acked {
            let direct = matches!(
                m.message.to.as_ref().and_then(|p| p.target.as_ref()),
                Some(v1::peer::Target::User(to)) if *to == self.user
            );
            if m.seq <= mark
                || !direct
                || m.message.event.is_some()
                || m.message.from_user == self.user
            {
                continue;
            }
            let slot = newest_by_sender
                .entry(m.message.from_user.as_str())
                .or_insert(m);
            if m.seq > slot.seq {
                *slot = m;
            }
        }
        if newest_by_sender.is_empty() {
            return;
        }
        let now_ms = qim_proto::now_ms();
        let ops: Vec<ConversationOp> = newest_by_sender
            .into_values()
            .map(|m| ConversationOp::Delivered {
                recipient: self.user.clone(),
                sender: m.message.from_user.clone(),
                msg_id: m.message.msg_id.clone(),
                sent_ms: m.message.server_time_ms,
                now_ms,
            })
            .collect();
        let ctx = Arc::clone(&self.ctx);
        let previous = self.receipts_tail.take();
        self.receipts_tail = Some(tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            for op in ops {
                match ctx.stores.conversations.apply(op).await {
                    Ok(applied) => ctx.fanout.deliver_all(applied.events).await,
                    Err(e) => tracing::warn!(error = %e, "delivery receipt not stored"),
                }
            }
        }));
    }

    async fn save_cursor(&self, cursor: u64) {
        // Cursors are advisory; a failed save is logged, not fatal.
        if let Err(e) = self
            .ctx
            .stores
            .messages
            .save_cursor(&self.user, &self.device, cursor)
            .await
        {
            tracing::warn!(user = %self.user, error = %e, "saving delivery cursor failed");
        }
    }

    /// Sends new messages up to `newest` while the window has room.
    async fn fill(&mut self, window: &mut Window, newest: u64) -> Result<(), DeliveryError> {
        while window.free() > 0 && self.next <= newest {
            let want = window.free().min((newest - self.next + 1) as usize);
            let mut batch = self.feed.recent_from(self.next, want);
            if batch.is_empty() {
                batch = self
                    .ctx
                    .stores
                    .messages
                    .read_inbox(&self.user, self.next - 1, want)
                    .await?
                    .into_iter()
                    .map(Arc::new)
                    .collect();
            }
            if batch.is_empty() {
                // The head is ahead of what is readable; wait for more.
                tracing::warn!(user = %self.user, next = self.next, newest, "inbox head ahead of store");
                break;
            }
            let now = Instant::now();
            for message in batch {
                if message.seq < self.next {
                    continue;
                }
                self.stream
                    .queue(&deliver(&message, 0))
                    .map_err(SendError::from)?;
                self.next = message.seq + 1;
                window.sent(message, now);
                self.ctx.metrics.deliveries.inc();
            }
            self.stream.flush().await?;
        }
        Ok(())
    }
}

fn deliver(message: &StoredMessage, attempt: u32) -> v1::Deliver {
    v1::Deliver {
        seq: message.seq,
        message: Some(message.message.clone()),
        attempt,
        ..Default::default()
    }
}

/// Entries per gap pull when the request names no limit, and at most.
const DEFAULT_SYNC: u32 = 100;
const MAX_SYNC: u32 = 500;

/// Answers a gap pull of `user`'s inbox: the entries after a seq, the
/// head, and up to where missing seqs are settled.
pub(crate) async fn sync(ctx: &Ctx, user: &str, request: v1::SyncRequest) -> Reply {
    let limit = page_size(request.limit, DEFAULT_SYNC, MAX_SYNC);
    let store = &ctx.stores.messages;
    let head = store
        .inbox_head(user)
        .await
        .inspect_err(|e| warn!(user, error = %e, "sync read failed"))?;
    // Before the entries: a seq settled by now that the read does not find
    // will never come.
    let settled_through = store.settled_through(user, head).await.unwrap_or_else(|e| {
        debug!(user, error = %e, "reading the settled seq failed; none settled");
        0
    });
    let entries = store
        .read_inbox(user, request.after_seq, limit)
        .await
        .inspect_err(|e| warn!(user, error = %e, "sync read failed"))?;
    // Fill the response up to the frame limit; the client asks again for
    // the rest.
    let (entries, _) = entries_in_frame(entries, ctx.config.limits.max_frame_bytes);
    Ok(rpc_response::Kind::Sync(v1::SyncResponse {
        entries,
        inbox_head: head,
        settled_through,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            inbox: "bob".into(),
            seq,
            message: Default::default(),
        })
    }

    #[test]
    fn unacked_deliveries_come_back_with_doubling_timeouts_until_acked() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = Window::new(4, s, 4 * s);
        w.sent(msg(1), t0);
        w.sent(msg(2), t0);
        assert_eq!(w.free(), 2);
        assert!(w.take_due(t0 + s / 2).is_empty());
        let due: Vec<_> = w
            .take_due(t0 + s)
            .iter()
            .map(|(m, a)| (m.seq, *a))
            .collect();
        assert_eq!(due, [(1, 1), (2, 1)]);
        assert_eq!(w.next_due(), Some(t0 + 3 * s), "timeout doubled to 2 s");
        let due: Vec<_> = w
            .take_due(t0 + 3 * s)
            .iter()
            .map(|(m, a)| (m.seq, *a))
            .collect();
        assert_eq!(due, [(1, 2), (2, 2)]);
        assert_eq!(w.next_due(), Some(t0 + 7 * s), "capped at 4 s");
        assert_eq!(w.ack(1, &[]).len(), 1);
        let due: Vec<_> = w.take_due(t0 + 7 * s).iter().map(|(m, _)| m.seq).collect();
        assert_eq!(due, [2]);
        assert_eq!(w.ack(0, &[2]).len(), 1);
        assert!(w.is_empty());
        assert_eq!(w.next_due(), None);
        assert!(w.take_due(t0 + 100 * s).is_empty(), "nothing after the ack");
    }

    #[test]
    fn acks_free_room_and_ignore_unknown_seqs() {
        let t0 = Instant::now();
        let mut w = Window::new(3, Duration::from_secs(1), Duration::from_secs(1));
        for seq in 5..8 {
            w.sent(msg(seq), t0);
        }
        assert_eq!(w.free(), 0);
        assert_eq!(w.ack(4, &[100]).len(), 0);
        assert_eq!(w.ack(6, &[]).len(), 2);
        assert_eq!(w.len(), 1);
        assert_eq!(w.ack(u64::MAX, &[]).len(), 1);
        assert_eq!(w.free(), 3);
    }
}
