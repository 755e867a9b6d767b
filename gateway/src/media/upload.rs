//! One upload stream (see the media section of `qim.proto`).
//!
//! The upload is keyed by its uploader and the blob id it declares, so a
//! resume needs no id of its own: the client opens a new stream with the
//! same `UploadStart` and goes on from the offset in `UploadReady`. Bytes
//! arrive in order; they are gathered up to `media.commit_bytes`, written
//! and synced ([`BlobBytes::stage`]), and only then is the pending
//! record's offset moved and `Committed` answered. At the declared size
//! the staged bytes are hashed; a match publishes the blob, a mismatch
//! discards the bytes and the record. A published image of a type the
//! server decodes gets its thumbnail ([`thumbnail`]) before its record is
//! written; an image refused there is removed again.

use bytes::Bytes;
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::v1::{self, ErrorCode, upload_client, upload_server};
use qim_storage::media::{BlobBytes, BlobId, BlobMeta, ImageInfo, PendingUpload};
use qim_storage::quota::{Charged, utc_day};
use tracing::{debug, info};

use super::{blob_id, blobs, error, info, thumbnail};
use crate::ctx::Ctx;
use crate::fault::Fault;
use crate::reply::Refusal;

/// Longest accepted media type.
const MAX_MEDIA_TYPE: usize = 127;

/// Bytes of a blob the possession proof covers (at most).
const PROOF_BYTES: u64 = 64 * 1024;

/// How an upload stream ended: refused, or the session must end (a
/// malformed frame), or done.
enum End {
    Refused(Refusal),
    Fault(Fault),
    /// The client went away (stream reset, connection lost).
    Gone,
}

impl From<Refusal> for End {
    fn from(r: Refusal) -> Self {
        End::Refused(r)
    }
}

/// The quota key of a user's uploaded bytes (a key no user id can be).
fn quota_key(user: &str) -> String {
    format!("#media:{user}")
}

/// Serves one upload stream of `user`; `Some` when the session must end.
pub(crate) async fn serve(
    ctx: &Ctx,
    user: &str,
    mut send: FramedSend,
    mut recv: FramedRecv,
) -> Option<Fault> {
    let end = match upload(ctx, user, &mut send, &mut recv).await {
        Ok(blob) => {
            let done = upload_server::Kind::Done(v1::UploadDone { blob: Some(blob) });
            let _ = send.send(&v1::UploadServer { kind: Some(done) }).await;
            send.finish();
            return None;
        }
        Err(end) => end,
    };
    match end {
        End::Refused(refusal) => {
            debug!(user, code = ?refusal.code, message = %refusal.message, "upload refused");
            let kind = upload_server::Kind::Error(error(refusal));
            let _ = send.send(&v1::UploadServer { kind: Some(kind) }).await;
            send.finish();
            None
        }
        End::Fault(fault) => Some(fault),
        End::Gone => None,
    }
}

/// The next frame of the client, or how the stream ended.
async fn next(recv: &mut FramedRecv) -> Result<upload_client::Kind, End> {
    match recv.next::<v1::UploadClient>().await {
        Ok(Some(v1::UploadClient { kind: Some(kind) })) => Ok(kind),
        Ok(Some(_)) => Err(Refusal::invalid("empty upload frame").into()),
        Ok(None) => Err(End::Gone),
        Err(e) => Err(Fault::from_recv(e).map_or(End::Gone, End::Fault)),
    }
}

async fn reply(send: &mut FramedSend, kind: upload_server::Kind) -> Result<(), End> {
    send.send(&v1::UploadServer { kind: Some(kind) })
        .await
        .map_err(|_| End::Gone)
}

