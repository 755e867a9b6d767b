//! Test harness: a real gateway on 127.0.0.1:0 with its own data directory,
//! real SDK clients, and a raw protocol client for what the SDK never does
//! (withholding acks, resending ids, sending garbage).
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qim_gateway::Config;
use qim_gateway::auth::{TokenKey, unix_now};
use qim_proto::io::{FramedRecv, FramedSend, read_preamble};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode};
use qim_sdk::{Client, ClientConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod http;
mod raw;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use raw::*;

/// Generous bound for anything that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The store a test gateway runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded store in the gateway's temp directory.
    Embedded,
    /// Redis (`QIM_TEST_REDIS`) and CQL (`QIM_TEST_CQL`), as started by
    /// `cargo xtask services up`; keyspace [`CLUSTER_KEYSPACE`], a fresh
    /// Redis key prefix per gateway.
    Cluster,
}

/// The keyspace of every cluster-backed test gateway; users and key
/// prefixes are unique per test, so tests share it without cleanup.
pub const CLUSTER_KEYSPACE: &str = "qim_gateway_test";

/// Writes the endpoint secret of a test cluster under `dir` and returns
/// its path: every node of a cluster needs one (`quic.endpoint_secret_file`),
/// and the same bytes on every node give them the same connection-ID and
/// stateless-reset keys.
pub fn cluster_endpoint_secret(dir: &std::path::Path) -> std::path::PathBuf {
    use base64::Engine as _;
    std::fs::create_dir_all(dir).expect("data dir");
    let path = dir.join("cluster-endpoint-secret");
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0x51u8; 32]);
    std::fs::write(&path, secret).expect("endpoint secret");
    path
}

/// Creates (once) the token secret of a test cluster node under `dir`
/// (`token-secret`, where a single node keeps its development secret) and
/// returns its path: a cluster node must be configured with one.
pub fn cluster_token_secret(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("token-secret");
    TokenKey::load_or_create(&path).expect("cluster token secret");
    path
}

/// Configures the secrets a cluster node must have: its token secret and
/// the endpoint secret every node of a test cluster shares.
pub fn cluster_secrets(c: &mut Config) {
    c.auth.secret_file = Some(cluster_token_secret(&c.server.data_dir));
    c.quic.endpoint_secret_file = Some(cluster_endpoint_secret(&c.server.data_dir));
}

/// A service address the test needs; fails (never skips) when unset.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the local services \
             (`cargo xtask services up`, then QIM_TEST_REDIS=redis://127.0.0.1:6390 \
             QIM_TEST_CQL=127.0.0.1:9042; `cargo xtask test` sets both)"
        )
    })
}

/// `name` with a random suffix.
pub fn unique(name: &str) -> String {
    format!("{name}{:08x}", rand::random::<u32>())
}

/// Creates or upgrades [`CLUSTER_KEYSPACE`] at `cql_addr` (idempotent).
pub async fn migrate_test_keyspace(cql_addr: &str) {
    migrate_keyspace(cql_addr, CLUSTER_KEYSPACE).await;
}

/// Creates or upgrades `keyspace` at `cql_addr` (idempotent), for tests
/// that keep their messages apart from the shared test keyspace.
pub async fn migrate_keyspace(cql_addr: &str, keyspace: &str) {
    qim_storage::cql::connect_and_migrate(&qim_storage::cql::CqlOptions::new(
        vec![cql_addr.to_owned()],
        keyspace,
    ))
    .await
    .expect("migrate the test keyspace");
}

/// Runs each named `async fn(Backend)` as two tests, `embedded::<name>` and
/// `cluster::<name>`.
#[macro_export]
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check($crate::common::Backend::Embedded).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check($crate::common::Backend::Cluster).await;
                }
            )*
        }
    };
}

/// The secret of the test gateways' admin key with every scope.
pub const ADMIN_SECRET: &str = "qim-test-admin-key-all-scopes-0123456789";
/// The secret of the test gateways' admin key with scope `read` only.
pub const READ_SECRET: &str = "qim-test-admin-key-read-only-0123456789ab";
/// The secret of the test gateways' admin key with scope `messages` only.
pub const MESSAGES_SECRET: &str = "qim-test-admin-key-messages-only-0123456";

