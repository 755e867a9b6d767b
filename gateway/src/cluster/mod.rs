//! Running as one node of a cluster: registration, heartbeats, routes in
//! Redis, and cross-node delivery.
//!
//! With `store.redis` set, a node:
//! - registers in the node registry when it binds, renews the entry every
//!   third of `cluster.node_ttl_ms` with its load figures, marks itself
//!   draining when shutdown starts, and deregisters (and deletes its queue)
//!   when its sessions are gone. A node that dies simply stops renewing: it
//!   leaves the registry one TTL later.
//! - writes a route for every session when it logs in, before the session
//!   reads its inbox head, refreshes its sessions' routes every third of
//!   `cluster.route_ttl_ms`, and removes a session's route when it ends.
//!   A route that replaced a live one on another node sends that node a
//!   kick, which ends the older session with REPLACED; a revocation of a
//!   user's tokens sends the nodes of the user's sessions a revocation,
//!   which ends those of older tokens with TOKEN_REVOKED.
//! - after every store commit, hands each new message to the nodes that
//!   hold a session of its recipient (their queues in Redis), through a
//!   bounded channel and one forwarder task that batches route lookups and
//!   queue writes.
//! - reads its own queue and publishes what arrives to the local feeds,
//!   acknowledging the entries after that.
//!
//! # Why nothing is lost
//! A session writes its route before it reads the inbox head; a sender's
//! node looks routes up after the message is durable. So either the
//! lookup sees the route (and the hand-off pushes the message live) or the
//! route was written after the commit, and the head the session reads
//! already includes the message. A hand-off that is lost anyway (Redis
//! down, queue trimmed, node killed before it acknowledged) only delays the
//! push: the next message to the inbox raises the head past the gap and the
//! delivery task reads the gap from the store, and a reconnecting client
//! resumes from its last seq. Duplicated hand-offs are ignored by the feed
//! (and by the SDK, which drops seqs it has).
//!
//! # Bounds
//! The forwarder channel holds [`FORWARD_QUEUE`] messages; when it is
//! full, the chat streams that store messages wait (backpressure to the
//! senders). Each node's Redis queue is trimmed near
//! `cluster.queue_max_len`.

pub mod strategy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qim_proto::v1::ErrorCode;
use qim_storage::redis::nodes::NodeInfo;
use qim_storage::redis::presence::Presence;
use qim_storage::redis::queue::{Handoff, QueueConfig};
use qim_storage::redis::routes::RouteRemoval;
use qim_storage::redis::signals::Signal;
use qim_storage::redis::{Redis, RedisConfig};
use qim_storage::{StoreError, StoredMessage};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::mutex::lock;
use crate::route::{DevicePolicy, Routes};
use strategy::{Picker, Strategy};

/// Messages waiting for the forwarder; when full, storing chat streams
/// wait.
pub const FORWARD_QUEUE: usize = 4096;

/// Messages the forwarder handles per round (one route lookup and one
/// queue write each).
const FORWARD_BATCH: usize = 512;

/// Entries and signals from other nodes waiting for the fan-out; when
/// full, the readers wait (the queue's entries stay in Redis meanwhile).
const INBOUND_QUEUE: usize = 1024;

/// Hand-offs read from the node's queue per round.
const READ_BATCH: u64 = 512;

/// How long a queue read blocks waiting for entries.
const READ_BLOCK_MS: u64 = 1_000;

/// How a node is known: its id and where clients and route lookups reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Node id in the registry.
    pub id: String,
    /// QUIC address for clients.
    pub addr: String,
    /// HTTP address of the route endpoint.
    pub route_addr: String,
    /// TLS-on-TCP address for clients whose network blocks UDP; empty
    /// when the node serves QUIC only.
    pub tcp_addr: String,
}

/// `host:port` for a bound address: the address itself, or the public name
/// when bound to all interfaces.
fn reachable(bound: SocketAddr, public_name: &str) -> String {
    if bound.ip().is_unspecified() {
        format!("{public_name}:{}", bound.port())
    } else {
        bound.to_string()
    }
}

/// This node's identity from the configuration and the bound addresses.
pub fn identity(config: &Config, quic: SocketAddr, route: SocketAddr) -> Identity {
    let c = &config.cluster;
    let addr = c
        .advertise
        .clone()
        .unwrap_or_else(|| reachable(quic, &config.server.public_name));
    let route_addr = c
        .route_advertise
        .clone()
        .unwrap_or_else(|| reachable(route, &config.server.public_name));
    let id = c.node_id.clone().unwrap_or_else(|| {
        addr.chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() || "._@-".contains(ch) {
                    ch
                } else {
                    '-'
                }
            })
            .take(qim_proto::ids::MAX_ID_LEN)
            .collect()
    });
    Identity {
        id,
        addr,
        route_addr,
        tcp_addr: String::new(),
    }
}

