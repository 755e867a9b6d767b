//! The state a client's handle and its driver share, outliving
//! connections: the outbox (sends waiting for acks), the receive queue and
//! inbox order, the seq the app has taken, the signals, the counters, and
//! the current connection.
//!
//! Only the core reads and writes it (`client`, `connect`, `driver`,
//! `receive`); feature modules go through [`Client`](crate::Client)'s
//! methods.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, broadcast, watch};
use tracing::{debug, info};

use crate::events::{ClientEvent, EVENT_BUFFER};
use crate::heartbeat::{AdaptiveHeartbeat, HeartbeatBounds};
use crate::inbox::Inbox;
use crate::local_store::LocalStore;
use crate::message::{IncomingMessage, Signal};
use crate::outbox::Outbox;
use crate::outbox_store::OutboxStore;
use crate::sync::lock;
use crate::{ClientConfig, Error};

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connecting or logging in.
    Connecting,
    /// Logged in; sends and deliveries flow.
    Connected,
    /// Waiting before the next attempt (after a drop or a refusal that may
    /// pass).
    Backoff,
    /// Closed by the app, or stopped for good (see
    /// [`Client::last_error`](crate::Client::last_error)).
    Closed,
}

/// Counters for diagnostics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
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

/// A probe's deadline on `conn`: `probe_timeout`, and at least four
/// round trips.
pub(crate) fn probe_deadline(
    config: &ClientConfig,
    conn: &qim_proto::transport::Connection,
) -> Duration {
    config.probe_timeout.max(conn.rtt() * 4)
}

/// Signals kept for the app at most; the oldest is dropped beyond.
pub(crate) const MAX_SIGNALS: usize = 1024;

/// Received messages: inbox order, and the queue the app takes from.
pub(crate) struct Received {
    /// Order, dedup and the gap-skip clock of the user's inbox.
    pub(crate) inbox: Inbox,
    /// In order, waiting for [`Client::next_message`](crate::Client::next_message).
    pub(crate) queue: VecDeque<IncomingMessage>,
}

