//! Images and files through the bindings: uploads from a path or from
//! bytes, unfinished uploads listed and resumed after an app restart, and
//! downloads into a file (continued from the file's length) or of a range
//! in memory.
//!
//! Each transfer takes a [`TransferHandle`] (made by the app, so it can
//! cancel from anywhere: a button, another coroutine or task) and an
//! optional [`TransferListener`] for progress. A cancelled transfer fails
//! with [`QimError::Cancelled`]; so does one whose Kotlin coroutine or
//! Swift task is cancelled. Every progress callback of a transfer has been
//! made when its call returns.
//!
//! Results are [`qim_sdk::Attachment`] records, ready to put in
//! `MessageExtras.attachments` for `sendWith`/`sendGroupWith`: the blob
//! id, its size and media type, the file name (uploads from a path); the
//! app adds `width`/`height` and a thumbnail when it knows them.
//!
//! Refusals keep the wire code: `BLOB_TOO_LARGE`, `MEDIA_TYPE_REFUSED`,
//! `QUOTA_EXCEEDED`, `HASH_MISMATCH` (uploads), `NOT_FOUND` and
//! `PERMISSION_DENIED` (a download of a blob no message this user can see
//! carries), `RATE_LIMITED` (too many transfers at once).

use std::future::Future;
use std::sync::Arc;

use qim_sdk::{Attachment, PendingUpload, Transfer, TransferProgress};
use tokio::sync::oneshot;

use crate::{QimClient, QimError};

/// What the app implements to follow a transfer. Called from SDK
/// threads, in order, only when the progress changed; return quickly.
#[uniffi::export(with_foreign)]
pub trait TransferListener: Send + Sync {
    /// Where the transfer stands: `done` of `total` bytes are durable on
    /// the server (upload) or written to the file (download); `sent`
    /// counts the bytes sent so far (upload).
    fn on_progress(&self, progress: TransferProgress);
}

/// One upload or download, made by the app and passed to the call: a way
/// to cancel it and to read its progress. Use a handle for one transfer.
#[derive(Debug, uniffi::Object)]
pub struct TransferHandle {
    transfer: Transfer,
}

#[uniffi::export]
impl TransferHandle {
    /// A handle for a transfer not started yet.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(TransferHandle {
            transfer: Transfer::new(),
        })
    }

    /// Stops the transfer: its call fails with `Cancelled` (at once when
    /// it has not started). An upload's committed bytes stay on the server
    /// for a while, so uploading the same bytes again goes on from them.
    pub fn cancel(&self) {
        self.transfer.cancel();
    }

    /// Whether `cancel` was called.
    pub fn is_cancelled(&self) -> bool {
        self.transfer.is_cancelled()
    }

    /// The progress now.
    pub fn progress(&self) -> TransferProgress {
        self.transfer.progress()
    }
}

/// Cancels the transfer when the call's future is dropped before it ended
/// (the Kotlin coroutine or Swift task was cancelled): the SDK task runs
/// on its own runtime and would otherwise go on.
struct CancelOnDrop {
    transfer: Transfer,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.transfer.cancel();
        }
    }
}

/// Forwards the progress of `transfer` to `listener` until `stop` fires,
/// then reports the last change, if any was not reported yet.
async fn pump_progress(
    transfer: Transfer,
    listener: Arc<dyn TransferListener>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut progress = transfer.watch();
    loop {
        tokio::select! {
            biased;
            changed = progress.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = *progress.borrow_and_update();
                listener.on_progress(now);
            }
            _ = &mut stop => {
                if progress.has_changed().unwrap_or(false) {
                    let now = *progress.borrow_and_update();
                    listener.on_progress(now);
                }
                break;
            }
        }
    }
}

