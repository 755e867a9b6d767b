//! The client: a handle the app holds, and a driver task that keeps one
//! session up at a time and reconnects with backoff when it drops.
//!
//! State that must outlive a connection lives in [`Shared`]: the outbox (sends
//! waiting for acks), the receive queue and inbox order, the seq the app has
//! taken. A session's tasks (heartbeat, chat writer, ack reader, delivery
//! reader, ack writer, control reader) only move data between those and the
//! connection's streams; when one fails the whole session is dropped and the
//! driver starts a new one, which resends the outbox and resumes the inbox.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use qim_proto::io::{FramedRecv, FramedSend, read_preamble};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, server_ack, server_control};
use rand::Rng as _;
use tokio::sync::{Notify, Semaphore, broadcast, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::events::{ClientEvent, EVENT_BUFFER, Events};
use crate::heartbeat::{AdaptiveHeartbeat, HeartbeatBounds};
use crate::im::{Event, MessageExtras, Peer, Quote};
use crate::inbox::Inbox;
use crate::outbox::Outbox;
use crate::outbox_store::OutboxStore;
use crate::{ClientConfig, Error};

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connecting or logging in.
    Connecting,
    /// Logged in; sends and deliveries flow.
    Connected,
    /// Waiting before the next attempt (after a drop or a refusal that may
    /// pass).
    Backoff,
    /// Closed by the app, or stopped for good (see [`Client::last_error`]).
    Closed,
}

/// A message received for this user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncomingMessage {
    /// Position in this user's inbox; persist it with the message and pass
    /// it as `resume_from` when the app starts again.
    pub seq: u64,
    /// The server's id of the message.
    pub msg_id: String,
    /// Sender.
    pub from_user: String,
    /// Sender's device.
    pub from_device: String,
    /// The sender's id for the message.
    pub client_msg_id: String,
    /// Application content type.
    pub kind: String,
    /// Body.
    pub body: Vec<u8>,
    /// When the server stored it, milliseconds since the Unix epoch.
    pub server_time_ms: i64,
    /// The conversation it belongs to (the other user, or the group).
    pub conversation: Peer,
    /// Sent by this user (a copy from another of the user's devices).
    pub outgoing: bool,
    /// Set when this entry is a change to earlier state (read on another
    /// device, a recall, an edit), not a chat message.
    pub event: Option<Event>,
    /// The message this one replies to.
    pub reply_to: Option<Quote>,
    /// Users mentioned.
    pub mentions: Vec<String>,
    /// `@all` was used.
    pub mention_all: bool,
    /// This user is mentioned (by name or `@all`): flag it.
    pub mentions_me: bool,
    /// When the sender last edited it; 0 when never.
    pub edited_at_ms: i64,
    /// The sender recalled it; the body is gone.
    pub recalled: bool,
    /// For a read-diffusion group's message: its seq in the group's log
    /// (`seq` is then 0, the message is not in the inbox).
    pub group_seq: u64,
}

impl IncomingMessage {
    pub(crate) fn from_wire(seq: u64, m: v1::Message, me: &str, my_device: &str) -> Self {
        let conversation = Peer::conversation_of(me, &m);
        let outgoing = !me.is_empty() && m.from_user == me;
        let mentions_me =
            !outgoing && (m.mention_all || m.mentions.iter().any(|u| !me.is_empty() && u == me));
        let _ = my_device;
        Self {
            seq,
            msg_id: m.msg_id,
            from_user: m.from_user,
            from_device: m.from_device,
            client_msg_id: m.client_msg_id,
            kind: m.kind,
            body: m.body.to_vec(),
            server_time_ms: m.server_time_ms,
            conversation,
            outgoing,
            event: m.event.and_then(Event::from_wire),
            reply_to: m.reply_to.map(Quote::from_wire),
            mentions: m.mentions,
            mention_all: m.mention_all,
            mentions_me,
            edited_at_ms: m.edited_at_ms,
            recalled: m.recalled,
            group_seq: 0,
        }
    }

    /// A copy of a message this very device sent: kept out of
    /// `next_message` (the app has it from `send`), but acknowledged.
    fn sent_here(&self, my_device: &str) -> bool {
        self.outgoing && self.event.is_none() && self.from_device == my_device
    }
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutgoingMessage {
    /// Recipient user id.
    pub to: String,
    /// Application content type, e.g. `"text"`.
    pub kind: String,
    /// Body (at most the server's `max_body_bytes`).
    pub body: Vec<u8>,
    /// Idempotency key; a fresh one is made when `None`. Sending again with
    /// the same id never stores the message twice.
    pub client_msg_id: Option<String>,
}

/// The server's acknowledgement: the message is durably stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The id the message was sent with.
    pub client_msg_id: String,
    /// The server's id.
    pub msg_id: String,
    /// The message's seq in the recipient's inbox.
    pub seq: u64,
    /// When the server stored it.
    pub server_time_ms: i64,
}

/// Counters for diagnostics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Logins completed (the first and every reconnect).
    pub sessions: u64,
    /// Deliveries dropped as already received.
    pub duplicates_dropped: u64,
    /// Deliveries that were server retransmissions.
    pub retransmits_received: u64,
    /// Sends written more than once.
    pub sends_resent: u64,
    /// Logins sent as 0-RTT early data that the server accepted (resumed
    /// TLS sessions).
    pub zero_rtt_accepted: u64,
    /// Network changes that kept the connection (migrated it to a new
    /// socket) instead of connecting afresh.
    pub migrations: u64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Received messages: inbox order, and the queue the app takes from.
struct Received {
    inbox: Inbox,
    queue: VecDeque<IncomingMessage>,
    /// The gap (by its `after`) the server has confirmed empty, and since
    /// when; skipped after `gap_skip_after`.
    empty_gap: Option<(u64, Instant)>,
}

/// State shared by the handle and the driver, outliving connections.
pub(crate) struct Shared {
    pub(crate) config: ClientConfig,
    endpoint: quinn::Endpoint,
    state: watch::Sender<ConnectionState>,
    last_error: Mutex<Option<Error>>,
    pub(crate) user_id: Mutex<String>,
    /// Signals (typing, presence) for the app; bounded by `MAX_SIGNALS`.
    pub(crate) signals: Mutex<crate::presence::Signals>,
    pub(crate) signal_arrived: Notify,
    /// Order and dedup of each read-diffusion group's log.
    pub(crate) groups: Mutex<std::collections::HashMap<String, Inbox>>,
    outbox: Mutex<Outbox>,
    outbox_changed: Notify,
    send_slots: Arc<Semaphore>,
    received: Mutex<Received>,
    /// Wakes `next_message` when the queue grows or the client closes.
    queue_grew: Notify,
    /// Wakes the delivery reader when the app made room.
    queue_shrank: Notify,
    /// Wakes the gap watcher when a gap was confirmed empty.
    gap_confirmed: Notify,
    /// Highest seq the app has taken: what the device acks.
    taken: AtomicU64,
    taken_changed: Notify,
    closing: watch::Sender<bool>,
    /// The current connection, for rpc requests; `None` between sessions.
    conn: watch::Sender<Option<quinn::Connection>>,
    /// The server's limits from the last Welcome.
    max_body: AtomicU64,
    max_frame: AtomicU64,
    generation: AtomicU64,
    /// Which of the configured servers the next attempt goes to
    /// ([`ClientConfig::server_at`]).
    server: AtomicUsize,
    sessions: AtomicU64,
    duplicates: AtomicU64,
    retransmits: AtomicU64,
    zero_rtt: AtomicU64,
    migrations: AtomicU64,
    /// Outbox and connection events for the app.
    events: broadcast::Sender<ClientEvent>,
    /// The subscription made before anything was published (restored
    /// sends), handed to the first [`Client::events`] call.
    first_events: Mutex<Option<broadcast::Receiver<ClientEvent>>>,
    /// The heartbeat interval, learnt across connections.
    heartbeat: Mutex<AdaptiveHeartbeat>,
    /// Wakes the heartbeat task to ping now (network change, foreground).
    probe: Notify,
    /// Ends the current session (or backoff wait) to connect afresh now.
    reconnect_now: Notify,
    /// The current session's connection and its Welcome session id.
    current: Mutex<Option<(quinn::Connection, String)>>,
    /// This device's copy of what it received, when configured.
    pub(crate) local: Option<crate::local_store::LocalStore>,
}