/// State shared by the handle and the driver, outliving connections.
pub(crate) struct Shared {
    pub(crate) config: ClientConfig,
    /// The client's one QUIC endpoint (see `connect::bind_endpoint`).
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) last_error: Mutex<Option<Error>>,
    pub(crate) user_id: Mutex<String>,
    /// The login token in use: the configured one, then the provider's.
    pub(crate) token: Mutex<String>,
    /// Signals (typing, presence) for the app; bounded by `MAX_SIGNALS`.
    pub(crate) signals: Mutex<VecDeque<Signal>>,
    pub(crate) signal_arrived: Notify,
    /// Order and dedup of each read-diffusion group's log.
    pub(crate) groups: Mutex<HashMap<String, Inbox>>,
    pub(crate) outbox: Mutex<Outbox>,
    pub(crate) outbox_changed: Notify,
    /// Wakes everyone waiting for sends in flight to be answered (an ack
    /// or a refusal arrived).
    pub(crate) outbox_answered: Notify,
    /// Set while the session drains before a planned move (the way back
    /// to the first server): nothing new is written on it.
    pub(crate) moving: std::sync::atomic::AtomicBool,
    pub(crate) send_slots: Arc<Semaphore>,
    pub(crate) received: Mutex<Received>,
    /// Wakes `next_message` when the queue grows or the client closes.
    pub(crate) queue_grew: Notify,
    /// Wakes the delivery reader when the app made room.
    pub(crate) queue_shrank: Notify,
    /// Wakes the gap watcher when a gap was confirmed empty.
    pub(crate) gap_confirmed: Notify,
    /// Highest seq the app has taken: what the device acks.
    pub(crate) taken: AtomicU64,
    pub(crate) taken_changed: Notify,
    pub(crate) closing: watch::Sender<bool>,
    /// The current connection, for rpc requests; `None` between sessions.
    pub(crate) conn: watch::Sender<Option<qim_proto::transport::Connection>>,
    /// The server's limits from the last Welcome.
    pub(crate) max_body: AtomicU64,
    pub(crate) max_frame: AtomicU64,
    /// The server's whole limits from the last Welcome (media among them).
    pub(crate) limits: Mutex<qim_proto::v1::Limits>,
    pub(crate) generation: AtomicU64,
    /// Which of the configured servers the next attempt goes to
    /// ([`ClientConfig::server_at`]).
    pub(crate) server: AtomicUsize,
    pub(crate) sessions: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) retransmits: AtomicU64,
    pub(crate) zero_rtt: AtomicU64,
    pub(crate) migrations: AtomicU64,
    /// Outbox and connection events for the app.
    pub(crate) events: broadcast::Sender<ClientEvent>,
    /// The subscription made before anything was published (restored
    /// sends), handed to the first [`Client::events`](crate::Client::events) call.
    pub(crate) first_events: Mutex<Option<broadcast::Receiver<ClientEvent>>>,
    /// The heartbeat interval, learnt across connections.
    pub(crate) heartbeat: Mutex<AdaptiveHeartbeat>,
    /// Wakes the heartbeat task to ping now (see [`Shared::request_probe`]).
    pub(crate) probe: Notify,
    /// The deadline of the probe asked for and not yet started.
    pub(crate) probe_deadline: Mutex<Option<Duration>>,
    /// PATH_CHALLENGE frames received on the current connection so far
    /// (see [`Shared::check_path`]).
    pub(crate) path_challenges: AtomicU64,
    /// Pongs received on the current connection: each proves it alive.
    pub(crate) pongs: watch::Sender<u64>,
    /// Traffic on the session (a delivery read, an ack written): the path
    /// watch looks at the connection for a while after it.
    pub(crate) traffic: Notify,
    /// Ends the current session (or backoff wait) to connect afresh now.
    pub(crate) reconnect_now: Notify,
    /// The transport choice's memory (see `transport`).
    pub(crate) transports: crate::transport::Transports,
    /// The current session's connection and its Welcome session id.
    pub(crate) current: Mutex<Option<(qim_proto::transport::Connection, String)>>,
    /// This device's copy of what it received, when configured.
    pub(crate) local: Option<LocalStore>,
    /// When the next connection attempt starts, while in
    /// [`ConnectionState::Backoff`] (for apps showing "retrying in 3 s").
    pub(crate) next_attempt: Mutex<Option<tokio::time::Instant>>,
}

impl Shared {
    /// The state a client's tasks share, with the outbox restored from
    /// `config.data_dir` and the local store opened.
    pub(crate) fn new(
        config: ClientConfig,
        endpoint: quinn::Endpoint,
    ) -> Result<Arc<Shared>, Error> {
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
        let local = LocalStore::from_config(&config)?;
        Ok(Arc::new(Shared {
            send_slots: Arc::new(Semaphore::new(config.max_pending_sends.max(1))),
            received: Mutex::new(Received {
                inbox: Inbox::new(config.resume_from, config.gap_skip_after),
                queue: VecDeque::new(),
            }),
            taken: AtomicU64::new(config.resume_from),
            token: Mutex::new(config.token.clone()),
            config,
            endpoint,
            state: watch::Sender::new(ConnectionState::Connecting),
            last_error: Mutex::new(None),
            user_id: Mutex::new(String::new()),
            outbox: Mutex::new(outbox),
            outbox_changed: Notify::new(),
            outbox_answered: Notify::new(),
            moving: std::sync::atomic::AtomicBool::new(false),
            queue_grew: Notify::new(),
            queue_shrank: Notify::new(),
            gap_confirmed: Notify::new(),
            taken_changed: Notify::new(),
            closing: watch::Sender::new(false),
            conn: watch::Sender::new(None),
            groups: Mutex::new(HashMap::new()),
            signals: Mutex::new(VecDeque::new()),
            signal_arrived: Notify::new(),
            max_body: AtomicU64::new(u64::MAX),
            max_frame: AtomicU64::new(qim_proto::DEFAULT_MAX_FRAME as u64),
            limits: Mutex::new(qim_proto::v1::Limits::default()),
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
            probe_deadline: Mutex::new(None),
            path_challenges: AtomicU64::new(0),
            pongs: watch::Sender::new(0),
            traffic: Notify::new(),
            reconnect_now: Notify::new(),
            transports: crate::transport::Transports::default(),
            current: Mutex::new(None),
            local,
            next_attempt: Mutex::new(None),
        }))
    }

