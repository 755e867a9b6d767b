//! Attacks on the gateway's edges: the admin API without a key, with a
//! wrong one, outside its scopes and by brute force; a flood of the route
//! endpoint; handshakes that never finish; a chat stream flooded while its
//! session is throttled; a client from the future; and a store failure
//! whose text must not reach the client. Two bystanders chat through each
//! attack, unharmed.

mod common;

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use common::{
    ADMIN_SECRET, Bystanders, PATIENCE, READ_SECRET, Raw, TestGateway, http_request,
    http_request_from, poll_until, send_frame, stopped,
};
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode};
use qim_storage::{Appended, MessageStore, NewMessage, StoreError, StoredMessage};
use tokio::time::Instant;

/// Another loopback address: a second remote address for the per-address
/// limits.
const OTHER_ADDRESS: [u8; 4] = [127, 0, 0, 2];

fn other() -> IpAddr {
    IpAddr::from(OTHER_ADDRESS)
}

// ---------------------------------------------------------------- admin API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_requests_without_a_valid_key_or_scope() {
    let gw = TestGateway::start().await;
    let bystanders = Bystanders::start(&gw).await;
    let api = gw.api.expect("the admin API listens with a keys file");

    // No key, a wrong key, a key with a space too many: 401, typed.
    for key in [
        None,
        Some("wrong-key-of-enough-length-0123456789"),
        Some(""),
    ] {
        let r = http_request(api, "GET", "/v1/nodes", key).await;
        assert_eq!(r.status, 401, "{key:?}: {}", r.body);
        assert!(r.body.contains("\"code\":\"unauthorized\""), "{}", r.body);
    }
    let r = http_request(api, "POST", "/v1/users/someone/kick", None).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // A read key reads, and may not kick (403, naming the scope).
    let r = http_request(api, "GET", "/v1/nodes", Some(READ_SECRET)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"online_users\":"), "{}", r.body);
    let victim = common::unique("victim");
    let client = gw.client(&victim, "phone").await;
    let r = http_request(
        api,
        "POST",
        &format!("/v1/users/{victim}/kick"),
        Some(READ_SECRET),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("\"code\":\"forbidden\""), "{}", r.body);
    assert!(r.body.contains("sessions"), "names the scope: {}", r.body);
    let r = http_request(
        api,
        "GET",
        &format!("/v1/presence?user={victim}"),
        Some(READ_SECRET),
    )
    .await;
    assert!(r.body.contains("\"online\":true"), "not kicked: {}", r.body);

    // The key with scope "sessions" kicks.
    let r = http_request(
        api,
        "POST",
        &format!("/v1/users/{victim}/kick"),
        Some(ADMIN_SECRET),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"kicked\":1"), "{}", r.body);
    // An admin kick tells the app why (the default reason: an operator).
    match stopped(&client).await {
        qim_sdk::Error::Kicked { reason, .. } => {
            assert_eq!(reason, qim_sdk::KickReason::Operator);
        }
        other => panic!("expected a kick by an operator, got {other:?}"),
    }

    // The metrics listener serves no admin route, with or without a key.
    for path in ["/v1/nodes", "/nodes", "/presence?user=x"] {
        let r = http_request(gw.admin, "GET", path, Some(ADMIN_SECRET)).await;
        assert_eq!(r.status, 404, "{path} on the metrics listener");
    }
    assert!(
        gw.metric("qim_admin_refusals_total{reason=\"unauthorized\"}")
            .await
            >= 4.0
    );
    assert_eq!(
        gw.metric("qim_admin_refusals_total{reason=\"forbidden\"}")
            .await,
        1.0
    );
    bystanders.finish().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_admin_keys_locks_out_the_guessing_address_only() {
    let gw = TestGateway::start_with(|c| c.admin.auth_failures_per_minute = 5).await;
    let bystanders = Bystanders::start(&gw).await;
    let api = gw.api.expect("admin API");
    for i in 0..5 {
        let guess = format!("guess-{i}-of-an-attacker-0123456789abcdef");
        let r = http_request(api, "GET", "/v1/nodes", Some(&guess)).await;
        assert_eq!(r.status, 401, "guess {i}");
    }
    // The sixth attempt is refused before the key is looked at, even the
    // right key: the address is out of attempts for a while.
    for key in ["guess-5-of-an-attacker-0123456789abcdef", ADMIN_SECRET] {
        let r = http_request(api, "GET", "/v1/nodes", Some(key)).await;
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(r.body.contains("\"code\":\"rate_limited\""), "{}", r.body);
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!((1..=60).contains(&retry), "retry after {retry} s");
    }
    // Another address is not locked out.
    let r = http_request_from(other(), api, "GET", "/v1/nodes", Some(ADMIN_SECRET)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        gw.metric("qim_admin_refusals_total{reason=\"rate_limited\"}")
            .await
            >= 2.0
    );
    bystanders.finish().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keys_file_only_health_and_metrics_listen() {
    let gw = TestGateway::start_with(|c| c.admin.keys_file = None).await;
    assert_eq!(gw.api, None, "no keys file, no admin API");
    let (status, body) = gw.admin_get("/health").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("qim_handshakes_timed_out_total"), "{body}");
    gw.stop().await;
}

