//! The `[notify]` section: offline push to APNs, FCM and a push bridge,
//! and the limits on what users register. See docs/push.md.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::sections::{example_line, section};

section! {
    /// Offline push: devices with no live session are told of new messages through APNs,
    /// FCM or a push bridge. A provider is on when its credentials are set. See docs/push.md.
    "notify" => Notify {
        /// Bytes of a device push token at most (APNs tokens are 64 hex characters, FCM tokens
        /// about 160); longer ones are refused with INVALID_ARGUMENT.
        max_token_bytes: u32 = 512,
        /// Bytes of an app id (bundle id, Firebase project id, bridge vendor) at most.
        max_app_id_bytes: u32 = 128,
        /// Devices with a push token per user; one more is refused with QUOTA_EXCEEDED.
        max_devices: u32 = 10,
        /// Token registrations and removals per user and minute (burst: the same); more are
        /// refused with RATE_LIMITED.
        token_writes_per_minute: u32 = 10,
        /// Conversations with their own preview setting per user.
        max_preview_overrides: u32 = 500,
        /// Notifications per user and minute, over all the user's devices; more are dropped
        /// (counted as reason "rate_limited").
        pushes_per_user_per_minute: u32 = 60,
        /// Attempts per notification after the first when a provider fails or throttles
        /// (5xx, 429, a timeout), with exponential backoff and full jitter.
        retries: u32 = 3,
        /// The first retry's backoff; each next one doubles, up to retry_max_ms.
        retry_initial_ms: u64 = 500,
        /// The longest backoff between attempts.
        retry_max_ms: u64 = 10_000,
        /// How long a provider request may take.
        timeout_ms: u64 = 10_000,
        /// Notifications waiting to be sent on this node; more are dropped (reason
        /// "queue_full").
        queue: usize = 10_000,
        /// APNs: the .p8 signing key (ES256) from Apple's developer account.
        apns_key_file: Option<PathBuf> = None,
        /// APNs: the key's id (10 characters).
        apns_key_id: String = String::new(),
        /// APNs: the team id (10 characters) that issued the key.
        apns_team_id: String = String::new(),
        /// APNs production endpoint.
        apns_url: String = "https://api.push.apple.com".to_owned(),
        /// APNs endpoint for sandbox (development build) tokens.
        apns_sandbox_url: String = "https://api.sandbox.push.apple.com".to_owned(),
        /// FCM: the service account's JSON key file (client_email, private_key, token_uri).
        fcm_service_account_file: Option<PathBuf> = None,
        /// FCM HTTP v1 endpoint; the project id comes from each token's app id.
        fcm_url: String = "https://fcm.googleapis.com".to_owned(),
        /// OAuth2 token endpoint; empty: the service account's token_uri.
        fcm_token_url: String = String::new(),
        /// Push bridge: the relay's URL, POSTed one JSON notification each.
        bridge_url: Option<String> = None,
        /// Push bridge: the file holding the HMAC-SHA256 secret (at least 32 bytes) that signs
        /// each request (header x-qim-signature).
        bridge_secret_file: Option<PathBuf> = None,
        /// Extra root certificates (PEM) trusted for the providers, besides the system's.
        ca_file: Option<PathBuf> = None,
    }
}

impl Notify {
    /// Checks values that must fit together.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_owned()));
        if self.max_token_bytes == 0 || self.max_app_id_bytes == 0 {
            return invalid("notify.max_token_bytes and notify.max_app_id_bytes must be above 0");
        }
        if self.token_writes_per_minute == 0 || self.pushes_per_user_per_minute == 0 {
            return invalid(
                "notify.token_writes_per_minute and notify.pushes_per_user_per_minute must be above 0",
            );
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return invalid("notify: need 0 < retry_initial_ms <= retry_max_ms");
        }
        if self.timeout_ms == 0 || self.queue == 0 {
            return invalid("notify.timeout_ms and notify.queue must be above 0");
        }
        if self.apns_key_file.is_some()
            && (self.apns_key_id.is_empty() || self.apns_team_id.is_empty())
        {
            return invalid(
                "notify.apns_key_file needs notify.apns_key_id and notify.apns_team_id",
            );
        }
        if self.bridge_url.is_some() != self.bridge_secret_file.is_some() {
            return invalid("notify.bridge_url and notify.bridge_secret_file go together");
        }
        Ok(())
    }
}
