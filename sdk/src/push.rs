//! Offline push in the client: the device's push token and the user's
//! preview settings.
//!
//! The app registers the token its platform gave it
//! ([`Client::register_push_token`]) after each login and whenever the
//! platform issues a new one; [`Client::logout`] removes it before closing,
//! so a device that logged out gets no notifications for the user. While
//! the device has no live session, new messages, group messages and
//! friend requests are pushed to it, with a badge of the user's unread
//! total (muted conversations excluded); muted conversations send none.
//!
//! Refusals keep the wire code: `PERMISSION_DENIED` (another device's
//! token), `INVALID_ARGUMENT` (an empty, oversized or malformed token or
//! app id), `QUOTA_EXCEEDED` (too many devices with a token),
//! `RATE_LIMITED` (too many changes; retried after the server's wait).

use qim_proto::v1::{self, push_token_request::Op, rpc_request, rpc_response};

use crate::Error;
use crate::client::Client;
use crate::message::Peer;
use crate::rpc::unexpected;

/// The push service a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum PushProvider {
    /// Apple Push Notification service (iOS, macOS).
    Apns,
    /// Firebase Cloud Messaging (Android).
    Fcm,
    /// The server's push bridge, for vendors it does not speak itself.
    Bridge,
}

impl PushProvider {
    fn to_wire(self) -> v1::PushProvider {
        match self {
            PushProvider::Apns => v1::PushProvider::Apns,
            PushProvider::Fcm => v1::PushProvider::Fcm,
            PushProvider::Bridge => v1::PushProvider::Bridge,
        }
    }

    fn from_wire(value: i32) -> Option<Self> {
        match v1::PushProvider::try_from(value).ok()? {
            v1::PushProvider::Apns => Some(PushProvider::Apns),
            v1::PushProvider::Fcm => Some(PushProvider::Fcm),
            v1::PushProvider::Bridge => Some(PushProvider::Bridge),
            v1::PushProvider::Unspecified => None,
        }
    }
}

/// A device's push token as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct PushToken {
    /// The device.
    pub device: String,
    /// Its push service.
    pub provider: PushProvider,
    /// The token: only this device's own is shown; empty for the others.
    pub token: String,
    /// APNs: the app's bundle id; FCM: the Firebase project id; bridge: the
    /// vendor.
    pub app_id: String,
    /// APNs: a development (sandbox) build's token.
    pub sandbox: bool,
    /// Server time of the registration.
    pub updated_ms: i64,
}

/// A conversation's own preview setting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct PreviewSetting {
    /// The conversation.
    pub conversation: Peer,
    /// Show the sender and text; `None` in a change: follow the user's
    /// setting again.
    pub preview: Option<bool>,
}

/// The user's push settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct PushSettings {
    /// Notifications show the sender and text (default), or only that
    /// something arrived.
    pub preview: bool,
    /// Conversations with their own setting.
    pub conversations: Vec<PreviewSetting>,
}

impl Client {
    /// Registers this device's push token (replacing its earlier one);
    /// returns the user's devices with a token.
    pub async fn register_push_token(
        &self,
        provider: PushProvider,
        token: String,
        app_id: String,
        sandbox: bool,
    ) -> Result<Vec<PushToken>, Error> {
        self.push_token_rpc(Op::Register(v1::PushToken {
            device: String::new(),
            provider: provider.to_wire() as i32,
            token,
            app_id,
            sandbox,
            updated_ms: 0,
        }))
        .await
    }

    /// Removes this device's push token; returns the user's devices with
    /// a token.
    pub async fn unregister_push_token(&self) -> Result<Vec<PushToken>, Error> {
        self.push_token_rpc(Op::Unregister(String::new())).await
    }

    /// The user's devices with a push token.
    pub async fn push_tokens(&self) -> Result<Vec<PushToken>, Error> {
        self.push_token_rpc(Op::List(true)).await
    }

    /// Logs this device out: removes its push token, then closes the
    /// client ([`Client::close`]). The token is removed before anything
    /// else, so a failure leaves the client open to retry.
    pub async fn logout(&self) -> Result<(), Error> {
        self.unregister_push_token().await?;
        self.close().await;
        Ok(())
    }

    /// The user's push settings, after changing them: `preview` sets the
    /// user's own, each of `conversations` a conversation's.
    pub async fn push_settings(
        &self,
        preview: Option<bool>,
        conversations: Vec<PreviewSetting>,
    ) -> Result<PushSettings, Error> {
        let request = v1::PushSettingsRequest {
            preview,
            conversations: conversations
                .into_iter()
                .map(|c| v1::PreviewOverride {
                    conversation: Some(c.conversation.to_wire()),
                    preview: c.preview,
                })
                .collect(),
        };
        match self.rpc(rpc_request::Kind::PushSettings(request)).await? {
            rpc_response::Kind::PushSettings(r) => Ok(PushSettings {
                preview: r.preview,
                conversations: r
                    .conversations
                    .into_iter()
                    .map(|c| PreviewSetting {
                        conversation: Peer::from_wire(c.conversation.as_ref()),
                        preview: c.preview,
                    })
                    .collect(),
            }),
            _ => Err(unexpected()),
        }
    }

    async fn push_token_rpc(&self, op: Op) -> Result<Vec<PushToken>, Error> {
        let request = v1::PushTokenRequest { op: Some(op) };
        match self.rpc(rpc_request::Kind::PushToken(request)).await? {
            rpc_response::Kind::PushToken(r) => Ok(r
                .tokens
                .into_iter()
                .filter_map(|t| {
                    Some(PushToken {
                        provider: PushProvider::from_wire(t.provider)?,
                        device: t.device,
                        token: t.token,
                        app_id: t.app_id,
                        sandbox: t.sandbox,
                        updated_ms: t.updated_ms,
                    })
                })
                .collect()),
            _ => Err(unexpected()),
        }
    }
}
