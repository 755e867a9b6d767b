//! The simulation: a real gateway and real SDK clients on one [`Net`], on
//! the test's paused tokio clock.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use qim_gateway::auth::{TokenKey, unix_now};
use qim_gateway::{Config, Gateway};
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1;
use qim_sdk::{Client, ClientConfig, ConnectionState, SocketSource};
use qim_storage::embedded::EmbeddedStore;
use qim_storage::{Appended, MessageStore, NewMessage, StoreError, StoredMessage};
use tokio::task::JoinHandle;

use crate::common::{Raw, RawSession, Running};
use crate::net::{Net, SimSocket};

/// The port the simulated gateway listens on.
const GATEWAY_PORT: u16 = 4433;

/// One simulated world: a network, and what runs on it.
#[derive(Debug, Default)]
pub(crate) struct Sim {
    net: Net,
}

impl Sim {
    /// Must be called on a paused clock (`#[tokio::test(start_paused =
    /// true)]`): every duration in the world is then simulated.
    pub(crate) fn new() -> Sim {
        Sim::default()
    }

    /// The network, for its knobs.
    pub(crate) fn net(&self) -> &Net {
        &self.net
    }

    /// A gateway on its own host, with `adjust` applied to the test config.
    pub(crate) async fn gateway(&self, adjust: impl FnOnce(&mut Config)) -> SimGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests(dir.path());
        adjust(&mut config);
        config.validate().expect("test config is valid");
        let addr = SocketAddr::new(self.net.host(), GATEWAY_PORT);
        let socket: Arc<SimSocket> = self.net.bind(addr);
        let store = Arc::new(HeldStore::open(&dir.path().join("store")));
        let gateway = Gateway::bind_on_socket(
            config.clone(),
            Arc::clone(&store) as Arc<dyn MessageStore>,
            Default::default(),
            socket,
        )
        .await
        .expect("bind");
        let ca_pem = std::fs::read(gateway.info().dev_ca.as_ref().expect("dev CA")).expect("CA");
        let key = gateway.token_key();
        let admin = gateway.info().admin_addr;
        SimGateway {
            net: self.net.clone(),
            addr,
            admin,
            ca_pem,
            key,
            store,
            running: Running::spawn(gateway),
            _dir: dir,
        }
    }
}

/// A gateway running in a [`Sim`].
pub(crate) struct SimGateway {
    net: Net,
    /// Its address on the network.
    pub(crate) addr: SocketAddr,
    /// Its admin HTTP port (real TCP on 127.0.0.1).
    admin: SocketAddr,
    /// The CA clients trust.
    pub(crate) ca_pem: Vec<u8>,
    key: TokenKey,
    /// Its message store.
    pub(crate) store: Arc<HeldStore>,
    running: Running,
    _dir: tempfile::TempDir,
}

impl SimGateway {
    /// A login token for `user`.
    pub(crate) fn token(&self, user: &str) -> String {
        self.key.mint(user, unix_now() + 3600).expect("mint")
    }

    /// Settings of a client on a host of its own; the SDK's defaults
    /// otherwise (simulated time makes their seconds free).
    pub(crate) fn client_config(&self, user: &str, device: &str) -> ClientConfig {
        let mut config = ClientConfig::new(
            self.addr.to_string(),
            self.token(user),
            device,
            self.ca_pem.clone(),
        );
        config.sockets = Some(Arc::new(Host::new(&self.net)));
        config
    }

    /// A connected SDK client.
    pub(crate) async fn client(&self, user: &str, device: &str) -> Client {
        self.client_on_host(user, device).await.0
    }

    /// A connected SDK client, and the address of its host.
    pub(crate) async fn client_on_host(&self, user: &str, device: &str) -> (Client, IpAddr) {
        let host = Arc::new(Host::new(&self.net));
        let ip = host.ip;
        let mut config = self.client_config(user, device);
        config.sockets = Some(host);
        let client = Client::connect(config).await.expect("connect");
        (client, ip)
    }

