//! [`Transport`] on a quinn connection: a thin mapping of quinn's calls and
//! errors.

use std::future::Future as _;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;

use super::{
    BoxFuture, ConnectionError, RecvStream, SendStream, StreamError, Transport, TransportKind,
};
use crate::v1::ErrorCode;

impl From<quinn::ConnectionError> for ConnectionError {
    fn from(e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(close) => {
                ConnectionError::ApplicationClosed {
                    code: ErrorCode::from_quic(close.error_code.into_inner()),
                    reason: String::from_utf8_lossy(&close.reason).into_owned(),
                }
            }
            // TLS alerts travel as QUIC crypto errors, 0x100 + alert.
            quinn::ConnectionError::TransportError(t)
                if (0x100..0x200).contains(&u64::from(t.code)) =>
            {
                ConnectionError::Tls(t.to_string())
            }
            quinn::ConnectionError::ConnectionClosed(c)
                if (0x100..0x200).contains(&u64::from(c.error_code)) =>
            {
                ConnectionError::Tls(c.to_string())
            }
            quinn::ConnectionError::LocallyClosed => ConnectionError::LocallyClosed,
            other => ConnectionError::Lost(other.to_string()),
        }
    }
}

impl Transport for quinn::Connection {
    fn kind(&self) -> TransportKind {
        TransportKind::Quic
    }

    fn open_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>> {
        Box::pin(async move {
            let (send, recv) = quinn::Connection::open_bi(self).await?;
            Ok((send.into(), recv.into()))
        })
    }

    fn open_uni(&self) -> BoxFuture<'_, Result<SendStream, ConnectionError>> {
        Box::pin(async move { Ok(quinn::Connection::open_uni(self).await?.into()) })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>> {
        Box::pin(async move {
            let (send, recv) = quinn::Connection::accept_bi(self).await?;
            Ok((send.into(), recv.into()))
        })
    }

    fn accept_uni(&self) -> BoxFuture<'_, Result<RecvStream, ConnectionError>> {
        Box::pin(async move { Ok(quinn::Connection::accept_uni(self).await?.into()) })
    }

    fn close(&self, code: ErrorCode, reason: &[u8]) {
        quinn::Connection::close(self, code.to_quic().into(), reason);
    }

    fn close_reason(&self) -> Option<ConnectionError> {
        quinn::Connection::close_reason(self).map(Into::into)
    }

    fn closed(&self) -> BoxFuture<'_, ConnectionError> {
        Box::pin(async move { quinn::Connection::closed(self).await.into() })
    }

    fn remote_address(&self) -> SocketAddr {
        quinn::Connection::remote_address(self)
    }

    fn rtt(&self) -> Duration {
        quinn::Connection::rtt(self)
    }

    fn path_challenges(&self) -> u64 {
        self.stats().frame_rx.path_challenge
    }
}

/// Reads one of quinn's received segments (at most `max` bytes) into `buf`.
pub(super) fn poll_read_into(
    stream: &mut quinn::RecvStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    max: usize,
) -> Poll<Result<bool, StreamError>> {
    // `read_chunk` is cancel-safe: a fresh future polled once registers the
    // waker and loses nothing when dropped.
    let read = std::pin::pin!(stream.read_chunk(max, true));
    match read.poll(cx) {
        Poll::Ready(Ok(Some(chunk))) => {
            buf.extend_from_slice(&chunk.bytes);
            Poll::Ready(Ok(true))
        }
        Poll::Ready(Ok(None)) => Poll::Ready(Ok(false)),
        Poll::Ready(Err(e)) => Poll::Ready(Err(read_error(e))),
        Poll::Pending => Poll::Pending,
    }
}

fn read_error(e: quinn::ReadError) -> StreamError {
    match e {
        quinn::ReadError::Reset(code) => {
            StreamError::Reset(ErrorCode::from_quic(code.into_inner()))
        }
        quinn::ReadError::ConnectionLost(e) => StreamError::ConnectionLost(e.into()),
        quinn::ReadError::ClosedStream => StreamError::Closed,
        other => StreamError::Other(other.to_string()),
    }
}

pub(super) fn write_error(e: quinn::WriteError) -> StreamError {
    match e {
        quinn::WriteError::Stopped(code) => {
            StreamError::Reset(ErrorCode::from_quic(code.into_inner()))
        }
        quinn::WriteError::ConnectionLost(e) => StreamError::ConnectionLost(e.into()),
        quinn::WriteError::ClosedStream => StreamError::Closed,
        other => StreamError::Other(other.to_string()),
    }
}