/// A qim client: one user on one device.
///
/// Owned values in, owned values out, no lifetimes or generics, so it wraps
/// directly into the mobile bindings. Dropping it closes the connection.
pub struct Client {
    shared: Arc<Shared>,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.shared.config.server)
            .field("device_id", &self.shared.config.device_id)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Waits for connection state changes.
#[derive(Debug)]
pub struct StateWatcher {
    rx: watch::Receiver<ConnectionState>,
}

impl StateWatcher {
    /// The next state after the last one seen; `None` once the client is
    /// gone.
    pub async fn changed(&mut self) -> Option<ConnectionState> {
        self.rx.changed().await.ok()?;
        Some(*self.rx.borrow_and_update())
    }

    /// The current state.
    pub fn current(&self) -> ConnectionState {
        *self.rx.borrow()
    }
}

/// A fresh client message id: 128 random bits as hex.
pub fn new_client_msg_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn client_config(config: &ClientConfig) -> Result<quinn::ClientConfig, Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&config.ca_pem) {
        let cert = cert.map_err(|e| Error::Config(format!("ca_pem: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("ca_pem: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Config("ca_pem holds no certificate".into()));
    }
    let provider = Arc::new(qim_proto::tls::crypto_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![qim_proto::ALPN.to_vec()];
    // The endpoint keeps this config (and so rustls's in-memory session
    // store) for the client's life: every reconnect can resume.
    if config.resumption {
        tls.enable_early_data = true;
    } else {
        tls.resumption = rustls::client::Resumption::disabled();
    }
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        // The server opens two uni streams (ack, delivery) and no bidi.
        .max_concurrent_uni_streams(4u32.into())
        .max_concurrent_bidi_streams(0u32.into())
        .keep_alive_interval(None)
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            300_000,
        ))));
    quic.transport_config(Arc::new(transport));
    Ok(quic)
}

/// The wildcard address of one family, port 0.
fn any_addr(ipv6: bool) -> SocketAddr {
    if ipv6 {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

async fn resolve(server: &str) -> Result<SocketAddr, Error> {
    tokio::net::lookup_host(server)
        .await
        .map_err(|e| Error::Network(format!("resolving {server}: {e}")))?
        .next()
        .ok_or_else(|| Error::Network(format!("{server} resolves to no address")))
}

impl Client {
    /// Connects and logs in. Returns once the first login succeeded; after
    /// that the client reconnects by itself whenever the connection drops.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let shared = Self::prepare(config).await?;
        // The servers in order: the first that logs in wins; a refusal
        // that no other node would reverse (bad token) ends it at once.
        let servers = 1 + shared.config.fallback_servers.len();
        let mut first = match resolve(shared.config.server_at(0)).await {
            Ok(addr) => establish(&shared, addr).await,
            Err(e) => Err(e),
        };
        for i in 1..servers {
            match &first {
                Err(e) if e.is_transient() => {
                    debug!(error = %e, "connect failed; trying the next server");
                    shared.server.store(i, Ordering::Relaxed);
                    first = match resolve(shared.config.server_at(i)).await {
                        Ok(addr) => establish(&shared, addr).await,
                        Err(e) => Err(e),
                    };
                }
                _ => break,
            }
        }
        let first = first?;
        let driver = tokio::spawn(drive(Arc::clone(&shared), Some(first)));
        Ok(Client {
            shared,
            driver: Mutex::new(Some(driver)),
        })
    }

    /// Starts a client without waiting for the network: it connects (and
    /// reconnects) in the background, and sends made meanwhile wait in the
    /// outbox. What phones want at app start, when the network may be
    /// down. Fails only on unusable settings or data directory; a refused
    /// login shows as state `Closed` with [`last_error`](Client::last_error).
    pub async fn start(config: ClientConfig) -> Result<Client, Error> {
        let shared = Self::prepare(config).await?;
        let driver = tokio::spawn(drive(Arc::clone(&shared), None));
        Ok(Client {
            shared,
            driver: Mutex::new(Some(driver)),
        })
    }

    async fn prepare(config: ClientConfig) -> Result<Arc<Shared>, Error> {
        if !qim_proto::ids::is_valid_id(&config.device_id) {
            return Err(Error::Config(
                "device_id must be 1-64 of [A-Za-z0-9._@-]".into(),
            ));
        }
        let quic = client_config(&config)?;
        // The address family follows the server's; an unresolvable server
        // is an IPv4 guess here, and the driver resolves again per attempt.
        let ipv6 = match resolve(&config.server).await {
            Ok(addr) => addr.is_ipv6(),
            Err(_) => false,
        };
        let mut endpoint = match &config.sockets {
            Some(sockets) => sockets.bind(ipv6).and_then(|socket| {
                quinn::Endpoint::new_with_abstract_socket(
                    quinn::EndpointConfig::default(),
                    None,
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
            }),
            None => quinn::Endpoint::client(any_addr(ipv6)),
        }
        .map_err(|e| Error::Network(format!("binding UDP: {e}")))?;
        endpoint.set_default_client_config(quic);
        new_shared(config, endpoint)
    }

    /// A client that never connects: only the local store
    /// ([`local_history`](Client::local_history), [`search`](Client::search))
    /// works; network calls fail with [`Error::Closed`]. For reading what
    /// this device received while there is no network or no login.
    pub fn open_offline(config: ClientConfig) -> Result<Client, Error> {
        let endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::UNSPECIFIED, 0).into())
            .map_err(|e| Error::Network(format!("binding UDP: {e}")))?;
        let shared = new_shared(config, endpoint)?;
        shared.state.send_replace(ConnectionState::Closed);
        Ok(Client {
            shared,
            driver: Mutex::new(None),
        })
    }
}