/// Writes an admin keys file into `dir` with two keys: "ops"
/// ([`ADMIN_SECRET`], every scope) and "dashboard" ([`READ_SECRET`],
/// `read`); returns its path.
pub fn write_admin_keys(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("admin-keys.toml");
    std::fs::create_dir_all(dir).expect("keys dir");
    std::fs::write(
        &path,
        format!(
            "[[key]]\nid = \"ops\"\nsecret = \"{ADMIN_SECRET}\"\nscopes = [\"read\", \"sessions\", \"messages\", \"groups\", \"users\"]\n\n\
             [[key]]\nid = \"dashboard\"\nsecret = \"{READ_SECRET}\"\nscopes = [\"read\"]\n\n\
             [[key]]\nid = \"notifier\"\nsecret = \"{MESSAGES_SECRET}\"\nscopes = [\"messages\"]\n"
        ),
    )
    .expect("write admin keys");
    path
}

pub struct TestGateway {
    pub addr: SocketAddr,
    /// The TLS-on-TCP listener (`transport.tcp`, on by default).
    pub tcp: Option<SocketAddr>,
    /// The health, metrics and route listener (no authentication).
    pub admin: SocketAddr,
    /// The admin API, when the test config keeps `admin.keys_file`
    /// ([`write_admin_keys`]'s keys, by default).
    pub api: Option<SocketAddr>,
    pub ca_pem: Vec<u8>,
    pub key: TokenKey,
    pub config: Config,
    running: Running,
    pub dir: tempfile::TempDir,
}

/// A bound gateway running in a task until [`stop`](Running::stop)ped or
/// dropped.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub fn spawn(gateway: qim_gateway::Gateway) -> Running {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let stopped = gateway
                .run(async {
                    let _ = stopped.await;
                })
                .await;
            stopped.expect("the gateway stops only when told to");
        });
        Running {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts the graceful shutdown and waits until `run` returned.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("gateway stops")
                .expect("gateway task");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A gateway on `backend`, with `adjust` applied to the test config.
    pub async fn start_on(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        match backend {
            Backend::Embedded => Self::start_with(adjust).await,
            Backend::Cluster => {
                let redis = required_env("QIM_TEST_REDIS");
                let cql = required_env("QIM_TEST_CQL");
                migrate_test_keyspace(&cql).await;
                Self::start_with(move |c| {
                    cluster_secrets(c);
                    c.store.redis = Some(redis);
                    c.store.cql = Some(cql);
                    c.store.keyspace = CLUSTER_KEYSPACE.to_owned();
                    c.store.key_prefix = unique("qimtest:");
                    c.store.key_prefix.push(':');
                    adjust(c);
                })
                .await
            }
        }
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests(dir.path());
        config.admin.keys_file = Some(write_admin_keys(dir.path()));
        adjust(&mut config);
        Self::start_in(dir, config).await
    }

    /// A gateway on the stores `stores` makes (from the test config), e.g.
    /// the embedded store behind a wrapper that fails on purpose.
    pub async fn start_with_stores(
        adjust: impl FnOnce(&mut Config),
        stores: impl FnOnce(&Config) -> qim_gateway::Stores,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests(dir.path());
        config.admin.keys_file = Some(write_admin_keys(dir.path()));
        adjust(&mut config);
        config.validate().expect("test config is valid");
        let stores = stores(&config);
        let gateway = qim_gateway::Gateway::bind_with_stores(config.clone(), stores)
            .await
            .expect("bind");
        Self::run_bound(dir, config, gateway)
    }

    async fn start_in(dir: tempfile::TempDir, config: Config) -> Self {
        Self::start_on_stores(dir, config, None).await
    }

    /// An embedded gateway in `dir` on stores the test opened there (and
    /// keeps a handle to, e.g. the disk's floor).
    pub async fn start_embedded_on(
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
        stores: qim_gateway::Stores,
    ) -> Self {
        let mut config = Config::for_tests(dir.path());
        config.admin.keys_file = Some(write_admin_keys(dir.path()));
        adjust(&mut config);
        Self::start_on_stores(dir, config, Some(stores)).await
    }

    async fn start_on_stores(
        dir: tempfile::TempDir,
        config: Config,
        stores: Option<qim_gateway::Stores>,
    ) -> Self {
        capture_log();
        config.validate().expect("test config is valid");
        let gateway = match stores {
            Some(stores) => qim_gateway::Gateway::bind_with_stores(config.clone(), stores).await,
            None => qim_gateway::Gateway::bind(config.clone()).await,
        }
        .expect("bind");
        Self::run_bound(dir, config, gateway)
    }

    fn run_bound(dir: tempfile::TempDir, config: Config, gateway: qim_gateway::Gateway) -> Self {
        let info = gateway.info().clone();
        let ca_pem = std::fs::read(info.dev_ca.as_ref().expect("dev CA")).expect("read CA");
        let key = gateway.token_key();
        TestGateway {
            addr: info.quic_addr,
            tcp: info.tcp_addr,
            admin: info.admin_addr,
            api: info.api_addr,
            ca_pem,
            key,
            config,
            running: Running::spawn(gateway),
            dir,
        }
    }

    pub fn token(&self, user: &str) -> String {
        self.key.mint(user, unix_now() + 3600).expect("mint")
    }

    pub fn client_config(&self, user: &str, device: &str) -> ClientConfig {
        let mut config = ClientConfig::new(
            self.addr.to_string(),
            self.token(user),
            device,
            self.ca_pem.clone(),
        );
        config.reconnect_min = Duration::from_millis(50);
        config.reconnect_max = Duration::from_millis(500);
        // The race's TCP leg goes to this gateway's TCP port (port 0 gave
        // the two listeners different ports).
        config.tcp_port = self.tcp.map(|a| a.port());
        config
    }

    pub async fn client(&self, user: &str, device: &str) -> Client {
        Client::connect(self.client_config(user, device))
            .await
            .expect("connect")
    }

    /// Stops gracefully and starts again on the same UDP port and data
    /// directory.
    pub async fn restart(mut self) -> TestGateway {
        self.running.stop().await;
        let mut config = self.config.clone();
        config.server.listen = self.addr;
        config.transport.tcp_listen = self.tcp;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let mut next = TestGateway::start_in(dir, config).await;
        next.config.server.listen = self.config.server.listen;
        next.config.transport.tcp_listen = self.config.transport.tcp_listen;
        next
    }

    /// Starts the graceful shutdown and waits until `run` returned.
    pub async fn stop(mut self) {
        self.running.stop().await;
    }

    /// GET a path on the health and metrics listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// GET a path of the admin API with the every-scope key: (status, body).
    pub async fn api_get(&self, path: &str) -> (u16, String) {
        let api = self.api.expect("the admin API listens");
        let response = http_request(api, "GET", path, Some(ADMIN_SECRET)).await;
        (response.status, response.body)
    }

    /// POST a path of the admin API with the every-scope key: (status, body).
    pub async fn api_post(&self, path: &str) -> (u16, String) {
        let api = self.api.expect("the admin API listens");
        let response = http_request(api, "POST", path, Some(ADMIN_SECRET)).await;
        (response.status, response.body)
    }

    /// POST a JSON body to a path of the admin API with the every-scope
    /// key.
    pub async fn api_json(&self, path: &str, body: &str) -> HttpResponse {
        let api = self.api.expect("the admin API listens");
        http_json(api, "POST", path, Some(ADMIN_SECRET), body).await
    }

    /// A counter's value from /metrics (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        metric_in(&body, name)
    }
}

