//! Sends waiting for the server's ack, in the order the app made them.
//! Each keeps its `client_msg_id` for every attempt, so the server stores it
//! once however often it is sent.
//!
//! With a data directory, every pending send is also in the
//! [`OutboxStore`] journal: added before the app is told it is queued,
//! marked done on ack or final refusal, and kept (not failed) when the
//! client closes, so the next client on the same directory sends it.
//! Every change of a send's state is published as a [`ClientEvent`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use qim_proto::v1;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tracing::warn;

use crate::events::{ClientEvent, OutboxStatus};
use crate::outbox_store::OutboxStore;
use crate::{Error, SendReceipt};

pub(crate) type Waiter = oneshot::Sender<Result<SendReceipt, Error>>;

/// How long a send refused with `ORDER_HELD` waits at least (its earlier
/// refused send usually sets a longer wait).
const HELD_RETRY_MS: u64 = 100;

struct Pending {
    send: v1::Send,
    /// Callers waiting for the outcome, by waiter id.
    waiters: Vec<(u64, Waiter)>,
    /// When it was last written, on the outbox's current connection.
    sent_at: Option<Instant>,
    /// Refused as retryable: waits for the retry gate.
    refused: bool,
    refusals: u32,
}

/// Sends in order, with what is due kept separately so that finding it costs
/// only what is due, not the whole outbox (a sender may keep thousands in
/// flight).
#[derive(Default)]
pub(crate) struct Outbox {
    next: u64,
    entries: BTreeMap<u64, Pending>,
    index: HashMap<String, u64>,
    /// The connection the bookkeeping below refers to.
    generation: u64,
    /// Not yet written on `generation`, by order.
    unsent: BTreeSet<u64>,
    /// Written on `generation` and not answered yet, by order.
    written: BTreeSet<u64>,
    /// At most this many in `written` (0: no bound): a send beyond it
    /// waits for an answer. Bounds what a lost connection makes the next
    /// one write again, and under load leaves senders a slower ack
    /// rather than a deeper queue on the wire.
    window: usize,
    /// `(due, order)` of written sends in write order, so due times only
    /// grow; entries acked since are skipped when they come up.
    timeouts: VecDeque<(Instant, u64)>,
    /// Orders of sends refused as retryable, waiting for `retry_at`. They
    /// are written again together, in order, and nothing after the first
    /// of them is written before: the server holds a chat stream after a
    /// retryable refusal (`ORDER_HELD`) so that no later send is stored
    /// before the refused one.
    retries: BTreeSet<u64>,
    /// When the refused sends are written again.
    retry_at: Option<Instant>,
    next_waiter: u64,
    /// Sends written again (after an ack timeout or on a new connection).
    resent: u64,
    /// The journal, when the client has a data directory.
    store: Option<OutboxStore>,
    /// Where state changes are published.
    events: Option<broadcast::Sender<ClientEvent>>,
}

impl Outbox {
    /// An outbox publishing to `events`, journaled in `store` if given,
    /// starting with the sends `restored` from it (which nobody waits for).
    pub(crate) fn new(
        store: Option<OutboxStore>,
        restored: Vec<v1::Send>,
        events: broadcast::Sender<ClientEvent>,
    ) -> Self {
        let mut outbox = Outbox {
            store,
            events: Some(events),
            ..Outbox::default()
        };
        for mut send in restored {
            // A previous client may have written it.
            send.first_attempt = false;
            outbox.insert(send, None);
        }
        outbox
    }

    fn publish(&self, client_msg_id: &str, status: OutboxStatus) {
        if let Some(events) = &self.events {
            // No subscriber is fine: nobody is listening.
            let _ = events.send(ClientEvent::Outbox {
                client_msg_id: client_msg_id.to_owned(),
                status,
            });
        }
    }

