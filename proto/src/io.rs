//! Framed streams over quinn: the one async reader and writer that the
//! gateway and the SDK share. A thin driver over [`crate::frame`] and
//! [`crate::preamble`].

use std::future::Future as _;

use bytes::BytesMut;
use prost::Message;
use quinn::{RecvStream, SendStream};
use thiserror::Error;

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
    ConnectionLost(#[from] quinn::ConnectionError),
    /// The stream ended inside a preamble or frame.
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

impl From<quinn::ReadError> for RecvError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => {
                RecvError::Reset(ErrorCode::from_quic(code.into_inner()))
            }
            quinn::ReadError::ConnectionLost(e) => RecvError::ConnectionLost(e),
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
    /// The stream or connection is gone.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was already finished or reset.
    #[error("stream closed")]
    Closed,
}

/// Reads and checks a stream's preamble.
pub async fn read_preamble(stream: &mut RecvStream) -> Result<StreamKind, RecvError> {
    let mut bytes = [0u8; preamble::LEN];
    match stream.read_exact(&mut bytes).await {
        Ok(()) => Ok(preamble::decode(bytes)?),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(RecvError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
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
    pub fn new(stream: RecvStream, max_frame: usize) -> Self {
        Self {
            stream,
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
            match self.stream.read_chunk(limit, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(RecvError::Truncated),
            }
        }
    }

    /// The next message if its bytes have already arrived, without waiting;
    /// lets a reader batch everything that is there.
    ///
    /// quinn hands out received data one segment per read, so this also
    /// takes segments quinn already holds: it polls `read_chunk` once with a
    /// no-op waker (the read is cancel-safe, and the next [`next`](Self::next)
    /// registers the real waker).
    pub fn try_next<M: Message + Default>(&mut self) -> Result<Option<M>, RecvError> {
        loop {
            if let Some(msg) = self.decoder.decode_message(&mut self.buf)? {
                return Ok(Some(msg));
            }
            let limit = self.decoder.max() + frame::MAX_HEADER;
            let read = std::pin::pin!(self.stream.read_chunk(limit, true));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match read.poll(&mut cx) {
                std::task::Poll::Ready(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk.bytes),
                // Nothing more yet, or the end: `next` reports either.
                std::task::Poll::Ready(Ok(None)) | std::task::Poll::Pending => return Ok(None),
                std::task::Poll::Ready(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Asks the peer to stop sending on this stream, with a reason.
    pub fn stop(&mut self, code: ErrorCode) {
        let _ = self.stream.stop(code.to_quic().into());
    }
}

/// Sends frames on one stream; frames can be queued and flushed together.
#[derive(Debug)]
pub struct FramedSend {
    stream: SendStream,
    buf: BytesMut,
    max_frame: usize,
}

impl FramedSend {
    /// Wraps a stream and queues its preamble, sent with the first flush.
    pub fn new(stream: SendStream, kind: StreamKind, max_frame: usize) -> Self {
        let mut buf = BytesMut::with_capacity(256);
        buf.extend_from_slice(&preamble::encode(kind));
        Self {
            stream,
            buf,
            max_frame,
        }
    }

    /// Wraps a stream whose preamble (if any) is already handled.
    pub fn without_preamble(stream: SendStream, max_frame: usize) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Queues a frame without writing it.
    pub fn queue<M: Message>(&mut self, msg: &M) -> Result<(), FrameError> {
        frame::encode(msg, self.max_frame, &mut self.buf)
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), SendError> {
        if !self.buf.is_empty() {
            let bytes = self.buf.split().freeze();
            self.stream.write_chunk(bytes).await?;
        }
        Ok(())
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

    /// Finishes the stream after what was written.
    pub fn finish(&mut self) {
        let _ = self.stream.finish();
    }

    /// Abandons the stream with a reason.
    pub fn reset(&mut self, code: ErrorCode) {
        let _ = self.stream.reset(code.to_quic().into());
    }

    /// Waits until the peer has received everything written (or the
    /// stream/connection ended).
    pub async fn stopped(&mut self) {
        let _ = self.stream.stopped().await;
    }
}
