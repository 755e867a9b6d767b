//! A frame write that is cancelled part-way (a `select!` or timeout around
//! a send, a task aborted while its stream is blocked on flow control)
//! must never reach the peer as a frame cut short: the peer treats that as
//! a fault and closes the whole connection. Over real QUIC on loopback and
//! over the TCP multiplexer: the next send writes the rest first, and a
//! stream dropped mid-frame is reset, not finished.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use qim_proto::io::{FramedRecv, FramedSend, RecvError, read_preamble};
use qim_proto::preamble::StreamKind;
use qim_proto::transport::mux::{self, Limits, Role};
use qim_proto::transport::{Connection, RecvStream, SendStream};
use qim_proto::v1::{self, upload_client};
use quinn::rustls;

const MAX_FRAME: usize = 1 << 20;
/// The receiver's window per stream: a frame larger than it cannot be
/// written while the receiver does not read.
const WINDOW: u32 = 64 * 1024;
/// A frame larger than either transport's stream window (QUIC's set
/// here, yamux's 256 KiB).
const BIG: usize = 512 * 1024;
const WITHIN: Duration = Duration::from_secs(10);

fn chunk(offset: u64, len: usize) -> v1::UploadClient {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    v1::UploadClient {
        kind: Some(upload_client::Kind::Chunk(v1::UploadChunk {
            offset,
            data: data.into(),
        })),
    }
}

/// A QUIC client and server connected on loopback, each as a [`Connection`].
async fn quic_pair() -> (Connection, Connection, quinn::Endpoint, quinn::Endpoint) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(qim_proto::tls::crypto_provider());

    let tls = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server tls");
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(WINDOW.into());
    server_config.transport_config(Arc::new(transport));
    let server = quinn::Endpoint::server(server_config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("server endpoint");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut client =
        quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("client");
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));

    let addr = server.local_addr().expect("addr");
    let (connecting, incoming) = tokio::join!(
        async { client.connect(addr, "localhost").expect("connect").await },
        async { server.accept().await.expect("incoming").await },
    );
    let (c, s) = (
        connecting.expect("client side"),
        incoming.expect("server side"),
    );
    (Connection::new(c), Connection::new(s), client, server)
}

/// A multiplexed client and server over an in-memory pipe.
fn mux_pair() -> (Connection, Connection) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
    let limits = Limits { bidi: 4, uni: 4 };
    (
        mux::connect(a, Role::Client, addr, limits),
        mux::connect(b, Role::Server, addr, limits),
    )
}

/// Opens a stream on `client`, writes its first bytes (QUIC announces a
/// stream only when data flows) and accepts it on `server`.
async fn open(client: &Connection, server: &Connection) -> (FramedSend, FramedRecv) {
    let (send, _recv): (SendStream, RecvStream) = client.open_bi().await.expect("open");
    let mut send = FramedSend::new(send, StreamKind::Upload, MAX_FRAME);
    send.send(&chunk(0, 1)).await.expect("first frame");
    let (_send, mut recv) = tokio::time::timeout(WITHIN, server.accept_bi())
        .await
        .expect("accepted in time")
        .expect("accept");
    assert_eq!(
        read_preamble(&mut recv).await.expect("preamble"),
        StreamKind::Upload
    );
    let mut recv = FramedRecv::new(recv, MAX_FRAME);
    let first: v1::UploadClient = recv.next().await.expect("read").expect("a frame");
    assert_eq!(first, chunk(0, 1));
    (send, recv)
}

/// Starts a frame the window cannot take and gives it up part-way.
async fn cancel_a_big_write(send: &mut FramedSend) {
    let cut = tokio::time::timeout(Duration::from_millis(200), send.send(&chunk(1, BIG))).await;
    assert!(
        cut.is_err(),
        "a frame larger than the window cannot be written while nobody reads"
    );
}

async fn next_after_a_cancelled_write(client: Connection, server: Connection) {
    let (mut send, mut recv) = open(&client, &server).await;
    cancel_a_big_write(&mut send).await;
    // The next send writes the rest of the big frame first: the reader
    // gets both frames whole and in order.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(frame) = recv
            .next::<v1::UploadClient>()
            .await
            .expect("frames decode")
        {
            got.push(frame);
        }
        got
    });
    tokio::time::timeout(WITHIN, send.send(&chunk(2, 10)))
        .await
        .expect("written in time")
        .expect("written");
    send.finish();
    let got = tokio::time::timeout(WITHIN, reader)
        .await
        .expect("read in time")
        .expect("reader");
    assert_eq!(got, vec![chunk(1, BIG), chunk(2, 10)]);
}

async fn dropped_mid_frame(client: Connection, server: Connection) {
    let (mut send, mut recv) = open(&client, &server).await;
    cancel_a_big_write(&mut send).await;
    drop(send);
    let end = tokio::time::timeout(WITHIN, recv.next::<v1::UploadClient>())
        .await
        .expect("ends in time");
    match end {
        Err(RecvError::Reset(_)) => {}
        other => panic!("a stream dropped mid-frame reads as a reset, got {other:?}"),
    }
    // The connection lives on: a fresh stream still carries frames.
    let (mut send, mut recv) = open(&client, &server).await;
    send.send(&chunk(3, 5)).await.expect("written");
    let frame: v1::UploadClient = recv.next().await.expect("read").expect("a frame");
    assert_eq!(frame, chunk(3, 5));
    assert!(
        client.close_reason().is_none(),
        "the connection is not closed"
    );
}

#[tokio::test]
async fn quic_a_send_after_a_cancelled_one_writes_the_rest_first() {
    let (client, server, _c, _s) = quic_pair().await;
    next_after_a_cancelled_write(client, server).await;
}

#[tokio::test]
async fn quic_a_stream_dropped_mid_frame_is_reset_not_cut_short() {
    let (client, server, _c, _s) = quic_pair().await;
    dropped_mid_frame(client, server).await;
}

#[tokio::test]
async fn tcp_a_send_after_a_cancelled_one_writes_the_rest_first() {
    let (client, server) = mux_pair();
    next_after_a_cancelled_write(client, server).await;
}

#[tokio::test]
async fn tcp_a_stream_dropped_mid_frame_is_reset_not_cut_short() {
    let (client, server) = mux_pair();
    dropped_mid_frame(client, server).await;
}
