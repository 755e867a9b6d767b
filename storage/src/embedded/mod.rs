//! The embedded backend: one fjall database under the data directory.
//!
//! # Why fjall
//! Measured on these 2-core machines (200k records of 200 bytes, 100 per
//! durable commit; see `shared/NOTES.md`): fjall 3.1 wrote ≈ 145–200k
//! records/s with one fsync per batch against redb 4.5's ≈ 50k, and took 46 MB
//! on disk against 128 MiB. redb reads a page of 100 faster (≈ 15 µs against
//! ≈ 90 µs), but the gateway reads the store only to catch a device up; live
//! delivery is served from memory. Durable writes are on every message's path,
//! so the write rate decides.
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
//! in one atomic fjall batch committed with `PersistMode::SyncAll`, and only
//! then answers each caller. fjall syncs the journal *before* it applies the
//! batch to the memtables, so nothing is readable before it is durable: a
//! reader can never see a seq that a crash could take back and reissue. Under
//! load, one fsync covers hundreds of messages; with one caller, latency is
//! one fsync. Cursor updates ride along with the next group (coalesced per
//! device) and never make async callers wait on the journal lock.
//!
//! If one append cannot be staged (an unreadable record), only that append
//! fails; its staged seqs are rolled back and the rest of the group commits.
//! If a commit itself fails, fjall refuses all further writes (its journal
//! may be torn): the store then answers every write with
//! [`StoreError::Failed`], and the gateway drains and exits so a restart
//! replays the journal.
//!
//! # Freeing flushed memtables
//! fjall frees a flushed memtable while holding locks every commit takes;
//! a thread of ours keeps a reference to each memtable so the freeing
//! happens there instead (`reaper.rs`).
//!
//! # Keys
//! - `messages`: `[len u8][inbox][seq u64 BE]` → protobuf `v1.Message`. The
//!   length prefix keeps inbox `ab` from sharing a prefix with `abc`; the
//!   big-endian seq makes a range scan return an inbox in seq order.
//! - `idempotency`: `[len u8][sender][client_msg_id]` → the message key.
//! - `cursors`: `[len u8][inbox][device]` → `u64 BE`.

use std::collections::HashMap;
use std::path::Path;
use std::thread::JoinHandle;

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use prost::Message as _;
use qim_proto::v1;
use tokio::sync::{mpsc, oneshot};

use crate::model::{Appended, NewMessage, StoredMessage, new_msg_id};
use crate::{MessageStore, StoreError};

/// Most messages committed by one disk sync.
pub const MAX_BATCH: usize = 4096;

/// Append requests waiting for the writer; senders wait when it is full.
const QUEUE: usize = 1024;

/// Inbox heads cached by the writer before the cache is dropped and refilled
/// from disk (bounds memory with many users).
const MAX_CACHED_HEADS: usize = 1 << 20;

type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

enum Op {
    Append(Vec<NewMessage>, Reply),
    /// Committed with the next group, without a sync of its own.
    Cursor(Vec<u8>, u64, oneshot::Sender<Result<(), StoreError>>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
    /// Posts and conversation operations (`conversations.rs`).
    Im(Box<conversations::Request>),
}

mod contacts;
mod conversations;
mod groups;
mod presence;
mod reaper;
mod schedule;

#[derive(Clone)]
struct Tables {
    db: Database,
    messages: Keyspace,
    idempotency: Keyspace,
    cursors: Keyspace,
    conversations: Keyspace,
    conv_order: Keyspace,
    conv_msgs: Keyspace,
    msg_ids: Keyspace,
    groups: Keyspace,
    members: Keyspace,
    user_groups: Keyspace,
    contacts: Keyspace,
    blocks: Keyspace,
    scheduled: Keyspace,
    schedule_ids: Keyspace,
    sessions_log: Keyspace,
    last_seen: Keyspace,
    /// `[len][recipient][msg_id]` → empty: a delivery receipt was appended.
    receipts: Keyspace,
}

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
}

/// How often expired messages are deleted: a tenth of the retention,
/// between a second and ten minutes.
pub fn sweep_interval(retention_ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis((retention_ms / 10).clamp(1_000, 600_000))
}

/// The time before which messages are expired under `retention` (ms;
/// `i64::MIN` when kept forever).
fn cutoff_ms(retention: &std::sync::atomic::AtomicU64) -> i64 {
    match retention.load(std::sync::atomic::Ordering::Relaxed) {
        0 => i64::MIN,
        ms => qim_proto::now_ms().saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)),
    }
}

