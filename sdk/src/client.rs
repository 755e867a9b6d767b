//! The public API: [`Client`], the handle the app holds, and its methods.
//! The handle owns the driver task (`driver`) and reads and writes the
//! state shared with it (`shared`); feature modules (`im`, `groups`,
//! `contacts`, `presence`) add methods built on [`Client::rpc`] and
//! [`Client::send_to_peer`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qim_proto::v1::{self, ErrorCode, rpc_request, rpc_response};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::connect::{bind_endpoint, client_config, establish, rebind, resolve};
use crate::driver::drive;
use crate::events::Events;
use crate::local_store::LocalStore;
use crate::message::{
    HistoryAnchor, HistoryPage, IncomingMessage, MessageExtras, OutgoingMessage, Peer, SendReceipt,
    Signal, new_client_msg_id,
};
use crate::rpc;
use crate::shared::{ConnectionState, Shared, Stats};
use crate::sync::lock;
use crate::{ClientConfig, Error};

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

impl Client {
    /// The transport the current session runs on (`None` between
    /// sessions): for the app to show "QUIC" or "TCP".
    pub fn transport(&self) -> Option<crate::Transport> {
        lock(&self.shared.current)
            .as_ref()
            .map(|(conn, _)| crate::transport::Transport::of(conn))
    }

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
        // A refused token with a provider: its fresh token, a few times.
        for _ in 0..3 {
            match &first {
                Err(e) if crate::token::renew(&shared, e).await => {
                    let server = shared.server.load(Ordering::Relaxed);
                    first = match resolve(shared.config.server_at(server)).await {
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
        let endpoint = bind_endpoint(&config, ipv6, Some(quic))?;
        Shared::new(config, endpoint)
    }

    /// A client that never connects: only the local store
    /// ([`local_history`](Client::local_history), [`search`](Client::search))
    /// works; network calls fail with [`Error::Closed`]. For reading what
    /// this device received while there is no network or no login.
    pub fn open_offline(config: ClientConfig) -> Result<Client, Error> {
        let endpoint = bind_endpoint(&config, false, None)?;
        let shared = Shared::new(config, endpoint)?;
        shared.state.send_replace(ConnectionState::Closed);
        Ok(Client {
            shared,
            driver: Mutex::new(None),
        })
    }
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
    /// `client_msg_id`, on every reconnect (an `ack_timeout` without its
    /// ack probes the connection and reconnects if it does not answer);
    /// the server stores it once. Returns [`Error::Timeout`] after
    /// `send_timeout`, and a typed [`Error::Rejected`] if the server refuses
    /// it for good.
    pub async fn send_message(&self, message: OutgoingMessage) -> Result<SendReceipt, Error> {
        self.send_message_with(message, MessageExtras::default())
            .await
    }

    /// The settings the client was made with.
    pub(crate) fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// The state shared with the driver: the media streams need the
    /// connection itself and its changes, not one rpc exchange.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// One request on its own rpc stream of the current connection
    /// ([`rpc::exchange`]), waiting for a connection up to `send_timeout`
    /// and for the response as long again.
    pub(crate) async fn rpc(
        &self,
        request: rpc_request::Kind,
    ) -> Result<rpc_response::Kind, Error> {
        let timeout = self.shared.config.send_timeout;
        let conn = tokio::time::timeout(timeout, self.shared.connection())
            .await
            .map_err(|_| Error::Timeout)??;
        tokio::time::timeout(
            timeout,
            rpc::exchange(&conn, self.shared.max_frame(), request),
        )
        .await
        .map_err(|_| Error::Timeout)?
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
        rebind(&shared.config, &shared.endpoint)?;
        lock(&shared.heartbeat).network_changed();
        if lock(&shared.current).is_some() {
            info!(local = ?shared.endpoint.local_addr().ok(), "network changed; migrating the connection");
            shared.migrations.fetch_add(1, Ordering::Relaxed);
            shared.request_probe(shared.config.migration_timeout);
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
                shared.request_probe(shared.config.migration_timeout);
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

    /// The next signal (typing, presence), waiting up to `limit`. Signals
    /// reach online sessions only and are never stored or resent; at most
    /// the newest 1024 wait here.
    pub async fn next_signal(&self, limit: Duration) -> Option<Signal> {
        let shared = &self.shared;
        tokio::time::timeout(limit, async {
            loop {
                let arrived = shared.signal_arrived.notified();
                if let Some(signal) = lock(&shared.signals).pop_front() {
                    return signal;
                }
                arrived.await;
            }
        })
        .await
        .ok()
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        *self.shared.state.borrow()
    }

    /// While waiting to reconnect ([`ConnectionState::Backoff`]), how long
    /// until the next attempt starts; `None` in any other state.
    pub fn next_attempt_in(&self) -> Option<Duration> {
        if self.state() != ConnectionState::Backoff {
            return None;
        }
        let at = (*lock(&self.shared.next_attempt))?;
        Some(at.saturating_duration_since(Instant::now()))
    }

    /// Watches state changes.
    pub fn watch_state(&self) -> StateWatcher {
        StateWatcher {
            rx: self.shared.state.subscribe(),
        }
    }

    /// Why the last connection ended or the client stopped, if it did.
    pub fn last_error(&self) -> Option<Error> {
        self.shared.last_error()
    }

    /// The logged-in user.
    pub fn user_id(&self) -> String {
        self.shared.user_id()
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
        self.shared.stats()
    }

    /// A page of a conversation from this device's local store, without
    /// the server (works offline): like [`history`](Client::history), over
    /// the messages this device received. [`Error::Config`] when no
    /// [`ClientConfig::local_store`] is set.
    pub fn local_history(
        &self,
        conversation: Peer,
        anchor: HistoryAnchor,
        forward: bool,
        limit: u32,
    ) -> Result<HistoryPage, Error> {
        self.local_store()?
            .history(&conversation, anchor, forward, limit)
    }

    /// Received messages whose text holds every word of `query` (full-text,
    /// case-insensitive, whole words), newest first, from this device's
    /// local store (works offline). Recalled and deleted messages are never
    /// found. [`Error::Config`] when no [`ClientConfig::local_store`] is set.
    pub fn search(&self, query: &str, limit: u32) -> Result<Vec<IncomingMessage>, Error> {
        self.local_store()?.search(query, limit)
    }

    fn local_store(&self) -> Result<&LocalStore, Error> {
        self.shared
            .local
            .as_ref()
            .ok_or_else(|| Error::Config("no local_store configured".into()))
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
