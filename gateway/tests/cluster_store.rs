//! The gateway on the cluster store (Redis + CQL) under failures of either,
//! with real SDK clients over real QUIC.
//!
//! Needs the local services: `QIM_TEST_CQL` (e.g. `127.0.0.1:9042`) and, for
//! the CQL test, `QIM_TEST_REDIS` (e.g. `redis://127.0.0.1:6390`); `cargo
//! xtask test` starts them and sets both. The Redis test runs its own
//! `redis-server` on a free port, since it kills it.

// The gateway's futures nest deeper than rustc's default query depth
// allows for this file's largest test.
#![recursion_limit = "256"]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use common::{
    PATIENCE, Raw, TestGateway, assert_quiet, required_env, send_frame, take, text, unique,
};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, server_ack};

async fn migrate(cql_addr: &str) {
    common::migrate_test_keyspace(cql_addr).await;
}

/// A gateway on the cluster store at `redis` and `cql`.
async fn cluster_gateway(redis: &str, cql: &str) -> TestGateway {
    cluster_gateway_with(redis, cql, |_| {}).await
}

/// [`cluster_gateway`] with more settings.
async fn cluster_gateway_with(
    redis: &str,
    cql: &str,
    more: impl FnOnce(&mut qim_gateway::config::Config),
) -> TestGateway {
    let (redis, cql) = (redis.to_owned(), cql.to_owned());
    TestGateway::start_with(move |c| {
        c.store.redis = Some(redis);
        c.store.cql = Some(cql);
        c.store.keyspace = common::CLUSTER_KEYSPACE.to_owned();
        c.store.key_prefix = unique("qimtest:");
        c.store.key_prefix.push(':');
        c.store.timeout_ms = 1_000;
        common::cluster_secrets(c);
        more(c);
    })
    .await
}

/// Sends refused so far, all codes (from /metrics).
async fn refusals(gw: &TestGateway, code: &str) -> f64 {
    let (_, body) = gw.admin_get("/metrics").await;
    body.lines()
        .filter(|l| l.starts_with("qim_send_refusals") && l.contains(code))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    common::poll_until(what, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await
}

// --- a redis-server of our own --------------------------------------------

struct OwnRedis {
    port: u16,
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

async fn redis_answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").await.is_ok()
        && s.read_exact(&mut buf).await.is_ok()
        && &buf == b"+PONG\r\n"
}

impl OwnRedis {
    /// Starts an empty `redis-server` without persistence on `port` (a free
    /// one when 0) and waits until it answers.
    async fn start(port: u16, dir: Option<tempfile::TempDir>) -> OwnRedis {
        let port = if port == 0 {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        } else {
            port
        };
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("dir"));
        let child = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (apt-get install redis-server, or `cargo xtask services up`)");
        wait_until("redis-server answers", || redis_answers(port)).await;
        OwnRedis { port, child, dir }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (all data lost) and starts an empty one on the same port.
    async fn kill(mut self) -> (u16, tempfile::TempDir) {
        self.child.kill().await.expect("kill redis-server");
        (self.port, self.dir)
    }
}

/// Redis dies and comes back empty while alice streams messages to bob: no
/// seq is reused, every acknowledged message arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_data_lost_during_traffic() {
    let cql_addr = required_env("QIM_TEST_CQL");
    migrate(&cql_addr).await;
    let redis = OwnRedis::start(0, None).await;
    let gw = cluster_gateway(&redis.url(), &cql_addr).await;
    let (a, b) = (unique("alice"), unique("bob"));
    let alice = gw.client(&a, "alice-phone").await;
    // Skips a seq lost with Redis quickly (the default waits 30 s).
    let mut bob_config = gw.client_config(&b, "bob-phone");
    bob_config.gap_skip_after = Duration::from_millis(500);
    let bob = qim_sdk::Client::connect(bob_config).await.expect("bob");
    const N: usize = 120;

    let (progress_tx, mut progress) = watch::channel(0usize);
    let sender = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(N);
            for i in 0..N {
                let receipt = alice
                    .send(b.clone(), format!("m{i}"))
                    .await
                    .expect("every send is acked in the end");
                seqs.push(receipt.seq);
                progress_tx.send_replace(i + 1);
            }
            (alice, seqs)
        })
    };

    // A third of the way in, Redis dies; sends are refused (retryable)
    // until it is back, empty.
    progress.wait_for(|&n| n >= N / 3).await.expect("progress");
    let refused_before = refusals(&gw, "").await;
    let (port, dir) = redis.kill().await;
    wait_until("a send refused while Redis is down", || async {
        refusals(&gw, "").await > refused_before
    })
    .await;
    let during = *progress.borrow();
    assert!(during < N, "the outage happened mid-stream");
    let _redis = OwnRedis::start(port, Some(dir)).await;

    let (alice, seqs) = tokio::time::timeout(PATIENCE * 3, sender)
        .await
        .expect("all sends finish")
        .expect("sender");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs rise in send order, none reused: {seqs:?}"
    );
    // A seq may be skipped (Redis died, or a command timed out, after
    // counting it but before its answer arrived), never reused; counting
    // resumed at the durable mark, not far beyond it.
    assert!(
        *seqs.last().expect("seqs") < 2 * N as u64,
        "counting resumed at the durable mark: {seqs:?}"
    );
    let got = take(&bob, N).await;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.seq, seqs[i]);
        assert_eq!(text(m), format!("m{i}"), "in order, once");
    }
    assert_quiet(&bob, Duration::from_millis(300)).await;
    alice.close().await;
    bob.close().await;
    gw.stop().await;
}

