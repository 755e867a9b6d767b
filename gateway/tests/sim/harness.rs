//! The simulation: a real gateway and real SDK clients on one [`Net`], on
//! the test's paused tokio clock.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use qim_gateway::auth::{TokenKey, unix_now};
use qim_gateway::{Config, Gateway};
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1;
use qim_sdk::{Client, ClientConfig, ConnectionState, SocketSource};
use qim_storage::Stores;
use tokio::task::JoinHandle;

use crate::common::{Raw, RawSession, Running};
use crate::net::{Net, SimSocket};
use crate::store::HeldStore;

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
        let gateway =
            Gateway::bind_on_socket(config.clone(), Stores::new(Arc::clone(&store)), socket)
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
        // The in-process network carries datagrams only.
        config.transport = qim_sdk::TransportPolicy::QuicOnly;
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
            // The beat's interval, on the simulated clock.
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
