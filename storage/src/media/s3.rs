//! [`S3Blobs`]: blob bytes in an S3-compatible object store, so every node
//! of a cluster reads and writes the same bytes.
//!
//! Objects (under the configured key prefix):
//! - `staging/<user hash>-<blob hex>/<offset>`: one object per committed
//!   range of an upload being staged, named by its start offset (20
//!   decimal digits, so names sort as offsets do). Staging lives in the
//!   object store, not on a node, because the client may resume an upload
//!   on another node: whatever node takes the resume lists the pieces.
//!   A [`stage`](BlobBytes::stage) at `offset` removes the pieces that
//!   start beyond it, rewrites a piece that straddles it (cut to end at
//!   `offset`), then puts the new range as one object; the bytes below
//!   `offset` are never touched, so a crash in the middle leaves a prefix
//!   at least as long as the committed offset. A piece is durable once the
//!   store answered its `PUT`.
//! - `blobs/<blob hex>`: a published blob, written once and never
//!   rewritten. [`publish`](BlobBytes::publish) streams the staged pieces
//!   into it: one `PUT` up to [`PART_BYTES`], else a multipart upload of
//!   parts of at least [`PART_BYTES`] (S3's minimum is 5 MiB for every
//!   part but the last), one part in memory at a time, so a 100 MiB blob
//!   never sits in memory. The object appears whole when the upload
//!   completes (or the `PUT` returns), never in part; a failed multipart
//!   upload is aborted.
//!
//! Errors: the object store's answers become [`StoreError`]s whose text
//! names the operation only (no key, bucket, or server text); the full
//! error goes to the debug log. Refused credentials or permissions are
//! [`StoreError::Denied`], a configuration error that retrying does not
//! cure; everything else is [`StoreError::Unavailable`].

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore as _, PutPayload, RetryConfig,
};

use super::{BlobBytes, BlobId};
use crate::StoreError;

/// Bytes of one multipart part, and the largest blob published with one
/// `PUT`. Above S3's 5 MiB minimum part size; a 100 MiB blob takes 13
/// parts (S3 allows 10,000).
pub const PART_BYTES: usize = 8 << 20;

/// How an [`S3Blobs`] reaches its bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Options {
    /// Base URL of the S3 API, e.g. `https://s3.eu-west-1.amazonaws.com`
    /// or `http://127.0.0.1:9390` (plain HTTP only when the URL says so).
    pub endpoint: String,
    /// Bucket that holds the blobs; it must exist.
    pub bucket: String,
    /// Region the requests are signed for (SigV4).
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (never printed by `Debug`).
    pub secret_access_key: String,
    /// Path-style URLs (`endpoint/bucket/key`), as most self-hosted
    /// servers want; false: virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: bool,
    /// Prefix of every key (`a/b/`), so a bucket can be shared; may be
    /// empty.
    pub key_prefix: String,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// Blob bytes in one bucket of an S3-compatible object store.
#[derive(Debug, Clone)]
pub struct S3Blobs {
    store: Arc<AmazonS3>,
    /// The same bucket without retries, for [`S3Blobs::typed`]'s probe.
    probe: Arc<AmazonS3>,
    /// The key prefix's segments.
    prefix: Vec<String>,
}

/// One staged range: its start offset, length and object.
#[derive(Debug)]
struct Piece {
    start: u64,
    len: u64,
    path: Path,
}

