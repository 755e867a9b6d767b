//! The push bridge: for vendors the gateway does not speak (Huawei,
//! Xiaomi, JPush...), one signed HTTP POST per notification to a relay the
//! operator runs. The body is JSON (`user`, `device`, `token`, `app_id`,
//! `conversation`, `seq`, `badge`, `title`, `body`); `x-qim-timestamp` is
//! the unix time in seconds and `x-qim-signature` is
//! `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` under
//! `notify.bridge_secret_file`. The relay answers 2xx when it took the
//! notification, 410 when the token is gone, 429 or 5xx to be retried.

use ring::hmac;

use super::provider::{Notification, Outcome, SetupError, retry_after};
use crate::config::Notify;

/// The bridge provider.
pub(crate) struct Bridge {
    url: String,
    key: hmac::Key,
}

/// Bytes of a bridge secret at least.
const MIN_SECRET_BYTES: usize = 32;

impl Bridge {
    /// The provider from `notify.bridge_*`; `None` when no URL is set.
    pub(crate) fn load(config: &Notify) -> Result<Option<Bridge>, SetupError> {
        let (Some(url), Some(path)) = (&config.bridge_url, &config.bridge_secret_file) else {
            return Ok(None);
        };
        let secret = std::fs::read(path).map_err(|e| {
            SetupError(format!("notify.bridge_secret_file {}: {e}", path.display()))
        })?;
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SetupError(format!(
                "notify.bridge_secret_file {}: at least {MIN_SECRET_BYTES} bytes",
                path.display()
            )));
        }
        Ok(Some(Bridge {
            url: url.clone(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }))
    }

    /// The signature header's value for `body` sent at `timestamp`.
    pub(crate) fn sign(&self, timestamp: u64, body: &str) -> String {
        let tag = hmac::sign(&self.key, format!("{timestamp}.{body}").as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    }

    /// Sends one notification.
    pub(crate) async fn send(&self, http: &reqwest::Client, n: &Notification) -> Outcome {
        let body = serde_json::json!({
            "user": n.user,
            "device": n.token.device,
            "token": n.token.token,
            "app_id": n.token.app_id,
            "conversation": n.conversation,
            "seq": n.seq,
            "badge": n.badge,
            "title": n.title,
            "body": n.body,
        })
        .to_string();
        let timestamp = crate::auth::unix_now();
        let response = http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-qim-timestamp", timestamp.to_string())
            .header("x-qim-signature", self.sign(timestamp, &body))
            .body(body)
            .send()
            .await;
        match response {
            Ok(r) => Outcome::of_status(r.status().as_u16(), retry_after(&r)),
            Err(e) => {
                tracing::debug!(error = %e, "push bridge request failed");
                Outcome::Retry(None)
            }
        }
    }
}
