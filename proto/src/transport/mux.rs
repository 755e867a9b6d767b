//! The TCP transport: one TLS 1.3 connection (made by the caller) carrying
//! the session's streams as yamux streams.
//!
//! yamux gives what QUIC's streams give but priorities: streams opened by
//! either side, per-stream flow control (256 KiB windows, a connection
//! window as the bound), half-close (FIN) and reset (RST). Priorities are
//! added in front of it: every write goes through the connection's
//! [`Scheduler`](super::sched::Scheduler). What QUIC says in
//! its stream frames and yamux cannot is added here, in the bytes of the
//! streams:
//! - every stream starts with one **direction byte** from its opener:
//!   [`DIR_BIDI`] or [`DIR_UNI`] (the acceptor of a unidirectional stream
//!   finishes its own half at once and never writes);
//! - each side's **first** stream is its transport stream ([`DIR_TRANSPORT`]):
//!   it carries at most one `TransportClose` frame, written just before the
//!   side closes the connection, so the peer learns the close code as a QUIC
//!   peer does from CONNECTION_CLOSE.
//!
//! A peer that opens more than its stream limits, or starts a stream with
//! an unknown direction byte, has the connection closed with
//! `PROTOCOL_VIOLATION` or `BAD_PREAMBLE`, as QUIC would close it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::TokioAsyncReadCompatExt as _;

use super::linger::Linger;
use super::sched::{CHUNK, Line, Scheduler};
use super::waiters::Waiters;
use super::{
    BoxFuture, Connection, ConnectionError, RecvInner, RecvStream, SendInner, SendStream,
    StreamError, Transport, TransportKind,
};
use crate::frame::FrameDecoder;
use crate::v1::{self, ErrorCode};

/// Direction byte of each side's first stream, its transport stream.
pub const DIR_TRANSPORT: u8 = 0;
/// Direction byte of a bidirectional stream.
pub const DIR_BIDI: u8 = 1;
/// Direction byte of a unidirectional stream.
pub const DIR_UNI: u8 = 2;

/// Largest `TransportClose` frame accepted.
const MAX_CLOSE_FRAME: usize = 1024;

/// How long a closing side keeps writing its close before it drops the
/// TCP connection.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// Which end of the TCP connection this is (yamux numbers streams by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that connected.
    Client,
    /// The side that accepted.
    Server,
}

/// Bounds on what the peer may open, as QUIC's stream limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bidirectional streams the peer may have open at once.
    pub bidi: usize,
    /// Unidirectional streams the peer may have open at once.
    pub uni: usize,
}

/// Runs the multiplexer over `io` (a TLS stream, usually) on a task of its
/// own and returns the connection.
pub fn connect<T>(io: T, role: Role, remote: SocketAddr, limits: Limits) -> Connection
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let streams = limits.bidi + limits.uni;
    let mut config = yamux::Config::default();
    // yamux's own bound sits above ours, so ours (a typed close) is met
    // first; the connection window is what every stream may buffer at most.
    let max_streams = streams * 2 + 16;
    config.set_max_num_streams(max_streams);
    config.set_max_connection_receive_window(Some(max_streams * yamux::DEFAULT_CREDIT as usize));
    let mode = match role {
        Role::Client => yamux::Mode::Client,
        Role::Server => yamux::Mode::Server,
    };
    let sched = Arc::new(Scheduler::default());
    let waiters = Arc::new(Waiters::default());
    let io = Linger::new(io, Arc::clone(&sched));
    let conn = yamux::Connection::new(io.compat(), config, mode);
    let (cmds, cmds_rx) = mpsc::unbounded_channel();
    let (bi_tx, bi_rx) = mpsc::channel(limits.bidi.max(1));
    let (uni_tx, uni_rx) = mpsc::channel(limits.uni.max(1));
    let (state, state_rx) = watch::channel(None);
    let state = Arc::new(state);
    let driver = Driver {
        sched: Arc::clone(&sched),
        cmds: cmds_rx,
        bi: bi_tx,
        uni: uni_tx,
        state: Arc::clone(&state),
        limits,
        waiters: Arc::clone(&waiters),
    };
    tokio::spawn(driver.run(conn));
    Connection::new(MuxConnection {
        cmds,
        bi: tokio::sync::Mutex::new(bi_rx),
        uni: tokio::sync::Mutex::new(uni_rx),
        state,
        state_rx,
        remote,
        sched,
        waiters,
    })
}

type Shared = Arc<Mutex<yamux::Stream>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, yamux::Stream> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Command {
    Open(u8, oneshot::Sender<Shared>),
    Close(ErrorCode, String),
}

