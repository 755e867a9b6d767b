//! The embedded backend: one database under the data directory, on the
//! engine `store.engine` names (fjall by default, redb or SQLite) behind
//! one ordered key-value layer (`kv/`).
//!
//! # Why fjall
//! The same soak on each engine (`cargo xtask loadtest chat --minutes 2
//! --rate R --set store.engine=... -- --pairs 64`, BENCHMARKS "Embedded
//! store engines"): at 5,000 messages/s fjall delivered with a p50 of 2–4 ms
//! and wrote 34 bytes to disk per payload byte; redb and SQLite wrote 329 and
//! 345 (about 150 MiB/s), with p50s of 190–600 ms and 100–120 ms. Offered
//! 20,000/s, fjall delivered 19,500 a second (its p99 above a second, on a
//! machine also building), redb 14,600 and SQLite 11,000, their latency
//! growing to 33 s and 55 s. Both are B-trees
//! that write every page a commit touches, and a commit of a few messages
//! touches a page per table per message: a send's row is keyed by a hash,
//! and inboxes and conversations are spread over the key space. fjall, a
//! log-structured merge tree, writes each row once to its journal and sorts
//! later in bulk.
//!
//! Run again on 2026-12-06 (BENCHMARKS "The store's own log, and the
//! engines run again"), once a sender's send rows were in time order, the
//! B-trees kept up at 20,000/s, and redb had the lower tail there: ten
//! minutes gave a p99 of 151 ms against fjall's 496. It wrote 3.7× the
//! bytes fjall wrote (117 MiB/s), held 4.6× the disk per message and three
//! times the memory; at 5,000/s it wrote 332× the payload with a tail no
//! better than fjall's. fjall stays the default for the writes a disk can
//! take for years; `store.engine = "redb"` buys the lower tail at high
//! rates with them. The store's own log (`store.log`, `kv/log.rs`) cuts
//! redb's writes to fjall's at 5,000/s, but its checkpoints stall the
//! writer; on fjall it adds writes and does not lower the tail.
//!
//! Earlier, engine alone (200k records of 200 bytes, 100 per
//! durable commit; `shared/NOTES.md`): fjall 3.1 ≈ 145–200k records/s against
//! redb 4.5's ≈ 50k, 46 MB on disk against 128 MiB; redb reads a page of 100
//! faster (≈ 15 µs against ≈ 90 µs), but the gateway reads the store only to
//! catch a device up. RocksDB (the `rocksdb` crate 0.24, lz4 only) was not
//! put behind the store: on these machines it needs libclang installed for
//! its bindings, and its C++ took 8 min 31 s of wall time (872 s of CPU) to
//! build cold in release, which the suite's cold build would pay too; it
//! adds 7.8 MB to a stripped binary.
//!
//! Through this backend, with the gateway's pattern (32 concurrent callers
//! appending batches of 16 messages of 200 bytes, each batch durable before
//! it returns), `cargo run --release -p qim-storage --example
//! store_throughput` measured ≈ 125k messages/s, and ≈ 135 µs to read an
//! inbox head and its last 100 messages.
//!
//! # Group commit
//! A single writer thread owns sequence assignment and every write. It takes
//! every request that is waiting (up to [`MAX_BATCH`] messages), writes them
//! in one atomic batch committed durably (fsync), and only then answers each
//! caller. fjall syncs the journal *before* it applies the batch to the
//! memtables (redb and SQLite publish a commit to readers after its fsync),
//! so nothing is readable before it is durable: a reader can never see a seq
//! that a crash could take back and reissue. Under
//! load, one fsync covers hundreds of messages; with one caller, latency is
//! one fsync. Cursor updates ride along with the next group (coalesced per
//! device), and so do quota counts, charged in memory (`quota.rs`):
//! neither makes an async caller wait on the journal lock,
//! which the writer holds through each fsync. The rarer writes of logins,
//! accounts and token revocations run on blocking threads; media records,
//! push tokens and push settings are written and synced by their callers
//! (`media.rs`, `notify.rs`: once per upload megabyte or user action).
//!
//! If one append cannot be staged (an unreadable record), only that append
//! fails; its staged seqs are rolled back and the rest of the group commits.
//! If a commit itself fails, fjall refuses all further writes (its journal
//! may be torn): the store then answers every write with
//! [`StoreError::Failed`], and the gateway drains and exits so a restart
//! replays the journal.
//!
//! # A nearly full disk
//! Below a floor of free space ([`DiskSpace`], set by the gateway) the
//! writer refuses every write with [`StoreError::Full`] before it reaches
//! fjall, so a full disk never poisons the database: reads go on, and
//! writes succeed again once space is freed (`space.rs`).
//!
//! # Freeing flushed memtables
//! fjall frees a flushed memtable while holding locks every commit takes;
//! a thread of ours keeps a reference to each memtable so the freeing
//! happens there instead (`reaper.rs`).
//!
//! # Files
//! - `kv/`: the key-value layer and its three engines.
//! - `tables.rs`: the keyspaces and the keys of messages and conversations;
//!   `sends.rs`: the one row per send (idempotency and `msg_id` index).
//! - `writer.rs`: the writer thread, appends, and the stage an IM request is
//!   written through.
//! - `conversations.rs` (reads), `posts.rs`, `operations.rs`: the
//!   [`ConversationStore`](crate::ConversationStore).
//! - `groups.rs`, `contacts.rs`, `schedule.rs`, `presence.rs`: the other
//!   stores, as in `cluster/`.
//! - `sweeper.rs`: history retention; `reaper.rs`: freeing memtables.
//! - `media.rs`: the [`MediaStore`](crate::media::MediaStore) records
//!   (blob bytes are files, [`FileBlobs`](crate::media::files::FileBlobs),
//!   under the store's `media/` directory).
//! - `space.rs`: the free space under the store and its floor;
//!   `quota.rs`: the [`QuotaStore`](crate::quota::QuotaStore) counters.

