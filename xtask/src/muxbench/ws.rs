//! The WebSocket multiplexer of `cargo xtask bench-mux`: one binary
//! message per piece of a stream, a 4-byte stream id in front (the
//! message's length is the piece's); an empty piece ends the stream. No
//! per-stream flow control: a stream whose reader falls behind holds up
//! the connection's reader, and with it every stream.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;

use super::{Rx, Tx};

/// Largest piece (one yamux or HTTP/2 frame).
pub(super) const WS_PIECE: usize = 16 * 1024;
/// tungstenite's read buffer, down from its 128 KiB default (an idle
/// connection holds it).
const READ_BUFFER: usize = 16 * 1024;

/// Pieces a stream's reader may have queued before the connection's reader
/// waits (and so every stream of the connection with it).
pub(super) const WS_STREAM_QUEUE: usize = 64;
/// Pieces queued for the connection's writer, all streams together.
const WS_WRITE_QUEUE: usize = 16;

pub(super) type WsStreams =
    Arc<std::sync::Mutex<std::collections::HashMap<u32, mpsc::Sender<Bytes>>>>;

/// One WebSocket connection's multiplexer.
pub(super) struct WsMux {
    pub(super) out: mpsc::Sender<(u32, Bytes)>,
    pub(super) streams: WsStreams,
    pub(super) next_id: AtomicU64,
}

/// The sending half of a stream on [`WsMux`].
pub(super) struct WsTx {
    pub(super) id: u32,
    pub(super) out: mpsc::Sender<(u32, Bytes)>,
}

/// Runs the reader and the writer of a WebSocket connection; a server
/// passes `accepted`, where streams the peer opens are handed out.
pub(super) fn ws_mux<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    accepted: Option<mpsc::Sender<(Tx, Rx)>>,
) -> WsMux
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut source) = ws.split();
    let (out, mut queue) = mpsc::channel::<(u32, Bytes)>(WS_WRITE_QUEUE);
    let streams: WsStreams = Arc::default();
    tokio::spawn(async move {
        let frame = |(id, piece): (u32, Bytes)| {
            let mut m = BytesMut::with_capacity(4 + piece.len());
            m.extend_from_slice(&id.to_be_bytes());
            m.extend_from_slice(&piece);
            Message::Binary(m.freeze())
        };
        while let Some(first) = queue.recv().await {
            if sink.feed(frame(first)).await.is_err() {
                return;
            }
            while let Ok(next) = queue.try_recv() {
                if sink.feed(frame(next)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let reader_streams = Arc::clone(&streams);
    let reader_out = out.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            let Message::Binary(mut data) = message else {
                continue;
            };
            if data.len() < 4 {
                return;
            }
            let head = data.split_to(4);
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let known = reader_streams.lock().ok().and_then(|s| s.get(&id).cloned());
            let to = match (known, &accepted) {
                (Some(to), _) => to,
                (None, Some(accepted)) if !data.is_empty() => {
                    let (to, rx) = mpsc::channel(WS_STREAM_QUEUE);
                    if let Ok(mut s) = reader_streams.lock() {
                        s.insert(id, to.clone());
                    }
                    let tx = WsTx {
                        id,
                        out: reader_out.clone(),
                    };
                    if accepted.send((Tx::Ws(tx), Rx::Ws(rx))).await.is_err() {
                        return;
                    }
                    to
                }
                _ => continue,
            };
            if data.is_empty() {
                // The end of the stream: dropping its sender ends its reader.
                if let Ok(mut s) = reader_streams.lock() {
                    s.remove(&id);
                }
            } else {
                let _ = to.send(data).await;
            }
        }
    });
    WsMux {
        out,
        streams,
        next_id: AtomicU64::new(1),
    }
}

/// tungstenite's configuration on both ends.
pub(super) fn config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
}
