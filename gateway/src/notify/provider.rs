//! What the providers share: the notification as decided, a provider's
//! answer, and sending with retries (exponential backoff, full jitter, a
//! provider's `retry-after` honoured).

use std::time::Duration;

use qim_proto::v1;

use crate::config::Notify;

/// One notification for one device, as decided.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Notification {
    /// Whose device.
    pub(crate) user: String,
    /// The device's registration.
    pub(crate) token: v1::PushToken,
    /// The conversation's key (`u:<user>`, `g:<group>`, `contacts`): the
    /// collapse id and thread of the notification.
    pub(crate) conversation: String,
    /// The sender and text, when the user's settings allow a preview.
    pub(crate) title: Option<String>,
    /// The text shown: the message's when previewed, a neutral one
    /// otherwise.
    pub(crate) body: String,
    /// The user's unread total, muted conversations excluded.
    pub(crate) badge: u32,
    /// The entry's seq: the user's inbox seq, or the group log's.
    pub(crate) seq: u64,
    /// `seq` is a read-diffusion group log's.
    pub(crate) group_log: bool,
}

/// A provider's answer to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Accepted.
    Sent,
    /// The token is no longer valid (APNs 410 / `BadDeviceToken`, FCM
    /// `UNREGISTERED`): remove it.
    Gone,
    /// Try again (throttled, a server error, a timeout), after the
    /// provider's wait if it named one.
    Retry(Option<Duration>),
    /// Refused for good; the reason for the metrics and the log.
    Failed(&'static str),
}

impl Outcome {
    /// The outcome of an HTTP status with no more specific reading.
    pub(crate) fn of_status(status: u16, retry_after: Option<Duration>) -> Outcome {
        match status {
            200..=299 => Outcome::Sent,
            410 => Outcome::Gone,
            429 | 500..=599 => Outcome::Retry(retry_after),
            401 | 403 => Outcome::Failed("provider_auth"),
            _ => Outcome::Failed("provider_rejected"),
        }
    }
}

/// The wait a response's `retry-after` header names (seconds).
pub(crate) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The backoff before retry `attempt` (1-based): a uniformly random wait
/// up to `retry_initial_ms × 2^(attempt-1)`, at most `retry_max_ms` (full
/// jitter: retries of many notifications do not arrive together).
pub(crate) fn backoff(config: &Notify, attempt: u32) -> Duration {
    let ceiling = config
        .retry_initial_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(config.retry_max_ms);
    Duration::from_millis(rand::random_range(0..=ceiling))
}

/// Why a provider could not be set up (a key file missing or malformed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SetupError(pub(crate) String);

/// The HTTP client every provider uses: HTTP/2 where the server offers it
/// (APNs requires it), the system's roots plus `notify.ca_file`.
pub(crate) fn http_client(config: &Notify) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.timeout_ms))
        .pool_idle_timeout(Duration::from_secs(300))
        .https_only(false);
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| SetupError(format!("notify.ca_file {}: {e}", path.display())))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| SetupError(format!("notify.ca_file {}: {e}", path.display())))?;
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    builder
        .build()
        .map_err(|e| SetupError(format!("the push HTTP client: {e}")))
}
