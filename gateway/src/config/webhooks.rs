//! The `[webhooks]` section: signed HTTP calls to the business backend
//! (asynchronous events through a durable queue, and the synchronous
//! before-send and before-offline-push hooks). See docs/backend.md.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::sections::{example_line, section};

section! {
    /// Webhooks to the business backend: events (after-send, user online/offline, group
    /// changes) POSTed from a durable queue, and the before-send and before-offline-push hooks.
    /// Each call is signed (headers x-qim-timestamp, x-qim-signature). See docs/backend.md.
    "webhooks" => Webhooks {
        /// URL every event is POSTed to (JSON, one event per request); unset: no events.
        events_url: Option<String> = None,
        /// URL asked before a user's send is stored (allow, refuse or rewrite); unset: not asked.
        before_send_url: Option<String> = None,
        /// URL asked before an offline push goes out (allow, cancel or rewrite); unset: not asked.
        before_push_url: Option<String> = None,
        /// The file holding the HMAC-SHA256 secret (at least 32 bytes) that signs each request.
        /// Required with any URL.
        secret_file: Option<PathBuf> = None,
        /// How long an event call may take (connect, request and the whole response).
        timeout_ms: u64 = 5_000,
        /// How long a before-send or before-push call may take; then the failure policy applies.
        hook_timeout_ms: u64 = 1_000,
        /// What a failed before-send or before-push call (timeout, error status, unreachable,
        /// invalid answer) means: "open" lets the send or push through unchanged, "closed"
        /// refuses the send (REFUSED_BY_BUSINESS) or cancels the push.
        failure_policy: String = "open".to_owned(),
        /// Events waiting in this node's queue (in memory and on disk under
        /// server.data_dir/webhooks) at most; more are dropped (metric qim_webhook_dropped_total,
        /// reason "queue_full") and chat goes on.
        queue: usize = 100_000,
        /// The first retry's backoff of an event that failed; each next one doubles (full
        /// jitter) up to retry_max_ms. Events are retried until the endpoint takes them.
        retry_initial_ms: u64 = 200,
        /// The longest backoff between attempts of one event.
        retry_max_ms: u64 = 30_000,
        /// Bytes of a webhook's answer read at most; a longer answer is invalid.
        max_response_bytes: usize = 65_536,
        /// Extra root certificates (PEM) trusted for the webhook URLs, besides the system's.
        ca_file: Option<PathBuf> = None,
    }
}

impl Webhooks {
    /// Whether a failed hook call refuses (fail-closed).
    pub fn fail_closed(&self) -> bool {
        self.failure_policy == "closed"
    }

    /// Whether any URL is set.
    pub fn enabled(&self) -> bool {
        self.events_url.is_some()
            || self.before_send_url.is_some()
            || self.before_push_url.is_some()
    }

    /// Checks values that must fit together.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_owned()));
        if self.enabled() && self.secret_file.is_none() {
            return invalid("webhooks: a URL needs webhooks.secret_file");
        }
        if !matches!(self.failure_policy.as_str(), "open" | "closed") {
            return invalid("webhooks.failure_policy must be \"open\" or \"closed\"");
        }
        if self.timeout_ms == 0 || self.hook_timeout_ms == 0 || self.queue == 0 {
            return invalid("webhooks.timeout_ms, hook_timeout_ms and queue must be above 0");
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return invalid("webhooks: need 0 < retry_initial_ms <= retry_max_ms");
        }
        if self.max_response_bytes == 0 {
            return invalid("webhooks.max_response_bytes must be above 0");
        }
        for url in [
            &self.events_url,
            &self.before_send_url,
            &self.before_push_url,
        ]
        .into_iter()
        .flatten()
        {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid("webhooks: a URL must start with http:// or https://");
            }
        }
        Ok(())
    }
}
