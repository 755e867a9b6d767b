//! The receive side's sans-IO core: puts deliveries in seq order, drops
//! duplicates, says which gap to pull when one appears, and decides when
//! a gap the server keeps confirming empty is skipped.
//!
//! Time comes in as a `now` argument (as in quinn-proto), so the skip
//! clock is tested on synthetic time; the driver passes the runtime's
//! clock and sleeps until [`Inbox::skip_deadline`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::message::IncomingMessage;

/// Deliveries held out of order before a gap is filled; more are dropped
/// (the server sends them again, or the gap pull brings them).
const MAX_HELD: usize = 4096;

/// How often a gap the server confirmed empty is asked about again while
/// it waits: the server may learn within seconds that its seqs are gone
/// for good (settled), and the messages behind it then go out at once
/// instead of after `gap_skip_after`.
pub(crate) const GAP_RECHECK: Duration = Duration::from_secs(1);

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

/// What [`Inbox::confirm_empty`] decided about a gap the server has
/// nothing for.
#[derive(Debug, PartialEq)]
pub(crate) enum GapCheck {
    /// The gap stays open until [`Inbox::skip_deadline`]; `started` says
    /// whether this confirmation started that clock (the watcher must
    /// wake then).
    Waiting {
        /// This was the first confirmation of this gap.
        started: bool,
    },
    /// The gap was given up.
    Skipped {
        /// Messages released in order behind it.
        ready: Vec<IncomingMessage>,
        /// The next gap to pull, if any.
        next_gap: Option<(u64, u64)>,
        /// The server said the seqs are gone for good (settled); otherwise
        /// they stayed empty for `gap_skip_after`.
        settled: bool,
    },
}

/// Ordering and dedup state of one inbox (or group log) on this device.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// Highest seq handed to the app in order.
    released: u64,
    held: BTreeMap<u64, IncomingMessage>,
    /// How long a gap the server keeps confirming empty is waited for.
    gap_skip_after: Duration,
    /// The open gap (by its `after`) the server has confirmed empty, since
    /// when, and when it last confirmed it. Kept only while that gap is the
    /// open one.
    confirmed_empty: Option<(u64, Instant, Instant)>,
}