async fn upload(
    ctx: &Ctx,
    user: &str,
    send: &mut FramedSend,
    recv: &mut FramedRecv,
) -> Result<v1::BlobInfo, End> {
    let upload_client::Kind::Start(start) = next(recv).await? else {
        return Err(Refusal::new(
            ErrorCode::ProtocolViolation,
            "an upload begins with UploadStart",
        )
        .into());
    };
    let bytes = blobs(ctx)?;
    let id = blob_id(&start.blob_id)?;
    let media_type = start.media_type.to_ascii_lowercase();
    check_start(ctx, &start, &media_type)?;
    if let Some(meta) = ctx.stores.media.blob(&id).await.map_err(Refusal::from)? {
        if meta.size != start.size {
            return Err(Refusal::new(
                ErrorCode::HashMismatch,
                "the server has this blob with another size",
            )
            .into());
        }
        return Ok(info(
            &deduplicated(ctx, user, &*bytes, meta, send, recv).await?,
        ));
    }
    let mut pending = match ctx
        .stores
        .media
        .pending(user, &id)
        .await
        .map_err(Refusal::from)?
    {
        Some(p) if p.size == start.size => p,
        Some(_) => {
            return Err(Refusal::invalid("this upload was started with another size").into());
        }
        None => begin(ctx, user, id, &start, media_type).await?,
    };
    reply(
        send,
        upload_server::Kind::Ready(v1::UploadReady {
            committed: pending.committed,
        }),
    )
    .await?;
    let commit_bytes = u64::from(ctx.config.media.commit_bytes);
    let chunk_bytes = ctx.config.media.chunk_bytes as usize;
    let mut gathered: Vec<Bytes> = Vec::new();
    let mut gathered_len = 0u64;
    loop {
        let frame = if pending.committed + gathered_len == pending.size {
            None
        } else {
            Some(next(recv).await)
        };
        let chunk = match frame {
            None => None,
            Some(Ok(upload_client::Kind::Chunk(chunk))) => Some(chunk),
            Some(Ok(_)) => {
                let r = Refusal::new(
                    ErrorCode::ProtocolViolation,
                    "only chunks follow UploadReady",
                );
                commit(ctx, &*bytes, &mut pending, &mut gathered, &mut gathered_len).await?;
                return Err(r.into());
            }
            Some(Err(end)) => {
                // Keep what arrived intact: the resume starts after it.
                commit(ctx, &*bytes, &mut pending, &mut gathered, &mut gathered_len).await?;
                return Err(end);
            }
        };
        if let Some(chunk) = chunk {
            let expected = pending.committed + gathered_len;
            let len = chunk.data.len() as u64;
            if chunk.offset.saturating_add(len) > pending.size {
                return Err(
                    Refusal::new(ErrorCode::OutOfRange, "chunk beyond the declared size").into(),
                );
            }
            if chunk.offset != expected || chunk.data.is_empty() || chunk.data.len() > chunk_bytes {
                commit(ctx, &*bytes, &mut pending, &mut gathered, &mut gathered_len).await?;
                return Err(Refusal::invalid(format!(
                    "expected a chunk of 1 to {chunk_bytes} bytes at offset {expected}"
                ))
                .into());
            }
            gathered_len += len;
            gathered.push(chunk.data);
        }
        let complete = pending.committed + gathered_len == pending.size;
        if gathered_len >= commit_bytes || (complete && gathered_len > 0) {
            commit(ctx, &*bytes, &mut pending, &mut gathered, &mut gathered_len).await?;
            let committed = v1::Committed {
                offset: pending.committed,
            };
            reply(send, upload_server::Kind::Committed(committed)).await?;
        }
        if complete && gathered_len == 0 {
            return Ok(info(&publish(ctx, user, &*bytes, &pending).await?));
        }
    }
}

/// Size, type and a sane media type, before a byte flows.
fn check_start(ctx: &Ctx, start: &v1::UploadStart, media_type: &str) -> Result<(), Refusal> {
    let max = super::max_blob_bytes(ctx);
    if start.size == 0 {
        return Err(Refusal::invalid("an empty blob"));
    }
    if start.size > max {
        return Err(Refusal::new(
            ErrorCode::BlobTooLarge,
            format!("blobs are at most {max} bytes"),
        ));
    }
    if media_type.len() > MAX_MEDIA_TYPE
        || !media_type.contains('/')
        || !media_type
            .bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_control())
    {
        return Err(Refusal::invalid("media_type is not type/subtype"));
    }
    if !ctx.config.media.accepts(media_type) {
        return Err(Refusal::new(
            ErrorCode::MediaTypeRefused,
            "this server does not take blobs of this media type",
        ));
    }
    Ok(())
}