/// A connection on TLS over TCP.
#[derive(Debug)]
struct MuxConnection {
    cmds: mpsc::UnboundedSender<Command>,
    bi: tokio::sync::Mutex<mpsc::Receiver<(SendStream, RecvStream)>>,
    uni: tokio::sync::Mutex<mpsc::Receiver<RecvStream>>,
    state: Arc<watch::Sender<Option<ConnectionError>>>,
    state_rx: watch::Receiver<Option<ConnectionError>>,
    remote: SocketAddr,
    sched: Arc<Scheduler>,
    waiters: Arc<Waiters>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Open(dir, _) => write!(f, "Open({dir})"),
            Command::Close(code, _) => write!(f, "Close({code:?})"),
        }
    }
}

impl MuxConnection {
    fn gone(&self) -> ConnectionError {
        self.state_rx
            .borrow()
            .clone()
            .unwrap_or_else(|| ConnectionError::Lost("the connection ended".into()))
    }

    async fn open(&self, dir: u8) -> Result<Shared, ConnectionError> {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Command::Open(dir, tx)).is_err() {
            return Err(self.gone());
        }
        rx.await.map_err(|_| self.gone())
    }
}

impl Transport for MuxConnection {
    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn open_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>> {
        Box::pin(async move {
            let s = self.open(DIR_BIDI).await?;
            Ok((
                send_stream(&s, &self.sched, &self.waiters),
                recv_stream(s, &self.waiters),
            ))
        })
    }

    fn open_uni(&self) -> BoxFuture<'_, Result<SendStream, ConnectionError>> {
        Box::pin(async move {
            let s = self.open(DIR_UNI).await?;
            Ok(send_stream(&s, &self.sched, &self.waiters))
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendStream, RecvStream), ConnectionError>> {
        Box::pin(async move { self.bi.lock().await.recv().await.ok_or_else(|| self.gone()) })
    }

    fn accept_uni(&self) -> BoxFuture<'_, Result<RecvStream, ConnectionError>> {
        Box::pin(async move {
            self.uni
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| self.gone())
        })
    }

    fn close(&self, code: ErrorCode, reason: &[u8]) {
        let first = self.state.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(ConnectionError::LocallyClosed);
                true
            } else {
                false
            }
        });
        if first {
            let reason = String::from_utf8_lossy(reason).into_owned();
            let _ = self.cmds.send(Command::Close(code, reason));
        }
    }

    fn close_reason(&self) -> Option<ConnectionError> {
        self.state_rx.borrow().clone()
    }

    fn closed(&self) -> BoxFuture<'_, ConnectionError> {
        Box::pin(async move {
            let mut rx = self.state_rx.clone();
            match rx.wait_for(Option::is_some).await {
                Ok(s) => s.clone().unwrap_or(ConnectionError::LocallyClosed),
                Err(_) => self.gone(),
            }
        })
    }

    fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    fn rtt(&self) -> Duration {
        Duration::ZERO
    }
}

fn send_stream(s: &Shared, sched: &Arc<Scheduler>, waiters: &Arc<Waiters>) -> SendStream {
    SendStream(SendInner::Mux(MuxSend {
        stream: Some(Arc::clone(s)),
        sched: Arc::clone(sched),
        waiters: Arc::clone(waiters),
        priority: AtomicI32::new(0),
    }))
}

fn recv_stream(s: Shared, waiters: &Arc<Waiters>) -> RecvStream {
    RecvStream(RecvInner::Mux(MuxRecv {
        stream: Some(s),
        waiters: Arc::clone(waiters),
        stopped: false,
    }))
}

/// The receiving half of a yamux stream.
#[derive(Debug)]
pub(super) struct MuxRecv {
    stream: Option<Shared>,
    waiters: Arc<Waiters>,
    stopped: bool,
}

