//! APNs: token-based authentication (an ES256 JWT, `iss` the team id,
//! `kid` the key id, renewed every 50 minutes: Apple refuses tokens older
//! than an hour and renewals more often than every 20 minutes), one HTTP/2
//! POST to `/3/device/<token>` per notification with `apns-topic` (the
//! bundle id), `apns-push-type: alert`, `apns-priority: 10` and
//! `apns-collapse-id` (the conversation).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::provider::{Notification, Outcome, SetupError, retry_after};
use crate::config::Notify;
use crate::mutex::lock;

/// How long one provider token is used.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

/// Bytes of an `apns-collapse-id` at most (Apple's limit).
const COLLAPSE_ID_BYTES: usize = 64;

/// The APNs provider.
pub(crate) struct Apns {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    url: String,
    sandbox_url: String,
    /// The provider token and when it was made.
    token: Mutex<Option<(String, Instant)>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl Apns {
    /// The provider from `notify.apns_*`; `None` when no key is set.
    pub(crate) fn load(config: &Notify) -> Result<Option<Apns>, SetupError> {
        let Some(path) = &config.apns_key_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .map_err(|e| SetupError(format!("notify.apns_key_file {}: {e}", path.display())))?;
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| {
            SetupError(format!(
                "notify.apns_key_file {}: not a P-256 key in PEM: {e}",
                path.display()
            ))
        })?;
        Ok(Some(Apns {
            key,
            key_id: config.apns_key_id.clone(),
            team_id: config.apns_team_id.clone(),
            url: config.apns_url.trim_end_matches('/').to_owned(),
            sandbox_url: config.apns_sandbox_url.trim_end_matches('/').to_owned(),
            token: Mutex::new(None),
        }))
    }

    fn bearer(&self) -> Result<String, Outcome> {
        let mut cached = lock(&self.token);
        if let Some((token, made)) = cached.as_ref() {
            if made.elapsed() < TOKEN_LIFETIME {
                return Ok(token.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: &self.team_id,
            iat: crate::auth::unix_now(),
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            tracing::error!(error = %e, "signing the APNs provider token failed");
            Outcome::Failed("provider_auth")
        })?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Sends one notification.
    pub(crate) async fn send(&self, http: &reqwest::Client, n: &Notification) -> Outcome {
        let bearer = match self.bearer() {
            Ok(b) => b,
            Err(outcome) => return outcome,
        };
        let base = if n.token.sandbox {
            &self.sandbox_url
        } else {
            &self.url
        };
        let mut alert = serde_json::Map::new();
        if let Some(title) = &n.title {
            alert.insert("title".into(), title.clone().into());
        }
        alert.insert("body".into(), n.body.clone().into());
        let payload = serde_json::json!({
            "aps": {
                "alert": alert,
                "badge": n.badge,
                "sound": "default",
                "thread-id": n.conversation,
            },
            "qim": { "conversation": n.conversation, "seq": n.seq },
        });
        let collapse: String = n.conversation.chars().take(COLLAPSE_ID_BYTES).collect();
        let response = http
            .post(format!("{base}/3/device/{}", n.token.token))
            // As Apple documents it: `authorization: bearer <token>`.
            .header("authorization", format!("bearer {bearer}"))
            .header("apns-topic", &n.token.app_id)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-collapse-id", collapse)
            .header("content-type", "application/json")
            .body(payload.to_string())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "APNs request failed");
                return Outcome::Retry(None);
            }
        };
        let status = response.status().as_u16();
        let wait = retry_after(&response);
        let reason = error_field(response, "reason").await.unwrap_or_default();
        match (status, reason.as_str()) {
            (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Outcome::Gone,
            (403, "ExpiredProviderToken") => {
                lock(&self.token).take();
                Outcome::Retry(None)
            }
            _ => Outcome::of_status(status, wait),
        }
    }
}

/// A string field of a JSON error body.
pub(crate) async fn error_field(response: reqwest::Response, field: &str) -> Option<String> {
    let bytes = response.bytes().await.ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(value.get(field)?.as_str()?.to_owned())
}
