//! Stream priorities on a real loopback TCP connection: the order of the
//! yamux frames put on the socket is recorded (TCP delivers them in that
//! order), and a chat frame written while eight low-priority streams have
//! megabytes queued must follow at most the few frames yamux already held.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{CHUNK, Limits, Role, connect};
use crate::transport::{Connection, RecvStream};

const BULK_STREAMS: usize = 8;
const BULK_BYTES: usize = 4 << 20;
const CHAT: &[u8] = b"CHAT: a short message that must not wait behind uploads";
const WITHIN: Duration = Duration::from_secs(30);

/// What went on the socket, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// A data frame: its body's length and whether it is the chat frame.
    Data { id: u32, len: usize, chat: bool },
    /// The test began writing the chat frame here.
    ChatWritten,
}

/// A socket that records the yamux data frames written on it.
struct Recorder {
    io: TcpStream,
    log: Arc<Mutex<Vec<Entry>>>,
    /// Unparsed bytes of the frame header or body under way.
    header: Vec<u8>,
    /// Body bytes of the current data frame still to come, and its start.
    body_left: usize,
    body_start: Vec<u8>,
    body_len: usize,
    body_id: u32,
    /// Whether the next write yields first (see `poll_write`).
    yield_next: bool,
}

impl Recorder {
    fn record(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                if self.body_start.len() < CHAT.len() {
                    let take = (CHAT.len() - self.body_start.len()).min(n);
                    self.body_start.extend_from_slice(&bytes[..take]);
                }
                self.body_left -= n;
                bytes = &bytes[n..];
                if self.body_left == 0 {
                    let chat = self.body_start.starts_with(&CHAT[..4]);
                    let entry = Entry::Data {
                        id: self.body_id,
                        len: self.body_len,
                        chat,
                    };
                    self.log.lock().expect("log").push(entry);
                }
                continue;
            }
            let n = (12 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 12 {
                // Version, type, flags, stream id, length (big-endian).
                let kind = self.header[1];
                let len = u32::from_be_bytes([
                    self.header[8],
                    self.header[9],
                    self.header[10],
                    self.header[11],
                ]) as usize;
                let id = u32::from_be_bytes([
                    self.header[4],
                    self.header[5],
                    self.header[6],
                    self.header[7],
                ]);
                self.header.clear();
                if kind == 0 && len > 0 {
                    self.body_id = id;
                    self.body_left = len;
                    self.body_len = len;
                    self.body_start.clear();
                }
            }
        }
    }
}

impl AsyncRead for Recorder {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // A slow link: at most 4 KiB a write, and every other write lets the
        // other tasks run first, so the writers get ahead of the socket and
        // yamux's queues fill as they do on a real uplink.
        if self.yield_next {
            self.yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let buf = &buf[..buf.len().min(4096)];
        let wrote = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = wrote {
            self.yield_next = true;
            self.record(&buf[..n]);
        }
        wrote
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

const LIMITS: Limits = Limits { bidi: 4, uni: 16 };

async fn pair(log: Arc<Mutex<Vec<Entry>>>) -> (Connection, Connection) {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client.expect("connect");
    let (server, peer) = accepted.expect("accept");
    let recorder = Recorder {
        io: client,
        log,
        header: Vec::new(),
        body_left: 0,
        body_start: Vec::new(),
        body_len: 0,
        body_id: 0,
        yield_next: false,
    };
    (
        connect(recorder, Role::Client, addr, LIMITS),
        connect(server, Role::Server, peer, LIMITS),
    )
}

/// Reads `recv` to its end, adding what arrived to `total`.
async fn drain(mut recv: RecvStream, total: Arc<AtomicUsize>, progress: watch::Sender<usize>) {
    let mut buf = BytesMut::new();
    loop {
        buf.clear();
        match std::future::poll_fn(|cx| recv.poll_read_into(cx, &mut buf, 64 * 1024)).await {
            Ok(true) => {
                let now = total.fetch_add(buf.len(), Ordering::Relaxed) + buf.len();
                progress.send_replace(now);
            }
            Ok(false) | Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_frame_overtakes_queued_low_priority_uploads() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (client, server) = pair(Arc::clone(&log)).await;

    // The chat stream is open (and known to the server) before the uploads.
    let (mut chat, _chat_back) = client.open_bi().await.expect("open chat");
    chat.write_all(Bytes::from_static(b"hello"))
        .await
        .expect("first chat write");
    let (_s_send, mut s_chat) = tokio::time::timeout(WITHIN, server.accept_bi())
        .await
        .expect("in time")
        .expect("accept chat");
    let mut got = BytesMut::new();
    while got.len() < 5 {
        std::future::poll_fn(|cx| s_chat.poll_read_into(cx, &mut got, 5))
            .await
            .expect("read hello");
    }

    let total = Arc::new(AtomicUsize::new(0));
    let (progress, mut progress_rx) = watch::channel(0usize);
    let payload = Bytes::from(vec![0u8; BULK_BYTES]);
    let mut uploads = Vec::new();
    for _ in 0..BULK_STREAMS {
        let mut send = client.open_uni().await.expect("open upload");
        send.set_priority(-10);
        let payload = payload.clone();
        uploads.push(tokio::spawn(async move {
            let _ = send.write_all(payload).await;
        }));
        let recv = tokio::time::timeout(WITHIN, server.accept_uni())
            .await
            .expect("in time")
            .expect("accept upload");
        tokio::spawn(drain(recv, Arc::clone(&total), progress.clone()));
    }
    // Every upload is under way with megabytes still queued.
    tokio::time::timeout(WITHIN, progress_rx.wait_for(|n| *n >= 2 << 20))
        .await
        .expect("uploads flow in time")
        .expect("progress");

    log.lock().expect("log").push(Entry::ChatWritten);
    chat.write_all(Bytes::from_static(CHAT))
        .await
        .expect("chat write");
    let mut got = BytesMut::new();
    while got.len() < CHAT.len() {
        tokio::time::timeout(
            WITHIN,
            std::future::poll_fn(|cx| s_chat.poll_read_into(cx, &mut got, CHAT.len())),
        )
        .await
        .expect("chat in time")
        .expect("read chat");
    }
    assert_eq!(&got[..], CHAT);
    let received = total.load(Ordering::Relaxed);
    assert!(
        received < BULK_STREAMS * BULK_BYTES,
        "the uploads were still under way ({received} bytes received)"
    );

    let log = log.lock().expect("log").clone();
    let mark = log
        .iter()
        .position(|e| *e == Entry::ChatWritten)
        .expect("marked");
    let mut ahead = 0;
    let mut seen = false;
    for entry in &log[mark + 1..] {
        match entry {
            Entry::Data { chat: true, .. } => {
                seen = true;
                break;
            }
            Entry::Data { len, .. } => ahead += len,
            Entry::ChatWritten => {}
        }
    }
    assert!(seen, "the chat frame went on the socket");
    // At most what yamux held when the chat was written: less than a piece,
    // one more piece handed over at that moment, and the direction bytes
    // of streams opened (written by the connection itself).
    assert!(
        ahead < 2 * CHUNK + BULK_STREAMS,
        "{ahead} upload bytes went on the socket between the chat write and its frame: {:?}",
        &log[mark..]
    );
    for upload in uploads {
        upload.abort();
    }
}
