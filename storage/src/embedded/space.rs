//! The free space under the embedded store, and the floor below which it
//! takes no more writes.
//!
//! # Why
//! fjall cannot take back a journal write that failed half way: after one
//! (a full disk) it refuses every later write until the database is opened
//! again ([`StoreError::Failed`]). A gateway that then restarts on a disk
//! that is still full fails again at its first write, and again after the
//! next restart. So the store refuses writes *before* they reach fjall
//! while the free space is under the floor ([`StoreError::Full`],
//! retryable); fjall stays healthy, reads go on, and writes succeed again
//! once space is freed, without a restart.
//!
//! # Cost
//! The free space is read with `statvfs` (one system call, no IO) at most
//! every [`RECHECK`] while it is above twice the floor, and on every check
//! (every group commit) below that; a check in between reads two atomics.
//! The floor must exceed what fjall needs to flush and compact (its
//! memtables) and what one group commit writes, which is why it is large
//! by default (the gateway's `store.min_free_bytes`).

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::StoreError;

/// How stale the free space may be when a write is checked.
pub(super) const RECHECK: Duration = Duration::from_millis(250);

/// The free space of the file system under one directory.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    /// Writes are refused while fewer bytes are free; 0: never.
    min_free: AtomicU64,
    /// Bytes free for unprivileged writers at the last look.
    free: AtomicU64,
    /// Whether `free < min_free` at the last look.
    full: AtomicBool,
    /// When the last look was.
    looked: Mutex<Option<Instant>>,
}

impl DiskSpace {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            min_free: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            full: AtomicBool::new(false),
            looked: Mutex::new(None),
        }
    }

    /// Sets the floor: writes are refused while fewer than `bytes` are free
    /// (0: never), and looks at the disk now.
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.min_free.store(bytes, Ordering::Relaxed);
        self.refresh();
    }

    /// The floor ([`set_min_free_bytes`](Self::set_min_free_bytes)).
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free.load(Ordering::Relaxed)
    }

    /// Looks at the disk now; returns the bytes free. A failed look keeps
    /// the last value (and is logged).
    pub fn refresh(&self) -> u64 {
        match rustix::fs::statvfs(&self.dir) {
            Ok(s) => {
                let free = s.f_bavail.saturating_mul(s.f_frsize);
                self.free.store(free, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(dir = %self.dir.display(), error = %e, "statvfs failed"),
        }
        if let Ok(mut looked) = self.looked.lock() {
            *looked = Some(Instant::now());
        }
        let free = self.free.load(Ordering::Relaxed);
        let full = free < self.min_free.load(Ordering::Relaxed);
        let was = self.full.swap(full, Ordering::Relaxed);
        if full != was {
            if full {
                tracing::warn!(
                    free,
                    min_free = self.min_free_bytes(),
                    "disk nearly full: the store refuses writes"
                );
            } else {
                tracing::info!(free, "disk space back: the store takes writes again");
            }
        }
        free
    }

    /// Bytes free at the last look.
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Whether writes are refused, looking at the disk again if the last
    /// look is older than [`RECHECK`].
    pub fn is_full(&self) -> bool {
        if self.min_free.load(Ordering::Relaxed) == 0 {
            return false;
        }
        // Near the floor every check looks again (a statvfs is a system
        // call without IO), so a burst cannot write far past it.
        let near = self.free_bytes() / 2 < self.min_free_bytes();
        let stale = near
            || self
                .looked
                .lock()
                .map(|l| l.is_none_or(|at| at.elapsed() >= RECHECK))
                .unwrap_or(true);
        if stale {
            self.refresh();
        }
        self.full.load(Ordering::Relaxed)
    }

    /// `Err(StoreError::Full)` while writes are refused.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.is_full() {
            Err(StoreError::Full(format!(
                "{} bytes free under {}, below the floor of {}",
                self.free_bytes(),
                self.dir.display(),
                self.min_free_bytes()
            )))
        } else {
            Ok(())
        }
    }
}