// ------------------------------------------------------------ route endpoint

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_endpoint_flood_is_refused_per_address() {
    let gw = TestGateway::start_with(|c| {
        c.cluster.route_requests_per_second = 5;
        c.cluster.route_requests_burst = 10;
    })
    .await;
    let bystanders = Bystanders::start(&gw).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..40 {
        let r = http_request(gw.admin, "GET", &format!("/route?user=u{i}"), None).await;
        if r.status == 429 {
            retry_after = r.header("retry-after").map(str::to_owned);
            assert!(r.body.contains("\"code\":\"rate_limited\""), "{}", r.body);
        }
        statuses.push(r.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, 40, "{statuses:?}");
    // The burst, and what the rate refilled while the flood ran.
    assert!((10..20).contains(&ok), "{ok} answered: {statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let r = http_request_from(other(), gw.admin, "GET", "/route?user=u1", None).await;
    assert_eq!(r.status, 200, "another address is served: {}", r.body);
    assert_eq!(
        gw.metric("qim_route_requests_limited_total").await,
        limited as f64
    );
    bystanders.finish().await;
    gw.stop().await;
}

// ---------------------------------------------------------------- handshakes

/// A UDP socket that sends but never hears back: the client of a spoofed
/// source address, whose handshake never completes.
#[derive(Debug)]
struct Deaf(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for Deaf {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Arc::clone(&self.0).create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Read and drop everything, then wait for more.
        loop {
            match self.0.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(_)) => continue,
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Starts a connection attempt to `gw` that never completes its handshake;
/// it keeps resending its Initial while the returned endpoint lives.
fn stalled_attempt(gw: &TestGateway) -> (quinn::Endpoint, quinn::Connecting) {
    use quinn::Runtime as _;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    socket.set_nonblocking(true).expect("nonblocking");
    let inner = quinn::TokioRuntime
        .wrap_udp_socket(socket)
        .expect("wrap socket");
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        Arc::new(Deaf(inner)),
        Arc::new(quinn::TokioRuntime),
    )
    .expect("endpoint");
    endpoint.set_default_client_config(common::quic_client_config(&gw.ca_pem));
    let connecting = endpoint.connect(gw.addr, "localhost").expect("connect");
    (endpoint, connecting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_do_not_keep_real_clients_out() {
    // Room for the bystanders (4 connections) and one more; far fewer
    // than the attempts.
    let gw = TestGateway::start_with(|c| {
        c.server.max_connections = 5;
        c.quic.handshake_timeout_ms = 2_000;
        c.quic.max_pending_handshakes = 16;
        c.quic.retry_above_pending = 4;
    })
    .await;
    let bystanders = Bystanders::start(&gw).await;
    let attempts: Vec<_> = (0..30).map(|_| stalled_attempt(&gw)).collect();
    poll_until("the stalled attempts hold handshake slots", || async {
        (gw.metric("qim_handshakes_pending").await >= 4.0).then_some(())
    })
    .await;
    poll_until("attempts beyond the threshold get a Retry", || async {
        (gw.metric("qim_retries_sent_total").await >= 1.0).then_some(())
    })
    .await;
    // A real client answers the Retry and gets in, during the attack.
    let latecomer = common::unique("latecomer");
    let client = tokio::time::timeout(PATIENCE, gw.client(&latecomer, "phone"))
        .await
        .expect("a real client connects through the flood");
    client
        .send(common::unique("peer"), "made it".to_owned())
        .await
        .expect("and its send is acked");
    assert!(
        gw.metric("qim_handshakes_pending").await <= 16.0,
        "pending handshakes stay bounded"
    );
    poll_until("stalled handshakes are dropped", || async {
        (gw.metric("qim_handshakes_timed_out_total").await >= 4.0).then_some(())
    })
    .await;
    client.close().await;
    drop(attempts);
    bystanders.finish().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_dropped_within_the_bound() {
    let bound = Duration::from_millis(1_000);
    let gw = TestGateway::start_with(|c| {
        c.quic.handshake_timeout_ms = 1_000;
    })
    .await;
    let (_endpoint, _connecting) = stalled_attempt(&gw);
    poll_until("the attempt is in its handshake", || async {
        (gw.metric("qim_handshakes_pending").await == 1.0).then_some(())
    })
    .await;
    let seen = Instant::now();
    poll_until("the stalled handshake is dropped", || async {
        (gw.metric("qim_handshakes_timed_out_total").await >= 1.0).then_some(())
    })
    .await;
    let took = seen.elapsed();
    // The bound, and the polling's and a busy machine's slack; the idle
    // timeout (120 s) would be far beyond.
    assert!(
        took <= bound + Duration::from_secs(2),
        "dropped after {took:?}"
    );
    assert_eq!(gw.metric("qim_connections_total").await, 0.0);
    gw.stop().await;
}

// --------------------------------------------------------------- chat flood

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_flood_while_throttled_is_held_back_not_buffered() {
    const BACKLOG: u32 = 64 * 1024;
    let gw = TestGateway::start_with(|c| {
        c.limits.sends_per_second = 2;
        c.limits.sends_burst = 2;
        c.limits.chat_backlog_bytes = BACKLOG;
    })
    .await;
    let bystanders = Bystanders::start(&gw).await;
    let flooder = Raw::login(&gw, &common::unique("flooder"), "dev", 0).await;
    let mut chat = flooder.raw.open_uni(StreamKind::Chat).await;
    let written = Arc::new(AtomicUsize::new(0));
    let frames = 200usize;
    let flood = tokio::spawn({
        let written = Arc::clone(&written);
        let sink = common::unique("sink");
        async move {
            let body = vec![b'x'; 40_000];
            for i in 0..frames {
                chat.send(&send_frame(&format!("f{i}"), &sink, &body))
                    .await
                    .expect("write");
                written.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    poll_until("the flooder is throttled", || async {
        (gw.metric("qim_sends_throttled_total").await >= 1.0).then_some(())
    })
    .await;
    // 8 MB offered: the stream is held by flow control, not read into the
    // server's memory (before the bound, 512 frames were read ahead).
    assert!(
        tokio::time::timeout(
            Duration::from_secs(3),
            &mut Box::pin(async {
                while written.load(Ordering::Relaxed) < frames {
                    tokio::task::yield_now().await;
                    // Why a sleep: a poll of the writer's counter under the
                    // 3 s bound (the writer blocks in flow control and
                    // signals nothing), not a wait for an outcome.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        )
        .await
        .is_err(),
        "the flood is held back"
    );
    let held = gw.metric("qim_chat_backlog_bytes").await;
    assert!(
        held > 0.0 && held <= f64::from(BACKLOG + 64 * 1024),
        "backlog {held} bytes, bound {BACKLOG} + one frame"
    );
    let sent = written.load(Ordering::Relaxed);
    assert!(
        sent < 40,
        "{sent} frames of 40 KB got past flow control in 3 s"
    );
    flood.abort();
    bystanders.finish().await;
    gw.stop().await;
}

// ---------------------------------------------------------- protocol version

/// Opens the control stream with protocol `version`; returns the close.
async fn hello_with_version(gw: &TestGateway, version: u8) -> (ErrorCode, String) {
    let raw = Raw::connect(gw).await;
    let (mut send, _recv) = raw.conn.open_bi().await.expect("open");
    let mut preamble = qim_proto::preamble::encode(StreamKind::Control);
    preamble[3] = version;
    send.write_all(&preamble).await.expect("write preamble");
    match tokio::time::timeout(PATIENCE, raw.conn.closed())
        .await
        .expect("closed")
    {
        quinn::ConnectionError::ApplicationClosed(close) => (
            ErrorCode::from_quic(close.error_code.into_inner()),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("closed without a code: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_newer_than_the_server_is_told_so() {
    let gw = TestGateway::start().await;
    let bystanders = Bystanders::start(&gw).await;
    let newer = hello_with_version(&gw, qim_proto::PROTOCOL_VERSION + 1).await;
    assert_eq!(newer.0, ErrorCode::VersionTooNew, "{newer:?}");
    let older = hello_with_version(&gw, qim_proto::PROTOCOL_VERSION - 1).await;
    assert_eq!(older.0, ErrorCode::VersionTooOld, "{older:?}");
    assert_ne!(newer.1, older.1, "each says which");
    // The SDK tells the app which, and does not retry.
    match qim_sdk::Error::from_code(newer.0, newer.1) {
        qim_sdk::Error::Version { code, .. } => assert_eq!(code, ErrorCode::VersionTooNew),
        other => panic!("{other:?}"),
    }
    bystanders.finish().await;
    gw.stop().await;
}

// ------------------------------------------------------------- store errors

/// What the failing store says: internal detail a client must never see.
const SECRET_DETAIL: &str = "cql 10.0.0.7:9042 keyspace qim_prod: write timeout";

/// The embedded store's messages, failing every call on the inbox of
/// `user`, and the reads (not the head) of the inbox of `reader`.
struct FailingFor {
    inner: Arc<dyn MessageStore>,
    user: String,
    reader: String,
}

fn fail() -> StoreError {
    StoreError::Unavailable(SECRET_DETAIL.to_owned())
}

impl FailingFor {
    fn check(&self, inbox: &str) -> Result<(), StoreError> {
        if inbox == self.user {
            Err(fail())
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl MessageStore for FailingFor {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        for m in &batch {
            self.check(&m.inbox)?;
        }
        self.inner.append(batch).await
    }

    async fn read_inbox(
        &self,
        inbox: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.check(inbox)?;
        if inbox == self.reader {
            return Err(fail());
        }
        self.inner.read_inbox(inbox, after_seq, limit).await
    }

    async fn inbox_head(&self, inbox: &str) -> Result<u64, StoreError> {
        self.check(inbox)?;
        self.inner.inbox_head(inbox).await
    }

    async fn settled_through(&self, inbox: &str, head: u64) -> Result<u64, StoreError> {
        self.inner.settled_through(inbox, head).await
    }

    async fn save_cursor(&self, inbox: &str, device: &str, seq: u64) -> Result<(), StoreError> {
        self.inner.save_cursor(inbox, device, seq).await
    }

    async fn load_cursor(&self, inbox: &str, device: &str) -> Result<Option<u64>, StoreError> {
        self.inner.load_cursor(inbox, device).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_reaches_the_client_as_a_code_and_a_fixed_text() {
    let victim = common::unique("victim");
    let reader = common::unique("reader");
    let (failing, failing_reads) = (victim.clone(), reader.clone());
    let gw = TestGateway::start_with_stores(
        |_| {},
        move |config| {
            let mut stores =
                qim_storage::Stores::open_embedded(&config.server.data_dir.join("store"), 0)
                    .expect("store");
            stores.messages = Arc::new(FailingFor {
                inner: stores.messages,
                user: failing,
                reader: failing_reads,
            });
            stores
        },
    )
    .await;
    let bystanders = Bystanders::start(&gw).await;

    // Login: the inbox head cannot be read. The session ends with the
    // code and a fixed text.
    let raw = Raw::connect(&gw).await;
    let (raw, _send, _recv, reply) = raw.say_hello(&gw.token(&victim), "phone", 0).await;
    assert!(reply.is_none(), "no Welcome: {reply:?}");
    let close = match tokio::time::timeout(PATIENCE, raw.conn.closed())
        .await
        .expect("closed")
    {
        quinn::ConnectionError::ApplicationClosed(close) => close,
        other => panic!("closed without a code: {other}"),
    };
    assert_eq!(
        ErrorCode::from_quic(close.error_code.into_inner()),
        ErrorCode::StoreUnavailable
    );
    let text = String::from_utf8_lossy(&close.reason);
    assert_eq!(text, "the store is unavailable; reconnect later");

    // An rpc whose store read fails: the code, retryable, a fixed text.
    let session = Raw::login(&gw, &reader, "phone", 0).await;
    let (send, recv) = session.raw.conn.open_bi().await.expect("rpc");
    let mut send = FramedSend::new(send, StreamKind::Rpc, 64 * 1024);
    let mut recv = FramedRecv::new(recv, 64 * 1024);
    send.send(&v1::RpcRequest {
        kind: Some(v1::rpc_request::Kind::Sync(v1::SyncRequest {
            after_seq: 0,
            limit: 10,
        })),
    })
    .await
    .expect("request");
    let answer = recv
        .next::<v1::RpcResponse>()
        .await
        .expect("answer")
        .and_then(|r| r.kind);
    match answer {
        Some(v1::rpc_response::Kind::Error(e)) => {
            assert_eq!(e.code, ErrorCode::StoreUnavailable as i32, "{e:?}");
            assert_eq!(e.message, "the store is unavailable; retry");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    bystanders.finish().await;
    gw.stop().await;
}
