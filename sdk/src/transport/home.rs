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

/// How long a move back looks for a quiet moment while the session
/// writes on (see [`quiet_moment`]).
const QUIET_WITHIN: Duration = Duration::from_secs(3);

/// How long it then holds new sends back to make one.
const HOLD_AT_MOST: Duration = Duration::from_secs(2);

/// Before a planned move: a moment when every send written on this
/// session is answered, after which nothing new is written on it (the
/// next session writes what waits), so the move resends nothing. First
/// looks for one for [`QUIET_WITHIN`] while sends go on; then holds new
/// sends back for at most [`HOLD_AT_MOST`]. A session still busy then (its
/// acks are slow under load) moves anyway, and what is unanswered goes
/// again on the new session, as after any reconnect: staying would leave
/// the restarted node empty and the others carrying every client.
async fn quiet_moment(shared: &Shared) {
    let now = tokio::time::Instant::now();
    if answered_by(shared, now + QUIET_WITHIN).await {
        return;
    }
    shared.moving.store(true, Ordering::Release);
    if !answered_by(shared, tokio::time::Instant::now() + HOLD_AT_MOST).await {
        debug!("moving with sends unanswered; they go again on the next session");
    }
}

/// Waits until every send written on this session is answered, then
/// stops writing new ones (sets `moving`); `false` at `deadline`.
async fn answered_by(shared: &Shared, deadline: tokio::time::Instant) -> bool {
    loop {
        let answered = shared.outbox_answered.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        {
            // Under the outbox's lock: the chat writer reads `moving`
            // under it too, so nothing is written after this check.
            let outbox = crate::sync::lock(&shared.outbox);
            if outbox.in_flight() == 0 {
                shared.moving.store(true, Ordering::Release);
                return true;
            }
        }
        if tokio::time::timeout_at(deadline, answered).await.is_err() {
            return false;
        }
    }
}

/// Returns `Ok` once the session should move back to the first server
/// (the driver then reconnects there); never returns on the first server,
/// with one server, or with `home_return_after` zero. The first try waits
/// `home_return_after` plus up to as much again at random, so the clients
/// of a node that comes back return spread over that time, not at once;
/// after a failed try the wait doubles, up to `quic_retry_max`. The move
/// waits for a quiet moment first ([`quiet_moment`]).
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
            quiet_moment(&shared).await;
            shared.server.store(0, Ordering::Relaxed);
            return Ok(());
        }
        wait = (wait * 2).min(shared.config.quic_retry_max.max(after));
        debug!(next_in = ?wait, "the first server still does not answer");
    }
}
