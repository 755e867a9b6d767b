//! Attacks on the TLS-on-TCP listener: garbage, slowloris, handshake slots
//! held, a TLS client without the protocol's ALPN, and, inside a session,
//! oversized frames, bad preambles and stream floods. Each meets the bound
//! and the typed close it meets on QUIC; bystanders chat through it all.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::transport::mux::{self, Limits, Role};
use qim_proto::transport::{Connection, ConnectionError};
use qim_proto::v1::{self, ErrorCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn tls_client(ca_pem: &[u8], alpn: bool) -> Arc<rustls::ClientConfig> {
    let mut tls = tls_client_config(ca_pem);
    if !alpn {
        tls.alpn_protocols.clear();
    }
    Arc::new(tls)
}

fn tcp_addr(gw: &TestGateway) -> SocketAddr {
    gw.tcp.expect("the gateway listens on TCP")
}

/// A raw client over TLS on TCP, before any stream.
async fn raw_tcp(gw: &TestGateway) -> Connection {
    let stream = TcpStream::connect(tcp_addr(gw)).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(tls_client(&gw.ca_pem, true))
        .connect(name, stream)
        .await
        .expect("tls");
    mux::connect(tls, Role::Client, tcp_addr(gw), Limits { bidi: 0, uni: 8 })
}

/// A raw client logged in over TLS on TCP.
async fn raw_tcp_login(gw: &TestGateway, user: &str) -> (Connection, FramedSend, FramedRecv) {
    let conn = raw_tcp(gw).await;
    let (send, recv) = conn.open_bi().await.expect("control");
    let mut control_send = FramedSend::new(send, StreamKind::Control, 64 * 1024);
    let mut control_recv = FramedRecv::new(recv, 64 * 1024);
    control_send
        .send(&v1::ClientControl {
            kind: Some(v1::client_control::Kind::Hello(v1::Hello {
                token: gw.token(user),
                device_id: "raw".into(),
                platform: v1::Platform::Desktop as i32,
                sdk_version: "raw-test".into(),
                resume_from: 0,
            })),
        })
        .await
        .expect("hello");
    match control_recv
        .next::<v1::ServerControl>()
        .await
        .expect("reply")
        .and_then(|r| r.kind)
    {
        Some(v1::server_control::Kind::Welcome(_)) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    (conn, control_send, control_recv)
}

/// The code the server closed `conn` with.
async fn closed_with(conn: &Connection) -> ErrorCode {
    match tokio::time::timeout(PATIENCE, conn.closed())
        .await
        .expect("closed in time")
    {
        ConnectionError::ApplicationClosed { code, .. } => code,
        other => panic!("expected a close with a code, got {other:?}"),
    }
}

/// Whether the server hangs up on `stream` within `within` (EOF or reset).
async fn hung_up(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

#[tokio::test]
async fn garbage_slowloris_and_held_handshake_slots_on_tcp_are_bounded_as_on_quic() {
    let gw = TestGateway::start_with(|c| {
        c.transport.handshake_timeout_ms = 500;
        c.quic.max_pending_handshakes = 4;
    })
    .await;
    let bystanders = Bystanders::start(&gw).await;

    // Garbage instead of a TLS ClientHello: the handshake fails at once.
    let mut garbage = TcpStream::connect(tcp_addr(&gw)).await.expect("tcp");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(
        hung_up(&mut garbage, Duration::from_millis(400)).await,
        "garbage is dropped before the handshake bound"
    );

    // Slowloris: connections that send nothing hold every handshake slot...
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(tcp_addr(&gw)).await.expect("tcp"));
    }
    let before = gw.metric("qim_handshakes_timed_out_total").await;
    // ...so one more attempt is dropped at once rather than queued,
    let extra_started = tokio::time::Instant::now();
    let mut extra = TcpStream::connect(tcp_addr(&gw)).await.expect("tcp");
    assert!(
        hung_up(&mut extra, Duration::from_millis(400)).await,
        "an attempt beyond the slots is dropped"
    );
    assert!(extra_started.elapsed() < Duration::from_millis(450));
    // ...and each idle one is dropped at the handshake bound.
    for stream in &mut idle {
        assert!(
            hung_up(stream, Duration::from_secs(3)).await,
            "a silent connection is dropped"
        );
    }
    let after = gw.metric("qim_handshakes_timed_out_total").await;
    assert!(
        after >= before + 4.0,
        "timed-out handshakes are counted ({before} -> {after})"
    );

    // A TLS client without ALPN qim/1 (another protocol, an old client)
    // completes TLS but gets no session.
    let stream = TcpStream::connect(tcp_addr(&gw)).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(tls_client(&gw.ca_pem, false))
        .connect(name, stream)
        .await
        .expect("TLS itself completes");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, tls.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "no session without ALPN: {read:?}"
    );

    // With the slots free again, a client still gets in over TCP.
    let mut config = gw.client_config(&unique("late"), "phone");
    config.transport = qim_sdk::TransportPolicy::TcpOnly;
    let late = qim_sdk::Client::connect(config)
        .await
        .expect("connect after the attack");
    late.close().await;
    bystanders.finish().await;
}

