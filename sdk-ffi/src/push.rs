//! Offline push through the bindings: this device's push token (register
//! after login and whenever the platform issues a new one; `logout`
//! removes it and closes) and the user's preview settings. Refusals keep
//! the wire code: `PERMISSION_DENIED`, `INVALID_ARGUMENT`,
//! `QUOTA_EXCEEDED`, `RATE_LIMITED`.

use qim_sdk::{PreviewSetting, PushProvider, PushSettings, PushToken};

use crate::{QimClient, QimError};

#[uniffi::export]
impl QimClient {
    /// Registers this device's push token (APNs: `app_id` is the bundle
    /// id, `sandbox` for development builds; FCM: the Firebase project id);
    /// returns the user's devices with a token.
    pub async fn register_push_token(
        &self,
        provider: PushProvider,
        token: String,
        app_id: String,
        sandbox: bool,
    ) -> Result<Vec<PushToken>, QimError> {
        self.call(move |c| async move {
            c.register_push_token(provider, token, app_id, sandbox)
                .await
        })
        .await
    }

    /// Removes this device's push token.
    pub async fn unregister_push_token(&self) -> Result<Vec<PushToken>, QimError> {
        self.call(|c| async move { c.unregister_push_token().await })
            .await
    }

    /// The user's devices with a push token.
    pub async fn push_tokens(&self) -> Result<Vec<PushToken>, QimError> {
        self.call(|c| async move { c.push_tokens().await }).await
    }

    /// Logs this device out: removes its push token, then disconnects
    /// (`disconnect`). A failure to remove it leaves the client connected,
    /// to retry.
    pub async fn logout(&self) -> Result<(), QimError> {
        self.unregister_push_token().await?;
        self.disconnect().await;
        Ok(())
    }

    /// The user's push settings after changing them (`preview`: the
    /// user's own; `conversations`: per conversation, `null` preview to
    /// follow the user's again).
    pub async fn push_settings(
        &self,
        preview: Option<bool>,
        conversations: Vec<PreviewSetting>,
    ) -> Result<PushSettings, QimError> {
        self.call(move |c| async move { c.push_settings(preview, conversations).await })
            .await
    }
}