    /// Queues a send (or joins the one with the same id), saving it in the
    /// journal first; returns the waiter's id for
    /// [`abandon`](Self::abandon), if a waiter was given.
    pub(crate) fn add(&mut self, mut send: v1::Send, waiter: Option<Waiter>) -> Result<u64, Error> {
        if !self.index.contains_key(&send.client_msg_id) {
            // Never written yet: the server may skip looking for an
            // earlier attempt (cleared once written, and on restore).
            send.first_attempt = true;
            if let Some(store) = &mut self.store {
                store
                    .add(&send)
                    .map_err(|e| Error::Storage(e.to_string()))?;
            }
        }
        Ok(self.insert(send, waiter))
    }

    fn insert(&mut self, send: v1::Send, waiter: Option<Waiter>) -> u64 {
        self.next_waiter += 1;
        let id = self.next_waiter;
        if let Some(order) = self.index.get(&send.client_msg_id) {
            if let Some(p) = self.entries.get_mut(order) {
                p.waiters.extend(waiter.map(|w| (id, w)));
                return id;
            }
        }
        self.next += 1;
        self.index.insert(send.client_msg_id.clone(), self.next);
        self.publish(&send.client_msg_id, OutboxStatus::Sending);
        self.entries.insert(
            self.next,
            Pending {
                send,
                waiters: waiter.map(|w| (id, w)).into_iter().collect(),
                sent_at: None,
                refused: false,
                refusals: 0,
            },
        );
        self.unsent.insert(self.next);
        id
    }

    /// Marks a send finished in the journal (compacting now and then).
    fn finished(&mut self, client_msg_id: &str) {
        let Some(store) = &mut self.store else { return };
        if let Err(e) = store.done(client_msg_id) {
            // The send is resent on the next start; the server dedups it.
            warn!(error = %e, "outbox journal: recording a finished send failed");
        }
        let entries = &self.entries;
        if let Err(e) = store.maybe_compact(|| entries.values().map(|p| p.send.clone()).collect()) {
            warn!(error = %e, "outbox journal: compaction failed");
        }
    }

    /// What to write now on connection `generation`, in order: everything not
    /// yet written on it (all of it again on a new connection), and refused
    /// sends once their retry time came; while refused sends wait, nothing
    /// made after the first of them is written. A send is never written
    /// twice on one connection unless refused: one that waits too long for
    /// its ack makes the connection be probed ([`overdue`](Self::overdue)),
    /// and QUIC delivers what a live connection accepted.
    pub(crate) fn due(
        &mut self,
        generation: u64,
        now: Instant,
        ack_timeout: Duration,
    ) -> Vec<v1::Send> {
        if generation != self.generation {
            // A new connection: everything goes again, in order.
            self.generation = generation;
            self.timeouts.clear();
            self.written.clear();
            self.unsent = self
                .entries
                .iter()
                .filter(|(_, p)| !p.refused)
                .map(|(order, _)| *order)
                .collect();
            self.resent += self
                .unsent
                .iter()
                .filter(|o| self.entries.get(o).is_some_and(|p| p.sent_at.is_some()))
                .count() as u64;
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            for order in std::mem::take(&mut self.retries) {
                if let Some(p) = self.entries.get_mut(&order) {
                    p.refused = false;
                    self.unsent.insert(order);
                }
            }
        }
        // Behind a refused send, the rest waits with it.
        let held = match self.retries.first() {
            Some(&first) => self.unsent.split_off(&first),
            None => BTreeSet::new(),
        };
        let mut ready = std::mem::replace(&mut self.unsent, held);
        if self.window > 0 {
            let room = self.window.saturating_sub(self.written.len());
            if let Some(&cut) = ready.iter().nth(room) {
                // Beyond the window: waits, in order, for answers.
                self.unsent.extend(ready.split_off(&cut));
            }
        }
        let mut out = Vec::with_capacity(ready.len());
        for order in ready {
            if let Some(p) = self.entries.get_mut(&order) {
                self.written.insert(order);
                p.sent_at = Some(now);
                self.timeouts.push_back((now + ack_timeout, order));
                out.push(p.send.clone());
                p.send.first_attempt = false;
            }
        }
        // Drop timeouts of sends acked since, so the writer does not wake
        // for them.
        while let Some(&(due, order)) = self.timeouts.front() {
            if self.is_current(order, due, ack_timeout) {
                break;
            }
            self.timeouts.pop_front();
        }
        out
    }

