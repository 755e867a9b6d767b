//! Prometheus metrics of one gateway, served on the metrics listener
//! (`admin.listen`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use qim_proto::v1::ErrorCode;

type ByCode = Family<Vec<(&'static str, &'static str)>, Counter>;
/// Histograms by label, made by a constructor.
type Histograms = Family<Vec<(&'static str, &'static str)>, Histogram, fn() -> Histogram>;

/// Every metric the gateway records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connections that completed the QUIC handshake.
    pub connections: Counter,
    /// Connections open now (logged in or logging in).
    pub connections_open: Gauge,
    /// Sessions logged in now.
    pub sessions_open: Gauge,
    /// Logins refused, by code.
    pub logins_refused: ByCode,
    /// Connections closed for a protocol error, by code.
    pub protocol_errors: ByCode,
    /// Sends stored and acknowledged (duplicates included).
    pub sends: Counter,
    /// Sends refused, by code.
    pub send_refusals: ByCode,
    /// Times a chat stream waited because its session sent too fast.
    pub sends_throttled: Counter,
    /// Sessions whose `Send.first_attempt` flag proved false (then ignored).
    pub first_attempts_wrong: Counter,
    /// Deliveries written (first attempts).
    pub deliveries: Counter,
    /// Deliveries written again after the retransmit timeout.
    pub retransmits: Counter,
    /// Deliveries acknowledged by devices.
    pub delivery_acks: Counter,
    /// Sessions closed for missed heartbeats.
    pub heartbeat_timeouts: Counter,
    /// Messages handed to other nodes' queues (one per message and node).
    pub handoffs_sent: Counter,
    /// Messages that could not be handed to other nodes (they wait in the store).
    pub handoffs_failed: Counter,
    /// Messages other nodes handed to this one.
    pub handoffs_received: Counter,
    /// Handshakes that resumed an earlier TLS session.
    pub tls_resumptions: Counter,
    /// Sessions whose client moved to a new address (QUIC connection
    /// migration: same connection, no new handshake).
    pub migrations: Counter,
    /// QUIC handshakes in progress now (`quic.max_pending_handshakes`).
    pub handshakes_pending: Gauge,
    /// Handshakes dropped for taking longer than `quic.handshake_timeout_ms`.
    pub handshakes_timed_out: Counter,
    /// Connection attempts answered with a QUIC Retry (address validation).
    pub retries_sent: Counter,
    /// Bytes of Send frames read from chat streams and not yet stored, over
    /// all sessions (each stream holds at most `limits.chat_backlog_bytes`
    /// plus one frame).
    pub chat_backlog_bytes: Gauge,
    /// Admin API requests refused, by reason (`unauthorized`, `forbidden`,
    /// `rate_limited`).
    pub admin_refusals: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Route endpoint requests refused for the per-address rate.
    pub route_requests_limited: Counter,
    /// Migrations whose path validation failed: quinn fell back to the
    /// client's previous address (see `path`).
    pub path_fallbacks: Counter,
    /// Seconds from a Send frame's arrival to its ack being written.
    pub ack_latency: Histogram,
    /// Seconds a store append batch took.
    pub store_latency: Histogram,
    /// Requests refused by a per-user quota, by quota name.
    pub quota_refusals: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Inbox copies the accepted sends made (the fan-out that
    /// `quotas.copies_per_second` weighs).
    pub send_copies: Counter,
    /// Bytes charged to users' `quotas.stored_bytes_per_day` (body size
    /// times copies).
    pub stored_bytes: Counter,
    /// Bytes free under the embedded store's data directory (-1: no local
    /// store).
    pub store_free_bytes: Gauge,
    /// 1 while the embedded store refuses writes for want of disk space.
    pub store_full: Gauge,
    /// Push token requests, by outcome (`registered`, `removed`,
    /// `invalid`, `rate_limited`, `unregistered_by_provider`).
    pub push_tokens: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Notifications a provider accepted, by provider.
    pub pushes_sent: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Notifications not sent, by reason (see docs/push.md).
    pub pushes_not_sent: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Webhook calls, by event and outcome (see docs/backend.md).
    pub webhook_calls: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Seconds a webhook call took, by event.
    pub webhook_latency: Histograms,
    /// Webhook events dropped, by reason (`queue_full`, `journal_error`,
    /// `stopped`).
    pub webhook_dropped: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Webhook events waiting in this node's queue.
    pub webhook_queue: Gauge,
    /// Uploaded images the server decoded, by outcome (`thumbnail`,
    /// `too_many_pixels`, `too_much_memory`, `timeout`, `undecodable`).
    pub images: Family<Vec<(&'static str, &'static str)>, Counter>,
}

