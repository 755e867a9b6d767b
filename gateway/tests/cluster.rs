//! A gateway cluster on real services: nodes share Redis (`QIM_TEST_REDIS`)
//! for routes, the registry and cross-node queues, and a CQL server
//! (`QIM_TEST_CQL`) for messages, through the cluster store. Nodes run in
//! this process on 127.0.0.1:0, or as child processes where one must die
//! by `kill -9`. Each test has its own Redis key prefixes; the binary shares
//! one CQL keyspace (creating one takes seconds).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{PATIENCE, Running, assert_quiet, http_get, stopped, take, text};
use qim_gateway::Config;
use qim_gateway::auth::{TokenKey, unix_now};
use qim_gateway::cluster::strategy::{Picker, Strategy};
use qim_gateway::tls::{DevCertSpec, write_dev_certs};
use qim_sdk::{Client, ClientConfig, ConnectionState, IncomingMessage, OutgoingMessage};
use qim_storage::Stores;
use qim_storage::cluster::{ClusterOptions, ClusterStore};
use qim_storage::cql::{self, CqlOptions};
use qim_storage::redis::nodes::NodeInfo;
use tokio::sync::OnceCell;

const KEYSPACE: &str = "qim_gateway_cluster";

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the local services \
             (`cargo xtask services up`, then QIM_TEST_REDIS=redis://127.0.0.1:6390 \
             QIM_TEST_CQL=127.0.0.1:9042; `cargo xtask test` sets both)"
        )
    })
}

fn redis_url() -> String {
    required_env("QIM_TEST_REDIS")
}

fn cql_nodes() -> String {
    required_env("QIM_TEST_CQL")
}

/// The keyspace, migrated once per test binary.
async fn keyspace() -> &'static CqlOptions {
    static MIGRATED: OnceCell<CqlOptions> = OnceCell::const_new();
    MIGRATED
        .get_or_init(|| async {
            let options = CqlOptions::new(vec![cql_nodes()], KEYSPACE);
            cql::connect_and_migrate(&options)
                .await
                .expect("migrate the test keyspace");
            options
        })
        .await
}

/// What every node of one test's cluster shares: certificates, the token
/// secret, Redis key prefixes.
struct Shared {
    dir: tempfile::TempDir,
    ca_pem: Vec<u8>,
    cert: PathBuf,
    key: PathBuf,
    secret: PathBuf,
    /// The endpoint secret every node is configured with.
    endpoint_secret: PathBuf,
    tokens: TokenKey,
    /// Prefix of the routing keys (`cluster.key_prefix`).
    prefix: String,
    /// Prefix of the store's seq counters.
    store_prefix: String,
    /// Appended to user ids: the CQL keyspace is shared by every test of
    /// this binary (and every run), inboxes must not be.
    tag: String,
}

impl Shared {
    fn new() -> Shared {
        let dir = tempfile::tempdir().expect("tmp");
        let certs =
            write_dev_certs(&dir.path().join("certs"), &DevCertSpec::default()).expect("dev certs");
        let secret = dir.path().join("token-secret");
        let (tokens, _) = TokenKey::load_or_create(&secret).expect("secret");
        let tag = format!("{:08x}", rand::random::<u32>());
        Shared {
            ca_pem: std::fs::read(&certs.ca_cert).expect("ca"),
            cert: certs.server_cert,
            key: certs.server_key,
            secret,
            endpoint_secret: common::cluster_endpoint_secret(dir.path()),
            tokens,
            prefix: format!("qimtest-{tag}"),
            store_prefix: format!("qimtest:{tag}:"),
            tag,
            dir,
        }
    }

    /// A node configuration: loopback, port 0, short TTLs and heartbeats so
    /// failures show within seconds.
    fn config(&self, name: &str) -> Config {
        let data = self.dir.path().join(name);
        let mut config = Config::for_tests(&data);
        config.tls.cert = Some(self.cert.clone());
        config.tls.key = Some(self.key.clone());
        config.auth.secret_file = Some(self.secret.clone());
        config.quic.endpoint_secret_file = Some(self.endpoint_secret.clone());
        config.store.redis = Some(redis_url());
        config.store.cql = Some(cql_nodes());
        config.store.keyspace = KEYSPACE.to_owned();
        config.cluster.key_prefix = self.prefix.clone();
        config.cluster.node_ttl_ms = 1_500;
        config.cluster.route_ttl_ms = 3_000;
        config.heartbeat.interval_ms = 1_000;
        config.heartbeat.min_interval_ms = 500;
        config.delivery.retransmit_initial_ms = 1_000;
        config.admin.keys_file = Some(common::write_admin_keys(self.dir.path()));
        // The tests ask the route endpoint in bulk from one address.
        config.cluster.route_requests_per_second = 0;
        config
    }