#[tokio::test]
async fn faults_inside_a_tcp_session_close_it_with_the_codes_of_quic() {
    let gw = TestGateway::start_with(|c| c.auth.login_timeout_ms = 300).await;
    let bystanders = Bystanders::start(&gw).await;

    // A frame above limits.max_frame_bytes: FRAME_TOO_LARGE.
    let (conn, _cs, _cr) = raw_tcp_login(&gw, &unique("big")).await;
    let stream = conn.open_uni().await.expect("chat");
    let mut chat = FramedSend::new(stream, StreamKind::Chat, 64 * 1024);
    let mut huge = Vec::new();
    // A varint length of 16 MiB, far above the limit, and no body.
    let mut len = 16u32 << 20;
    while len >= 0x80 {
        huge.push((len as u8) | 0x80);
        len >>= 7;
    }
    huge.push(len as u8);
    chat.send_raw(&huge).await.expect("write");
    assert_eq!(closed_with(&conn).await, ErrorCode::FrameTooLarge);

    // A stream with a bad preamble: BAD_PREAMBLE.
    let (conn, _cs, _cr) = raw_tcp_login(&gw, &unique("pre")).await;
    let stream = conn.open_uni().await.expect("uni");
    let mut bad = FramedSend::without_preamble(stream, 64 * 1024);
    bad.send_raw(b"HTTP/1.1 200").await.expect("write");
    assert_eq!(closed_with(&conn).await, ErrorCode::BadPreamble);

    // More streams at once than quic.max_uni_streams: PROTOCOL_VIOLATION.
    let (conn, _cs, _cr) = raw_tcp_login(&gw, &unique("flood")).await;
    let mut held = Vec::new();
    for _ in 0..=gw.config.quic.max_uni_streams {
        let Ok(stream) = conn.open_uni().await else {
            break;
        };
        let mut s = FramedSend::new(stream, StreamKind::Chat, 64 * 1024);
        if s.flush().await.is_err() {
            break;
        }
        held.push(s);
    }
    assert_eq!(closed_with(&conn).await, ErrorCode::ProtocolViolation);

    // A connection that never says Hello: LOGIN_TIMEOUT.
    let conn = raw_tcp(&gw).await;
    assert_eq!(closed_with(&conn).await, ErrorCode::LoginTimeout);

    // A first stream other than the control stream: PROTOCOL_VIOLATION.
    let conn = raw_tcp(&gw).await;
    let (send, _recv) = conn.open_bi().await.expect("bi");
    let mut hb = FramedSend::new(send, StreamKind::Heartbeat, 64 * 1024);
    hb.flush().await.expect("write");
    assert_eq!(closed_with(&conn).await, ErrorCode::ProtocolViolation);

    bystanders.finish().await;
}