    /// Whether a send written on connection `generation` has waited
    /// `ack_timeout` for its ack by `now`: the connection may be dead, and
    /// it is probed before anything is written on it again.
    pub(crate) fn overdue(&mut self, generation: u64, now: Instant, ack_timeout: Duration) -> bool {
        if generation != self.generation {
            // Not written on this connection yet.
            return false;
        }
        while let Some(&(due, order)) = self.timeouts.front() {
            if self.is_current(order, due, ack_timeout) {
                return due <= now;
            }
            self.timeouts.pop_front();
        }
        false
    }

    /// The connection answered a probe: the sends that waited `ack_timeout`
    /// wait another one on it (their bytes are with the server).
    pub(crate) fn rearm(&mut self, now: Instant, ack_timeout: Duration) {
        while let Some(&(due, order)) = self.timeouts.front() {
            if due > now {
                break;
            }
            self.timeouts.pop_front();
            if self.is_current(order, due, ack_timeout) {
                if let Some(p) = self.entries.get_mut(&order) {
                    p.sent_at = Some(now);
                    self.timeouts.push_back((now + ack_timeout, order));
                }
            }
        }
    }

    /// Whether a timeout entry still stands for the send's last write.
    fn is_current(&self, order: u64, due: Instant, ack_timeout: Duration) -> bool {
        self.entries
            .get(&order)
            .is_some_and(|p| p.sent_at.is_some_and(|at| at + ack_timeout == due))
    }

    /// Sends written more than once so far.
    pub(crate) fn resent(&self) -> u64 {
        self.resent
    }

