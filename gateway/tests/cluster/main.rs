//! A gateway cluster on real services: nodes share Redis (`QIM_TEST_REDIS`)
//! for routes, the registry and cross-node queues, and a CQL server
//! (`QIM_TEST_CQL`) for messages, through the cluster store. Nodes run in
//! this process on 127.0.0.1:0, or as child processes where one must die
//! by `kill -9`. Each test has its own Redis key prefixes; the binary shares
//! one CQL keyspace (creating one takes seconds).

// The session futures of the SDK and gateway nest deeply; the tests
// moved into modules passed the default query depth.
#![recursion_limit = "256"]

mod chat;
#[path = "../common/mod.rs"]
mod common;
mod cross;
mod home;
mod kill;

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
