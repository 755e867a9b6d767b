//! The persistent outbox: sends that were accepted from the app but not yet
//! acknowledged by the server, kept in a small append-only journal so that
//! they survive the app being killed, and go out on the next connection with
//! the same `client_msg_id` (the server stores each id once, so a send that
//! did reach the server before the crash is not stored twice).
//!
//! # File format (`outbox.journal` in the client's data directory)
//! A sequence of records, each: tag (1 byte: `A` added, `D` done),
//! payload length (u32 LE), payload, FNV-1a 64 checksum of tag and payload
//! (u64 LE). `A` carries a protobuf `Send`; `D` carries a `client_msg_id`.
//!
//! # Invariants
//! - An `A` record is fsynced before [`OutboxStore::add`] returns, so a send
//!   the app was told is queued survives a crash.
//! - A `D` record is written (not fsynced) when the server acked the send or
//!   refused it for good. Losing it in a crash only means one more resend,
//!   which the server answers with the original ack.
//! - A torn or corrupt tail (a crash mid-write) ends the journal: the file
//!   is truncated to the last whole record on open.
//! - The journal is rewritten with only the pending sends when it opens and
//!   whenever more than [`COMPACT_AFTER`] done records piled up, so its size
//!   is bounded by the pending sends plus that many records.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use prost::Message as _;
use qim_proto::v1;
use thiserror::Error;

/// Done records after which the journal is compacted.
pub(crate) const COMPACT_AFTER: usize = 1024;

/// Largest record accepted when reading (a protobuf `Send` is far smaller;
/// anything larger is corruption).
const MAX_RECORD: usize = 1 << 20;

const FILE_NAME: &str = "outbox.journal";

/// Why the outbox journal could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OutboxStoreError {
    /// Reading or writing the journal failed.
    #[error("outbox journal {path}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// The journal of pending sends in one data directory.
#[derive(Debug)]
pub(crate) struct OutboxStore {
    path: PathBuf,
    file: File,
    /// Client message ids written as `A` and not yet as `D`, to skip
    /// writing `D` twice.
    pending: HashSet<String>,
    done_since_compaction: usize,
}

fn checksum(tag: u8, payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(&tag).chain(payload) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn record(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 13);
    out.push(tag);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(payload);
    out.extend_from_slice(&checksum(tag, payload).to_le_bytes());
    out
}

/// Parses whole records from `bytes`; returns them and the length of the
/// valid prefix.
fn parse(bytes: &[u8]) -> (Vec<(u8, &[u8])>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 5) {
        let tag = header[0];
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !matches!(tag, b'A' | b'D') || len > MAX_RECORD {
            break;
        }
        let Some(payload) = bytes.get(at + 5..at + 5 + len) else {
            break;
        };
        let Some(sum) = bytes.get(at + 5 + len..at + 13 + len) else {
            break;
        };
        let mut sum_bytes = [0u8; 8];
        sum_bytes.copy_from_slice(sum);
        if u64::from_le_bytes(sum_bytes) != checksum(tag, payload) {
            break;
        }
        records.push((tag, payload));
        at += 13 + len;
    }
    (records, at)
}

