//! The server's TLS session store: the sessions behind the tickets it has
//! handed out, for resumption and 0-RTT.
//!
//! Tickets are stateful and single-use: a resuming handshake takes its
//! session out of the store, so a replayed first flight cannot resume, and
//! its early data is refused. The store holds at most `limit` sessions and
//! evicts the oldest beyond it.
//!
//! It grows with the sessions it holds. rustls's `ServerSessionMemoryCache`
//! reserves its whole table up front (the default 65,536 sessions: about
//! 15 MB), and as tickets land at random in it, a node with a few thousand
//! clients touches nearly all of that table's pages. Its `take` also
//! searches its eviction queue from the front, a walk over the whole store
//! under its lock for every resumed handshake of a reconnect storm; here a
//! taken session's queue entry is skipped when it comes up instead.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::counter::Counter;

/// A bounded, growing, single-use session store.
#[derive(Debug)]
pub(crate) struct SessionStore {
    limit: usize,
    held: Mutex<Held>,
    resumed: Counter,
}

#[derive(Debug, Default)]
struct Held {
    sessions: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys in the order they were stored. A key taken out of `sessions`
    /// stays here until it reaches the front or the queue is compacted.
    order: VecDeque<Vec<u8>>,
}

impl SessionStore {
    /// A store of at most `limit` sessions (at least one); `resumed` counts
    /// the sessions found for resuming handshakes.
    pub(crate) fn new(limit: usize, resumed: Counter) -> Self {
        Self {
            limit: limit.max(1),
            held: Mutex::new(Held::default()),
            resumed,
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // Every change below leaves the store consistent between steps.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn found(&self, value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        if value.is_some() {
            self.resumed.inc();
        }
        value
    }
}

impl Held {
    /// Drops the oldest held session; taken keys on the way are skipped.
    fn evict_oldest(&mut self) {
        while let Some(key) = self.order.pop_front() {
            if self.sessions.remove(&key).is_some() {
                return;
            }
        }
    }

    /// Keeps the queue within twice the limit: taken keys are dropped from
    /// it once as many have piled up as the store may hold.
    fn compact(&mut self, limit: usize) {
        if self.order.len() > limit.saturating_mul(2) {
            let sessions = &self.sessions;
            self.order.retain(|key| sessions.contains_key(key));
        }
    }
}

impl rustls::server::StoresServerSessions for SessionStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut held = self.held();
        if let Some(old) = held.sessions.get_mut(&key) {
            // A key stored again keeps its place in the queue.
            *old = value;
            return true;
        }
        if held.sessions.len() >= self.limit {
            held.evict_oldest();
        }
        held.order.push_back(key.clone());
        held.sessions.insert(key, value);
        held.compact(self.limit);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let value = self.held().sessions.get(key).cloned();
        self.found(value)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let value = self.held().sessions.remove(key);
        self.found(value)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::StoresServerSessions;

    use super::*;

    fn key(i: u32) -> Vec<u8> {
        let mut k = vec![7; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn a_ticket_resumes_once() {
        let resumed = Counter::default();
        let store = SessionStore::new(8, resumed.clone());
        assert!(store.put(key(1), b"session".to_vec()));
        assert_eq!(store.take(&key(1)).as_deref(), Some(&b"session"[..]));
        // A replayed ticket finds nothing: no resumption, no early data.
        assert_eq!(store.take(&key(1)), None);
        assert_eq!(store.take(&key(2)), None);
        assert_eq!(resumed.get(), 1);
    }

    #[test]
    fn beyond_the_limit_the_oldest_held_session_goes() {
        let store = SessionStore::new(3, Counter::default());
        for i in 1..=3 {
            store.put(key(i), vec![i as u8]);
        }
        // A used ticket frees its place: storing one more evicts nothing.
        assert!(store.take(&key(2)).is_some());
        store.put(key(4), vec![4]);
        assert_eq!(store.held().sessions.len(), 3);
        // Full again: the next one evicts the oldest still held (1), and
        // the taken key ahead of it in the queue is passed over.
        store.put(key(5), vec![5]);
        assert_eq!(store.take(&key(1)), None);
        for i in [3, 4, 5] {
            assert_eq!(store.take(&key(i)), Some(vec![i as u8]), "session {i}");
        }
    }

    #[test]
    fn a_key_stored_again_is_replaced_not_doubled() {
        let store = SessionStore::new(2, Counter::default());
        store.put(key(1), vec![1]);
        store.put(key(1), vec![11]);
        store.put(key(2), vec![2]);
        assert_eq!(store.held().order.len(), 2);
        assert_eq!(store.take(&key(1)), Some(vec![11]));
    }

    #[test]
    fn memory_follows_the_sessions_held_not_the_limit() {
        let store = SessionStore::new(65_536, Counter::default());
        assert_eq!(store.held().sessions.capacity(), 0);
        assert_eq!(store.held().order.capacity(), 0);
        // A long run of resumed handshakes: every ticket is used, and the
        // queue of taken keys is compacted instead of growing with them.
        let small = SessionStore::new(100, Counter::default());
        for i in 0..10_000 {
            small.put(key(i), vec![1; 100]);
            assert!(small.take(&key(i)).is_some());
            assert!(small.held().order.len() <= 201);
        }
        assert!(small.held().sessions.is_empty());
    }
}
