//! `sync-probe`: how long a small write and `fdatasync` takes on a disk
//! while another thread writes and syncs large files, as the embedded
//! store's group commit does while fjall writes out a flushed memtable or a
//! compaction's tables (BENCHMARKS, "What the tail waits on at 5,000/s").
//! It runs no gateway: it tells the disk's part of the tail from the
//! store's.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use rand::RngCore as _;

use crate::stats;

/// The probe's journal file, as it is laid out before the timed writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Journal {
    /// Sized with `set_len` and never written: each write allocates
    /// blocks (fjall's journal is created this way).
    Sparse,
    /// Written whole and synced first: a write allocates nothing.
    Written,
    /// Empty: each write grows the file.
    Appended,
}

/// What the other thread does.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Tables {
    /// Nothing: the disk on its own.
    None,
    /// Writes a file whole, then `fsync`s it (fjall's table writer).
    Fsync,
    /// Syncs each MiB as it is written, then the whole file.
    SyncEachMib,
}

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ProbeArgs {
    /// A directory on the disk to probe; the probe's files are removed at
    /// the end.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, value_enum, default_value = "written")]
    journal: Journal,
    #[arg(long, value_enum, default_value = "fsync")]
    tables: Tables,
    /// How long the timed writes run.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Bytes per timed write (a group commit at 5,000/s is about 2,400).
    #[arg(long, default_value_t = 2400)]
    record_bytes: usize,
    /// Pause between timed writes, in microseconds.
    #[arg(long, default_value_t = 500)]
    interval_us: u64,
    /// Size of each file the other thread writes, in MiB.
    #[arg(long, default_value_t = 64)]
    table_mib: usize,
}

const MIB: usize = 1 << 20;
/// The size of a sparse or written journal file; writes wrap around in it.
const JOURNAL_BYTES: u64 = 64 << 20;

pub(crate) fn run(a: ProbeArgs) -> Result<serde_json::Value> {
    std::fs::create_dir_all(&a.dir).with_context(|| a.dir.display().to_string())?;
    let journal_path = a.dir.join("sync-probe-journal");
    let table_path = a.dir.join("sync-probe-table");
    let journal = prepare_journal(&journal_path, a.journal)?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = match a.tables {
        Tables::None => None,
        mode => {
            let stop = stop.clone();
            let path = table_path.clone();
            let mib = a.table_mib;
            Some(std::thread::spawn(move || {
                write_tables(&path, mode, mib, &stop)
            }))
        }
    };
    let timed = time_syncs(&journal, &a);
    stop.store(true, Ordering::Relaxed);
    let tables_written = match writer {
        Some(w) => w
            .join()
            .map_err(|_| anyhow::anyhow!("the table writer panicked"))??,
        None => 0,
    };
    let _ = std::fs::remove_file(&journal_path);
    let _ = std::fs::remove_file(&table_path);
    let (h, over_20_ms) = timed?;
    let latency = stats::latency_json(&h);
    eprintln!(
        "sync-probe: journal {:?}, tables {:?}: {} syncs, p50 {} p99 {} p99.9 {} max {} ms, {over_20_ms} over 20 ms",
        a.journal,
        a.tables,
        latency["count"],
        latency["p50_ms"],
        latency["p99_ms"],
        latency["p999_ms"],
        latency["max_ms"],
    );
    let result = serde_json::json!({
        "scenario": "sync-probe",
        "journal": format!("{:?}", a.journal).to_lowercase(),
        "tables": format!("{:?}", a.tables).to_lowercase(),
        "tables_written": tables_written,
        "over_20_ms": over_20_ms,
        "ok": !h.is_empty(),
        "latency": latency,
    });
    Ok(result)
}

fn prepare_journal(path: &Path, mode: Journal) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| path.display().to_string())?;
    match mode {
        Journal::Sparse => file.set_len(JOURNAL_BYTES)?,
        Journal::Written => {
            let zeros = vec![0u8; MIB];
            let mut w = &file;
            for _ in 0..JOURNAL_BYTES / MIB as u64 {
                w.write_all(&zeros)?;
            }
        }
        Journal::Appended => {}
    }
    file.sync_all()?;
    Ok(file)
}

/// Writes `record_bytes` and `fdatasync`s, every `interval_us`, for
/// `seconds`: the time of each write and sync, and how many took over
/// 20 ms.
fn time_syncs(journal: &File, a: &ProbeArgs) -> Result<(Histogram<u64>, u64)> {
    let record = vec![0x5au8; a.record_bytes.max(1)];
    let wrap = match a.journal {
        Journal::Appended => u64::MAX,
        _ => JOURNAL_BYTES,
    };
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    let mut offset = 0u64;
    let mut h = stats::histogram();
    let mut over_20_ms = 0;
    while Instant::now() < end {
        let started = stats::now_ns();
        journal.write_all_at(&record, offset)?;
        journal.sync_data()?;
        let ended = stats::now_ns();
        stats::record_between(&mut h, started, ended);
        if ended.saturating_sub(started) > 20_000_000 {
            over_20_ms += 1;
        }
        offset += record.len() as u64;
        if offset + record.len() as u64 > wrap {
            offset = 0;
        }
        std::thread::sleep(Duration::from_micros(a.interval_us));
    }
    Ok((h, over_20_ms))
}

/// Writes a file of `mib` MiB as `mode` says, removes it, rests a second,
/// and again until `stop`. Returns how many files it wrote.
fn write_tables(path: &Path, mode: Tables, mib: usize, stop: &AtomicBool) -> Result<u64> {
    // Bytes that do not compress, in case the disk does.
    let mut chunk = vec![0u8; MIB];
    rand::rng().fill_bytes(&mut chunk);
    let mut written = 0;
    // At least one file, however short the probe.
    loop {
        let mut file = File::create(path).with_context(|| path.display().to_string())?;
        for _ in 0..mib {
            file.write_all(&chunk)?;
            if matches!(mode, Tables::SyncEachMib) {
                file.sync_data()?;
            }
        }
        file.sync_all()?;
        drop(file);
        std::fs::remove_file(path)?;
        written += 1;
        for _ in 0..10 {
            if stop.load(Ordering::Relaxed) {
                return Ok(written);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short probe with the other thread writing: it times syncs, the
    /// other thread finishes a file, and both files are gone afterwards.
    #[test]
    fn a_short_probe_times_syncs_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("qim-sync-probe-{}", std::process::id()));
        let args = ProbeArgs {
            dir: dir.clone(),
            journal: Journal::Sparse,
            tables: Tables::SyncEachMib,
            seconds: 0.3,
            record_bytes: 512,
            interval_us: 100,
            table_mib: 1,
        };
        let result = run(args).expect("probe");
        assert!(
            result["latency"]["count"].as_u64().is_some_and(|n| n > 0),
            "{result}"
        );
        assert!(
            result["tables_written"].as_u64().is_some_and(|n| n >= 1),
            "{result}"
        );
        assert!(
            result["latency"]["p50_ms"]
                .as_f64()
                .is_some_and(|ms| ms > 0.0)
        );
        let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").collect();
        assert!(left.is_empty(), "files left: {left:?}");
        let _ = std::fs::remove_dir(&dir);
    }
}
