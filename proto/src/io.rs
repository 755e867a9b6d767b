//! Framed streams over a transport's streams (QUIC or TLS on TCP): the one
//! async reader and writer that the gateway and the SDK share. A thin
//! driver over [`crate::frame`] and [`crate::preamble`].

use bytes::{Bytes, BytesMut};
use prost::Message;
use thiserror::Error;

use crate::transport::{ConnectionError, RecvStream, SendStream, StreamError};

use crate::frame::{self, FrameDecoder, FrameError};
use crate::preamble::{self, PreambleError, StreamKind};
use crate::v1::ErrorCode;

/// Why reading from a stream stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The peer reset the stream with this code.
    #[error("stream reset by peer: {0:?}")]
    Reset(ErrorCode),
    /// The connection is gone.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream ended inside a preamble or frame (on QUIC; on TCP such an
    /// end is read as [`RecvError::Reset`], see
    /// [`RecvStream::early_end_may_be_reset`]).
    #[error("stream ended mid-frame")]
    Truncated,
    /// The preamble was refused.
    #[error(transparent)]
    Preamble(#[from] PreambleError),
    /// A frame was refused.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Any other read failure (0-RTT rejected, stream closed locally).
    #[error("read failed: {0}")]
    Other(String),
}

impl RecvError {
    /// The code to close the stream or connection with when this is the
    /// peer's fault; `None` when the transport itself failed.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RecvError::Preamble(e) => Some(e.code()),
            RecvError::Frame(e) => Some(e.code()),
            RecvError::Truncated => Some(ErrorCode::MalformedFrame),
            RecvError::Reset(_) | RecvError::ConnectionLost(_) | RecvError::Other(_) => None,
        }
    }
}

impl From<StreamError> for RecvError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Reset(code) => RecvError::Reset(code),
            StreamError::ConnectionLost(e) => RecvError::ConnectionLost(e),
            other => RecvError::Other(other.to_string()),
        }
    }
}

/// Why writing to a stream failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message does not fit in a frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection is gone.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    /// The stream is gone (reset or stopped by the peer, or failed).
    #[error("write failed: {0}")]
    Write(StreamError),
    /// The stream was already finished or reset.
    #[error("stream closed")]
    Closed,
}

impl From<StreamError> for SendError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::ConnectionLost(e) => SendError::ConnectionLost(e),
            StreamError::Closed => SendError::Closed,
            other => SendError::Write(other),
        }
    }
}

/// A stream a preamble can be read from: a transport's, or quinn's own
/// (tools and tests that speak QUIC directly).
pub trait PreambleSource {
    /// Reads exactly `out.len()` bytes; `Ok(false)` when the stream ended
    /// first.
    fn read_exact_bytes(
        &mut self,
        out: &mut [u8],
    ) -> impl std::future::Future<Output = Result<bool, RecvError>> + Send;
}

impl PreambleSource for RecvStream {
    async fn read_exact_bytes(&mut self, out: &mut [u8]) -> Result<bool, RecvError> {
        match self.read_exact(out).await? {
            false if self.early_end_may_be_reset() => Err(RecvError::Reset(ErrorCode::Unspecified)),
            read => Ok(read),
        }
    }
}

impl PreambleSource for quinn::RecvStream {
    async fn read_exact_bytes(&mut self, out: &mut [u8]) -> Result<bool, RecvError> {
        match self.read_exact(out).await {
            Ok(()) => Ok(true),
            Err(quinn::ReadExactError::FinishedEarly(_)) => Ok(false),
            Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e))) => {
                Err(RecvError::ConnectionLost(e.into()))
            }
            Err(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))) => {
                Err(RecvError::Reset(ErrorCode::from_quic(code.into_inner())))
            }
            Err(quinn::ReadExactError::ReadError(e)) => Err(RecvError::Other(e.to_string())),
        }
    }
}

/// Reads and checks a stream's preamble.
pub async fn read_preamble(stream: &mut impl PreambleSource) -> Result<StreamKind, RecvError> {
    let mut bytes = [0u8; preamble::LEN];
    if stream.read_exact_bytes(&mut bytes).await? {
        Ok(preamble::decode(bytes)?)
    } else {
        Err(RecvError::Truncated)
    }
}