impl QimClient {
    /// Runs one transfer: the SDK call with the handle's transfer, its
    /// progress forwarded to `listener`, cancelled if the caller gives up.
    async fn transfer<T, F, Fut>(
        &self,
        handle: Arc<TransferHandle>,
        listener: Option<Arc<dyn TransferListener>>,
        call: F,
    ) -> Result<T, QimError>
    where
        F: FnOnce(Arc<qim_sdk::Client>, Transfer) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, qim_sdk::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let transfer = handle.transfer.clone();
        let mut guard = CancelOnDrop {
            transfer: transfer.clone(),
            armed: true,
        };
        let result = self
            .call(move |client| async move {
                let (stop, stopped) = oneshot::channel();
                let pump =
                    listener.map(|l| tokio::spawn(pump_progress(transfer.clone(), l, stopped)));
                let result = call(client, transfer).await;
                let _ = stop.send(());
                if let Some(pump) = pump {
                    let _ = pump.await;
                }
                result
            })
            .await;
        guard.armed = false;
        result
    }
}

#[uniffi::export]
impl QimClient {
    /// Uploads the file at `path` as a blob of `media_type` (e.g.
    /// `image/jpeg`), going on after reconnects from what the server has
    /// committed, until it is stored, refused or cancelled. Bytes the
    /// server has already cost one round trip. Returns the attachment to
    /// send (named after the file).
    pub async fn upload_file(
        &self,
        path: String,
        media_type: String,
        handle: Arc<TransferHandle>,
        listener: Option<Arc<dyn TransferListener>>,
    ) -> Result<Attachment, QimError> {
        self.transfer(handle, listener, move |c, t| async move {
            c.upload_file(path, media_type, &t).await
        })
        .await
    }

    /// Uploads `bytes` as a blob of `media_type` (with a data directory
    /// they are saved there first, so the upload survives an app restart).
    /// Returns the attachment to send (without a name).
    pub async fn upload_bytes(
        &self,
        bytes: Vec<u8>,
        media_type: String,
        handle: Arc<TransferHandle>,
        listener: Option<Arc<dyn TransferListener>>,
    ) -> Result<Attachment, QimError> {
        self.transfer(handle, listener, move |c, t| async move {
            c.upload_bytes(bytes, media_type, &t).await
        })
        .await
    }

    /// Uploads that were started and did not finish before the app
    /// stopped (kept in `ClientConfig.data_dir`; empty without one):
    /// resume each with `resume_upload`.
    pub async fn pending_uploads(&self) -> Result<Vec<PendingUpload>, QimError> {
        self.call(|c| async move { c.pending_uploads() }).await
    }

    /// Goes on with an upload listed by `pending_uploads`.
    pub async fn resume_upload(
        &self,
        pending: PendingUpload,
        handle: Arc<TransferHandle>,
        listener: Option<Arc<dyn TransferListener>>,
    ) -> Result<Attachment, QimError> {
        self.transfer(handle, listener, move |c, t| async move {
            c.resume_upload(pending, &t).await
        })
        .await
    }

    /// Downloads blob `blob_id` into the file at `path`. A file holding
    /// the start of the blob already (an interrupted download) is
    /// continued from its length. The file is checked against the blob's
    /// hash at the end (a mismatch removes it: `HASH_MISMATCH`). Returns
    /// the blob's attachment (id, size, media type).
    pub async fn download(
        &self,
        blob_id: String,
        path: String,
        handle: Arc<TransferHandle>,
        listener: Option<Arc<dyn TransferListener>>,
    ) -> Result<Attachment, QimError> {
        self.transfer(handle, listener, move |c, t| async move {
            c.download(blob_id, path, &t).await
        })
        .await
    }

    /// `length` bytes of blob `blob_id` from `offset` (0: to the end), in
    /// memory: for small blobs and previews (a large file goes to
    /// `download`). `OUT_OF_RANGE` past the end.
    pub async fn download_range(
        &self,
        blob_id: String,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, QimError> {
        self.call(move |c| async move { c.download_range(blob_id, offset, length).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_transfer_is_a_typed_error() {
        assert_eq!(
            QimError::from(qim_sdk::Error::Cancelled),
            QimError::Cancelled
        );
    }

    #[test]
    fn dropping_an_unfinished_call_cancels_its_transfer() {
        let handle = TransferHandle::new();
        drop(CancelOnDrop {
            transfer: handle.transfer.clone(),
            armed: true,
        });
        assert!(handle.is_cancelled());
        let other = TransferHandle::new();
        drop(CancelOnDrop {
            transfer: other.transfer.clone(),
            armed: false,
        });
        assert!(!other.is_cancelled());
    }
}