    /// When something becomes due without a new send.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let timeout = self.timeouts.front().map(|(due, _)| *due);
        timeout.into_iter().chain(self.retry_at).min()
    }

    fn take(&mut self, client_msg_id: &str) -> Option<Pending> {
        let order = self.index.remove(client_msg_id)?;
        self.unsent.remove(&order);
        self.written.remove(&order);
        let p = self.entries.remove(&order)?;
        self.retries.remove(&order);
        if self.retries.is_empty() {
            self.retry_at = None;
        }
        Some(p)
    }

    /// The server acked: resolve every waiter.
    pub(crate) fn acked(&mut self, ack: &v1::SendAck) {
        if let Some(p) = self.take(&ack.client_msg_id) {
            let receipt = SendReceipt {
                client_msg_id: ack.client_msg_id.clone(),
                msg_id: ack.msg_id.clone(),
                seq: ack.seq,
                server_time_ms: ack.server_time_ms,
            };
            self.finished(&ack.client_msg_id);
            self.publish(&ack.client_msg_id, OutboxStatus::Sent(receipt.clone()));
            for (_, w) in p.waiters {
                let _ = w.send(Ok(receipt.clone()));
            }
        }
    }

    /// The server refused: retry later if it may succeed, else fail it.
    pub(crate) fn refused(&mut self, nack: &v1::SendNack, now: Instant) {
        let code = v1::ErrorCode::try_from(nack.code).unwrap_or(v1::ErrorCode::Unspecified);
        if nack.retryable {
            let Some(&order) = self.index.get(&nack.client_msg_id) else {
                return;
            };
            if let Some(p) = self.entries.get_mut(&order) {
                // Held behind an earlier refusal: it goes again right after
                // that one, which sets the wait.
                let backoff = if code == v1::ErrorCode::OrderHeld {
                    HELD_RETRY_MS
                } else {
                    p.refusals = p.refusals.saturating_add(1);
                    100u64 << p.refusals.min(6)
                };
                // The server's hint (`retry_after_ms`, e.g. a rate limit's)
                // when it asks for longer than the backoff.
                let at = now + Duration::from_millis(backoff.max(u64::from(nack.retry_after_ms)));
                self.retry_at = Some(self.retry_at.map_or(at, |gate| gate.max(at)));
                p.refused = true;
                p.sent_at = None;
                self.unsent.remove(&order);
                self.written.remove(&order);
                self.retries.insert(order);
            }
            return;
        }
        if let Some(p) = self.take(&nack.client_msg_id) {
            let error = Error::from_code(code, nack.message.clone());
            self.finished(&nack.client_msg_id);
            self.publish(&nack.client_msg_id, OutboxStatus::Failed(error.clone()));
            for (_, w) in p.waiters {
                let _ = w.send(Err(error.clone()));
            }
        }
    }

    /// One caller stopped waiting; without a journal the send is dropped
    /// (and reported failed with `Timeout`) when nobody waits, unless it was
    /// written already: then the server may store it (or hold later sends
    /// for it), so it stays queued until the server's answer, which is
    /// published. With a journal it stays queued: the app was told it
    /// would be sent.
    pub(crate) fn abandon(&mut self, client_msg_id: &str, waiter: u64) {
        let Some(&order) = self.index.get(client_msg_id) else {
            return;
        };
        let Some(p) = self.entries.get_mut(&order) else {
            return;
        };
        p.waiters.retain(|(id, _)| *id != waiter);
        let written = p.sent_at.is_some() || p.refused;
        if p.waiters.is_empty() && self.store.is_none() && !written {
            self.take(client_msg_id);
            self.publish(client_msg_id, OutboxStatus::Failed(Error::Timeout));
        }
    }

    /// The client stops: every waiter gets `error`. Without a journal the
    /// sends fail; with one they stay on disk for the next client.
    pub(crate) fn fail_all(&mut self, error: &Error) {
        self.index.clear();
        self.unsent.clear();
        self.written.clear();
        self.timeouts.clear();
        self.retries.clear();
        self.retry_at = None;
        let persistent = self.store.is_some();
        for (_, p) in std::mem::take(&mut self.entries) {
            if !persistent {
                self.publish(&p.send.client_msg_id, OutboxStatus::Failed(error.clone()));
            }
            for (_, w) in p.waiters {
                let _ = w.send(Err(error.clone()));
            }
        }
    }

    /// Sends written on the current connection and not answered yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.written.len()
    }

    /// Bounds the sends written and not answered at once (0: no bound).
    pub(crate) fn set_window(&mut self, window: usize) {
        self.window = window;
    }

    /// Whether a send waits for room in the window.
    pub(crate) fn window_full(&self) -> bool {
        self.window > 0 && self.written.len() >= self.window && !self.unsent.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(id: &str) -> v1::Send {
        v1::Send {
            client_msg_id: id.into(),
            ..Default::default()
        }
    }

    fn ids(sends: &[v1::Send]) -> Vec<&str> {
        sends.iter().map(|s| s.client_msg_id.as_str()).collect()
    }

    #[test]
    fn resends_in_order_on_reconnect_and_after_ack_timeout() {
        let t = Duration::from_secs(5);
        let mut ob = Outbox::default();
        let (w1, mut r1) = oneshot::channel();
        let (w2, _r2) = oneshot::channel();
        ob.add(send("a"), Some(w1)).expect("add");
        ob.add(send("b"), Some(w2)).expect("add");
        let now = Instant::now();
        assert_eq!(ids(&ob.due(1, now, t)), ["a", "b"]);
        assert!(ob.due(1, now, t).is_empty(), "written once per connection");
        assert_eq!(
            ids(&ob.due(2, now, t)),
            ["a", "b"],
            "all again on a new connection"
        );
        assert_eq!(ob.next_due(), Some(now + t));
        assert!(!ob.overdue(2, now + t - Duration::from_millis(1), t));
        assert!(ob.overdue(2, now + t, t), "waited the ack timeout");
        assert!(!ob.overdue(3, now + t, t), "not written on connection 3");
        assert!(
            ob.due(2, now + t, t).is_empty(),
            "never twice on one connection"
        );
        // The connection answered a probe: another ack timeout to wait.
        ob.rearm(now + t, t);
        assert!(!ob.overdue(2, now + t, t));
        assert_eq!(ob.next_due(), Some(now + t + t));
        assert!(ob.overdue(2, now + t + t, t));
        ob.acked(&v1::SendAck {
            client_msg_id: "a".into(),
            msg_id: "m".into(),
            seq: 4,
            server_time_ms: 1,
        });
        assert_eq!(r1.try_recv().expect("resolved").expect("ok").seq, 4);
        assert_eq!(ids(&ob.due(3, now + t, t)), ["b"]);
        assert_eq!(ob.len(), 1);
    }

    #[test]
    fn only_a_send_never_written_is_marked_first_attempt() {
        let t = Duration::from_secs(5);
        let (events, _) = broadcast::channel(16);
        let mut restored = send("r");
        restored.first_attempt = true;
        let mut ob = Outbox::new(None, vec![restored], events);
        ob.add(send("a"), None).expect("add");
        let now = Instant::now();
        let first: Vec<(String, bool)> = ob
            .due(1, now, t)
            .into_iter()
            .map(|s| (s.client_msg_id, s.first_attempt))
            .collect();
        assert_eq!(
            first,
            [("r".to_owned(), false), ("a".to_owned(), true)],
            "a restored send may have been written by the previous client"
        );
        assert!(
            ob.due(2, now, t).iter().all(|s| !s.first_attempt),
            "written once, never a first attempt again"
        );
    }

    #[test]
    fn refusals_retry_or_fail() {
        let mut ob = Outbox::default();
        let (w1, _r1) = oneshot::channel();
        let (w2, mut r2) = oneshot::channel();
        ob.add(send("a"), Some(w1)).expect("add");
        ob.add(send("b"), Some(w2)).expect("add");
        let now = Instant::now();
        let t = Duration::from_secs(60);
        ob.due(1, now, t);
        ob.refused(
            &v1::SendNack {
                client_msg_id: "a".into(),
                code: v1::ErrorCode::StoreUnavailable as i32,
                retryable: true,
                message: String::new(),
                retry_after_ms: 0,
            },
            now,
        );
        ob.refused(
            &v1::SendNack {
                client_msg_id: "b".into(),
                code: v1::ErrorCode::MessageTooLarge as i32,
                retryable: false,
                message: "big".into(),
                retry_after_ms: 0,
            },
            now,
        );
        assert!(matches!(
            r2.try_recv().expect("resolved"),
            Err(Error::Rejected {
                code: v1::ErrorCode::MessageTooLarge,
                retryable: false,
                ..
            })
        ));
        assert!(ob.due(1, now, t).is_empty(), "not before the retry delay");
        assert_eq!(ids(&ob.due(1, now + Duration::from_secs(1), t)), ["a"]);
    }

    fn nack(id: &str, code: v1::ErrorCode) -> v1::SendNack {
        v1::SendNack {
            client_msg_id: id.into(),
            code: code as i32,
            retryable: code.is_retryable(),
            message: String::new(),
            retry_after_ms: 0,
        }
    }

    #[test]
    fn refused_sends_go_again_together_in_order_and_nothing_overtakes_them() {
        let t = Duration::from_secs(60);
        let mut ob = Outbox::default();
        for id in ["a", "b", "c"] {
            ob.add(send(id), None).expect("add");
        }
        let now = Instant::now();
        assert_eq!(ids(&ob.due(1, now, t)), ["a", "b", "c"]);
        // a was refused twice before: its wait is the longest.
        ob.refused(&nack("a", v1::ErrorCode::StoreUnavailable), now);
        assert_eq!(ids(&ob.due(1, now + Duration::from_secs(1), t)), ["a"]);
        ob.refused(&nack("a", v1::ErrorCode::StoreUnavailable), now);
        ob.refused(&nack("b", v1::ErrorCode::OrderHeld), now);
        ob.add(send("d"), None).expect("add");
        assert!(
            ob.due(1, now + Duration::from_millis(150), t).is_empty(),
            "b's own wait is over, but it and the new d stay behind a"
        );
        assert_eq!(ob.next_due(), Some(now + Duration::from_millis(400)));
        assert_eq!(
            ids(&ob.due(1, now + Duration::from_millis(400), t)),
            ["a", "b", "d"],
            "in the order made; c is still in flight"
        );
        // A caller giving up on a written send does not drop it: the server
        // may hold later sends for it.
        let (w, _r) = oneshot::channel();
        let waiter = ob.add(send("c"), Some(w)).expect("join");
        ob.abandon("c", waiter);
        assert_eq!(ob.len(), 4);
        assert_eq!(ob.resent(), 0, "retries after a refusal are not resends");
    }

    #[test]
    fn one_caller_giving_up_leaves_the_others_waiting() {
        let mut ob = Outbox::default();
        let (w1, _r1) = oneshot::channel();
        let (w2, mut r2) = oneshot::channel();
        let first = ob.add(send("same"), Some(w1)).expect("add");
        ob.add(send("same"), Some(w2)).expect("add");
        assert_eq!(ob.len(), 1, "one send, two callers");
        ob.abandon("same", first);
        assert_eq!(ob.len(), 1, "the second caller still waits");
        ob.acked(&v1::SendAck {
            client_msg_id: "same".into(),
            msg_id: "m".into(),
            seq: 1,
            server_time_ms: 0,
        });
        assert!(r2.try_recv().expect("resolved").is_ok());
        assert_eq!(ob.len(), 0);
    }

    #[test]
    fn the_window_bounds_what_is_written_and_answers_make_room_in_order() {
        let t = Duration::from_secs(60);
        let mut ob = Outbox::default();
        ob.set_window(2);
        for id in ["a", "b", "c", "d"] {
            ob.add(send(id), None).expect("add");
        }
        let now = Instant::now();
        assert_eq!(ids(&ob.due(1, now, t)), ["a", "b"]);
        assert!(ob.window_full());
        assert!(ob.due(1, now, t).is_empty(), "c waits for an answer");
        ob.acked(&v1::SendAck {
            client_msg_id: "a".into(),
            ..Default::default()
        });
        assert_eq!(ids(&ob.due(1, now, t)), ["c"]);
        // A new connection writes again what was in flight, still bounded.
        assert_eq!(ids(&ob.due(2, now, t)), ["b", "c"]);
        assert_eq!(ob.in_flight(), 2);
        assert_eq!(ob.resent(), 2, "b and c were written before");
        ob.refused(&nack("b", v1::ErrorCode::StoreUnavailable), now);
        assert_eq!(ob.in_flight(), 1, "a refused send is not in flight");
        assert!(
            ob.due(2, now, t).is_empty(),
            "d is made after the refused b: it waits with it"
        );
    }

    #[test]
    fn acked_sends_leave_no_wakeups_behind() {
        let t = Duration::from_secs(5);
        let mut ob = Outbox::default();
        let (w, _r) = oneshot::channel();
        ob.add(send("a"), Some(w)).expect("add");
        let now = Instant::now();
        ob.due(1, now, t);
        ob.acked(&v1::SendAck {
            client_msg_id: "a".into(),
            ..Default::default()
        });
        assert!(ob.due(1, now, t).is_empty());
        assert_eq!(ob.next_due(), None);
        assert_eq!(ob.resent(), 0);
    }
}
