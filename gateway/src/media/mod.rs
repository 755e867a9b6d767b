//! Media: blobs uploaded and downloaded on their own streams, below chat
//! in priority, and the attachments of messages that reference them.
//!
//! - `upload.rs`: one upload stream: limits checked before any byte
//!   flows, chunks made durable every `media.commit_bytes` with the
//!   committed offset answered (so a reconnect, a network change or an
//!   app restart resumes from it), the BLAKE3 hash checked before the blob
//!   is published, and bytes the server has already taken with a proof of
//!   possession instead of a transfer.
//! - `download.rs`: one range of one blob to a user who may read it.
//! - `access.rs`: who may read a blob (its uploaders, either side of a
//!   one-to-one message that carries it, the current members of a group
//!   whose message carries it) and the check of a send's attachments,
//!   which records the references that grant those reads.
//! - `thumbnail.rs`: the bounded decode of an uploaded image and its
//!   thumbnail, a blob of its own that whoever may read the image may read.
//! - `sweep.rs`: abandoned uploads expire.
//! - `collect.rs`: blobs no message carries any more are collected (mark
//!   and sweep over the copies recorded after each post, a hold of
//!   `media.collect_grace_ms` after every use).
//!
//! # Invariants
//! - Nothing is readable under a blob id whose bytes did not hash to it.
//! - A refusal is answered before the client sends a byte of the blob
//!   (size, type, quota), or ends the upload with nothing published (a
//!   wrong hash discards the staged bytes; an image refused by the bounded
//!   decode is removed again before its record is written).
//! - Media streams never end the session for a refusal; only a malformed
//!   frame does, as on every stream.

use std::sync::Arc;

use qim_proto::v1::{self, ErrorCode};
use tokio::sync::Semaphore;

use crate::ctx::Ctx;
use crate::reply::Refusal;

mod access;
mod collect;
mod download;
mod sweep;
mod thumbnail;
mod upload;

pub(crate) use access::check_attachments;
pub(crate) use collect::record_copies;
pub(crate) use collect::run as collect_unreferenced;
pub(crate) use download::serve as serve_download;
pub(crate) use sweep::run as sweep_abandoned;

/// The hold a use of a blob gives it: now plus `media.collect_grace_ms`.
fn hold_until(ctx: &Ctx) -> i64 {
    qim_proto::now_ms().saturating_add(collect::grace_ms(ctx))
}
pub(crate) use upload::serve as serve_upload;

/// QUIC send priority of media streams; chat and everything else stay at
/// quinn's default 0, so their data goes first when both wait.
pub(crate) const PRIORITY: i32 = -10;

/// The largest blob this gateway takes now: 0 without a blob backend.
pub(crate) fn max_blob_bytes(ctx: &Ctx) -> u64 {
    if ctx.stores.blobs.is_some() {
        ctx.config.media.max_blob_bytes
    } else {
        0
    }
}

/// The media limits of a session's `Welcome`, added to `limits`.
pub(crate) fn welcome_limits(ctx: &Ctx, limits: v1::Limits) -> v1::Limits {
    v1::Limits {
        max_blob_bytes: max_blob_bytes(ctx),
        blob_media_types: ctx.config.media.media_types.clone(),
        upload_chunk_bytes: ctx.config.media.chunk_bytes,
        max_attachments: ctx.config.media.max_attachments,
        ..limits
    }
}

/// The media streams one session may have open at once.
pub(crate) fn session_streams(ctx: &Ctx) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        ctx.config.media.streams_per_session as usize,
    ))
}

/// A blob id from the wire.
fn blob_id(bytes: &[u8]) -> Result<qim_storage::media::BlobId, Refusal> {
    qim_storage::media::BlobId::from_slice(bytes)
        .ok_or_else(|| Refusal::invalid("blob_id must be 32 bytes (BLAKE3)"))
}

/// The blob bytes backend, or the refusal of a gateway without one.
fn blobs(ctx: &Ctx) -> Result<Arc<dyn qim_storage::media::BlobBytes>, Refusal> {
    ctx.stores.blobs.clone().ok_or_else(|| {
        Refusal::new(
            ErrorCode::Unsupported,
            "this server has no blob store configured",
        )
    })
}

/// `len` bytes of published blob `id` from `offset`. A blob collected
/// between its record's read and this read (its bytes go first, then its
/// record) is refused as `NOT_FOUND`, as a read that came a moment later
/// would be, not as the store's failure.
async fn read_published(
    ctx: &Ctx,
    bytes: &dyn qim_storage::media::BlobBytes,
    id: &qim_storage::media::BlobId,
    offset: u64,
    len: usize,
) -> Result<bytes::Bytes, Refusal> {
    match bytes.read(id, offset, len).await {
        Ok(data) => Ok(data),
        Err(e) => match ctx.stores.media.blob(id).await {
            Ok(None) => Err(Refusal::new(ErrorCode::NotFound, "no such blob")),
            _ => Err(e.into()),
        },
    }
}

/// The error frame of a media stream.
fn error(refusal: Refusal) -> v1::RpcError {
    v1::RpcError {
        code: refusal.code as i32,
        message: refusal.message,
        retry_after_ms: refusal.retry_after_ms,
    }
}

/// The wire record of a blob.
fn info(meta: &qim_storage::media::BlobMeta) -> v1::BlobInfo {
    v1::BlobInfo {
        blob_id: meta.id.0.to_vec().into(),
        size: meta.size,
        media_type: meta.media_type.clone(),
        created_ms: meta.created_ms,
        width: meta.image.map_or(0, |i| i.width),
        height: meta.image.map_or(0, |i| i.height),
        thumbnail_blob_id: meta
            .image
            .map(|i| i.thumbnail.0.to_vec().into())
            .unwrap_or_default(),
    }
}

/// The `BlobInfoRequest` rpc: a blob's record, for a user who may read it.
pub(crate) async fn blob_info(
    ctx: &Ctx,
    user: &str,
    request: v1::BlobInfoRequest,
) -> Result<v1::BlobInfo, Refusal> {
    let id = blob_id(&request.blob_id)?;
    let meta = access::readable(ctx, user, &id).await?;
    Ok(info(&meta))
}
