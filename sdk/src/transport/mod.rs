//! Choosing the transport: QUIC, or the same session over TLS on TCP for
//! networks that block or starve UDP.
//!
//! - [`connect`] races the two ([`TransportPolicy::Auto`]): QUIC at once,
//!   TCP after [`ClientConfig::tcp_delay`] (at once when QUIC fails first);
//!   the first to log in wins and the other is dropped. On a network where
//!   TCP won last time, TCP goes first and QUIC second.
//! - Which transport worked is remembered per network (the local address
//!   the system routes to the server from), for the client's life.
//! - `watch` (`watch.rs`), one per session: on QUIC, a session whose first
//!   ping gets no pong within [`ClientConfig::quic_stall_timeout`] (the
//!   handshake passed, then nothing: partial loss) ends, and the network is
//!   marked for TCP; on TCP, QUIC is probed in the background with backoff,
//!   and once a QUIC handshake and a round trip after it pass, the session
//!   ends to reconnect over QUIC. A switch is an ordinary reconnect: the
//!   outbox resends what was not acked with the same ids, the inbox resumes
//!   after what it released and drops what it has, so nothing is lost or
//!   doubled. A QUIC session the client gave up on because it went silent
//!   (no pong) also marks the network for TCP first (`session_lost`).
//!
//! Connection migration and 0-RTT exist on QUIC only; TLS session
//! resumption works on both.

mod home;
mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qim_proto::transport::mux::{self, Limits, Role};
use qim_proto::transport::{Connection, TransportKind};
use qim_proto::v1::ErrorCode;
use tokio::sync::Notify;
use tracing::debug;

pub(crate) use home::home;
pub(crate) use watch::watch;

use crate::connect::{Established, connect_quic, login, tls_config};
use crate::events::ClientEvent;
use crate::shared::Shared;
use crate::sync::lock;
use crate::{ClientConfig, Error};

/// Which transports the client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum TransportPolicy {
    /// Race QUIC against TLS on TCP, remember per network which worked,
    /// go back to QUIC when it works again.
    #[default]
    Auto,
    /// QUIC only.
    QuicOnly,
    /// TLS on TCP only.
    TcpOnly,
}

/// The transport a session runs on, for the app to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP.
    Tcp,
}

impl Transport {
    pub(crate) fn of(conn: &Connection) -> Transport {
        match conn.kind() {
            TransportKind::Quic => Transport::Quic,
            TransportKind::Tcp => Transport::Tcp,
        }
    }

    /// `"QUIC"` or `"TCP"`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "QUIC",
            Transport::Tcp => "TCP",
        }
    }
}

/// Networks remembered at most (the oldest guess is dropped beyond).
const MAX_NETWORKS: usize = 64;

/// What the transport choice keeps across connections.
#[derive(Default)]
pub(crate) struct Transports {
    /// The TLS settings of TCP connections, made once: its session store
    /// lets every reconnect resume.
    tls: Mutex<Option<Arc<rustls::ClientConfig>>>,
    /// Per network (the local address towards the server), the transport
    /// that logged in last.
    memory: Mutex<HashMap<IpAddr, Transport>>,
    /// The QUIC address of the last attempt, for the background probe.
    quic_addr: Mutex<Option<SocketAddr>>,
    /// Held by the attempt whose Hello is out until its answer arrives:
    /// a raced second attempt sends its Hello only when the first's login
    /// failed or after [`LOGIN_ALONE`]. Two Hellos of one client reaching
    /// the server would make the later one replace the earlier session,
    /// the one the client may already be using.
    pub(crate) login_turn: tokio::sync::Mutex<()>,
}

/// How long a raced attempt waits for the other attempt's login before it
/// sends its own Hello anyway (the other's path may carry nothing after
/// its handshake).
pub(crate) const LOGIN_ALONE: Duration = Duration::from_millis(400);

impl Transports {
    fn tls(&self, config: &ClientConfig) -> Result<Arc<rustls::ClientConfig>, Error> {
        let mut tls = lock(&self.tls);
        if let Some(tls) = &*tls {
            return Ok(Arc::clone(tls));
        }
        let made = Arc::new(tls_config(config)?);
        *tls = Some(Arc::clone(&made));
        Ok(made)
    }

    /// What worked last on the network that reaches `server`.
    fn known(&self, server: SocketAddr) -> Option<Transport> {
        let network = network_of(server)?;
        lock(&self.memory).get(&network).copied()
    }

    /// Remembers that `transport` works (or is the one to use) on the
    /// network that reaches `server`.
    pub(crate) fn remember(&self, server: SocketAddr, transport: Transport) {
        let Some(network) = network_of(server) else {
            return;
        };
        let mut memory = lock(&self.memory);
        if memory.len() >= MAX_NETWORKS && !memory.contains_key(&network) {
            let first = memory.keys().next().copied();
            if let Some(first) = first {
                memory.remove(&first);
            }
        }
        memory.insert(network, transport);
    }
}