use std::path::Path;
use std::thread::JoinHandle;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::model::{Appended, NewMessage, StoredMessage};
use crate::{MessageStore, StoreError};
use tables::{
    Tables, check_key_part, cursor_key, decode_message, message_key, read_head, unavailable,
};
use writer::{Op, Writer};

mod accounts;
mod contacts;
mod conversations;
mod deletion;
mod groups;
mod kv;
#[cfg(test)]
mod list_tests;
mod media;
mod notify;
mod operations;
mod posts;
mod presence;
mod quota;
mod reaper;
mod revocation;
mod schedule;
mod sends;
mod space;
mod sweeper;
mod tables;
mod writer;

pub use kv::Engine;

/// The block cache of the fjall engine unless told otherwise
/// (`store.cache_mb`): 256 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
pub use space::DiskSpace;
pub use sweeper::sweep_interval;
pub use writer::MAX_BATCH;

/// How an embedded store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// The engine (`store.engine`).
    pub engine: Engine,
    /// fjall's block cache in bytes (`store.cache_mb`).
    pub cache_bytes: u64,
    /// Whether every write goes through the store's own log, durable by
    /// its sync, the engine synced at checkpoints only (`store.log`;
    /// `kv/log.rs`).
    pub log: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            engine: Engine::default(),
            cache_bytes: DEFAULT_CACHE_BYTES,
            log: false,
        }
    }
}

/// Append requests waiting for the writer; senders wait when it is full.
const QUEUE: usize = 1024;

