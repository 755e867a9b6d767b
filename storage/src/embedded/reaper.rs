//! Frees the memtables fjall has flushed on a thread of our own.
//!
//! fjall lets go of a flushed memtable when it cleans up superseded
//! versions, and it does that while holding the keyspace's version lock
//! (after a memtable rotation, also the database's keyspace map, which a
//! flush rotating the journal waits for while it holds the journal). Freeing
//! a 64 MiB skip list of small entries takes 0.1–0.2 s of CPU on these
//! machines, and every commit that touches the keyspace or the journal
//! waits for it (`BENCHMARKS.md`, "Fifth pass"). This thread keeps a
//! reference to every memtable it has seen active; once fjall has let go of
//! one, the last reference, and the freeing, is ours, outside any fjall lock.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use fjall::{AbstractTree as _, Database, Keyspace, KeyspaceCreateOptions};

/// How often the thread looks for new memtables and frees released ones.
/// A memtable lives for seconds (it holds up to 64 MiB of writes), so one
/// is never missed; a released one is freed at most this much later.
const EVERY: Duration = Duration::from_millis(100);

/// A memtable held by the reaper, whatever its type.
trait Held: Send {
    /// Whether fjall has let go of it.
    fn only_ours(&self) -> bool;
}

impl<T: Send + Sync> Held for Arc<T> {
    fn only_ours(&self) -> bool {
        Arc::strong_count(self) == 1
    }
}

/// The running thread; dropping it stops the thread and waits for it.
pub(super) struct Reaper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Starts the thread over every keyspace of `db`.
    pub(super) fn start(db: &Database) -> std::io::Result<Self> {
        let mut keyspaces = Vec::new();
        for name in db.list_keyspace_names() {
            match db.keyspace(&name, KeyspaceCreateOptions::default) {
                Ok(keyspace) => keyspaces.push(keyspace),
                Err(e) => tracing::warn!(error = %e, "memtable reaper: keyspace not opened"),
            }
        }
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("qim-store-reaper".into())
            .spawn(move || run(&keyspaces, &stopped))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(keyspaces: &[Keyspace], stopped: &mpsc::Receiver<()>) {
    let mut tracker = Tracker::new(keyspaces.len());
    loop {
        match stopped.recv_timeout(EVERY) {
            Err(RecvTimeoutError::Timeout) => tracker.step(keyspaces),
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The memtables the reaper holds.
struct Tracker {
    /// The active memtable last seen per keyspace (by address: it is held,
    /// so the address is not reused while we compare).
    seen: Vec<usize>,
    held: Vec<Box<dyn Held>>,
}

impl Tracker {
    fn new(keyspaces: usize) -> Self {
        Self {
            seen: vec![0; keyspaces],
            held: Vec::new(),
        }
    }

    /// Takes a reference to each keyspace's active memtable if it is new,
    /// and frees the memtables fjall has let go of.
    fn step(&mut self, keyspaces: &[Keyspace]) {
        for (keyspace, seen) in keyspaces.iter().zip(&mut self.seen) {
            let memtable = keyspace.tree.active_memtable();
            let at = Arc::as_ptr(&memtable).addr();
            if at != *seen {
                *seen = at;
                self.held.push(Box::new(memtable));
            }
        }
        self.held.retain(|m| !m.only_ours());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_memtables_are_freed_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::builder(dir.path()).open().expect("open");
        let keyspace = db
            .keyspace("k", KeyspaceCreateOptions::default)
            .expect("keyspace");
        let keyspaces = [keyspace.clone()];
        let mut tracker = Tracker::new(1);
        let mut most = 0;
        for i in 0..50u32 {
            keyspace.insert(i.to_be_bytes(), "v").expect("insert");
            tracker.step(&keyspaces);
            most = most.max(tracker.held.len());
            keyspace.rotate_memtable_and_wait().expect("flush");
        }
        tracker.step(&keyspaces);
        assert!(most >= 1, "the active memtable is held");
        assert!(
            tracker.held.len() <= 3,
            "50 flushed memtables, {} still held: fjall's old versions are \
             cleaned up and the reaper frees what they held",
            tracker.held.len()
        );
        assert_eq!(
            keyspace.get(7u32.to_be_bytes()).expect("get").as_deref(),
            Some(&b"v"[..])
        );
    }
}
