//! The data directory of one user on this device:
//!
//! ```text
//! <data dir>/
//!   outbox/        the SDK's outbox journal: unsent messages survive a restart
//!   local.sqlite   the SDK's local store: history and search offline
//!   resume         the inbox seq processed last: where the next start resumes
//!   downloads/     files saved with /save (unless it names a directory)
//!   lock           held (flock) while a client runs on the directory
//!   desktop.log    logs, unless --log names another file
//! ```
//!
//! The resume point is written after each message the UI took (a small
//! file replaced by rename, so it is never half written). Losing the last
//! write to a crash only means the server sends a few messages again, which
//! the local store and the chat pane recognise by id.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The paths inside one data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Another process holds the data directory.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} is in use by another qim-desktop (one client per data directory; \
     quit the other, or pass --data-dir)"
)]
pub struct InUse(pub PathBuf);

/// The data directory's lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

impl DataDir {
    /// Creates the directory (owner-only where the platform allows).
    pub fn open(root: &Path) -> std::io::Result<DataDir> {
        std::fs::create_dir_all(root)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(DataDir {
            root: root.to_owned(),
        })
    }

    /// Takes the directory for this process: two clients on one
    /// directory would write the same outbox and store. Fails with
    /// [`InUse`] (inside the `io::Error`) when another process holds it.
    pub fn lock(&self) -> std::io::Result<Lock> {
        let path = self.root.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        #[cfg(unix)]
        {
            use rustix::fs::{FlockOperation, flock};
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(std::io::Error::other(InUse(self.root.clone())));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Lock { _file: file })
    }

    /// The SDK's outbox directory.
    pub fn outbox(&self) -> PathBuf {
        self.root.join("outbox")
    }

    /// The SDK's local store.
    pub fn local_store(&self) -> PathBuf {
        self.root.join("local.sqlite")
    }

    /// Where `/save` puts files by default.
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// The default log file.
    pub fn log(&self) -> PathBuf {
        self.root.join("desktop.log")
    }

    fn resume_file(&self) -> PathBuf {
        self.root.join("resume")
    }

    /// The saved resume point (0 when none or unreadable).
    pub fn resume_point(&self) -> u64 {
        std::fs::read_to_string(self.resume_file())
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Saves the resume point.
    pub fn save_resume_point(&self, seq: u64) -> std::io::Result<()> {
        let tmp = self.root.join("resume.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{seq}")?;
        drop(f);
        std::fs::rename(tmp, self.resume_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_second_lock_on_the_directory_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = DataDir::open(dir.path()).expect("open");
        let first = d.lock().expect("the first lock");
        let again = d.lock().expect_err("a second lock");
        assert!(
            again.to_string().contains("in use by another qim-desktop"),
            "{again}"
        );
        drop(first);
        d.lock().expect("free again");
    }

    #[test]
    fn the_resume_point_survives_and_garbage_reads_as_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = DataDir::open(&dir.path().join("u")).expect("open");
        assert_eq!(d.resume_point(), 0);
        d.save_resume_point(42).expect("save");
        assert_eq!(
            DataDir::open(&dir.path().join("u"))
                .expect("open")
                .resume_point(),
            42
        );
        std::fs::write(dir.path().join("u/resume"), "\u{1b}[2J").expect("write");
        assert_eq!(d.resume_point(), 0);
    }
}
