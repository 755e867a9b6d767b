//! Chaos on a three-node cluster over the real services (Redis at
//! `QIM_TEST_REDIS`, Cassandra at `QIM_TEST_CQL`): the nodes run as child
//! processes, each is killed with `kill -9` once during traffic and
//! restarted at its address a few seconds later. 40 SDK clients (default
//! settings, each knowing all three nodes) send round a ring at a paced
//! rate; afterwards every client must have received its sender's messages
//! exactly once and in order, with send→deliver latency bounded, and the
//! SDK must not have resent on live connections.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_quiet, text};
use qim_gateway::auth::{TokenKey, unix_now};
use qim_gateway::tls::{DevCertSpec, write_dev_certs};
use qim_sdk::{Client, ClientConfig, ClientEvent, OutboxStatus, OutgoingMessage};
use tokio::process::Child;
use tokio::time::Instant;

const NODES: usize = 3;
/// The keyspace of the cluster tests of a sender's order.
const KEYSPACE: &str = "qim_cluster_test";
const CLIENTS: usize = 40;
/// Traffic per run; a node is killed at each of these offsets and
/// restarted `DOWN` later.
const TRAFFIC: Duration = Duration::from_secs(36);
const KILLS: [Duration; NODES] = [
    Duration::from_secs(4),
    Duration::from_secs(15),
    Duration::from_secs(26),
];
const DOWN: Duration = Duration::from_secs(3);

/// The nodes of one test's cluster and what they share.
struct Cluster {
    dir: tempfile::TempDir,
    ca_pem: Vec<u8>,
    tokens: TokenKey,
    args: Vec<String>,
    nodes: Vec<Option<Child>>,
    addrs: Vec<SocketAddr>,
    tag: String,
}

impl Cluster {
    /// `store`: the nodes' store settings beyond the shared ones.
    async fn start(store: &[&str]) -> Cluster {
        let cql = common::required_env("QIM_TEST_CQL");
        common::migrate_keyspace(&cql, KEYSPACE).await;
        let dir = tempfile::tempdir().expect("tmp");
        let certs =
            write_dev_certs(&dir.path().join("certs"), &DevCertSpec::default()).expect("certs");
        let secret = dir.path().join("token-secret");
        let (tokens, _) = TokenKey::load_or_create(&secret).expect("secret");
        let endpoint_secret = common::cluster_endpoint_secret(dir.path());
        let tag = format!("{:08x}", rand::random::<u32>());
        let toml = |p: &std::path::Path| {
            let s = p.display().to_string();
            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
        };
        let sets = [
            format!("tls.cert={}", toml(&certs.server_cert)),
            format!("tls.key={}", toml(&certs.server_key)),
            format!("auth.secret_file={}", toml(&secret)),
            format!("quic.endpoint_secret_file={}", toml(&endpoint_secret)),
            format!("store.keyspace=\"{KEYSPACE}\""),
            format!("store.key_prefix=\"qimchaos:{tag}:\""),
            format!("cluster.key_prefix=\"qimchaos-{tag}\""),
            "cluster.node_ttl_ms=1500".to_owned(),
            "cluster.route_ttl_ms=3000".to_owned(),
        ];
        let sets: Vec<String> = sets
            .into_iter()
            .chain(store.iter().map(|s| (*s).to_owned()))
            .collect();
        let mut args = vec![
            "--redis".to_owned(),
            common::required_env("QIM_TEST_REDIS"),
            "--cql".to_owned(),
            cql,
        ];
        for s in sets {
            args.push("--set".to_owned());
            args.push(s);
        }
        let mut cluster = Cluster {
            ca_pem: std::fs::read(&certs.ca_cert).expect("ca"),
            dir,
            tokens,
            args,
            nodes: Vec::new(),
            addrs: Vec::new(),
            tag,
        };
        for i in 0..NODES {
            let (child, addr) = cluster.spawn(i, "127.0.0.1:0").await;
            cluster.nodes.push(Some(child));
            cluster.addrs.push(addr);
        }
        cluster
    }

