//! Blobs no message carries any more are collected: their bytes (files or
//! objects) and every record of them, the thumbnail of an image with it.
//!
//! Mark and sweep over the copies recorded after each post (see
//! `qim_storage::media`, "Collection"): a blob whose hold passed is
//! checked copy by copy against the message store; copies that are gone,
//! recalled or deleted for their owner are forgotten; a blob with none
//! left, no pending upload of its bytes and its hold still passed is
//! claimed atomically, its bytes removed, then its records. Every use of
//! a blob (publication, a dedup proof, a send's check) moves its hold to
//! `media.collect_grace_ms` ahead first, so an upload committed and not
//! yet sent, or a send between its check and its store write, is never
//! collected. Several nodes may sweep at once: one claim wins per blob.

use std::time::Duration;

use qim_storage::media::{self, BlobId, Collect};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::ctx::Ctx;

/// Blobs looked at per pass.
const BATCH: usize = 256;

/// Copies read back per step.
const COPIES: usize = 256;

/// Steps through one blob's copies per pass (a blob carried by more dead
/// copies than this goes on in the next pass).
const COPY_STEPS: usize = 16;

/// Whether a recorded copy still carries `id`, forgetting those that do
/// not; `None` when the store failed.
async fn carried(ctx: &Ctx, id: &BlobId) -> Option<bool> {
    let store = &ctx.stores.media;
    for _ in 0..COPY_STEPS {
        let copies = match store.copies(id, COPIES).await {
            Ok(copies) => copies,
            Err(e) => {
                warn!(blob = ?id, error = %e, "reading a blob's copies failed");
                return None;
            }
        };
        if copies.is_empty() {
            return Some(false);
        }
        let mut dead = Vec::new();
        for copy in copies {
            match media::carries(ctx.stores.messages.as_ref(), id, &copy).await {
                Ok(true) => {
                    if let Err(e) = store.remove_copies(id, &dead).await {
                        warn!(blob = ?id, error = %e, "forgetting copies failed");
                    }
                    return Some(true);
                }
                Ok(false) => dead.push(copy),
                Err(e) => {
                    warn!(blob = ?id, error = %e, "reading a copy failed");
                    return None;
                }
            }
        }
        if let Err(e) = store.remove_copies(id, &dead).await {
            warn!(blob = ?id, error = %e, "forgetting copies failed");
            return None;
        }
    }
    // Not through its copies yet: look again next pass.
    Some(true)
}

/// Collects `id` if nothing carries it any more; true when it went.
async fn collect(ctx: &Ctx, id: &BlobId, now_ms: i64, claim: u64) -> bool {
    let Some(bytes) = ctx.stores.blobs.clone() else {
        return false;
    };
    let store = &ctx.stores.media;
    let hold = now_ms.saturating_add(grace_ms(ctx));
    let held = |until: i64| async move {
        if let Err(e) = store.hold(id, until).await {
            warn!(blob = ?id, error = %e, "moving a blob's hold failed");
        }
    };
    let meta = match store.blob(id).await {
        Ok(meta) => meta,
        Err(e) => {
            warn!(blob = ?id, error = %e, "reading a blob failed");
            return false;
        }
    };
    match carried(ctx, id).await {
        Some(false) => {}
        Some(true) => {
            held(hold).await;
            return false;
        }
        None => return false,
    }
    match store.begin_collect(id, now_ms, claim).await {
        Ok(Collect::Claimed) => {}
        Ok(Collect::Held(until)) => {
            held(until).await;
            return false;
        }
        Ok(Collect::InUse) => {
            held(hold).await;
            return false;
        }
        Ok(Collect::Busy | Collect::Gone) => return false,
        Err(e) => {
            warn!(blob = ?id, error = %e, "claiming a blob failed");
            return false;
        }
    }
    // Bytes first: records without bytes would be readable, bytes
    // without records are only space (and the claim is retried).
    let gone = match bytes.delete(id).await {
        Ok(()) => store.finish_collect(id, claim).await,
        Err(e) => Err(e),
    };
    if let Err(e) = gone {
        warn!(blob = ?id, error = %e, "collecting a blob failed; the next pass goes on");
        return false;
    }
    debug!(blob = ?id, "blob collected");
    // An image's thumbnail goes with it, unless something else carries it.
    if let Some(image) = meta.and_then(|m| m.image)
        && image.thumbnail != *id
    {
        Box::pin(collect(ctx, &image.thumbnail, now_ms, claim)).await;
    }
    true
}

/// The grace of `media.collect_grace_ms`.
pub(crate) fn grace_ms(ctx: &Ctx) -> i64 {
    i64::try_from(ctx.config.media.collect_grace_ms).unwrap_or(i64::MAX)
}

/// One pass over the blobs whose hold passed by `now_ms`; returns how
/// many were collected.
pub(crate) async fn collect_once(ctx: &Ctx, now_ms: i64) -> usize {
    if ctx.stores.blobs.is_none() {
        return 0;
    }
    let due = match ctx.stores.media.due_blobs(now_ms, BATCH).await {
        Ok(due) => due,
        Err(e) => {
            warn!(error = %e, "reading the blobs due failed");
            return 0;
        }
    };
    let claim: u64 = rand::random();
    let mut collected = 0;
    for id in due {
        if collect(ctx, &id, now_ms, claim).await {
            collected += 1;
        }
    }
    if collected > 0 {
        debug!(collected, "blobs no message carries collected");
    }
    collected
}

/// Collects every so often until the gateway drains.
pub(crate) async fn run(ctx: std::sync::Arc<Ctx>, mut draining: watch::Receiver<bool>) {
    let grace = ctx.config.media.collect_grace_ms;
    let every = Duration::from_millis((grace / 4).clamp(1_000, 3_600_000));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = draining.changed() => return,
        }
        collect_once(&ctx, qim_proto::now_ms()).await;
    }
}

/// Records the stored copies of a post that carry blobs, so the sweep
/// knows which messages hold them. On a failure the send is refused as
/// retryable although its message is stored: the client's resend is a
/// duplicate that records them again, so no acknowledged message carries
/// a blob the sweep does not know it holds.
pub(crate) async fn record_copies(
    ctx: &Ctx,
    copies: &[qim_storage::StoredMessage],
) -> Result<(), qim_storage::StoreError> {
    let Some(first) = copies.first() else {
        return Ok(());
    };
    for id in media::carried_blobs(&first.message) {
        let refs: Vec<media::CopyRef> = copies
            .iter()
            .map(|c| media::CopyRef {
                inbox: c.inbox.clone(),
                seq: c.seq,
            })
            .collect();
        if let Err(e) = ctx.stores.media.add_copies(&id, &refs).await {
            warn!(blob = ?id, error = %e, "recording the copies carrying a blob failed; the send is refused as retryable");
            return Err(e);
        }
    }
    Ok(())
}
