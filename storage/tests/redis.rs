//! The Redis cluster-state backend against real Redis: the shared server
//! (`QIM_TEST_REDIS`, default `redis://127.0.0.1:6390`, under a key prefix
//! of its own per test) and a three-master Redis Cluster this test starts
//! from `redis-server` on free ports.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use qim_proto::v1;
use qim_storage::StoredMessage;
use qim_storage::redis::queue::{Handoff, QueueConfig};
use qim_storage::redis::routes::{RouteRemoval, RouteSet};
use qim_storage::redis::signals::Signal;
use qim_storage::redis::{Redis, RedisConfig, nodes::NodeInfo};

fn shared_url() -> String {
    std::env::var("QIM_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6390".to_owned())
}

fn prefix(test: &str) -> String {
    format!("t{:08x}-{test}", rand::random::<u32>())
}

async fn connect(url: &str, test: &str) -> Redis {
    let mut config = RedisConfig::new(url);
    config.prefix = prefix(test);
    Redis::connect(&config).await.expect("redis reachable")
}

fn message(inbox: &str, seq: u64) -> StoredMessage {
    StoredMessage {
        inbox: inbox.into(),
        seq,
        message: v1::Message {
            msg_id: format!("m{seq}"),
            body: Bytes::from(format!("body {seq}")),
            ..Default::default()
        },
    }
}

fn node(id: &str, connections: u64, now: i64) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        addr: format!("{id}.example:4433"),
        route_addr: format!("{id}.example:9090"),
        tcp_addr: format!("{id}.example:4433"),
        connections,
        online_users: connections,
        draining: false,
        started_ms: now,
        updated_ms: now,
    }
}