    /// The id of test user `name` in this test.
    fn user(&self, name: &str) -> String {
        format!("{name}-{}", self.tag)
    }

    async fn stores(&self) -> Stores {
        let mut options = ClusterOptions::new(redis_url(), keyspace().await.clone());
        options.key_prefix = self.store_prefix.clone();
        Stores::new(Arc::new(
            ClusterStore::connect(&options)
                .await
                .expect("cluster store"),
        ))
    }

    fn client_config(&self, addrs: &[SocketAddr], user: &str, device: &str) -> ClientConfig {
        let token = self
            .tokens
            .mint(&self.user(user), unix_now() + 3600)
            .expect("mint");
        let mut config =
            ClientConfig::new(addrs[0].to_string(), token, device, self.ca_pem.clone());
        config.fallback_servers = addrs[1..].iter().map(ToString::to_string).collect();
        config.reconnect_min = Duration::from_millis(50);
        config.reconnect_max = Duration::from_millis(300);
        config.connect_timeout = Duration::from_secs(2);
        config.pong_timeout = Duration::from_millis(1_000);
        config.ack_timeout = Duration::from_secs(2);
        config
    }

    async fn client(&self, addrs: &[SocketAddr], user: &str, device: &str) -> Client {
        Client::connect(self.client_config(addrs, user, device))
            .await
            .expect("connect")
    }
}

/// A node running in this process.
struct Node {
    addr: SocketAddr,
    admin: SocketAddr,
    /// The admin API.
    api: SocketAddr,
    id: String,
    running: Running,
}

impl Node {
    async fn start(shared: &Shared, name: &str, adjust: impl FnOnce(&mut Config)) -> Node {
        let mut config = shared.config(name);
        adjust(&mut config);
        config.validate().expect("valid config");
        let gateway = qim_gateway::Gateway::bind_with_stores(config, shared.stores().await)
            .await
            .expect("bind");
        Self::run(gateway)
    }

    /// A node on the full cluster backend (`Gateway::bind` with Redis and
    /// CQL configured), IM stores included.
    async fn start_im(shared: &Shared, name: &str) -> Node {
        Self::start_im_with(shared, name, |_| {}).await
    }

    async fn start_im_with(shared: &Shared, name: &str, adjust: impl FnOnce(&mut Config)) -> Node {
        keyspace().await;
        let mut config = shared.config(name);
        adjust(&mut config);
        config.store.key_prefix = shared.store_prefix.clone();
        config.validate().expect("valid config");
        Self::run(qim_gateway::Gateway::bind(config).await.expect("bind"))
    }

    fn run(gateway: qim_gateway::Gateway) -> Node {
        let info = gateway.info().clone();
        assert!(info.clustered);
        Node {
            addr: info.quic_addr,
            admin: info.admin_addr,
            api: info.api_addr.expect("the admin API listens"),
            id: info.node_id,
            running: Running::spawn(gateway),
        }
    }

    async fn stop(mut self) {
        self.running.stop().await;
    }
}

/// The next presence change `client` is told of, within `within`.
async fn presence_change(client: &Client, within: Duration) -> qim_sdk::PresenceStatus {
    match client.next_signal(within).await {
        Some(qim_sdk::Signal::Presence(p)) => p,
        other => panic!("expected a presence change within {within:?}, got {other:?}"),
    }
}

