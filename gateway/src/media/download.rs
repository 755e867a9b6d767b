//! One download stream: a range of one blob, read in chunks, to a user who
//! may read it (see `access.rs`). A download resumes by asking again from
//! the offset it has.

use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::v1::{self, ErrorCode, download_server};
use tracing::debug;

use super::{blob_id, blobs, error, info};
use crate::ctx::Ctx;
use crate::fault::Fault;
use crate::reply::Refusal;

/// Bytes read from the blob backend at once (then sent in chunks).
const READ_BYTES: usize = 1 << 20;

/// Serves one download stream of `user`; `Some` when the session must end.
pub(crate) async fn serve(
    ctx: &Ctx,
    user: &str,
    mut send: FramedSend,
    mut recv: FramedRecv,
) -> Option<Fault> {
    let request = match recv.next::<v1::DownloadRequest>().await {
        Ok(Some(request)) => request,
        Ok(None) => return None,
        Err(e) => return Fault::from_recv(e),
    };
    if let Err(refusal) = download(ctx, user, request, &mut send).await {
        debug!(user, code = ?refusal.code, message = %refusal.message, "download refused");
        let kind = download_server::Kind::Error(error(refusal));
        let _ = send.send(&v1::DownloadServer { kind: Some(kind) }).await;
    }
    send.finish();
    None
}

async fn download(
    ctx: &Ctx,
    user: &str,
    request: v1::DownloadRequest,
    send: &mut FramedSend,
) -> Result<(), Refusal> {
    let bytes = blobs(ctx)?;
    let id = blob_id(&request.blob_id)?;
    let meta = super::access::readable(ctx, user, &id).await?;
    if request.offset > meta.size {
        return Err(Refusal::new(
            ErrorCode::OutOfRange,
            "offset beyond the blob",
        ));
    }
    let rest = meta.size - request.offset;
    let length = if request.length == 0 {
        rest
    } else {
        request.length
    };
    if length > rest {
        return Err(Refusal::new(ErrorCode::OutOfRange, "range beyond the blob"));
    }
    let head = v1::DownloadHead {
        blob: Some(info(&meta)),
        offset: request.offset,
        length,
    };
    let frame = |kind| v1::DownloadServer { kind: Some(kind) };
    if send
        .send(&frame(download_server::Kind::Head(head)))
        .await
        .is_err()
    {
        return Ok(());
    }
    let chunk_bytes = ctx.config.media.chunk_bytes as usize;
    let mut offset = request.offset;
    let end = request.offset + length;
    while offset < end {
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(READ_BYTES);
        let data = super::read_published(ctx, bytes.as_ref(), &id, offset, want).await?;
        if data.is_empty() {
            return Err(Refusal::new(
                ErrorCode::Internal,
                "the blob's bytes are missing",
            ));
        }
        let mut at = 0;
        while at < data.len() {
            let piece = data.slice(at..(at + chunk_bytes).min(data.len()));
            let chunk = v1::DownloadChunk {
                offset: offset + at as u64,
                data: piece,
            };
            at += chunk.data.len();
            if send
                .send(&frame(download_server::Kind::Chunk(chunk)))
                .await
                .is_err()
            {
                // The client went away or cancelled: nothing to answer.
                return Ok(());
            }
        }
        offset += data.len() as u64;
    }
    Ok(())
}