/// The state a client's tasks share, with the outbox restored from
/// `config.data_dir` and the local store opened.
fn new_shared(config: ClientConfig, endpoint: quinn::Endpoint) -> Result<Arc<Shared>, Error> {
    let (events, first_events) = broadcast::channel(EVENT_BUFFER);
    let (store, restored) = match &config.data_dir {
        Some(dir) => {
            let (store, restored) =
                OutboxStore::open(dir).map_err(|e| Error::Storage(e.to_string()))?;
            if !restored.is_empty() {
                info!(
                    pending = restored.len(),
                    "restored unsent messages from the outbox journal"
                );
            }
            (Some(store), restored)
        }
        None => (None, Vec::new()),
    };
    let outbox = Outbox::new(store, restored, events.clone());
    let local = crate::local_store::LocalStore::from_config(&config)?;
    let shared = Arc::new(Shared {
        send_slots: Arc::new(Semaphore::new(config.max_pending_sends.max(1))),
        received: Mutex::new(Received {
            inbox: Inbox::new(config.resume_from),
            queue: VecDeque::new(),
            empty_gap: None,
        }),
        taken: AtomicU64::new(config.resume_from),
        config,
        endpoint,
        state: watch::Sender::new(ConnectionState::Connecting),
        last_error: Mutex::new(None),
        user_id: Mutex::new(String::new()),
        outbox: Mutex::new(outbox),
        outbox_changed: Notify::new(),
        queue_grew: Notify::new(),
        queue_shrank: Notify::new(),
        gap_confirmed: Notify::new(),
        taken_changed: Notify::new(),
        closing: watch::Sender::new(false),
        conn: watch::Sender::new(None),
        groups: Mutex::new(std::collections::HashMap::new()),
        signals: Mutex::new(VecDeque::new()),
        signal_arrived: Notify::new(),
        max_body: AtomicU64::new(u64::MAX),
        max_frame: AtomicU64::new(qim_proto::DEFAULT_MAX_FRAME as u64),
        generation: AtomicU64::new(0),
        server: AtomicUsize::new(0),
        sessions: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        retransmits: AtomicU64::new(0),
        zero_rtt: AtomicU64::new(0),
        migrations: AtomicU64::new(0),
        events,
        first_events: Mutex::new(Some(first_events)),
        heartbeat: Mutex::new(AdaptiveHeartbeat::new(HeartbeatBounds::from_wire(None))),
        probe: Notify::new(),
        reconnect_now: Notify::new(),
        current: Mutex::new(None),
        local,
    });
    Ok(shared)
}

impl Client {
    /// Sends a text message to `to` and waits for the server's ack.
    pub async fn send(&self, to: String, text: String) -> Result<SendReceipt, Error> {
        self.send_message(OutgoingMessage {
            to,
            kind: "text".into(),
            body: text.into_bytes(),
            client_msg_id: None,
        })
        .await
    }

    /// Sends a message and waits until the server has stored it durably.
    ///
    /// While unacknowledged it is written again, with the same
    /// `client_msg_id`, after `ack_timeout` and on every reconnect; the
    /// server stores it once. Returns [`Error::Timeout`] after
    /// `send_timeout`, and a typed [`Error::Rejected`] if the server refuses
    /// it for good.
    pub async fn send_message(&self, message: OutgoingMessage) -> Result<SendReceipt, Error> {
        self.send_message_with(message, MessageExtras::default())
            .await
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.shared.max_frame()
    }

