//! The ordered key-value engine under the embedded store: the few
//! operations the store's tables need (point reads and writes, ordered scans
//! in both directions, atomic batches, one durable sync), over the engine
//! a deployment picks (`store.engine`).
//!
//! - **fjall** (the default): a log-structured merge tree with a journal.
//!   Writes go to the journal and a memtable; a batch is atomic; `sync`
//!   fsyncs the journal. Memtables are flushed and compacted in the
//!   background (see `reaper.rs` for how their memory is given back).
//! - **redb**: a copy-on-write B-tree in one file. Every write is a
//!   transaction; a durable commit fsyncs the file, a non-durable one is made
//!   durable by the next durable commit.
//! - **sqlite**: SQLite in WAL mode, one `WITHOUT ROWID` table per keyspace.
//!   A durable commit is `synchronous=FULL`; a non-durable one is made
//!   durable by the next one (one WAL, written in order).
//!
//! Each table is an ordered map of byte strings; scans return keys in
//! ascending byte order (or descending, reversed). The store's writer
//! thread makes every send durable in one batch per group commit, so all
//! three engines see the same writes and syncs.
//!
//! With `store.log` on, every write goes first to the store's own log
//! (`log.rs`) and then to the engine without a sync: a durable commit and
//! `sync` fsync the log, and the engine syncs at the log's checkpoints.

mod log;
mod redb_engine;
mod sqlite_engine;

use std::collections::HashMap;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub(crate) use log::CHECKPOINT_BYTES;
use log::{Log, LogError};

pub(crate) use fjall::Slice;

/// The engine of an embedded store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// fjall (log-structured merge tree), the default.
    #[default]
    Fjall,
    /// redb (copy-on-write B-tree).
    Redb,
    /// SQLite (B-tree with a write-ahead log).
    Sqlite,
}

impl Engine {
    /// Every engine, in the order of the docs.
    pub const ALL: [Engine; 3] = [Engine::Fjall, Engine::Redb, Engine::Sqlite];

    /// The name in `store.engine`.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Fjall => "fjall",
            Engine::Redb => "redb",
            Engine::Sqlite => "sqlite",
        }
    }

    /// The engine whose files `dir` holds, if any.
    pub fn found_in(dir: &Path) -> Option<Engine> {
        if dir.join(redb_engine::FILE).exists() {
            Some(Engine::Redb)
        } else if dir.join(sqlite_engine::FILE).exists() {
            Some(Engine::Sqlite)
        } else if dir.join("version").exists() {
            Some(Engine::Fjall)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Engine::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown store engine {s:?} (fjall, redb or sqlite)"))
    }
}

/// An engine's failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KvError {
    #[error("fjall: {0}")]
    Fjall(#[from] fjall::Error),
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the store in {dir} was written by {found}, not {asked}; set store.engine = \"{found}\""
    )]
    OtherEngine {
        dir: String,
        found: Engine,
        asked: Engine,
    },
    #[error("a batch of one engine was given a table of another")]
    Mismatch,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Log(#[from] LogError),
}

/// Whether the store in `dir` has its own log (`log.rs`).
pub(crate) fn has_log(dir: &Path) -> bool {
    Log::exists(dir)
}

/// How a table's rows are written, which sizes its memtable (fjall).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// Rows added with each message and kept (a message, its send row):
    /// fjall's default memtable of 64 MiB.
    Growing,
    /// A few rows written again with each message (a conversation's record
    /// and its place in the list, cursors, quota counts): a memtable keeps
    /// every version until it is flushed, and the flush keeps the newest
    /// only, so a small memtable holds the same rows in a fraction of the
    /// memory (BENCHMARKS, "Rewritten rows in small memtables").
    Rewritten,
}

/// The memtable of a [`Rows::Rewritten`] table.
const REWRITTEN_MEMTABLE_BYTES: u64 = 4 << 20;