/// The CQL server becomes unreachable during traffic: sends get a
/// retryable refusal, nothing is acknowledged that was not stored, and
/// everything goes through once it is reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_unreachable_refuses_sends_and_recovers() {
    let cql_addr = required_env("QIM_TEST_CQL");
    let redis_url = required_env("QIM_TEST_REDIS");
    migrate(&cql_addr).await;
    let upstream: SocketAddr = cql_addr.parse().expect("QIM_TEST_CQL is host:port");
    let (proxy_addr, open) = common::proxy(upstream).await;
    let gw = cluster_gateway(&redis_url, &proxy_addr.to_string()).await;
    let (a, b, c) = (unique("alice"), unique("bob"), unique("carol"));
    let alice = Arc::new(gw.client(&a, "alice-phone").await);
    let bob = gw.client(&b, "bob-phone").await;

    for i in 0..10 {
        alice.send(b.clone(), format!("m{i}")).await.expect("acked");
    }
    assert_eq!(take(&bob, 10).await.len(), 10);

    // Cut: a raw client (logged in before) sees the refusal itself.
    let carol = Raw::login(&gw, &c, "carol-raw", 0).await;
    let (mut acks, _deliveries) = carol.raw.server_streams().await;
    let mut chat = carol.raw.open_uni(StreamKind::Chat).await;
    open.send_replace(false);
    chat.send(&send_frame("carol-1", &b, b"from carol"))
        .await
        .expect("send");
    let ack = tokio::time::timeout(PATIENCE, acks.next::<v1::ServerAck>())
        .await
        .expect("an answer while CQL is away")
        .expect("ack frame")
        .and_then(|a| a.kind);
    match ack {
        Some(server_ack::Kind::Nack(nack)) => {
            assert!(nack.retryable, "refusal is retryable: {nack:?}");
            assert_eq!(nack.code, ErrorCode::StoreUnavailable as i32);
        }
        other => panic!("expected a retryable refusal, got {other:?}"),
    }

    // SDK sends during the outage stay pending (refused, retried).
    let refused_before = refusals(&gw, "").await;
    let pending = {
        let (alice, b) = (Arc::clone(&alice), b.clone());
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 10..20 {
                let r = alice.send(b.clone(), format!("m{i}")).await.expect("acked");
                seqs.push(r.seq);
            }
            seqs
        })
    };
    wait_until("an SDK send refused while CQL is away", || async {
        refusals(&gw, "").await > refused_before
    })
    .await;
    assert!(!pending.is_finished(), "nothing acked while CQL is away");
    assert_quiet(&bob, Duration::from_millis(200)).await;

    // Back: the pending sends and carol's resend go through.
    open.send_replace(true);
    let seqs = tokio::time::timeout(PATIENCE * 3, pending)
        .await
        .expect("pending sends finish after recovery")
        .expect("sender");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    chat.send(&send_frame("carol-1", &b, b"from carol"))
        .await
        .expect("resend");
    let ack = loop {
        match tokio::time::timeout(PATIENCE, acks.next::<v1::ServerAck>())
            .await
            .expect("an ack after recovery")
            .expect("ack frame")
            .and_then(|a| a.kind)
        {
            Some(server_ack::Kind::Ack(ack)) => break ack,
            Some(server_ack::Kind::Nack(nack)) if nack.retryable => {
                chat.send(&send_frame("carol-1", &b, b"from carol"))
                    .await
                    .expect("resend");
            }
            other => panic!("unexpected answer {other:?}"),
        }
    };

    let got = take(&bob, 11).await;
    let from_alice: Vec<String> = got.iter().filter(|m| m.from_user == a).map(text).collect();
    assert_eq!(
        from_alice,
        (10..20).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "alice's messages once, in order"
    );
    let from_carol: Vec<_> = got.iter().filter(|m| m.from_user == c).collect();
    assert_eq!(from_carol.len(), 1, "carol's message once");
    assert_eq!(from_carol[0].seq, ack.seq);
    assert!(
        got.windows(2).all(|w| w[0].seq < w[1].seq),
        "bob's inbox in seq order"
    );
    assert_quiet(&bob, Duration::from_millis(300)).await;
    bob.close().await;
    alice.close().await;
    gw.stop().await;
}