impl MuxRecv {
    pub(super) fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<Result<bool, StreamError>> {
        let Some(stream) = &self.stream else {
            return Poll::Ready(Err(StreamError::Closed));
        };
        let start = buf.len();
        let want = max.clamp(1, 16 * 1024);
        buf.resize(start + want, 0);
        let read = Pin::new(&mut *lock(stream)).poll_read(cx, &mut buf[start..]);
        match read {
            Poll::Ready(Ok(0)) => {
                buf.truncate(start);
                Poll::Ready(Ok(false))
            }
            Poll::Ready(Ok(n)) => {
                buf.truncate(start + n);
                if self.stopped {
                    // Discarded: the reader asked the peer to stop.
                    buf.truncate(start);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => {
                buf.truncate(start);
                Poll::Ready(Err(io_error(&e)))
            }
            Poll::Pending => {
                buf.truncate(start);
                if self.waiters.wait(stream, false, cx.waker()) {
                    Poll::Pending
                } else {
                    Poll::Ready(Err(StreamError::Closed))
                }
            }
        }
    }

    pub(super) fn stop(&mut self) {
        self.stopped = true;
    }
}

/// The sending half of a yamux stream.
#[derive(Debug)]
pub(super) struct MuxSend {
    stream: Option<Shared>,
    sched: Arc<Scheduler>,
    waiters: Arc<Waiters>,
    priority: AtomicI32,
}

impl MuxSend {
    /// Writes `bytes` a piece at a time, each in the connection's turn
    /// (see [`Scheduler`]), advancing it past each piece yamux took (a
    /// piece is taken whole or not at all), so a cancelled write leaves
    /// the unwritten rest in `bytes`; then flushes.
    pub(super) async fn write_from(&mut self, bytes: &mut Bytes) -> Result<(), StreamError> {
        let stream = self.stream.as_ref().ok_or(StreamError::Closed)?;
        let priority = self.priority.load(Ordering::Relaxed);
        let mut line = Line::new(&self.sched);
        while !bytes.is_empty() {
            let piece = &bytes[..bytes.len().min(CHUNK)];
            let n = poll_fn(|cx| {
                line.poll_write(cx, priority, |cx| {
                    let wrote = Pin::new(&mut *lock(stream)).poll_write(cx, piece);
                    match wrote {
                        // Nothing more goes out once the connection is gone.
                        Poll::Pending if !self.waiters.wait(stream, true, cx.waker()) => {
                            Poll::Ready(Ok(0))
                        }
                        wrote => wrote,
                    }
                })
            })
            .await
            .map_err(|e| io_error(&e))?;
            if n == 0 {
                return Err(StreamError::Closed);
            }
            bytes.advance(n);
        }
        drop(line);
        poll_fn(|cx| match Pin::new(&mut *lock(stream)).poll_flush(cx) {
            Poll::Pending if !self.waiters.wait(stream, true, cx.waker()) => {
                Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
            }
            flushed => flushed,
        })
        .await
        .map_err(|e| io_error(&e))
    }

    pub(super) fn set_priority(&self, priority: i32) {
        self.priority.store(priority, Ordering::Relaxed);
    }

    pub(super) fn finish(&mut self) {
        if let Some(stream) = self.stream.take() {
            finish_shared(stream);
        }
    }

    pub(super) fn reset(&mut self) {
        // A yamux stream dropped unclosed is reset (RST) once no half holds
        // it any more.
        self.stream = None;
    }

    pub(super) async fn flush(&mut self) {
        if let Some(stream) = &self.stream {
            let _ = poll_fn(|cx| Pin::new(&mut *lock(stream)).poll_flush(cx)).await;
        }
    }
}

/// Sends the stream's FIN: at once when yamux has room for the command (it
/// nearly always has), else from a task.
fn finish_shared(stream: Shared) {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let ready = Pin::new(&mut *lock(&stream)).poll_close(&mut cx);
    if ready.is_pending() {
        tokio::spawn(async move {
            let _ = poll_fn(|cx| Pin::new(&mut *lock(&stream)).poll_close(cx)).await;
        });
    }
}

fn io_error(e: &std::io::Error) -> StreamError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => StreamError::Reset(ErrorCode::Unspecified),
        std::io::ErrorKind::WriteZero | std::io::ErrorKind::BrokenPipe => StreamError::Closed,
        _ => StreamError::Other(e.to_string()),
    }
}

/// How the driver's loop ended.
enum Outcome {
    /// This side closes, telling the peer.
    Local(ErrorCode, String),
    /// The peer sent its close.
    Peer(ErrorCode, String),
    /// The connection ended without a close (TCP reset, EOF, yamux error).
    Lost(String),
}

/// The task that owns the yamux connection: it opens streams on request,
/// sorts the peer's streams by their direction byte, and reads the peer's
/// transport stream.
struct Driver {
    sched: Arc<Scheduler>,
    cmds: mpsc::UnboundedReceiver<Command>,
    bi: mpsc::Sender<(SendStream, RecvStream)>,
    uni: mpsc::Sender<RecvStream>,
    state: Arc<watch::Sender<Option<ConnectionError>>>,
    limits: Limits,
    /// Woken once the connection is dropped (see `waiters.rs`).
    waiters: Arc<Waiters>,
}