/// Presence and typing across nodes: alice on node a watches bob, whose
/// devices come and go on nodes b and a; each transition of his aggregate
/// reaches her within a second, the second device changes nothing, and
/// typing crosses nodes without being stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_cross_nodes_within_a_second() {
    let shared = Shared::new();
    let a = Node::start_im(&shared, "a").await;
    let b = Node::start_im(&shared, "b").await;
    let (alice_id, bob_id) = (shared.user("alice"), shared.user("bob"));
    let alice = shared.client(&[a.addr], "alice", "alice-phone").await;
    let phone = shared.client(&[b.addr], "bob", "bob-phone").await;
    alice
        .request_friend(bob_id.clone(), "hi".into())
        .await
        .expect("request across nodes");
    // The request event is handed to bob's node and pushed live.
    let request = take(&phone, 1).await;
    assert!(matches!(
        request[0].event,
        Some(qim_sdk::Event::FriendRequest { .. })
    ));
    phone.accept_friend(alice_id.clone()).await.expect("accept");
    take(&alice, 1).await;

    let status = alice
        .subscribe_presence(vec![bob_id.clone()])
        .await
        .expect("subscribe");
    assert!(status[0].online, "bob is online on the other node");
    let second = Duration::from_secs(1);
    phone.close().await;
    let off = presence_change(&alice, second).await;
    assert!(
        off.user == bob_id && !off.online && off.last_seen_ms > 0,
        "{off:?}"
    );
    let phone = shared.client(&[b.addr], "bob", "bob-phone").await;
    let on = presence_change(&alice, second).await;
    assert!(on.user == bob_id && on.online, "{on:?}");
    // A new client instance (no local state) syncs the inbox again.
    let again = take(&phone, 1).await;
    assert!(matches!(
        again[0].event,
        Some(qim_sdk::Event::FriendRequest { .. })
    ));

    // A second device (on alice's node) and its leaving change nothing.
    let laptop = shared.client(&[a.addr], "bob", "bob-laptop").await;
    let quiet = Duration::from_millis(300);
    assert_eq!(alice.next_signal(quiet).await, None);
    laptop.close().await;
    assert_eq!(alice.next_signal(quiet).await, None);
    let now = alice.presence(vec![bob_id.clone()]).await.expect("query");
    assert!(now[0].online, "the phone is still on: {now:?}");

    // Typing from node a reaches bob on node b, and is never stored.
    alice
        .typing(qim_sdk::Peer::User(bob_id.clone()), true)
        .await
        .expect("typing");
    match phone.next_signal(second).await {
        Some(qim_sdk::Signal::Typing { from, typing, .. }) => {
            assert!(from == alice_id && typing);
        }
        other => panic!("expected typing, got {other:?}"),
    }
    assert_quiet(&phone, quiet).await;

    phone.close().await;
    let off = presence_change(&alice, second).await;
    assert!(!off.online && off.last_seen_ms > 0, "{off:?}");
    alice.close().await;
    a.stop().await;
    b.stop().await;
}

/// Groups across nodes in both delivery modes: the sender is on node a,
/// the members on node b. Write-diffusion copies reach them through the
/// node queues, read-diffusion log entries through the signal channel;
/// either way each member gets every message once, in order, live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_reach_members_on_other_nodes_in_both_modes() {
    let shared = Shared::new();
    // Members are added, not invited: the test is about delivery.
    let threshold = |c: &mut Config| {
        c.groups.read_diffusion_threshold = 4;
        c.groups.default_adds = "anyone".into();
    };
    let a = Node::start_im_with(&shared, "a", threshold).await;
    let b = Node::start_im_with(&shared, "b", threshold).await;
    let owner = shared.client(&[a.addr], "owner", "o").await;
    let names = ["m1", "m2", "m3", "m4", "m5"];
    let mut members = Vec::new();
    for name in names {
        members.push(shared.client(&[b.addr], name, "phone").await);
    }
    let ids = |n: usize| {
        names[..n]
            .iter()
            .map(|m| shared.user(m))
            .collect::<Vec<_>>()
    };
    let small = shared.user("small");
    let big = shared.user("big");
    let info = owner
        .create_group(small.clone(), "Small".into(), ids(2))
        .await
        .expect("create");
    assert!(!info.read_diffusion, "3 members: write diffusion");
    let info = owner
        .create_group(big.clone(), "Big".into(), ids(5))
        .await
        .expect("create");
    assert!(info.read_diffusion, "6 members: read diffusion");
    const N: usize = 20;
    for i in 0..N {
        owner
            .send_group(small.clone(), format!("s{i}"))
            .await
            .expect("send");
        owner
            .send_group(big.clone(), format!("b{i}"))
            .await
            .expect("send");
    }
    for (k, member) in members.iter().enumerate() {
        let want_small = k < 2;
        let n = if want_small { 2 * N } else { N };
        let got = take(member, n).await;
        let of = |g: &str| {
            got.iter()
                .filter(|m| m.conversation == qim_sdk::Peer::Group(g.to_owned()))
                .map(text)
                .collect::<Vec<_>>()
        };
        let bigs: Vec<String> = (0..N).map(|i| format!("b{i}")).collect();
        assert_eq!(
            of(&big),
            bigs,
            "member {k}: the read-diffusion log, in order"
        );
        if want_small {
            let smalls: Vec<String> = (0..N).map(|i| format!("s{i}")).collect();
            assert_eq!(of(&small), smalls, "member {k}: the copies, in order");
        }
        assert_quiet(member, Duration::from_millis(100)).await;
    }
    // A member removed through node a stops receiving on node b at once.
    owner
        .change_group(
            big.clone(),
            qim_sdk::GroupChange::Remove(vec![shared.user("m5")]),
        )
        .await
        .expect("remove");
    owner
        .send_group(big.clone(), "after".into())
        .await
        .expect("send");
    for member in &members[..4] {
        assert_eq!(text(&take(member, 1).await[0]), "after");
    }
    assert_quiet(&members[4], Duration::from_millis(300)).await;
    a.stop().await;
    b.stop().await;
}