    /// A raw protocol client on a host of its own, connected (no Hello).
    pub(crate) async fn raw(&self) -> Raw {
        let socket = Host::new(&self.net).socket();
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .expect("endpoint");
        Raw::connect_from(endpoint, self.addr, &self.ca_pem).await
    }

    /// A raw protocol client logged in as `device` of `user`.
    pub(crate) async fn raw_login(&self, user: &str, device: &str, resume_from: u64) -> RawSession {
        self.raw()
            .await
            .log_in(&self.token(user), device, resume_from)
            .await
    }

    /// A counter's value from /metrics (0 when absent). The request goes
    /// over real TCP, [`held`] so that no simulated time passes meanwhile.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let (_, page) = held(crate::common::http_get(self.admin, "/metrics")).await;
        crate::common::metric_in(&page, name)
    }

    /// Starts the graceful shutdown and waits until `run` returned.
    pub(crate) async fn stop(mut self) {
        self.running.stop().await;
    }
}

/// Keeps `conn`'s session alive as the SDK would: a heartbeat stream with
/// a Ping every `every` (announced as the next interval), Pongs read. For
/// raw clients in tests that run for minutes of simulated time.
pub(crate) fn beat(conn: &quinn::Connection, every: Duration) -> JoinHandle<()> {
    let conn = conn.clone();
    tokio::spawn(async move {
        let Ok((send, recv)) = conn.open_bi().await else {
            return;
        };
        let mut send = FramedSend::new(send, StreamKind::Heartbeat, 64 * 1024);
        let mut recv = FramedRecv::new(recv, 64 * 1024);
        for n in 1.. {
            let ping = v1::Ping {
                n,
                sent_at_ms: qim_proto::now_ms(),
                next_within_ms: u32::try_from(every.as_millis()).unwrap_or(u32::MAX),
            };
            if send.send(&ping).await.is_err()
                || !matches!(recv.next::<v1::Pong>().await, Ok(Some(_)))
            {
                return;
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// A client host: each socket it makes is a new port of its address, as a
/// new OS socket would be.
#[derive(Debug)]
pub(crate) struct Host {
    net: Net,
    ip: IpAddr,
}

impl Host {
    fn new(net: &Net) -> Host {
        Host {
            net: net.clone(),
            ip: net.host(),
        }
    }

    fn socket(&self) -> Arc<SimSocket> {
        self.net.bind(SocketAddr::new(self.ip, 0))
    }
}

impl SocketSource for Host {
    fn bind(&self, _ipv6: bool) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        Ok(self.socket())
    }
}

/// Asserts that `expected` has passed on the simulated clock since `t0`,
/// to the millisecond: timers fire at whole milliseconds, and a few round
/// trips on the zero-latency network take no time.
pub(crate) fn assert_elapsed(t0: tokio::time::Instant, expected: Duration, what: &str) {
    let took = t0.elapsed();
    let slack = Duration::from_millis(TIMING_SLACK_MS);
    assert!(
        took + slack >= expected && took <= expected + slack,
        "{what}: after {took:?}, expected {expected:?}"
    );
}

/// How far an observed time may be from the expected one.
const TIMING_SLACK_MS: u64 = 5;

/// The server's close code of `conn`, however long that takes.
pub(crate) async fn close_code(conn: &quinn::Connection) -> v1::ErrorCode {
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            v1::ErrorCode::from_quic(close.error_code.into_inner())
        }
        other => panic!("closed without an application code: {other}"),
    }
}

/// The next message of `client` within `limit` of simulated time.
pub(crate) async fn next_within(client: &Client, limit: Duration) -> qim_sdk::IncomingMessage {
    tokio::time::timeout(limit, client.next_message())
        .await
        .unwrap_or_else(|_| panic!("no message within {limit:?}"))
        .expect("the client is open")
}

/// Waits up to `limit` of simulated time until `client`'s state is one
/// that `want` accepts; returns it.
pub(crate) async fn state_within(
    client: &Client,
    limit: Duration,
    want: impl Fn(ConnectionState) -> bool,
) -> ConnectionState {
    let mut states = client.watch_state();
    let reached = tokio::time::timeout(limit, async {
        loop {
            let state = states.current();
            if want(state) {
                return Some(state);
            }
            states.changed().await?;
        }
    })
    .await;
    match reached {
        Ok(Some(state)) => state,
        Ok(None) => panic!("the client is gone"),
        Err(_) => panic!("still {:?} after {limit:?}", client.state()),
    }
}

/// Awaits `work` without letting the paused clock jump meanwhile.
///
/// tokio advances a paused clock to the next timer as soon as no task can
/// run. Work done off the runtime (the embedded store's writer thread
/// syncing to disk) leaves every task waiting, so time would jump by a
/// heartbeat deadline or a retransmit timeout during a disk sync. While
/// `work` is pending this future wakes itself, which keeps the runtime busy
/// (a runtime with work parks with a zero timeout and does not advance the
/// clock): store calls take no simulated time.
pub(crate) async fn held<F: Future>(work: F) -> F::Output {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| match work.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(out),
        Poll::Pending => {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// The embedded store, with every call [`held`], and a knob that leaves
/// seqs empty for good as a write that failed after its seq was handed out
/// does.
pub(crate) struct HeldStore {
    inner: EmbeddedStore,
    /// Per inbox: how many seqs the next append to it burns first.
    burn: Mutex<HashMap<String, u64>>,
    /// Burned seqs: stored to take the seq, never read back.
    hidden: Mutex<HashSet<(String, u64)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HeldStore {
    fn open(dir: &std::path::Path) -> HeldStore {
        HeldStore {
            inner: EmbeddedStore::open(dir).expect("open the store"),
            burn: Mutex::default(),
            hidden: Mutex::default(),
        }
    }

    /// The next append to `inbox` first hands out `n` seqs that are never
    /// written: the gap a node leaves when it dies between taking seqs and
    /// writing them. Readers never see those seqs, and the store never
    /// calls them settled.
    pub(crate) fn burn_next(&self, inbox: &str, n: u64) {
        lock(&self.burn).insert(inbox.to_owned(), n);
    }

    async fn burn(&self, batch: &[NewMessage]) -> Result<(), StoreError> {
        for message in batch {
            let Some(n) = lock(&self.burn).remove(&message.inbox) else {
                continue;
            };
            let burned: Vec<NewMessage> = (0..n)
                .map(|i| NewMessage {
                    client_msg_id: format!("burned-{}-{i}", message.client_msg_id),
                    ..message.clone()
                })
                .collect();
            for appended in self.inner.append(burned).await? {
                lock(&self.hidden).insert((appended.message.inbox, appended.message.seq));
            }
        }
        Ok(())
    }

    fn first_hidden(&self, inbox: &str) -> Option<u64> {
        lock(&self.hidden)
            .iter()
            .filter(|(i, _)| i == inbox)
            .map(|&(_, seq)| seq)
            .min()
    }
}

#[async_trait]
impl MessageStore for HeldStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        held(async {
            self.burn(&batch).await?;
            self.inner.append(batch).await
        })
        .await
    }

    async fn read_inbox(
        &self,
        inbox: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut page = held(self.inner.read_inbox(inbox, after_seq, limit)).await?;
        let hidden = lock(&self.hidden);
        page.retain(|m| !hidden.contains(&(m.inbox.clone(), m.seq)));
        Ok(page)
    }

    async fn inbox_head(&self, inbox: &str) -> Result<u64, StoreError> {
        held(self.inner.inbox_head(inbox)).await
    }

    async fn settled_through(&self, inbox: &str, head: u64) -> Result<u64, StoreError> {
        let settled = held(self.inner.settled_through(inbox, head)).await?;
        Ok(match self.first_hidden(inbox) {
            Some(seq) => settled.min(seq - 1),
            None => settled,
        })
    }

    async fn save_cursor(&self, inbox: &str, device: &str, seq: u64) -> Result<(), StoreError> {
        held(self.inner.save_cursor(inbox, device, seq)).await
    }

    async fn load_cursor(&self, inbox: &str, device: &str) -> Result<Option<u64>, StoreError> {
        held(self.inner.load_cursor(inbox, device)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        held(self.inner.flush()).await
    }
}
