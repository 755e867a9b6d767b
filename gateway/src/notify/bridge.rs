//! The push bridge: for vendors the gateway does not speak (Huawei,
//! Xiaomi, JPush...), one signed HTTP POST per notification to a relay the
//! operator runs. The body is JSON (`user`, `device`, `token`, `app_id`,
//! `conversation`, `seq`, `badge`, `title`, `body`); `x-qim-timestamp` is
//! the unix time in seconds and `x-qim-signature` is
//! `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` under
//! `notify.bridge_secret_file` (the scheme of the webhooks,
//! `webhook::sign`). The relay answers 2xx when it took the
//! notification, 410 when the token is gone, 429 or 5xx to be retried.

use super::provider::{Notification, Outcome, SetupError, retry_after};
use crate::config::Notify;
use crate::webhook::sign::Signer;

/// The bridge provider.
pub(crate) struct Bridge {
    url: String,
    signer: Signer,
}

impl Bridge {
    /// The provider from `notify.bridge_*`; `None` when no URL is set.
    pub(crate) fn load(config: &Notify) -> Result<Option<Bridge>, SetupError> {
        let (Some(url), Some(path)) = (&config.bridge_url, &config.bridge_secret_file) else {
            return Ok(None);
        };
        let signer = Signer::load("notify.bridge_secret_file", path)
            .map_err(|e| SetupError(e.to_string()))?;
        Ok(Some(Bridge {
            url: url.clone(),
            signer,
        }))
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
        let response = self.signer.post(http, &self.url, body).send().await;
        match response {
            Ok(r) => Outcome::of_status(r.status().as_u16(), retry_after(&r)),
            Err(e) => {
                tracing::debug!(error = %e, "push bridge request failed");
                Outcome::Retry(None)
            }
        }
    }
}
