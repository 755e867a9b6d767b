//! Images and files: blobs uploaded and downloaded on their own QUIC
//! streams, below chat in priority, with progress and cancellation
//! ([`Transfer`]).
//!
//! An upload is named by the BLAKE3 hash of its bytes. The server answers
//! with the offset it has durably committed, so an upload cut off by a
//! reconnect, a network change or an app restart goes on from there: the
//! client retries on each new connection until the upload is done, refused
//! or cancelled. With [`ClientConfig::data_dir`](crate::ClientConfig) set,
//! unfinished uploads are journalled (`uploads/` there) and listed by
//! [`Client::pending_uploads`] after a restart, to be resumed with
//! [`Client::resume_upload`]. Bytes the server already has cost one round
//! trip (plus a proof of possession when another user uploaded them).
//!
//! A download writes a blob into a file; a file that holds the start of
//! the blob already (an earlier, interrupted download) is continued from
//! its length. The downloaded file is checked against the blob's hash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, download_server, upload_client, upload_server};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use crate::Error;
use crate::client::Client;
use crate::message::{Attachment, blob_bytes, blob_hex};

/// Send priority of media streams: below chat (the default 0); QUIC
/// schedules by it, TCP sends in write order (see `PROTOCOL.md`).
const PRIORITY: i32 = -10;

/// Longest wait between two attempts of a transfer.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Chunk size when the server named none.
const DEFAULT_CHUNK: usize = 32 * 1024;

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct TransferProgress {
    /// Bytes done for good: durable on the server (upload), written to the
    /// file (download).
    pub done: u64,
    /// Bytes sent so far (upload; equals `done` for a download).
    pub sent: u64,
    /// Bytes of the whole blob.
    pub total: u64,
}

#[derive(Debug)]
struct TransferState {
    progress: watch::Sender<TransferProgress>,
    cancelled: watch::Sender<bool>,
}

/// A handle on one upload or download: its progress, and a way to cancel
/// it. Clones share the same transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    state: Arc<TransferState>,
}

impl Default for Transfer {
    fn default() -> Self {
        Self::new()
    }
}

impl Transfer {
    /// A handle to pass to an upload or download.
    pub fn new() -> Transfer {
        Transfer {
            state: Arc::new(TransferState {
                progress: watch::Sender::new(TransferProgress::default()),
                cancelled: watch::Sender::new(false),
            }),
        }
    }

    /// Stops the transfer: its call returns [`Error::Cancelled`]. An
    /// upload's committed bytes stay on the server until they expire, so
    /// uploading the same bytes again goes on from them.
    pub fn cancel(&self) {
        self.state.cancelled.send_replace(true);
    }

    /// Whether [`cancel`](Transfer::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        *self.state.cancelled.borrow()
    }

    /// The progress now.
    pub fn progress(&self) -> TransferProgress {
        *self.state.progress.borrow()
    }

    /// Waits for the progress to change (or the transfer to be dropped).
    pub fn watch(&self) -> watch::Receiver<TransferProgress> {
        self.state.progress.subscribe()
    }

    fn set(&self, f: impl FnOnce(&mut TransferProgress)) {
        self.state.progress.send_modify(f);
    }

    async fn cancelled(&self) {
        let mut rx = self.state.cancelled.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// An upload that did not finish before the app stopped (see
/// [`Client::pending_uploads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct PendingUpload {
    /// The blob's id (hex).
    pub blob_id: String,
    /// The file being uploaded.
    pub path: String,
    /// Its media type.
    pub media_type: String,
}

/// The blob id and size of a file (BLAKE3, read in blocks).
async fn hash_file(path: PathBuf) -> Result<(String, u64), Error> {
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let file = std::fs::File::open(&path).map_err(|e| local(&path, e))?;
        hasher.update_reader(file).map_err(|e| local(&path, e))?;
        let size = std::fs::metadata(&path).map_err(|e| local(&path, e))?.len();
        Ok((hasher.finalize().to_hex().to_string(), size))
    })
    .await
    .map_err(|e| Error::Storage(format!("hashing task: {e}")))?
}

fn local(path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{}: {e}", path.display()))
}

/// The journal of unfinished uploads: one file per upload in
/// `<data_dir>/uploads/`, `<blob hex>.upload` holding the path and the
/// media type on two lines; bytes uploaded from memory are kept next to it
/// as `<blob hex>.bytes`.
struct Journal {
    dir: PathBuf,
}