fn webhook_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn code_label(code: ErrorCode) -> Vec<(&'static str, &'static str)> {
    vec![("code", code.as_str_name())]
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("qim");
        let latency = || Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        let m = Metrics {
            connections: Counter::default(),
            connections_open: Gauge::default(),
            sessions_open: Gauge::default(),
            logins_refused: ByCode::default(),
            protocol_errors: ByCode::default(),
            sends: Counter::default(),
            send_refusals: ByCode::default(),
            sends_throttled: Counter::default(),
            first_attempts_wrong: Counter::default(),
            deliveries: Counter::default(),
            retransmits: Counter::default(),
            delivery_acks: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            handoffs_sent: Counter::default(),
            handoffs_failed: Counter::default(),
            handoffs_received: Counter::default(),
            tls_resumptions: Counter::default(),
            migrations: Counter::default(),
            handshakes_pending: Gauge::default(),
            handshakes_timed_out: Counter::default(),
            retries_sent: Counter::default(),
            chat_backlog_bytes: Gauge::default(),
            admin_refusals: Family::default(),
            route_requests_limited: Counter::default(),
            path_fallbacks: Counter::default(),
            ack_latency: latency(),
            store_latency: latency(),
            quota_refusals: Family::default(),
            send_copies: Counter::default(),
            stored_bytes: Counter::default(),
            store_free_bytes: Gauge::default(),
            store_full: Gauge::default(),
            push_tokens: Family::default(),
            pushes_sent: Family::default(),
            pushes_not_sent: Family::default(),
            webhook_calls: Family::default(),
            webhook_latency: Family::new_with_constructor(webhook_histogram),
            webhook_dropped: Family::default(),
            webhook_queue: Gauge::default(),
            images: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "QUIC connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "sessions_open",
            "Logged-in sessions now",
            m.sessions_open.clone(),
        );
        registry.register(
            "logins_refused",
            "Logins refused by code",
            m.logins_refused.clone(),
        );
        registry.register(
            "protocol_errors",
            "Connections closed for protocol errors",
            m.protocol_errors.clone(),
        );
        registry.register("sends", "Sends stored and acknowledged", m.sends.clone());
        registry.register(
            "send_refusals",
            "Sends refused by code",
            m.send_refusals.clone(),
        );
        registry.register(
            "sends_throttled",
            "Chat stream waits for sending too fast",
            m.sends_throttled.clone(),
        );
        registry.register(
            "first_attempts_wrong",
            "Sessions whose first_attempt flag proved false",
            m.first_attempts_wrong.clone(),
        );
        registry.register(
            "deliveries",
            "Deliveries written (first attempt)",
            m.deliveries.clone(),
        );
        registry.register(
            "retransmits",
            "Deliveries retransmitted",
            m.retransmits.clone(),
        );
        registry.register(
            "delivery_acks",
            "Deliveries acknowledged",
            m.delivery_acks.clone(),
        );
        registry.register(
            "heartbeat_timeouts",
            "Sessions closed for missed heartbeats",
            m.heartbeat_timeouts.clone(),
        );
        registry.register(
            "handoffs_sent",
            "Messages handed to other nodes",
            m.handoffs_sent.clone(),
        );
        registry.register(
            "handoffs_failed",
            "Messages that could not be handed to other nodes",
            m.handoffs_failed.clone(),
        );
        registry.register(
            "handoffs_received",
            "Messages handed over by other nodes",
            m.handoffs_received.clone(),
        );
        registry.register(
            "tls_resumptions",
            "Handshakes that resumed a TLS session",
            m.tls_resumptions.clone(),
        );
        registry.register(
            "migrations",
            "Client address changes of sessions (connection migrations), counted when seen",
            m.migrations.clone(),
        );
        registry.register(
            "handshakes_pending",
            "QUIC handshakes in progress",
            m.handshakes_pending.clone(),
        );
        registry.register(
            "handshakes_timed_out",
            "Handshakes dropped for exceeding quic.handshake_timeout_ms",
            m.handshakes_timed_out.clone(),
        );
        registry.register(
            "retries_sent",
            "Connection attempts answered with a QUIC Retry",
            m.retries_sent.clone(),
        );
        registry.register(
            "chat_backlog_bytes",
            "Bytes of Send frames read and not yet stored",
            m.chat_backlog_bytes.clone(),
        );
        registry.register(
            "admin_refusals",
            "Admin API requests refused by reason",
            m.admin_refusals.clone(),
        );
        registry.register(
            "route_requests_limited",
            "Route endpoint requests refused for the per-address rate",
            m.route_requests_limited.clone(),
        );
        registry.register(
            "path_fallbacks",
            "Migrations whose path validation failed (back at the client's previous address)",
            m.path_fallbacks.clone(),
        );
        registry.register(
            "ack_latency_seconds",
            "Send arrival to ack written",
            m.ack_latency.clone(),
        );
        registry.register(
            "store_append_seconds",
            "Store append batch duration",
            m.store_latency.clone(),
        );
        registry.register(
            "quota_refusals",
            "Requests refused by a per-user quota, by quota",
            m.quota_refusals.clone(),
        );
        registry.register(
            "send_copies",
            "Inbox copies made by accepted sends",
            m.send_copies.clone(),
        );
        registry.register(
            "stored_bytes",
            "Bytes charged to users' stored-bytes quota",
            m.stored_bytes.clone(),
        );
        registry.register(
            "store_free_bytes",
            "Bytes free under the embedded store (-1: no local store)",
            m.store_free_bytes.clone(),
        );
        registry.register(
            "store_full",
            "1 while the store refuses writes for want of disk space",
            m.store_full.clone(),
        );
        registry.register(
            "push_tokens",
            "Push token requests, by outcome",
            m.push_tokens.clone(),
        );
        registry.register(
            "pushes_sent",
            "Notifications a push provider accepted, by provider",
            m.pushes_sent.clone(),
        );
        registry.register(
            "pushes_not_sent",
            "Notifications not sent, by reason",
            m.pushes_not_sent.clone(),
        );
        registry.register(
            "webhook_calls",
            "Webhook calls, by event and outcome",
            m.webhook_calls.clone(),
        );
        registry.register(
            "webhook_latency_seconds",
            "Seconds a webhook call took, by event",
            m.webhook_latency.clone(),
        );
        registry.register(
            "webhook_dropped",
            "Webhook events dropped, by reason",
            m.webhook_dropped.clone(),
        );
        registry.register(
            "webhook_queue",
            "Webhook events waiting in this node's queue",
            m.webhook_queue.clone(),
        );
        registry.register(
            "images",
            "Uploaded images decoded for a thumbnail, by outcome",
            m.images.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a refused login.
    pub fn login_refused(&self, code: ErrorCode) {
        self.logins_refused.get_or_create(&code_label(code)).inc();
    }

    /// Counts a connection closed for a protocol error.
    pub fn protocol_error(&self, code: ErrorCode) {
        self.protocol_errors.get_or_create(&code_label(code)).inc();
    }

    /// Counts a refused admin API request.
    pub fn admin_refusal(&self, reason: &'static str) {
        self.admin_refusals
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Counts a refused send.
    pub fn send_refused(&self, code: ErrorCode) {
        self.send_refusals.get_or_create(&code_label(code)).inc();
    }

    /// Counts a request refused by the per-user quota `quota` (its config
    /// name, e.g. "stored_bytes_per_day").
    pub fn quota_refused(&self, quota: &'static str) {
        self.quota_refusals
            .get_or_create(&vec![("quota", quota)])
            .inc();
    }

    /// Counts a push token request's outcome.
    pub fn push_tokens(&self, outcome: &'static str) {
        self.push_tokens
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