impl Identity {
    /// This identity with the TLS-on-TCP address clients are told.
    pub fn with_tcp(mut self, tcp: Option<SocketAddr>, config: &Config) -> Identity {
        self.tcp_addr = tcp.map_or_else(String::new, |a| reachable(a, &config.server.public_name));
        self
    }
}

/// This node's membership of a cluster.
pub(crate) struct Cluster {
    redis: Redis,
    pub(crate) me: Identity,
    started_ms: i64,
    node_ttl_ms: i64,
    route_ttl_ms: i64,
    queue: QueueConfig,
    picker: Mutex<Picker>,
    forward: mpsc::Sender<Arc<StoredMessage>>,
    forward_rx: Mutex<Option<mpsc::Receiver<Arc<StoredMessage>>>>,
    draining: AtomicBool,
}

fn now_ms() -> i64 {
    qim_proto::now_ms()
}

impl Cluster {
    /// Connects to Redis and registers this node, when `store.redis` is set.
    pub(crate) async fn join(
        config: &Config,
        me: Identity,
    ) -> Result<Option<Arc<Cluster>>, StoreError> {
        let Some(url) = &config.store.redis else {
            return Ok(None);
        };
        let c = &config.cluster;
        let mut redis_config = RedisConfig::new(url.clone());
        redis_config.prefix = c.key_prefix.clone();
        let redis = Redis::connect(&redis_config).await?;
        let strategy: Strategy = c.strategy.parse().map_err(StoreError::Invalid)?;
        let (forward, forward_rx) = mpsc::channel(FORWARD_QUEUE);
        let cluster = Cluster {
            redis,
            me,
            started_ms: now_ms(),
            node_ttl_ms: c.node_ttl_ms as i64,
            route_ttl_ms: c.route_ttl_ms as i64,
            queue: QueueConfig {
                max_len: c.queue_max_len,
                ..QueueConfig::default()
            },
            picker: Mutex::new(Picker::new(strategy)),
            forward,
            forward_rx: Mutex::new(Some(forward_rx)),
            draining: AtomicBool::new(false),
        };
        cluster
            .redis
            .heartbeat(&cluster.info(0, 0), now_ms(), cluster.node_ttl_ms)
            .await?;
        info!(node = %cluster.me.id, addr = %cluster.me.addr, strategy = strategy.name(), "joined the cluster");
        Ok(Some(Arc::new(cluster)))
    }

    fn info(&self, connections: u64, online_users: u64) -> NodeInfo {
        NodeInfo {
            id: self.me.id.clone(),
            addr: self.me.addr.clone(),
            route_addr: self.me.route_addr.clone(),
            tcp_addr: self.me.tcp_addr.clone(),
            connections,
            online_users,
            draining: self.draining.load(Ordering::Relaxed),
            started_ms: self.started_ms,
            updated_ms: now_ms(),
        }
    }

    async fn beat(&self, local: &Local) -> Result<(), StoreError> {
        let connections = local.metrics.connections_open.get().max(0) as u64;
        let info = self.info(connections, local.routes.online_users() as u64);
        self.redis
            .heartbeat(&info, now_ms(), self.node_ttl_ms)
            .await
    }