/// Routes, presence, registry and queues, on whatever `redis` is.
async fn exercise(redis: &Redis) {
    // Real time, since Redis expires the keys in real time too; TTLs far
    // above the test's duration.
    let now = qim_proto::now_ms();
    const T: i64 = 100_000;
    // Routes: a second login of a device returns the route it replaced.
    // The first device is "first" (bob came online); later ones are not.
    assert_eq!(
        redis
            .set_route("bob", "phone", "a", 1, "mobile", now, T)
            .await
            .expect("set"),
        RouteSet {
            replaced: None,
            first: true,
            others: Vec::new(),
        }
    );
    let laptop = redis
        .set_route("bob", "laptop", "b", 7, "desktop", now, T)
        .await
        .expect("set");
    assert!(!laptop.first && laptop.replaced.is_none());
    let again = redis
        .set_route("bob", "phone", "c", 2, "mobile", now, T)
        .await
        .expect("set");
    assert!(!again.first);
    // The other devices' live routes, with their class (for policies).
    let others: Vec<(&str, &str, &str)> = again
        .others
        .iter()
        .map(|r| (r.device.as_str(), r.node.as_str(), r.class.as_str()))
        .collect();
    assert_eq!(others, [("laptop", "b", "desktop")]);
    let replaced = again.replaced.expect("replaced a live route");
    assert_eq!((replaced.node.as_str(), replaced.session), ("a", 1));
    let routes = redis.routes("bob", now).await.expect("routes");
    let nodes: Vec<(&str, &str)> = routes
        .iter()
        .map(|r| (r.device.as_str(), r.node.as_str()))
        .collect();
    assert_eq!(nodes, [("laptop", "b"), ("phone", "c")]);

    // The replaced session neither refreshes nor removes its successor.
    let stale = vec![("bob".to_owned(), "phone".to_owned(), 1)];
    assert_eq!(
        redis
            .refresh_routes("a", &stale, now, T)
            .await
            .expect("refresh"),
        0
    );
    assert_eq!(
        redis
            .remove_route("bob", "phone", "a", 1, now)
            .await
            .expect("remove"),
        RouteRemoval::NotMine
    );
    assert_eq!(redis.routes("bob", now).await.expect("routes").len(), 2);

    // Of two devices, the first to leave is Removed, the second Last.
    for (device, session) in [("phone", 1), ("laptop", 2)] {
        redis
            .set_route("dora", device, "a", session, "", now, T)
            .await
            .expect("set");
    }
    let leaves = [
        redis.remove_route("dora", "phone", "a", 1, now).await,
        redis.remove_route("dora", "laptop", "a", 2, now).await,
    ];
    assert_eq!(
        leaves.map(|r| r.expect("remove")),
        [RouteRemoval::Removed, RouteRemoval::Last]
    );

    // Signals: a subscriber hears what is published, with its origin.
    let mut signals = redis.subscribe_signals().await.expect("subscribe");
    let signal = Signal::Presence(v1::PresenceStatus {
        user: "dora".into(),
        online: false,
        last_seen_ms: now,
    });
    redis
        .publish_signal("node-a", &signal)
        .await
        .expect("publish");
    let (origin, heard) = tokio::time::timeout(Duration::from_secs(5), signals.next())
        .await
        .expect("the signal arrives")
        .expect("subscription open");
    assert_eq!((origin.as_str(), heard), ("node-a", signal));
    signals.quit().await;

    // Refresh extends the owner's route past the old deadline.
    let mine = vec![("bob".to_owned(), "phone".to_owned(), 2)];
    assert_eq!(
        redis
            .refresh_routes("c", &mine, now + T / 2, T)
            .await
            .expect("refresh"),
        1
    );
    let later = redis.routes("bob", now + T + T / 5).await.expect("routes");
    assert_eq!(
        later
            .iter()
            .map(|r| (r.device.as_str(), r.class.as_str()))
            .collect::<Vec<_>>(),
        [("phone", "mobile")],
        "the laptop route expired, the refreshed phone route lives and keeps its class"
    );
    let presence = redis
        .presence("bob", now + T + T / 5)
        .await
        .expect("presence");
    assert!(presence.online());
    assert_eq!(presence.last_seen_ms, None);

    // The last session ending records last seen.
    assert_eq!(
        redis
            .remove_route("bob", "phone", "c", 2, now + T + T / 4)
            .await
            .expect("remove"),
        RouteRemoval::Last
    );
    let presence = redis
        .presence("bob", now + T + T / 4)
        .await
        .expect("presence");
    assert!(!presence.online());
    assert_eq!(presence.last_seen_ms, Some(now + T + T / 4));
    assert!(
        redis
            .routes_of(&["bob", "nobody"], now)
            .await
            .expect("routes")
            .iter()
            .all(|r| r.is_empty() || r.len() == 1)
    );

    // Registry: nodes live until their deadline, and leave on deregister.
    redis
        .heartbeat(&node("a", 5, now), now, 1_000)
        .await
        .expect("beat");
    redis
        .heartbeat(&node("b", 3, now), now, 2_000)
        .await
        .expect("beat");
    redis
        .heartbeat(&node("c", 1, now), now, 2_000)
        .await
        .expect("beat");
    let live: Vec<String> = redis
        .live_nodes(now)
        .await
        .expect("live")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(live, ["a", "b", "c"]);
    assert_eq!(
        redis.live_nodes(now).await.expect("live")[0],
        node("a", 5, now)
    );
    let live: Vec<String> = redis
        .live_nodes(now + 1_000)
        .await
        .expect("live")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(live, ["b", "c"], "a missed its heartbeat");
    redis.deregister("b").await.expect("deregister");
    let live: Vec<String> = redis
        .live_nodes(now + 1_000)
        .await
        .expect("live")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(live, ["c"]);

    // Queues: at-least-once; unacknowledged entries come back to a new
    // reader of the same node; acknowledged ones do not.
    let config = QueueConfig {
        max_len: 1_000,
        ttl_ms: 60_000,
    };
    let handoffs = vec![
        (
            "x".to_owned(),
            Handoff::Message(Box::new(message("bob", 1))),
        ),
        (
            "y".to_owned(),
            Handoff::Message(Box::new(message("carol", 1))),
        ),
        (
            "x".to_owned(),
            Handoff::Message(Box::new(message("bob", 2))),
        ),
        (
            "x".to_owned(),
            Handoff::Kick {
                user: "bob".into(),
                device: "phone".into(),
                session: 9,
                policy: false,
            },
        ),
    ];
    redis.push(&handoffs, config).await.expect("push");
    let mut x = redis.consumer("x").await.expect("consumer");
    let got = x.next(10, 100).await.expect("read");
    let got: Vec<Handoff> = got
        .into_iter()
        .map(|e| e.handoff.expect("decodes"))
        .collect();
    assert_eq!(
        got,
        [
            handoffs[0].1.clone(),
            handoffs[2].1.clone(),
            handoffs[3].1.clone()
        ]
    );
    x.quit().await;
    let mut x = redis.consumer("x").await.expect("consumer");
    let again = x.next(10, 100).await.expect("read");
    assert_eq!(again.len(), 3, "unacknowledged entries are read again");
    let ids: Vec<String> = again.iter().map(|e| e.id.clone()).collect();
    x.ack(&ids).await.expect("ack");
    x.quit().await;
    let mut x = redis.consumer("x").await.expect("consumer");
    assert!(
        x.next(10, 100).await.expect("read").is_empty(),
        "acknowledged entries are gone"
    );
    redis
        .push(
            &[(
                "x".to_owned(),
                Handoff::Message(Box::new(message("bob", 3))),
            )],
            config,
        )
        .await
        .expect("push");
    let fresh = x.next(10, 1_000).await.expect("read");
    assert_eq!(fresh.len(), 1);
    assert_eq!(
        fresh[0].handoff.as_ref().expect("decodes"),
        &Handoff::Message(Box::new(message("bob", 3)))
    );
    x.quit().await;
    let mut y = redis.consumer("y").await.expect("consumer");
    assert_eq!(y.next(10, 100).await.expect("read").len(), 1);
    y.quit().await;

    // Bounded: the queue is trimmed near max_len.
    let small = QueueConfig {
        max_len: 200,
        ttl_ms: 60_000,
    };
    let many: Vec<(String, Handoff)> = (1..=2_000)
        .map(|seq| {
            (
                "z".to_owned(),
                Handoff::Message(Box::new(message("dave", seq))),
            )
        })
        .collect();
    redis.push(&many, small).await.expect("push");
    let mut z = redis.consumer("z").await.expect("consumer");
    let kept = z.next(10_000, 100).await.expect("read");
    assert!(
        (200..1_000).contains(&kept.len()),
        "trimmed to about 200 entries, kept {}",
        kept.len()
    );
    let last = kept.last().expect("some kept");
    assert_eq!(
        last.handoff.as_ref().expect("decodes"),
        &Handoff::Message(Box::new(message("dave", 2_000))),
        "the newest are kept"
    );
    z.quit().await;
    redis.delete_queue("x").await.expect("delete");
    redis.delete_queue("y").await.expect("delete");
    redis.delete_queue("z").await.expect("delete");
}

