//! Durability and recovery: the gateway binary runs as a child process, is
//! killed with SIGKILL, and restarted on the same data directory. Every
//! acknowledged message must come back, once, in order; and clients of the
//! killed process must be back within seconds of the restart (the restarted
//! process answers their old connections with a stateless reset).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Backend, PATIENCE, assert_quiet, join_in_order, take, text};
use qim_gateway::auth::{TokenKey, unix_now};
use qim_sdk::{Client, ClientConfig, OutgoingMessage, SendReceipt};
use tokio::process::{Child, Command};

struct Node {
    child: Child,
    addr: SocketAddr,
}

async fn start(dir: &Path) -> Node {
    start_on(dir, &[]).await
}

/// The `--set` arguments that put a gateway on the cluster store, with
/// a key prefix of its own (keep them to restart the same "cluster").
async fn cluster_args(dir: &Path) -> Vec<String> {
    let cql = common::required_env("QIM_TEST_CQL");
    common::migrate_test_keyspace(&cql).await;
    let secret = common::cluster_endpoint_secret(dir);
    let token_secret = common::cluster_token_secret(dir);
    [
        format!("store.redis={}", common::required_env("QIM_TEST_REDIS")),
        format!("store.cql={cql}"),
        format!("store.keyspace={}", common::CLUSTER_KEYSPACE),
        format!("store.key_prefix={}:", common::unique("qimtest:")),
        format!(
            "quic.endpoint_secret_file={}",
            toml::Value::String(secret.display().to_string())
        ),
        format!(
            "auth.secret_file={}",
            toml::Value::String(token_secret.display().to_string())
        ),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_owned(), s])
    .collect()
}

async fn start_on(dir: &Path, extra: &[String]) -> Node {
    start_at(dir, "127.0.0.1:0", extra).await
}

/// The gateway binary: cargo's, or `QIM_TEST_GATEWAY_BIN` (for a target
/// directory shared by several checkouts, where the uplifted binary is
/// whichever checkout built last).
fn gateway_bin() -> std::path::PathBuf {
    std::env::var_os("QIM_TEST_GATEWAY_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_qim-gateway").into(), Into::into)
}

/// A gateway listening at `listen` (a restart takes its predecessor's
/// address, where the clients look for it).
async fn start_at(dir: &Path, listen: &str, extra: &[String]) -> Node {
    let mut child = Command::new(gateway_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("QIM_TEST_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qim-gateway");
    let addr = common::ready_addr(&mut child).await;
    Node { child, addr }
}

impl Node {
    async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let status = self.child.wait().await.expect("wait");
        assert!(!status.success(), "killed, not exited: {status:?}");
    }

    fn config(&self, dir: &Path, user: &str, device: &str) -> ClientConfig {
        let key = TokenKey::load(&dir.join("token-secret")).expect("dev secret");
        let ca = std::fs::read(dir.join("certs/ca.pem")).expect("dev CA");
        let token = key.mint(user, unix_now() + 3600).expect("mint");
        let mut config = ClientConfig::new(self.addr.to_string(), token, device, ca);
        config.reconnect_min = Duration::from_millis(50);
        config.reconnect_max = Duration::from_millis(200);
        config
    }
}