impl Piece {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Bytes staged without a gap from offset 0.
fn held(pieces: &[Piece]) -> u64 {
    let mut end = 0;
    for p in pieces {
        if p.start != end {
            break;
        }
        end = p.end();
    }
    end
}

/// The [`StoreError`] of a failed request; `op` names the operation.
fn s3_error(op: &'static str, e: object_store::Error) -> StoreError {
    tracing::debug!(op, error = %e, "object store request failed");
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => StoreError::Denied(format!(
            "object store refused the credentials or permissions ({op})"
        )),
        object_store::Error::NotFound { .. } => {
            StoreError::Unavailable(format!("object store: nothing found ({op})"))
        }
        _ => StoreError::Unavailable(format!("object store request failed ({op})")),
    }
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl S3Blobs {
    /// A client for `options`; checks the options but sends nothing (see
    /// [`check`](S3Blobs::check)).
    pub fn new(options: &S3Options) -> Result<S3Blobs, StoreError> {
        let invalid = |s: &str| Err(StoreError::Invalid(format!("S3 options: {s}")));
        if options.bucket.is_empty() || options.region.is_empty() {
            return invalid("bucket and region are required");
        }
        if options.access_key_id.is_empty() || options.secret_access_key.is_empty() {
            return invalid("access key id and secret key are required");
        }
        let http = options.endpoint.starts_with("http://");
        if !http && !options.endpoint.starts_with("https://") {
            return invalid("the endpoint is an http:// or https:// URL");
        }
        let prefix: Vec<String> = options
            .key_prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let safe = |s: &String| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && s != "."
                && s != ".."
        };
        if !prefix.iter().all(safe) {
            return invalid("the key prefix takes letters, digits, '-', '_', '.' and '/'");
        }
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(20),
        };
        let client = ClientOptions::new()
            .with_allow_http(http)
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(60));
        let build = |retry: RetryConfig, client: ClientOptions| {
            AmazonS3Builder::new()
                .with_endpoint(&options.endpoint)
                .with_bucket_name(&options.bucket)
                .with_region(&options.region)
                .with_access_key_id(&options.access_key_id)
                .with_secret_access_key(&options.secret_access_key)
                .with_virtual_hosted_style_request(!options.path_style)
                .with_allow_http(http)
                .with_retry(retry)
                .with_client_options(client)
                .build()
                .map(Arc::new)
                .map_err(|e| {
                    tracing::debug!(error = %e, "S3 client options refused");
                    StoreError::Invalid("S3 options refused by the client".into())
                })
        };
        let store = build(retry, client.clone())?;
        let once = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        let probe = build(once, client.with_timeout(std::time::Duration::from_secs(5)))?;
        Ok(S3Blobs {
            store,
            probe,
            prefix,
        })
    }

    /// Lists the blobs' key space once: wrong credentials give
    /// [`StoreError::Denied`], an unreachable server or a missing bucket
    /// [`StoreError::Unavailable`]. For start-up, so a misconfigured node
    /// fails before it takes a session.
    pub async fn check(&self) -> Result<(), StoreError> {
        let prefix = self.path(&["blobs"]);
        let mut list = self.store.list(Some(&prefix));
        let listed = match list.next().await {
            Some(Err(e)) => Err(s3_error("list", e)),
            _ => Ok(()),
        };
        self.typed(listed).await
    }

    /// `result`, with an `Unavailable` that came of refused credentials
    /// made [`StoreError::Denied`]. The client names a refusal as such
    /// for single-object requests only (a list or a multipart request
    /// fails as a generic error), so a failure is followed by one `HEAD`
    /// of a key that does not exist, without retries: 401/403 there
    /// means the credentials or permissions are refused.
    async fn typed<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(StoreError::Unavailable(detail)) => {
                let probe = self.path(&["probe-of-credentials"]);
                match self.probe.head(&probe).await {
                    Err(
                        e @ (object_store::Error::PermissionDenied { .. }
                        | object_store::Error::Unauthenticated { .. }),
                    ) => Err(s3_error("probe", e)),
                    _ => Err(StoreError::Unavailable(detail)),
                }
            }
            other => other,
        }
    }

    fn path(&self, parts: &[&str]) -> Path {
        Path::from_iter(
            self.prefix
                .iter()
                .map(String::as_str)
                .chain(parts.iter().copied()),
        )
    }

    fn staging(&self, user: &str, id: &BlobId) -> Path {
        // The user's id is hashed: object names never carry user input.
        let user = blake3::hash(user.as_bytes()).to_hex();
        self.path(&["staging", &format!("{}-{}", &user[..32], id.hex())])
    }

    fn blob(&self, id: &BlobId) -> Path {
        self.path(&["blobs", &id.hex()])
    }

    /// The staged pieces of an upload, by start offset.
    async fn pieces(&self, user: &str, id: &BlobId) -> Result<Vec<Piece>, StoreError> {
        let dir = self.staging(user, id);
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| s3_error("list staged", e))?;
        let mut pieces = Vec::with_capacity(metas.len());
        for meta in metas {
            let start = meta
                .location
                .filename()
                .and_then(|name| name.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Corrupt("a staged object without an offset".into()))?;
            pieces.push(Piece {
                start,
                len: meta.size,
                path: meta.location,
            });
        }
        pieces.sort_by_key(|p| p.start);
        Ok(pieces)
    }

    /// The pieces that hold bytes `0..len` without a gap, or `Invalid`.
    fn prefix_of(pieces: &[Piece], len: u64) -> Result<&[Piece], StoreError> {
        let mut end = 0u64;
        let mut count = 0;
        for p in pieces {
            if end >= len || p.start != end {
                break;
            }
            end = p.end();
            count += 1;
        }
        if end < len {
            return Err(StoreError::Invalid(format!(
                "staged {end} bytes, expected {len}"
            )));
        }
        Ok(&pieces[..count])
    }

    /// Streams bytes `0..len` of the staged `pieces` to `sink`, in order.
    async fn stream_staged(
        &self,
        pieces: &[Piece],
        len: u64,
        mut sink: impl AsyncSink,
    ) -> Result<(), StoreError> {
        let mut pos = 0u64;
        for piece in pieces {
            let mut stream = self
                .store
                .get(&piece.path)
                .await
                .map_err(|e| s3_error("get staged", e))?
                .into_stream();
            while let Some(chunk) = stream.next().await {
                let mut chunk = chunk.map_err(|e| s3_error("get staged", e))?;
                let left = len - pos;
                if chunk.len() as u64 > left {
                    chunk.truncate(left as usize);
                }
                pos += chunk.len() as u64;
                sink.take(chunk).await?;
                if pos == len {
                    return Ok(());
                }
            }
        }
        if pos < len {
            return Err(StoreError::Invalid(format!(
                "staged {pos} bytes, expected {len}"
            )));
        }
        Ok(())
    }

    /// Removes every staged piece of an upload.
    async fn remove_pieces(&self, pieces: Vec<Piece>) -> Result<(), StoreError> {
        for piece in pieces {
            match self.store.delete(&piece.path).await {
                Err(e) if !not_found(&e) => return Err(s3_error("delete staged", e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes bytes `0..len` of `pieces` to the blob object as a multipart
    /// upload, one part in memory at a time.
    async fn publish_multipart(
        &self,
        pieces: &[Piece],
        target: &Path,
        len: u64,
    ) -> Result<(), StoreError> {
        let mut upload = self
            .store
            .put_multipart(target)
            .await
            .map_err(|e| s3_error("start multipart", e))?;
        let mut parts = Parts {
            upload: &mut upload,
            buffer: Vec::new(),
            buffered: 0,
        };
        let streamed = self.stream_staged(pieces, len, &mut parts).await;
        let finished = match streamed {
            Ok(()) => parts.flush().await,
            Err(e) => Err(e),
        };
        let done = match finished {
            Ok(()) => upload
                .complete()
                .await
                .map(|_| ())
                .map_err(|e| s3_error("complete multipart", e)),
            Err(e) => Err(e),
        };
        if done.is_err()
            && let Err(e) = upload.abort().await
        {
            tracing::debug!(error = %e, "aborting a failed multipart upload failed");
        }
        done
    }
}

/// Where [`S3Blobs::stream_staged`] sends the bytes.
#[async_trait]
trait AsyncSink: Send {
    async fn take(&mut self, chunk: Bytes) -> Result<(), StoreError>;
}

/// Gathers chunks in memory (at most [`PART_BYTES`] by the caller's rule).
#[async_trait]
impl AsyncSink for &mut Vec<Bytes> {
    async fn take(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.push(chunk);
        Ok(())
    }
}

/// Gathers chunks into parts of at least [`PART_BYTES`] and uploads each
/// when full; the last part may be smaller.
struct Parts<'a> {
    upload: &'a mut Box<dyn object_store::MultipartUpload>,
    buffer: Vec<Bytes>,
    buffered: usize,
}

impl Parts<'_> {
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.buffered == 0 {
            return Ok(());
        }
        let payload: PutPayload = std::mem::take(&mut self.buffer).into_iter().collect();
        self.buffered = 0;
        self.upload
            .put_part(payload)
            .await
            .map_err(|e| s3_error("upload part", e))
    }
}

#[async_trait]
impl AsyncSink for &mut Parts<'_> {
    async fn take(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.buffered += chunk.len();
        self.buffer.push(chunk);
        if self.buffered >= PART_BYTES {
            self.flush().await?;
        }
        Ok(())
    }
}

