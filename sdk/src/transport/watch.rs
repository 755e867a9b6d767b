//! A session's transport watch: partial loss on QUIC, the way back to QUIC
//! from TCP.

use std::sync::Arc;
use std::time::Duration;

use qim_proto::transport::{Connection, TransportKind};
use qim_proto::v1::ErrorCode;
use tracing::{debug, info};

use super::{Transport, TransportPolicy};
use crate::Error;
use crate::shared::Shared;
use crate::sync::lock;

/// Watches the session on `conn`. On QUIC: fails the session when its
/// first ping gets no pong within `quic_stall_timeout` (QUIC carries
/// nothing; the network is marked for TCP). On TCP under
/// [`TransportPolicy::Auto`]: returns `Ok` once QUIC works again, for the
/// driver to reconnect over it. Otherwise it never returns.
pub(crate) async fn watch(shared: Arc<Shared>, conn: Connection) -> Result<(), Error> {
    if shared.config.transport != TransportPolicy::Auto {
        return std::future::pending().await;
    }
    let Some(quic_addr) = *lock(&shared.transports.quic_addr) else {
        return std::future::pending().await;
    };
    match conn.kind() {
        TransportKind::Quic => {
            let mut pongs = shared.pongs.subscribe();
            let before = *pongs.borrow_and_update();
            let answered = tokio::time::timeout(shared.config.quic_stall_timeout, async {
                pongs.wait_for(|n| *n > before).await.is_ok()
            })
            .await;
            if answered.is_err() {
                info!("QUIC logged in but carries nothing; falling back to TCP");
                shared.transports.remember(quic_addr, Transport::Tcp);
                return Err(Error::Network("QUIC stalled after the handshake".into()));
            }
            std::future::pending().await
        }
        TransportKind::Tcp => {
            let mut wait = shared.config.quic_retry_min;
            loop {
                tokio::time::sleep(wait).await;
                if quic_works(&shared, quic_addr).await {
                    info!("QUIC works again; moving the session to QUIC");
                    shared.transports.remember(quic_addr, Transport::Quic);
                    return Ok(());
                }
                wait = (wait * 2).min(shared.config.quic_retry_max);
                debug!(next_in = ?wait, "QUIC still does not work");
            }
        }
    }
}

/// Whether a QUIC connection to `addr` completes its handshake and then
/// carries a packet each way: a byte on a stream of its own (never a
/// login), and the acknowledgement of the packet that carried it. The
/// probe connection is closed with `NO_ERROR` either way.
pub(super) async fn quic_works(shared: &Shared, addr: std::net::SocketAddr) -> bool {
    let within = shared.config.probe_timeout.max(Duration::from_millis(500));
    let probe = async {
        let connecting = shared
            .endpoint
            .connect(addr, &shared.config.server_name)
            .ok()?;
        let conn = connecting.await.ok()?;
        let acks = conn.stats().frame_rx.acks;
        let mut stream = conn.open_uni().await.ok()?;
        stream.write_all(b"Q").await.ok()?;
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if conn.stats().frame_rx.acks > acks {
                conn.close(ErrorCode::NoError.to_quic().into(), b"probe");
                return Some(());
            }
            // Why a sleep: quinn offers no event for an acknowledgement.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        conn.close(ErrorCode::NoError.to_quic().into(), b"probe");
        None
    };
    tokio::time::timeout(within * 4, probe)
        .await
        .ok()
        .flatten()
        .is_some()
}
