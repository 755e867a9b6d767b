//! Bad input gets its typed error, and the gateway keeps serving everyone
//! else: each test keeps a bystander pair chatting across the bad client.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{Raw, TestGateway, take, text};
use qim_gateway::auth::unix_now;
use qim_proto::frame::put_len;
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode};
use qim_sdk::{Client, Error, OutgoingMessage};

/// Alice and bob chat before and after the bad client's attempt.
struct Bystanders {
    alice: Client,
    bob: Client,
    sent: usize,
}

impl Bystanders {
    async fn new(gw: &TestGateway) -> Self {
        let mut b = Bystanders {
            alice: gw.client("alice", "alice-phone").await,
            bob: gw.client("bob", "bob-phone").await,
            sent: 0,
        };
        b.still_chatting().await;
        b
    }

    async fn still_chatting(&mut self) {
        let body = format!("still here {}", self.sent);
        self.alice
            .send("bob".into(), body.clone())
            .await
            .expect("bystander send acked");
        self.sent += 1;
        let got = take(&self.bob, 1).await;
        assert_eq!(got[0].seq, self.sent as u64);
        assert_eq!(text(&got[0]), body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_expired_tokens_are_refused_with_their_codes() {
    let gw = TestGateway::start().await;
    let mut by = Bystanders::new(&gw).await;

    let foreign = qim_gateway::auth::TokenKey::with_id("default", &[7u8; 32]).expect("key");
    let cases = [
        (
            foreign.mint("mallory", unix_now() + 60).expect("mint"),
            ErrorCode::BadToken,
        ),
        (
            gw.key.mint("mallory", unix_now() - 1).expect("mint"),
            ErrorCode::TokenExpired,
        ),
        ("garbage".to_owned(), ErrorCode::BadToken),
    ];
    for (token, expected) in cases {
        let mut config = gw.client_config("mallory", "m-phone");
        config.token = token;
        match Client::connect(config).await {
            Err(Error::Auth { code, .. }) => assert_eq!(code, expected),
            other => panic!("expected an auth refusal with {expected:?}, got {other:?}"),
        }
    }

    // On the wire: a Refusal frame, then a close with the same code.
    let (raw, _send, _recv, reply) = Raw::hello(&gw, "qim1.eve.1.AAAA", "eve-phone", 0).await;
    match reply.and_then(|r| r.kind) {
        Some(v1::server_control::Kind::Refusal(r)) => {
            assert_eq!(r.code, ErrorCode::BadToken as i32)
        }
        other => panic!("expected a Refusal, got {other:?}"),
    }
    assert_eq!(raw.closed_with().await, ErrorCode::BadToken);

    by.still_chatting().await;
    assert!(
        gw.metric("qim_logins_refused_total{code=\"TOKEN_EXPIRED\"}")
            .await
            >= 1.0
    );
    gw.stop().await;
}

/// A logged-in raw client writes `bytes` on a new uni stream (after the
/// preamble of `kind`, when given); the gateway must close it with `code`.
async fn closes_with(
    gw: &TestGateway,
    device: &str,
    kind: Option<StreamKind>,
    bytes: &[u8],
    code: ErrorCode,
) {
    let bad = Raw::login(gw, "mallory", device, 0).await;
    match kind {
        Some(kind) => bad
            .raw
            .open_uni(kind)
            .await
            .send_raw(bytes)
            .await
            .expect("write"),
        None => {
            let mut stream = bad.raw.conn.open_uni().await.expect("open");
            stream.write_all(bytes).await.expect("write");
        }
    }
    assert_eq!(bad.raw.closed_with().await, code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_frames_close_the_connection_with_their_codes() {
    let gw = TestGateway::start().await;
    let mut by = Bystanders::new(&gw).await;

    let mut oversized = BytesMut::new();
    put_len(10 * 1024 * 1024, &mut oversized);
    oversized.extend_from_slice(&[0u8; 64]);
    closes_with(
        &gw,
        "m-1",
        Some(StreamKind::Chat),
        &oversized,
        ErrorCode::FrameTooLarge,
    )
    .await;
    by.still_chatting().await;

    // A frame whose body is not a Send.
    let mut garbage = BytesMut::new();
    put_len(8, &mut garbage);
    garbage.extend_from_slice(&[0xff; 8]);
    closes_with(
        &gw,
        "m-2",
        Some(StreamKind::Chat),
        &garbage,
        ErrorCode::MalformedFrame,
    )
    .await;
    by.still_chatting().await;

    // A length prefix longer than any varint.
    closes_with(
        &gw,
        "m-3",
        Some(StreamKind::Ack),
        &[0xff; 12],
        ErrorCode::MalformedFrame,
    )
    .await;
    by.still_chatting().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_misused_streams_close_the_connection_with_their_codes() {
    let gw = TestGateway::start().await;
    let mut by = Bystanders::new(&gw).await;

    closes_with(
        &gw,
        "m-1",
        None,
        &[b'Q', b'I', b'M', 1, 99],
        ErrorCode::UnknownStreamKind,
    )
    .await;
    by.still_chatting().await;
    closes_with(
        &gw,
        "m-2",
        None,
        b"GET / HTTP/1.1\r\n",
        ErrorCode::BadPreamble,
    )
    .await;
    by.still_chatting().await;

    // A Delivery stream is the server's to open.
    let bad = Raw::login(&gw, "mallory", "m-3", 0).await;
    let mut delivery = bad.raw.open_uni(StreamKind::Delivery).await;
    delivery.send(&v1::Deliver::default()).await.expect("write");
    assert_eq!(bad.raw.closed_with().await, ErrorCode::ProtocolViolation);

    // A first stream that is not Control.
    let raw = Raw::connect(&gw).await;
    let (send, _recv) = raw.conn.open_bi().await.expect("open");
    let mut rpc = qim_proto::io::FramedSend::new(send, StreamKind::Rpc, 1024);
    rpc.send(&v1::RpcRequest::default()).await.expect("write");
    assert_eq!(raw.closed_with().await, ErrorCode::ProtocolViolation);
    by.still_chatting().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_hello_the_control_stream_takes_refresh_or_bye_only() {
    let gw = TestGateway::start().await;
    let mut by = Bystanders::new(&gw).await;

    // A second Hello ends the session with PROTOCOL_VIOLATION.
    let mut again = Raw::login(&gw, "mallory", "m-1", 0).await;
    let hello = v1::ClientControl {
        kind: Some(v1::client_control::Kind::Hello(v1::Hello::default())),
    };
    again.control_send.send(&hello).await.expect("write");
    assert_eq!(again.raw.closed_with().await, ErrorCode::ProtocolViolation);
    by.still_chatting().await;

    // Bye ends it with NO_ERROR, not as a lost connection.
    let mut leaving = Raw::login(&gw, "mallory", "m-2", 0).await;
    let bye = v1::ClientControl {
        kind: Some(v1::client_control::Kind::Bye(v1::Bye {})),
    };
    leaving.control_send.send(&bye).await.expect("write");
    assert_eq!(leaving.raw.closed_with().await, ErrorCode::NoError);
    by.still_chatting().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sends_get_typed_nacks_and_the_session_goes_on() {
    let gw = TestGateway::start_with(|c| c.limits.max_body_bytes = 1024).await;
    let mut by = Bystanders::new(&gw).await;
    let carol = gw.client("carol", "carol-phone").await;

    let err = carol
        .send_message(OutgoingMessage {
            to: "bob".into(),
            kind: "file".into(),
            body: vec![7; 2048],
            client_msg_id: None,
        })
        .await
        .expect_err("too large");
    assert!(
        matches!(
            err,
            Error::Rejected {
                code: ErrorCode::MessageTooLarge,
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );

    // The SDK refuses bad recipients itself; on the wire the server does.
    let err = carol
        .send("no such user!".into(), "hi".into())
        .await
        .expect_err("bad recipient");
    assert!(
        matches!(
            err,
            Error::Rejected {
                code: ErrorCode::InvalidRecipient,
                ..
            }
        ),
        "{err:?}"
    );
    let raw = Raw::login(&gw, "dave", "dave-raw", 0).await;
    let (mut acks, _) = raw.raw.server_streams().await;
    let mut chat = raw.raw.open_uni(StreamKind::Chat).await;
    chat.send(&common::send_frame("c1", "not valid!", b"x"))
        .await
        .expect("write");
    chat.send(&common::send_frame("", "bob", b"x"))
        .await
        .expect("write");
    let mut group = common::send_frame("c3", "bob", b"x");
    group.to = Some(v1::Peer {
        target: Some(v1::peer::Target::Group("g1".into())),
    });
    chat.send(&group).await.expect("write");
    for expected in [
        ErrorCode::InvalidRecipient,
        ErrorCode::InvalidArgument,
        ErrorCode::InvalidRecipient,
    ] {
        match acks
            .next::<v1::ServerAck>()
            .await
            .expect("frame")
            .and_then(|a| a.kind)
        {
            Some(v1::server_ack::Kind::Nack(n)) => {
                assert_eq!(n.code, expected as i32);
                assert!(!n.retryable);
            }
            other => panic!("expected a nack, got {other:?}"),
        }
    }

    // Carol's session still works, and nothing reached bob but the bystanders' chat.
    carol
        .send("bob".into(), "fine".into())
        .await
        .expect("acked");
    let got = take(&by.bob, 1).await;
    assert_eq!(text(&got[0]), "fine");
    by.sent += 1;
    by.still_chatting().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_health_and_metrics() {
    let gw = TestGateway::start().await;
    let mut by = Bystanders::new(&gw).await;
    by.still_chatting().await;
    let (status, body) = gw.admin_get("/health").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(body.contains("\"online_users\":2"), "{body}");
    assert!(gw.metric("qim_sends_total").await >= 2.0);
    assert!(gw.metric("qim_deliveries_total").await >= 2.0);
    assert_eq!(gw.metric("qim_sessions_open").await, 2.0);
    let (status, _) = gw.admin_get("/nope").await;
    assert_eq!(status, 404);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_the_client_cannot_verify_is_refused_as_tls() {
    let gw = TestGateway::start().await;
    // Another development CA: the gateway's chain does not lead to it.
    let other = tempfile::tempdir().expect("temp dir");
    let paths =
        qim_gateway::tls::write_dev_certs(other.path(), &Default::default()).expect("certs");
    let mut config = gw.client_config("alice", "alice-phone");
    config.ca_pem = std::fs::read(paths.ca_cert).expect("ca");
    let err = Client::connect(config.clone())
        .await
        .expect_err("untrusted server");
    assert!(matches!(err, Error::Tls(_)), "{err:?}");

    // The right CA but the wrong name.
    config.ca_pem = gw.ca_pem.clone();
    config.server_name = "qim.example.org".into();
    let err = Client::connect(config).await.expect_err("wrong name");
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_slowed_or_closed_with_rate_limited() {
    let gw = TestGateway::start_with(|c| {
        c.limits.sends_per_second = 50;
        c.limits.sends_burst = 10;
        c.limits.requests_per_second = 1;
        c.limits.requests_burst = 5;
    })
    .await;
    let mut by = Bystanders::new(&gw).await;

    // A send flood is slowed to the configured rate, never reordered or lost.
    let flooder = Raw::login(&gw, "mallory", "m-1", 0).await;
    let (mut acks, _) = flooder.raw.server_streams().await;
    let mut chat = flooder.raw.open_uni(StreamKind::Chat).await;
    for i in 0..30 {
        chat.queue(&common::send_frame(&format!("f{i}"), "victim", b"spam"))
            .expect("queue");
    }
    chat.flush().await.expect("write");
    for i in 0..30 {
        match acks
            .next::<v1::ServerAck>()
            .await
            .expect("frame")
            .and_then(|a| a.kind)
        {
            Some(v1::server_ack::Kind::Ack(ack)) => {
                assert_eq!(
                    (ack.client_msg_id.as_str(), ack.seq),
                    (format!("f{i}").as_str(), i + 1)
                );
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    assert!(
        gw.metric("qim_sends_throttled_total").await >= 1.0,
        "the flood was throttled"
    );
    by.still_chatting().await;

    // A ping flood ends the session with RATE_LIMITED.
    let pinger = Raw::login(&gw, "mallory", "m-2", 0).await;
    let (send, _recv) = pinger.raw.conn.open_bi().await.expect("open");
    let mut beats = qim_proto::io::FramedSend::new(send, StreamKind::Heartbeat, 1024);
    for n in 0..50 {
        beats
            .queue(&v1::Ping {
                n,
                sent_at_ms: 0,
                next_within_ms: 0,
            })
            .expect("queue");
    }
    beats.flush().await.expect("write");
    assert_eq!(pinger.raw.closed_with().await, ErrorCode::RateLimited);
    by.still_chatting().await;
    gw.stop().await;
}

/// A Ping on `send` and the Pong it gets on `recv`.
async fn ping(send: &mut FramedSend, recv: &mut FramedRecv, n: u64) -> Option<v1::Pong> {
    let ping = v1::Ping {
        n,
        sent_at_ms: 7,
        next_within_ms: 0,
    };
    send.send(&ping).await.expect("write ping");
    recv.next::<v1::Pong>().await.expect("read pong")
}

/// The session serves one heartbeat stream: a client that opens another
/// gets its Pings answered there, and the one before is finished (not
/// left open with the session, however many the client opens); the
/// session goes on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_heartbeat_stream_replaces_the_one_before() {
    let gw = TestGateway::start().await;
    let mut by = Bystanders::new(&gw).await;
    let client = Raw::login(&gw, "mallory", "m-1", 0).await;
    let open = || async {
        let (send, recv) = client.raw.conn.open_bi().await.expect("open");
        (
            FramedSend::new(send, StreamKind::Heartbeat, 1024),
            FramedRecv::new(recv, 1024),
        )
    };
    let (mut first_send, mut first_recv) = open().await;
    let pong = ping(&mut first_send, &mut first_recv, 1)
        .await
        .expect("pong");
    assert_eq!((pong.n, pong.sent_at_ms), (1, 7));
    let mut last = None;
    for n in 2..40 {
        let (mut send, mut recv) = open().await;
        let pong = ping(&mut send, &mut recv, n).await.expect("pong");
        assert_eq!(pong.n, n);
        last = Some((send, recv));
    }
    // The first stream was finished when the second took its place.
    let ended = tokio::time::timeout(Duration::from_secs(10), first_recv.next::<v1::Pong>())
        .await
        .expect("the first stream ends");
    assert!(ended.expect("a finish, not a reset").is_none());
    let (mut send, mut recv) = last.expect("the last stream");
    assert_eq!(ping(&mut send, &mut recv, 99).await.map(|p| p.n), Some(99));
    assert_eq!(client.sync(0).await.inbox_head, 0, "the session goes on");
    by.still_chatting().await;
    gw.stop().await;
}

/// A client that lets go of streams it opened before their preamble was
/// written (an SDK session that ends before its chat stream carried a
/// send) resets them: the gateway takes that as abandoned streams, not as
/// preambles cut short (MALFORMED_FRAME, which would end the session and
/// stop the SDK for good), and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_dropped_before_their_preamble_are_not_a_fault() {
    let gw = TestGateway::start().await;
    let mut by = Bystanders::new(&gw).await;
    let client = Raw::login(&gw, "mallory", "m-1", 0).await;
    for kind in [StreamKind::Chat, StreamKind::Ack] {
        let send = client.raw.conn.open_uni().await.expect("open");
        drop(FramedSend::new(send, kind, 1024));
    }
    let (send, _recv) = client.raw.conn.open_bi().await.expect("open");
    drop(FramedSend::new(send, StreamKind::Rpc, 1024));
    assert_eq!(client.sync(0).await.inbox_head, 0, "the session goes on");
    let closed = tokio::time::timeout(Duration::from_millis(500), client.raw.conn.closed()).await;
    assert!(closed.is_err(), "the connection stays open: {closed:?}");
    by.still_chatting().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_validation_adds_a_retry_and_clients_still_get_in() {
    let gw = TestGateway::start_with(|c| c.quic.validate_addresses = true).await;
    let mut by = Bystanders::new(&gw).await;
    by.still_chatting().await;
    gw.stop().await;
}