/// One device per platform class holds across nodes: bob's iPhone logging
/// in on node b kicks his Android phone on node a (KICKED, for good), his
/// desktop on node a stays, and both live devices get what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_policy_kicks_across_nodes() {
    let shared = Shared::new();
    let policy = |c: &mut Config| c.im.device_policy = "one-per-platform-class".into();
    let a = Node::start_im_with(&shared, "a", policy).await;
    let b = Node::start_im_with(&shared, "b", policy).await;
    let device = |addr: SocketAddr, name: &str, platform: qim_sdk::Platform| {
        let mut config = shared.client_config(&[addr], "bob", name);
        config.platform = platform;
        Client::connect(config)
    };
    let android = device(a.addr, "android", qim_sdk::Platform::Android)
        .await
        .expect("connect");
    let desk = device(a.addr, "desk", qim_sdk::Platform::Desktop)
        .await
        .expect("connect");
    let iphone = device(b.addr, "iphone", qim_sdk::Platform::Ios)
        .await
        .expect("connect");
    let why = stopped(&android).await;
    assert!(
        matches!(
            why,
            qim_sdk::Error::Rejected {
                code: qim_proto::v1::ErrorCode::Kicked,
                retryable: false,
                ..
            }
        ),
        "{why:?}"
    );
    let alice = shared.client(&[b.addr], "alice", "alice-phone").await;
    alice
        .send_message(to(
            &shared.user("bob"),
            "p1".into(),
            "after the kick".into(),
        ))
        .await
        .expect("send");
    assert_eq!(text(&take(&iphone, 1).await[0]), "after the kick");
    assert_eq!(text(&take(&desk, 1).await[0]), "after the kick");
    assert_eq!(android.state(), ConnectionState::Closed);
    assert_eq!(android.stats().sessions, 1, "never came back on its own");
    assert_eq!(desk.state(), ConnectionState::Connected);
    a.stop().await;
    b.stop().await;
}

/// The value of `"field":"…"` or `"field":N` in a flat JSON object.
fn json_field(body: &str, field: &str) -> Option<String> {
    let at = body.find(&format!("\"{field}\":"))? + field.len() + 3;
    let rest = &body[at..];
    if let Some(rest) = rest.strip_prefix('"') {
        rest.split('"').next().map(str::to_owned)
    } else {
        rest.split([',', '}']).next().map(|s| s.trim().to_owned())
    }
}

/// `/route?user=…` on a node: the node id it answers.
async fn route(admin: SocketAddr, user: &str) -> String {
    let (status, body) = http_get(admin, &format!("/route?user={user}")).await;
    assert_eq!(status, 200, "{body}");
    json_field(&body, "node_id").expect("node_id")
}