    /// Asks the heartbeat task to ping now and to drop the connection if no
    /// pong comes within `deadline` (the longer one when two probes are
    /// asked for before it starts).
    pub(crate) fn request_probe(&self, deadline: Duration) {
        {
            let mut pending = lock(&self.probe_deadline);
            *pending = Some(pending.map_or(deadline, |d| d.max(deadline)));
        }
        self.probe.notify_one();
    }

    /// The deadline of the probe asked for, if any, taking it.
    pub(crate) fn take_probe(&self) -> Option<Duration> {
        lock(&self.probe_deadline).take()
    }

    /// Probes `conn` when the server started validating a new address of
    /// this client since the last check (a PATH_CHALLENGE arrived: the
    /// server saw it at a new address, a NAT rebinding). Should that
    /// validation fail, the server falls back to the old address, which is
    /// dead; a client that only receives would not notice until its next
    /// heartbeat. The probe's ping, sent from the new address, moves the
    /// server back to it, and if no pong comes the client connects afresh.
    /// Called on every frame the server sends (deliveries, acks, pongs),
    /// and by the driver's path watch for a while after traffic: a failed
    /// validation can leave the client hearing nothing at all.
    pub(crate) fn check_path(&self, conn: &qim_proto::transport::Connection) {
        let seen = conn.path_challenges();
        if seen > self.path_challenges.swap(seen, Ordering::AcqRel) {
            debug!("the server is validating a new address of ours; probing");
            self.request_probe(probe_deadline(&self.config, conn));
        }
    }

    /// The largest frame the server accepts (from its last Welcome).
    pub(crate) fn max_frame(&self) -> usize {
        usize::try_from(self.max_frame.load(Ordering::Relaxed))
            .unwrap_or(qim_proto::DEFAULT_MAX_FRAME)
    }

    /// The logged-in user ("" before the first login).
    pub(crate) fn user_id(&self) -> String {
        lock(&self.user_id).clone()
    }

    /// Why the last connection ended or the client stopped, if it did.
    pub(crate) fn last_error(&self) -> Option<Error> {
        lock(&self.last_error).clone()
    }

    /// Wakes whoever waits in `next_message` after the queue grew.
    pub(crate) fn queue_grew(&self) {
        self.queue_grew.notify_waiters();
        self.queue_grew.notify_one();
    }

    /// The current connection, once there is one; fails once the client
    /// is closed.
    pub(crate) async fn connection(&self) -> Result<qim_proto::transport::Connection, Error> {
        let mut rx = self.conn.subscribe();
        loop {
            if let Some(conn) = rx.borrow_and_update().clone() {
                return Ok(conn);
            }
            if *self.state.borrow() == ConnectionState::Closed {
                return Err(self.last_error().unwrap_or(Error::Closed));
            }
            let mut state = self.state.subscribe();
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return Err(Error::Closed) },
                _ = state.wait_for(|s| *s == ConnectionState::Closed) => {}
            }
        }
    }

    /// The diagnostic counters now.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            sessions: self.sessions.load(Ordering::Relaxed),
            duplicates_dropped: self.duplicates.load(Ordering::Relaxed),
            retransmits_received: self.retransmits.load(Ordering::Relaxed),
            sends_resent: lock(&self.outbox).resent(),
            zero_rtt_accepted: self.zero_rtt.load(Ordering::Relaxed),
            migrations: self.migrations.load(Ordering::Relaxed),
        }
    }
}
