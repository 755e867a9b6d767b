//! Offline push: what a device with no live session is told through its
//! platform's push service (APNs, FCM, or the push bridge).
//!
//! # How an entry becomes a notification
//! The fan-out hands every durable chat message and friend request it
//! delivers on this node (the node that stored it) to a bounded queue
//! (`notify.queue`; full: dropped, reason `queue_full`). [`run`] takes
//! them in order and decides who is told (`decide.rs`: muted and read
//! conversations and users without tokens send nothing; the badge is the
//! exact unread total without muted conversations; the preview follows
//! the user's settings); each notification is then sent on its own task,
//! at most [`IN_FLIGHT`] at once (`send.rs`: a device that is live or has
//! the entry by then gets nothing; the per-user rate; one claim per
//! device and entry in the store, so no two nodes send it; the "before
//! offline push" hook, `hook.rs`; retries; invalid tokens removed).
//!
//! # Files
//! - `tokens.rs`: the push token and push settings requests.
//! - `decide.rs`, `send.rs`, `hook.rs`: as above.
//! - `provider.rs`: the notification, a provider's answer, the backoff,
//!   the HTTP client; `apns.rs`, `fcm.rs`, `bridge.rs`: the providers.

use std::sync::{Arc, Mutex};

use qim_storage::StoredMessage;
use tokio::sync::{Semaphore, mpsc};

use crate::config::Notify;
use crate::ctx::Ctx;
use crate::limit::PerKey;

mod apns;
mod bridge;
mod decide;
mod fcm;
mod hook;
mod provider;
mod send;
mod tokens;

pub(crate) use tokens::{push_settings, push_token};

/// Users whose rates this node remembers at once.
const USERS_REMEMBERED: usize = 100_000;

/// Notifications being sent at once on this node.
pub(crate) const IN_FLIGHT: usize = 64;

/// This node's offline push state.
pub(crate) struct Notifier {
    /// Token registrations and removals per user
    /// (`notify.token_writes_per_minute`).
    pub(crate) token_writes: Mutex<PerKey<String>>,
    /// Notifications per user (`notify.pushes_per_user_per_minute`).
    pub(crate) pushes: Mutex<PerKey<String>>,
    /// The queue's receiving end, taken by [`run`].
    entries: Mutex<Option<mpsc::Receiver<Arc<StoredMessage>>>>,
}

/// The providers this node is configured for.
pub(crate) struct Providers {
    http: reqwest::Client,
    apns: Option<apns::Apns>,
    fcm: Option<fcm::Fcm>,
    bridge: Option<bridge::Bridge>,
}

impl Providers {
    fn load(config: &Notify) -> Result<Providers, provider::SetupError> {
        Ok(Providers {
            http: provider::http_client(config)?,
            apns: apns::Apns::load(config)?,
            fcm: fcm::Fcm::load(config)?,
            bridge: bridge::Bridge::load(config)?,
        })
    }
}

fn per_minute(rate: u32) -> Mutex<PerKey<String>> {
    Mutex::new(PerKey::new(f64::from(rate) / 60.0, rate, USERS_REMEMBERED))
}

impl Notifier {
    /// The state for `config`, and the sending end of its queue (for the
    /// fan-out).
    pub(crate) fn new(config: &Notify) -> (Self, mpsc::Sender<Arc<StoredMessage>>) {
        let (tx, rx) = mpsc::channel(config.queue);
        let notifier = Self {
            token_writes: per_minute(config.token_writes_per_minute),
            pushes: per_minute(config.pushes_per_user_per_minute),
            entries: Mutex::new(Some(rx)),
        };
        (notifier, tx)
    }
}

/// Checks that the configured providers' keys load: at start, so a bad
/// key file stops the gateway instead of every push.
pub(crate) fn check(config: &Notify) -> Result<(), String> {
    Providers::load(config)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Takes the queued entries and sends their notifications until the
/// gateway drains.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let Some(mut entries) = crate::mutex::lock(&ctx.notify.entries).take() else {
        return;
    };
    let providers = match Providers::load(&ctx.config.notify) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::error!(error = %e, "offline push is off: a provider could not be set up");
            return;
        }
    };
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut draining = ctx.draining.subscribe();
    loop {
        let entry = tokio::select! {
            entry = entries.recv() => match entry {
                Some(entry) => entry,
                None => return,
            },
            _ = draining.wait_for(|d| *d) => return,
        };
        for n in decide::notifications(&ctx, &entry).await {
            let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                return;
            };
            let (ctx, providers) = (Arc::clone(&ctx), Arc::clone(&providers));
            tokio::spawn(async move {
                send::send(&ctx, &providers, n).await;
                drop(permit);
            });
        }
    }
}
