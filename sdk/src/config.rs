//! Client settings, with defaults for phones on real networks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::token::TokenProvider;
use crate::transport::TransportPolicy;

/// The device platform reported at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum Platform {
    /// Android phone or tablet.
    Android,
    /// iPhone or iPad.
    Ios,
    /// A desktop application.
    #[default]
    Desktop,
    /// A web client.
    Web,
    /// A backend service acting as a user.
    Server,
}

impl Platform {
    pub(crate) fn to_wire(self) -> qim_proto::v1::Platform {
        use qim_proto::v1::Platform as P;
        match self {
            Platform::Android => P::Android,
            Platform::Ios => P::Ios,
            Platform::Desktop => P::Desktop,
            Platform::Web => P::Web,
            Platform::Server => P::Server,
        }
    }
}

/// How a [`Client`](crate::Client) connects and behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Gateway address, `host:port`.
    pub server: String,
    /// More gateway addresses (other nodes of a cluster), `host:port`. The
    /// client tries `server` first; when a connection attempt fails or a
    /// session is lost, the next attempt goes to the next address in the
    /// list, round and round. Any node of a cluster serves any user. Empty
    /// by default.
    pub fallback_servers: Vec<String>,
    /// Name the server certificate must be valid for.
    pub server_name: String,
    /// PEM certificates of the CAs trusted to sign the server's certificate.
    pub ca_pem: Vec<u8>,
    /// Login token from the application's backend.
    pub token: String,
    /// Where fresh tokens come from when the server refuses this one or it
    /// is about to expire (see [`TokenProvider`]). `None` (the default): a
    /// refused token stops the client.
    pub token_provider: Option<Arc<dyn TokenProvider>>,
    /// Stable id of this installation (1–64 of `[A-Za-z0-9._@-]`).
    pub device_id: String,
    /// Reported platform.
    pub platform: Platform,
    /// The highest inbox seq the app has already processed (persist
    /// [`IncomingMessage::seq`](crate::IncomingMessage::seq) with each message
    /// you store); the server sends everything after it.
    pub resume_from: u64,
    /// Time allowed for a connection and login.
    pub connect_timeout: Duration,
    /// A send without an ack this long makes the client probe the
    /// connection (a ping with the `probe_timeout` deadline): if no pong
    /// comes, the client connects afresh and sends it there (same
    /// `client_msg_id`); if one comes, it waits another `ack_timeout` (a
    /// live connection delivers what it accepted). A send is never written
    /// twice on one connection. Short, because a gateway that crashed after
    /// taking a send leaves the client nothing else to notice: that much
    /// sooner it is back.
    pub ack_timeout: Duration,
    /// A send gives up (and returns [`Error::Timeout`](crate::Error::Timeout))
    /// after this long.
    pub send_timeout: Duration,
    /// A ping without a pong this long means the connection is dead.
    pub pong_timeout: Duration,
    /// How long a probe waits for its pong (at least four round trips)
    /// before the client gives up on the connection and connects afresh.
    /// The client probes when a send waited `ack_timeout` for its ack, and
    /// when the server started validating a new address of the client (a
    /// NAT rebinding): if the server falls back to the old, dead address,
    /// the client would otherwise hear nothing until its next heartbeat.
    pub probe_timeout: Duration,
    /// Traffic quiet this long is followed by one probe (the same deadline).
    /// After a NAT rebinding, a server whose padded PATH_CHALLENGE to the
    /// new address was lost may send nothing more there until the client
    /// sends (anti-amplification), and a client that only receives sends
    /// nothing: without this probe it would hear nothing until its next
    /// heartbeat. One ping after a spell of traffic comes while a phone's
    /// radio is still awake; an idle client does not probe.
    pub quiet_probe_after: Duration,
    /// First reconnect delay; doubles per failed attempt, with jitter.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Sends waiting for an ack at once; further sends wait for room.
    pub max_pending_sends: usize,
    /// Sends written on the connection and not yet answered, at most (also
    /// at most the server's `max_inflight_sends`); the rest wait in the
    /// outbox, in order. Bounds what a lost connection writes again on the
    /// next one and, when the server is slow, keeps the queue on the
    /// device. 0: only the server's bound.
    pub max_sends_in_flight: usize,
    /// Received messages buffered for the app; when full, the client stops
    /// reading and the server holds the rest.
    pub inbox_buffer: usize,
    /// A gap in the inbox seqs that the server keeps confirming empty for
    /// this long is skipped. A send whose store write failed after its seq
    /// was assigned leaves that seq empty forever; without this the messages
    /// after it would be held back for good. Must be well above the
    /// server's store timeout, so a write still in flight is never skipped.
    /// Seqs the server says are settled (expired past its retention, or
    /// never written) are skipped without waiting.
    pub gap_skip_after: Duration,
    /// Directory for the client's own files (the persistent outbox). With
    /// it, sends survive the app being killed and go out on the next start
    /// with the same `client_msg_id`; without it, pending sends live in
    /// memory only. One directory per user and device.
    pub data_dir: Option<PathBuf>,
    /// Resume TLS sessions on reconnect and send the login in 0-RTT when
    /// the server allows it (saves a round trip and the certificate check).
    pub resumption: bool,
    /// After [`Client::network_changed`](crate::Client::network_changed),
    /// how long the migrated connection has to answer a ping before the
    /// client gives up on it and connects afresh.
    pub migration_timeout: Duration,
    /// SQLite file of this device's local store (created if missing):
    /// what `next_message` hands out is kept there for
    /// [`Client::local_history`](crate::Client::local_history) and
    /// [`Client::search`](crate::Client::search) without a connection.
    /// `None` (the default): no local store.
    pub local_store: Option<PathBuf>,
    /// Where the client's UDP sockets come from. `None` (the default):
    /// sockets of the operating system on the wildcard address. Set it to
    /// run the client over another datagram transport, such as an
    /// in-process network in tests.
    pub sockets: Option<Arc<dyn SocketSource>>,
    /// Which transports to use: by default QUIC, raced against TLS on TCP
    /// for networks that block UDP (see [`TransportPolicy`]).
    pub transport: TransportPolicy,
    /// TCP port of the servers' TLS-on-TCP listener; `None` (the default):
    /// the same port as QUIC's.
    pub tcp_port: Option<u16>,
    /// How long QUIC goes first before TCP joins the race.
    pub tcp_delay: Duration,
    /// A QUIC session whose first ping gets no pong this long after login
    /// (the handshake passed, then nothing: partial loss) is given up for
    /// TCP.
    pub quic_stall_timeout: Duration,
    /// On TCP, the first wait before QUIC is tried again in the
    /// background; it doubles after each failed try, up to
    /// `quic_retry_max`.
    pub quic_retry_min: Duration,
    /// The longest wait between two background tries of QUIC.
    pub quic_retry_max: Duration,
    /// On a fallback server, how long before the first server is tried
    /// again in the background (plus up to as much again at random, so
    /// the clients of a node that comes back return spread out); the
    /// session moves back once the first server completes a QUIC
    /// handshake. Zero: stay.
    pub home_return_after: Duration,
}

