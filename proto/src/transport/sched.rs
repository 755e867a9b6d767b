//! Stream priorities on the TCP transport: a write scheduler in front of
//! yamux.
//!
//! yamux has no priorities: each stream queues up to a dozen frames of its
//! own, and the connection takes one frame from each stream that has one,
//! in turn. So every write of a stream goes through the connection's
//! [`Scheduler`] instead: a write is cut into pieces of at most [`CHUNK`]
//! bytes (one yamux frame each), and a piece is handed to yamux only while
//! less than [`CHUNK`] bytes of earlier pieces still wait inside yamux (the
//! socket under yamux reports the data bytes it wrote). Among the writers
//! waiting, the one of highest priority goes first (first come first
//! served among equals). A chat frame written while uploads have megabytes
//! queued therefore follows at most two pieces already handed to yamux.
//!
//! Flow control stays yamux's: a writer whose stream has no credit left
//! leaves the line until the peer's window update arrives, so a stream the
//! peer does not read never holds up the others (as on QUIC, where only
//! streams with credit are scheduled).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// The largest piece of a write handed to yamux at once, and the bound on
/// the bytes waiting inside yamux before another piece may go: yamux's own
/// largest frame body (its `split_send_size`), so a piece is one frame.
pub(super) const CHUNK: usize = 16 * 1024;

/// A writer's place in line: higher priority first, then first come.
type Ticket = (Reverse<i32>, u64);

/// The write line of one connection.
#[derive(Debug, Default)]
pub(super) struct Scheduler {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Data bytes handed to yamux.
    admitted: u64,
    /// Data bytes yamux wrote to the socket.
    written: u64,
    /// The next ticket's sequence number.
    next: u64,
    /// Writers waiting for their turn.
    waiting: BTreeMap<Ticket, Waker>,
    /// The connection ended: writes go straight to yamux (and fail there).
    closed: bool,
}

impl Inner {
    fn has_room(&self) -> bool {
        self.closed || self.admitted.saturating_sub(self.written) < CHUNK as u64
    }

    /// Wakes the writer first in line when it may go.
    fn wake_first(&self) {
        if !self.has_room() {
            return;
        }
        if let Some(waker) = self.waiting.values().next() {
            waker.wake_by_ref();
        }
    }
}

impl Scheduler {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Data bytes handed to yamux outside the line (the direction bytes and
    /// the close the connection writes itself).
    pub(super) fn admitted(&self, n: usize) {
        self.lock().admitted += n as u64;
    }

    /// The connection ended: what yamux held will never be written, so
    /// every writer in line goes on (to yamux's error).
    pub(super) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for waker in inner.waiting.values() {
            waker.wake_by_ref();
        }
    }

    /// Data bytes yamux wrote to the socket.
    pub(super) fn written(&self, n: usize) {
        let mut inner = self.lock();
        inner.written += n as u64;
        inner.wake_first();
    }
}

/// A writer's place in the line of a [`Scheduler`]; dropped, it leaves.
#[derive(Debug)]
pub(super) struct Line<'a> {
    sched: &'a Scheduler,
    ticket: Option<Ticket>,
}

impl<'a> Line<'a> {
    pub(super) fn new(sched: &'a Scheduler) -> Self {
        Self {
            sched,
            ticket: None,
        }
    }

    /// Runs `write` (a write of at most [`CHUNK`] bytes to yamux) once it
    /// is the turn of this writer at `priority`. A write that is pending
    /// (no credit) leaves the line; polled again, the writer queues anew.
    pub(super) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        priority: i32,
        write: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.sched.lock();
        let ticket = match self.ticket {
            Some(t) => t,
            None => {
                let t = (Reverse(priority), inner.next);
                inner.next += 1;
                t
            }
        };
        let first = inner.waiting.keys().next().is_none_or(|f| *f >= ticket);
        if !(first && inner.has_room()) {
            inner.waiting.insert(ticket, cx.waker().clone());
            self.ticket = Some(ticket);
            return Poll::Pending;
        }
        inner.waiting.remove(&ticket);
        self.ticket = None;
        // Under the line's lock, so no other writer slips in between.
        let wrote = write(cx);
        if let Poll::Ready(Ok(n)) = wrote {
            inner.admitted += n as u64;
        }
        inner.wake_first();
        wrote
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let mut inner = self.sched.lock();
            inner.waiting.remove(&ticket);
            inner.wake_first();
        }
    }
}

/// Counts the data bytes in what yamux writes to its socket (frames of
/// type 0; their 12-byte header ends with the body's length, big-endian).
#[derive(Debug, Default)]
pub(super) struct DataCounter {
    header: [u8; 12],
    have: usize,
    body_left: usize,
}

impl DataCounter {
    /// The data bytes among `bytes`, the next ones written.
    pub(super) fn count(&mut self, mut bytes: &[u8]) -> usize {
        let mut data = 0;
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                data += n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (12 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 12 {
                self.have = 0;
                let h = &self.header;
                if h[1] == 0 {
                    self.body_left = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
                }
            }
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(line: &mut Line<'_>, priority: i32, n: usize) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(Waker::noop());
        line.poll_write(&mut cx, priority, |_| Poll::Ready(Ok(n)))
    }

    #[test]
    fn the_turn_goes_to_the_highest_priority_then_first_come() {
        let sched = Scheduler::default();
        let (mut low_a, mut low_b, mut high) =
            (Line::new(&sched), Line::new(&sched), Line::new(&sched));
        assert!(write(&mut low_a, -10, CHUNK).is_ready(), "room at first");
        // yamux holds a whole piece: everyone waits.
        assert!(write(&mut low_a, -10, CHUNK).is_pending());
        assert!(write(&mut low_b, -10, CHUNK).is_pending());
        assert!(write(&mut high, 0, 100).is_pending());
        sched.written(CHUNK);
        // The low writers came first; the high one goes first.
        assert!(write(&mut low_a, -10, CHUNK).is_pending());
        assert!(write(&mut high, 0, 100).is_ready());
        // Less than a piece waits in yamux: the next may go.
        assert!(write(&mut low_b, -10, CHUNK).is_pending(), "not first");
        assert!(write(&mut low_a, -10, CHUNK).is_ready());
        assert!(write(&mut low_b, -10, CHUNK).is_pending(), "no room");
        sched.written(CHUNK + 100);
        assert!(write(&mut low_b, -10, CHUNK).is_ready());
    }

    #[test]
    fn a_writer_that_leaves_the_line_gives_its_place_up() {
        let sched = Scheduler::default();
        sched.admitted(CHUNK);
        let mut high = Line::new(&sched);
        let mut low = Line::new(&sched);
        assert!(write(&mut high, 5, 1).is_pending());
        assert!(write(&mut low, 0, 1).is_pending());
        drop(high);
        sched.written(CHUNK);
        assert!(write(&mut low, 0, 1).is_ready());
    }

    #[test]
    fn a_closed_connection_lets_every_writer_on() {
        let sched = Scheduler::default();
        sched.admitted(CHUNK);
        let mut low = Line::new(&sched);
        assert!(write(&mut low, 0, 1).is_pending());
        sched.close();
        assert!(write(&mut low, 0, 1).is_ready());
    }

    #[test]
    fn the_counter_finds_data_bodies_across_writes() {
        let mut counter = DataCounter::default();
        let mut data = vec![0u8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5];
        data.extend_from_slice(b"hello");
        // A window update: no body.
        data.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0]);
        let total: usize = data.chunks(5).map(|c| counter.count(c)).sum();
        assert_eq!(total, 5);
    }
}
