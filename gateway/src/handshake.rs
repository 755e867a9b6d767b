//! A connection from its first packet to a completed QUIC handshake: what
//! an attempt may hold before it proved anything.
//!
//! A connection attempt costs the server state as soon as it is accepted,
//! and its source address may be spoofed. So:
//! - an attempt in its handshake holds one of `quic.max_pending_handshakes`
//!   slots ([`Pending`]), not one of `server.max_connections`; beyond that
//!   many the attempt is refused;
//! - above `quic.retry_above_pending` handshakes in progress (or always, with
//!   `quic.validate_addresses`), an attempt from an address not yet
//!   validated is answered with a QUIC Retry, which costs the server no
//!   state: a spoofed address never sees the Retry, so it never gets a slot;
//! - a handshake must complete within `quic.handshake_timeout_ms`, or the
//!   connection is closed and counted in `qim_handshakes_timed_out_total`;
//! - only a completed handshake trades its pending slot for a connection
//!   permit; without one the connection is closed with `SERVER_BUSY`.
//!
//! The login may start during the handshake (0.5-RTT, see
//! [`session::serve`](crate::session::serve)); the session runs alongside
//! these checks and ends when they close the connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use qim_proto::v1::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::Config;
use crate::ctx::Ctx;
use crate::metrics::Metrics;

/// Decides which connection attempts get a handshake slot.
pub(crate) struct Admission {
    pending: Arc<Semaphore>,
    max_pending: usize,
    retry_above: usize,
    always_validate: bool,
    connections: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// A handshake slot, held from the attempt's admission until its handshake
/// completed (or failed, or timed out).
pub(crate) struct Pending {
    _permit: OwnedSemaphorePermit,
    connections: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.metrics.handshakes_pending.dec();
    }
}

impl Admission {
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let q = &config.quic;
        Self {
            pending: Arc::new(Semaphore::new(q.max_pending_handshakes)),
            max_pending: q.max_pending_handshakes,
            retry_above: q.retry_above_pending,
            always_validate: q.validate_addresses,
            connections: Arc::new(Semaphore::new(config.server.max_connections)),
            metrics,
        }
    }

    /// The attempt and its slot, to serve; `None` when it was answered with
    /// a Retry or refused.
    pub(crate) fn admit(
        &self,
        incoming: quinn::Incoming,
    ) -> Option<(Box<quinn::Incoming>, Pending)> {
        let in_progress = self.max_pending - self.pending.available_permits();
        let validate = self.always_validate || in_progress >= self.retry_above;
        if validate && !incoming.remote_address_validated() && incoming.may_retry() {
            match incoming.retry() {
                Ok(()) => {
                    self.metrics.retries_sent.inc();
                }
                Err(e) => {
                    warn!(error = %e, "address validation retry failed");
                    e.into_incoming().refuse();
                }
            }
            return None;
        }
        match self.slot() {
            Some(pending) => Some((Box::new(incoming), pending)),
            None => {
                debug!(remote = %incoming.remote_address(), "quic.max_pending_handshakes reached; refusing");
                self.metrics.protocol_error(ErrorCode::ServerBusy);
                incoming.refuse();
                None
            }
        }
    }

    /// A handshake slot, if one is free: QUIC and TCP attempts share them.
    pub(crate) fn slot(&self) -> Option<Pending> {
        let permit = Arc::clone(&self.pending).try_acquire_owned().ok()?;
        self.metrics.handshakes_pending.inc();
        Some(Pending {
            _permit: permit,
            connections: Arc::clone(&self.connections),
            metrics: Arc::clone(&self.metrics),
        })
    }
}

impl Pending {
    /// Trades the handshake slot for a connection permit; `None` at
    /// `server.max_connections`.
    pub(crate) fn into_connection(self) -> Option<OwnedSemaphorePermit> {
        let connections = Arc::clone(&self.connections);
        drop(self);
        connections.try_acquire_owned().ok()
    }
}

/// How the handshake phase ended.
enum Phase {
    /// The handshake completed.
    Completed,
    /// It took longer than `quic.handshake_timeout_ms`.
    TimedOut,
    /// The session ended first (the handshake failed, or the connection
    /// was lost).
    SessionEnded,
}

/// Serves one admitted attempt: its handshake (bounded), then the session
/// under a connection permit.
///
/// `incoming` comes boxed: the future keeps room for its arguments for its
/// whole life, and a `quinn::Incoming` is large.
pub(crate) async fn serve(ctx: Arc<Ctx>, incoming: Box<quinn::Incoming>, pending: Pending) {
    let started = Instant::now();
    let bound = Duration::from_millis(ctx.config.quic.handshake_timeout_ms);
    let remote = incoming.remote_address();
    // Out of its box at once (a box moved out of is freed only where it
    // goes out of scope: here, the end of the connection).
    let incoming = unbox(incoming);
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            debug!(error = %e, "handshake failed");
            return;
        }
    };
    // On a server, `into_0rtt` always succeeds (0.5-RTT); the other arm
    // is the general case.
    let (conn, handshake): (quinn::Connection, crate::session::Handshake) =
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => (conn, accepted.boxed().shared()),
            Err(connecting) => match tokio::time::timeout(bound, connecting).await {
                Ok(Ok(conn)) => (conn, futures_util::future::ready(true).boxed().shared()),
                Ok(Err(e)) => {
                    debug!(error = %e, "handshake failed");
                    return;
                }
                Err(_) => {
                    // Dropping the attempt closes it.
                    timed_out(&ctx, remote);
                    return;
                }
            },
        };
    let transport = qim_proto::transport::Connection::from(conn.clone());
    let session = crate::session::serve(&ctx, &transport, handshake.clone());
    tokio::pin!(session);
    let phase = tokio::select! {
        biased;
        _ = handshake => Phase::Completed,
        () = tokio::time::sleep_until(started + bound) => Phase::TimedOut,
        () = &mut session => Phase::SessionEnded,
    };
    match phase {
        Phase::SessionEnded => {}
        Phase::TimedOut => {
            timed_out(&ctx, remote);
            conn.close(
                ErrorCode::LoginTimeout.to_quic().into(),
                b"handshake timed out",
            );
            session.await;
        }
        Phase::Completed if conn.close_reason().is_some() => session.await,
        Phase::Completed => {
            let connections = Arc::clone(&pending.connections);
            drop(pending);
            let Ok(_permit) = connections.try_acquire_owned() else {
                warn!(%remote, "connection limit reached (server.max_connections); closing");
                ctx.metrics.protocol_error(ErrorCode::ServerBusy);
                conn.close(ErrorCode::ServerBusy.to_quic().into(), b"server busy");
                session.await;
                return;
            };
            ctx.metrics.connections.inc();
            ctx.metrics.connections_open.inc();
            session.await;
            ctx.metrics.connections_open.dec();
        }
    }
}

/// The value of `b`, its box freed.
#[expect(clippy::boxed_local, reason = "the box is what is freed here")]
fn unbox<T>(b: Box<T>) -> T {
    *b
}

fn timed_out(ctx: &Ctx, remote: std::net::SocketAddr) {
    ctx.metrics.handshakes_timed_out.inc();
    debug!(%remote, "handshake timed out (quic.handshake_timeout_ms)");
}
