//! Webhooks to the business backend (`[webhooks]`, docs/backend.md):
//! events after sends (`post`), presence changes (`presence`) and group
//! changes (`groups`), and hooks before sends and offline pushes.
//!
//! # Events (asynchronous)
//! [`Webhooks::emit`] never waits: it hands the event to a bounded
//! channel, or drops it (counted in `qim_webhook_dropped_total{reason}`)
//! when `webhooks.queue` events wait already. A writer task appends what
//! the channel holds to the durable queue (`journal.rs`, files under
//! `server.data_dir/webhooks`), and a worker POSTs the queue's events in
//! order, each until the endpoint takes it (jittered exponential backoff),
//! so a webhook that is down delays only its events, and what waits on
//! disk is sent after a restart.
//!
//! # Hooks (synchronous)
//! [`Webhooks::ask`] calls the before-send or before-push URL within
//! `webhooks.hook_timeout_ms`, reading at most `max_response_bytes`;
//! callers (`post`, `notify::hook`) read its answer and apply
//! `webhooks.failure_policy` when it has none.
//!
//! # Files
//! - `sign.rs`: the request signature (shared with the push bridge).
//! - `call.rs`: one bounded, signed call.
//! - `journal.rs`: the durable queue.
//! - `hooks.rs`: the before-send check of a user's send.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Config;
use crate::ctx::Ctx;
use crate::metrics::Metrics;
use crate::mutex::lock;

mod call;
mod hooks;
mod journal;
pub(crate) mod sign;

pub(crate) use hooks::{before_send, body_fields};

use journal::Journal;
use sign::Signer;

/// Why webhooks could not be set up (the secret or CA file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SetupError(pub(crate) String);

/// Events the writer appends to the queue in one file at most.
const BATCH: usize = 512;
/// Events the channel to the writer holds at most.
const CHANNEL: usize = 8_192;
/// How long the shutdown waits for the queue's last write.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// What goes to the writer.
enum Item {
    /// One event, serialized.
    Event(String),
    /// Everything before was written: answer and stop.
    Flush(oneshot::Sender<()>),
}

/// A synchronous hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    BeforeSend,
    BeforePush,
}

impl Hook {
    fn label(self) -> &'static str {
        match self {
            Hook::BeforeSend => "before_send",
            Hook::BeforePush => "before_push",
        }
    }
}

/// A hook's answer: `{"action": "allow" | "refuse" | "cancel" |
/// "rewrite", ...}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Answer {
    pub(crate) action: String,
    /// A refusal's reason, shown to the sender.
    #[serde(default)]
    pub(crate) reason: Option<String>,
    /// A rewritten text (UTF-8).
    #[serde(default)]
    pub(crate) text: Option<String>,
    /// A rewritten body (base64), for non-text messages.
    #[serde(default)]
    pub(crate) body: Option<String>,
    /// A rewritten push title.
    #[serde(default)]
    pub(crate) title: Option<String>,
}