/// The peer's transport stream and what arrived on it.
struct PeerClose {
    stream: yamux::Stream,
    buf: BytesMut,
    /// Whether its direction byte was read.
    started: bool,
}

impl PeerClose {
    /// The peer's close, once its frame arrived; `Err` on a bad stream.
    fn poll(&mut self, cx: &mut Context<'_>) -> Result<Option<(ErrorCode, String)>, Outcome> {
        let mut chunk = [0u8; 256];
        loop {
            match Pin::new(&mut self.stream).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) | Poll::Pending => break,
                Poll::Ready(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() > MAX_CLOSE_FRAME + 8 {
                        break;
                    }
                }
                Poll::Ready(Err(_)) => break,
            }
        }
        if !self.started {
            if self.buf.is_empty() {
                return Ok(None);
            }
            if self.buf[0] != DIR_TRANSPORT {
                return Err(Outcome::Local(
                    ErrorCode::BadPreamble,
                    "the first stream must be the transport stream".into(),
                ));
            }
            let _ = self.buf.split_to(1);
            self.started = true;
        }
        let decoder = FrameDecoder::new(MAX_CLOSE_FRAME);
        match decoder.decode_message::<v1::TransportClose>(&mut self.buf) {
            Ok(Some(close)) => Ok(Some((
                ErrorCode::try_from(close.code).unwrap_or(ErrorCode::Unspecified),
                close.reason,
            ))),
            Ok(None) => Ok(None),
            Err(e) => Err(Outcome::Local(e.code(), "bad TransportClose frame".into())),
        }
    }
}

