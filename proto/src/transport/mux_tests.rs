//! The multiplexer over an in-memory pipe: streams both ways, close codes,
//! and the bounds a hostile peer meets.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

const LIMITS: Limits = Limits { bidi: 4, uni: 4 };

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

fn pair() -> (Connection, Connection) {
    let (a, b) = tokio::io::duplex(1 << 16);
    (
        connect(a, Role::Client, addr(), LIMITS),
        connect(b, Role::Server, addr(), LIMITS),
    )
}

async fn read_all(recv: &mut RecvStream) -> Vec<u8> {
    let mut buf = BytesMut::new();
    while poll_fn(|cx| recv.poll_read_into(cx, &mut buf, 1024))
        .await
        .expect("read")
    {}
    buf.to_vec()
}

const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn streams_of_both_kinds_open_from_both_sides() {
    let (client, server) = pair();
    let (mut send, mut recv) = client.open_bi().await.expect("open bi");
    send.write_all(Bytes::from_static(b"ping"))
        .await
        .expect("write");
    send.finish();
    let (mut s_send, mut s_recv) = tokio::time::timeout(WITHIN, server.accept_bi())
        .await
        .expect("in time")
        .expect("accept bi");
    assert_eq!(read_all(&mut s_recv).await, b"ping");
    s_send
        .write_all(Bytes::from_static(b"pong"))
        .await
        .expect("write");
    s_send.finish();
    assert_eq!(read_all(&mut recv).await, b"pong");

    let mut uni = server.open_uni().await.expect("open uni");
    uni.write_all(Bytes::from_static(b"down"))
        .await
        .expect("write");
    uni.finish();
    let mut c_uni = tokio::time::timeout(WITHIN, client.accept_uni())
        .await
        .expect("in time")
        .expect("accept uni");
    assert_eq!(read_all(&mut c_uni).await, b"down");
    assert_eq!(client.kind(), TransportKind::Tcp);
}

#[tokio::test]
async fn a_close_carries_its_code_to_the_peer() {
    let (client, server) = pair();
    // The session's streams are open when a server closes.
    let (mut send, _recv) = client.open_bi().await.expect("open");
    send.write_all(Bytes::from_static(b"x"))
        .await
        .expect("write");
    let _accepted = server.accept_bi().await.expect("accept");
    server.close(ErrorCode::Replaced, b"this device logged in again");
    assert_eq!(server.close_reason(), Some(ConnectionError::LocallyClosed));
    let reason = tokio::time::timeout(WITHIN, client.closed())
        .await
        .expect("closed in time");
    assert_eq!(
        reason,
        ConnectionError::ApplicationClosed {
            code: ErrorCode::Replaced,
            reason: "this device logged in again".into()
        }
    );
    assert!(client.accept_uni().await.is_err(), "nothing more arrives");
}

#[tokio::test]
async fn a_peer_over_its_stream_limit_is_closed_with_protocol_violation() {
    let (client, server) = pair();
    let mut held = Vec::new();
    for _ in 0..=LIMITS.uni {
        let Ok(mut s) = client.open_uni().await else {
            break;
        };
        if s.write_all(Bytes::from_static(b"QIM")).await.is_err() {
            break;
        }
        held.push(s);
    }
    let reason = tokio::time::timeout(WITHIN, client.closed())
        .await
        .expect("closed in time");
    assert!(
        matches!(
            reason,
            ConnectionError::ApplicationClosed {
                code: ErrorCode::ProtocolViolation,
                ..
            }
        ),
        "{reason:?}"
    );
    assert!(server.close_reason().is_some());
}

/// A raw yamux client that breaks the framing rules on purpose; returns
/// the code of the server's `TransportClose`.
async fn raw_client(first_bytes: &[u8], second: Option<&[u8]>) -> ErrorCode {
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = connect(b, Role::Server, addr(), LIMITS);
    let mut conn =
        yamux::Connection::new(a.compat(), yamux::Config::default(), yamux::Mode::Client);
    let mut transport = poll_fn(|cx| conn.poll_new_outbound(cx))
        .await
        .expect("open");
    let mut streams = vec![];
    {
        use futures_util::io::AsyncWriteExt as _;
        transport.write_all(first_bytes).await.expect("write");
        if let Some(bytes) = second {
            let mut s = poll_fn(|cx| conn.poll_new_outbound(cx))
                .await
                .expect("open");
            s.write_all(bytes).await.expect("write");
            streams.push(s);
        }
    }
    let mut inbound = Vec::new();
    let drive = async {
        while let Some(Ok(s)) = poll_fn(|cx| conn.poll_next_inbound(cx)).await {
            inbound.push(s);
        }
    };
    let _ = tokio::time::timeout(WITHIN, drive).await;
    assert_eq!(server.close_reason(), Some(ConnectionError::LocallyClosed));
    let mut first = inbound
        .into_iter()
        .next()
        .expect("the server's transport stream");
    let mut bytes = Vec::new();
    {
        use futures_util::io::AsyncReadExt as _;
        let _ = first.read_to_end(&mut bytes).await;
    }
    assert_eq!(bytes.first(), Some(&DIR_TRANSPORT));
    let mut rest = BytesMut::from(&bytes[1..]);
    let close: v1::TransportClose = FrameDecoder::new(MAX_CLOSE_FRAME)
        .decode_message(&mut rest)
        .expect("a frame")
        .expect("complete");
    ErrorCode::try_from(close.code).expect("a known code")
}