    /// The current connection, once there is one.
    pub(crate) async fn connection(&self) -> Result<quinn::Connection, Error> {
        let mut rx = self.shared.conn.subscribe();
        loop {
            if let Some(conn) = rx.borrow_and_update().clone() {
                return Ok(conn);
            }
            if *self.shared.state.borrow() == ConnectionState::Closed {
                return Err(self.last_error().unwrap_or(Error::Closed));
            }
            let mut state = self.shared.state.subscribe();
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return Err(Error::Closed) },
                _ = state.wait_for(|s| *s == ConnectionState::Closed) => {}
            }
        }
    }

    /// [`send_message`](Client::send_message) with a reply quote and
    /// mentions.
    pub(crate) async fn send_message_with(
        &self,
        message: OutgoingMessage,
        extras: MessageExtras,
    ) -> Result<SendReceipt, Error> {
        let to = Peer::User(message.to.clone());
        self.send_to_peer(to, message, extras).await
    }

    /// Sends `message` to `to` (`message.to` ignored).
    pub(crate) async fn send_to_peer(
        &self,
        to: Peer,
        message: OutgoingMessage,
        extras: MessageExtras,
    ) -> Result<SendReceipt, Error> {
        let shared = &self.shared;
        // What the local store keeps of it once stored.
        let sent = shared
            .local
            .as_ref()
            .map(|_| (to.clone(), message.kind.clone(), message.body.clone()));
        let send = self.check(to, message, extras)?;
        let client_msg_id = send.client_msg_id.clone();
        let deadline = Instant::now() + shared.config.send_timeout;
        let _slot =
            tokio::time::timeout_at(deadline, Arc::clone(&shared.send_slots).acquire_owned())
                .await
                .map_err(|_| Error::Timeout)?
                .map_err(|_| Error::Closed)?;
        let (tx, rx) = oneshot::channel();
        let waiter = lock(&shared.outbox).add(send, Some(tx))?;
        shared.outbox_changed.notify_one();
        // If this future is dropped or times out, this caller's interest in
        // the send ends (and the send with it, if nobody else waits and
        // there is no data directory).
        let guard = Abandon {
            shared,
            client_msg_id: Some(client_msg_id),
            waiter,
        };
        let result = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout),
        };
        if let Ok(receipt) = &result {
            guard.disarm();
            if let (Some(local), Some((to, kind, body))) = (&shared.local, sent) {
                local.record_sent(
                    &self.user_id(),
                    &shared.config.device_id,
                    to,
                    kind,
                    body,
                    receipt,
                );
            }
        }
        result
    }

    /// Queues a message without waiting for the server; returns its
    /// `client_msg_id` once it is queued (with a data directory: saved on
    /// disk, so it is sent even if the app is killed now). Its progress
    /// (`Sending`, `Sent`, `Failed`) comes through [`events`](Client::events).
    /// Works offline; the send goes out on the next connection.
    pub fn enqueue(&self, message: OutgoingMessage) -> Result<String, Error> {
        let shared = &self.shared;
        let to = Peer::User(message.to.clone());
        let send = self.check(to, message, MessageExtras::default())?;
        let client_msg_id = send.client_msg_id.clone();
        {
            let mut outbox = lock(&shared.outbox);
            if outbox.len() >= shared.config.max_pending_sends.max(1) {
                return Err(Error::Rejected {
                    code: ErrorCode::RateLimited,
                    message: "outbox is full (max_pending_sends)".into(),
                    retryable: true,
                });
            }
            outbox.add(send, None)?;
        }
        shared.outbox_changed.notify_one();
        Ok(client_msg_id)
    }

    /// Validates a message and gives it its wire form and id.
    fn check(
        &self,
        to: Peer,
        message: OutgoingMessage,
        extras: MessageExtras,
    ) -> Result<v1::Send, Error> {
        let shared = &self.shared;
        let (Peer::User(to_id) | Peer::Group(to_id)) = &to;
        if *shared.closing.borrow() || *shared.state.borrow() == ConnectionState::Closed {
            return Err(self.last_error().unwrap_or(Error::Closed));
        }
        if message.body.len() as u64 > shared.max_body.load(Ordering::Relaxed) {
            return Err(Error::Rejected {
                code: ErrorCode::MessageTooLarge,
                message: "body exceeds the server's max_body_bytes".into(),
                retryable: false,
            });
        }
        if !qim_proto::ids::is_valid_id(to_id) {
            return Err(Error::Rejected {
                code: ErrorCode::InvalidRecipient,
                message: "recipient is not a valid user id".into(),
                retryable: false,
            });
        }
        let client_msg_id = match message.client_msg_id {
            Some(id) if qim_proto::ids::is_valid_client_msg_id(&id) => id,
            Some(_) => {
                return Err(Error::Rejected {
                    code: ErrorCode::InvalidArgument,
                    message: "client_msg_id must be 1-64 printable ASCII bytes".into(),
                    retryable: false,
                });
            }
            None => new_client_msg_id(),
        };
        let mut send = v1::Send {
            client_msg_id,
            to: Some(to.to_wire()),
            body: message.body.into(),
            kind: message.kind,
            ..Default::default()
        };
        extras.apply(&mut send);
        Ok(send)
    }

    /// Outbox and connection events. The first subscription also sees what
    /// happened since the client started (e.g. the `Sending` of sends
    /// restored from the data directory); later ones start now.
    pub fn events(&self) -> Events {
        let rx = lock(&self.shared.first_events)
            .take()
            .unwrap_or_else(|| self.shared.events.subscribe());
        Events { rx }
    }

    /// Tells the client the device's network changed (Wi-Fi to cellular, a
    /// new address). The client moves its connection to a fresh UDP socket
    /// (QUIC connection migration: same connection and session, nothing
    /// resent, no new handshake) and pings over the new path; if no pong
    /// comes within `migration_timeout`, it drops the connection and
    /// connects afresh with backoff. While disconnected, it retries now
    /// instead of waiting out the backoff.
    pub fn network_changed(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let ipv6 = shared
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false);
        match &shared.config.sockets {
            Some(sockets) => {
                let socket = sockets
                    .bind(ipv6)
                    .map_err(|e| Error::Network(format!("binding a new UDP socket: {e}")))?;
                shared.endpoint.rebind_abstract(socket)
            }
            None => {
                let socket = std::net::UdpSocket::bind(any_addr(ipv6))
                    .map_err(|e| Error::Network(format!("binding a new UDP socket: {e}")))?;
                shared.endpoint.rebind(socket)
            }
        }
        .map_err(|e| Error::Network(format!("rebinding the endpoint: {e}")))?;
        lock(&shared.heartbeat).network_changed();
        if lock(&shared.current).is_some() {
            info!(local = ?shared.endpoint.local_addr().ok(), "network changed; migrating the connection");
            shared.migrations.fetch_add(1, Ordering::Relaxed);
            shared.probe.notify_one();
        } else {
            // Cut a backoff wait short; an attempt under way goes on (no
            // permit is stored that would end its session later).
            shared.reconnect_now.notify_waiters();
        }
        Ok(())
    }

    /// The app moved to the foreground (`true`) or the background. In the
    /// background the heartbeat uses the longest interval the network has
    /// allowed (saving battery); in the foreground at most the server's
    /// suggested one, and coming to the foreground checks the connection at
    /// once (and ends a reconnect backoff).
    pub fn set_foreground(&self, foreground: bool) {
        let shared = &self.shared;
        let was = {
            let mut hb = lock(&shared.heartbeat);
            let was = hb.is_foreground();
            hb.set_foreground(foreground);
            was
        };
        if foreground && !was {
            if lock(&shared.current).is_some() {
                shared.probe.notify_one();
            } else {
                shared.reconnect_now.notify_waiters();
            }
        }
    }

    /// The heartbeat interval in use now.
    pub fn heartbeat_interval(&self) -> Duration {
        lock(&self.shared.heartbeat).interval()
    }

    /// Drops the current connection and connects again at once (a fresh
    /// handshake, resumed when the server allows). Returns when logged in
    /// again, or the error of the attempt.
    pub async fn reconnect(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let before = shared.sessions.load(Ordering::Acquire);
        let mut state = shared.state.subscribe();
        shared.reconnect_now.notify_one();
        let wait = state.wait_for(|s| {
            (*s == ConnectionState::Connected && shared.sessions.load(Ordering::Acquire) > before)
                || *s == ConnectionState::Closed
        });
        match tokio::time::timeout(shared.config.connect_timeout * 2, wait).await {
            Ok(Ok(s)) if *s == ConnectionState::Connected => Ok(()),
            Ok(_) => Err(self.last_error().unwrap_or(Error::Closed)),
            Err(_) => Err(self
                .last_error()
                .unwrap_or_else(|| Error::Network("reconnect timed out".into()))),
        }
    }

    /// The server's id of the current session (from its Welcome); empty
    /// while disconnected. Unchanged by a connection migration.
    pub fn session_id(&self) -> String {
        lock(&self.shared.current)
            .as_ref()
            .map(|(_, id)| id.clone())
            .unwrap_or_default()
    }

    /// The local UDP address the client sends from.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.endpoint.local_addr().ok()
    }

    /// The next received message, in seq order, each exactly once; `None`
    /// after [`close`](Client::close). Taking a message acknowledges it to
    /// the server.
    pub async fn next_message(&self) -> Option<IncomingMessage> {
        let shared = &self.shared;
        loop {
            let notified = shared.queue_grew.notified();
            if let Some(message) = lock(&shared.received).queue.pop_front() {
                shared.taken.fetch_max(message.seq, Ordering::AcqRel);
                shared.taken_changed.notify_one();
                shared.queue_shrank.notify_one();
                if message.sent_here(&shared.config.device_id) {
                    continue;
                }
                if let Some(local) = &shared.local {
                    local.record(&message);
                }
                return Some(message);
            }
            if *shared.state.borrow() == ConnectionState::Closed {
                return None;
            }
            notified.await;
        }
    }

    /// [`next_message`](Client::next_message) with a time limit.
    pub async fn next_message_timeout(&self, limit: Duration) -> Option<IncomingMessage> {
        tokio::time::timeout(limit, self.next_message())
            .await
            .ok()
            .flatten()
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        *self.shared.state.borrow()
    }

    /// Watches state changes.
    pub fn watch_state(&self) -> StateWatcher {
        StateWatcher {
            rx: self.shared.state.subscribe(),
        }
    }

    /// Why the last connection ended or the client stopped, if it did.
    pub fn last_error(&self) -> Option<Error> {
        lock(&self.shared.last_error).clone()
    }

    /// The logged-in user.
    pub fn user_id(&self) -> String {
        lock(&self.shared.user_id).clone()
    }

    /// The highest seq the app has taken with `next_message`.
    pub fn last_taken_seq(&self) -> u64 {
        self.shared.taken.load(Ordering::Acquire)
    }

    /// Sends not yet acknowledged.
    pub fn pending_sends(&self) -> usize {
        lock(&self.shared.outbox).len()
    }

    /// Diagnostic counters.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            sessions: s.sessions.load(Ordering::Relaxed),
            duplicates_dropped: s.duplicates.load(Ordering::Relaxed),
            retransmits_received: s.retransmits.load(Ordering::Relaxed),
            sends_resent: lock(&s.outbox).resent(),
            zero_rtt_accepted: s.zero_rtt.load(Ordering::Relaxed),
            migrations: s.migrations.load(Ordering::Relaxed),
        }
    }

    /// Says goodbye to the server, closes the connection and stops
    /// reconnecting. Pending sends fail with [`Error::Closed`]; messages
    /// already queued can still be taken.
    pub async fn close(&self) {
        self.shared.closing.send_replace(true);
        let driver = lock(&self.driver).take();
        if let Some(driver) = driver {
            let _ = driver.await;
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }
}