impl Driver {
    async fn run<T>(mut self, mut conn: yamux::Connection<T>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let outcome = self.serve(&mut conn).await;
        // Writers waiting for yamux to write what it held stop waiting.
        self.sched.close();
        let (state, mut closing) = match outcome {
            (Outcome::Local(code, reason), own) => {
                (ConnectionError::LocallyClosed, Some((code, reason, own)))
            }
            (Outcome::Peer(code, reason), _) => {
                (ConnectionError::ApplicationClosed { code, reason }, None)
            }
            (Outcome::Lost(why), _) => (ConnectionError::Lost(why), None),
        };
        self.state.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(state);
                true
            } else {
                false
            }
        });
        // Nothing more is accepted or opened.
        self.cmds.close();
        drop(self.bi);
        drop(self.uni);
        let close = async {
            if let Some((code, reason, Some(own))) = closing.take() {
                let mut frame = BytesMut::new();
                let close = v1::TransportClose {
                    code: code as i32,
                    reason,
                };
                if crate::frame::encode(&close, MAX_CLOSE_FRAME, &mut frame).is_ok() {
                    let mut sent = 0;
                    while sent < frame.len() {
                        match poll_fn(|cx| {
                            Pin::new(&mut *lock(&own)).poll_write(cx, &frame[sent..])
                        })
                        .await
                        {
                            Ok(n) if n > 0 => {
                                self.sched.admitted(n);
                                sent += n;
                            }
                            _ => break,
                        }
                    }
                }
            }
            let _ = poll_fn(|cx| conn.poll_close(cx)).await;
        };
        let _ = tokio::time::timeout(CLOSE_WITHIN, close).await;
        // Dropped, the connection answers its streams' reads and writes
        // with an end; wake those that wait for it.
        drop(conn);
        self.waiters.end();
    }

    /// Serves until the connection ends; returns how, with this side's
    /// transport stream (to write a close on).
    async fn serve<T>(&mut self, conn: &mut yamux::Connection<T>) -> (Outcome, Option<Shared>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let own = match poll_fn(|cx| conn.poll_new_outbound(cx)).await {
            Ok(s) => Arc::new(Mutex::new(s)),
            Err(e) => return (Outcome::Lost(e.to_string()), None),
        };
        let mut own_started = false;
        let mut peer: Option<PeerClose> = None;
        // Streams of the peer whose direction byte has not arrived yet.
        let mut typing: Vec<yamux::Stream> = Vec::new();
        let mut opens: VecDeque<(u8, oneshot::Sender<Shared>)> = VecDeque::new();
        // Streams the peer opened, while someone holds them.
        let mut live_bi: Vec<Weak<Mutex<yamux::Stream>>> = Vec::new();
        let mut live_uni: Vec<Weak<Mutex<yamux::Stream>>> = Vec::new();
        let outcome = poll_fn(|cx| {
            if !own_started {
                match Pin::new(&mut *lock(&own)).poll_write(cx, &[DIR_TRANSPORT]) {
                    Poll::Ready(Ok(1)) => {
                        self.sched.admitted(1);
                        own_started = true;
                    }
                    Poll::Ready(Ok(_) | Err(_)) => {
                        return Poll::Ready(Outcome::Lost("opening the transport stream".into()));
                    }
                    Poll::Pending => {}
                }
            }
            loop {
                match self.cmds.poll_recv(cx) {
                    Poll::Ready(Some(Command::Open(dir, tx))) => opens.push_back((dir, tx)),
                    Poll::Ready(Some(Command::Close(code, reason))) => {
                        return Poll::Ready(Outcome::Local(code, reason));
                    }
                    // Every handle is gone.
                    Poll::Ready(None) => {
                        return Poll::Ready(Outcome::Local(ErrorCode::NoError, String::new()));
                    }
                    Poll::Pending => break,
                }
            }
            while let Some((dir, _)) = opens.front() {
                let dir = *dir;
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(mut s)) => {
                        // The direction byte goes out with the stream's
                        // first frame; a fresh stream always has room.
                        if let Poll::Ready(Ok(n)) = Pin::new(&mut s).poll_write(cx, &[dir]) {
                            self.sched.admitted(n);
                        }
                        if let Some((_, tx)) = opens.pop_front() {
                            let _ = tx.send(Arc::new(Mutex::new(s)));
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::Lost(e.to_string())),
                    Poll::Pending => break,
                }
            }
            let ended = loop {
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(s))) => {
                        if peer.is_none() {
                            peer = Some(PeerClose {
                                stream: s,
                                buf: BytesMut::new(),
                                started: false,
                            });
                            continue;
                        }
                        live_bi.retain(|w| w.strong_count() > 0);
                        live_uni.retain(|w| w.strong_count() > 0);
                        let open = typing.len() + live_bi.len() + live_uni.len();
                        if open >= self.limits.bidi + self.limits.uni {
                            return Poll::Ready(Outcome::Local(
                                ErrorCode::ProtocolViolation,
                                "too many streams".into(),
                            ));
                        }
                        typing.push(s);
                    }
                    Poll::Ready(Some(Err(e))) => break Some(e.to_string()),
                    Poll::Ready(None) => break Some("the peer closed the connection".into()),
                    Poll::Pending => break None,
                }
            };
            if let Some(p) = &mut peer {
                match p.poll(cx) {
                    Ok(Some((code, reason))) => return Poll::Ready(Outcome::Peer(code, reason)),
                    Ok(None) => {}
                    Err(outcome) => return Poll::Ready(outcome),
                }
            }
            if let Some(why) = ended {
                return Poll::Ready(Outcome::Lost(why));
            }
            let mut i = 0;
            while i < typing.len() {
                let mut dir = [0u8; 1];
                match Pin::new(&mut typing[i]).poll_read(cx, &mut dir) {
                    Poll::Pending => i += 1,
                    Poll::Ready(Ok(1)) => {
                        let s = Arc::new(Mutex::new(typing.swap_remove(i)));
                        match dir[0] {
                            DIR_BIDI => {
                                if live_bi.len() >= self.limits.bidi {
                                    return Poll::Ready(Outcome::Local(
                                        ErrorCode::ProtocolViolation,
                                        "too many bidirectional streams".into(),
                                    ));
                                }
                                live_bi.push(Arc::downgrade(&s));
                                // Sized to the limit: never full.
                                let _ = self.bi.try_send((
                                    send_stream(&s, &self.sched, &self.waiters),
                                    recv_stream(s, &self.waiters),
                                ));
                            }
                            DIR_UNI => {
                                if live_uni.len() >= self.limits.uni {
                                    return Poll::Ready(Outcome::Local(
                                        ErrorCode::ProtocolViolation,
                                        "too many unidirectional streams".into(),
                                    ));
                                }
                                live_uni.push(Arc::downgrade(&s));
                                // This side never writes on it.
                                finish_shared(Arc::clone(&s));
                                let _ = self.uni.try_send(recv_stream(s, &self.waiters));
                            }
                            _ => {
                                return Poll::Ready(Outcome::Local(
                                    ErrorCode::BadPreamble,
                                    "unknown stream direction byte".into(),
                                ));
                            }
                        }
                    }
                    // Ended or reset before its first byte: forget it.
                    Poll::Ready(_) => {
                        typing.swap_remove(i);
                    }
                }
            }
            Poll::Pending
        })
        .await;
        (outcome, Some(own))
    }
}

#[cfg(test)]
#[path = "mux_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "mux_prio_tests.rs"]
mod prio_tests;