impl Journal {
    fn open(data_dir: &Path) -> Result<Journal, Error> {
        let dir = data_dir.join("uploads");
        std::fs::create_dir_all(&dir).map_err(|e| local(&dir, e))?;
        Ok(Journal { dir })
    }

    fn record(&self, blob: &str) -> PathBuf {
        self.dir.join(format!("{blob}.upload"))
    }

    fn bytes(&self, blob: &str) -> PathBuf {
        self.dir.join(format!("{blob}.bytes"))
    }

    fn add(&self, blob: &str, path: &Path, media_type: &str) -> Result<(), Error> {
        let record = self.record(blob);
        let text = format!("{}\n{media_type}\n", path.display());
        let mut file = std::fs::File::create(&record).map_err(|e| local(&record, e))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| local(&record, e))?;
        file.sync_all().map_err(|e| local(&record, e))
    }

    fn remove(&self, blob: &str) {
        let _ = std::fs::remove_file(self.record(blob));
        let _ = std::fs::remove_file(self.bytes(blob));
    }

    fn list(&self) -> Vec<PendingUpload> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(blob) = name.strip_suffix(".upload") else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let mut lines = text.lines();
            if let (Some(path), Some(media_type)) = (lines.next(), lines.next()) {
                out.push(PendingUpload {
                    blob_id: blob.to_owned(),
                    path: path.to_owned(),
                    media_type: media_type.to_owned(),
                });
            }
        }
        out.sort_by(|a, b| a.blob_id.cmp(&b.blob_id));
        out
    }
}

/// Why a server frame ended a transfer.
fn refused(e: v1::RpcError) -> Error {
    Error::from_code(
        ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
        e.message,
    )
}

fn protocol(what: &str) -> Error {
    Error::Network(format!("unexpected {what} on a media stream"))
}

impl Client {
    fn journal(&self) -> Result<Option<Journal>, Error> {
        self.config()
            .data_dir
            .as_deref()
            .map(Journal::open)
            .transpose()
    }

    fn media_limits(&self) -> v1::Limits {
        crate::sync::lock(&self.shared().limits).clone()
    }

    /// Uploads the file at `path` as a blob of `media_type`, retrying on
    /// every new connection from the offset the server committed, until
    /// it is stored, refused or cancelled. Returns the attachment to send,
    /// named after the file. For an image the server decodes (PNG, JPEG,
    /// GIF, WebP) it carries the image's `width` and `height` and the
    /// `thumbnail_blob_id` of the thumbnail the server made; otherwise add
    /// dimensions and a thumbnail of your own as needed (an inline
    /// `thumbnail`, or another upload's blob id).
    ///
    /// Refusals (as [`Error::Rejected`]): `BLOB_TOO_LARGE`,
    /// `MEDIA_TYPE_REFUSED`, `QUOTA_EXCEEDED` (before any byte is sent),
    /// `HASH_MISMATCH` (the file changed while it was sent),
    /// `IMAGE_REFUSED` (an image the server could not decode within its
    /// bounds: too many pixels, too much memory, too slow, not an image of
    /// the declared type; nothing was kept).
    pub async fn upload_file(
        &self,
        path: String,
        media_type: String,
        transfer: &Transfer,
    ) -> Result<Attachment, Error> {
        let path = PathBuf::from(path);
        let (blob, size) = hash_file(path.clone()).await?;
        let journal = self.journal()?;
        if let Some(journal) = &journal {
            journal.add(&blob, &path, &media_type)?;
        }
        let result = self
            .upload_blob(&path, &blob, size, &media_type, transfer)
            .await;
        let finished = match &result {
            Ok(_) => true,
            Err(e) => !e.is_transient(),
        };
        if let (true, Some(journal)) = (finished, &journal) {
            journal.remove(&blob);
        }
        let info = result?;
        Ok(Attachment {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..attachment_of(info)
        })
    }

    /// Uploads `bytes` (with a data directory they are first saved there,
    /// so the upload survives an app restart). See
    /// [`upload_file`](Client::upload_file).
    pub async fn upload_bytes(
        &self,
        bytes: Vec<u8>,
        media_type: String,
        transfer: &Transfer,
    ) -> Result<Attachment, Error> {
        let blob = blake3::hash(&bytes).to_hex().to_string();
        let (path, _keep) = match self.journal()? {
            Some(journal) => (journal.bytes(&blob), None),
            None => {
                let dir = tempfile_dir()?;
                (dir.join(&blob), Some(TempFile(dir.join(&blob))))
            }
        };
        tokio::fs::write(&path, &bytes)
            .await
            .map_err(|e| local(&path, e))?;
        let mut attachment = self
            .upload_file(path.to_string_lossy().into_owned(), media_type, transfer)
            .await?;
        attachment.name = String::new();
        Ok(attachment)
    }