#[tokio::test]
async fn garbage_instead_of_the_transport_stream_is_a_bad_preamble() {
    let code = raw_client(b"GET / HTTP/1.1\r\n", None).await;
    assert_eq!(code, ErrorCode::BadPreamble);
}

#[tokio::test]
async fn an_unknown_direction_byte_is_a_bad_preamble() {
    let code = raw_client(&[DIR_TRANSPORT], Some(&[7, b'Q', b'I', b'M'])).await;
    assert_eq!(code, ErrorCode::BadPreamble);
}

#[tokio::test]
async fn a_peer_that_vanishes_is_lost_not_closed_with_a_code() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = connect(b, Role::Server, addr(), LIMITS);
    let mut a = a;
    a.write_all(b"\x00").await.expect("write");
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_millis(50), a.read(&mut sink)).await;
    drop(a);
    let reason = tokio::time::timeout(WITHIN, server.closed())
        .await
        .expect("closed in time");
    assert!(matches!(reason, ConnectionError::Lost(_)), "{reason:?}");
}

/// A client abandons an upload mid-frame after the server finished its
/// half: yamux sends that as a finish, and a reset as an end, so the server
/// must read either as the peer's reset (the stream ends, the session goes
/// on), never as a malformed frame that would end the whole session.
#[tokio::test]
async fn a_stream_abandoned_mid_frame_reads_as_a_reset() {
    use crate::io::{FramedRecv, RecvError};
    let (client, server) = pair();
    for server_finished_first in [true, false] {
        let (mut send, recv) = client.open_bi().await.expect("open");
        // A frame announcing 100 bytes, of which 10 are sent.
        let mut half = BytesMut::new();
        crate::frame::put_len(100, &mut half);
        half.extend_from_slice(&[7u8; 10]);
        send.write_all(half.freeze()).await.expect("write");
        let (mut s_send, s_recv) = tokio::time::timeout(WITHIN, server.accept_bi())
            .await
            .expect("in time")
            .expect("accept");
        if server_finished_first {
            s_send.finish();
        }
        let mut framed = FramedRecv::new(s_recv, 1024);
        if server_finished_first {
            // The client sees the server's finish before it lets go.
            let mut recv = recv;
            assert!(read_all(&mut recv).await.is_empty());
            send.reset(ErrorCode::Unspecified);
        } else {
            drop(recv);
            send.reset(ErrorCode::Unspecified);
        }
        let got = tokio::time::timeout(WITHIN, framed.next::<v1::Ping>())
            .await
            .expect("in time");
        assert!(
            matches!(got, Err(RecvError::Reset(_))),
            "server finished first: {server_finished_first}: {got:?}"
        );
        assert_eq!(got.err().and_then(|e| e.code()), None, "no fault");
    }
    assert!(client.close_reason().is_none(), "the connection goes on");
}

/// A read waiting on a stream ends once its connection is closed, by this
/// side or by the peer, while the stream is still held: yamux wakes no
/// reader when it closes a connection gracefully, so an upload waiting for
/// the server's answer would otherwise wait for ever.
#[tokio::test]
async fn a_pending_read_ends_when_the_connection_closes() {
    for closed_here in [true, false] {
        let (client, server) = pair();
        let (mut send, mut recv) = client.open_bi().await.expect("open bi");
        send.write_all(Bytes::from_static(b"x"))
            .await
            .expect("write");
        let (_s_send, _s_recv) = tokio::time::timeout(WITHIN, server.accept_bi())
            .await
            .expect("in time")
            .expect("accept bi");
        let reading = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            poll_fn(|cx| recv.poll_read_into(cx, &mut buf, 1024)).await
        });
        // The read is waiting: nothing was written to it.
        tokio::task::yield_now().await;
        assert!(!reading.is_finished());
        if closed_here {
            client.close(ErrorCode::NoError, b"reconnecting");
        } else {
            server.close(ErrorCode::Replaced, b"this device logged in again");
        }
        let read = tokio::time::timeout(WITHIN, reading)
            .await
            .expect("the read ends in time")
            .expect("read task");
        assert!(
            !matches!(read, Ok(true)),
            "no data arrives (closed here: {closed_here}): {read:?}"
        );
        drop(send);
    }
}
