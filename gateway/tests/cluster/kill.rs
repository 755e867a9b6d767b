//! A node killed with `kill -9` while its users chat.

use super::*;

/// A node as a child process, for `kill -9`.
struct Child {
    child: tokio::process::Child,
    addr: SocketAddr,
}

async fn spawn_node(shared: &Shared, name: &str) -> Child {
    let config = shared.config(name);
    let toml = |v: &str| toml_string(v);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_qim-gateway"));
    cmd.arg("--data-dir")
        .arg(&config.server.data_dir)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--redis", &redis_url(), "--cql", &cql_nodes()])
        .arg("--set")
        .arg(format!(
            "tls.cert={}",
            toml(&shared.cert.display().to_string())
        ))
        .arg("--set")
        .arg(format!(
            "tls.key={}",
            toml(&shared.key.display().to_string())
        ))
        .arg("--set")
        .arg(format!(
            "auth.secret_file={}",
            toml(&shared.secret.display().to_string())
        ))
        .arg("--set")
        .arg(format!(
            "quic.endpoint_secret_file={}",
            toml(&shared.endpoint_secret.display().to_string())
        ))
        .arg("--set")
        .arg(format!("store.keyspace={}", toml(KEYSPACE)))
        .arg("--set")
        .arg(format!("store.key_prefix={}", toml(&shared.store_prefix)))
        .arg("--set")
        .arg(format!("cluster.key_prefix={}", toml(&shared.prefix)))
        .args([
            "--set",
            "cluster.node_ttl_ms=1500",
            "--set",
            "cluster.route_ttl_ms=3000",
        ])
        .args([
            "--set",
            "heartbeat.interval_ms=1000",
            "--set",
            "heartbeat.min_interval_ms=500",
        ])
        .args(["--set", "delivery.retransmit_initial_ms=1000"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn qim-gateway");
    let addr = common::ready_addr(&mut child).await;
    Child { child, addr }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_recipients_node_loses_nothing_and_the_dead_node_expires() {
    let shared = Shared::new();
    let a = Node::start(&shared, "a", |_| {}).await;
    let c = Node::start(&shared, "c", |_| {}).await;
    let mut b = spawn_node(&shared, "b").await;
    wait_nodes(a.api, "three nodes", |n| n.len() == 3).await;
    let b_id = live_nodes(a.api)
        .await
        .into_iter()
        .find(|n| n.addr == b.addr.to_string())
        .expect("b registered")
        .id;

    // bob is on B, and knows C as a fallback.
    let bob = shared.client(&[b.addr, c.addr], "bob", "bob-phone").await;
    let alice = Arc::new(shared.client(&[a.addr], "alice", "alice-phone").await);
    let bob_id = shared.user("bob");
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let sender = {
        let alice = Arc::clone(&alice);
        let bob_id = bob_id.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let body = format!("alice-bob-{i}");
                match alice
                    .send_message(to(&bob_id, body.clone(), body.clone()))
                    .await
                {
                    Ok(receipt) => {
                        if acked_tx.send((receipt, body)).is_err() {
                            return;
                        }
                    }
                    Err(e) => panic!("send {i} failed: {e}"),
                }
                if i == 400 {
                    return;
                }
            }
        })
    };
    // Messages flow to bob on B; kill B in the middle.
    let mut got = Vec::new();
    while got.len() < 100 {
        got.push(
            tokio::time::timeout(PATIENCE, bob.next_message())
                .await
                .expect("messages flow")
                .expect("open"),
        );
    }
    b.child.start_kill().expect("SIGKILL");
    b.child.wait().await.expect("wait");

    sender.await.expect("sender");
    let mut acked = Vec::new();
    while let Ok(a) = acked_rx.try_recv() {
        acked.push(a);
    }
    assert_eq!(
        acked.len(),
        401,
        "every send was acked (A and the store stayed up)"
    );
    let highest = acked.iter().map(|(r, _)| r.seq).max().expect("acked") as usize;
    let rest = take(&bob, 401 - got.len()).await;
    got.extend(rest);
    if highest != 401 {
        let bodies: Vec<(u64, String)> = got.iter().map(|m| (m.seq, text(m))).collect();
        let receipts: Vec<(u64, &String)> = acked.iter().map(|(r, b)| (r.seq, b)).collect();
        panic!("receipts {receipts:?}\n got {bodies:?}");
    }
    check_inbox("bob-phone", &got, 401);
    for (receipt, body) in &acked {
        let m = &got[receipt.seq as usize - 1];
        assert_eq!((&m.msg_id, text(m)), (&receipt.msg_id, body.clone()));
    }
    assert_quiet(&bob, Duration::from_millis(300)).await;
    assert!(bob.stats().sessions >= 2, "bob reconnected");

    // The dead node leaves the registry and the route endpoint when its
    // TTL passes; its routes lapse too.
    wait_nodes(a.api, "the killed node expired", |n| {
        n.len() == 2 && n.iter().all(|n| n.id != b_id)
    })
    .await;
    for i in 0..40 {
        assert_ne!(route(a.admin, &format!("u{i}")).await, b_id);
    }
    let presence = common::http_request(
        c.api,
        "GET",
        &format!("/v1/presence?user={bob_id}"),
        Some(common::READ_SECRET),
    )
    .await
    .body;
    assert!(presence.contains("\"online\":true"), "{presence}");
    let redis = qim_storage::redis::Redis::connect(&{
        let mut r = qim_storage::redis::RedisConfig::new(redis_url());
        r.prefix = shared.prefix.clone();
        r
    })
    .await
    .expect("redis");
    let routes = common::poll_until("routes on the dead node lapse", || async {
        let routes = redis
            .routes(&bob_id, qim_proto::now_ms())
            .await
            .expect("routes");
        routes.iter().all(|r| r.node != b_id).then_some(routes)
    })
    .await;
    assert_eq!(routes.len(), 1, "bob's one device, now on C: {routes:?}");
    redis.quit().await;
    alice.close().await;
    bob.close().await;
    a.stop().await;
    c.stop().await;
}
