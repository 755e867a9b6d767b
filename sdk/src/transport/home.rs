//! The way back to the first configured server: a session on a fallback
//! server (its first server failed) tries the first server again in the
//! background and moves back once it accepts connections, so a restarted
//! node takes its clients back instead of staying empty while the others
//! carry them all.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng as _;
use tracing::{debug, info};

use crate::Error;
use crate::shared::Shared;

/// The longest a session drains before a move back (see [`drain`]).
const DRAIN_AT_MOST: Duration = Duration::from_secs(10);

/// Before a planned move: stops writing new sends on this session and
/// waits (at most [`DRAIN_AT_MOST`]) until every send written on it is
/// answered, so the move resends nothing; the new session writes what
/// waited. A send still unanswered then is resent after the move, as
/// after any reconnect.
async fn drain(shared: &Shared) {
    shared.moving.store(true, Ordering::Release);
    let deadline = tokio::time::Instant::now() + DRAIN_AT_MOST;
    loop {
        let answered = shared.outbox_answered.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        let in_flight = crate::sync::lock(&shared.outbox).in_flight();
        if in_flight == 0 {
            return;
        }
        if tokio::time::timeout_at(deadline, answered).await.is_err() {
            debug!(in_flight, "sends still unanswered; moving anyway");
            return;
        }
    }
}

/// Returns `Ok` once the session should move back to the first server
/// (the driver then reconnects there); never returns on the first server,
/// with one server, or with `home_return_after` zero. The first try waits
/// `home_return_after` plus up to as much again at random, so the clients
/// of a node that comes back return spread over that time, not at once;
/// after a failed try the wait doubles, up to `quic_retry_max`.
pub(crate) async fn home(shared: Arc<Shared>) -> Result<(), Error> {
    let servers = 1 + shared.config.fallback_servers.len();
    let at = shared.server.load(Ordering::Relaxed) % servers;
    let after = shared.config.home_return_after;
    if servers == 1 || at == 0 || after.is_zero() {
        return std::future::pending().await;
    }
    let spread = Duration::from_millis(rand::rng().random_range(0..=after.as_millis() as u64));
    let mut wait = after + spread;
    loop {
        // Why a sleep: the wait between tries is the subject (a
        // background retry with backoff).
        tokio::time::sleep(wait).await;
        let first = shared.config.server_at(0);
        if let Ok(addr) = crate::connect::resolve(first).await
            && super::watch::quic_works(&shared, addr).await
        {
            info!(
                server = first,
                "the first server is back; moving the session to it"
            );
            drain(&shared).await;
            shared.server.store(0, Ordering::Relaxed);
            return Ok(());
        }
        wait = (wait * 2).min(shared.config.quic_retry_max.max(after));
        debug!(next_in = ?wait, "the first server still does not answer");
    }
}
