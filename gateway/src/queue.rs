//! A bounded queue from a session's streams to one of the session's own
//! futures (its ack writer, its delivery), kept inside the session's own
//! allocation.
//!
//! A channel would cost every session a shared block at its creation and
//! a waiter's block whenever its receiver waits: most sessions are idle
//! for their whole life and never carry an item. Here an idle queue is a
//! lock, an empty `VecDeque` (no room until the first item, and its room
//! is given back when it drains) and two [`Notify`]s, stored in the
//! structure that holds it (the session); its waiters live in the
//! futures that wait.
//!
//! One [`Receiver`] takes the items; dropping it closes the queue, so a
//! sender waiting for room, or sending later, learns that nobody reads.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::mutex::lock;

/// The queue's reader is gone: the item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Closed;

/// A bounded multi-producer, single-consumer queue.
pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    /// Wakes the receiver: an item, or the close.
    items: Notify,
    /// Wakes a sender waiting for room (and every one at the close).
    room: Notify,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Queue<T> {
    /// An empty queue of at most `capacity` items; allocates nothing.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            items: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item`, waiting while the queue is full; `Closed` once the
    /// receiver is gone.
    pub(crate) async fn send(&self, item: T) -> Result<(), Closed> {
        let mut item = Some(item);
        loop {
            // Enabled before the check: room made after it wakes this.
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            {
                let mut state = lock(&self.state);
                if state.closed {
                    return Err(Closed);
                }
                if state.items.len() < self.capacity {
                    state.items.extend(item.take());
                    drop(state);
                    self.items.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// The next item without waiting.
    fn try_take(&self) -> Option<T> {
        let mut state = lock(&self.state);
        let item = state.items.pop_front()?;
        if state.items.is_empty() {
            // Drained: its room is given back (one allocation per burst).
            state.items = VecDeque::new();
        }
        drop(state);
        self.room.notify_one();
        Some(item)
    }

    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.items = VecDeque::new();
        drop(state);
        self.room.notify_waiters();
    }
}

/// Where a [`Queue`] lives: the receiver keeps its holder alive.
pub(crate) trait Holds<T>: Send + Sync {
    fn queue(&self) -> &Queue<T>;
}

/// The one reader of a queue; dropping it closes the queue.
pub(crate) struct Receiver<T> {
    holder: Arc<dyn Holds<T>>,
}

impl<T> Receiver<T> {
    /// The reader of the queue `holder` holds. There must be one only.
    pub(crate) fn new(holder: Arc<dyn Holds<T>>) -> Self {
        Self { holder }
    }

    /// The next item, waiting for one.
    pub(crate) async fn recv(&self) -> T {
        let queue = self.holder.queue();
        loop {
            // Enabled before the check: an item queued after it wakes this.
            let mut queued = pin!(queue.items.notified());
            queued.as_mut().enable();
            if let Some(item) = queue.try_take() {
                return item;
            }
            queued.await;
        }
    }

    /// The next item if one waits.
    pub(crate) fn try_recv(&self) -> Option<T> {
        self.holder.queue().try_take()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.holder.queue().close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Holder(Queue<u32>);

    impl Holds<u32> for Holder {
        fn queue(&self) -> &Queue<u32> {
            &self.0
        }
    }

    fn pair(capacity: usize) -> (Arc<Holder>, Receiver<u32>) {
        let holder = Arc::new(Holder(Queue::new(capacity)));
        let rx = Receiver::new(Arc::clone(&holder) as Arc<dyn Holds<u32>>);
        (holder, rx)
    }

    const PATIENCE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn items_arrive_in_order_and_a_full_queue_holds_its_sender() {
        let (holder, rx) = pair(2);
        holder.0.send(1).await.expect("room");
        holder.0.send(2).await.expect("room");
        let sender = Arc::clone(&holder);
        let third = tokio::spawn(async move { sender.0.send(3).await });
        // The third waits for room: nothing but the two is queued.
        tokio::task::yield_now().await;
        assert_eq!(lock(&holder.0.state).items.len(), 2);
        assert!(!third.is_finished());
        assert_eq!(rx.recv().await, 1);
        let sent = tokio::time::timeout(PATIENCE, third).await;
        assert_eq!(sent.expect("room was made").expect("task"), Ok(()));
        assert_eq!(rx.recv().await, 2);
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_an_item() {
        let (holder, rx) = pair(4);
        let reader = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        holder.0.send(7).await.expect("room");
        let got = tokio::time::timeout(PATIENCE, reader).await;
        assert_eq!(got.expect("woken").expect("task"), 7);
    }

    #[tokio::test]
    async fn dropping_the_receiver_refuses_waiting_and_later_senders() {
        let (holder, rx) = pair(1);
        holder.0.send(1).await.expect("room");
        let sender = Arc::clone(&holder);
        let waiting = tokio::spawn(async move { sender.0.send(2).await });
        tokio::task::yield_now().await;
        drop(rx);
        let refused = tokio::time::timeout(PATIENCE, waiting).await;
        assert_eq!(refused.expect("woken").expect("task"), Err(Closed));
        assert_eq!(holder.0.send(3).await, Err(Closed));
        assert!(lock(&holder.0.state).items.is_empty());
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_room_back() {
        let (holder, rx) = pair(64);
        for i in 0..10 {
            holder.0.send(i).await.expect("room");
        }
        assert!(lock(&holder.0.state).items.capacity() >= 10);
        for i in 0..10 {
            assert_eq!(rx.recv().await, i);
        }
        assert_eq!(lock(&holder.0.state).items.capacity(), 0);
    }
}
