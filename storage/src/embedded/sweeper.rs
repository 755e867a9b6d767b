//! History retention on the embedded store: the setting, the sweep that
//! deletes expired messages from disk (run by the writer, in steps), and the
//! thread that runs it every [`sweep_interval`].

use tokio::sync::{mpsc, oneshot};

use super::EmbeddedStore;
use super::sends::forget_send;
use super::tables::{conv_msg_key, decode_message, unavailable};
use super::writer::{Op, Request, Stage, Swept, Writer};
use crate::conversations::{conversation_of, peer_key};
use crate::{StoreError, StoredMessage};

/// Messages one sweep step deletes at most (one commit).
const SWEEP_STEP: usize = 1000;

/// How often expired messages are deleted: a tenth of the retention,
/// between a second and ten minutes.
pub fn sweep_interval(retention_ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis((retention_ms / 10).clamp(1_000, 600_000))
}

/// The time before which messages are expired under `retention` (ms;
/// `i64::MIN` when kept forever).
fn cutoff_ms(retention: &std::sync::atomic::AtomicU64) -> i64 {
    match retention.load(std::sync::atomic::Ordering::Relaxed) {
        0 => i64::MIN,
        ms => qim_proto::now_ms().saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)),
    }
}

/// The sweeper thread: every `every`, deletes what expired, until the
/// store is closed (it holds only a weak handle, so it never keeps the
/// store open).
fn sweeper(
    ops: mpsc::WeakSender<Op>,
    retention: std::sync::Arc<std::sync::atomic::AtomicU64>,
    every: std::time::Duration,
) {
    loop {
        std::thread::sleep(every);
        let Some(ops) = ops.upgrade() else {
            return;
        };
        let cutoff_ms = cutoff_ms(&retention);
        if cutoff_ms == i64::MIN {
            continue;
        }
        let mut from = None;
        loop {
            let (tx, rx) = oneshot::channel();
            let request = Request::Sweep {
                cutoff_ms,
                from: from.take(),
                reply: tx,
            };
            if ops.blocking_send(Op::Im(Box::new(request))).is_err() {
                return;
            }
            match rx.blocking_recv() {
                Ok(Ok((deleted, next))) => {
                    if deleted > 0 {
                        tracing::debug!(deleted, "expired messages deleted");
                    }
                    match next {
                        Some(next) => from = Some(next),
                        None => break,
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "deleting expired messages failed");
                    break;
                }
                Err(_) => return,
            }
        }
    }
}

impl EmbeddedStore {
    /// Sets how long messages are kept (milliseconds; 0: forever). History
    /// pages stop at older messages and say so
    /// ([`HistoryPage::expired`](crate::conversations::HistoryPage::expired)),
    /// and a background thread deletes them from disk every
    /// [`sweep_interval`] ([`sweep_expired`](Self::sweep_expired)).
    pub fn set_history_retention_ms(&self, ms: u64) {
        self.history_retention_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
        if ms > 0
            && !self
                .sweeper
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let ops = self.ops.downgrade();
            let retention = std::sync::Arc::clone(&self.history_retention_ms);
            let every = sweep_interval(ms);
            let spawned = std::thread::Builder::new()
                .name("qim-store-sweeper".into())
                .spawn(move || sweeper(ops, retention, every));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start the retention sweeper");
            }
        }
    }

    /// Deletes every message older than the retention from disk now (see
    /// the writer's sweep for what is kept); returns how many. Runs in
    /// steps of at most a thousand messages, each one durable commit, so
    /// writes of other callers go on in between.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        let cutoff_ms = self.history_cutoff_ms();
        if cutoff_ms == i64::MIN {
            return Ok(0);
        }
        let mut total = 0;
        let mut from = None;
        loop {
            let (tx, rx) = oneshot::channel();
            self.ops
                .send(Op::Im(Box::new(Request::Sweep {
                    cutoff_ms,
                    from,
                    reply: tx,
                })))
                .await
                .map_err(|_| StoreError::Closed)?;
            let (deleted, next) = rx.await.map_err(|_| StoreError::Closed)??;
            total += deleted;
            match next {
                Some(next) => from = Some(next),
                None => return Ok(total),
            }
        }
    }

    /// Messages stored before this time (ms since the epoch) are expired.
    pub(crate) fn history_cutoff_ms(&self) -> i64 {
        cutoff_ms(&self.history_retention_ms)
    }
}