/// The operations, before [`S3Blobs::typed`] names a refused credential.
impl S3Blobs {
    async fn do_stage(
        &self,
        user: &str,
        id: &BlobId,
        offset: u64,
        data: Vec<Bytes>,
    ) -> Result<(), StoreError> {
        let pieces = self.pieces(user, id).await?;
        let held = held(&pieces);
        if held < offset {
            return Err(StoreError::Invalid(format!(
                "staged {held} bytes, asked to write at {offset}"
            )));
        }
        // Cut: pieces that start beyond `offset` go, one that straddles it
        // is rewritten shorter; the bytes below `offset` stay as they are.
        for piece in &pieces {
            if piece.start > offset {
                match self.store.delete(&piece.path).await {
                    Err(e) if !not_found(&e) => return Err(s3_error("cut staged", e)),
                    _ => {}
                }
            }
        }
        if let Some(piece) = pieces.iter().find(|p| p.start < offset && p.end() > offset) {
            let kept = self
                .store
                .get_range(&piece.path, 0..offset - piece.start)
                .await
                .map_err(|e| s3_error("cut staged", e))?;
            self.store
                .put(&piece.path, PutPayload::from(kept))
                .await
                .map_err(|e| s3_error("cut staged", e))?;
        }
        let len: usize = data.iter().map(Bytes::len).sum();
        let path = self.staging(user, id).child(format!("{offset:020}"));
        if len == 0 {
            // Nothing to add; a piece that started at `offset` is cut away.
            return match self.store.delete(&path).await {
                Err(e) if !not_found(&e) => Err(s3_error("cut staged", e)),
                _ => Ok(()),
            };
        }
        let payload: PutPayload = data.into_iter().collect();
        self.store
            .put(&path, payload)
            .await
            .map(|_| ())
            .map_err(|e| s3_error("put staged", e))
    }