#[tokio::test]
async fn single_redis() {
    let redis = connect(&shared_url(), "single").await;
    exercise(&redis).await;
    redis.quit().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_a_typed_error() {
    let redis = connect(&shared_url(), "bad").await;
    for bad in ["", "has space", "{tag}", "a|b", "x:y"] {
        assert!(
            matches!(
                redis
                    .set_route(bad, "phone", "a", 1, "mobile", 0, 1_000)
                    .await,
                Err(qim_storage::StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    let mut config = RedisConfig::new("redis://127.0.0.1:1");
    config.command_timeout = Duration::from_millis(300);
    assert!(matches!(
        Redis::connect(&config).await,
        Err(qim_storage::StoreError::Unavailable(_))
    ));
    redis.quit().await;
}

/// Three `redis-server --cluster-enabled yes` processes joined with
/// `redis-cli --cluster create`, removed on drop.
struct LocalCluster {
    servers: Vec<Child>,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
}

impl LocalCluster {
    fn start() -> LocalCluster {
        // A cluster node also listens on port + 10000 (its bus); pick
        // ports whose bus port is free too.
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = listener.local_addr().expect("addr").port();
            if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                ports.push(port);
            }
        }
        let dir = tempfile::tempdir().expect("tmp");
        let servers = ports
            .iter()
            .map(|port| {
                let node_dir = dir.path().join(port.to_string());
                std::fs::create_dir_all(&node_dir).expect("dir");
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .arg("--dir")
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server (apt-get install redis-server)")
            })
            .collect();
        let cluster = LocalCluster {
            servers,
            dir,
            ports,
        };
        for port in &cluster.ports {
            wait_for_port(*port);
        }
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(status.success(), "redis-cli --cluster create");
        cluster
    }

    fn url(&self) -> String {
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.ports[0], self.ports[1], self.ports[2]
        )
    }

    /// Waits until every node reports `cluster_state:ok`.
    async fn ready(&self) {
        for port in &self.ports {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let out = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "cluster state ok");
                // Why a sleep: redis-cli's answer is polled; the cluster
                // raises no event this test could wait on.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn wait_for_port(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis on {port}");
        // Why a sleep: a port that is not open yet raises no event; it is
        // polled until the deadline.
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = &self.dir;
    }
}

#[tokio::test]
async fn redis_cluster_of_three_masters() {
    let cluster = LocalCluster::start();
    cluster.ready().await;
    let redis = connect(&cluster.url(), "cluster").await;
    exercise(&redis).await;
    // Users' keys really spread over the masters: the scripts ran in many
    // slots, each touching one.
    let mut keys_per_node = Vec::new();
    for port in &cluster.ports {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "dbsize"])
            .output()
            .expect("redis-cli");
        keys_per_node.push(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0),
        );
    }
    let mut many = Vec::new();
    for i in 0..60 {
        many.push(format!("user{i}"));
    }
    for user in &many {
        redis
            .set_route(user, "phone", "a", 1, "mobile", 0, 60_000)
            .await
            .expect("set");
    }
    let mut spread = 0;
    for port in &cluster.ports {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "dbsize"])
            .output()
            .expect("redis-cli");
        if String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
            > 0
        {
            spread += 1;
        }
    }
    assert_eq!(
        spread, 3,
        "60 users' routes land on all three masters ({keys_per_node:?} before)"
    );
    let users: Vec<&str> = many.iter().map(String::as_str).collect();
    let routes = redis
        .routes_of(&users, 1)
        .await
        .expect("routes across slots");
    assert!(routes.iter().all(|r| r.len() == 1));
    redis.quit().await;
}
