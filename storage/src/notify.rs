//! [`NotifyStore`]: what offline push keeps: each device's push token, each
//! user's preview settings, and the claims that make one notification go
//! out once although several nodes may try.
//!
//! # Rules every backend keeps
//! - One token per `(user, device)`; registering again replaces it.
//! - A token belongs to one `(user, device)`: registering a token another
//!   device (of any user) holds takes it from that device, so a phone that
//!   changed hands never gets the former user's notifications.
//! - A user has at most `max_devices` devices with a token; a registration
//!   for one more device is refused with [`OpError::QuotaExceeded`]
//!   (`"push_devices"`) and stores nothing (replacing a device's own
//!   token is always allowed).
//! - A removal that names the token ([`NotifyStore::remove_push_token`]
//!   with `only_if`) removes it only if it is still that token: a provider
//!   answering "unregistered" for an old token never removes the one the
//!   device registered since.
//! - Preview settings: one flag per user (default on) and at most
//!   `max_overrides` conversations with their own flag.
//! - [`NotifyStore::claim_push`] answers true once per key within its time
//!   to live, whichever node asks.

use async_trait::async_trait;
use qim_proto::v1;

use crate::conversations::peer_key;
use crate::{OpError, StoreError};

/// The quota name of push devices per user ([`OpError::QuotaExceeded`]).
pub const PUSH_DEVICES: crate::Quota = crate::Quota::PushDevices;

/// The quota name of per-conversation preview settings per user.
pub const PREVIEW_OVERRIDES: crate::Quota = crate::Quota::PreviewOverrides;

/// Push tokens, preview settings and push claims.
#[async_trait]
pub trait NotifyStore: Send + Sync + 'static {
    /// Registers `token` for `user`'s device `token.device` (replacing the
    /// device's token, taking the token from any other device that held
    /// it), durably. Refused with [`OpError::QuotaExceeded`] when `user`
    /// has `max_devices` other devices with a token.
    async fn register_push_token(
        &self,
        user: &str,
        token: v1::PushToken,
        max_devices: usize,
    ) -> Result<(), OpError>;

    /// Removes the token of `user`'s `device` (with `only_if`: only while
    /// it is that token). True when one was removed.
    async fn remove_push_token(
        &self,
        user: &str,
        device: &str,
        only_if: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// `user`'s devices with a token, by device id.
    async fn push_tokens(&self, user: &str) -> Result<Vec<v1::PushToken>, StoreError>;

    /// `user`'s preview settings (preview on when never set).
    async fn push_settings(&self, user: &str) -> Result<v1::PushSettingsResponse, StoreError>;

    /// Changes `user`'s preview settings as `change` says (see
    /// [`apply_settings`]) and returns them. Refused with
    /// [`OpError::QuotaExceeded`] past `max_overrides` conversations, and
    /// with [`OpError::Store`] (`Invalid`) for a conversation without a
    /// peer.
    async fn set_push_settings(
        &self,
        user: &str,
        change: &v1::PushSettingsRequest,
        max_overrides: usize,
    ) -> Result<v1::PushSettingsResponse, OpError>;

    /// Claims `key` for `ttl_ms`: true for the first caller, on any node,
    /// false for every other until the claim expires.
    async fn claim_push(&self, key: &str, ttl_ms: u64) -> Result<bool, StoreError>;
}

/// The settings a user starts with: preview on, no overrides.
pub fn default_settings() -> v1::PushSettingsResponse {
    v1::PushSettingsResponse {
        preview: true,
        conversations: Vec::new(),
    }
}

/// `settings` changed by `change`: the user's flag when set, each listed
/// conversation's flag set (or removed when unset); overrides stay sorted
/// by conversation key. The rule both backends apply.
pub fn apply_settings(
    mut settings: v1::PushSettingsResponse,
    change: &v1::PushSettingsRequest,
    max_overrides: usize,
) -> Result<v1::PushSettingsResponse, OpError> {
    if let Some(preview) = change.preview {
        settings.preview = preview;
    }
    for o in &change.conversations {
        let key = o
            .conversation
            .as_ref()
            .and_then(peer_key)
            .ok_or_else(|| StoreError::Invalid("an override without a conversation".into()))?;
        let at = settings
            .conversations
            .iter()
            .position(|c| c.conversation.as_ref().and_then(peer_key).as_ref() == Some(&key));
        match (at, o.preview) {
            (Some(i), Some(p)) => settings.conversations[i].preview = Some(p),
            (Some(i), None) => {
                settings.conversations.remove(i);
            }
            (None, Some(_)) => settings.conversations.push(o.clone()),
            (None, None) => {}
        }
    }
    if settings.conversations.len() > max_overrides {
        return Err(OpError::QuotaExceeded(PREVIEW_OVERRIDES));
    }
    settings
        .conversations
        .sort_by_key(|c| c.conversation.as_ref().and_then(peer_key));
    Ok(settings)
}

/// Whether a notification about `conversation` shows its sender and text
/// under `settings`.
pub fn preview_of(settings: &v1::PushSettingsResponse, conversation: &v1::Peer) -> bool {
    let key = peer_key(conversation);
    settings
        .conversations
        .iter()
        .find(|c| c.conversation.as_ref().and_then(peer_key) == key)
        .and_then(|c| c.preview)
        .unwrap_or(settings.preview)
}

/// A short, stable key for a token (xxh3-128, hex): where the backends
/// index who holds a token without keying by the token itself.
pub fn token_key(token: &str) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(token.as_bytes()))
}
