//! [`FileBlobs`]: blob bytes as files under a directory.
//!
//! - `staging/<user hash>-<blob hex>`: an upload being staged; each
//!   [`stage`](BlobBytes::stage) cuts it at the offset, appends, and
//!   syncs the data before it returns.
//! - `blobs/<first two hex>/<blob hex>`: a published blob, moved there by
//!   a rename (atomic on one file system) and never written again.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobBytes, BlobId};
use crate::StoreError;

/// Blob bytes as files under one directory.
#[derive(Debug, Clone)]
pub struct FileBlobs {
    root: PathBuf,
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("blob file: {e}"))
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("blob task: {e}")))?
}

impl FileBlobs {
    /// Blob files under `root` (created when missing).
    pub fn open(root: &Path) -> Result<FileBlobs, StoreError> {
        std::fs::create_dir_all(root.join("staging")).map_err(io)?;
        std::fs::create_dir_all(root.join("blobs")).map_err(io)?;
        Ok(FileBlobs {
            root: root.to_owned(),
        })
    }

    fn staged(&self, user: &str, id: &BlobId) -> PathBuf {
        // The user's id is hashed: file names never carry user input.
        let user = blake3::hash(user.as_bytes()).to_hex();
        self.root
            .join("staging")
            .join(format!("{}-{}", &user[..32], id.hex()))
    }

    fn blob(&self, id: &BlobId) -> PathBuf {
        let hex = id.hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }
}

#[async_trait]
impl BlobBytes for FileBlobs {
    async fn stage(
        &self,
        user: &str,
        id: &BlobId,
        offset: u64,
        data: Vec<Bytes>,
    ) -> Result<(), StoreError> {
        let path = self.staged(user, id);
        blocking(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            if len < offset {
                return Err(StoreError::Invalid(format!(
                    "staged {len} bytes, asked to write at {offset}"
                )));
            }
            file.set_len(offset).map_err(io)?;
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            for chunk in &data {
                file.write_all(chunk).map_err(io)?;
            }
            file.sync_data().map_err(io)
        })
        .await
    }

    async fn staged_hash(&self, user: &str, id: &BlobId, len: u64) -> Result<BlobId, StoreError> {
        let path = self.staged(user, id);
        blocking(move || {
            let file = std::fs::File::open(&path).map_err(io)?;
            let mut hasher = blake3::Hasher::new();
            let mut limited = file.take(len);
            let mut buf = vec![0u8; 256 * 1024];
            let mut read = 0u64;
            loop {
                let n = limited.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                read += n as u64;
            }
            if read != len {
                return Err(StoreError::Invalid(format!(
                    "staged {read} bytes, expected {len}"
                )));
            }
            Ok(BlobId(*hasher.finalize().as_bytes()))
        })
        .await
    }

    async fn publish(&self, user: &str, id: &BlobId, len: u64) -> Result<(), StoreError> {
        let staged = self.staged(user, id);
        let target = self.blob(id);
        blocking(move || {
            if target.exists() {
                return std::fs::remove_file(&staged).map_err(io);
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&staged)
                .map_err(io)?;
            file.set_len(len).map_err(io)?;
            file.sync_all().map_err(io)?;
            let dir = target
                .parent()
                .ok_or_else(|| StoreError::Invalid("blob path without a parent".into()))?;
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::rename(&staged, &target).map_err(io)?;
            // The rename is durable once the directory is synced.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)
        })
        .await
    }

    async fn discard(&self, user: &str, id: &BlobId) -> Result<(), StoreError> {
        let path = self.staged(user, id);
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        })
        .await
    }

    async fn read(&self, id: &BlobId, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        let path = self.blob(id);
        blocking(move || {
            let mut file = std::fs::File::open(&path).map_err(io)?;
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut buf = Vec::with_capacity(len);
            file.take(len as u64).read_to_end(&mut buf).map_err(io)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn has(&self, id: &BlobId) -> Result<bool, StoreError> {
        let path = self.blob(id);
        blocking(move || Ok(path.exists())).await
    }

    async fn delete(&self, id: &BlobId) -> Result<(), StoreError> {
        let path = self.blob(id);
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        })
        .await
    }
}