impl Writer {
    /// Deletes messages stored before `cutoff_ms`, inbox by inbox in key
    /// order from `from`, at most [`SWEEP_STEP`] in one durable commit.
    ///
    /// - An inbox's newest message is never deleted: it holds the inbox's
    ///   head, from which the next seq is counted (deleting it would let a
    ///   seq be issued twice).
    /// - Within an inbox, deletion stops at the first message that is not
    ///   expired (seqs follow time).
    /// - A deleted copy that counted as unread is taken off its
    ///   conversation's unread count; its conversation index entry stays
    ///   (marked read), so history knows something was there and answers
    ///   "older messages expired" rather than leaving a silent gap.
    /// - Its send row goes too: a resend after the retention is a new
    ///   message, and its `msg_id` is no longer found.
    pub(super) fn sweep(
        &mut self,
        cutoff_ms: i64,
        from: Option<Vec<u8>>,
    ) -> Result<Swept, StoreError> {
        use std::ops::Bound;
        let t = self.tables.clone();
        let mut stage = self.new_stage();
        let mut deleted = 0;
        let mut start = from.map_or(Bound::Unbounded, Bound::Included);
        let next = loop {
            let Some(guard) = t.messages.range((start.clone(), Bound::Unbounded)).next() else {
                break None;
            };
            let (first, _) = guard.into_inner().map_err(unavailable)?;
            let len = usize::from(*first.first().unwrap_or(&0));
            if first.len() != 1 + len + 8 {
                return Err(StoreError::Corrupt("bad message key".into()));
            }
            let prefix = first[..1 + len].to_vec();
            let inbox = String::from_utf8_lossy(&prefix[1..]).into_owned();
            let mut end = prefix.clone();
            end.extend_from_slice(&[0xff; 8]);
            let newest = t
                .messages
                .prefix(&prefix)
                .next_back()
                .map(|g| g.into_inner().map(|(k, _)| k))
                .transpose()
                .map_err(unavailable)?;
            let mut resume = None;
            for guard in t.messages.prefix(&prefix) {
                let (key, value) = guard.into_inner().map_err(unavailable)?;
                if Some(&key) == newest.as_ref() {
                    break;
                }
                if deleted == SWEEP_STEP {
                    resume = Some(key.to_vec());
                    break;
                }
                let m = decode_message(&inbox, &key, &value)?;
                if m.message.server_time_ms >= cutoff_ms {
                    break;
                }
                stage.batch.remove(&t.messages, key.to_vec());
                if m.message.event.is_none() && !m.message.client_msg_id.is_empty() {
                    forget_send(&t, &mut stage.batch, &m);
                }
                if !inbox.starts_with('#') {
                    self.expire_copy(&mut stage, &m)?;
                }
                deleted += 1;
            }
            if let Some(resume) = resume {
                break Some(resume);
            }
            start = Bound::Excluded(end);
        };
        if deleted > 0 {
            self.commit_stage(stage)?;
        }
        Ok((deleted, next))
    }

    /// An expired copy leaves its conversation's unread count.
    fn expire_copy(&self, stage: &mut Stage, m: &StoredMessage) -> Result<(), StoreError> {
        let peer = conversation_of(&m.inbox, &m.message);
        let Some(convkey) = peer_key(&peer) else {
            return Ok(());
        };
        let key = conv_msg_key(&m.inbox, &convkey, m.seq);
        let was_unread = self.counts_as_unread(&key)?;
        if !was_unread {
            return Ok(());
        }
        stage.batch.insert(&self.tables.conv_msgs, key, vec![0]);
        if let Some(conv) = self.conv(stage, &m.inbox, &peer, false)? {
            if m.seq > conv.conv.read_seq {
                conv.conv.unread = conv.conv.unread.saturating_sub(1);
            }
        }
        Ok(())
    }
}