/// An open database: its engine and, with `store.log` on, the store's own
/// log (`log.rs`), through which every write then goes.
#[derive(Clone)]
pub(crate) struct Db {
    engine: EngineDb,
    log: Option<Arc<Log>>,
    /// Whether the log stays on once replayed (a log found in a store
    /// opened with it off is replayed and removed).
    logged: bool,
    /// Every table opened, by name: what a replayed record names.
    tables: Arc<Mutex<HashMap<&'static str, TableKind>>>,
}

#[derive(Clone)]
enum EngineDb {
    Fjall(fjall::Database),
    Redb(redb_engine::Redb),
    Sqlite(sqlite_engine::Sqlite),
}

impl Db {
    /// [`Db::open_with_log`] without the log.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path, engine: Engine, cache_bytes: u64) -> Result<Db, KvError> {
        Self::open_with_log(dir, engine, cache_bytes, None)
    }

    /// Opens (or creates) the database in `dir` with `engine`, refusing a
    /// directory another engine wrote; `cache_bytes` is fjall's block
    /// cache. The store's log is on when `log_every` is set: a checkpoint
    /// every that many bytes of log. Until [`Db::replay_log`], writes go to
    /// the engine alone.
    pub(crate) fn open_with_log(
        dir: &Path,
        engine: Engine,
        cache_bytes: u64,
        log_every: Option<u64>,
    ) -> Result<Db, KvError> {
        if let Some(found) = Engine::found_in(dir).filter(|found| *found != engine) {
            return Err(KvError::OtherEngine {
                dir: dir.display().to_string(),
                found,
                asked: engine,
            });
        }
        let engine = match engine {
            Engine::Fjall => EngineDb::Fjall(
                fjall::Database::builder(dir)
                    // Syncs are explicit: once per group commit.
                    .manual_journal_persist(true)
                    .cache_size(cache_bytes)
                    .open()?,
            ),
            Engine::Redb => EngineDb::Redb(redb_engine::Redb::open(dir)?),
            Engine::Sqlite => EngineDb::Sqlite(sqlite_engine::Sqlite::open(dir)?),
        };
        let log = (log_every.is_some() || Log::exists(dir))
            .then(|| Arc::new(Log::new(dir, log_every.unwrap_or(CHECKPOINT_BYTES))));
        Ok(Db {
            engine,
            log,
            logged: log_every.is_some(),
            tables: Arc::default(),
        })
    }

    /// Applies what the log holds past its checkpoint, makes the engine
    /// durable, then starts the log (or removes it, when the store was
    /// opened with it off). Called once every table is open.
    pub(crate) fn replay_log(&self) -> Result<(), KvError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let tables = lock(&self.tables).clone();
        let mut records = 0u64;
        // Records are applied in order, many to one engine commit.
        let mut pending: Vec<LoggedRow> = Vec::new();
        let end = log.replay(|rows| {
            records += 1;
            for (name, key, value) in rows {
                let (name, kind) = tables
                    .get_key_value(name.as_str())
                    .ok_or_else(|| LogError::UnknownTable(name.clone()))?;
                let table = Table {
                    name,
                    kind: kind.clone(),
                    log: None,
                };
                pending.push((
                    table,
                    Slice::from(&key[..]),
                    value.as_deref().map(Slice::from),
                ));
            }
            if pending.len() >= REPLAY_ROWS {
                self.engine.apply(&pending)?;
                pending.clear();
            }
            Ok::<(), KvError>(())
        })?;
        self.engine.apply(&pending)?;
        self.engine.sync()?;
        if records > 0 {
            tracing::info!(records, "store log: replayed past its checkpoint");
        }
        if self.logged {
            let engine = self.engine.clone();
            log.start(
                end,
                Box::new(move || engine.sync().map_err(|e| e.to_string())),
            )?;
        } else {
            log.retire()?;
        }
        Ok(())
    }

    /// Stops the log's checkpoints (before the store closes).
    pub(crate) fn close(&self) {
        if let Some(log) = &self.log {
            log.stop();
        }
    }

    /// The log, when writes go through it.
    fn active_log(&self) -> Option<&Arc<Log>> {
        self.log.as_ref().filter(|log| log.active())
    }

    /// The table `name`, created if missing, its rows [`Rows::Growing`].
    #[cfg(test)]
    pub(crate) fn table(&self, name: &'static str) -> Result<Table, KvError> {
        self.table_of(name, Rows::Growing)
    }

    /// The table `name`, created if missing, sized for how its rows are
    /// written. The sizes are fixed when fjall creates the table: a store
    /// created before keeps the ones it was created with.
    pub(crate) fn table_of(&self, name: &'static str, rows: Rows) -> Result<Table, KvError> {
        let kind = match &self.engine {
            EngineDb::Fjall(db) => {
                // Every level's filter and index blocks stay in memory
                // (fjall pins the first levels' only): a send's point reads
                // (is this send new? its conversation's record) otherwise
                // load and checksum them from disk once the data outgrows
                // the block cache, on the writer thread, and its share of
                // the writer grew over a ten-minute soak (BENCHMARKS,
                // "Filters and indexes in memory"). They cost about 4% of
                // the data held.
                TableKind::Fjall(db.keyspace(name, || {
                    let all = fjall::config::PinningPolicy::all(true);
                    let options = fjall::KeyspaceCreateOptions::default()
                        .filter_block_pinning_policy(all.clone())
                        .index_block_pinning_policy(all);
                    match rows {
                        Rows::Growing => options,
                        Rows::Rewritten => options.max_memtable_size(REWRITTEN_MEMTABLE_BYTES),
                    }
                })?)
            }
            EngineDb::Redb(db) => TableKind::Redb(db.table(name)?),
            EngineDb::Sqlite(db) => TableKind::Sqlite(db.table(name)?),
        };
        lock(&self.tables).insert(name, kind.clone());
        Ok(Table {
            name,
            kind,
            log: self.log.clone(),
        })
    }

    /// An empty batch.
    pub(crate) fn batch(&self) -> Batch {
        self.batch_with_capacity(0)
    }

    /// An empty batch with room for `rows` writes.
    pub(crate) fn batch_with_capacity(&self, rows: usize) -> Batch {
        if self.active_log().is_some() {
            return Batch::Logged(self.clone(), Vec::with_capacity(rows), false);
        }
        match &self.engine {
            EngineDb::Fjall(db) => {
                Batch::Fjall(fjall::OwnedWriteBatch::with_capacity(db.clone(), rows))
            }
            EngineDb::Redb(db) => Batch::Redb(db.clone(), Writes::with_capacity(rows)),
            EngineDb::Sqlite(db) => Batch::Sqlite(db.clone(), Writes::with_capacity(rows)),
        }
    }

    /// Makes every write committed so far durable (fsync): the log's, when
    /// writes go through it.
    pub(crate) fn sync(&self) -> Result<(), KvError> {
        match self.active_log() {
            Some(log) => Ok(log.sync_all()?),
            None => self.engine.sync(),
        }
    }

    /// Appends `rows` to the log and applies them; durable before it
    /// returns when `durable`.
    fn commit_logged(&self, rows: &[LoggedRow], durable: bool) -> Result<(), KvError> {
        let Some(log) = self.active_log() else {
            return self.engine.apply(rows).and_then(|()| match durable {
                true => self.engine.sync(),
                false => Ok(()),
            });
        };
        let written = log.append(
            rows.iter()
                .map(|(t, key, value)| (t.name, &key[..], value.as_deref())),
            || self.engine.apply(rows),
        )?;
        if durable {
            log.sync(&written)?;
        }
        Ok(())
    }

    /// The names of the tables the database holds.
    #[cfg(test)]
    pub(crate) fn table_names(&self) -> Result<Vec<String>, KvError> {
        match &self.engine {
            EngineDb::Fjall(db) => Ok(db
                .list_keyspace_names()
                .iter()
                .map(|n| n.to_string())
                .collect()),
            EngineDb::Redb(db) => db.table_names(),
            EngineDb::Sqlite(db) => db.table_names(),
        }
    }

    /// The fjall database, when that is the engine.
    pub(crate) fn fjall(&self) -> Option<&fjall::Database> {
        match &self.engine {
            EngineDb::Fjall(db) => Some(db),
            _ => None,
        }
    }

    /// The log, when the store has one.
    #[cfg(test)]
    fn log(&self) -> Option<&Arc<Log>> {
        self.log.as_ref()
    }
}