/// The sweeper thread: every `every`, deletes what expired, until the
/// store is closed (it holds only a weak handle, so it never keeps the
/// store open).
fn sweeper(
    ops: mpsc::WeakSender<Op>,
    retention: std::sync::Arc<std::sync::atomic::AtomicU64>,
    every: std::time::Duration,
) {
    loop {
        std::thread::sleep(every);
        let Some(ops) = ops.upgrade() else {
            return;
        };
        let cutoff_ms = cutoff_ms(&retention);
        if cutoff_ms == i64::MIN {
            continue;
        }
        let mut from = None;
        loop {
            let (tx, rx) = oneshot::channel();
            let request = conversations::Request::Sweep {
                cutoff_ms,
                from: from.take(),
                reply: tx,
            };
            if ops.blocking_send(Op::Im(Box::new(request))).is_err() {
                return;
            }
            match rx.blocking_recv() {
                Ok(Ok((deleted, next))) => {
                    if deleted > 0 {
                        tracing::debug!(deleted, "expired messages deleted");
                    }
                    match next {
                        Some(next) => from = Some(next),
                        None => break,
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "deleting expired messages failed");
                    break;
                }
                Err(_) => return,
            }
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Fails if another process has it
    /// open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let db = Database::builder(dir)
            // Syncs are explicit: once per group commit.
            .manual_journal_persist(true)
            .open()
            .map_err(unavailable)?;
        let keyspace = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let tables = Tables {
            messages: keyspace("messages").map_err(unavailable)?,
            idempotency: keyspace("idempotency").map_err(unavailable)?,
            cursors: keyspace("cursors").map_err(unavailable)?,
            conversations: keyspace("conversations").map_err(unavailable)?,
            conv_order: keyspace("conv_order").map_err(unavailable)?,
            conv_msgs: keyspace("conv_msgs").map_err(unavailable)?,
            msg_ids: keyspace("msg_ids").map_err(unavailable)?,
            groups: keyspace("groups").map_err(unavailable)?,
            members: keyspace("members").map_err(unavailable)?,
            user_groups: keyspace("user_groups").map_err(unavailable)?,
            contacts: keyspace("contacts").map_err(unavailable)?,
            blocks: keyspace("blocks").map_err(unavailable)?,
            scheduled: keyspace("scheduled").map_err(unavailable)?,
            schedule_ids: keyspace("schedule_ids").map_err(unavailable)?,
            sessions_log: keyspace("sessions_log").map_err(unavailable)?,
            last_seen: keyspace("last_seen").map_err(unavailable)?,
            receipts: keyspace("receipts").map_err(unavailable)?,
            db,
        };
        let (ops, rx) = mpsc::channel(QUEUE);
        let writer_tables = tables.clone();
        let writer = std::thread::Builder::new()
            .name("qim-store-writer".into())
            .spawn(move || Writer::new(writer_tables).run(rx))
            .map_err(unavailable)?;
        let reaper = reaper::Reaper::start(&tables.db).map_err(unavailable)?;
        Ok(Self {
            tables,
            ops,
            writer: std::sync::Mutex::new(Some(writer)),
            reaper: Some(reaper),
            history_retention_ms: Default::default(),
            sweeper: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sets how long messages are kept (milliseconds; 0: forever). History
    /// pages stop at older messages and say so
    /// ([`HistoryPage::expired`](crate::conversations::HistoryPage::expired)),
    /// and a background thread deletes them from disk every
    /// [`sweep_interval`] ([`sweep_expired`](Self::sweep_expired)).
    pub fn set_history_retention_ms(&self, ms: u64) {
        self.history_retention_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
        if ms > 0
            && !self
                .sweeper
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let ops = self.ops.downgrade();
            let retention = std::sync::Arc::clone(&self.history_retention_ms);
            let every = sweep_interval(ms);
            let spawned = std::thread::Builder::new()
                .name("qim-store-sweeper".into())
                .spawn(move || sweeper(ops, retention, every));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start the retention sweeper");
            }
        }
    }

    /// Deletes every message older than the retention from disk now (see
    /// the writer's sweep for what is kept); returns how many. Runs in
    /// steps of at most a thousand messages, each one durable commit, so
    /// writes of other callers go on in between.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        let cutoff_ms = self.history_cutoff_ms();
        if cutoff_ms == i64::MIN {
            return Ok(0);
        }
        let mut total = 0;
        let mut from = None;
        loop {
            let (tx, rx) = oneshot::channel();
            self.ops
                .send(Op::Im(Box::new(conversations::Request::Sweep {
                    cutoff_ms,
                    from,
                    reply: tx,
                })))
                .await
                .map_err(|_| StoreError::Closed)?;
            let (deleted, next) = rx.await.map_err(|_| StoreError::Closed)??;
            total += deleted;
            match next {
                Some(next) => from = Some(next),
                None => return Ok(total),
            }
        }
    }

    /// Messages stored before this time (ms since the epoch) are expired.
    pub(crate) fn history_cutoff_ms(&self) -> i64 {
        cutoff_ms(&self.history_retention_ms)
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

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        drop(self.reaper.take());
        // Closing the queue ends the writer after it has answered everything.
        let (closed, _) = mpsc::channel(1);
        self.ops = closed;
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
        let _ = self.tables.db.persist(PersistMode::SyncAll);
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

/// Owns sequence assignment and all message writes.
struct Writer {
    tables: Tables,
    /// Set when a commit failed; every later write fails with it.
    failed: Option<String>,
    /// Newest seq per inbox, loaded from disk on first use.
    heads: HashMap<String, u64>,
    /// Emptied maps kept for the next commit.
    scratch: conversations::Scratch,
}

impl Writer {
    fn new(tables: Tables) -> Self {
        Self {
            tables,
            failed: None,
            heads: HashMap::new(),
            scratch: conversations::Scratch::default(),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        while let Some(first) = rx.blocking_recv() {
            let mut appends: Vec<(Vec<NewMessage>, Reply)> = Vec::new();
            let mut cursors: HashMap<Vec<u8>, u64> = HashMap::new();
            let mut cursor_replies = Vec::new();
            let mut flushes = Vec::new();
            let mut ims = Vec::new();
            let mut count = 0;
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    Op::Append(batch, reply) => {
                        count += batch.len();
                        appends.push((batch, reply));
                    }
                    Op::Cursor(key, seq, reply) => {
                        cursors.insert(key, seq);
                        cursor_replies.push(reply);
                    }
                    Op::Flush(reply) => flushes.push(reply),
                    Op::Im(request) => {
                        count += 1;
                        ims.push(*request);
                    }
                }
                if count < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if let Some(reason) = &self.failed {
                let error = StoreError::Failed(reason.clone());
                for (_, reply) in appends {
                    let _ = reply.send(Err(error.clone()));
                }
                for reply in cursor_replies {
                    let _ = reply.send(Err(error.clone()));
                }
                for reply in flushes {
                    let _ = reply.send(Err(error.clone()));
                }
                for request in ims {
                    request.fail(error.clone());
                }
                continue;
            }
            let cursors_saved = self.commit(appends, cursors, !flushes.is_empty());
            self.commit_im(ims);
            for reply in cursor_replies {
                let _ = reply.send(cursors_saved.clone());
            }
            for reply in flushes {
                let _ = reply.send(
                    self.tables
                        .db
                        .persist(PersistMode::SyncAll)
                        .map_err(unavailable),
                );
            }
        }
    }

    /// Writes every waiting request in one batch, durable before visible,
    /// then answers.
    fn commit(
        &mut self,
        appends: Vec<(Vec<NewMessage>, Reply)>,
        cursors: HashMap<Vec<u8>, u64>,
        sync: bool,
    ) -> Result<(), StoreError> {
        if appends.is_empty() && cursors.is_empty() {
            return Ok(());
        }
        if self.heads.len() > MAX_CACHED_HEADS {
            self.heads.clear();
        }
        let mut batch = self.tables.db.batch();
        for (key, seq) in cursors {
            batch.insert(&self.tables.cursors, key, seq.to_be_bytes().to_vec());
        }
        // Idempotency keys written by this group, not yet on disk.
        let mut pending: HashMap<Vec<u8>, StoredMessage> = HashMap::new();
        let mut staged = Vec::with_capacity(appends.len());
        for (messages, reply) in appends {
            match self.stage_append(&mut batch, &mut pending, messages) {
                Ok(out) => staged.push((out, reply)),
                Err(e) => {
                    tracing::warn!(error = %e, "append refused; the rest of the group goes on");
                    let _ = reply.send(Err(e));
                }
            }
        }
        let durable = !staged.is_empty() || sync;
        let batch = batch.durability(durable.then_some(PersistMode::SyncAll));
        match batch.commit().map_err(unavailable) {
            Ok(()) => {
                for (out, reply) in staged {
                    let _ = reply.send(Ok(out));
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; nothing of the group is acknowledged, and the store takes no more writes until restarted");
                let error = StoreError::Failed(e.to_string());
                self.failed = Some(e.to_string());
                for (_, reply) in staged {
                    let _ = reply.send(Err(error.clone()));
                }
                Err(error)
            }
        }
    }

    /// Stages one caller's messages; on failure nothing of them is staged
    /// and the heads they moved are put back.
    fn stage_append(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        pending: &mut HashMap<Vec<u8>, StoredMessage>,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut inserts = Vec::new();
        let mut undo_heads: Vec<(String, Option<u64>)> = Vec::new();
        let mut new_keys = Vec::new();
        let mut out = Vec::with_capacity(messages.len());
        let mut result = Ok(());
        for new in messages {
            match self.stage(pending, &mut inserts, &mut undo_heads, &mut new_keys, new) {
                Ok(appended) => out.push(appended),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            for (inbox, head) in undo_heads.into_iter().rev() {
                match head {
                    Some(head) => self.heads.insert(inbox, head),
                    None => self.heads.remove(&inbox),
                };
            }
            for key in new_keys {
                pending.remove(&key);
            }
            return Err(e);
        }
        for (table, key, value) in inserts {
            let keyspace = match table {
                Table::Messages => &self.tables.messages,
                Table::Idempotency => &self.tables.idempotency,
            };
            batch.insert(keyspace, key, value);
        }
        Ok(out)
    }

    fn stage(
        &mut self,
        pending: &mut HashMap<Vec<u8>, StoredMessage>,
        inserts: &mut Vec<(Table, Vec<u8>, Vec<u8>)>,
        undo_heads: &mut Vec<(String, Option<u64>)>,
        new_keys: &mut Vec<Vec<u8>>,
        new: NewMessage,
    ) -> Result<Appended, StoreError> {
        let idem_key = idempotency_key(&new.sender, &new.client_msg_id);
        if let Some(original) = pending.get(&idem_key) {
            return Ok(Appended {
                message: original.clone(),
                duplicate: true,
            });
        }
        if let Some(msg_key) = self
            .tables
            .idempotency
            .get(&idem_key)
            .map_err(unavailable)?
        {
            let value = self
                .tables
                .messages
                .get(&msg_key)
                .map_err(unavailable)?
                .ok_or_else(|| StoreError::Corrupt("idempotency key without its message".into()))?;
            let (inbox, _) = split_message_key(&msg_key)?;
            let original = decode_message(&inbox, &msg_key, &value)?;
            return Ok(Appended {
                message: original,
                duplicate: true,
            });
        }
        let cached = self.heads.get(&new.inbox).copied();
        let head = match cached {
            Some(head) => head,
            None => read_head(&self.tables.messages, &new.inbox)?,
        };
        let seq = head + 1;
        undo_heads.push((new.inbox.clone(), cached));
        self.heads.insert(new.inbox.clone(), seq);
        let msg_id = new_msg_id(new.server_time_ms);
        let stored = StoredMessage::from_new(new, seq, msg_id);
        let key = message_key(&stored.inbox, seq);
        inserts.push((Table::Messages, key.clone(), stored.message.encode_to_vec()));
        inserts.push((Table::Idempotency, idem_key.clone(), key));
        pending.insert(idem_key.clone(), stored.clone());
        new_keys.push(idem_key);
        Ok(Appended {
            message: stored,
            duplicate: false,
        })
    }
}

/// Which keyspace a staged insert goes to.
enum Table {
    Messages,
    Idempotency,
}

fn check_key_part(part: &str) -> Result<(), StoreError> {
    if part.is_empty() || part.len() > usize::from(u8::MAX) {
        return Err(StoreError::Invalid(format!(
            "id of {} bytes (1 to 255 allowed)",
            part.len()
        )));
    }
    Ok(())
}

fn prefixed(part: &str, extra: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + part.len() + extra);
    // Length checked by `check_key_part` at every entry point.
    key.push(part.len() as u8);
    key.extend_from_slice(part.as_bytes());
    key
}

fn message_key(inbox: &str, seq: u64) -> Vec<u8> {
    let mut key = prefixed(inbox, 8);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn idempotency_key(sender: &str, client_msg_id: &str) -> Vec<u8> {
    let mut key = prefixed(sender, client_msg_id.len());
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

fn cursor_key(inbox: &str, device: &str) -> Vec<u8> {
    let mut key = prefixed(inbox, device.len());
    key.extend_from_slice(device.as_bytes());
    key
}

fn split_message_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let corrupt = || StoreError::Corrupt("bad message key".into());
    let (&len, rest) = key.split_first().ok_or_else(corrupt)?;
    let len = usize::from(len);
    if rest.len() != len + 8 {
        return Err(corrupt());
    }
    let inbox = std::str::from_utf8(&rest[..len]).map_err(|_| corrupt())?;
    let seq: [u8; 8] = rest[len..].try_into().map_err(|_| corrupt())?;
    Ok((inbox.to_owned(), u64::from_be_bytes(seq)))
}

fn decode_message(inbox: &str, key: &[u8], value: &[u8]) -> Result<StoredMessage, StoreError> {
    let (_, seq) = split_message_key(key)?;
    let message = v1::Message::decode(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(StoredMessage {
        inbox: inbox.to_owned(),
        seq,
        message,
    })
}

fn read_head(messages: &Keyspace, inbox: &str) -> Result<u64, StoreError> {
    match messages.prefix(prefixed(inbox, 0)).next_back() {
        None => Ok(0),
        Some(guard) => {
            let (key, _) = guard.into_inner().map_err(unavailable)?;
            Ok(split_message_key(&key)?.1)
        }
    }
}