    /// Node `i` at `listen`, with its own data directory.
    async fn spawn(&self, i: usize, listen: &str) -> (Child, SocketAddr) {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_qim-gateway"))
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node{i}")))
            .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            .args(&self.args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn qim-gateway");
        let addr = common::ready_addr(&mut child).await;
        (child, addr)
    }

    async fn kill9(&mut self, i: usize) {
        let mut child = self.nodes[i].take().expect("running");
        child.start_kill().expect("SIGKILL");
        let status = child.wait().await.expect("wait");
        assert!(!status.success(), "killed: {status:?}");
    }

    async fn restart(&mut self, i: usize) {
        let (child, _) = self.spawn(i, &self.addrs[i].to_string()).await;
        self.nodes[i] = Some(child);
    }

    fn user(&self, i: usize) -> String {
        format!("chaos{i}-{}", self.tag)
    }

    /// SDK defaults, with node `i % 3` first and the others as fallbacks.
    fn client_config(&self, i: usize) -> ClientConfig {
        let token = self
            .tokens
            .mint(&self.user(i), unix_now() + 3600)
            .expect("mint");
        let first = i % NODES;
        let mut config = ClientConfig::new(
            self.addrs[first].to_string(),
            token,
            "phone",
            self.ca_pem.clone(),
        );
        config.fallback_servers = (1..NODES)
            .map(|k| self.addrs[(first + k) % NODES].to_string())
            .collect();
        // Back to a restarted node within seconds (the run is short): the
        // first try 1–2 s after the fail-over, a failed one (the node still
        // starting) doubling that, so the return falls inside the 10 s
        // after the kill, as the node's restart does, rather than in the
        // calm time the p99 bound is about (the default, a minute, puts it
        // in calm time on a real cluster; its cost is one held send of at
        // most 2 s per client, see the SDK's `quiet_moment`).
        config.home_return_after = Duration::from_secs(1);
        config
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one run saw, by message id (`<sender>-<n>`).
#[derive(Default)]
struct Seen {
    /// When each message was queued.
    queued: HashMap<String, Instant>,
    /// Acked messages, and when.
    acked: HashMap<String, Instant>,
    /// Per receiver: (message id, when it arrived), in arrival order.
    received: Vec<Vec<(String, Instant)>>,
    /// Per client: when it lost a connection, and when its sends were
    /// acked (both in order).
    lost: Vec<Vec<Instant>>,
    acks_at: Vec<Vec<Instant>>,
    /// Per client: when a session started (in order).
    connected: Vec<Vec<Instant>>,
}

/// Fail-over of one kill at `kill`: for every client that lost its
/// connection within 10 s after it, the time from the kill to its first
/// ack after that loss (it is on another node and its sends are stored
/// again). The longest, split into its phases, and how many clients
/// failed over.
fn fail_over(seen: &Seen, kill: Instant) -> (FailOver, usize) {
    let mut longest = FailOver::default();
    let mut moved = 0;
    for ((lost, acks), connected) in seen.lost.iter().zip(&seen.acks_at).zip(&seen.connected) {
        let Some(&lost_at) = lost
            .iter()
            .find(|&&t| t >= kill && t < kill + Duration::from_secs(10))
        else {
            continue;
        };
        moved += 1;
        let acked = acks.iter().find(|&&t| t > lost_at);
        let back = acked.map_or(Duration::MAX, |t| t.saturating_duration_since(kill));
        if back >= longest.total {
            let session = connected.iter().find(|&&t| t > lost_at);
            longest = FailOver {
                total: back,
                detect: lost_at.saturating_duration_since(kill),
                reconnect: session.map(|s| s.saturating_duration_since(lost_at)),
                first_ack: session
                    .zip(acked)
                    .map(|(s, a)| a.saturating_duration_since(*s)),
            };
        }
    }
    (longest, moved)
}

/// One client's fail-over after a kill, by phase.
#[derive(Clone, Copy, Debug, Default)]
struct FailOver {
    /// Kill to its first ack on another node.
    total: Duration,
    /// Kill to the client's `ConnectionLost`.
    detect: Duration,
    /// Then to its next session (`Connected`).
    reconnect: Option<Duration>,
    /// Then to its first ack.
    first_ack: Option<Duration>,
}

impl std::fmt::Display for FailOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_millis().to_string());
        write!(
            f,
            "{:.1?} (detect {} ms, reconnect {} ms, first ack {} ms)",
            self.total,
            self.detect.as_millis(),
            ms(self.reconnect),
            ms(self.first_ack)
        )
    }
}

