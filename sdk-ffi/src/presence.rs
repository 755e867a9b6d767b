//! Presence, online time and typing through the bindings.
//!
//! Pushed news (typing, a subscribed friend's presence change) is a
//! [`Signal`] handed to `ClientListener.on_signal` by one task per client,
//! in arrival order. Signals go to online sessions only and are never
//! stored or replayed: a subscription lasts as long as the session
//! (subscribe again after a reconnect), and one missed while offline is
//! gone (ask `presence` for the current state). Only friends see each
//! other's presence (`PERMISSION_DENIED` otherwise).

use std::sync::Arc;
use std::time::Duration;

use qim_sdk::{Client, ConnectionState};

use crate::{ClientListener, Peer, QimClient, QimError, list};

/// A user's presence, over all their devices.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PresenceStatus {
    /// The user.
    pub user: String,
    /// At least one device online.
    pub online: bool,
    /// When the last session ended, ms since the Unix epoch (0: never, or
    /// online now).
    pub last_seen_ms: i64,
}

impl From<qim_sdk::PresenceStatus> for PresenceStatus {
    fn from(p: qim_sdk::PresenceStatus) -> Self {
        PresenceStatus {
            user: p.user,
            online: p.online,
            last_seen_ms: p.last_seen_ms,
        }
    }
}

/// One session of this user (for online-time statistics).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SessionSpan {
    /// The device.
    pub device: String,
    /// Start, ms since the Unix epoch.
    pub start_ms: i64,
    /// End; 0 while on (or when the server stopped without closing it).
    pub end_ms: i64,
}

impl From<qim_sdk::SessionSpan> for SessionSpan {
    fn from(s: qim_sdk::SessionSpan) -> Self {
        SessionSpan {
            device: s.device,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
        }
    }
}

/// Ephemeral news pushed by the server.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Signal {
    /// Someone started or stopped typing in a conversation.
    Typing {
        /// The conversation, as this user sees it.
        conversation: Peer,
        /// Who types.
        from_user: String,
        /// Started (`true`) or stopped.
        typing: bool,
    },
    /// A subscribed user's presence changed.
    Presence {
        /// Their presence now.
        status: PresenceStatus,
    },
    /// A kind this version of the SDK does not know; ignore it.
    Other,
}

impl From<qim_sdk::Signal> for Signal {
    fn from(s: qim_sdk::Signal) -> Self {
        match s {
            qim_sdk::Signal::Typing {
                conversation,
                from,
                typing,
            } => Signal::Typing {
                conversation: conversation.into(),
                from_user: from,
                typing,
            },
            qim_sdk::Signal::Presence(status) => Signal::Presence {
                status: status.into(),
            },
            _ => Signal::Other,
        }
    }
}

/// Hands the client's signals to the listener until the client closes.
pub(crate) async fn pump_signals(client: Arc<Client>, listener: Arc<dyn ClientListener>) {
    let mut states = client.watch_state();
    if states.current() == ConnectionState::Closed {
        return;
    }
    loop {
        tokio::select! {
            signal = client.next_signal(Duration::from_secs(3600)) => {
                if let Some(signal) = signal {
                    listener.on_signal(signal.into());
                }
            }
            state = states.changed() => {
                if matches!(state, None | Some(ConnectionState::Closed)) {
                    return;
                }
            }
        }
    }
}

#[uniffi::export]
impl QimClient {
    /// Friends' presence now (online, last seen).
    pub async fn presence(&self, users: Vec<String>) -> Result<Vec<PresenceStatus>, QimError> {
        self.call(move |c| async move { c.presence(users).await.map(list::<_, PresenceStatus>) })
            .await
    }

    /// Friends' presence now, and a `Signal.Presence` to the listener on
    /// every change while this session lasts.
    pub async fn subscribe_presence(
        &self,
        users: Vec<String>,
    ) -> Result<Vec<PresenceStatus>, QimError> {
        self.call(move |c| async move {
            c.subscribe_presence(users)
                .await
                .map(list::<_, PresenceStatus>)
        })
        .await
    }

    /// Stops presence signals for `users`.
    pub async fn unsubscribe_presence(&self, users: Vec<String>) -> Result<(), QimError> {
        self.call(move |c| async move { c.unsubscribe_presence(users).await })
            .await
    }

    /// This user's sessions overlapping `[from_ms, to_ms)` (ms since the
    /// Unix epoch), for online-time statistics.
    pub async fn online_time(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SessionSpan>, QimError> {
        self.call(move |c| async move {
            c.online_time(from_ms, to_ms)
                .await
                .map(list::<_, SessionSpan>)
        })
        .await
    }

    /// Tells `to` (a user, or a group's members) that this user started or
    /// stopped typing. Reaches online sessions as `Signal.Typing`; never
    /// stored.
    pub async fn typing(&self, to: Peer, typing: bool) -> Result<(), QimError> {
        self.call(move |c| async move { c.typing(to.into(), typing).await })
            .await
    }
}