/// A new pending upload, within the user's quotas.
async fn begin(
    ctx: &Ctx,
    user: &str,
    id: BlobId,
    start: &v1::UploadStart,
    media_type: String,
) -> Result<PendingUpload, Refusal> {
    let config = &ctx.config.media;
    let pending = ctx
        .stores
        .media
        .pending_count(user, config.pending_uploads as usize)
        .await?;
    if pending >= config.pending_uploads as usize {
        return Err(Refusal::new(
            ErrorCode::QuotaExceeded,
            "too many unfinished uploads (media.pending_uploads)",
        ));
    }
    let now = qim_proto::now_ms();
    let charged = ctx
        .stores
        .quotas
        .charge_stored_bytes(
            &quota_key(user),
            utc_day(now),
            start.size,
            config.upload_bytes_per_day,
        )
        .await?;
    if let Charged::Refused { .. } = charged {
        return Err(Refusal::new(
            ErrorCode::QuotaExceeded,
            "upload bytes for today used up (media.upload_bytes_per_day)",
        ));
    }
    let pending = PendingUpload {
        user: user.to_owned(),
        id,
        size: start.size,
        media_type,
        committed: 0,
        started_ms: now,
    };
    ctx.stores.media.put_pending(&pending).await?;
    Ok(pending)
}

/// Makes the gathered chunks durable, then moves the committed offset.
async fn commit(
    ctx: &Ctx,
    bytes: &dyn BlobBytes,
    pending: &mut PendingUpload,
    gathered: &mut Vec<Bytes>,
    gathered_len: &mut u64,
) -> Result<(), Refusal> {
    if *gathered_len == 0 {
        return Ok(());
    }
    let data = std::mem::take(gathered);
    bytes
        .stage(&pending.user, &pending.id, pending.committed, data)
        .await?;
    pending.committed += *gathered_len;
    *gathered_len = 0;
    ctx.stores.media.put_pending(pending).await?;
    Ok(())
}

/// Checks the hash of a complete upload and publishes it, or discards it.
async fn publish(
    ctx: &Ctx,
    user: &str,
    bytes: &dyn BlobBytes,
    pending: &PendingUpload,
) -> Result<BlobMeta, Refusal> {
    let hash = bytes.staged_hash(user, &pending.id, pending.size).await?;
    if hash != pending.id {
        bytes.discard(user, &pending.id).await?;
        ctx.stores.media.remove_pending(user, &pending.id).await?;
        return Err(Refusal::new(
            ErrorCode::HashMismatch,
            "the bytes do not hash to the declared blob id; nothing was kept",
        ));
    }
    bytes.publish(user, &pending.id, pending.size).await?;
    let image = match thumbnail::format(&pending.media_type) {
        Some(format) if ctx.config.media.thumbnail_side > 0 => {
            image(ctx, user, bytes, pending, format).await?
        }
        _ => None,
    };
    let meta = BlobMeta {
        id: pending.id,
        size: pending.size,
        media_type: pending.media_type.clone(),
        created_ms: qim_proto::now_ms(),
        image,
    };
    ctx.stores
        .media
        .complete(user, &meta, super::hold_until(ctx))
        .await?;
    // The record that exists is the one readers get (an earlier uploader's).
    Ok(ctx.stores.media.blob(&pending.id).await?.unwrap_or(meta))
}