/// Removes a send from the outbox unless disarmed (its caller stopped
/// waiting: timed out or dropped the future).
struct Abandon<'a> {
    shared: &'a Shared,
    client_msg_id: Option<String>,
    waiter: u64,
}

impl Abandon<'_> {
    fn disarm(mut self) {
        self.client_msg_id = None;
    }
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.client_msg_id.take() {
            lock(&self.shared.outbox).abandon(&id, self.waiter);
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.closing.send_replace(true);
    }
}

/// A logged-in connection, ready for its session.
struct Established {
    conn: quinn::Connection,
    control_send: FramedSend,
    control_recv: FramedRecv,
    welcome: v1::Welcome,
}

/// Sends Hello on a new control stream and reads the reply.
async fn login(shared: &Shared, conn: &quinn::Connection) -> Result<Established, Error> {
    let config = &shared.config;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::from_connection(&e))?;
    let max_frame = qim_proto::DEFAULT_MAX_FRAME;
    let mut control_send = FramedSend::new(send, StreamKind::Control, max_frame);
    let mut control_recv = FramedRecv::new(recv, max_frame);
    let resume_from = lock(&shared.received).inbox.released();
    let hello = v1::ClientControl {
        kind: Some(v1::client_control::Kind::Hello(v1::Hello {
            token: config.token.clone(),
            device_id: config.device_id.clone(),
            platform: config.platform.to_wire() as i32,
            sdk_version: env!("CARGO_PKG_VERSION").to_owned(),
            resume_from,
        })),
    };
    control_send.send(&hello).await?;
    let reply = match control_recv.next::<v1::ServerControl>().await {
        Ok(reply) => reply,
        // A refusal closes the connection right after; its code is what counts.
        Err(e) => {
            return Err(conn
                .close_reason()
                .map_or_else(|| e.into(), |c| Error::from_connection(&c)));
        }
    };
    match reply.and_then(|r| r.kind) {
        Some(server_control::Kind::Welcome(welcome)) => Ok(Established {
            conn: conn.clone(),
            control_send,
            control_recv,
            welcome,
        }),
        Some(server_control::Kind::Refusal(r)) => Err(Error::from_code(
            ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Unspecified),
            r.message,
        )),
        _ => Err(Error::Network("login: unexpected reply".into())),
    }
}

/// Connects and logs in once. With a resumable TLS session the Hello goes
/// out as 0-RTT early data, in the first flight; if the server rejects the
/// early data, the login is repeated once the handshake completed.
///
/// Only the Hello is ever sent early: the other streams open after the
/// Welcome. A replayed Hello could at most log the same device in again,
/// and the gateway's single-use session tickets refuse replays anyway.
async fn establish(shared: &Arc<Shared>, addr: SocketAddr) -> Result<Established, Error> {
    let config = &shared.config;
    shared.state.send_replace(ConnectionState::Connecting);
    let attempt = async {
        let connecting = shared
            .endpoint
            .connect(addr, &config.server_name)
            .map_err(|e| Error::Config(format!("connect: {e}")))?;
        match connecting.into_0rtt() {
            Ok((conn, mut accepted)) => {
                let early = login(shared, &conn);
                tokio::pin!(early);
                let (ok, result) = tokio::select! {
                    // The handshake completed first: if the server took the
                    // early data, the Hello is on its way; if not, it is lost.
                    ok = &mut accepted => if ok { (true, Some(early.await)) } else { (false, None) },
                    result = &mut early => (accepted.await, Some(result)),
                };
                match (ok, result) {
                    (true, Some(Ok(established))) => {
                        shared.zero_rtt.fetch_add(1, Ordering::Relaxed);
                        Ok(established)
                    }
                    (true, Some(Err(e))) => Err(e),
                    _ => {
                        debug!("0-RTT rejected; logging in again");
                        login(shared, &conn).await
                    }
                }
            }
            Err(connecting) => {
                let conn = connecting.await.map_err(|e| Error::from_connection(&e))?;
                login(shared, &conn).await
            }
        }
    };
    let established = tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .map_err(|_| Error::Network("connect timed out".into()))??;
    let welcome = &established.welcome;
    *lock(&shared.user_id) = welcome.user_id.clone();
    if let Some(limits) = &welcome.limits {
        shared
            .max_body
            .store(u64::from(limits.max_body_bytes), Ordering::Relaxed);
        shared
            .max_frame
            .store(u64::from(limits.max_frame_bytes), Ordering::Relaxed);
    }
    {
        let mut received = lock(&shared.received);
        if welcome.inbox_head < received.inbox.released() {
            // The server has less than this client saw (its data was reset,
            // or resume_from was wrong). Follow the server, or every new
            // message would be dropped as already seen.
            warn!(
                head = welcome.inbox_head,
                released = received.inbox.released(),
                "server inbox is behind this client; resyncing from the server's head"
            );
            received.inbox = Inbox::new(welcome.inbox_head);
            received.queue.retain(|m| m.seq <= welcome.inbox_head);
            shared.taken.fetch_min(welcome.inbox_head, Ordering::AcqRel);
        }
    }
    {
        let bounds = HeartbeatBounds::from_wire(welcome.heartbeat.as_ref());
        let mut hb = lock(&shared.heartbeat);
        if hb.bounds() != bounds {
            // Another server policy: what was learnt under the old one may
            // not hold.
            let foreground = hb.is_foreground();
            *hb = AdaptiveHeartbeat::new(bounds);
            hb.set_foreground(foreground);
        }
    }
    *lock(&shared.current) = Some((established.conn.clone(), welcome.session_id.clone()));
    shared.sessions.fetch_add(1, Ordering::Release);
    shared.state.send_replace(ConnectionState::Connected);
    Ok(established)
}