/// This node's webhooks.
pub(crate) struct Webhooks {
    signer: Option<Signer>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    /// The channel to the writer, with events_url.
    queue: Option<mpsc::Sender<Item>>,
    writer: std::sync::Mutex<Option<(mpsc::Receiver<Item>, Journal)>>,
    dir: PathBuf,
    /// Events emitted and not yet sent (in the channel or on disk).
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    stopped: AtomicBool,
    /// When a dropped event was last logged (ms): at most one line a
    /// second, however many are dropped (each is counted).
    drop_logged_ms: AtomicI64,
    /// Wakes the worker when the writer appended.
    appended: Arc<tokio::sync::Notify>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Webhooks {
    /// The webhooks of `config`: the secret loaded, the queue opened.
    pub(crate) fn load(config: &Config, metrics: Arc<Metrics>) -> Result<Webhooks, SetupError> {
        let c = &config.webhooks;
        let signer = match &c.secret_file {
            Some(path) if c.enabled() => Some(
                Signer::load("webhooks.secret_file", path)
                    .map_err(|e| SetupError(e.to_string()))?,
            ),
            _ => None,
        };
        let http = call::http_client(c)?;
        let dir = config.server.data_dir.join("webhooks");
        let (queue, writer, pending) = match &c.events_url {
            Some(_) => {
                let (journal, pending) = Journal::open(&dir)
                    .map_err(|e| SetupError(format!("the webhook queue {}: {e}", dir.display())))?;
                let (tx, rx) = mpsc::channel(CHANNEL.min(c.queue));
                (Some(tx), Some((rx, journal)), pending)
            }
            None => (None, None, 0),
        };
        metrics.webhook_queue.set(pending as i64);
        Ok(Webhooks {
            signer,
            http,
            metrics,
            queue,
            writer: std::sync::Mutex::new(writer),
            dir,
            pending: Arc::new(AtomicUsize::new(pending)),
            max_pending: c.queue,
            stopped: AtomicBool::new(false),
            drop_logged_ms: AtomicI64::new(0),
            appended: Arc::new(tokio::sync::Notify::new()),
            tasks: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn dropped(&self, reason: &'static str, n: usize) {
        self.metrics
            .webhook_dropped
            .get_or_create(&vec![("reason", reason)])
            .inc_by(n as u64);
    }

    /// Logs a dropped event, at most once a second.
    fn log_drop(&self, kind: &'static str, reason: &'static str) {
        let now = qim_proto::now_ms();
        let last = self.drop_logged_ms.load(Ordering::Relaxed);
        if now - last >= 1_000
            && self
                .drop_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                event = kind,
                reason,
                "webhook event dropped (qim_webhook_dropped_total counts them all)"
            );
        }
    }

    fn sent(&self, n: usize) {
        let left = self
            .pending
            .fetch_sub(n, Ordering::AcqRel)
            .saturating_sub(n);
        self.metrics.webhook_queue.set(left as i64);
    }

    /// Queues event `kind` with the data `data` makes; never waits. Dropped
    /// (counted and logged) when the queue is full or the gateway stopped.
    /// `data` runs only when an event is queued: with no webhook
    /// configured, a send builds no JSON (it was 4.6% of the gateway's CPU
    /// at 20,000 messages/s, BENCHMARKS.md).
    pub(crate) fn emit(&self, kind: &'static str, data: impl FnOnce() -> Value) {
        let Some(queue) = &self.queue else {
            return;
        };
        if self.stopped.load(Ordering::Acquire) {
            self.dropped("stopped", 1);
            return;
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.dropped("queue_full", 1);
            self.log_drop(kind, "queue_full");
            return;
        }
        let event = serde_json::json!({
            "id": format!("{:032x}", rand::random::<u128>()),
            "type": kind,
            "time_ms": qim_proto::now_ms(),
            "data": data(),
        })
        .to_string();
        match queue.try_send(Item::Event(event)) {
            Ok(()) => {
                let pending = self.pending.load(Ordering::Acquire);
                self.metrics.webhook_queue.set(pending as i64);
            }
            Err(e) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "queue_full",
                    mpsc::error::TrySendError::Closed(_) => "stopped",
                };
                self.dropped(reason, 1);
                self.log_drop(kind, reason);
            }
        }
    }

    /// Asks `hook` about `data`: its answer when it gave a valid one (an
    /// action it may give, and `valid` holds), `None` when it failed
    /// (then `webhooks.failure_policy` applies) or is not configured.
    pub(crate) async fn ask(
        &self,
        ctx: &Ctx,
        hook: Hook,
        data: Value,
        valid: impl FnOnce(&Answer) -> bool,
    ) -> Option<Answer> {
        let c = &ctx.config.webhooks;
        let url = match hook {
            Hook::BeforeSend => c.before_send_url.as_deref(),
            Hook::BeforePush => c.before_push_url.as_deref(),
        }?;
        let signer = self.signer.as_ref()?;
        let body = serde_json::json!({
            "type": hook.label(),
            "time_ms": qim_proto::now_ms(),
            "data": data,
        })
        .to_string();
        let started = Instant::now();
        let result = call::call(
            &self.http,
            signer,
            url,
            body,
            Duration::from_millis(c.hook_timeout_ms),
            c.max_response_bytes,
        )
        .await;
        self.metrics
            .webhook_latency
            .get_or_create(&vec![("event", hook.label())])
            .observe(started.elapsed().as_secs_f64());
        let (answer, outcome) = match result {
            Ok(bytes) => match serde_json::from_slice::<Answer>(&bytes) {
                Ok(a) if valid(&a) => {
                    let outcome = match a.action.as_str() {
                        "allow" => "allow",
                        "refuse" => "refuse",
                        "cancel" => "cancel",
                        "rewrite" => "rewrite",
                        _ => "invalid",
                    };
                    (Some(a).filter(|_| outcome != "invalid"), outcome)
                }
                _ => (None, "invalid"),
            },
            Err(e) => (None, e.label()),
        };
        if answer.is_none() {
            tracing::warn!(
                hook = hook.label(),
                outcome,
                "webhook hook failed; failure policy applies"
            );
        }
        self.metrics
            .webhook_calls
            .get_or_create(&vec![("event", hook.label()), ("outcome", outcome)])
            .inc();
        answer
    }
}

/// The label of an event type.
fn event_label(event: &str) -> &'static str {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        kind: String,
    }
    match serde_json::from_str::<Head>(event).map(|h| h.kind) {
        Ok(k) if k == "after_send" => "after_send",
        Ok(k) if k == "user_online" => "user_online",
        Ok(k) if k == "user_offline" => "user_offline",
        Ok(k) if k == "group_changed" => "group_changed",
        _ => "other",
    }
}

/// Starts the writer and the worker of the event queue (with events_url).
pub(crate) fn start(ctx: &Arc<Ctx>) {
    let Some((rx, journal)) = lock(&ctx.webhooks.writer).take() else {
        return;
    };
    let writer = tokio::spawn(write(Arc::clone(ctx), rx, journal));
    let worker = tokio::spawn(work(Arc::clone(ctx)));
    lock(&ctx.webhooks.tasks).extend([writer, worker]);
}