/// `/v1/nodes` on a node's admin API: the live nodes as the registry
/// reports them.
async fn live_nodes(api: SocketAddr) -> Vec<NodeInfo> {
    let common::HttpResponse { status, body, .. } =
        common::http_request(api, "GET", "/v1/nodes", Some(common::ADMIN_SECRET)).await;
    assert_eq!(status, 200, "{body}");
    body.split('{')
        .skip(1)
        .map(|obj| NodeInfo {
            id: json_field(obj, "node_id").expect("id"),
            addr: json_field(obj, "addr").expect("addr"),
            route_addr: json_field(obj, "route_addr").expect("route_addr"),
            tcp_addr: json_field(obj, "tcp_addr").expect("tcp_addr"),
            connections: json_field(obj, "connections")
                .and_then(|c| c.parse().ok())
                .expect("connections"),
            online_users: 0,
            draining: json_field(obj, "draining").as_deref() == Some("true"),
            started_ms: 0,
            updated_ms: 0,
        })
        .collect()
}

/// Waits until `/v1/nodes` on `api` satisfies `ok`.
async fn wait_nodes(api: SocketAddr, what: &str, ok: impl Fn(&[NodeInfo]) -> bool) {
    let ok = &ok;
    common::poll_until(what, || async move {
        let nodes = live_nodes(api).await;
        ok(&nodes).then_some(())
    })
    .await
}

fn to(user: &str, id: String, body: String) -> OutgoingMessage {
    OutgoingMessage {
        to: user.into(),
        kind: "text".into(),
        body: body.into_bytes(),
        client_msg_id: Some(id),
    }
}