/// Receives frames of one stream.
#[derive(Debug)]
pub struct FramedRecv {
    stream: RecvStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl FramedRecv {
    /// Wraps a stream whose preamble was already read.
    pub fn new(stream: impl Into<RecvStream>, max_frame: usize) -> Self {
        Self {
            stream: stream.into(),
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// The next message, or `Ok(None)` when the peer finished the stream
    /// cleanly between frames.
    pub async fn next<M: Message + Default>(&mut self) -> Result<Option<M>, RecvError> {
        loop {
            if let Some(msg) = self.decoder.decode_message(&mut self.buf)? {
                return Ok(Some(msg));
            }
            // Never read more than one frame's worth ahead.
            let limit = self.decoder.max() + frame::MAX_HEADER;
            let (stream, buf) = (&mut self.stream, &mut self.buf);
            let more = std::future::poll_fn(|cx| stream.poll_read_into(cx, buf, limit)).await?;
            match more {
                true => {}
                false if self.buf.is_empty() => return Ok(None),
                false if self.stream.early_end_may_be_reset() => {
                    return Err(RecvError::Reset(ErrorCode::Unspecified));
                }
                false => return Err(RecvError::Truncated),
            }
        }
    }

    /// The next message if its bytes have already arrived, without waiting;
    /// lets a reader batch everything that is there.
    ///
    /// A transport hands out received data a segment per read, so this also
    /// takes segments it already holds: it polls a read once with a no-op
    /// waker (the read is cancel-safe, and the next [`next`](Self::next)
    /// registers the real waker).
    pub fn try_next<M: Message + Default>(&mut self) -> Result<Option<M>, RecvError> {
        loop {
            if let Some(msg) = self.decoder.decode_message(&mut self.buf)? {
                return Ok(Some(msg));
            }
            let limit = self.decoder.max() + frame::MAX_HEADER;
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match self.stream.poll_read_into(&mut cx, &mut self.buf, limit) {
                std::task::Poll::Ready(Ok(true)) => {}
                // Nothing more yet, or the end: `next` reports either.
                std::task::Poll::Ready(Ok(false)) | std::task::Poll::Pending => return Ok(None),
                std::task::Poll::Ready(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Asks the peer to stop sending on this stream, with a reason.
    pub fn stop(&mut self, code: ErrorCode) {
        self.stream.stop(code);
    }
}

/// Sends frames on one stream; frames can be queued and flushed together.
///
/// Cancel-safe: a flush dropped part-way keeps the unwritten rest of its
/// frames and writes it first on the next flush, so no later frame lands
/// inside an earlier one. Dropped (or finished) with a frame written only
/// in part, or before its preamble was written, the stream is reset rather
/// than finished: the peer sees an abandoned stream, never a frame or a
/// preamble cut short (which it must treat as a fault).
#[derive(Debug)]
pub struct FramedSend {
    stream: SendStream,
    buf: BytesMut,
    /// Bytes taken from `buf` by a flush and not yet written.
    unsent: Bytes,
    /// Whether the preamble (if any) has been written: until then the
    /// stream must not end cleanly, which the peer would read as a
    /// preamble cut short.
    opened: bool,
    max_frame: usize,
}

impl Drop for FramedSend {
    fn drop(&mut self) {
        if !self.unsent.is_empty() || !self.opened {
            self.stream.reset(ErrorCode::NoError);
        }
    }
}

impl FramedSend {
    /// Wraps a stream and queues its preamble, sent with the first flush.
    pub fn new(stream: impl Into<SendStream>, kind: StreamKind, max_frame: usize) -> Self {
        // Sized to the preamble: the buffer's room outlives the flush (it
        // shares the allocation), and an idle stream should not keep more.
        let mut buf = BytesMut::with_capacity(preamble::LEN);
        buf.extend_from_slice(&preamble::encode(kind));
        Self {
            stream: stream.into(),
            buf,
            unsent: Bytes::new(),
            opened: false,
            max_frame,
        }
    }

    /// Wraps a stream whose preamble (if any) is already handled.
    pub fn without_preamble(stream: impl Into<SendStream>, max_frame: usize) -> Self {
        Self {
            stream: stream.into(),
            buf: BytesMut::new(),
            unsent: Bytes::new(),
            opened: true,
            max_frame,
        }
    }

    /// Queues a frame without writing it.
    pub fn queue<M: Message>(&mut self, msg: &M) -> Result<(), FrameError> {
        frame::encode(msg, self.max_frame, &mut self.buf)
    }

    /// Writes everything queued (first the rest of a flush that was
    /// dropped part-way).
    pub async fn flush(&mut self) -> Result<(), SendError> {
        loop {
            if self.unsent.is_empty() {
                if self.buf.is_empty() {
                    return Ok(());
                }
                self.unsent = self.buf.split().freeze();
            }
            self.stream.write_from(&mut self.unsent).await?;
            self.opened = true;
        }
    }

    /// Queues and writes one frame.
    pub async fn send<M: Message>(&mut self, msg: &M) -> Result<(), SendError> {
        self.queue(msg)?;
        self.flush().await
    }

    /// Writes raw bytes as they are; for tests that forge bad input.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.buf.extend_from_slice(bytes);
        self.flush().await
    }

    /// Finishes the stream after what was written; resets it instead when
    /// a frame was written only in part (a flush dropped part-way).
    pub fn finish(&mut self) {
        if self.unsent.is_empty() && self.opened {
            self.stream.finish();
        } else {
            self.unsent = Bytes::new();
            self.opened = true;
            self.stream.reset(ErrorCode::NoError);
        }
    }

    /// Abandons the stream with a reason.
    pub fn reset(&mut self, code: ErrorCode) {
        self.unsent = Bytes::new();
        self.opened = true;
        self.stream.reset(code);
    }

    /// Gives back the write buffer's room when nothing waits in it: for a
    /// stream that goes quiet after a burst (the control stream after
    /// login), so it does not keep the largest frame's room for its life.
    pub fn release_buffer(&mut self) {
        if self.buf.is_empty() && self.unsent.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Waits until the peer has received everything written (or the
    /// stream/connection ended).
    pub async fn stopped(&mut self) {
        self.stream.stopped().await;
    }

    /// The stream's priority among the connection's (higher first; QUIC
    /// only, see [`SendStream::set_priority`]).
    pub fn set_priority(&self, priority: i32) {
        self.stream.set_priority(priority);
    }
}
