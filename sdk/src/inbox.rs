//! The receive side's sans-IO core: puts deliveries in seq order, drops
//! duplicates, and says which gap to pull when one appears.

use std::collections::BTreeMap;

use crate::IncomingMessage;

/// Deliveries held out of order before a gap is filled; more are dropped
/// (the server sends them again, or the gap pull brings them).
const MAX_HELD: usize = 4096;

/// What [`Inbox::accept`] decided.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Accepted {
    /// Messages now in order, to hand to the app.
    pub(crate) ready: Vec<IncomingMessage>,
    /// Seqs `(after, up_to]` missing before the held ones; pull them.
    pub(crate) gap: Option<(u64, u64)>,
    /// Whether the delivery was a duplicate.
    pub(crate) duplicate: bool,
}

/// Ordering and dedup state of one user's inbox on this device.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// Highest seq handed to the app in order.
    released: u64,
    held: BTreeMap<u64, IncomingMessage>,
}

impl Inbox {
    pub(crate) fn new(released: u64) -> Self {
        Self {
            released,
            held: BTreeMap::new(),
        }
    }

    /// The highest seq released to the app; the resume point.
    pub(crate) fn released(&self) -> u64 {
        self.released
    }

    /// The gap before the first held message, if any: seqs `(after, up_to]`.
    pub(crate) fn gap(&self) -> Option<(u64, u64)> {
        self.held
            .keys()
            .next()
            .map(|&first| (self.released, first - 1))
    }

    /// Gives up on every seq up to `up_to` (the server has confirmed them
    /// empty) and releases what is then in order.
    pub(crate) fn skip_to(&mut self, up_to: u64) -> Vec<IncomingMessage> {
        self.released = self.released.max(up_to);
        self.held = self.held.split_off(&(self.released + 1));
        let mut ready = Vec::new();
        while let Some(next) = self.held.remove(&(self.released + 1)) {
            self.released = next.seq;
            ready.push(next);
        }
        ready
    }

    pub(crate) fn accept(&mut self, message: IncomingMessage) -> Accepted {
        let seq = message.seq;
        if seq <= self.released || self.held.contains_key(&seq) {
            return Accepted {
                duplicate: true,
                ..Accepted::default()
            };
        }
        if self.held.len() < MAX_HELD || seq == self.released + 1 {
            self.held.insert(seq, message);
        }
        let mut ready = Vec::new();
        while let Some(next) = self.held.remove(&(self.released + 1)) {
            self.released = next.seq;
            ready.push(next);
        }
        let gap = self.gap();
        Accepted {
            ready,
            gap,
            duplicate: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64) -> IncomingMessage {
        IncomingMessage {
            seq,
            ..IncomingMessage::default()
        }
    }

    fn seqs(a: &Accepted) -> Vec<u64> {
        a.ready.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn skipping_a_gap_releases_what_follows_it() {
        let mut inbox = Inbox::new(3);
        assert!(inbox.accept(m(6)).ready.is_empty());
        assert!(inbox.accept(m(7)).ready.is_empty());
        assert_eq!(inbox.gap(), Some((3, 5)));
        let ready: Vec<u64> = inbox.skip_to(5).iter().map(|m| m.seq).collect();
        assert_eq!(ready, [6, 7]);
        assert_eq!(inbox.released(), 7);
        assert_eq!(inbox.gap(), None);
        assert!(
            inbox.accept(m(4)).duplicate,
            "a skipped seq that turns up late is dropped"
        );
    }

    #[test]
    fn releases_in_order_once_and_reports_gaps() {
        let mut inbox = Inbox::new(10);
        assert!(inbox.accept(m(9)).duplicate, "already released before");
        let a = inbox.accept(m(11));
        assert_eq!(seqs(&a), [11]);
        assert_eq!(a.gap, None);
        let a = inbox.accept(m(14));
        assert!(a.ready.is_empty());
        assert_eq!(a.gap, Some((11, 13)));
        assert!(inbox.accept(m(14)).duplicate);
        let a = inbox.accept(m(13));
        assert_eq!(a.gap, Some((11, 12)));
        let a = inbox.accept(m(12));
        assert_eq!(seqs(&a), [12, 13, 14]);
        assert_eq!(a.gap, None);
        assert!(inbox.accept(m(12)).duplicate);
        assert_eq!(inbox.released(), 14);
    }
}