/// Checks one device's inbox: seqs 1..=n, each once, and every sender's
/// messages in the order sent ("from-to-i").
fn check_inbox(device: &str, got: &[IncomingMessage], n: usize) {
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "{device}: in order, once"
    );
    let mut next: HashMap<String, usize> = HashMap::new();
    for m in got {
        let body = text(m);
        let i: usize = body
            .rsplit('-')
            .next()
            .and_then(|i| i.parse().ok())
            .expect("index");
        let expected = next.entry(m.from_user.clone()).or_insert(0);
        assert_eq!(i, *expected, "{device}: {body} in its sender's order");
        *expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_every_pair_chats_and_every_device_gets_everything_once_in_order() {
    let shared = Shared::new();
    let a = Node::start(&shared, "a", |_| {}).await;
    let b = Node::start(&shared, "b", |_| {}).await;
    let c = Node::start(&shared, "c", |_| {}).await;
    wait_nodes(a.api, "three nodes registered", |n| n.len() == 3).await;

    let alice = Arc::new(shared.client(&[a.addr], "alice", "alice-phone").await);
    let bob = Arc::new(shared.client(&[b.addr], "bob", "bob-phone").await);
    // bob has a second device, on another node than his first.
    let bob_laptop = shared.client(&[a.addr], "bob", "bob-laptop").await;
    let carol = Arc::new(shared.client(&[c.addr], "carol", "carol-phone").await);

    const N: usize = 60;
    let mut sends = tokio::task::JoinSet::new();
    let senders = [
        (shared.user("alice"), Arc::clone(&alice)),
        (shared.user("bob"), Arc::clone(&bob)),
        (shared.user("carol"), Arc::clone(&carol)),
    ];
    for (from, client) in &senders {
        for (recipient, _) in &senders {
            if from == recipient {
                continue;
            }
            // One task per ordered pair, each waiting for every ack in
            // turn: that pair's order is the order sent.
            let client = Arc::clone(client);
            let (from, recipient) = (from.to_string(), recipient.to_string());
            sends.spawn(async move {
                for i in 0..N {
                    let body = format!("{from}-{recipient}-{i}");
                    client
                        .send_message(to(&recipient, body.clone(), body))
                        .await
                        .expect("acked");
                }
            });
        }
    }
    while let Some(done) = sends.join_next().await {
        done.expect("sender");
    }
    for (device, client) in [
        ("alice-phone", &*alice),
        ("bob-phone", &*bob),
        ("bob-laptop", &bob_laptop),
        ("carol-phone", &*carol),
    ] {
        let got = take(client, 2 * N).await;
        check_inbox(device, &got, 2 * N);
        assert_quiet(client, Duration::from_millis(300)).await;
    }
    for node in [a, b, c] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_logging_in_on_another_node_replaces_its_older_session() {
    let shared = Shared::new();
    let a = Node::start(&shared, "a", |_| {}).await;
    let b = Node::start(&shared, "b", |_| {}).await;
    let first = shared.client(&[a.addr], "dave", "dave-phone").await;
    let second = shared.client(&[b.addr], "dave", "dave-phone").await;
    let error = stopped(&first).await;
    assert!(
        matches!(
            error,
            qim_sdk::Error::Rejected {
                code: qim_proto::v1::ErrorCode::Replaced,
                ..
            }
        ),
        "ended with REPLACED: {error:?}"
    );
    // The newer session stays: it comes up (the driver reports Connected
    // right after `connect` returns) and is not refused.
    let mut state = second.watch_state();
    tokio::time::timeout(PATIENCE, async {
        while state.current() != ConnectionState::Connected {
            state.changed().await;
        }
    })
    .await
    .expect("the newer session is up");
    assert_eq!(second.last_error(), None);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_endpoint_answers_under_each_strategy() {
    let shared = Shared::new();
    let strategies = [
        "consistent-hash",
        "least-connections",
        "random",
        "round-robin",
    ];
    let mut nodes = Vec::new();
    for (i, strategy) in strategies.iter().enumerate() {
        nodes.push(
            Node::start(&shared, &format!("n{i}"), |c| {
                c.cluster.strategy = (*strategy).to_owned();
            })
            .await,
        );
    }
    let admins: HashMap<&str, SocketAddr> = strategies
        .iter()
        .zip(&nodes)
        .map(|(s, n)| (*s, n.admin))
        .collect();
    let admin = |s: &str| admins[s];
    wait_nodes(nodes[0].api, "four nodes", |n| n.len() == 4).await;
    let registry = live_nodes(nodes[0].api).await;
    let ids: Vec<String> = registry.iter().map(|n| n.id.clone()).collect();

    const USERS: usize = 400;
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();

    // Consistent hash: what the ring over the registered nodes says, from
    // every lookup, and spread over all nodes.
    let mut ring = Picker::seeded(Strategy::ConsistentHash, 0);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for user in &users {
        let got = route(admin("consistent-hash"), user).await;
        assert_eq!(got, ring.pick(user, &registry).expect("node").id, "{user}");
        *counts.entry(got).or_default() += 1;
    }
    for id in &ids {
        let n = counts.get(id).copied().unwrap_or(0);
        assert!(
            (40..=180).contains(&n),
            "consistent hash gave {id} {n} of {USERS}"
        );
    }
    assert_eq!(
        route(admin("consistent-hash"), "u7").await,
        route(admin("consistent-hash"), "u7").await
    );

    // Round robin: exactly even.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for user in &users {
        *counts
            .entry(route(admin("round-robin"), user).await)
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 4);
    assert!(counts.values().all(|&n| n == USERS / 4), "{counts:?}");

    // Random: every node, none far from a quarter (expected 100, sd 8.7).
    let mut counts: HashMap<String, usize> = HashMap::new();
    for user in &users {
        *counts
            .entry(route(admin("random"), user).await)
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(
        counts.values().all(|&n| (40..=160).contains(&n)),
        "{counts:?}"
    );

    // Least connections: load one node with clients; once its heartbeat
    // reports them, lookups go to the others.
    let busy = &nodes[0];
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(
            shared
                .client(&[busy.addr], &format!("load{i}"), "phone")
                .await,
        );
    }
    wait_nodes(busy.api, "the busy node reports its load", |n| {
        n.iter().any(|n| n.id == busy.id && n.connections >= 3)
    })
    .await;
    let mut picked = Vec::new();
    for user in users.iter().take(9) {
        picked.push(route(admin("least-connections"), user).await);
    }
    assert!(
        !picked.contains(&busy.id),
        "the loaded node is not picked: {picked:?}"
    );
    picked.sort();
    picked.dedup();
    assert!(picked.len() >= 2, "spread over the idle nodes: {picked:?}");

    // Bad input gets a typed error.
    let (status, body) = http_get(admin("random"), "/route?user=has%20space").await;
    assert_eq!(status, 400, "{body}");

    // A node that leaves gracefully is gone from the registry at once.
    let leaving = nodes.pop().expect("node");
    let gone = leaving.id.clone();
    leaving.stop().await;
    // Deregistered before `run` returned, not by TTL expiry.
    let left = live_nodes(nodes[0].api).await;
    assert!(
        left.len() == 3 && left.iter().all(|n| n.id != gone),
        "{left:?}"
    );
    for user in users.iter().take(50) {
        assert_ne!(route(admin("random"), user).await, gone);
    }
    for client in clients {
        client.close().await;
    }
    for node in nodes {
        node.stop().await;
    }
}

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