/// A durable single-node store in a directory.
pub struct EmbeddedStore {
    tables: Tables,
    ops: mpsc::Sender<Op>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Frees flushed memtables outside fjall's locks (stopped first on drop).
    reaper: Option<reaper::Reaper>,
    /// Milliseconds messages stay readable in history; 0: forever.
    pub(crate) history_retention_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Whether the retention sweeper thread was started.
    sweeper: std::sync::atomic::AtomicBool,
    /// The free space under the store; writes are refused below its floor.
    pub(crate) disk: std::sync::Arc<DiskSpace>,
    /// Quota counts charged lately (`quota.rs`).
    counts: std::sync::Arc<quota::Counts>,
    /// Media records whose writes check another record first (holds,
    /// collection claims, pending uploads) are written one at a time.
    media_lock: std::sync::Mutex<()>,
    /// Push token writes and push claims (see `notify.rs`).
    notify: notify::NotifyState,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` on the engine that wrote it
    /// (fjall for a new store). Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, Engine::found_in(dir).unwrap_or_default())
    }

    /// Opens (or creates) the store in `dir` on `engine`. Fails if another
    /// process has it open, or another engine wrote it.
    pub fn open_with(dir: &Path, engine: Engine) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, engine, DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedStore::open_with`] with a block cache of `cache_bytes`
    /// (fjall only).
    pub fn open_with_cache(
        dir: &Path,
        engine: Engine,
        cache_bytes: u64,
    ) -> Result<Self, StoreError> {
        Self::open_with_options(
            dir,
            &StoreOptions {
                engine,
                cache_bytes,
                log: false,
            },
        )
    }

    /// Opens (or creates) the store in `dir` as `options` say. Fails if
    /// another process has it open, or another engine wrote it.
    pub fn open_with_options(dir: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let db = kv::Db::open_with_log(
            dir,
            options.engine,
            options.cache_bytes,
            options.log.then_some(kv::CHECKPOINT_BYTES),
        )
        .map_err(unavailable)?;
        let tables = Tables::open(db)?;
        let disk = std::sync::Arc::new(DiskSpace::new(dir.to_path_buf()));
        contacts::build_indexes(&tables)?;
        schedule::build_index(&tables)?;
        let (ops, rx) = mpsc::channel(QUEUE);
        let writer_tables = tables.clone();
        let writer_disk = std::sync::Arc::clone(&disk);
        let counts = std::sync::Arc::new(quota::Counts::default());
        let writer_counts = std::sync::Arc::clone(&counts);
        let writer = std::thread::Builder::new()
            .name("qim-store-writer".into())
            .spawn(move || Writer::new(writer_tables, writer_disk, writer_counts).run(rx))
            .map_err(unavailable)?;
        let reaper = match tables.db.fjall() {
            Some(db) => Some(reaper::Reaper::start(db).map_err(unavailable)?),
            None => None,
        };
        Ok(Self {
            tables,
            ops,
            writer: std::sync::Mutex::new(Some(writer)),
            reaper,
            history_retention_ms: Default::default(),
            sweeper: std::sync::atomic::AtomicBool::new(false),
            disk,
            counts,
            media_lock: std::sync::Mutex::new(()),
            notify: notify::NotifyState::default(),
        })
    }

    /// The free space under the store and its floor: below it, every write
    /// is refused with [`StoreError::Full`] (see `space.rs`).
    pub fn disk(&self) -> std::sync::Arc<DiskSpace> {
        std::sync::Arc::clone(&self.disk)
    }

    async fn submit<T>(
        &self,
        op: Op,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.ops.send(op).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Rows and key + value bytes of each table with rows in the store in
/// `dir`, on the engine that wrote it: `(table, rows, bytes)`. A full scan,
/// for measurements; the store must not be open elsewhere.
pub fn table_rows(dir: &Path) -> Result<Vec<(&'static str, u64, u64)>, StoreError> {
    let Some(engine) = Engine::found_in(dir) else {
        return Err(StoreError::Invalid(format!(
            "no store in {}",
            dir.display()
        )));
    };
    // A store with a log keeps it (opened with the log off, it would be
    // applied and removed).
    let log = kv::has_log(dir).then_some(kv::CHECKPOINT_BYTES);
    let db = kv::Db::open_with_log(dir, engine, DEFAULT_CACHE_BYTES, log).map_err(unavailable)?;
    let tables = Tables::open(db)?;
    let _closed = Closing(&tables.db);
    let mut out = Vec::new();
    for (name, table) in tables.each() {
        let (mut rows, mut bytes) = (0u64, 0u64);
        for entry in table.iter() {
            let (k, v) = entry.into_inner().map_err(unavailable)?;
            rows += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        if rows > 0 {
            out.push((name, rows, bytes));
        }
    }
    Ok(out)
}

/// Stops a database's log checkpoints when dropped.
struct Closing<'a>(&'a kv::Db);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        drop(self.reaper.take());
        // Closing the queue ends the writer after it has answered everything.
        let (closed, _) = mpsc::channel(1);
        self.ops = closed;
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
        let _ = self.tables.db.sync();
        self.tables.db.close();
    }
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for m in &batch {
            check_key_part(&m.inbox)?;
            check_key_part(&m.sender)?;
        }
        let (tx, rx) = oneshot::channel();
        self.submit(Op::Append(batch, tx), rx).await
    }

    async fn read_inbox(
        &self,
        inbox: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        check_key_part(inbox)?;
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let messages = self.tables.messages.clone();
        let inbox = inbox.to_owned();
        // A catch-up page may touch disk: keep it off the async threads.
        tokio::task::spawn_blocking(move || {
            let range = message_key(&inbox, first)..=message_key(&inbox, u64::MAX);
            let mut out = Vec::with_capacity(limit.min(256));
            for guard in messages.range(range).take(limit) {
                let (key, value) = guard.into_inner().map_err(unavailable)?;
                out.push(decode_message(&inbox, &key, &value)?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task: {e}")))?
    }

    async fn inbox_head(&self, inbox: &str) -> Result<u64, StoreError> {
        check_key_part(inbox)?;
        read_head(&self.tables.messages, inbox)
    }

    /// One writer assigns seqs and commits them atomically, so a seq at or
    /// below the head is readable or gone: expired and swept (the sweeper
    /// keeps each inbox's newest message, so the head never moves back).
    async fn settled_through(&self, _inbox: &str, head: u64) -> Result<u64, StoreError> {
        Ok(head)
    }

    async fn save_cursor(&self, inbox: &str, device: &str, seq: u64) -> Result<(), StoreError> {
        check_key_part(inbox)?;
        let (tx, rx) = oneshot::channel();
        self.submit(Op::Cursor(cursor_key(inbox, device), seq, tx), rx)
            .await
    }

    async fn load_cursor(&self, inbox: &str, device: &str) -> Result<Option<u64>, StoreError> {
        check_key_part(inbox)?;
        let Some(value) = self
            .tables
            .cursors
            .get(cursor_key(inbox, device))
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let bytes: [u8; 8] = value
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::Corrupt("cursor is not 8 bytes".into()))?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Op::Flush(tx), rx).await
    }
}