impl OutboxStore {
    /// Opens (or creates) the journal in `dir`; returns it and the pending
    /// sends in the order they were added.
    pub(crate) fn open(dir: &Path) -> Result<(OutboxStore, Vec<v1::Send>), OutboxStoreError> {
        let path = dir.join(FILE_NAME);
        let io = |source| OutboxStoreError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let (records, valid) = parse(&bytes);
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), valid, len = bytes.len(), "outbox journal has a torn or corrupt tail; dropping it");
        }
        let mut pending: Vec<v1::Send> = Vec::new();
        for (tag, payload) in records {
            match tag {
                b'A' => match v1::Send::decode(payload) {
                    Ok(send)
                        if !pending
                            .iter()
                            .any(|p| p.client_msg_id == send.client_msg_id) =>
                    {
                        pending.push(send);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "skipping an undecodable outbox record"),
                },
                _ => {
                    let id = String::from_utf8_lossy(payload);
                    pending.retain(|p| p.client_msg_id != id);
                }
            }
        }
        let store = Self::rewrite(&path, &pending)?;
        Ok((store, pending))
    }

    /// Writes a journal holding exactly `pending`, atomically (temp file,
    /// fsync, rename).
    fn rewrite(path: &Path, pending: &[v1::Send]) -> Result<OutboxStore, OutboxStoreError> {
        let io = |source| OutboxStoreError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("journal.tmp");
        let mut bytes = Vec::new();
        for send in pending {
            bytes.extend(record(b'A', &send.encode_to_vec()));
        }
        {
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            // Make the rename durable; not every platform can open a dir.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(OutboxStore {
            path: path.to_owned(),
            file,
            pending: pending.iter().map(|s| s.client_msg_id.clone()).collect(),
            done_since_compaction: 0,
        })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> OutboxStoreError + '_ {
        move |source| OutboxStoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Records a new pending send durably. A send already pending is not
    /// written again.
    pub(crate) fn add(&mut self, send: &v1::Send) -> Result<(), OutboxStoreError> {
        if self.pending.contains(&send.client_msg_id) {
            return Ok(());
        }
        self.file
            .write_all(&record(b'A', &send.encode_to_vec()))
            .map_err(self.io())?;
        self.file.sync_data().map_err(self.io())?;
        self.pending.insert(send.client_msg_id.clone());
        Ok(())
    }

    /// Records that a send is finished (acked or refused for good).
    pub(crate) fn done(&mut self, client_msg_id: &str) -> Result<(), OutboxStoreError> {
        if !self.pending.remove(client_msg_id) {
            return Ok(());
        }
        self.file
            .write_all(&record(b'D', client_msg_id.as_bytes()))
            .map_err(self.io())?;
        self.done_since_compaction += 1;
        Ok(())
    }

    /// Compacts when enough done records piled up; `pending` must be the
    /// sends still pending, in order.
    pub(crate) fn maybe_compact(
        &mut self,
        pending: impl FnOnce() -> Vec<v1::Send>,
    ) -> Result<(), OutboxStoreError> {
        if self.done_since_compaction < COMPACT_AFTER {
            return Ok(());
        }
        *self = Self::rewrite(&self.path.clone(), &pending())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(id: &str) -> v1::Send {
        v1::Send {
            client_msg_id: id.into(),
            kind: "text".into(),
            body: id.as_bytes().to_vec().into(),
            ..Default::default()
        }
    }

    fn ids(sends: &[v1::Send]) -> Vec<&str> {
        sends.iter().map(|s| s.client_msg_id.as_str()).collect()
    }

    #[test]
    fn pending_sends_survive_reopening_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut store, pending) = OutboxStore::open(dir.path()).expect("open");
        assert!(pending.is_empty());
        for id in ["a", "b", "c"] {
            store.add(&send(id)).expect("add");
        }
        store.add(&send("a")).expect("again");
        store.done("b").expect("done");
        drop(store);
        let (store, pending) = OutboxStore::open(dir.path()).expect("reopen");
        assert_eq!(ids(&pending), ["a", "c"]);
        assert_eq!(pending[1].body.as_ref(), b"c");
        assert_eq!(store.pending.len(), 2);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut store, _) = OutboxStore::open(dir.path()).expect("open");
        store.add(&send("a")).expect("add");
        store.add(&send("b")).expect("add");
        drop(store);
        let path = dir.path().join(FILE_NAME);
        let len = std::fs::metadata(&path).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(len - 3).expect("truncate");
        drop(f);
        let (mut store, pending) = OutboxStore::open(dir.path()).expect("reopen");
        assert_eq!(ids(&pending), ["a"]);
        store.add(&send("c")).expect("add after repair");
        drop(store);
        let (_, pending) = OutboxStore::open(dir.path()).expect("reopen");
        assert_eq!(ids(&pending), ["a", "c"]);
    }

    #[test]
    fn corruption_ends_the_journal_without_panicking() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut store, _) = OutboxStore::open(dir.path()).expect("open");
        store.add(&send("a")).expect("add");
        store.add(&send("b")).expect("add");
        drop(store);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 12;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let (_, pending) = OutboxStore::open(dir.path()).expect("reopen");
        assert_eq!(ids(&pending), ["a"]);
        std::fs::write(&path, b"garbage\xff\xff\xff\xff").expect("write");
        let (_, pending) = OutboxStore::open(dir.path()).expect("reopen garbage");
        assert!(pending.is_empty());
    }

    #[test]
    fn compaction_bounds_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut store, _) = OutboxStore::open(dir.path()).expect("open");
        for i in 0..COMPACT_AFTER + 1 {
            let id = format!("m{i}");
            store.add(&send(&id)).expect("add");
            store.done(&id).expect("done");
        }
        store.add(&send("left")).expect("add");
        store.maybe_compact(|| vec![send("left")]).expect("compact");
        let len = std::fs::metadata(dir.path().join(FILE_NAME))
            .expect("meta")
            .len();
        assert!(
            len < 100,
            "journal holds only the pending send: {len} bytes"
        );
        drop(store);
        let (_, pending) = OutboxStore::open(dir.path()).expect("reopen");
        assert_eq!(ids(&pending), ["left"]);
    }
}
