//! FCM HTTP v1: an OAuth2 access token from the service account (an RS256
//! JWT assertion, scope `firebase.messaging`, exchanged at the token
//! endpoint and reused until a minute before it expires), then one POST
//! to `/v1/projects/<project>/messages:send` per notification, with the
//! conversation as Android `collapse_key` and notification `tag`.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::provider::{Notification, Outcome, SetupError, retry_after};
use crate::config::Notify;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The FCM provider.
pub(crate) struct Fcm {
    email: String,
    key: EncodingKey,
    token_url: String,
    url: String,
    /// The access token and until when it may be used.
    access: tokio::sync::Mutex<Option<(String, Instant)>>,
}

/// The fields of a service account key file the provider reads.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    #[serde(default)]
    token_uri: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct AccessToken {
    access_token: String,
    expires_in: u64,
}

impl Fcm {
    /// The provider from `notify.fcm_*`; `None` when no account is set.
    pub(crate) fn load(config: &Notify) -> Result<Option<Fcm>, SetupError> {
        let Some(path) = &config.fcm_service_account_file else {
            return Ok(None);
        };
        let bad = |e: &dyn std::fmt::Display| {
            SetupError(format!(
                "notify.fcm_service_account_file {}: {e}",
                path.display()
            ))
        };
        let text = std::fs::read(path).map_err(|e| bad(&e))?;
        let account: ServiceAccount = serde_json::from_slice(&text).map_err(|e| bad(&e))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|e| bad(&e))?;
        let token_url = if config.fcm_token_url.is_empty() {
            account.token_uri
        } else {
            config.fcm_token_url.clone()
        };
        if token_url.is_empty() {
            return Err(bad(&"no token_uri (set notify.fcm_token_url)"));
        }
        Ok(Some(Fcm {
            email: account.client_email,
            key,
            token_url,
            url: config.fcm_url.trim_end_matches('/').to_owned(),
            access: tokio::sync::Mutex::new(None),
        }))
    }

    async fn access_token(&self, http: &reqwest::Client) -> Result<String, Outcome> {
        let mut cached = self.access.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let iat = crate::auth::unix_now();
        let claims = Claims {
            iss: &self.email,
            scope: SCOPE,
            aud: &self.token_url,
            iat,
            exp: iat + 3600,
        };
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| {
                tracing::error!(error = %e, "signing the FCM assertion failed");
                Outcome::Failed("provider_auth")
            })?;
        let response = http
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
            ))
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "the OAuth2 token request failed");
                Outcome::Retry(None)
            })?;
        let status = response.status().as_u16();
        if status != 200 {
            tracing::warn!(
                status,
                "the OAuth2 token endpoint refused the service account"
            );
            return Err(match Outcome::of_status(status, retry_after(&response)) {
                Outcome::Retry(wait) => Outcome::Retry(wait),
                _ => Outcome::Failed("provider_auth"),
            });
        }
        let bytes = response.bytes().await.map_err(|_| Outcome::Retry(None))?;
        let token: AccessToken =
            serde_json::from_slice(&bytes).map_err(|_| Outcome::Failed("provider_auth"))?;
        let until = Instant::now() + Duration::from_secs(token.expires_in.saturating_sub(60));
        *cached = Some((token.access_token.clone(), until));
        Ok(token.access_token)
    }

    /// Sends one notification.
    pub(crate) async fn send(&self, http: &reqwest::Client, n: &Notification) -> Outcome {
        let access = match self.access_token(http).await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        let mut notification = serde_json::Map::new();
        if let Some(title) = &n.title {
            notification.insert("title".into(), title.clone().into());
        }
        notification.insert("body".into(), n.body.clone().into());
        let message = serde_json::json!({
            "message": {
                "token": n.token.token,
                "notification": notification,
                "data": {
                    "conversation": n.conversation,
                    "seq": n.seq.to_string(),
                    "badge": n.badge.to_string(),
                },
                "android": {
                    "collapse_key": n.conversation,
                    "priority": "HIGH",
                    "notification": {
                        "tag": n.conversation,
                        "notification_count": n.badge,
                    },
                },
            }
        });
        let response = http
            .post(format!(
                "{}/v1/projects/{}/messages:send",
                self.url, n.token.app_id
            ))
            .bearer_auth(access)
            .header("content-type", "application/json")
            .body(message.to_string())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "FCM request failed");
                return Outcome::Retry(None);
            }
        };
        let status = response.status().as_u16();
        let wait = retry_after(&response);
        if status == 401 {
            self.access.lock().await.take();
            return Outcome::Retry(None);
        }
        if status == 200 {
            return Outcome::Sent;
        }
        let bytes = response.bytes().await.unwrap_or_default();
        let unregistered = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error")?.get("details")?.as_array().cloned())
            .is_some_and(|details| {
                details
                    .iter()
                    .any(|d| d.get("errorCode").and_then(|c| c.as_str()) == Some("UNREGISTERED"))
            });
        if unregistered {
            Outcome::Gone
        } else {
            Outcome::of_status(status, wait)
        }
    }
}