/// Makes the UDP sockets of a client's QUIC endpoint (see
/// [`ClientConfig::sockets`]). The endpoint's timers follow tokio's clock, so
/// a client on such sockets also runs on a paused clock.
pub trait SocketSource: Send + Sync + std::fmt::Debug {
    /// A new socket, of the IPv6 family when `ipv6`: once when the client
    /// starts, and again on each
    /// [`Client::network_changed`](crate::Client::network_changed).
    fn bind(&self, ipv6: bool) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>>;
}

impl ClientConfig {
    /// The `i`-th address to try (`server` first, then the fallbacks,
    /// cycling).
    pub(crate) fn server_at(&self, i: usize) -> &str {
        match i % (1 + self.fallback_servers.len()) {
            0 => &self.server,
            n => &self.fallback_servers[n - 1],
        }
    }

    /// Settings with defaults for everything but the essentials.
    pub fn new(
        server: impl Into<String>,
        token: impl Into<String>,
        device_id: impl Into<String>,
        ca_pem: Vec<u8>,
    ) -> Self {
        Self {
            server: server.into(),
            fallback_servers: Vec::new(),
            server_name: "localhost".to_owned(),
            ca_pem,
            token: token.into(),
            token_provider: None,
            device_id: device_id.into(),
            platform: Platform::default(),
            resume_from: 0,
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(2),
            send_timeout: Duration::from_secs(60),
            pong_timeout: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(1),
            quiet_probe_after: Duration::from_millis(750),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            max_pending_sends: 4096,
            max_sends_in_flight: 64,
            inbox_buffer: 4096,
            gap_skip_after: Duration::from_secs(30),
            data_dir: None,
            resumption: true,
            migration_timeout: Duration::from_secs(3),
            local_store: None,
            sockets: None,
            transport: TransportPolicy::Auto,
            tcp_port: None,
            tcp_delay: Duration::from_millis(250),
            quic_stall_timeout: Duration::from_secs(2),
            quic_retry_min: Duration::from_secs(30),
            quic_retry_max: Duration::from_secs(600),
            home_return_after: Duration::from_secs(60),
        }
    }
}