impl EngineDb {
    /// Makes every write committed to the engine durable.
    fn sync(&self) -> Result<(), KvError> {
        match self {
            EngineDb::Fjall(db) => Ok(db.persist(fjall::PersistMode::SyncAll)?),
            EngineDb::Redb(db) => db.sync(),
            EngineDb::Sqlite(db) => db.sync(),
        }
    }

    /// Writes `rows` in one commit, without a sync.
    fn apply(&self, rows: &[LoggedRow]) -> Result<(), KvError> {
        if rows.is_empty() {
            return Ok(());
        }
        match self {
            EngineDb::Fjall(db) => {
                let mut batch = fjall::OwnedWriteBatch::with_capacity(db.clone(), rows.len());
                for (table, key, value) in rows {
                    let TableKind::Fjall(t) = &table.kind else {
                        return Err(KvError::Mismatch);
                    };
                    match value {
                        Some(value) => batch.insert(t, key.clone(), value.clone()),
                        None => batch.remove(t, key.clone()),
                    }
                }
                Ok(batch.commit()?)
            }
            EngineDb::Redb(db) => db.commit(&writes(rows), false),
            EngineDb::Sqlite(db) => db.commit(&writes(rows), false),
        }
    }
}

fn writes(rows: &[LoggedRow]) -> Vec<Write> {
    rows.iter()
        .map(|(t, key, value)| (t.name, key.clone(), value.clone()))
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Rows of replayed records applied in one engine commit.
const REPLAY_ROWS: usize = 16_384;

/// One row of a batch that goes through the log.
type LoggedRow = (Table, Slice, Option<Slice>);

/// One table: an ordered map of byte strings.
#[derive(Clone)]
pub(crate) struct Table {
    name: &'static str,
    kind: TableKind,
    /// The store's log, through which writes go once it is started.
    log: Option<Arc<Log>>,
}

#[derive(Clone)]
enum TableKind {
    Fjall(fjall::Keyspace),
    Redb(redb_engine::RedbTable),
    Sqlite(sqlite_engine::SqliteTable),
}

impl Table {
    pub(crate) fn get<K: AsRef<[u8]>>(&self, key: K) -> Result<Option<Slice>, KvError> {
        match &self.kind {
            TableKind::Fjall(t) => Ok(t.get(key)?),
            TableKind::Redb(t) => t.get(key.as_ref()),
            TableKind::Sqlite(t) => t.get(key.as_ref()),
        }
    }

    pub(crate) fn contains_key<K: AsRef<[u8]>>(&self, key: K) -> Result<bool, KvError> {
        match &self.kind {
            TableKind::Fjall(t) => Ok(t.contains_key(key)?),
            _ => Ok(self.get(key)?.is_some()),
        }
    }

    /// Writes one row now (durable with the next sync or durable batch).
    pub(crate) fn insert<K: Into<Slice>, V: Into<Slice>>(
        &self,
        key: K,
        value: V,
    ) -> Result<(), KvError> {
        let (key, value): (Slice, Slice) = (key.into(), value.into());
        if let Some(log) = self.log.as_ref().filter(|log| log.active()) {
            log.append([(self.name, &key[..], Some(&value[..]))], || {
                self.kind.insert(key.clone(), value.clone())
            })?;
            return Ok(());
        }
        self.kind.insert(key, value)
    }

    pub(crate) fn is_empty(&self) -> Result<bool, KvError> {
        match &self.kind {
            TableKind::Fjall(t) => Ok(t.is_empty()?),
            _ => match self.iter().next() {
                None => Ok(true),
                Some(entry) => entry.key().map(|_| false),
            },
        }
    }

    /// Rows in the table (a full scan).
    #[cfg(test)]
    pub(crate) fn len(&self) -> Result<usize, KvError> {
        self.iter().try_fold(0, |n, e| e.key().map(|_| n + 1))
    }

    /// The first row, if any.
    pub(crate) fn first_key_value(&self) -> Option<Entry> {
        self.iter().next()
    }

    /// Every row in key order.
    pub(crate) fn iter(&self) -> Iter {
        self.scan((Bound::Unbounded, Bound::Unbounded))
    }

    /// The rows whose keys start with `prefix`, in key order.
    pub(crate) fn prefix<K: AsRef<[u8]>>(&self, prefix: K) -> Iter {
        match &self.kind {
            TableKind::Fjall(t) => Iter::Fjall(t.prefix(prefix)),
            _ => {
                let start = prefix.as_ref().to_vec();
                let end = prefix_end(&start).map_or(Bound::Unbounded, Bound::Excluded);
                self.scan((Bound::Included(start), end))
            }
        }
    }

    /// The rows whose keys fall in `range`, in key order.
    pub(crate) fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        match &self.kind {
            TableKind::Fjall(t) => Iter::Fjall(t.range(range)),
            _ => {
                let owned = |b: Bound<&K>| match b {
                    Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
                    Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
                    Bound::Unbounded => Bound::Unbounded,
                };
                self.scan((owned(range.start_bound()), owned(range.end_bound())))
            }
        }
    }

    fn scan(&self, bounds: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Iter {
        match &self.kind {
            TableKind::Fjall(t) => Iter::Fjall(t.range(bounds)),
            TableKind::Redb(t) => t.scan(bounds),
            TableKind::Sqlite(t) => Iter::Sqlite(t.scan(bounds)),
        }
    }
}

impl TableKind {
    fn insert(&self, key: Slice, value: Slice) -> Result<(), KvError> {
        match self {
            TableKind::Fjall(t) => Ok(t.insert(key, value)?),
            TableKind::Redb(t) => t.insert(key, value),
            TableKind::Sqlite(t) => t.insert(key, value),
        }
    }
}

/// The smallest key above every key starting with `prefix`; `None` when
/// there is none (an empty prefix, or one of only `0xff` bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One row of a scan. Reading it may fail (fjall reads a separated value,
/// redb and SQLite report a failed page read here).
pub(crate) enum Entry {
    Fjall(fjall::Guard),
    Read(Result<(Slice, Slice), KvError>),
}

impl Entry {
    /// The row's key and value.
    pub(crate) fn into_inner(self) -> Result<(Slice, Slice), KvError> {
        match self {
            Entry::Fjall(g) => Ok(g.into_inner()?),
            Entry::Read(r) => r,
        }
    }

    /// The row's key.
    pub(crate) fn key(self) -> Result<Slice, KvError> {
        match self {
            Entry::Fjall(g) => Ok(g.key()?),
            Entry::Read(r) => r.map(|(k, _)| k),
        }
    }
}

/// A scan, in key order or (`rev`) reversed.
pub(crate) enum Iter {
    Fjall(fjall::Iter),
    Redb(redb_engine::RedbIter),
    Sqlite(sqlite_engine::SqliteIter),
    /// The scan could not start: yields the error once.
    Failed(Option<KvError>),
}

impl Iterator for Iter {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        match self {
            Iter::Fjall(i) => i.next().map(Entry::Fjall),
            Iter::Redb(i) => i.next().map(Entry::Read),
            Iter::Sqlite(i) => i.next().map(Entry::Read),
            Iter::Failed(e) => e.take().map(|e| Entry::Read(Err(e))),
        }
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Entry> {
        match self {
            Iter::Fjall(i) => i.next_back().map(Entry::Fjall),
            Iter::Redb(i) => i.next_back().map(Entry::Read),
            Iter::Sqlite(i) => i.next_back().map(Entry::Read),
            Iter::Failed(e) => e.take().map(|e| Entry::Read(Err(e))),
        }
    }
}

/// One row written by a redb or SQLite commit: `(table, key, value)`,
/// no value for a removal.
pub(crate) type Write = (&'static str, Slice, Option<Slice>);

/// The rows of a redb or SQLite batch, written in one transaction at
/// commit.
pub(crate) struct Writes {
    rows: Vec<Write>,
    durable: bool,
}

impl Writes {
    fn with_capacity(rows: usize) -> Self {
        Self {
            rows: Vec::with_capacity(rows),
            durable: false,
        }
    }
}

/// Writes applied together by [`Batch::commit`]: all or none.
pub(crate) enum Batch {
    Fjall(fjall::OwnedWriteBatch),
    Redb(redb_engine::Redb, Writes),
    Sqlite(sqlite_engine::Sqlite, Writes),
    /// Written to the store's log, then to the engine; durable when set.
    Logged(Db, Vec<LoggedRow>, bool),
    /// A write of another engine's table was added: the commit is refused
    /// and nothing of the batch is written.
    Refused,
}

impl Batch {
    pub(crate) fn insert<K: Into<Slice>, V: Into<Slice>>(
        &mut self,
        table: &Table,
        key: K,
        value: V,
    ) {
        self.write(table, key.into(), Some(value.into()));
    }

    pub(crate) fn remove<K: Into<Slice>>(&mut self, table: &Table, key: K) {
        self.write(table, key.into(), None);
    }

    fn write(&mut self, table: &Table, key: Slice, value: Option<Slice>) {
        match (&mut *self, &table.kind) {
            (Batch::Logged(db, rows, _), kind) => {
                if same_engine(&db.engine, kind) {
                    rows.push((table.clone(), key, value));
                } else {
                    *self = Batch::Refused;
                }
            }
            (Batch::Fjall(b), TableKind::Fjall(t)) => match value {
                Some(value) => b.insert(t, key, value),
                None => b.remove(t, key),
            },
            (Batch::Redb(_, w), TableKind::Redb(t)) => w.rows.push((t.name(), key, value)),
            (Batch::Sqlite(_, w), TableKind::Sqlite(t)) => w.rows.push((t.name(), key, value)),
            (Batch::Refused, _) => {}
            _ => *self = Batch::Refused,
        }
    }

    /// The commit fsyncs before it returns.
    #[must_use]
    pub(crate) fn durable(self) -> Self {
        match self {
            Batch::Fjall(b) => Batch::Fjall(b.durability(Some(fjall::PersistMode::SyncAll))),
            Batch::Redb(db, w) => Batch::Redb(db, Writes { durable: true, ..w }),
            Batch::Sqlite(db, w) => Batch::Sqlite(db, Writes { durable: true, ..w }),
            Batch::Logged(db, rows, _) => Batch::Logged(db, rows, true),
            Batch::Refused => Batch::Refused,
        }
    }

    pub(crate) fn commit(self) -> Result<(), KvError> {
        match self {
            Batch::Fjall(b) => Ok(b.commit()?),
            Batch::Redb(db, w) => db.commit(&w.rows, w.durable),
            Batch::Sqlite(db, w) => db.commit(&w.rows, w.durable),
            Batch::Logged(db, rows, durable) => db.commit_logged(&rows, durable),
            Batch::Refused => Err(KvError::Mismatch),
        }
    }
}

/// Whether `kind` is a table of `db`'s engine.
fn same_engine(db: &EngineDb, kind: &TableKind) -> bool {
    matches!(
        (db, kind),
        (EngineDb::Fjall(_), TableKind::Fjall(_))
            | (EngineDb::Redb(_), TableKind::Redb(_))
            | (EngineDb::Sqlite(_), TableKind::Sqlite(_))
    )
}

#[cfg(test)]
mod log_tests;
#[cfg(test)]
mod tests;