impl Inbox {
    /// An inbox whose app has everything up to `released`; a gap confirmed
    /// empty is skipped after `gap_skip_after`.
    pub(crate) fn new(released: u64, gap_skip_after: Duration) -> Self {
        Self {
            released,
            held: BTreeMap::new(),
            gap_skip_after,
            confirmed_empty: None,
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
        let ready = self.release();
        self.forget_stale_confirmation();
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
        let ready = self.release();
        self.forget_stale_confirmation();
        Accepted {
            ready,
            gap: self.gap(),
            duplicate: false,
        }
    }

    /// Records at `now` that the server has nothing in seqs
    /// `(after, empty_up_to]`. The gap is skipped at once when the server
    /// says those seqs are `settled` (gone for good), or when the open gap
    /// has been confirmed empty for `gap_skip_after`; otherwise the clock
    /// starts (first confirmation) or runs on.
    pub(crate) fn confirm_empty(
        &mut self,
        after: u64,
        empty_up_to: u64,
        settled: bool,
        now: Instant,
    ) -> GapCheck {
        if settled {
            return self.skip_gap(empty_up_to, true);
        }
        if self.gap().map(|(open, _)| open) != Some(after) {
            // An answer about a gap that has moved on (filled or skipped
            // meanwhile): nothing to wait for.
            return GapCheck::Waiting { started: false };
        }
        match &mut self.confirmed_empty {
            Some((since_after, since, _))
                if *since_after == after
                    && now.saturating_duration_since(*since) >= self.gap_skip_after =>
            {
                self.skip_gap(empty_up_to, false)
            }
            Some((since_after, _, checked)) if *since_after == after => {
                *checked = now;
                GapCheck::Waiting { started: false }
            }
            _ => {
                self.confirmed_empty = Some((after, now, now));
                GapCheck::Waiting { started: true }
            }
        }
    }

    /// When the open gap, confirmed empty, is due to be pulled once more
    /// and then skipped; `None` while no gap is confirmed empty.
    #[cfg(test)]
    pub(crate) fn skip_deadline(&self) -> Option<Instant> {
        self.confirmed_empty
            .map(|(_, since, _)| since + self.gap_skip_after)
    }

    /// When the open gap, confirmed empty, is to be pulled again: every
    /// [`GAP_RECHECK`] (to hear that it settled), and at the skip deadline;
    /// `None` while no gap is confirmed empty.
    pub(crate) fn next_pull(&self) -> Option<Instant> {
        self.confirmed_empty
            .map(|(_, since, checked)| (since + self.gap_skip_after).min(checked + GAP_RECHECK))
    }

    fn skip_gap(&mut self, empty_up_to: u64, settled: bool) -> GapCheck {
        self.confirmed_empty = None;
        let ready = self.skip_to(empty_up_to);
        GapCheck::Skipped {
            ready,
            next_gap: self.gap(),
            settled,
        }
    }

    /// Releases the held messages that are now in order.
    fn release(&mut self) -> Vec<IncomingMessage> {
        let mut ready = Vec::new();
        while let Some(next) = self.held.remove(&(self.released + 1)) {
            self.released = next.seq;
            ready.push(next);
        }
        ready
    }

    /// Drops a confirmation once its gap is no longer the open one (filled,
    /// or moved on): a new gap starts its own clock.
    fn forget_stale_confirmation(&mut self) {
        let open = self.gap().map(|(after, _)| after);
        if self.confirmed_empty.map(|(after, _, _)| after) != open {
            self.confirmed_empty = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKIP: Duration = Duration::from_secs(20);

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
        let mut inbox = Inbox::new(3, SKIP);
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
        let mut inbox = Inbox::new(10, SKIP);
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

    fn released(check: &GapCheck) -> Vec<u64> {
        match check {
            GapCheck::Skipped { ready, .. } => ready.iter().map(|m| m.seq).collect(),
            GapCheck::Waiting { .. } => Vec::new(),
        }
    }

    /// An inbox at 3 holding 6 and 7: gap (3, 5].
    fn with_gap() -> Inbox {
        let mut inbox = Inbox::new(3, SKIP);
        inbox.accept(m(6));
        inbox.accept(m(7));
        assert_eq!(inbox.gap(), Some((3, 5)));
        inbox
    }

    #[test]
    fn a_gap_the_server_keeps_confirming_empty_is_skipped_after_gap_skip_after() {
        let t0 = Instant::now();
        let mut inbox = with_gap();
        assert_eq!(
            inbox.confirm_empty(3, 5, false, t0),
            GapCheck::Waiting { started: true }
        );
        assert_eq!(inbox.skip_deadline(), Some(t0 + SKIP));
        let just_before = t0 + SKIP - Duration::from_millis(1);
        assert_eq!(
            inbox.confirm_empty(3, 5, false, just_before),
            GapCheck::Waiting { started: false },
            "confirmed again before the deadline: the clock runs on, not anew"
        );
        assert_eq!(inbox.skip_deadline(), Some(t0 + SKIP));
        let check = inbox.confirm_empty(3, 5, false, t0 + SKIP);
        assert_eq!(released(&check), [6, 7]);
        assert!(matches!(
            check,
            GapCheck::Skipped {
                next_gap: None,
                settled: false,
                ..
            }
        ));
        assert_eq!(inbox.released(), 7);
        assert_eq!(inbox.skip_deadline(), None);
    }

    #[test]
    fn a_waiting_gap_is_asked_about_again_every_recheck_until_it_settles() {
        let mut inbox = with_gap();
        let t0 = Instant::now();
        inbox.confirm_empty(3, 5, false, t0);
        assert_eq!(inbox.next_pull(), Some(t0 + GAP_RECHECK));
        let t1 = t0 + GAP_RECHECK;
        assert_eq!(
            inbox.confirm_empty(3, 5, false, t1),
            GapCheck::Waiting { started: false }
        );
        assert_eq!(inbox.next_pull(), Some(t1 + GAP_RECHECK));
        // Close to the skip deadline, the deadline comes first.
        let late = t0 + SKIP - GAP_RECHECK / 2;
        inbox.confirm_empty(3, 5, false, late);
        assert_eq!(inbox.next_pull(), Some(t0 + SKIP));
        // The server says the seqs settled: skipped without the full wait.
        let check = inbox.confirm_empty(3, 5, true, t1 + GAP_RECHECK);
        assert_eq!(released(&check), vec![6, 7]);
        assert_eq!(inbox.next_pull(), None);
    }

    #[test]
    fn a_settled_gap_is_skipped_at_once() {
        let t0 = Instant::now();
        let mut inbox = with_gap();
        let check = inbox.confirm_empty(3, 5, true, t0);
        assert_eq!(released(&check), [6, 7]);
        assert!(matches!(check, GapCheck::Skipped { settled: true, .. }));
        assert_eq!(inbox.skip_deadline(), None);
    }

    #[test]
    fn a_gap_filled_before_the_deadline_is_not_skipped() {
        let t0 = Instant::now();
        let mut inbox = with_gap();
        inbox.confirm_empty(3, 5, false, t0);
        assert_eq!(seqs(&inbox.accept(m(4))), [4]);
        assert_eq!(
            inbox.skip_deadline(),
            None,
            "the confirmed gap is no longer the open one"
        );
        assert_eq!(seqs(&inbox.accept(m(5))), [5, 6, 7]);
        // A late answer about the old gap changes nothing.
        assert_eq!(
            inbox.confirm_empty(3, 5, false, t0 + SKIP * 2),
            GapCheck::Waiting { started: false }
        );
        assert_eq!(inbox.released(), 7);
        assert_eq!(inbox.skip_deadline(), None);
    }

    #[test]
    fn a_partly_filled_gap_starts_its_own_clock() {
        let t0 = Instant::now();
        let mut inbox = with_gap();
        inbox.confirm_empty(3, 5, false, t0);
        inbox.accept(m(4));
        assert_eq!(inbox.gap(), Some((4, 5)));
        let t1 = t0 + SKIP;
        assert_eq!(
            inbox.confirm_empty(4, 5, false, t1),
            GapCheck::Waiting { started: true },
            "the remaining gap waits its full time"
        );
        assert_eq!(inbox.skip_deadline(), Some(t1 + SKIP));
        assert_eq!(
            released(&inbox.confirm_empty(4, 5, false, t1 + SKIP)),
            [6, 7]
        );
    }

    #[test]
    fn skipping_part_of_a_gap_leaves_the_rest_to_pull() {
        let t0 = Instant::now();
        let mut inbox = Inbox::new(0, SKIP);
        inbox.accept(m(5));
        inbox.accept(m(9));
        assert_eq!(inbox.gap(), Some((0, 4)));
        let check = inbox.confirm_empty(0, 4, true, t0);
        assert_eq!(released(&check), [5]);
        assert!(matches!(
            check,
            GapCheck::Skipped {
                next_gap: Some((5, 8)),
                ..
            }
        ));
    }
}
