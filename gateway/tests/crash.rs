//! Durability: the gateway binary runs as a child process, is killed with
//! SIGKILL, and restarted on the same data directory. Every acknowledged
//! message must come back, once, in order.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Backend, PATIENCE, assert_quiet, join_in_order, take, text};
use qim_gateway::auth::{TokenKey, unix_now};
use qim_sdk::{Client, ClientConfig, OutgoingMessage, SendReceipt};
use tokio::io::{AsyncBufReadExt as _, BufReader};
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
async fn cluster_args() -> Vec<String> {
    let cql = common::required_env("QIM_TEST_CQL");
    common::migrate_test_keyspace(&cql).await;
    [
        format!("store.redis={}", common::required_env("QIM_TEST_REDIS")),
        format!("store.cql={cql}"),
        format!("store.keyspace={}", common::CLUSTER_KEYSPACE),
        format!("store.key_prefix={}:", common::unique("qimtest:")),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_owned(), s])
    .collect()
}

async fn start_on(dir: &Path, extra: &[String]) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qim-gateway"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qim-gateway");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(rest) = line.strip_prefix("READY quic=") {
                let quic = rest.split_whitespace().next().expect("address");
                return quic.parse::<SocketAddr>().expect("socket address");
            }
        }
        panic!("gateway exited before READY");
    })
    .await
    .expect("gateway ready in time");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
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
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start(dir.path()).await;
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

    let node = start(dir.path()).await;
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
        Backend::Cluster => cluster_args().await,
    };
    // Users unique per run: the cluster keyspace is shared.
    let (alice_id, bob_id) = (common::unique("alice"), common::unique("bob"));
    let node = start_on(dir.path(), &extra).await;
    let alice = Client::connect(node.config(dir.path(), &alice_id, "alice-phone"))
        .await
        .expect("connect");
    let now = qim_proto::now_ms();
    // Overdue by the time the gateway is back: delivered at start-up.
    let early_at = now + 200;
    alice
        .schedule(Peer::User(bob_id.clone()), "early".into(), early_at)
        .await
        .expect("schedule");
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