/// At the end of the shutdown (sessions ended): writes what the channel
/// holds to the queue, stops the worker, and drops later events.
pub(crate) async fn stop(ctx: &Ctx) {
    let hooks = &ctx.webhooks;
    hooks.stopped.store(true, Ordering::Release);
    if let Some(queue) = &hooks.queue {
        let (tx, rx) = oneshot::channel();
        let flushed = tokio::time::timeout(FLUSH_WAIT, async {
            if queue.send(Item::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        })
        .await;
        if flushed.is_err() {
            tracing::warn!("the webhook queue's last write did not finish in time");
        }
    }
    let tasks = std::mem::take(&mut *lock(&hooks.tasks));
    for task in tasks {
        let _ = tokio::time::timeout(FLUSH_WAIT, task).await;
    }
}

/// The writer: appends the channel's events to the queue in batches.
async fn write(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Item>, journal: Journal) {
    let hooks = &ctx.webhooks;
    let mut journal = Some(journal);
    while let Some(first) = rx.recv().await {
        let mut events = Vec::new();
        let mut flush = None;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Event(e) => events.push(e),
                Item::Flush(done) => {
                    flush = Some(done);
                    break;
                }
            }
            if events.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !events.is_empty()
            && let Some(mut j) = journal.take()
        {
            let n = events.len();
            let result = tokio::task::spawn_blocking(move || {
                let r = j.append(&events);
                (j, r)
            })
            .await;
            match result {
                Ok((j, Ok(()))) => {
                    journal = Some(j);
                    hooks.appended.notify_one();
                }
                Ok((j, Err(e))) => {
                    journal = Some(j);
                    tracing::error!(error = %e, events = n, "webhook queue write failed; events dropped");
                    hooks.sent(n);
                    hooks.dropped("journal_error", n);
                }
                Err(e) => {
                    tracing::error!(error = %e, "webhook queue writer failed");
                    hooks.dropped("journal_error", n);
                    return;
                }
            }
        }
        if let Some(done) = flush {
            let _ = done.send(());
            return;
        }
    }
}

/// The backoff before retry `attempt` (1-based), full jitter.
fn backoff(ctx: &Ctx, attempt: u32) -> Duration {
    let c = &ctx.config.webhooks;
    let ceiling = c
        .retry_initial_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(c.retry_max_ms);
    Duration::from_millis(rand::random_range(0..=ceiling))
}

/// The worker: sends the queue's events in order until the gateway drains.
async fn work(ctx: Arc<Ctx>) {
    let hooks = &ctx.webhooks;
    let (Some(url), Some(signer)) = (ctx.config.webhooks.events_url.clone(), &hooks.signer) else {
        return;
    };
    let c = &ctx.config.webhooks;
    let mut draining = ctx.draining.subscribe();
    loop {
        let dir = hooks.dir.clone();
        let oldest = tokio::task::spawn_blocking(move || journal::oldest(&dir)).await;
        let mut batch = match oldest {
            Ok(Ok(Some(batch))) => batch,
            Ok(Ok(None)) => {
                tokio::select! {
                    _ = hooks.appended.notified() => continue,
                    _ = draining.wait_for(|d| *d) => return,
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the webhook queue failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(c.retry_max_ms)) => continue,
                    _ = draining.wait_for(|d| *d) => return,
                }
            }
            Err(_) => return,
        };
        while batch.done < batch.events.len() {
            let event = batch.events[batch.done].clone();
            let label = event_label(&event);
            let mut attempt = 0;
            loop {
                let started = Instant::now();
                let result = tokio::select! {
                    r = call::call(&hooks.http, signer, &url, event.clone(),
                        Duration::from_millis(c.timeout_ms), c.max_response_bytes) => r,
                    _ = draining.wait_for(|d| *d) => return,
                };
                hooks
                    .metrics
                    .webhook_latency
                    .get_or_create(&vec![("event", label)])
                    .observe(started.elapsed().as_secs_f64());
                let outcome = match result {
                    Ok(_) => "delivered",
                    Err(e) => e.label(),
                };
                hooks
                    .metrics
                    .webhook_calls
                    .get_or_create(&vec![("event", label), ("outcome", outcome)])
                    .inc();
                if result.is_ok() {
                    break;
                }
                attempt += 1;
                if attempt == 1 || attempt % 10 == 0 {
                    tracing::warn!(
                        event = label,
                        outcome,
                        attempt,
                        "webhook event not taken; retrying"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff(&ctx, attempt)) => {}
                    _ = draining.wait_for(|d| *d) => return,
                }
            }
            let done = batch.done + 1;
            if let Err(e) = journal::advance(&mut batch, done) {
                tracing::warn!(error = %e, "recording webhook progress failed");
            }
            hooks.sent(1);
        }
        if let Err(e) = journal::finish(&batch) {
            tracing::error!(error = %e, "removing a sent webhook batch failed");
        }
    }
}
