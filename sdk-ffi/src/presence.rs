//! Presence, online time and typing through the bindings.
//!
//! Pushed news (typing, a subscribed friend's presence change) is a
//! [`qim_sdk::Signal`] handed to `ClientListener.on_signal` by one task per client,
//! in arrival order. Signals go to online sessions only and are never
//! stored or replayed: a subscription lasts as long as the session
//! (subscribe again after a reconnect), and one missed while offline is
//! gone (ask `presence` for the current state). Only friends see each
//! other's presence (`PERMISSION_DENIED` otherwise).

use std::sync::Arc;
use std::time::Duration;

use qim_sdk::{Client, ConnectionState, Peer, PresenceStatus, SessionSpan};

use crate::{ClientListener, QimClient, QimError};

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
                    listener.on_signal(signal);
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
        self.call(move |c| async move { c.presence(users).await })
            .await
    }

    /// Friends' presence now, and a `Signal.Presence` to the listener on
    /// every change while this session lasts.
    pub async fn subscribe_presence(
        &self,
        users: Vec<String>,
    ) -> Result<Vec<PresenceStatus>, QimError> {
        self.call(move |c| async move { c.subscribe_presence(users).await })
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
        self.call(move |c| async move { c.online_time(from_ms, to_ms).await })
            .await
    }

    /// Tells `to` (a user, or a group's members) that this user started or
    /// stopped typing. Reaches online sessions as `Signal.Typing`; never
    /// stored.
    pub async fn typing(&self, to: Peer, typing: bool) -> Result<(), QimError> {
        self.call(move |c| async move { c.typing(to, typing).await })
            .await
    }
}