/// Decodes a published image and stores its thumbnail. An image beyond
/// the decode's bounds is unpublished (its bytes removed unless another
/// upload of the same bytes was recorded meanwhile) with its pending
/// record: nothing stays. Bytes that do not decode stay a plain file.
async fn image(
    ctx: &Ctx,
    user: &str,
    bytes: &dyn BlobBytes,
    pending: &PendingUpload,
    format: image::ImageFormat,
) -> Result<Option<ImageInfo>, Refusal> {
    let id = &pending.id;
    let thumb = match thumbnail::make(ctx, format, bytes, id, pending.size).await? {
        Ok(thumb) => thumb,
        Err(refused) => {
            ctx.metrics
                .images
                .get_or_create(&vec![("outcome", refused.label())])
                .inc();
            if !refused.refuses() {
                debug!(user, blob = ?id, media_type = %pending.media_type, "not a readable image: kept without a thumbnail");
                return Ok(None);
            }
            info!(user, blob = ?id, media_type = %pending.media_type, reason = %refused, "image refused");
            if ctx.stores.media.blob(id).await?.is_none() {
                bytes.delete(id).await?;
            }
            ctx.stores.media.remove_pending(user, id).await?;
            return Err(Refusal::new(
                ErrorCode::ImageRefused,
                format!("{refused}; nothing was kept"),
            ));
        }
    };
    ctx.metrics
        .images
        .get_or_create(&vec![("outcome", "thumbnail")])
        .inc();
    let thumb_id = BlobId::of(&thumb.jpeg);
    let size = thumb.jpeg.len() as u64;
    // Held when it exists; otherwise marked as being uploaded (refused
    // while a collection of the same bytes runs) until it is published.
    if !ctx
        .stores
        .media
        .hold(&thumb_id, super::hold_until(ctx))
        .await?
    {
        ctx.stores
            .media
            .put_pending(&PendingUpload {
                user: user.to_owned(),
                id: thumb_id,
                size,
                media_type: thumbnail::THUMBNAIL_TYPE.to_owned(),
                committed: 0,
                started_ms: qim_proto::now_ms(),
            })
            .await?;
        bytes
            .stage(user, &thumb_id, 0, vec![Bytes::from(thumb.jpeg)])
            .await?;
        bytes.publish(user, &thumb_id, size).await?;
    }
    let meta = BlobMeta {
        id: thumb_id,
        size,
        media_type: thumbnail::THUMBNAIL_TYPE.to_owned(),
        created_ms: qim_proto::now_ms(),
        image: None,
    };
    ctx.stores
        .media
        .complete(user, &meta, super::hold_until(ctx))
        .await?;
    Ok(Some(ImageInfo {
        width: thumb.width,
        height: thumb.height,
        thumbnail: thumb_id,
    }))
}

/// The server has the bytes: an uploader gets them at once; anyone else
/// proves having them (a keyed hash of a range the server picks), so a
/// blob id alone never grants a read.
async fn deduplicated(
    ctx: &Ctx,
    user: &str,
    bytes: &dyn BlobBytes,
    meta: BlobMeta,
    send: &mut FramedSend,
    recv: &mut FramedRecv,
) -> Result<BlobMeta, End> {
    // Held first: whoever has the bytes may send them within the grace.
    let until = super::hold_until(ctx);
    if !ctx
        .stores
        .media
        .hold(&meta.id, until)
        .await
        .map_err(Refusal::from)?
    {
        return Err(Refusal::from(qim_storage::StoreError::Unavailable(
            "the blob is being removed; upload it again shortly".into(),
        ))
        .into());
    }
    if let Some(image) = &meta.image {
        ctx.stores
            .media
            .hold(&image.thumbnail, until)
            .await
            .map_err(Refusal::from)?;
    }
    if ctx
        .stores
        .media
        .is_uploader(&meta.id, user)
        .await
        .map_err(Refusal::from)?
    {
        return Ok(meta);
    }
    let nonce: [u8; 32] = rand::random();
    let offset = rand::random_range(0..meta.size);
    let length = PROOF_BYTES.min(meta.size - offset);
    let challenge = v1::Challenge {
        nonce: nonce.to_vec().into(),
        offset,
        length,
    };
    reply(send, upload_server::Kind::Challenge(challenge)).await?;
    let upload_client::Kind::Proof(proof) = next(recv).await? else {
        return Err(Refusal::new(
            ErrorCode::ProtocolViolation,
            "a Challenge is answered with UploadProof",
        )
        .into());
    };
    let range = super::read_published(ctx, bytes, &meta.id, offset, length as usize).await?;
    let expected = blake3::keyed_hash(&nonce, &range);
    // blake3::Hash compares in constant time.
    if blake3::Hash::from_slice(&proof.mac).ok() != Some(expected) {
        return Err(Refusal::new(
            ErrorCode::HashMismatch,
            "the proof does not match the blob's bytes",
        )
        .into());
    }
    ctx.stores
        .media
        .add_uploader(&meta.id, user)
        .await
        .map_err(Refusal::from)?;
    // Whoever may read an image may read its thumbnail.
    if let Some(image) = &meta.image {
        ctx.stores
            .media
            .add_uploader(&image.thumbnail, user)
            .await
            .map_err(Refusal::from)?;
    }
    Ok(meta)
}