/// How a session ended.
enum SessionEnd {
    /// The app closed the client.
    Closed,
    /// The server is draining: reconnect within this bound.
    GoAway(Duration),
    /// The connection failed.
    Lost(Error),
    /// The server ended one of the session's streams and did not close the
    /// connection. It ends them only when it closes, so the close and its
    /// code (e.g. REPLACED, which must stop the client) are awaited briefly
    /// before this counts as a network failure (see `closed_by_peer`).
    PeerFinished(&'static str),
    /// The app asked for a fresh connection now.
    Reconnect,
}

/// Keeps a session up until the client closes or can never log in again.
async fn drive(shared: Arc<Shared>, first: Option<Established>) {
    let mut next = first;
    let mut failures: u32 = 0;
    let mut closing = shared.closing.subscribe();
    loop {
        let established = match next.take() {
            Some(e) => Ok(e),
            None => {
                let attempt = async {
                    let addr = resolve(
                        shared
                            .config
                            .server_at(shared.server.load(Ordering::Relaxed)),
                    )
                    .await?;
                    establish(&shared, addr).await
                };
                tokio::select! {
                    result = attempt => result,
                    () = closed(&mut closing) => break,
                }
            }
        };
        let delay = match established {
            Ok(established) => {
                let started = Instant::now();
                let end = run_session(&shared, established).await;
                // A session that dies young counts as a failed attempt, so a
                // server that drops us right after login is not hammered.
                failures = if started.elapsed() >= STABLE_SESSION {
                    0
                } else {
                    failures.saturating_add(1)
                };
                match end {
                    SessionEnd::Closed => break,
                    SessionEnd::Reconnect => {
                        failures = 0;
                        Duration::ZERO
                    }
                    SessionEnd::GoAway(within) => {
                        info!(?within, "server draining; reconnecting");
                        next_server(&shared);
                        jitter(within)
                    }
                    SessionEnd::Lost(e) if e.is_transient() => lost(&shared, e, failures),
                    // No close followed (see `closed_by_peer`).
                    SessionEnd::PeerFinished(stream) => lost(
                        &shared,
                        Error::Network(format!("the server ended the {stream} stream")),
                        failures,
                    ),
                    SessionEnd::Lost(e) => {
                        stop(&shared, e);
                        return;
                    }
                }
            }
            Err(e) if e.is_transient() => {
                debug!(error = %e, failures, "connect failed");
                next_server(&shared);
                let _ = shared.events.send(ClientEvent::ConnectionLost(e.clone()));
                *lock(&shared.last_error) = Some(e);
                failures = failures.saturating_add(1);
                backoff(&shared.config, failures)
            }
            Err(e) => {
                stop(&shared, e);
                return;
            }
        };
        if *closing.borrow() {
            break;
        }
        if delay.is_zero() {
            continue;
        }
        shared.state.send_replace(ConnectionState::Backoff);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.reconnect_now.notified() => {}
            () = closed(&mut closing) => break,
        }
    }
    stop(&shared, Error::Closed);
}

/// Records a connection lost to a transient failure; returns the delay
/// before the next attempt.
fn lost(shared: &Shared, e: Error, failures: u32) -> Duration {
    info!(error = %e, "connection lost; reconnecting");
    next_server(shared);
    if lock(&shared.heartbeat).on_loss(std::time::Instant::now()) {
        info!(
            interval = ?lock(&shared.heartbeat).interval(),
            "connection died while idle; heartbeat interval shortened"
        );
    }
    let _ = shared.events.send(ClientEvent::ConnectionLost(e.clone()));
    *lock(&shared.last_error) = Some(e);
    if failures == 0 {
        Duration::ZERO
    } else {
        backoff(&shared.config, failures)
    }
}

/// Points the next attempt at the next configured server (a no-op with
/// one server).
fn next_server(shared: &Shared) {
    shared.server.fetch_add(1, Ordering::Relaxed);
}

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Ends the client for good with `error`.
fn stop(shared: &Shared, error: Error) {
    *lock(&shared.current) = None;
    if error != Error::Closed {
        warn!(error = %error, "client stopped");
        *lock(&shared.last_error) = Some(error.clone());
    }
    lock(&shared.outbox).fail_all(&error);
    shared.state.send_replace(ConnectionState::Closed);
    shared.queue_grew.notify_waiters();
}

/// Exponential backoff with jitter: a random delay in [d/2, d], where d
/// doubles per failure from `reconnect_min` up to `reconnect_max`.
fn backoff(config: &ClientConfig, failures: u32) -> Duration {
    let d = config
        .reconnect_min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(config.reconnect_max);
    d / 2 + jitter(d / 2)
}

fn jitter(up_to: Duration) -> Duration {
    let ms = up_to.as_millis() as u64;
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::rng().random_range(0..=ms)
    })
}

async fn run_session(shared: &Arc<Shared>, established: Established) -> SessionEnd {
    let Established {
        conn,
        mut control_send,
        control_recv,
        welcome,
    } = established;
    let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
    let max_frame = welcome
        .limits
        .as_ref()
        .map_or(qim_proto::DEFAULT_MAX_FRAME, |l| l.max_frame_bytes as usize);
    *lock(&shared.current) = Some((conn.clone(), welcome.session_id.clone()));
    shared.state.send_replace(ConnectionState::Connected);
    shared.conn.send_replace(Some(conn.clone()));
    info!(user = %welcome.user_id, session = %welcome.session_id, head = welcome.inbox_head, "connected");

    let mut tasks: JoinSet<Result<SessionEnd, Error>> = JoinSet::new();
    let opened = async {
        let (hb_send, hb_recv) = conn.open_bi().await?;
        let chat = conn.open_uni().await?;
        let acks = conn.open_uni().await?;
        Ok::<_, quinn::ConnectionError>((hb_send, hb_recv, chat, acks))
    };
    let (hb_send, hb_recv, chat, acks) = match opened.await {
        Ok(streams) => streams,
        Err(e) => return SessionEnd::Lost(Error::from_connection(&e)),
    };
    tasks.spawn(heartbeat(
        Arc::clone(shared),
        FramedSend::new(hb_send, StreamKind::Heartbeat, max_frame),
        FramedRecv::new(hb_recv, max_frame),
    ));
    tasks.spawn(write_chat(
        Arc::clone(shared),
        FramedSend::new(chat, StreamKind::Chat, max_frame),
        generation,
    ));
    tasks.spawn(write_acks(
        Arc::clone(shared),
        FramedSend::new(acks, StreamKind::Ack, max_frame),
    ));
    tasks.spawn(read_control(control_recv));
    tasks.spawn(accept_server_streams(
        Arc::clone(shared),
        conn.clone(),
        max_frame,
    ));
    tasks.spawn(watch_gaps(Arc::clone(shared), conn.clone()));

    let mut closing = shared.closing.subscribe();
    let end = tokio::select! {
        joined = next_end(&mut tasks) => joined,
        () = shared.reconnect_now.notified() => SessionEnd::Reconnect,
        () = closed(&mut closing) => {
            let bye = v1::ClientControl { kind: Some(v1::client_control::Kind::Bye(v1::Bye {})) };
            let _ = control_send.send(&bye).await;
            control_send.finish();
            conn.close(ErrorCode::NoError.to_quic().into(), b"bye");
            SessionEnd::Closed
        }
    };
    tasks.abort_all();
    let end = match end {
        SessionEnd::PeerFinished(stream) => closed_by_peer(&conn, stream).await,
        SessionEnd::Lost(e) if e.is_transient() => match conn.close_reason() {
            // Whatever failed first, the server's close code says why.
            Some(reason) => SessionEnd::Lost(Error::from_connection(&reason)),
            None => SessionEnd::Lost(e),
        },
        end => end,
    };
    shared.conn.send_replace(None);
    *lock(&shared.current) = None;
    if let SessionEnd::Lost(_)
    | SessionEnd::PeerFinished(_)
    | SessionEnd::GoAway(_)
    | SessionEnd::Reconnect = end
    {
        conn.close(ErrorCode::NoError.to_quic().into(), b"reconnecting");
    }
    end
}