/// A counter's value in a /metrics page (0 when absent).
pub fn metric_in(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Takes `n` messages, failing if they do not come in time.
/// Waits until `client` stopped for good; returns why.
pub async fn stopped(client: &Client) -> qim_sdk::Error {
    let mut state = client.watch_state();
    tokio::time::timeout(PATIENCE, async {
        while state.current() != qim_sdk::ConnectionState::Closed {
            state.changed().await;
        }
    })
    .await
    .expect("the client stops");
    client.last_error().expect("a reason")
}

pub async fn take(client: &Client, n: usize) -> Vec<qim_sdk::IncomingMessage> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(PATIENCE, client.next_message()).await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => panic!("client closed after {} of {n} messages", out.len()),
            Err(_) => panic!(
                "only {} of {n} messages arrived: {:?}",
                out.len(),
                out.iter()
                    .map(|m: &qim_sdk::IncomingMessage| (
                        m.seq,
                        m.group_seq,
                        text(m),
                        m.event.is_some()
                    ))
                    .collect::<Vec<_>>()
            ),
        }
    }
    out
}

/// Asserts nothing more arrives within `window` (used after everything
/// expected has arrived, to catch duplicates).
pub async fn assert_quiet(client: &Client, window: Duration) {
    if let Some(extra) = client.next_message_timeout(window).await {
        panic!(
            "unexpected extra message: seq {} {:?}",
            extra.seq,
            String::from_utf8_lossy(&extra.body)
        );
    }
}

