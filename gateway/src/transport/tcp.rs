//! Accepting TLS on TCP: the listener, the bounded handshake, the ALPN
//! check, and the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use qim_proto::transport::mux::{self, Limits, Role};
use qim_proto::v1::ErrorCode;
use tracing::{debug, warn};

use crate::config::Config;
use crate::ctx::Ctx;
use crate::handshake::{Admission, Pending};
use crate::server::StartError;
use crate::tls::{self, Resumption};

/// The bound TCP listener and its TLS settings.
pub(crate) struct TcpListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TcpListener {
    /// Binds `transport.tcp_listen` (by default `server.listen`'s address
    /// and port, on TCP; port 0 picks a free one) when TCP is on. The TLS settings are the QUIC endpoint's
    /// (certificate, TLS 1.3 only, ALPN `qim/1`, resumption) without 0-RTT,
    /// which stays QUIC's.
    pub(crate) async fn bind(
        config: &Config,
        cert: &std::path::Path,
        key: &std::path::Path,
        resumption: &Resumption,
    ) -> Result<Option<TcpListener>, StartError> {
        let Some(addr) = config.transport.tcp_addr(config.server.listen) else {
            return Ok(None);
        };
        let mut tls = tls::server_config(cert, key, resumption)?;
        tls.max_early_data_size = 0;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok(Some(TcpListener {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        }))
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection attempt with its handshake slot, ready to
    /// [`serve`]; attempts beyond the slots are dropped at once (counted as
    /// `SERVER_BUSY`).
    pub(crate) async fn accept(&self, admission: &Admission, ctx: &Ctx) -> Attempt {
        loop {
            let (stream, remote) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    warn!(error = %e, "accepting a TCP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match admission.slot() {
                Some(pending) => {
                    return Attempt {
                        stream,
                        remote,
                        pending,
                        acceptor: self.acceptor.clone(),
                    };
                }
                None => {
                    debug!(%remote, "quic.max_pending_handshakes reached; refusing a TCP attempt");
                    ctx.metrics.protocol_error(ErrorCode::ServerBusy);
                }
            }
        }
    }
}

/// An accepted TCP connection holding a handshake slot.
pub(crate) struct Attempt {
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    pending: Pending,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// Serves one attempt: its TLS handshake (bounded), then the session under
/// a connection permit, as `handshake::serve` does for QUIC.
pub(crate) async fn serve(ctx: Arc<Ctx>, attempt: Attempt) {
    let Attempt {
        stream,
        remote,
        pending,
        acceptor,
    } = attempt;
    // No Nagle delay, little unsent data in the kernel ahead of a frame.
    qim_proto::transport::tcp::tune(&stream);
    let bound = Duration::from_millis(ctx.config.transport.handshake_timeout_ms);
    let tls = match tokio::time::timeout(bound, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            ctx.metrics.handshakes_timed_out.inc();
            debug!(%remote, "TLS handshake timed out (transport.handshake_timeout_ms)");
            return;
        }
    };
    // The version check QUIC makes: rustls refuses a client that offers
    // only other protocols; one that offers none is refused here.
    if tls.get_ref().1.alpn_protocol() != Some(qim_proto::ALPN) {
        debug!(%remote, "TLS client without ALPN qim/1; closing");
        ctx.metrics.protocol_error(ErrorCode::VersionTooOld);
        return;
    }
    let q = &ctx.config.quic;
    let limits = Limits {
        bidi: q.max_bidi_streams as usize,
        uni: q.max_uni_streams as usize,
    };
    let conn = mux::connect(tls, Role::Server, remote, limits);
    let Some(_permit) = pending.into_connection() else {
        warn!(%remote, "connection limit reached (server.max_connections); closing");
        ctx.metrics.protocol_error(ErrorCode::ServerBusy);
        conn.close(ErrorCode::ServerBusy, b"server busy");
        return;
    };
    ctx.metrics.connections.inc();
    ctx.metrics.connections_open.inc();
    // The handshake is complete: nothing on TCP is early data.
    let handshake = futures_util::future::ready(true).boxed().shared();
    crate::session::serve(&ctx, &conn, handshake).await;
    ctx.metrics.connections_open.dec();
}