    /// Uploads that were started and did not finish (journalled in the
    /// data directory); resume each with
    /// [`resume_upload`](Client::resume_upload).
    pub fn pending_uploads(&self) -> Result<Vec<PendingUpload>, Error> {
        Ok(self.journal()?.map(|j| j.list()).unwrap_or_default())
    }

    /// Goes on with an upload listed by
    /// [`pending_uploads`](Client::pending_uploads).
    pub async fn resume_upload(
        &self,
        pending: PendingUpload,
        transfer: &Transfer,
    ) -> Result<Attachment, Error> {
        self.upload_file(pending.path, pending.media_type, transfer)
            .await
    }

    /// The attempts of one upload.
    async fn upload_blob(
        &self,
        path: &Path,
        blob: &str,
        size: u64,
        media_type: &str,
        transfer: &Transfer,
    ) -> Result<v1::BlobInfo, Error> {
        let limits = self.media_limits();
        if limits.max_blob_bytes > 0 && size > limits.max_blob_bytes {
            return Err(Error::from_code(
                ErrorCode::BlobTooLarge,
                format!("blobs are at most {} bytes", limits.max_blob_bytes),
            ));
        }
        transfer.set(|p| p.total = size);
        let start = v1::UploadStart {
            blob_id: blob_bytes(blob).into(),
            size,
            media_type: media_type.to_owned(),
        };
        let info = self
            .attempts(transfer, |conn| {
                upload_once(self, conn, path, start.clone(), transfer)
            })
            .await?;
        // Bytes the server had already (no chunk sent) are done too.
        transfer.set(|p| p.done = size);
        Ok(info)
    }

