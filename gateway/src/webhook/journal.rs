//! The durable event queue: a directory of batch files under
//! `server.data_dir/webhooks`. The writer appends each batch of events as
//! one file (`<n>.jsonl`, one JSON event a line, written to a temporary
//! file, synced, then renamed, so a file is whole or absent); the worker
//! sends the oldest file's events in order and records how many it sent in
//! `<n>.done` (not synced: after a crash a few events may be sent again,
//! which the event ids let the receiver see), then removes both.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// The writing end.
pub(crate) struct Journal {
    dir: PathBuf,
    next: u64,
}

/// The oldest batch not yet sent whole.
pub(crate) struct Batch {
    path: PathBuf,
    cursor: PathBuf,
    /// Its events, one JSON document each.
    pub(crate) events: Vec<String>,
    /// How many of them were sent already.
    pub(crate) done: usize,
}

fn number(path: &Path, ext: &str) -> Option<u64> {
    if path.extension()? != ext {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}

/// The batch files in order.
fn batches(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(n) = number(&path, "jsonl") {
            found.push((n, path));
        }
    }
    found.sort();
    Ok(found)
}

fn read_batch(path: &Path) -> io::Result<Batch> {
    let events: Vec<String> = fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let cursor = path.with_extension("done");
    let done = match fs::read_to_string(&cursor) {
        Ok(text) => text.trim().parse().unwrap_or(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    Ok(Batch {
        path: path.to_owned(),
        cursor,
        done: done.min(events.len()),
        events,
    })
}

impl Journal {
    /// Opens (creates) the queue in `dir`: drops half-written files and
    /// counts the events still to send.
    pub(crate) fn open(dir: &Path) -> io::Result<(Journal, usize)> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path)?;
            }
        }
        let mut pending = 0;
        let mut next = 1;
        for (n, path) in batches(dir)? {
            let batch = read_batch(&path)?;
            pending += batch.events.len() - batch.done;
            next = n + 1;
        }
        Ok((
            Journal {
                dir: dir.to_owned(),
                next,
            },
            pending,
        ))
    }

    /// Appends `events` as one batch, durable when this returns.
    pub(crate) fn append(&mut self, events: &[String]) -> io::Result<()> {
        let name = format!("{:020}", self.next);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut file = fs::File::create(&tmp)?;
        for event in events {
            file.write_all(event.as_bytes())?;
            file.write_all(b"\n")?;
        }
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(format!("{name}.jsonl")))?;
        fs::File::open(&self.dir)?.sync_all()?;
        self.next += 1;
        Ok(())
    }
}

/// The oldest batch in `dir` with events left to send (whole batches
/// found sent are removed).
pub(crate) fn oldest(dir: &Path) -> io::Result<Option<Batch>> {
    for (_, path) in batches(dir)? {
        let batch = read_batch(&path)?;
        if batch.done < batch.events.len() {
            return Ok(Some(batch));
        }
        finish(&batch)?;
    }
    Ok(None)
}

/// Records that the first `done` events of `batch` were sent.
pub(crate) fn advance(batch: &mut Batch, done: usize) -> io::Result<()> {
    batch.done = done;
    fs::write(&batch.cursor, done.to_string())
}

/// Removes a batch sent whole.
pub(crate) fn finish(batch: &Batch) -> io::Result<()> {
    match fs::remove_file(&batch.cursor) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::remove_file(&batch.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_survive_reopening_and_resume_at_the_cursor() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (mut journal, pending) = Journal::open(dir.path())?;
        assert_eq!(pending, 0);
        journal.append(&["{\"a\":1}".into(), "{\"a\":2}".into()])?;
        journal.append(&["{\"a\":3}".into()])?;
        let mut first = oldest(dir.path())?.ok_or(io::ErrorKind::NotFound)?;
        assert_eq!(first.events.len(), 2);
        advance(&mut first, 1)?;
        fs::write(dir.path().join("00000000000000000009.tmp"), "half")?;

        let (mut journal, pending) = Journal::open(dir.path())?;
        assert_eq!(pending, 2);
        journal.append(&["{\"a\":4}".into()])?;
        let mut first = oldest(dir.path())?.ok_or(io::ErrorKind::NotFound)?;
        assert_eq!((first.done, first.events[1].as_str()), (1, "{\"a\":2}"));
        advance(&mut first, 2)?;
        let second = oldest(dir.path())?.ok_or(io::ErrorKind::NotFound)?;
        assert_eq!(second.events, vec!["{\"a\":3}".to_owned()]);
        finish(&second)?;
        let third = oldest(dir.path())?.ok_or(io::ErrorKind::NotFound)?;
        assert_eq!(third.events, vec!["{\"a\":4}".to_owned()]);
        assert!(!dir.path().join("00000000000000000009.tmp").exists());
        Ok(())
    }
}
