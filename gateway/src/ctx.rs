//! What every session and feature of this gateway shares: the
//! configuration, the stores, the fan-out of durable entries, the push
//! registry, the routes of this node's sessions, and the lifecycle flags.
//!
//! `Ctx` is built once by [`Gateway::bind`](crate::Gateway::bind) and
//! handed to sessions, rpc handlers and the scheduler as an `Arc`. The
//! cluster's background tasks take only the parts they read
//! ([`cluster::Local`](crate::cluster::Local)), not the whole context.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use qim_storage::{StoreError, Stores};
use tokio::sync::{Notify, Semaphore, watch};

use crate::auth::TokenKeys;
use crate::cluster::{Cluster, Identity};
use crate::config::Config;
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::push::Registry;
use crate::quota::Quotas;
use crate::route::Routes;
use crate::webhook::Webhooks;

/// State shared by every connection of this gateway.
pub(crate) struct Ctx {
    pub(crate) config: Config,
    /// Every store, from one backend instance.
    pub(crate) stores: Stores,
    /// The only way a durable entry reaches sessions (here and elsewhere).
    pub(crate) fanout: Fanout,
    /// Best-effort pushes to this node's sessions: group logs, presence,
    /// typing.
    pub(crate) push: Arc<Registry>,
    /// This node's sessions by user and device, with their feeds.
    pub(crate) routes: Arc<Routes>,
    /// Wakes the scheduler when an entry was added.
    pub(crate) schedule_wake: Notify,
    /// This node's membership of a cluster (with `store.redis`).
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// How this node is known to clients and other nodes.
    pub(crate) identity: Identity,
    pub(crate) metrics: Arc<Metrics>,
    /// Per-user quotas on sends, and the disk's floor.
    pub(crate) quotas: Quotas,
    /// Verifies login tokens.
    pub(crate) tokens: TokenKeys,
    /// Offline push: push tokens, settings and notifications.
    pub(crate) notify: Notifier,
    /// Webhooks to the business backend: events and hooks.
    pub(crate) webhooks: Webhooks,
    /// Flips to true when the gateway starts draining.
    pub(crate) draining: watch::Sender<bool>,
    /// Set when the store failed for good: the gateway drains and stops.
    pub(crate) fatal: watch::Sender<Option<String>>,
    /// Distinguishes this process's session ids from another run's.
    pub(crate) node_tag: String,
    /// Decode slots of uploaded images (`media.thumbnail_concurrency`).
    pub(crate) image_slots: Arc<Semaphore>,
    next_session: AtomicU64,
}

impl Ctx {
    /// The shared state of a gateway about to serve.
    pub(crate) fn new(
        config: Config,
        stores: Stores,
        cluster: Option<Arc<Cluster>>,
        identity: Identity,
        metrics: Arc<Metrics>,
        tokens: TokenKeys,
        webhooks: Webhooks,
    ) -> Self {
        let routes = Arc::new(Routes::default());
        let push = Arc::new(Registry::default());
        let (notify, offline) = Notifier::new(&config.notify);
        let fanout = Fanout::new(
            Arc::clone(&routes),
            Arc::clone(&push),
            cluster.clone(),
            Arc::clone(&stores.contacts),
            Arc::clone(&metrics),
            offline,
        );
        let quotas = Quotas::new(
            config.quotas.clone(),
            config.store.min_free_bytes,
            Arc::clone(&stores.quotas),
            stores.disk.clone(),
            Arc::clone(&metrics),
        );
        let image_slots = Arc::new(Semaphore::new(
            config.media.thumbnail_concurrency.max(1) as usize
        ));
        Self {
            image_slots,
            quotas,
            notify,
            webhooks,
            config,
            stores,
            fanout,
            push,
            routes,
            schedule_wake: Notify::new(),
            cluster,
            identity,
            metrics,
            tokens,
            draining: watch::Sender::new(false),
            fatal: watch::Sender::new(None),
            node_tag: format!("{:08x}", rand::random::<u32>()),
            // A random start: the ids of a node restarted under the same
            // node id must not repeat its earlier run's, or a kick queued
            // for an old session (REPLACED, read from the node's queue after
            // the restart) would end a new one that drew the same id. Below
            // 2^52, so the ids stay exact as JSON numbers.
            next_session: AtomicU64::new(1 + (rand::random::<u64>() >> 12)),
        }
    }

    /// A new session id, unique in this process and (with overwhelming
    /// probability) across its restarts.
    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes a store failure: one only a restart repairs makes the gateway
    /// drain and stop. (A nearly full disk is not one: the embedded store
    /// refuses writes before they can fail, `StoreError::Full`, and takes
    /// them again when space is back.)
    pub(crate) fn store_failed(&self, e: &StoreError) {
        if e.is_fatal() {
            self.fatal.send_replace(Some(e.to_string()));
        }
    }
}
