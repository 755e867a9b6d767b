//! The TCP connection under the multiplexer: it lingers after a close so
//! the close frame reaches the peer, and counts the data bytes it writes
//! for the write scheduler.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::sched::{DataCounter, Scheduler};

/// The TCP connection under yamux. Dropped, it keeps reading (and
/// discarding) for a moment before it lets go of the socket: a socket
/// closed with unread bytes sends a TCP reset, and a reset makes the peer's
/// kernel discard what it had received and not yet read, the close frame
/// with it. The close is followed by a FIN (yamux shuts the write side
/// down), and the peer hangs up in turn.
///
/// It also tells the write scheduler how many data bytes went out.
pub(super) struct Linger<T: tokio::io::AsyncRead + Unpin + Send + 'static> {
    io: Option<T>,
    sched: Arc<Scheduler>,
    data: DataCounter,
}

impl<T: tokio::io::AsyncRead + Unpin + Send + 'static> Linger<T> {
    pub(super) fn new(io: T, sched: Arc<Scheduler>) -> Self {
        Self {
            io: Some(io),
            sched,
            data: DataCounter::default(),
        }
    }
}

/// How long a closed connection's socket keeps draining.
const LINGER: Duration = Duration::from_secs(2);

impl<T: tokio::io::AsyncRead + Unpin + Send + 'static> Drop for Linger<T> {
    fn drop(&mut self) {
        let (Some(mut io), Ok(rt)) = (self.io.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(async move {
            let drain = async {
                let mut sink = [0u8; 1024];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut io, &mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }
}

fn gone_io() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotConnected)
}

impl<T> tokio::io::AsyncRead for Linger<T>
where
    T: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Err(gone_io())),
        }
    }
}

impl<T> tokio::io::AsyncWrite for Linger<T>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Err(gone_io()));
        };
        let wrote = Pin::new(io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = wrote {
            let data = this.data.count(&buf[..n.min(buf.len())]);
            if data > 0 {
                this.sched.written(data);
            }
        }
        wrote
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(gone_io())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Err(gone_io())),
        }
    }
}
