//! Transports: what a session's streams run over. A [`Transport`] opens and
//! accepts bidirectional and unidirectional streams, closes with an
//! [`ErrorCode`], and tells the peer's address; the session, delivery, ack
//! and sync logic of the gateway and the SDK is written once against it.
//!
//! Two transports implement it:
//! - QUIC (`quinn::Connection`), the default: streams, flow control and
//!   priorities are QUIC's own; connection migration and 0-RTT exist only
//!   here.
//! - [`mux`]: one TLS 1.3 connection on TCP carrying the same streams as
//!   yamux streams, for networks that block or starve UDP. Each stream
//!   starts with one direction byte, and each side's first stream is its
//!   transport stream, which carries the close code (see `PROTOCOL.md`).
//!
//! Streams are the concrete [`SendStream`] and [`RecvStream`]: the stream
//! path is the hot one (a read per frame batch), so it is a match on two
//! variants rather than a boxed call.

mod linger;
pub mod mux;
mod quic;
mod sched;
pub mod tcp;
mod waiters;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::v1::ErrorCode;

/// A boxed future, as the object-safe [`Transport`] returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP with yamux streams ([`mux`]).
    Tcp,
}

impl TransportKind {
    /// The name apps show: `"QUIC"` or `"TCP"`.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Quic => "QUIC",
            TransportKind::Tcp => "TCP",
        }
    }
}

/// Why a connection ended, on either transport.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer closed it with this code (a QUIC application close, or a
    /// `TransportClose` frame on TCP).
    #[error("closed by the peer: {code:?}: {reason}")]
    ApplicationClosed {
        /// Why.
        code: ErrorCode,
        /// The peer's fixed text.
        reason: String,
    },
    /// This side closed it.
    #[error("closed locally")]
    LocallyClosed,
    /// The TLS handshake failed (a TLS alert, a certificate refused).
    #[error("TLS: {0}")]
    Tls(String),
    /// Anything else: a timeout, a reset, the network.
    #[error("connection lost: {0}")]
    Lost(String),
}

/// A connection the session's streams run over.
///
/// Object-safe (futures are boxed): a [`Connection`] holds any transport.
/// The futures of `accept_*` are cancel-safe: a stream is never lost when
/// one is dropped before it resolved.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Which transport this is.
    fn kind(&self) -> TransportKind;
    /// Opens a bidirectional stream.
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>>;
    /// Opens a unidirectional stream.
    fn open_uni(&self) -> BoxFuture<'_, Result<SendStream, ConnectionError>>;
    /// The next bidirectional stream the peer opened.
    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>>;
    /// The next unidirectional stream the peer opened.
    fn accept_uni(&self) -> BoxFuture<'_, Result<RecvStream, ConnectionError>>;
    /// Closes the connection, telling the peer `code` and `reason`.
    fn close(&self, code: ErrorCode, reason: &[u8]);
    /// Why the connection ended, once it has.
    fn close_reason(&self) -> Option<ConnectionError>;
    /// Resolves when the connection ended, with why.
    fn closed(&self) -> BoxFuture<'_, ConnectionError>;
    /// The peer's address as last seen.
    fn remote_address(&self) -> SocketAddr;
    /// The transport's smoothed round-trip estimate; zero when it has none.
    fn rtt(&self) -> Duration;
    /// PATH_CHALLENGE frames received so far (a QUIC peer validating a new
    /// address of ours); always 0 where there is no migration.
    fn path_challenges(&self) -> u64 {
        0
    }
}

/// A cloneable handle to a connection on any transport.
#[derive(Clone, Debug)]
pub struct Connection(Arc<dyn Transport>);

impl Connection {
    /// Wraps a transport.
    pub fn new(transport: impl Transport) -> Self {
        Self(Arc::new(transport))
    }

    /// Whether `other` is this same connection (not another one to the
    /// same server).
    pub fn same_as(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Which transport this is.
    pub fn kind(&self) -> TransportKind {
        self.0.kind()
    }

    /// Opens a bidirectional stream.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        self.0.open_bi().await
    }

    /// Opens a unidirectional stream.
    pub async fn open_uni(&self) -> Result<SendStream, ConnectionError> {
        self.0.open_uni().await
    }

    /// The next bidirectional stream the peer opened.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        self.0.accept_bi().await
    }

    /// The next unidirectional stream the peer opened.
    pub async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        self.0.accept_uni().await
    }

    /// Closes the connection with `code`.
    pub fn close(&self, code: ErrorCode, reason: &[u8]) {
        self.0.close(code, reason);
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.0.close_reason()
    }

    /// Resolves when the connection ended.
    pub async fn closed(&self) -> ConnectionError {
        self.0.closed().await
    }

    /// The peer's address as last seen.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// The round-trip estimate (zero when the transport has none).
    pub fn rtt(&self) -> Duration {
        self.0.rtt()
    }

    /// PATH_CHALLENGE frames received (QUIC only).
    pub fn path_challenges(&self) -> u64 {
        self.0.path_challenges()
    }
}

impl From<quinn::Connection> for Connection {
    fn from(conn: quinn::Connection) -> Self {
        Connection::new(conn)
    }
}

/// Why a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer reset the stream (on TCP the code is always
    /// [`ErrorCode::Unspecified`]: yamux resets carry none).
    #[error("stream reset by peer: {0:?}")]
    Reset(ErrorCode),
    /// The connection is gone.
    #[error(transparent)]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was finished or reset on this side.
    #[error("stream closed")]
    Closed,
    /// Anything else (0-RTT rejected, an IO error).
    #[error("stream failed: {0}")]
    Other(String),
}

