//! The store's own write-ahead log (`store.log`): the durable record of
//! every write, apart from the engine's files.
//!
//! With the log on, every commit of the embedded store is appended to one
//! file in commit order, and applied to the engine without a sync. A
//! durable commit (the writer's group commit) is made durable by one
//! `fdatasync` of the log; the engine syncs only at a checkpoint, in the
//! background, once every [`CHECKPOINT_BYTES`] of log. At open, the records
//! past the last checkpoint are applied to the engine again, in order.
//!
//! Applying a record twice is harmless: a row is written whole (a value or
//! a removal), so once every later record has been applied after it, the
//! rows are what one application leaves. Replay applies every record from
//! the checkpoint to the end.
//!
//! Files in `<store>/log/`:
//! - `<position>.log`, a segment, named by the log position of its first
//!   byte (20 decimal digits). A record is
//!   `[payload length u32 LE][xxh3-64 of the payload u64 LE][payload]`, a
//!   payload one or more rows: `[table name length u8][name][key length
//!   u32 LE][key]` then `0` for a removal or `1 [value length u32 LE][value]`.
//! - `checkpoint`: `[position u64 LE][xxh3-64 of those 8 bytes]`, written to
//!   a temporary file, synced and renamed: every record before the position
//!   is durable in the engine.
//!
//! A new segment starts at each checkpoint, after the one before it was
//! synced. So a damaged record can only be the unsynced tail of the last
//! segment, whose writes were never acknowledged: replay stops there. A
//! damaged record in an earlier segment is refused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// The log's directory in the store's.
pub(crate) const DIR: &str = "log";
const CHECKPOINT: &str = "checkpoint";
/// Log bytes between two checkpoints: what a restart replays at most.
pub(crate) const CHECKPOINT_BYTES: u64 = 64 << 20;
const HEADER: usize = 12;
/// The largest record: one commit's rows.
const MAX_RECORD: usize = 1 << 30;

/// A failure of the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogError {
    #[error("store log: {0}")]
    Io(#[from] io::Error),
    #[error("store log: the record at byte {at} of {file} is damaged, and a later segment follows")]
    Damaged { file: String, at: u64 },
    #[error("store log: the checkpoint file is damaged")]
    Checkpoint,
    #[error("store log: a record names the table {0:?}, which the store does not have")]
    UnknownTable(String),
    #[error("store log: a commit of {0} bytes is over the largest record")]
    TooLarge(usize),
    #[error("store log: a write failed before; the store takes no more writes until restarted")]
    Failed,
    #[error("store log: the engine's sync failed: {0}")]
    Engine(String),
}

/// One row of a record: table, key, value (none: a removal).
pub(crate) type Row<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// One row read back from the log.
pub(crate) type OwnedRow = (String, Vec<u8>, Option<Vec<u8>>);

/// Makes the engine durable (a checkpoint's first step).
pub(crate) type EngineSync = Box<dyn Fn() -> Result<(), String> + Send>;

struct State {
    /// The segment records are appended to; none before [`Log::start`].
    file: Option<Arc<File>>,
    /// The position after the last record.
    end: u64,
    /// The position at which the next checkpoint is due.
    next_checkpoint: u64,
    /// A record's bytes, kept from one append to the next.
    buf: Vec<u8>,
    /// A write or sync failed: nothing more is appended.
    failed: bool,
}

#[derive(Default)]
struct Flags {
    due: bool,
    stop: bool,
}