fn outgoing(id: String, body: String) -> OutgoingMessage {
    OutgoingMessage {
        to: "bob".into(),
        kind: "text".into(),
        body: body.into_bytes(),
        client_msg_id: Some(id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9_and_stay_idempotent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start(dir.path()).await;
    let alice = Client::connect(node.config(dir.path(), "alice", "alice-phone"))
        .await
        .expect("connect");
    const N: usize = 300;
    let sends = (0..N)
        .map(|i| Box::pin(alice.send_message(outgoing(format!("c{i}"), format!("m{i}")))))
        .collect();
    let receipts: Vec<SendReceipt> = join_in_order(sends)
        .await
        .into_iter()
        .map(|r| r.expect("acked"))
        .collect();
    alice.close().await;
    node.kill9().await;

    let node = start(dir.path()).await;
    let bob = Client::connect(node.config(dir.path(), "bob", "bob-phone"))
        .await
        .expect("connect");
    let got = take(&bob, N).await;
    for (i, (m, receipt)) in got.iter().zip(&receipts).enumerate() {
        assert_eq!(m.seq, receipt.seq);
        assert_eq!(m.msg_id, receipt.msg_id);
        assert_eq!(text(m), format!("m{i}"));
    }
    assert_quiet(&bob, Duration::from_millis(300)).await;

    // The idempotency keys survived too: resending stores nothing new.
    let alice = Client::connect(node.config(dir.path(), "alice", "alice-phone"))
        .await
        .expect("connect");
    let again = alice
        .send_message(outgoing("c7".into(), "m7".into()))
        .await
        .expect("acked");
    assert_eq!(again, receipts[7]);
    assert_quiet(&bob, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_traffic_loses_no_acked_message() {
    kill_9_during_traffic("fjall").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_traffic_loses_no_acked_message_on_redb() {
    kill_9_during_traffic("redb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_traffic_loses_no_acked_message_on_sqlite() {
    kill_9_during_traffic("sqlite").await;
}

/// With the store's own log on (`store.log`), the engine syncs only at
/// checkpoints: what it had not synced at the kill comes back from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_traffic_loses_no_acked_message_with_the_store_log() {
    kill_9_during_traffic_with("fjall", true).await;
}

/// redb forgets every commit made without a sync when the process dies, so
/// here every acked message since the log started comes back from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_traffic_loses_no_acked_message_on_redb_with_the_store_log() {
    kill_9_during_traffic_with("redb", true).await;
}

/// A data directory keeps the engine that wrote it: a gateway asked for
/// another refuses to start and names the engine to set, instead of
/// serving an empty second store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_by_another_engine_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = qim_gateway::Config::for_tests(dir.path());
    config.store.engine = "redb".into();
    let gateway = qim_gateway::Gateway::bind(config.clone())
        .await
        .expect("starts on redb");
    drop(gateway);
    config.store.engine = "fjall".into();
    match qim_gateway::Gateway::bind(config).await {
        Err(e) => assert!(e.to_string().contains("store.engine = \"redb\""), "{e}"),
        Ok(_) => panic!("started on another engine's store"),
    }
}

/// Acked messages survive a SIGKILL mid-traffic on the embedded store's
/// `engine`, gap-free and intact.
async fn kill_9_during_traffic(engine: &str) {
    kill_9_during_traffic_with(engine, false).await;
}

/// [`kill_9_during_traffic`], with the store's own log on when `log`.
async fn kill_9_during_traffic_with(engine: &str, log: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let on_engine = [
        "--set".to_owned(),
        format!("store.engine=\"{engine}\""),
        "--set".to_owned(),
        format!("store.log={log}"),
    ];
    let node = start_on(dir.path(), &on_engine).await;
    let alice = std::sync::Arc::new(
        Client::connect(node.config(dir.path(), "alice", "alice-phone"))
            .await
            .expect("connect"),
    );
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    // Eight senders keep messages in flight until the kill.
    let mut senders = Vec::new();
    for s in 0..8 {
        let alice = std::sync::Arc::clone(&alice);
        let acked = acked_tx.clone();
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let body = format!("s{s}-{i}");
                match alice
                    .send_message(outgoing(body.clone(), body.clone()))
                    .await
                {
                    Ok(receipt) => {
                        let _ = acked.send((receipt, body));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    while acked.len() < 200 {
        acked.push(
            tokio::time::timeout(PATIENCE, acked_rx.recv())
                .await
                .expect("traffic flows")
                .expect("acks"),
        );
    }
    node.kill9().await;
    alice.close().await;
    for sender in senders {
        sender.await.expect("sender");
    }
    while let Ok(more) = acked_rx.try_recv() {
        acked.push(more);
    }

    let node = start_on(dir.path(), &on_engine).await;
    let bob = Client::connect(node.config(dir.path(), "bob", "bob-phone"))
        .await
        .expect("connect");
    let highest = acked.iter().map(|(r, _)| r.seq).max().expect("some acked");
    let got = take(&bob, highest as usize).await;
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=highest).collect::<Vec<_>>(),
        "gap-free, in order, once"
    );
    for (receipt, body) in &acked {
        let m = &got[receipt.seq as usize - 1];
        assert_eq!(
            (&m.msg_id, text(m)),
            (&receipt.msg_id, body.clone()),
            "acked message {body} is intact"
        );
    }
}

/// On both backends: with the cluster store, the schedule lives in CQL
/// and the restarted node finds it there.
async fn a_scheduled_message_survives_kill_9_and_arrives_on_time(backend: Backend) {
    use qim_sdk::Peer;
    let dir = tempfile::tempdir().expect("temp dir");
    let extra = match backend {
        Backend::Embedded => Vec::new(),
        Backend::Cluster => cluster_args(dir.path()).await,
    };
    // Users unique per run: the cluster keyspace is shared.
    let (alice_id, bob_id) = (common::unique("alice"), common::unique("bob"));
    let node = start_on(dir.path(), &extra).await;
    let alice = Client::connect(node.config(dir.path(), &alice_id, "alice-phone"))
        .await
        .expect("connect");
    let now = qim_proto::now_ms();
    // Still pending after the restart: delivered at its time.
    let on_time_at = now + 3_000;
    alice
        .schedule(Peer::User(bob_id.clone()), "on time".into(), on_time_at)
        .await
        .expect("schedule");
    let cancelled = alice
        .schedule(Peer::User(bob_id.clone()), "cancelled".into(), now + 2_000)
        .await
        .expect("schedule");
    alice
        .cancel_scheduled(cancelled.clone())
        .await
        .expect("cancel");
    let err = alice.cancel_scheduled(cancelled).await.expect_err("once");
    assert!(matches!(
        err,
        qim_sdk::Error::Rejected {
            code: qim_sdk::ErrorCode::NotFound,
            ..
        }
    ));
    // Overdue by the time the gateway is back: delivered at start-up.
    // Scheduled last, right before the kill, so that the node does not
    // come to it first (a node killed while posting an entry leaves it
    // claimed, and the claim is taken over only after a minute).
    let early_at = qim_proto::now_ms() + 500;
    alice
        .schedule(Peer::User(bob_id.clone()), "early".into(), early_at)
        .await
        .expect("schedule");
    alice.close().await;
    node.kill9().await;

    let node = start_on(dir.path(), &extra).await;
    let bob = Client::connect(node.config(dir.path(), &bob_id, "bob-phone"))
        .await
        .expect("connect");
    let first = take(&bob, 1).await.remove(0);
    assert_eq!(text(&first), "early");
    assert!(first.server_time_ms >= early_at);
    let second = take(&bob, 1).await.remove(0);
    let arrived = qim_proto::now_ms();
    assert_eq!(text(&second), "on time");
    assert!(second.server_time_ms >= on_time_at, "never early");
    assert!(
        arrived - on_time_at < 1_000,
        "late by {} ms",
        arrived - on_time_at
    );
    // The cancelled one's time has passed: it never comes.
    assert_quiet(&bob, Duration::from_millis(300)).await;
}

on_both_backends!(a_scheduled_message_survives_kill_9_and_arrives_on_time);

/// What one client of the crash test did, with when.
#[derive(Default)]
struct Progress {
    /// Acked sends: (index, when acked).
    acked: std::sync::Mutex<Vec<(usize, tokio::time::Instant)>>,
    /// Received messages: (body, when taken).
    received: std::sync::Mutex<Vec<(String, tokio::time::Instant)>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Progress {
    /// When this client had both a send acked and a message received after
    /// `since` (the later of the two), if it has.
    fn back_after(&self, since: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let acked = lock(&self.acked)
            .iter()
            .map(|a| a.1)
            .find(|t| *t >= since)?;
        let received = lock(&self.received)
            .iter()
            .map(|r| r.1)
            .find(|t| *t >= since)?;
        Some(acked.max(received))
    }
}

/// Waits (up to `limit`) until every client is back after `since`; returns
/// how long each took, measured from `since`.
async fn all_back(
    progress: &[std::sync::Arc<Progress>],
    changed: &mut tokio::sync::watch::Receiver<u64>,
    since: tokio::time::Instant,
    limit: Duration,
) -> Vec<Duration> {
    let waited = tokio::time::timeout(limit, async {
        loop {
            let back: Option<Vec<Duration>> = progress
                .iter()
                .map(|p| p.back_after(since).map(|t| t - since))
                .collect();
            if let Some(back) = back {
                return back;
            }
            changed.changed().await.expect("clients running");
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        let missing = progress
            .iter()
            .enumerate()
            .filter(|(_, p)| p.back_after(since).is_none())
            .map(|(i, _)| i)
            .collect::<Vec<_>>();
        panic!("clients {missing:?} not back and delivering within {limit:?}")
    })
}

/// 40 clients send to each other (each to the next, round the ring) and
/// take what they receive, with the SDK's default settings. The gateway is
/// killed with SIGKILL and restarted at the same address three times:
/// every client must have a send acked and a message received within 5 s
/// of each restart (the restarted process resets their old connections at
/// once: its connection-ID and reset keys come from the persistent endpoint
/// secret), and at the end every client has received exactly what its
/// sender had acked, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_clients_are_back_within_5s_of_each_kill_9_and_nothing_is_lost_or_doubled() {
    use std::sync::Arc;
    const CLIENTS: usize = 40;
    const RESTARTS: usize = 3;
    let bound = Duration::from_secs(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = start(dir.path()).await;
    let listen = node.addr.to_string();
    let user = |i: usize| format!("ring{i}");

    let (changed_tx, mut changed) = tokio::sync::watch::channel(0u64);
    let changed_tx = Arc::new(changed_tx);
    let stop = Arc::new(tokio::sync::Notify::new());
    let progress: Vec<Arc<Progress>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let mut clients = Vec::new();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, mine) in progress.iter().enumerate() {
        let config = node.config(dir.path(), &user(i), "phone");
        let client = Arc::new(Client::connect(config).await.expect("connect"));
        let to = user((i + 1) % CLIENTS);
        let (c, p, changed, stop) = (
            Arc::clone(&client),
            Arc::clone(mine),
            Arc::clone(&changed_tx),
            Arc::clone(&stop),
        );
        let me = user(i);
        senders.push(tokio::spawn(async move {
            let stopped = stop.notified();
            tokio::pin!(stopped);
            for n in 0.. {
                let id = format!("{me}-{n}");
                let send = c.send_message(OutgoingMessage {
                    to: to.clone(),
                    kind: "text".into(),
                    body: id.clone().into_bytes(),
                    client_msg_id: Some(id),
                });
                let receipt = send.await;
                receipt.unwrap_or_else(|e| panic!("{me}: send {n} failed: {e}"));
                lock(&p.acked).push((n, tokio::time::Instant::now()));
                changed.send_modify(|v| *v += 1);
                if futures_util::FutureExt::now_or_never(stopped.as_mut()).is_some() {
                    return n + 1;
                }
            }
            unreachable!("the loop ends with stop")
        }));
        let (c, p, changed) = (
            Arc::clone(&client),
            Arc::clone(mine),
            Arc::clone(&changed_tx),
        );
        receivers.push(tokio::spawn(async move {
            while let Some(m) = c.next_message().await {
                lock(&p.received).push((text(&m), tokio::time::Instant::now()));
                changed.send_modify(|v| *v += 1);
            }
        }));
        clients.push(client);
    }
    let started = tokio::time::Instant::now();
    all_back(&progress, &mut changed, started, PATIENCE).await;

    for round in 1..=RESTARTS {
        node.kill9().await;
        let restart = tokio::time::Instant::now();
        node = start_at(dir.path(), &listen, &[]).await;
        let ready = restart.elapsed();
        let back = all_back(&progress, &mut changed, restart, bound).await;
        let slowest = back.iter().max().copied().unwrap_or_default();
        let mut sorted = back.clone();
        sorted.sort();
        println!(
            "restart {round}: gateway ready after {ready:?}; all {CLIENTS} clients back and delivering after {slowest:?} (median {:?})",
            sorted[sorted.len() / 2]
        );
        assert!(slowest < bound, "restart {round}: {slowest:?}");
    }

    // Let every sender finish its send in flight, then everything arrives.
    stop.notify_waiters();
    let mut sent = Vec::new();
    for sender in senders {
        sent.push(sender.await.expect("sender"));
    }
    for i in 0..CLIENTS {
        let from = (i + CLIENTS - 1) % CLIENTS;
        let want: Vec<String> = (0..sent[from])
            .map(|n| format!("{}-{n}", user(from)))
            .collect();
        let p = &progress[i];
        tokio::time::timeout(PATIENCE, async {
            while lock(&p.received).len() < want.len() {
                changed.changed().await.expect("clients running");
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} got {} of {}",
                user(i),
                lock(&p.received).len(),
                want.len()
            )
        });
        assert_quiet(&clients[i], Duration::from_millis(50)).await;
        let got: Vec<String> = lock(&p.received).iter().map(|r| r.0.clone()).collect();
        assert_eq!(
            got,
            want,
            "{}: all of {}'s acked sends, in order, once",
            user(i),
            user(from)
        );
    }
    let total: usize = sent.iter().sum();
    println!("{total} messages acked across {RESTARTS} kills, none lost or doubled");
    for client in &clients {
        client.close().await;
    }
    for receiver in receivers {
        receiver.await.expect("receiver");
    }
    node.kill9().await;
}
