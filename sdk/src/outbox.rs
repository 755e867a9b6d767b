//! Sends waiting for the server's ack, in the order the app made them.
//! Each keeps its `client_msg_id` for every attempt, so the server stores it
//! once however often it is sent.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use qim_proto::v1;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::{Error, SendReceipt};

pub(crate) type Waiter = oneshot::Sender<Result<SendReceipt, Error>>;

struct Pending {
    send: v1::Send,
    waiters: Vec<Waiter>,
    /// Connection generation it was last written on (0: not yet).
    sent_on: u64,
    sent_at: Instant,
    /// After a retryable refusal: not before this.
    not_before: Option<Instant>,
    refusals: u32,
}

#[derive(Default)]
pub(crate) struct Outbox {
    next: u64,
    entries: BTreeMap<u64, Pending>,
    index: HashMap<String, u64>,
}

impl Outbox {
    /// Queues a send (or joins the one with the same id).
    pub(crate) fn add(&mut self, send: v1::Send, waiter: Waiter) {
        if let Some(order) = self.index.get(&send.client_msg_id) {
            if let Some(p) = self.entries.get_mut(order) {
                p.waiters.push(waiter);
                return;
            }
        }
        self.next += 1;
        self.index.insert(send.client_msg_id.clone(), self.next);
        self.entries.insert(
            self.next,
            Pending {
                send,
                waiters: vec![waiter],
                sent_on: 0,
                sent_at: Instant::now(),
                not_before: None,
                refusals: 0,
            },
        );
    }

    /// What to write now on connection `generation`, in order: everything not
    /// yet written on it, and whatever waited `ack_timeout` for its ack.
    pub(crate) fn due(
        &mut self,
        generation: u64,
        now: Instant,
        ack_timeout: Duration,
    ) -> Vec<v1::Send> {
        let mut out = Vec::new();
        for p in self.entries.values_mut() {
            if p.not_before.is_some_and(|t| t > now) {
                continue;
            }
            if p.sent_on != generation || p.sent_at + ack_timeout <= now {
                p.sent_on = generation;
                p.sent_at = now;
                p.not_before = None;
                out.push(p.send.clone());
            }
        }
        out
    }

    /// When something becomes due without a new send.
    pub(crate) fn next_due(&self, ack_timeout: Duration) -> Option<Instant> {
        self.entries
            .values()
            .map(|p| p.not_before.unwrap_or(p.sent_at + ack_timeout))
            .min()
    }

    fn take(&mut self, client_msg_id: &str) -> Option<Pending> {
        let order = self.index.remove(client_msg_id)?;
        self.entries.remove(&order)
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
            for w in p.waiters {
                let _ = w.send(Ok(receipt.clone()));
            }
        }
    }

    /// The server refused: retry later if it may succeed, else fail it.
    pub(crate) fn refused(&mut self, nack: &v1::SendNack, now: Instant) {
        let code = v1::ErrorCode::try_from(nack.code).unwrap_or(v1::ErrorCode::Unspecified);
        if nack.retryable {
            if let Some(order) = self.index.get(&nack.client_msg_id) {
                if let Some(p) = self.entries.get_mut(order) {
                    p.refusals = p.refusals.saturating_add(1);
                    let delay = Duration::from_millis(100 << p.refusals.min(6));
                    p.not_before = Some(now + delay);
                    p.sent_on = 0;
                }
            }
            return;
        }
        if let Some(p) = self.take(&nack.client_msg_id) {
            let error = Error::from_code(code, nack.message.clone());
            for w in p.waiters {
                let _ = w.send(Err(error.clone()));
            }
        }
    }

    /// Gives up on a send (its caller timed out).
    pub(crate) fn abandon(&mut self, client_msg_id: &str) {
        self.take(client_msg_id);
    }

    /// Fails every send (the client closed or can never log in again).
    pub(crate) fn fail_all(&mut self, error: &Error) {
        self.index.clear();
        for (_, p) in std::mem::take(&mut self.entries) {
            for w in p.waiters {
                let _ = w.send(Err(error.clone()));
            }
        }
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
        ob.add(send("a"), w1);
        ob.add(send("b"), w2);
        let now = Instant::now();
        assert_eq!(ids(&ob.due(1, now, t)), ["a", "b"]);
        assert!(ob.due(1, now, t).is_empty(), "written once per connection");
        assert_eq!(
            ids(&ob.due(2, now, t)),
            ["a", "b"],
            "all again on a new connection"
        );
        assert_eq!(ob.next_due(t), Some(now + t));
        assert_eq!(
            ids(&ob.due(2, now + t, t)),
            ["a", "b"],
            "again after the ack timeout"
        );
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
    fn refusals_retry_or_fail() {
        let mut ob = Outbox::default();
        let (w1, _r1) = oneshot::channel();
        let (w2, mut r2) = oneshot::channel();
        ob.add(send("a"), w1);
        ob.add(send("b"), w2);
        let now = Instant::now();
        let t = Duration::from_secs(60);
        ob.due(1, now, t);
        ob.refused(
            &v1::SendNack {
                client_msg_id: "a".into(),
                code: v1::ErrorCode::StoreUnavailable as i32,
                retryable: true,
                message: String::new(),
            },
            now,
        );
        ob.refused(
            &v1::SendNack {
                client_msg_id: "b".into(),
                code: v1::ErrorCode::MessageTooLarge as i32,
                retryable: false,
                message: "big".into(),
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
}