/// How long a stream the server finished may wait for the server's close.
const PEER_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The session's end once the server finished `stream`: its close, which
/// carries the reason, normally arrives right behind (the packets may even
/// be reordered), so it is awaited briefly before the end counts as a
/// plain network failure.
async fn closed_by_peer(conn: &quinn::Connection, stream: &'static str) -> SessionEnd {
    match tokio::time::timeout(PEER_CLOSE_GRACE, conn.closed()).await {
        Ok(reason) => SessionEnd::Lost(Error::from_connection(&reason)),
        Err(_) => SessionEnd::PeerFinished(stream),
    }
}

/// The first session task to end decides how the session ends.
async fn next_end(tasks: &mut JoinSet<Result<SessionEnd, Error>>) -> SessionEnd {
    match tasks.join_next().await {
        Some(Ok(Ok(end))) => end,
        Some(Ok(Err(e))) => SessionEnd::Lost(e),
        Some(Err(e)) => SessionEnd::Lost(Error::Network(format!("session task failed: {e}"))),
        None => SessionEnd::Lost(Error::Network("session ended".into())),
    }
}

/// Pings at the adaptive interval, announcing it to the server, and fails
/// the session when a pong is late. A probe (network change, foreground)
/// pings at once; after a network change the pong must come within
/// `migration_timeout`, or the migrated path is taken as broken.
async fn heartbeat(
    shared: Arc<Shared>,
    mut send: FramedSend,
    mut recv: FramedRecv,
) -> Result<SessionEnd, Error> {
    let mut n = 0u64;
    let mut probing = false;
    loop {
        n += 1;
        let interval = lock(&shared.heartbeat).interval();
        let ping = v1::Ping {
            n,
            sent_at_ms: qim_proto::now_ms(),
            next_within_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
        };
        send.send(&ping).await?;
        let pong_timeout = if probing {
            shared.config.migration_timeout
        } else {
            shared
                .config
                .pong_timeout
                .min(interval.max(Duration::from_millis(500)))
        };
        match tokio::time::timeout(pong_timeout, recv.next::<v1::Pong>()).await {
            Ok(Ok(Some(_))) => lock(&shared.heartbeat).on_pong(std::time::Instant::now()),
            Ok(Ok(None)) => return Ok(SessionEnd::PeerFinished("heartbeat")),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) if probing => {
                return Err(Error::Network(
                    "the connection did not answer over the new network path".into(),
                ));
            }
            Err(_) => return Err(Error::Network("no pong in time".into())),
        }
        if probing {
            debug!("network path validated; connection migrated");
        }
        probing = false;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shared.probe.notified() => probing = true,
        }
    }
}

async fn write_chat(
    shared: Arc<Shared>,
    mut stream: FramedSend,
    generation: u64,
) -> Result<SessionEnd, Error> {
    let ack_timeout = shared.config.ack_timeout;
    loop {
        let notified = shared.outbox_changed.notified();
        let now = Instant::now();
        let (due, wake) = {
            let mut outbox = lock(&shared.outbox);
            let due = outbox.due(generation, now, ack_timeout);
            (due, outbox.next_due())
        };
        if !due.is_empty() {
            for send in &due {
                if let Err(e) = stream.queue(send) {
                    // Only this send fails; the others and the session go on.
                    lock(&shared.outbox).refused(
                        &v1::SendNack {
                            client_msg_id: send.client_msg_id.clone(),
                            code: ErrorCode::MessageTooLarge as i32,
                            retryable: false,
                            message: e.to_string(),
                        },
                        now,
                    );
                }
            }
            stream.flush().await?;
            continue;
        }
        tokio::select! {
            () = notified => {}
            () = sleep_until_opt(wake) => {}
        }
    }
}

/// Resolves once the app closes the client.
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn write_acks(shared: Arc<Shared>, mut stream: FramedSend) -> Result<SessionEnd, Error> {
    let mut acked = 0;
    loop {
        let notified = shared.taken_changed.notified();
        let taken = shared.taken.load(Ordering::Acquire);
        if taken > acked {
            stream
                .send(&v1::DeliveryAck {
                    up_to_seq: taken,
                    seqs: Vec::new(),
                })
                .await?;
            acked = taken;
            continue;
        }
        notified.await;
    }
}

async fn read_control(mut recv: FramedRecv) -> Result<SessionEnd, Error> {
    loop {
        match recv.next::<v1::ServerControl>().await? {
            Some(v1::ServerControl {
                kind: Some(server_control::Kind::GoAway(g)),
            }) => {
                return Ok(SessionEnd::GoAway(Duration::from_millis(u64::from(
                    g.reconnect_within_ms,
                ))));
            }
            Some(v1::ServerControl {
                kind: Some(server_control::Kind::Refusal(r)),
            }) => {
                return Err(Error::from_code(
                    ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Unspecified),
                    r.message,
                ));
            }
            Some(_) => {}
            None => std::future::pending::<()>().await,
        }
    }
}

/// Accepts the server's ack and delivery streams and runs their readers.
/// Each stream's preamble is read in its own task: quinn hands out streams
/// in id order, and one that has not received data yet must not hold up the
/// others.
async fn accept_server_streams(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    max_frame: usize,
) -> Result<SessionEnd, Error> {
    let mut readers: JoinSet<Result<SessionEnd, Error>> = JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.accept_uni() => {
                let stream = stream.map_err(|e| Error::from_connection(&e))?;
                readers.spawn(read_server_stream(Arc::clone(&shared), conn.clone(), stream, max_frame));
            }
            Some(ended) = readers.join_next() => {
                return match ended {
                    Ok(end) => end,
                    Err(e) => Err(Error::Network(format!("reader failed: {e}"))),
                };
            }
        }
    }
}

async fn read_server_stream(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut stream: quinn::RecvStream,
    max_frame: usize,
) -> Result<SessionEnd, Error> {
    let kind = read_preamble(&mut stream).await?;
    let recv = FramedRecv::new(stream, max_frame);
    match kind {
        StreamKind::Ack => read_server_acks(shared, recv).await,
        StreamKind::Delivery => read_deliveries(shared, conn, recv).await,
        other => Err(Error::Network(format!("server opened a {other:?} stream"))),
    }
}

async fn read_server_acks(shared: Arc<Shared>, mut recv: FramedRecv) -> Result<SessionEnd, Error> {
    while let Some(ack) = recv.next::<v1::ServerAck>().await? {
        match ack.kind {
            Some(server_ack::Kind::Ack(ack)) => lock(&shared.outbox).acked(&ack),
            Some(server_ack::Kind::Nack(nack)) => {
                debug!(client_msg_id = %nack.client_msg_id, code = nack.code, "send refused");
                lock(&shared.outbox).refused(&nack, Instant::now());
                shared.outbox_changed.notify_one();
            }
            None => {}
        }
    }
    Ok(SessionEnd::PeerFinished("ack"))
}