/// Connects a device of `user` that was offline all along, with the
/// default `gap_skip_after`, and takes its messages until `done` says so,
/// each within 5 s: far below `gap_skip_after`, so a device that sits out
/// a gap in its inbox fails (the panic names the messages it got).
pub async fn catch_up_without_waiting(
    gw: &TestGateway,
    user: &str,
    device: &str,
    done: impl Fn(&[qim_sdk::IncomingMessage]) -> bool,
) -> Vec<qim_sdk::IncomingMessage> {
    let config = gw.client_config(user, device);
    let patience = Duration::from_secs(5);
    assert!(
        config.gap_skip_after > patience,
        "waiting cannot pass this check"
    );
    let client = qim_sdk::Client::connect(config).await.expect("connect");
    let mut got = Vec::new();
    while !done(&got) {
        let m = tokio::time::timeout(patience, client.next_message())
            .await
            .unwrap_or_else(|_| {
                let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
                panic!("held back behind a gap; got seqs {seqs:?}")
            })
            .expect("a message");
        got.push(m);
    }
    client.close().await;
    got
}

pub fn text(m: &qim_sdk::IncomingMessage) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

pub fn send_frame(client_msg_id: &str, to: &str, body: &[u8]) -> v1::Send {
    v1::Send {
        client_msg_id: client_msg_id.to_owned(),
        to: Some(v1::Peer {
            target: Some(v1::peer::Target::User(to.to_owned())),
        }),
        body: body.to_vec().into(),
        kind: "text".into(),
        ..Default::default()
    }
}

/// Awaits all futures, polling them in index order every time (unlike
/// `join_all`, whose first polls may come in any order); returns outputs in
/// index order.
pub async fn join_in_order<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                if let Poll::Ready(value) = std::pin::Pin::new(future).poll(cx) {
                    *output = Some(value);
                }
            }
        }
        if outputs.iter().all(Option::is_some) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Polls `check` until it yields a value, with a backoff from 10 ms to
/// 200 ms, and fails the test after [`PATIENCE`]. Only for state that
/// raises no event a test could await: a TTL lapsing in Redis, a counter on
/// the admin port, wall-clock retention, another process's side effect. The
/// integration tests' only sleeps are here.
pub async fn poll_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Two users chatting through a whole attack: each sends a numbered
/// message to the other at a steady pace until [`Bystanders::finish`],
/// which asserts every message arrived at the other side once, in order.
/// An attacker's test starts them before the attack and finishes them
/// after it, so a hole that harms other users fails the test.
/// Sends the gateway's and the SDK's log (warnings, or what
/// `QIM_TEST_LOG` asks for, e.g. `qim_gateway=debug`) to the test's
/// captured output, which the test harness prints when a test fails. The
/// runtime's threads are spawned by the test's own thread and write to its
/// capture.
pub fn capture_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("QIM_TEST_LOG").unwrap_or_else(|_| "warn".to_owned());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

pub struct Bystanders {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<(Client, usize)>>,
    receivers: Vec<Client>,
}

impl Bystanders {
    /// Starts `<prefix>-alice` and `<prefix>-bob` on `gw` (unique names).
    pub async fn start(gw: &TestGateway) -> Bystanders {
        let a = unique("bystander-a");
        let b = unique("bystander-b");
        let (stop, watch) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let mut receivers = Vec::new();
        for (me, peer) in [(&a, &b), (&b, &a)] {
            let sender = gw.client(me, "chat").await;
            receivers.push(gw.client(peer, "read").await);
            let peer = peer.clone();
            let mut watch = watch.clone();
            tasks.push(tokio::spawn(async move {
                let mut sent = 0usize;
                loop {
                    sender
                        .send(peer.clone(), format!("bystander {sent}"))
                        .await
                        .expect("a bystander's send is acked");
                    sent += 1;
                    // Why a sleep: it is the subject (a steady chat pace,
                    // about 20 messages a second each way), not a wait for
                    // an outcome; the stop signal ends it at once.
                    tokio::select! {
                        _ = watch.changed() => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                (sender, sent)
            }));
        }
        Bystanders {
            stop,
            tasks,
            receivers,
        }
    }

    /// Stops the chat and asserts each side got every message of the
    /// other, in order, once.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        for (task, receiver) in self.tasks.into_iter().zip(self.receivers) {
            let (sender, sent) = task.await.expect("bystander task");
            assert!(sent > 0, "the bystanders chatted");
            let got = take(&receiver, sent).await;
            let texts: Vec<String> = got.iter().map(text).collect();
            let want: Vec<String> = (0..sent).map(|i| format!("bystander {i}")).collect();
            assert_eq!(texts, want, "a bystander's messages, in order, once");
            assert_quiet(&receiver, Duration::from_millis(300)).await;
            sender.close().await;
            receiver.close().await;
        }
    }
}