    /// Writes the route of a new session; tells the node of a replaced
    /// session elsewhere to end it (REPLACED), and the nodes of other
    /// devices' sessions the device policy excludes to end those (KICKED;
    /// this node's own are ended by [`Routes`](crate::route::Routes)).
    /// Failures are logged: the next refresh writes the route again.
    /// Returns whether the user just came online (no live route anywhere
    /// before this one).
    pub(crate) async fn attach(
        &self,
        user: &str,
        device: &str,
        session: u64,
        class: Option<&str>,
        policy: DevicePolicy,
    ) -> bool {
        let set = self
            .redis
            .set_route(
                user,
                device,
                &self.me.id,
                session,
                class.unwrap_or(""),
                now_ms(),
                self.route_ttl_ms,
            )
            .await;
        match set {
            Ok(set) => {
                let mut kicks = Vec::new();
                if let Some(prev) = set.replaced.filter(|prev| prev.node != self.me.id) {
                    debug!(user, device, node = %prev.node, "device moved here; kicking its older session");
                    kicks.push((
                        prev.node,
                        Handoff::Kick {
                            user: user.to_owned(),
                            device: device.to_owned(),
                            session: prev.session,
                            policy: false,
                        },
                    ));
                }
                for other in set.others {
                    let excluded = match policy {
                        DevicePolicy::Unlimited => false,
                        DevicePolicy::Single => true,
                        DevicePolicy::OnePerClass => class.is_some_and(|c| c == other.class),
                    };
                    if excluded && other.node != self.me.id {
                        debug!(user, device = %other.device, node = %other.node, "device policy: kicking another device's session");
                        kicks.push((
                            other.node,
                            Handoff::Kick {
                                user: user.to_owned(),
                                device: other.device,
                                session: other.session,
                                policy: true,
                            },
                        ));
                    }
                }
                if !kicks.is_empty() {
                    if let Err(e) = self.redis.push(&kicks, self.queue).await {
                        warn!(user, device, error = %e, "could not kick sessions on other nodes");
                    }
                }
                set.first
            }
            Err(e) => {
                warn!(user, device, error = %e, "writing the route failed; the next refresh retries");
                false
            }
        }
    }

    /// Tells every other node holding a session of `user` to end those
    /// whose token was issued before `before` (TOKEN_REVOKED). A session
    /// that writes its route after this lookup reads the revocation mark
    /// after that (see `credential`), so none slips through.
    pub(crate) async fn revoke(&self, user: &str, before: u64) -> Result<(), StoreError> {
        let routes = self.redis.routes_of(&[user], now_ms()).await?;
        let mut nodes: Vec<String> = routes
            .into_iter()
            .flatten()
            .map(|r| r.node)
            .filter(|n| *n != self.me.id)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let handoffs: Vec<(String, Handoff)> = nodes
            .into_iter()
            .map(|node| {
                let user = user.to_owned();
                (node, Handoff::Revoke { user, before })
            })
            .collect();
        self.redis.push(&handoffs, self.queue).await
    }

    /// Removes the route of an ended session (if still its own). Returns
    /// whether it was the user's last live route anywhere (they went
    /// offline).
    pub(crate) async fn detach(&self, user: &str, device: &str, session: u64) -> bool {
        match self
            .redis
            .remove_route(user, device, &self.me.id, session, now_ms())
            .await
        {
            Ok(removal) => removal == RouteRemoval::Last,
            Err(e) => {
                warn!(user, device, error = %e, "removing the route failed; it expires with its TTL");
                false
            }
        }
    }

    /// Announces `signal` to every other node (at most once; failures are
    /// logged, signals are never resent).
    pub(crate) async fn signal(&self, signal: &Signal) {
        if let Err(e) = self.redis.publish_signal(&self.me.id, signal).await {
            warn!(error = %e, "publishing a signal to the other nodes failed");
        }
    }

    /// Queues a newly stored message for the nodes its recipient is on;
    /// waits while the forwarder's queue is full.
    pub(crate) async fn forward(&self, message: Arc<StoredMessage>) {
        // Closed only after shutdown, when nothing is sent any more.
        let _ = self.forward.send(message).await;
    }

    /// The node `user` should connect to under the configured strategy.
    pub(crate) async fn route(&self, user: &str) -> Result<Option<NodeInfo>, StoreError> {
        let nodes = self.redis.live_nodes(now_ms()).await?;
        Ok(lock(&self.picker).pick(user, &nodes).cloned())
    }

    /// The strategy of the route endpoint.
    pub(crate) fn strategy(&self) -> Strategy {
        lock(&self.picker).strategy()
    }