/// Once the seqs of a gap were handed out longer ago than the settle
/// window, sync says so, and a device catching up skips the gap at once
/// instead of waiting its `gap_skip_after`; a younger gap is not called
/// settled (a resend may still fill it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_older_than_the_settle_window_is_skipped_at_once() {
    let cql_addr = required_env("QIM_TEST_CQL");
    let redis_url = required_env("QIM_TEST_REDIS");
    migrate(&cql_addr).await;
    // The shortest window allowed: the fill window of a 1 s store timeout.
    let settle = qim_storage::cluster::fill_window(Duration::from_millis(1_000));
    let gw = cluster_gateway_with(&redis_url, &cql_addr, move |c| {
        c.store.gap_settle_ms = u64::try_from(settle.as_millis()).expect("ms");
    })
    .await;
    let (a, b) = (unique("alice"), unique("bob"));
    let alice = gw.client(&a, "alice-phone").await;
    for i in 0..3 {
        alice.send(b.clone(), format!("m{i}")).await.expect("acked");
    }
    common::hand_out_unwritten(&gw, &cql_addr, &redis_url, &b, 5).await;
    let after = alice
        .send(b.clone(), "after the gap".into())
        .await
        .expect("acked");
    assert_eq!(after.seq, 6);
    let started = std::time::Instant::now();

    let probe = Raw::login(&gw, &b, "bob-probe", 6).await;
    let young = probe.sync(0).await;
    assert!(
        started.elapsed() < settle,
        "this check must run within the window"
    );
    assert_eq!(
        (young.inbox_head, young.settled_through),
        (6, 0),
        "seqs handed out moments ago are not settled"
    );
    let page = common::poll_until("the gap settles", || async {
        let page = probe.sync(0).await;
        (page.settled_through >= 5).then_some(page)
    })
    .await;
    assert!(
        started.elapsed() >= settle - Duration::from_millis(500),
        "settled only once the window passed, after {:?}",
        started.elapsed()
    );
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 6]);

    // A phone of bob's that was offline all along must not sit out the gap.
    let got = common::catch_up_without_waiting(&gw, &b, "bob-phone", |got| got.len() == 4).await;
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 6]);
    alice.close().await;
    gw.stop().await;
}