/// The receiving side of a stream.
#[derive(Debug)]
pub struct RecvStream(RecvInner);

#[derive(Debug)]
enum RecvInner {
    Quic(quinn::RecvStream),
    Mux(mux::MuxRecv),
}

impl From<quinn::RecvStream> for RecvStream {
    fn from(s: quinn::RecvStream) -> Self {
        RecvStream(RecvInner::Quic(s))
    }
}

impl RecvStream {
    /// Appends up to `max` received bytes to `buf`: `Ready(Ok(true))` when
    /// some were, `Ready(Ok(false))` at the end of the stream. Cancel-safe.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<Result<bool, StreamError>> {
        match &mut self.0 {
            RecvInner::Quic(s) => quic::poll_read_into(s, cx, buf, max),
            RecvInner::Mux(s) => s.poll_read_into(cx, buf, max),
        }
    }

    /// Reads exactly `out.len()` bytes; `Ok(false)` when the stream ended
    /// first (with what arrived left in `out`'s prefix, unused).
    pub async fn read_exact(&mut self, out: &mut [u8]) -> Result<bool, StreamError> {
        let mut got = BytesMut::with_capacity(out.len());
        while got.len() < out.len() {
            let want = out.len() - got.len();
            let more = std::future::poll_fn(|cx| self.poll_read_into(cx, &mut got, want)).await?;
            if !more {
                return Ok(false);
            }
        }
        out.copy_from_slice(&got);
        Ok(true)
    }

    /// Whether an end of this stream inside a frame or preamble may be the
    /// peer's reset rather than its finish: on TCP, yamux reads a reset (and
    /// the loss of the connection) as the end of the stream, and a stream
    /// dropped after the other side finished its half goes out as a finish.
    /// On QUIC a reset is told apart, so an early end is the peer's fault.
    pub fn early_end_may_be_reset(&self) -> bool {
        matches!(self.0, RecvInner::Mux(_))
    }

    /// Asks the peer to stop sending (QUIC STOP_SENDING with `code`; on TCP
    /// the rest of the stream is discarded as it arrives).
    pub fn stop(&mut self, code: ErrorCode) {
        match &mut self.0 {
            RecvInner::Quic(s) => {
                let _ = s.stop(code.to_quic().into());
            }
            RecvInner::Mux(s) => s.stop(),
        }
    }
}

/// The sending side of a stream.
#[derive(Debug)]
pub struct SendStream(SendInner);

#[derive(Debug)]
enum SendInner {
    Quic(quinn::SendStream),
    Mux(mux::MuxSend),
}

impl From<quinn::SendStream> for SendStream {
    fn from(s: quinn::SendStream) -> Self {
        SendStream(SendInner::Quic(s))
    }
}

impl SendStream {
    /// Writes all of `bytes` (waiting for flow control credit).
    pub async fn write_all(&mut self, mut bytes: Bytes) -> Result<(), StreamError> {
        self.write_from(&mut bytes).await
    }

    /// Writes `bytes`, advancing it past each part written, until it is
    /// empty. Cancel-safe: if the future is dropped, what is left in
    /// `bytes` was not written (and can be written later in order).
    pub async fn write_from(&mut self, bytes: &mut Bytes) -> Result<(), StreamError> {
        match &mut self.0 {
            SendInner::Quic(s) => {
                while !bytes.is_empty() {
                    s.write_chunks(std::slice::from_mut(bytes))
                        .await
                        .map_err(quic::write_error)?;
                }
                Ok(())
            }
            // Boxed: the TCP write's future is twice QUIC's, and every
            // writer future of every session would carry it (sessions on
            // TCP, the fallback, pay an allocation per write instead).
            SendInner::Mux(s) => Box::pin(s.write_from(bytes)).await,
        }
    }

    /// Finishes the stream after what was written.
    pub fn finish(&mut self) {
        match &mut self.0 {
            SendInner::Quic(s) => {
                let _ = s.finish();
            }
            SendInner::Mux(s) => s.finish(),
        }
    }

    /// Abandons the stream (QUIC RESET_STREAM with `code`; a yamux RST,
    /// which carries no code, on TCP).
    pub fn reset(&mut self, code: ErrorCode) {
        match &mut self.0 {
            SendInner::Quic(s) => {
                let _ = s.reset(code.to_quic().into());
            }
            SendInner::Mux(s) => s.reset(),
        }
    }

    /// Waits until the peer has everything written, or the stream or
    /// connection ended. On TCP, bytes written are delivered in order
    /// before anything written later, so this returns once they left.
    pub async fn stopped(&mut self) {
        match &mut self.0 {
            SendInner::Quic(s) => {
                let _ = s.stopped().await;
            }
            SendInner::Mux(s) => s.flush().await,
        }
    }

    /// The stream's priority among the connection's streams (higher first;
    /// 0 unless set), for the writes that follow. QUIC schedules its packets
    /// by it; on TCP the connection's write scheduler hands yamux the
    /// highest-priority waiting write first, a frame at a time.
    pub fn set_priority(&self, priority: i32) {
        match &self.0 {
            SendInner::Quic(s) => {
                let _ = s.set_priority(priority);
            }
            SendInner::Mux(s) => s.set_priority(priority),
        }
    }
}