/// The `q`-quantile of `v` (sorted in place).
fn quantile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let at = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[at]
}

/// One run: `rate` messages a second from each client, each node killed
/// once; checks exactly once and in order per sender→recipient pair and
/// that sends were written again only on new connections; returns the
/// send→deliver p99s and the fail-over of each kill ([`Outcome`]).
async fn run(rate: u32, label: &str, store: &[&str]) -> Outcome {
    let mut cluster = Cluster::start(store).await;
    let seen = Arc::new(Mutex::new(Seen {
        received: vec![Vec::new(); CLIENTS],
        lost: vec![Vec::new(); CLIENTS],
        acks_at: vec![Vec::new(); CLIENTS],
        connected: vec![Vec::new(); CLIENTS],
        ..Seen::default()
    }));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let client = Arc::new(
            Client::connect(cluster.client_config(i))
                .await
                .expect("connect"),
        );
        let (c, s) = (Arc::clone(&client), Arc::clone(&seen));
        tasks.push(tokio::spawn(async move {
            while let Some(m) = c.next_message().await {
                lock(&s).received[i].push((text(&m), Instant::now()));
            }
        }));
        let (c, s) = (Arc::clone(&client), Arc::clone(&seen));
        let mut events = client.events();
        tasks.push(tokio::spawn(async move {
            let _keep = c;
            while let Some(event) = events.next().await {
                match event {
                    ClientEvent::Outbox {
                        client_msg_id,
                        status,
                    } => match status {
                        OutboxStatus::Sent(_) => {
                            let now = Instant::now();
                            let mut s = lock(&s);
                            s.acked.insert(client_msg_id, now);
                            s.acks_at[i].push(now);
                        }
                        OutboxStatus::Failed(e) => panic!("{client_msg_id} failed: {e}"),
                        _ => {}
                    },
                    ClientEvent::ConnectionLost(_) => lock(&s).lost[i].push(Instant::now()),
                    ClientEvent::Connected(_) => lock(&s).connected[i].push(Instant::now()),
                    _ => {}
                }
            }
        }));
        clients.push(client);
    }
    let started = Instant::now();
    let mut senders = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let (c, s, mut stop) = (Arc::clone(client), Arc::clone(&seen), stop.clone());
        let (me, to) = (cluster.user(i), cluster.user((i + 1) % CLIENTS));
        let every = Duration::from_secs(1) / rate;
        senders.push(tokio::spawn(async move {
            // Spread the clients over the period.
            let mut next = started + every * u32::try_from(i).unwrap_or(0) / CLIENTS as u32;
            for n in 0usize.. {
                // Why a sleep: pacing the load is the subject.
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    _ = stop.changed() => return n,
                }
                next += every;
                let id = format!("{me}-{n}");
                lock(&s).queued.insert(id.clone(), Instant::now());
                c.enqueue(OutgoingMessage {
                    to: to.clone(),
                    kind: "text".into(),
                    body: id.clone().into_bytes(),
                    client_msg_id: Some(id),
                })
                .expect("queued");
            }
            unreachable!("ends with stop")
        }));
    }

    let mut kills = Vec::new();
    for (node, at) in KILLS.iter().enumerate() {
        tokio::time::sleep_until(started + *at).await;
        kills.push(Instant::now());
        cluster.kill9(node).await;
        // Why a sleep: the node stays down for a while, as a crashed
        // machine would; its absence is the subject.
        tokio::time::sleep(DOWN).await;
        cluster.restart(node).await;
    }
    tokio::time::sleep_until(started + TRAFFIC).await;
    stop_tx.send_replace(true);
    let mut sent = Vec::new();
    for s in senders {
        sent.push(s.await.expect("sender"));
    }
    let total: usize = sent.iter().sum();

    // Everything acked and delivered. Above the sustained rate the cluster
    // falls behind and catches up after the traffic: the wait lasts while
    // acks and deliveries keep coming, and fails after STALL without one
    // (or after five minutes in all).
    let progress = || {
        let s = lock(&seen);
        let delivered: usize = s.received.iter().map(Vec::len).sum();
        (s.acked.len(), delivered)
    };
    let (mut last, mut moved, began) = (progress(), Instant::now(), Instant::now());
    while last.0 < total || last.1 < total {
        assert!(
            moved.elapsed() < STALL && began.elapsed() < Duration::from_secs(300),
            "{label}: acked {} and delivered {} of {total}, nothing for {:?}",
            last.0,
            last.1,
            moved.elapsed()
        );
        // Why a sleep: the counts are other tasks' event handlers' state;
        // this polls them (as common::poll_until does) without a deadline
        // of its own while they move.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = progress();
        if now != last {
            (last, moved) = (now, Instant::now());
        }
    }
    eprintln!("{label}: drained {:?} after the traffic", began.elapsed());
    for c in &clients {
        assert_quiet(c, Duration::from_millis(100)).await;
    }
    let (mut all, mut calm, mut ack, fail_overs) = {
        let s = lock(&seen);
        let mut all = Vec::new();
        let mut calm = Vec::new();
        let mut slow_calm = std::collections::BTreeMap::new();
        for i in 0..CLIENTS {
            let from = (i + CLIENTS - 1) % CLIENTS;
            let want: Vec<String> = (0..sent[from])
                .map(|n| format!("{}-{n}", cluster.user(from)))
                .collect();
            let got: Vec<&String> = s.received[i].iter().map(|r| &r.0).collect();
            assert_eq!(
                got,
                want.iter().collect::<Vec<_>>(),
                "{label}: {} got {}'s messages once each, in order",
                cluster.user(i),
                cluster.user(from)
            );
            for (id, at) in &s.received[i] {
                let queued = s.queued[id];
                let latency = at.saturating_duration_since(queued);
                all.push(latency);
                // Calm: the whole send→deliver span is outside the 10 s
                // after every kill.
                if !kills
                    .iter()
                    .any(|k| *at >= *k && queued < *k + Duration::from_secs(10))
                {
                    calm.push(latency);
                    if latency > Duration::from_millis(500) {
                        let second = queued.saturating_duration_since(started).as_secs();
                        *slow_calm.entry(second).or_insert(0usize) += 1;
                    }
                }
            }
        }
        let ack = s
            .acked
            .iter()
            .filter_map(|(id, at)| s.queued.get(id).map(|q| at.saturating_duration_since(*q)))
            .collect::<Vec<_>>();
        let fail_overs: Vec<(FailOver, usize)> = kills.iter().map(|k| fail_over(&s, *k)).collect();
        if !slow_calm.is_empty() {
            eprintln!(
                "{label}: {} calm deliveries, over 500 ms by second sent {slow_calm:?}",
                calm.len()
            );
        }
        (all, calm, ack, fail_overs)
    };
    let resent: u64 = clients.iter().map(|c| c.stats().sends_resent).sum();
    let sessions: u64 = clients.iter().map(|c| c.stats().sessions).sum();
    let per_message = resent as f64 / total as f64;
    let reconnects = sessions.saturating_sub(CLIENTS as u64).max(1);
    let (p50, p99, max) = (
        quantile(&mut all, 0.5),
        quantile(&mut all, 0.99),
        quantile(&mut all, 1.0),
    );
    let calm_p99 = quantile(&mut calm, 0.99);
    println!(
        "{label}: {total} messages from {CLIENTS} clients at {rate}/s each over {TRAFFIC:?}, \
         {NODES} kill -9s: none lost, doubled or reordered; send→deliver p50 {p50:?} p99 {p99:?} \
         max {max:?}; p99 outside the 10 s after each kill {calm_p99:?}; ack p50 {:?} p99 {:?}; \
         {resent} resends ({per_message:.4} per message), all on {reconnects} reconnects \
         ({:.1} each); fail-over (kill to the first ack on another node, slowest client) {}",
        quantile(&mut ack, 0.5),
        quantile(&mut ack, 0.99),
        resent as f64 / reconnects as f64,
        fail_overs
            .iter()
            .map(|(d, n)| format!("{d} ({n} clients)"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    // A send is written again only on a new connection: at most what a
    // client queued while it failed over (its rate times a few seconds)
    // per reconnect, never a storm on live connections.
    let bound = u64::from(rate) * 6 * reconnects;
    assert!(
        resent <= bound,
        "{label}: {resent} resends over {reconnects} reconnects (bound {bound})"
    );
    for c in &clients {
        c.close().await;
    }
    for t in tasks {
        t.abort();
    }
    for i in 0..NODES {
        if cluster.nodes[i].is_some() {
            cluster.kill9(i).await;
        }
    }
    Outcome {
        p99,
        calm_p99,
        fail_overs,
    }
}

/// What a run measured that the test bounds.
struct Outcome {
    /// Send→deliver p99 over the run, and outside the 10 s after each kill.
    p99: Duration,
    calm_p99: Duration,
    /// Per kill: [`fail_over`].
    fail_overs: Vec<(FailOver, usize)>,
}

/// At a rate the cluster sustains: exactly once and in order, send→deliver
/// p99 at most 10 s over the run and 1 s outside the 10 s after each kill,
/// and no resends beyond the reconnects the kills cause. Then at twice that
/// rate: acks slow down, but order and exactly-once hold and nothing is
/// resent on a live connection. (One test: the two runs must not share the
/// machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_clients_through_a_kill_9_of_each_node_lose_double_and_reorder_nothing() {
    // Seqs a dead node handed out and never wrote are settled after the
    // shortest window the store allows: the fill window of a 2 s store
    // timeout (6 s).
    let Outcome {
        p99,
        calm_p99,
        fail_overs,
    } = run(
        SUSTAINED,
        "sustained",
        &["store.timeout_ms=2000", "store.gap_settle_ms=6000"],
    )
    .await;
    // Clients of a killed node are on another node, their sends stored,
    // within 5 s of the kill: about 1.75 s to notice (the SDK's
    // `quiet_probe_after` and `probe_timeout`), under 1 s to log in on
    // another node, the rest to store what was queued meanwhile (printed
    // per kill for the slowest client). A restarted node took its clients
    // back, so each kill moves about a third of them (not all 40 by the
    // last).
    for (i, (slowest, clients)) in fail_overs.iter().enumerate() {
        assert!(*clients > 0, "kill {i}: no client lost its connection");
        assert!(
            *clients < CLIENTS * 2 / 3,
            "kill {i}: {clients} clients were on the killed node"
        );
        assert!(
            slowest.total <= Duration::from_secs(5),
            "kill {i}: a client took {slowest} to fail over"
        );
    }
    // A node killed between handing out a seq and writing it leaves a
    // hole; the recipient's later messages wait until it settles (6 to
    // 7.5 s here, the SDK asking every second), not `gap_skip_after`.
    assert!(p99 <= Duration::from_secs(10), "p99 {p99:?}");
    assert!(calm_p99 <= Duration::from_secs(1), "calm p99 {calm_p99:?}");
    // Overload on the default store settings (3 s timeout, 9 s fill
    // window, 10 s settle): with a 6 s fill window, resends held back by
    // seconds-slow acks came after it, found the sender's later messages
    // stored and were refused SEND_SUPERSEDED (final).
    run(SUSTAINED * 2, "overload", &[]).await;
}

/// Messages a second per client the cluster sustains on this machine
/// (debug build, shared with other work): at 8 (320/s in all) deliveries
/// keep up; at 16 they fall tens of seconds behind while acks slow down.
const SUSTAINED: u32 = 8;

/// How long the drain after the traffic may see no ack and no delivery.
const STALL: Duration = Duration::from_secs(90);
