//! Abandoned uploads expire: a pending upload older than
//! `media.pending_expiry_ms` loses its staged bytes and its record.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::ctx::Ctx;

/// Pending uploads removed per pass.
const BATCH: usize = 256;

/// Removes the pending uploads started before `before_ms`; returns how
/// many went.
pub(crate) async fn sweep_once(ctx: &Ctx, before_ms: i64) -> usize {
    let Some(bytes) = ctx.stores.blobs.clone() else {
        return 0;
    };
    let stale = match ctx.stores.media.stale_pending(before_ms, BATCH).await {
        Ok(stale) => stale,
        Err(e) => {
            warn!(error = %e, "reading abandoned uploads failed");
            return 0;
        }
    };
    let mut removed = 0;
    for p in stale {
        let gone = match bytes.discard(&p.user, &p.id).await {
            Ok(()) => ctx.stores.media.remove_pending(&p.user, &p.id).await,
            Err(e) => Err(e),
        };
        match gone {
            Ok(()) => removed += 1,
            Err(e) => warn!(user = %p.user, error = %e, "removing an abandoned upload failed"),
        }
    }
    if removed > 0 {
        debug!(removed, "abandoned uploads expired");
    }
    removed
}

/// Sweeps every so often until the gateway drains.
pub(crate) async fn run(ctx: std::sync::Arc<Ctx>, mut draining: watch::Receiver<bool>) {
    let expiry = ctx.config.media.pending_expiry_ms;
    let every = Duration::from_millis((expiry / 4).clamp(1_000, 3_600_000));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = draining.changed() => return,
        }
        let before = qim_proto::now_ms().saturating_sub(i64::try_from(expiry).unwrap_or(i64::MAX));
        sweep_once(&ctx, before).await;
    }
}