/// The log of one store.
pub(crate) struct Log {
    dir: PathBuf,
    every: u64,
    state: Mutex<State>,
    /// The position up to which the log is known synced.
    synced: AtomicU64,
    /// The position of the last checkpoint written.
    checkpointed: AtomicU64,
    /// Set by [`Log::start`]: writes go through the log.
    active: AtomicBool,
    flags: Mutex<Flags>,
    wake: Condvar,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

/// Where an append went: what a durable commit syncs.
pub(crate) struct Written {
    file: Arc<File>,
    end: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn segment_name(start: u64) -> String {
    format!("{start:020}.log")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Log {
    /// Whether the store in `store_dir` has a log.
    pub(crate) fn exists(store_dir: &Path) -> bool {
        store_dir.join(DIR).is_dir()
    }

    /// The log of the store in `store_dir`, checkpointed every `every`
    /// bytes. Nothing is read or written until [`Log::replay`].
    pub(crate) fn new(store_dir: &Path, every: u64) -> Self {
        Self {
            dir: store_dir.join(DIR),
            every: every.max(1),
            state: Mutex::new(State {
                file: None,
                end: 0,
                next_checkpoint: 0,
                buf: Vec::new(),
                failed: false,
            }),
            synced: AtomicU64::new(0),
            checkpointed: AtomicU64::new(0),
            active: AtomicBool::new(false),
            flags: Mutex::new(Flags::default()),
            wake: Condvar::new(),
            checkpointer: Mutex::new(None),
        }
    }

    /// Whether writes go through the log.
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// The position of the last checkpoint written.
    #[cfg(test)]
    pub(crate) fn checkpointed(&self) -> u64 {
        self.checkpointed.load(Ordering::Acquire)
    }

    /// Applies every record past the checkpoint, in order, with `apply`;
    /// returns the position after the last whole record.
    pub(crate) fn replay<E: From<LogError>>(
        &self,
        mut apply: impl FnMut(&[OwnedRow]) -> Result<(), E>,
    ) -> Result<u64, E> {
        if !self.dir.is_dir() {
            return Ok(0);
        }
        let checkpoint = read_checkpoint(&self.dir)?;
        let segments = segments(&self.dir)?;
        let mut end = checkpoint;
        for (i, (start, path)) in segments.iter().enumerate() {
            let bytes = fs::read(path).map_err(LogError::from)?;
            let mut at = 0usize;
            while let Some((rows, next)) = read_record(&bytes, at) {
                let pos = start + next as u64;
                if pos > checkpoint {
                    apply(&rows)?;
                }
                end = end.max(pos);
                at = next;
            }
            if at < bytes.len() && i + 1 < segments.len() {
                return Err(LogError::Damaged {
                    file: path.display().to_string(),
                    at: at as u64,
                }
                .into());
            }
            if at < bytes.len() {
                tracing::warn!(
                    file = %path.display(),
                    at,
                    dropped = bytes.len() - at,
                    "store log: its unsynced tail was cut short; replay stops there"
                );
            }
        }
        Ok(end)
    }

    /// Starts appending at `end` (from [`Log::replay`]), once the engine
    /// holds every record before it durably; `sync` makes the engine
    /// durable at each later checkpoint.
    pub(crate) fn start(self: &Arc<Self>, end: u64, sync: EngineSync) -> Result<(), LogError> {
        fs::create_dir_all(&self.dir)?;
        write_checkpoint(&self.dir, end)?;
        for (_, path) in segments(&self.dir)? {
            fs::remove_file(path)?;
        }
        let file = new_segment(&self.dir, end)?;
        {
            let mut st = lock(&self.state);
            st.file = Some(Arc::new(file));
            st.end = end;
            st.next_checkpoint = end.saturating_add(self.every);
        }
        self.synced.store(end, Ordering::Release);
        self.checkpointed.store(end, Ordering::Release);
        let log = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("qim-store-log".into())
            .spawn(move || log.checkpoints(sync))?;
        *lock(&self.checkpointer) = Some(handle);
        self.active.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes the log, once the engine holds every record durably (the
    /// store was opened with the log off).
    pub(crate) fn retire(&self) -> Result<(), LogError> {
        if self.dir.is_dir() {
            fs::remove_dir_all(&self.dir)?;
        }
        Ok(())
    }

    /// Stops the checkpoints (the log itself stays usable).
    pub(crate) fn stop(&self) {
        lock(&self.flags).stop = true;
        self.wake.notify_all();
        if let Some(handle) = lock(&self.checkpointer).take() {
            let _ = handle.join();
        }
    }

    /// Appends `rows` as one record, then runs `apply` before any later
    /// record is appended: the engine sees the writes in the log's order.
    pub(crate) fn append<'a, E: From<LogError>>(
        &self,
        rows: impl IntoIterator<Item = Row<'a>>,
        apply: impl FnOnce() -> Result<(), E>,
    ) -> Result<Written, E> {
        let mut st = lock(&self.state);
        if st.failed {
            return Err(LogError::Failed.into());
        }
        let Some(file) = st.file.clone() else {
            return Err(LogError::Failed.into());
        };
        let mut buf = std::mem::take(&mut st.buf);
        buf.clear();
        buf.resize(HEADER, 0);
        for (name, key, value) in rows {
            encode_row(&mut buf, name, key, value);
        }
        let len = buf.len() - HEADER;
        if len == 0 {
            st.buf = buf;
            return Ok(Written { file, end: st.end });
        }
        if len > MAX_RECORD {
            return Err(LogError::TooLarge(len).into());
        }
        let hash = xxhash_rust::xxh3::xxh3_64(&buf[HEADER..]);
        buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        buf[4..HEADER].copy_from_slice(&hash.to_le_bytes());
        let written = (&*file).write_all(&buf);
        let total = buf.len() as u64;
        // A commit of thousands of rows should not pin its buffer.
        if buf.capacity() <= 1 << 20 {
            st.buf = buf;
        }
        if let Err(e) = written {
            st.failed = true;
            tracing::error!(error = %e, "store log: a write failed");
            return Err(LogError::Io(e).into());
        }
        st.end += total;
        if let Err(e) = apply() {
            st.failed = true;
            return Err(e);
        }
        let end = st.end;
        let due = end >= st.next_checkpoint;
        drop(st);
        if due {
            lock(&self.flags).due = true;
            self.wake.notify_all();
        }
        Ok(Written { file, end })
    }

    /// Makes `written` durable (and everything appended before it).
    pub(crate) fn sync(&self, written: &Written) -> Result<(), LogError> {
        if self.synced.load(Ordering::Acquire) >= written.end {
            return Ok(());
        }
        if let Err(e) = written.file.sync_data() {
            // The kernel may have dropped the unsynced pages: nothing
            // written since can be trusted to reach the disk.
            lock(&self.state).failed = true;
            tracing::error!(error = %e, "store log: a sync failed");
            return Err(e.into());
        }
        self.synced.fetch_max(written.end, Ordering::AcqRel);
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub(crate) fn sync_all(&self) -> Result<(), LogError> {
        let written = {
            let st = lock(&self.state);
            match &st.file {
                Some(file) => Written {
                    file: Arc::clone(file),
                    end: st.end,
                },
                None => return Ok(()),
            }
        };
        self.sync(&written)
    }

    /// The checkpoint thread: waits for a checkpoint to fall due.
    fn checkpoints(&self, sync: EngineSync) {
        loop {
            {
                let mut flags = lock(&self.flags);
                while !flags.due && !flags.stop {
                    flags = self
                        .wake
                        .wait(flags)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if flags.stop {
                    return;
                }
                flags.due = false;
            }
            if let Err(e) = self.checkpoint(&sync) {
                tracing::error!(error = %e, "store log: a checkpoint failed; the log grows until one succeeds");
                let mut st = lock(&self.state);
                st.next_checkpoint = st.end.saturating_add(self.every);
            }
        }
    }

    /// Starts a new segment, makes the engine durable, writes the
    /// checkpoint and removes the segments it covers.
    fn checkpoint(&self, sync: &EngineSync) -> Result<(), LogError> {
        let at = {
            let mut st = lock(&self.state);
            if st.failed {
                return Err(LogError::Failed);
            }
            // Every record before `at` has been applied (appends apply under
            // this lock); the segment is synced before a later one gets
            // records, so a durable commit's sync covers every earlier one.
            let at = st.end;
            if let Some(file) = &st.file {
                if let Err(e) = file.sync_data() {
                    st.failed = true;
                    return Err(e.into());
                }
            }
            st.file = Some(Arc::new(new_segment(&self.dir, at)?));
            st.next_checkpoint = at.saturating_add(self.every);
            at
        };
        self.synced.fetch_max(at, Ordering::AcqRel);
        sync().map_err(LogError::Engine)?;
        write_checkpoint(&self.dir, at)?;
        for (start, path) in segments(&self.dir)? {
            if start < at {
                fs::remove_file(path)?;
            }
        }
        self.checkpointed.store(at, Ordering::Release);
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        lock(&self.flags).stop = true;
        self.wake.notify_all();
    }
}

fn new_segment(dir: &Path, start: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(segment_name(start)))?;
    sync_dir(dir)?;
    Ok(file)
}

/// The segments in `dir`, in log order.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let start = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(start) = start {
            out.push((start, path));
        }
    }
    out.sort();
    Ok(out)
}

fn read_checkpoint(dir: &Path) -> Result<u64, LogError> {
    let bytes = match fs::read(dir.join(CHECKPOINT)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let (Some(pos), Some(hash)) = (bytes.get(..8), bytes.get(8..16)) else {
        return Err(LogError::Checkpoint);
    };
    if bytes.len() != 16 || xxhash_rust::xxh3::xxh3_64(pos).to_le_bytes() != hash {
        return Err(LogError::Checkpoint);
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(pos);
    Ok(u64::from_le_bytes(b))
}

fn write_checkpoint(dir: &Path, at: u64) -> Result<(), LogError> {
    let pos = at.to_le_bytes();
    let mut bytes = pos.to_vec();
    bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&pos).to_le_bytes());
    let tmp = dir.join("checkpoint.tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(CHECKPOINT))?;
    sync_dir(dir)?;
    Ok(())
}

fn encode_row(buf: &mut Vec<u8>, name: &str, key: &[u8], value: Option<&[u8]>) {
    // Table names are the store's own, a few bytes long.
    let name = &name.as_bytes()[..name.len().min(u8::MAX as usize)];
    buf.push(name.len() as u8);
    buf.extend_from_slice(name);
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    match value {
        None => buf.push(0),
        Some(value) => {
            buf.push(1);
            buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            buf.extend_from_slice(value);
        }
    }
}

/// The record at `at` of a segment's bytes and the offset after it; none
/// at the end or at a damaged record.
fn read_record(bytes: &[u8], at: usize) -> Option<(Vec<OwnedRow>, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let hash = u64::from_le_bytes(header[4..].try_into().ok()?);
    let start = at + HEADER;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    if len == 0 || xxhash_rust::xxh3::xxh3_64(payload) != hash {
        return None;
    }
    let mut rows = Vec::new();
    let mut p = Reader(payload);
    while !p.0.is_empty() {
        let name_len = p.take(1)?[0] as usize;
        let name = String::from_utf8(p.take(name_len)?.to_vec()).ok()?;
        let key_len = p.u32()? as usize;
        let key = p.take(key_len)?.to_vec();
        let value = match p.take(1)?[0] {
            0 => None,
            1 => {
                let n = p.u32()? as usize;
                Some(p.take(n)?.to_vec())
            }
            _ => return None,
        };
        rows.push((name, key, value));
    }
    Some((rows, start + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}