/// A TCP proxy (e.g. in front of the CQL server): forwards connections to `upstream` while `open` is true; cutting it
/// drops every forwarded connection and refuses new ones.
pub async fn proxy(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy bind");
    let addr = listener.local_addr().expect("proxy addr");
    let (open_tx, open) = tokio::sync::watch::channel(true);
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if !*open.borrow() {
                continue; // dropped: the connection is refused
            }
            let mut open = open.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = open.wait_for(|open| !*open) => {}
                }
            });
        }
    });
    (addr, open_tx)
}

/// Hands out the seqs of `inbox` up to `last` without storing them: what a
/// node that died between allocating and writing leaves (the CQL mark
/// raised, the Redis counter moved on).
pub async fn hand_out_unwritten(
    gw: &TestGateway,
    cql_addr: &str,
    redis_url: &str,
    inbox: &str,
    last: u64,
) {
    use fred::interfaces::KeysInterface as _;
    let keyspace = &gw.config.store.keyspace;
    let session = qim_storage::cql::connect(&qim_storage::cql::CqlOptions::new(
        vec![cql_addr.to_owned()],
        keyspace,
    ))
    .await
    .expect("cql");
    session
        .query_unpaged(
            format!("UPDATE {keyspace}.inbox_heads SET reserved = ? WHERE inbox = ?"),
            (i64::try_from(last).expect("seq"), inbox),
        )
        .await
        .expect("raise the mark");
    let redis = qim_storage::cluster::connect_redis(redis_url, Duration::from_secs(2))
        .await
        .expect("redis");
    let prefix = &gw.config.store.key_prefix;
    for key in [
        format!("{prefix}seq:{{{inbox}}}"),
        format!("{prefix}seqres:{{{inbox}}}"),
    ] {
        let _: () = redis.set(key, last, None, None, false).await.expect("set");
    }
}

/// The QUIC address a spawned gateway (stdout piped) announces on its
/// `READY quic=…` line; its stdout is drained from then on, so the child
/// never blocks on a full pipe.
pub async fn ready_addr(child: &mut tokio::process::Child) -> SocketAddr {
    use tokio::io::AsyncBufReadExt as _;
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
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
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr
}

/// The keyspace of the media tests' cluster gateways, migrated by this
/// build (the shared test keyspace may be at another schema version).
pub const MEDIA_KEYSPACE: &str = "qim_media_test";

/// A gateway on `backend` that takes blobs, with `adjust` applied; a
/// cluster's nodes keep them in the S3-compatible server of the local
/// services (`QIM_TEST_S3`), under a key prefix of this gateway's.
pub async fn start_media(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestGateway {
    if backend == Backend::Cluster {
        let cql = required_env("QIM_TEST_CQL");
        qim_storage::cql::connect_and_migrate(&qim_storage::cql::CqlOptions::new(
            vec![cql],
            MEDIA_KEYSPACE,
        ))
        .await
        .expect("migrate the media test keyspace");
    }
    TestGateway::start_on(backend, move |c| {
        if backend == Backend::Cluster {
            c.store.keyspace = MEDIA_KEYSPACE.to_owned();
            let s3 = qim_storage::conformance_blobs::s3_test_options();
            // The secret reaches the gateway as an operator's would: in a
            // file of its own.
            let secret = c.server.data_dir.join("s3-secret");
            std::fs::create_dir_all(&c.server.data_dir).expect("data dir");
            std::fs::write(&secret, format!("{}\n", s3.secret_access_key)).expect("s3 secret");
            c.media.s3_endpoint = Some(s3.endpoint);
            c.media.s3_bucket = Some(s3.bucket);
            c.media.s3_region = s3.region;
            c.media.s3_access_key_id = Some(s3.access_key_id);
            c.media.s3_secret_key_file = Some(secret);
            c.media.s3_path_style = s3.path_style;
            c.media.s3_key_prefix = s3.key_prefix;
        }
        adjust(c);
    })
    .await
}

/// Another node of `first`'s cluster: the same stores, object store,
/// token and endpoint secrets; its own data directory, ports and
/// development certificate (clients of it use its `ca_pem`).
pub async fn start_peer(first: &TestGateway) -> TestGateway {
    let base = first.config.clone();
    TestGateway::start_with(move |c| {
        let data_dir = c.server.data_dir.clone();
        *c = base;
        c.server.data_dir = data_dir;
    })
    .await
}
