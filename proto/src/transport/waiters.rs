//! Wakes what waits on a multiplexed connection's streams once the
//! connection is gone. yamux wakes its streams' readers and writers when a
//! connection fails, but not when it is closed gracefully (by either side):
//! a read waiting for the peer's answer then waits for ever, and so does
//! the upload or request behind it. So each stream that finds yamux not
//! ready also leaves its waker here, and the connection's driver wakes
//! them all once it has dropped the connection.

use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;

/// The wakers of the streams waiting on one connection.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ended: bool,
    /// `(stream, writing, waker)`, one per stream and direction.
    waiting: Vec<(Weak<Mutex<yamux::Stream>>, bool, Waker)>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Leaves `waker` to be woken when the connection ends, for `stream`'s
    /// reading or (`writing`) writing side. `false` once the connection
    /// has ended: the caller must not wait.
    pub(super) fn wait(
        &self,
        stream: &Arc<Mutex<yamux::Stream>>,
        writing: bool,
        waker: &Waker,
    ) -> bool {
        let mut inner = self.lock();
        if inner.ended {
            return false;
        }
        inner.waiting.retain(|(s, _, _)| s.strong_count() > 0);
        let mine = inner
            .waiting
            .iter_mut()
            .find(|(s, w, _)| *w == writing && std::ptr::eq(s.as_ptr(), Arc::as_ptr(stream)));
        match mine {
            Some((_, _, known)) => known.clone_from(waker),
            None => inner
                .waiting
                .push((Arc::downgrade(stream), writing, waker.clone())),
        }
        true
    }

    /// The connection is gone: wakes every waiter; later waits return
    /// `false`.
    pub(super) fn end(&self) {
        let waiting = {
            let mut inner = self.lock();
            inner.ended = true;
            std::mem::take(&mut inner.waiting)
        };
        for (_, _, waker) in waiting {
            waker.wake();
        }
    }
}