async fn read_deliveries(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut recv: FramedRecv,
) -> Result<SessionEnd, Error> {
    let capacity = shared.config.inbox_buffer.max(1);
    loop {
        // Stop reading while the app is behind: the server's window fills
        // and it waits, instead of this queue growing without bound.
        loop {
            let shrank = shared.queue_shrank.notified();
            if lock(&shared.received).queue.len() < capacity {
                break;
            }
            shrank.await;
        }
        let Some(deliver) = recv.next::<v1::Deliver>().await? else {
            return Ok(SessionEnd::PeerFinished("delivery"));
        };
        if let Some(signal) = deliver.signal {
            crate::presence::push_signal(&shared, signal);
            continue;
        }
        if !deliver.group.is_empty() {
            crate::groups::on_deliver(&shared, &conn, deliver).await?;
            continue;
        }
        if deliver.attempt > 0 {
            shared.retransmits.fetch_add(1, Ordering::Relaxed);
        }
        let me = lock(&shared.user_id).clone();
        let message = IncomingMessage::from_wire(
            deliver.seq,
            deliver.message.unwrap_or_default(),
            &me,
            &shared.config.device_id,
        );
        let mut gap = accept(&shared, message);
        while let Some((after, up_to)) = gap {
            // Each pull may return less than asked (frame limit); go on
            // until the gap is closed or the server has nothing more.
            gap = pull_gap(&shared, &conn, after, up_to).await?;
        }
    }
}

/// Hands messages, already in order, to the app's queue.
pub(crate) fn push_ready(shared: &Shared, ready: Vec<IncomingMessage>) {
    if ready.is_empty() {
        return;
    }
    lock(&shared.received).queue.extend(ready);
    shared.queue_grew.notify_waiters();
    shared.queue_grew.notify_one();
}

impl Shared {
    pub(crate) fn max_frame(&self) -> usize {
        usize::try_from(self.max_frame.load(Ordering::Relaxed))
            .unwrap_or(qim_proto::DEFAULT_MAX_FRAME)
    }
}

/// Orders one delivery into the queue; returns a gap to pull, if any.
fn accept(shared: &Shared, message: IncomingMessage) -> Option<(u64, u64)> {
    let mut received = lock(&shared.received);
    let accepted = received.inbox.accept(message);
    if accepted.duplicate {
        shared.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    let grew = !accepted.ready.is_empty();
    received.queue.extend(accepted.ready);
    drop(received);
    if grew {
        shared.queue_grew.notify_waiters();
        shared.queue_grew.notify_one();
    }
    accepted.gap
}

/// Records that the server confirmed seqs `(after, empty_up_to]` empty.
/// Once the same gap has stayed empty for `gap_skip_after`, or at once when
/// the server says those seqs are `settled` (gone for good), skips it and
/// returns the next gap to pull, if any; otherwise returns `None`.
fn note_empty_gap(
    shared: &Shared,
    after: u64,
    empty_up_to: u64,
    settled: bool,
) -> Option<(u64, u64)> {
    let now = Instant::now();
    let mut received = lock(&shared.received);
    let waited = |since_after: u64, since: Instant| {
        since_after == after && now.duration_since(since) >= shared.config.gap_skip_after
    };
    match received.empty_gap {
        _ if settled => {
            info!(
                after,
                up_to = empty_up_to,
                "skipping inbox seqs the server says are gone (expired)"
            );
            skip_gap(shared, received, empty_up_to)
        }
        Some((since_after, since)) if waited(since_after, since) => {
            warn!(
                after,
                up_to = empty_up_to,
                "skipping inbox seqs the server confirms empty"
            );
            skip_gap(shared, received, empty_up_to)
        }
        Some((since_after, _)) if since_after == after => None,
        _ => {
            received.empty_gap = Some((after, now));
            drop(received);
            shared.gap_confirmed.notify_one();
            None
        }
    }
}

/// Gives up on the seqs up to `empty_up_to`, releases what is then in
/// order, and returns the next gap to pull, if any.
fn skip_gap(
    shared: &Shared,
    mut received: MutexGuard<'_, Received>,
    empty_up_to: u64,
) -> Option<(u64, u64)> {
    received.empty_gap = None;
    let ready = received.inbox.skip_to(empty_up_to);
    let grew = !ready.is_empty();
    received.queue.extend(ready);
    let next = received.inbox.gap();
    drop(received);
    if grew {
        shared.queue_grew.notify_waiters();
        shared.queue_grew.notify_one();
    }
    next
}

/// Pulls a gap again once it has been confirmed empty for
/// `gap_skip_after`, so a gap is skipped even when nothing else arrives.
async fn watch_gaps(shared: Arc<Shared>, conn: quinn::Connection) -> Result<SessionEnd, Error> {
    loop {
        let confirmed = shared.gap_confirmed.notified();
        let due = lock(&shared.received)
            .empty_gap
            .map(|(_, since)| since + shared.config.gap_skip_after);
        match due {
            Some(due) => tokio::time::sleep_until(due).await,
            None => {
                confirmed.await;
                continue;
            }
        }
        let mut gap = lock(&shared.received).inbox.gap();
        while let Some((after, up_to)) = gap {
            gap = pull_gap(&shared, &conn, after, up_to).await?;
        }
        // Forget a confirmation that no longer matches the open gap.
        let mut received = lock(&shared.received);
        let current = received.inbox.gap().map(|(after, _)| after);
        if received.empty_gap.map(|(after, _)| after) != current {
            received.empty_gap = None;
        }
    }
}

/// Fetches missing seqs `(after, up_to]` over an rpc stream; returns the
/// gap still open afterwards, if the pull made progress.
async fn pull_gap(
    shared: &Shared,
    conn: &quinn::Connection,
    after: u64,
    up_to: u64,
) -> Result<Option<(u64, u64)>, Error> {
    debug!(after, up_to, "pulling gap");
    let max_frame = usize::try_from(shared.max_frame.load(Ordering::Relaxed))
        .unwrap_or(qim_proto::DEFAULT_MAX_FRAME);
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::from_connection(&e))?;
    let mut send = FramedSend::new(send, StreamKind::Rpc, max_frame);
    let mut recv = FramedRecv::new(recv, max_frame);
    let limit = u32::try_from(up_to - after).unwrap_or(u32::MAX).min(500);
    send.send(&v1::RpcRequest {
        kind: Some(v1::rpc_request::Kind::Sync(v1::SyncRequest {
            after_seq: after,
            limit,
        })),
    })
    .await?;
    send.finish();
    match recv.next::<v1::RpcResponse>().await?.and_then(|r| r.kind) {
        Some(v1::rpc_response::Kind::Sync(sync)) => {
            // The server has nothing in (after, first returned - 1], or
            // nothing at all after `after`: the gap is empty for now.
            let empty_up_to = match sync.entries.first() {
                Some(first) if first.seq > after + 1 => Some((first.seq - 1).min(up_to)),
                Some(_) => None,
                None => Some(up_to),
            };
            if let Some(empty_up_to) = empty_up_to {
                // Settled seqs are gone for good (expired, or never
                // written): no point waiting for them to fill.
                let settled = sync.settled_through >= empty_up_to;
                if let Some(gap) = note_empty_gap(shared, after, empty_up_to, settled) {
                    return Ok(Some(gap));
                }
            }
            let mut gap = None;
            let progressed = !sync.entries.is_empty();
            let me = lock(&shared.user_id).clone();
            for entry in sync.entries {
                let message = IncomingMessage::from_wire(
                    entry.seq,
                    entry.message.unwrap_or_default(),
                    &me,
                    &shared.config.device_id,
                );
                gap = accept(shared, message);
            }
            Ok(if progressed { gap } else { None })
        }
        Some(v1::rpc_response::Kind::Error(e)) => Err(Error::from_code(
            ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            e.message,
        )),
        _ => Err(Error::Network("empty or unexpected sync response".into())),
    }
}