    /// The live nodes.
    pub(crate) async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.redis.live_nodes(now_ms()).await
    }

    /// A user's presence over the whole cluster.
    pub(crate) async fn presence(&self, user: &str) -> Result<Presence, StoreError> {
        self.redis.presence(user, now_ms()).await
    }

    /// Starts the heartbeat, queue reader, signal reader and forwarder
    /// tasks. What other nodes send this node comes out of the returned
    /// [`Running::inbound`], for the fan-out to hand to local sessions.
    pub(crate) fn start(self: &Arc<Self>, local: Local) -> Running {
        let (stop, stopped) = watch::channel(false);
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let local = Arc::new(local);
        let mut tasks = JoinSet::new();
        tasks.spawn(Arc::clone(self).heartbeats(Arc::clone(&local), stopped.clone()));
        tasks.spawn(Arc::clone(self).read_queue(inbound_tx.clone(), stopped.clone()));
        tasks.spawn(Arc::clone(self).read_signals(inbound_tx, stopped.clone()));
        if let Some(rx) = lock(&self.forward_rx).take() {
            tasks.spawn(Arc::clone(self).forwarder(local, rx, stopped));
        }
        Running {
            cluster: Arc::clone(self),
            stop,
            tasks,
            inbound: Some(inbound),
        }
    }

    async fn heartbeats(self: Arc<Self>, local: Arc<Local>, mut stop: watch::Receiver<bool>) {
        let beat_every = Duration::from_millis((self.node_ttl_ms / 3) as u64);
        let refresh_every = Duration::from_millis((self.route_ttl_ms / 3) as u64);
        let mut draining = local.draining.clone();
        let mut refreshed = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(beat_every) => {}
                changed = draining.changed() => {
                    if changed.is_ok() && *draining.borrow() {
                        self.draining.store(true, Ordering::Relaxed);
                    }
                }
                _ = stop.changed() => return,
            }
            let mut result = self.beat(&local).await;
            if result.is_ok() && refreshed.elapsed() >= refresh_every {
                let sessions = local.routes.sessions();
                result = self
                    .redis
                    .refresh_routes(&self.me.id, &sessions, now_ms(), self.route_ttl_ms)
                    .await
                    .map(|_| ());
                if result.is_ok() {
                    refreshed = tokio::time::Instant::now();
                }
            }
            match result {
                Ok(()) if failing => {
                    info!("cluster heartbeats resumed");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    warn!(error = %e, "cluster heartbeat failed; retrying every beat");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    async fn read_queue(
        self: Arc<Self>,
        inbound: mpsc::Sender<Inbound>,
        stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut consumer = loop {
            match self.redis.consumer(&self.me.id).await {
                Ok(c) => break c,
                Err(e) => {
                    warn!(error = %e, "cannot read the node queue yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    if *stop.borrow() {
                        return;
                    }
                }
            }
        };
        backoff = Duration::from_millis(100);
        // The read blocks at most READ_BLOCK_MS, so the stop flag is seen
        // promptly; reads are not cancelled halfway.
        while !*stop.borrow() {
            let entries = match consumer.next(READ_BATCH, READ_BLOCK_MS).await {
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    entries
                }
                Err(e) => {
                    warn!(error = %e, "reading the node queue failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let mut ids = Vec::with_capacity(entries.len());
            for entry in entries {
                match entry.handoff {
                    Ok(Handoff::Message(message)) => {
                        if inbound
                            .send(Inbound::Entry(Arc::from(message)))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(Handoff::Kick {
                        user,
                        device,
                        session,
                        policy,
                    }) => {
                        let code = if policy {
                            ErrorCode::Kicked
                        } else {
                            ErrorCode::Replaced
                        };
                        let kick = Inbound::Kick {
                            user,
                            device,
                            session,
                            code,
                        };
                        if inbound.send(kick).await.is_err() {
                            break;
                        }
                    }
                    Ok(Handoff::Revoke { user, before }) => {
                        if inbound
                            .send(Inbound::Revoke { user, before })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(other) => debug!(?other, "hand-off of an unknown kind ignored"),
                    Err(e) => warn!(id = %entry.id, error = %e, "unreadable hand-off dropped"),
                }
                ids.push(entry.id);
            }
            if let Err(e) = consumer.ack(&ids).await {
                // They stay pending and come back after a restart; the
                // feeds ignore what they already have.
                warn!(error = %e, "acknowledging hand-offs failed");
            }
        }
        consumer.quit().await;
    }

    /// Hands the signals other nodes publish to this node's sessions.
    async fn read_signals(
        self: Arc<Self>,
        inbound: mpsc::Sender<Inbound>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut signals = loop {
            match self.redis.subscribe_signals().await {
                Ok(s) => break s,
                Err(e) => {
                    warn!(error = %e, "cannot subscribe to cluster signals yet");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        loop {
            let next = tokio::select! {
                next = signals.next() => next,
                _ = stop.changed() => break,
            };
            let Some((origin, signal)) = next else { break };
            if origin == self.me.id {
                // Published here: this node's sessions had it already.
                continue;
            }
            if inbound.send(Inbound::Signal(signal)).await.is_err() {
                break;
            }
        }
        signals.quit().await;
    }

    async fn forwarder(
        self: Arc<Self>,
        local: Arc<Local>,
        mut rx: mpsc::Receiver<Arc<StoredMessage>>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let first = tokio::select! {
                m = rx.recv() => m,
                _ = stop.changed() => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < FORWARD_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.hand_off(&local.metrics, &batch).await;
        }
        // Stopping: what was stored before is handed off still.
        rx.close();
        let mut rest = Vec::new();
        while let Ok(m) = rx.try_recv() {
            rest.push(m);
        }
        for chunk in rest.chunks(FORWARD_BATCH) {
            self.hand_off(&local.metrics, chunk).await;
        }
    }

    /// Looks up the recipients' routes and queues a hand-off for each other
    /// node holding one of their sessions. Retries twice, then gives up on
    /// the batch (the messages are durable; see the module docs).
    async fn hand_off(&self, metrics: &Metrics, batch: &[Arc<StoredMessage>]) {
        // Only user inboxes have routes; anything else (a group's log,
        // which travels as a signal) must not fail the batch's lookup.
        let mut inboxes: Vec<&str> = batch
            .iter()
            .map(|m| m.inbox.as_str())
            .filter(|inbox| qim_proto::ids::is_valid_id(inbox))
            .collect();
        inboxes.sort_unstable();
        inboxes.dedup();
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=3 {
            let result = async {
                let routes = self.redis.routes_of(&inboxes, now_ms()).await?;
                let mut handoffs = Vec::new();
                for m in batch {
                    let Ok(i) = inboxes.binary_search(&m.inbox.as_str()) else {
                        continue;
                    };
                    let mut nodes: Vec<&str> = routes[i]
                        .iter()
                        .map(|r| r.node.as_str())
                        .filter(|n| *n != self.me.id)
                        .collect();
                    nodes.sort_unstable();
                    nodes.dedup();
                    for node in nodes {
                        handoffs.push((node.to_owned(), Handoff::Message(Box::new((**m).clone()))));
                    }
                }
                self.redis.push(&handoffs, self.queue).await?;
                Ok::<usize, StoreError>(handoffs.len())
            }
            .await;
            match result {
                Ok(sent) => {
                    metrics.handoffs_sent.inc_by(sent as u64);
                    return;
                }
                Err(e) if attempt < 3 => {
                    debug!(error = %e, attempt, "hand-off failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                Err(e) => {
                    warn!(error = %e, messages = batch.len(), "hand-off failed; recipients on other nodes get these with their next message or reconnect");
                    metrics.handoffs_failed.inc_by(batch.len() as u64);
                }
            }
        }
    }
}

/// What the cluster tasks read of this node.
pub(crate) struct Local {
    /// Sessions here, for route refreshes and the registry's load figures.
    pub(crate) routes: Arc<Routes>,
    /// Open connections, and the hand-off counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Flips to true when the gateway starts draining.
    pub(crate) draining: watch::Receiver<bool>,
}

/// What another node sent this node, for its local sessions.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A durable inbox entry for sessions here.
    Entry(Arc<StoredMessage>),
    /// End a session here (its device logged in elsewhere, or the device
    /// policy excludes it).
    Kick {
        user: String,
        device: String,
        session: u64,
        code: ErrorCode,
    },
    /// End the sessions here of `user` whose token was issued before
    /// `before` (a revocation on another node).
    Revoke { user: String, before: u64 },
    /// A signal published by another node (presence, typing, a group log
    /// entry, a change of who follows a group).
    Signal(Signal),
}

/// The cluster tasks of a running gateway.
pub(crate) struct Running {
    cluster: Arc<Cluster>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    inbound: Option<mpsc::Receiver<Inbound>>,
}

impl Running {
    /// What other nodes send this node (taken once).
    pub(crate) fn inbound(&mut self) -> Option<mpsc::Receiver<Inbound>> {
        self.inbound.take()
    }

    /// Stops the tasks (handing off what is queued), then leaves the
    /// registry and deletes this node's queue.
    pub(crate) async fn leave(mut self) {
        self.stop.send_replace(true);
        let finished = tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            self.tasks.abort_all();
        }
        let redis = &self.cluster.redis;
        if let Err(e) = redis.deregister(&self.cluster.me.id).await {
            warn!(error = %e, "deregistering failed; the entry expires with its TTL");
        }
        if let Err(e) = redis.delete_queue(&self.cluster.me.id).await {
            warn!(error = %e, "deleting the node queue failed; it expires");
        }
        redis.quit().await;
        info!(node = %self.cluster.me.id, "left the cluster");
    }
}