    async fn do_staged_hash(
        &self,
        user: &str,
        id: &BlobId,
        len: u64,
    ) -> Result<BlobId, StoreError> {
        let pieces = self.pieces(user, id).await?;
        let pieces = Self::prefix_of(&pieces, len)?;
        let mut hasher = Hasher(blake3::Hasher::new());
        self.stream_staged(pieces, len, &mut hasher).await?;
        Ok(BlobId(*hasher.0.finalize().as_bytes()))
    }

    async fn do_publish(&self, user: &str, id: &BlobId, len: u64) -> Result<(), StoreError> {
        let target = self.blob(id);
        let pieces = self.pieces(user, id).await?;
        if self.do_has(id).await? {
            return self.remove_pieces(pieces).await;
        }
        let used = Self::prefix_of(&pieces, len)?;
        if len <= PART_BYTES as u64 {
            let mut chunks: Vec<Bytes> = Vec::new();
            self.stream_staged(used, len, &mut chunks).await?;
            let payload: PutPayload = chunks.into_iter().collect();
            self.store
                .put(&target, payload)
                .await
                .map_err(|e| s3_error("put blob", e))?;
        } else {
            self.publish_multipart(used, &target, len).await?;
        }
        self.remove_pieces(pieces).await
    }

    async fn do_discard(&self, user: &str, id: &BlobId) -> Result<(), StoreError> {
        let pieces = self.pieces(user, id).await?;
        self.remove_pieces(pieces).await
    }

    async fn do_read(&self, id: &BlobId, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let path = self.blob(id);
        let options = GetOptions {
            range: Some(GetRange::Bounded(offset..offset.saturating_add(len as u64))),
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&path, options).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        match got {
            Ok(bytes) => Ok(bytes),
            Err(e) if not_found(&e) => Err(s3_error("read blob", e)),
            Err(e) => {
                // A range that starts at or past the end is refused by S3
                // (416); as with a file, it reads nothing.
                match self.store.head(&path).await {
                    Ok(meta) if offset >= meta.size => Ok(Bytes::new()),
                    _ => Err(s3_error("read blob", e)),
                }
            }
        }
    }

    async fn do_has(&self, id: &BlobId) -> Result<bool, StoreError> {
        match self.store.head(&self.blob(id)).await {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(s3_error("head blob", e)),
        }
    }

    async fn do_delete(&self, id: &BlobId) -> Result<(), StoreError> {
        match self.store.delete(&self.blob(id)).await {
            Err(e) if !not_found(&e) => Err(s3_error("delete blob", e)),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl BlobBytes for S3Blobs {
    async fn stage(
        &self,
        user: &str,
        id: &BlobId,
        offset: u64,
        data: Vec<Bytes>,
    ) -> Result<(), StoreError> {
        self.typed(self.do_stage(user, id, offset, data).await)
            .await
    }

    async fn staged_hash(&self, user: &str, id: &BlobId, len: u64) -> Result<BlobId, StoreError> {
        self.typed(self.do_staged_hash(user, id, len).await).await
    }

    async fn publish(&self, user: &str, id: &BlobId, len: u64) -> Result<(), StoreError> {
        self.typed(self.do_publish(user, id, len).await).await
    }

    async fn discard(&self, user: &str, id: &BlobId) -> Result<(), StoreError> {
        self.typed(self.do_discard(user, id).await).await
    }

    async fn read(&self, id: &BlobId, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        self.typed(self.do_read(id, offset, len).await).await
    }

    async fn has(&self, id: &BlobId) -> Result<bool, StoreError> {
        self.typed(self.do_has(id).await).await
    }

    async fn delete(&self, id: &BlobId) -> Result<(), StoreError> {
        self.typed(self.do_delete(id).await).await
    }
}

/// Hashes what [`S3Blobs::stream_staged`] sends.
struct Hasher(blake3::Hasher);

#[async_trait]
impl AsyncSink for &mut Hasher {
    async fn take(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.0.update(&chunk);
        Ok(())
    }
}