/// A session on `conn` ended with `error`. A QUIC connection this client
/// gave up on itself (no pong, no answer to a probe: quinn saw no close)
/// went silent: the next attempt on this network starts with TCP, and the
/// background probe brings the session back to QUIC once it works.
pub(crate) fn session_lost(shared: &Shared, conn: &Connection, error: &Error) {
    if shared.config.transport != TransportPolicy::Auto
        || conn.kind() != TransportKind::Quic
        || conn.close_reason().is_some()
        || !matches!(error, Error::Network(_))
    {
        return;
    }
    if let Some(addr) = *lock(&shared.transports.quic_addr) {
        debug!(error = %error, "QUIC went silent; TCP first on this network");
        shared.transports.remember(addr, Transport::Tcp);
    }
}

/// The network a packet to `server` leaves from: the local address the
/// system routes it from (a UDP `connect` sends nothing).
fn network_of(server: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(server).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// The TLS-on-TCP address of the server at QUIC address `addr`: the same
/// host, on [`ClientConfig::tcp_port`] or the same port.
fn tcp_addr(config: &ClientConfig, addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip(), config.tcp_port.unwrap_or(addr.port()))
}

/// Connects and logs in over the transport the policy and the network's
/// memory choose, racing both under [`TransportPolicy::Auto`].
pub(crate) async fn connect(shared: &Arc<Shared>, addr: SocketAddr) -> Result<Established, Error> {
    let config = &shared.config;
    let tcp = tcp_addr(config, addr);
    *lock(&shared.transports.quic_addr) = Some(addr);
    let result = match config.transport {
        TransportPolicy::QuicOnly => connect_quic(shared, addr).await,
        TransportPolicy::TcpOnly => connect_tcp(shared, tcp).await,
        TransportPolicy::Auto => match shared.transports.known(addr) {
            Some(Transport::Tcp) => {
                debug!("TCP worked last on this network: TCP first");
                race(
                    connect_tcp(shared, tcp),
                    connect_quic(shared, addr),
                    config.tcp_delay,
                )
                .await
            }
            _ => {
                race(
                    connect_quic(shared, addr),
                    connect_tcp(shared, tcp),
                    config.tcp_delay,
                )
                .await
            }
        },
    };
    if let Ok(established) = &result {
        let transport = Transport::of(&established.conn);
        if config.transport == TransportPolicy::Auto {
            shared.transports.remember(addr, transport);
        }
        debug!(transport = transport.name(), "logged in");
        let _ = shared.events.send(ClientEvent::Connected(transport));
    }
    result
}

/// The first of two attempts to log in; `second` starts after `delay`, or
/// at once when `first` failed. A refusal no transport changes (a bad
/// token) ends the race at once.
async fn race(
    first: impl Future<Output = Result<Established, Error>>,
    second: impl Future<Output = Result<Established, Error>>,
    delay: Duration,
) -> Result<Established, Error> {
    let first_failed = Notify::new();
    let second_started = std::sync::atomic::AtomicBool::new(false);
    let second = async {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = first_failed.notified() => {}
        }
        second_started.store(true, std::sync::atomic::Ordering::Relaxed);
        second.await
    };
    let raced = |mut established: Established| {
        established.raced = second_started.load(std::sync::atomic::Ordering::Relaxed);
        established
    };
    tokio::pin!(first, second);
    let mut first_error: Option<Error> = None;
    let mut second_error: Option<Error> = None;
    loop {
        tokio::select! {
            r = &mut first, if first_error.is_none() => match r {
                Ok(established) => return Ok(raced(established)),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    debug!(error = %e, "first transport failed");
                    first_failed.notify_one();
                    first_error = Some(e);
                }
            },
            r = &mut second, if second_error.is_none() => match r {
                Ok(established) => return Ok(raced(established)),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    debug!(error = %e, "second transport failed");
                    second_error = Some(e);
                }
            },
        }
        if let (Some(first), Some(_)) = (&first_error, &second_error) {
            return Err(first.clone());
        }
    }
}

/// The streams a client accepts from the server: uni only (ack, delivery,
/// pushes), as on QUIC.
const CLIENT_LIMITS: Limits = Limits { bidi: 0, uni: 4 };

/// Connects over TLS on TCP and logs in once.
pub(crate) async fn connect_tcp(
    shared: &Arc<Shared>,
    addr: SocketAddr,
) -> Result<Established, Error> {
    let config = &shared.config;
    let tls = shared.transports.tls(config)?;
    let name = rustls::pki_types::ServerName::try_from(config.server_name.clone())
        .map_err(|e| Error::Config(format!("server_name: {e}")))?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| Error::Network(format!("connecting over TCP to {addr}: {e}")))?;
    // No Nagle delay, little unsent data in the kernel ahead of a frame.
    qim_proto::transport::tcp::tune(&stream);
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(tls) => Error::Tls(tls.to_string()),
                None => Error::Network(format!("TLS over TCP: {e}")),
            },
        )?;
    if stream.get_ref().1.alpn_protocol() != Some(qim_proto::ALPN) {
        return Err(Error::from_code(
            ErrorCode::VersionTooOld,
            "the server does not speak qim/1".to_owned(),
        ));
    }
    let conn = mux::connect(stream, Role::Client, addr, CLIENT_LIMITS);
    login(shared, &conn).await
}