    /// Runs `attempt` on the current connection until it succeeds, fails
    /// for good, or the transfer is cancelled; after a transient failure
    /// it waits for a new connection (or a short backoff).
    async fn attempts<T, F, Fut>(&self, transfer: &Transfer, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(qim_proto::transport::Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            if transfer.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let conn = tokio::select! {
                conn = self.shared().connection() => conn?,
                () = transfer.cancelled() => return Err(Error::Cancelled),
            };
            let outcome = tokio::select! {
                outcome = attempt(conn.clone()) => outcome,
                () = transfer.cancelled() => return Err(Error::Cancelled),
            };
            match outcome {
                Ok(value) => return Ok(value),
                // A connection this client closed itself (a reconnect, a
                // network change that connected afresh) is one more
                // interruption, unless the client itself is closed.
                Err(e)
                    if e.is_transient()
                        || (e == Error::Closed
                            && self.state() != crate::ConnectionState::Closed) =>
                {
                    tracing::debug!(error = %e, "transfer interrupted; resuming");
                    let mut conns = self.shared().conn.subscribe();
                    let next = async {
                        if conn.close_reason().is_some() {
                            // Wait for the driver's next connection.
                            let _ = conns
                                .wait_for(|c| c.as_ref().is_none_or(|c| !c.same_as(&conn)))
                                .await;
                        } else {
                            tokio::time::sleep(backoff).await;
                        }
                    };
                    tokio::select! {
                        () = next => {}
                        () = transfer.cancelled() => return Err(Error::Cancelled),
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Downloads blob `blob_id` into the file at `path`; a file holding
    /// the start of the blob already is continued from its length. Retries
    /// on every new connection until done, refused or cancelled; the file
    /// is checked against the blob's hash at the end (a mismatch removes
    /// it: `HASH_MISMATCH`).
    ///
    /// Refusals: `NOT_FOUND` (no such blob), `PERMISSION_DENIED` (no
    /// message this user can see carries it).
    pub async fn download(
        &self,
        blob_id: String,
        path: String,
        transfer: &Transfer,
    ) -> Result<Attachment, Error> {
        let path = PathBuf::from(path);
        let id = blob_bytes(&blob_id);
        let info = self
            .attempts(transfer, |conn| {
                download_once(self, conn, &id, &path, transfer)
            })
            .await?;
        let (hash, _) = hash_file(path.clone()).await?;
        if hash != blob_id {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Error::from_code(
                ErrorCode::HashMismatch,
                "the downloaded bytes do not hash to the blob id",
            ));
        }
        Ok(Attachment {
            blob_id,
            ..attachment_of(info)
        })
    }

    /// `length` bytes of blob `blob_id` from `offset` (0: to the end), in
    /// memory; for small blobs and previews.
    pub async fn download_range(
        &self,
        blob_id: String,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, Error> {
        let id = blob_bytes(&blob_id);
        let conn = self.shared().connection().await?;
        let (mut recv, head) = open_download(self, &conn, &id, offset, length).await?;
        let mut out = Vec::with_capacity(usize::try_from(head.length).unwrap_or(0).min(1 << 24));
        while (out.len() as u64) < head.length {
            let chunk = next_chunk(&mut recv).await?;
            if chunk.offset != offset + out.len() as u64 {
                return Err(protocol("chunk offset"));
            }
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }
}

/// A directory for bytes uploaded without a data directory.
fn tempfile_dir() -> Result<PathBuf, Error> {
    let dir = std::env::temp_dir().join("qim-uploads");
    std::fs::create_dir_all(&dir).map_err(|e| local(&dir, e))?;
    Ok(dir)
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn next_upload_frame(recv: &mut FramedRecv) -> Result<upload_server::Kind, Error> {
    match recv.next::<v1::UploadServer>().await? {
        Some(v1::UploadServer { kind: Some(kind) }) => Ok(kind),
        Some(_) => Err(protocol("empty frame")),
        None => Err(Error::Network("the upload stream ended early".into())),
    }
}

/// The attachment of a blob's record: for an image the server decoded,
/// its dimensions and the thumbnail blob the server made.
fn attachment_of(info: v1::BlobInfo) -> Attachment {
    Attachment {
        blob_id: blob_hex(&info.blob_id),
        size: info.size,
        media_type: info.media_type,
        width: info.width,
        height: info.height,
        thumbnail_blob_id: (!info.thumbnail_blob_id.is_empty())
            .then(|| blob_hex(&info.thumbnail_blob_id)),
        ..Attachment::default()
    }
}

/// One attempt of an upload on `conn`.
async fn upload_once(
    client: &Client,
    conn: qim_proto::transport::Connection,
    path: &Path,
    start: v1::UploadStart,
    transfer: &Transfer,
) -> Result<v1::BlobInfo, Error> {
    let max_frame = client.shared().max_frame();
    let limits = client.media_limits();
    let chunk = match limits.upload_chunk_bytes {
        0 => DEFAULT_CHUNK,
        n => n as usize,
    };
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::from_connection(&e))?;
    send.set_priority(PRIORITY);
    let mut send = FramedSend::new(send, StreamKind::Upload, max_frame);
    let mut recv = FramedRecv::new(recv, max_frame);
    let size = start.size;
    send.send(&v1::UploadClient {
        kind: Some(upload_client::Kind::Start(start)),
    })
    .await?;
    let committed = match next_upload_frame(&mut recv).await? {
        upload_server::Kind::Ready(ready) => ready.committed,
        upload_server::Kind::Done(done) => return done.blob.ok_or_else(|| protocol("done")),
        upload_server::Kind::Error(e) => return Err(refused(e)),
        upload_server::Kind::Challenge(challenge) => {
            return prove(&mut send, &mut recv, path, challenge).await;
        }
        upload_server::Kind::Committed(_) => return Err(protocol("Committed")),
    };
    if committed > size {
        return Err(protocol("committed offset"));
    }
    transfer.set(|p| {
        p.done = committed;
        p.sent = committed;
    });
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| local(path, e))?;
    file.seek(std::io::SeekFrom::Start(committed))
        .await
        .map_err(|e| local(path, e))?;
    let writer = async {
        let mut offset = committed;
        while offset < size {
            let n = usize::try_from(size - offset)
                .unwrap_or(usize::MAX)
                .min(chunk);
            let mut data = vec![0u8; n];
            file.read_exact(&mut data)
                .await
                .map_err(|e| local(path, e))?;
            send.send(&v1::UploadClient {
                kind: Some(upload_client::Kind::Chunk(v1::UploadChunk {
                    offset,
                    data: data.into(),
                })),
            })
            .await?;
            offset += n as u64;
            transfer.set(|p| p.sent = offset);
        }
        Ok::<(), Error>(())
    };
    let reader = async {
        loop {
            match next_upload_frame(&mut recv).await? {
                upload_server::Kind::Committed(c) => transfer.set(|p| p.done = c.offset),
                upload_server::Kind::Done(done) => {
                    transfer.set(|p| p.done = size);
                    return done.blob.ok_or_else(|| protocol("done"));
                }
                upload_server::Kind::Error(e) => return Err(refused(e)),
                _ => return Err(protocol("frame")),
            }
        }
    };
    tokio::pin!(writer, reader);
    let mut written = false;
    loop {
        tokio::select! {
            w = &mut writer, if !written => { w?; written = true; }
            r = &mut reader => return r,
        }
    }
}

/// Answers the server's challenge for bytes it has already.
async fn prove(
    send: &mut FramedSend,
    recv: &mut FramedRecv,
    path: &Path,
    challenge: v1::Challenge,
) -> Result<v1::BlobInfo, Error> {
    let nonce: [u8; 32] = challenge.nonce[..]
        .try_into()
        .map_err(|_| protocol("challenge nonce"))?;
    let len = usize::try_from(challenge.length.min(1 << 20)).unwrap_or(0);
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| local(path, e))?;
    file.seek(std::io::SeekFrom::Start(challenge.offset))
        .await
        .map_err(|e| local(path, e))?;
    let mut data = vec![0u8; len];
    file.read_exact(&mut data)
        .await
        .map_err(|e| local(path, e))?;
    let mac = blake3::keyed_hash(&nonce, &data);
    send.send(&v1::UploadClient {
        kind: Some(upload_client::Kind::Proof(v1::UploadProof {
            mac: mac.as_bytes().to_vec().into(),
        })),
    })
    .await?;
    match next_upload_frame(recv).await? {
        upload_server::Kind::Done(done) => done.blob.ok_or_else(|| protocol("done")),
        upload_server::Kind::Error(e) => Err(refused(e)),
        _ => Err(protocol("frame")),
    }
}

/// Opens a download stream for a range and reads its head.
async fn open_download(
    client: &Client,
    conn: &qim_proto::transport::Connection,
    id: &[u8],
    offset: u64,
    length: u64,
) -> Result<(FramedRecv, v1::DownloadHead), Error> {
    let max_frame = client.shared().max_frame();
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::from_connection(&e))?;
    let mut send = FramedSend::new(send, StreamKind::Download, max_frame);
    let mut recv = FramedRecv::new(recv, max_frame);
    send.send(&v1::DownloadRequest {
        blob_id: id.to_vec().into(),
        offset,
        length,
    })
    .await?;
    send.finish();
    match recv
        .next::<v1::DownloadServer>()
        .await?
        .and_then(|f| f.kind)
    {
        Some(download_server::Kind::Head(head)) => Ok((recv, head)),
        Some(download_server::Kind::Error(e)) => Err(refused(e)),
        Some(download_server::Kind::Chunk(_)) => Err(protocol("chunk before head")),
        None => Err(Error::Network("the download stream ended early".into())),
    }
}

async fn next_chunk(recv: &mut FramedRecv) -> Result<v1::DownloadChunk, Error> {
    match recv
        .next::<v1::DownloadServer>()
        .await?
        .and_then(|f| f.kind)
    {
        Some(download_server::Kind::Chunk(chunk)) => Ok(chunk),
        Some(download_server::Kind::Error(e)) => Err(refused(e)),
        Some(download_server::Kind::Head(_)) => Err(protocol("second head")),
        None => Err(Error::Network("the download stream ended early".into())),
    }
}

/// One attempt of a download into `path`, from the file's length.
async fn download_once(
    client: &Client,
    conn: qim_proto::transport::Connection,
    id: &[u8],
    path: &Path,
    transfer: &Transfer,
) -> Result<v1::BlobInfo, Error> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| local(path, e))?;
    let have = file.metadata().await.map_err(|e| local(path, e))?.len();
    let (mut recv, head) = open_download(client, &conn, id, have, 0).await?;
    let info = head.blob.ok_or_else(|| protocol("head without blob"))?;
    transfer.set(|p| {
        p.total = info.size;
        p.done = have;
        p.sent = have;
    });
    let mut at = have;
    while at < info.size {
        let chunk = next_chunk(&mut recv).await?;
        if chunk.offset != at || chunk.data.is_empty() {
            return Err(protocol("chunk offset"));
        }
        file.write_all(&chunk.data)
            .await
            .map_err(|e| local(path, e))?;
        at += chunk.data.len() as u64;
        transfer.set(|p| {
            p.done = at;
            p.sent = at;
        });
    }
    file.sync_all().await.map_err(|e| local(path, e))?;
    Ok(info)
}
