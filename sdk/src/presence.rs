//! Presence and typing in the client. Both arrive as [`Signal`]s through
//! [`Client::next_signal`]: pushed to online sessions only, never stored,
//! never resent (a signal missed while offline is simply gone; ask
//! [`Client::presence`] for the current state).

use std::collections::VecDeque;
use std::time::Duration;

use qim_proto::v1::{self, rpc_request, rpc_response};

use crate::Error;
use crate::client::{Client, Shared, lock};
use crate::im::Peer;

/// Signals kept for the app at most; the oldest is dropped beyond.
pub(crate) const MAX_SIGNALS: usize = 1024;

/// A user's presence, aggregated over their devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceStatus {
    /// The user.
    pub user: String,
    /// At least one device online.
    pub online: bool,
    /// When the last session ended (0: never, or online now).
    pub last_seen_ms: i64,
}

impl PresenceStatus {
    fn from_wire(p: v1::PresenceStatus) -> PresenceStatus {
        PresenceStatus {
            user: p.user,
            online: p.online,
            last_seen_ms: p.last_seen_ms,
        }
    }
}

/// One session of this user, for online-time statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSpan {
    /// The device.
    pub device: String,
    /// Start, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// End; 0 while on (or when the server stopped without closing it).
    pub end_ms: i64,
}

/// Ephemeral news from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// Someone is typing (or stopped) in a conversation.
    Typing {
        /// The conversation, as this user sees it.
        conversation: Peer,
        /// Who types.
        from: String,
        /// Started (true) or stopped.
        typing: bool,
    },
    /// A subscribed user's presence changed.
    Presence(PresenceStatus),
}

/// Queues a signal for the app, dropping the oldest when full.
pub(crate) fn push_signal(shared: &Shared, signal: v1::Signal) {
    let signal = match signal.kind {
        Some(v1::signal::Kind::Typing(t)) => Signal::Typing {
            conversation: Peer::from_wire(t.conversation.as_ref()),
            from: t.from_user,
            typing: t.typing,
        },
        Some(v1::signal::Kind::Presence(p)) => Signal::Presence(PresenceStatus::from_wire(p)),
        None => return,
    };
    let mut signals = lock(&shared.signals);
    if signals.len() >= MAX_SIGNALS {
        signals.pop_front();
    }
    signals.push_back(signal);
    drop(signals);
    shared.signal_arrived.notify_one();
}

/// The queue type kept in the client's shared state.
pub(crate) type Signals = VecDeque<Signal>;

impl Client {
    /// The next signal, waiting up to `limit`.
    pub async fn next_signal(&self, limit: Duration) -> Option<Signal> {
        let shared = self.shared();
        tokio::time::timeout(limit, async {
            loop {
                let arrived = shared.signal_arrived.notified();
                if let Some(signal) = lock(&shared.signals).pop_front() {
                    return signal;
                }
                arrived.await;
            }
        })
        .await
        .ok()
    }

    /// Tells `to` (a user, or a group's members) that this user is typing
    /// or stopped. Online sessions only; never stored.
    pub async fn typing(&self, to: Peer, typing: bool) -> Result<(), Error> {
        self.rpc(rpc_request::Kind::Typing(v1::TypingRequest {
            to: Some(to.to_wire()),
            typing,
        }))
        .await
        .map(|_| ())
    }

    async fn presence_request(
        &self,
        users: Vec<String>,
        subscribe: bool,
        unsubscribe: bool,
    ) -> Result<Vec<PresenceStatus>, Error> {
        match self
            .rpc(rpc_request::Kind::Presence(v1::PresenceRequest {
                users,
                subscribe,
                unsubscribe,
            }))
            .await?
        {
            rpc_response::Kind::Presence(p) => {
                Ok(p.users.into_iter().map(PresenceStatus::from_wire).collect())
            }
            _ => Err(Error::Network("unexpected rpc response".into())),
        }
    }

    /// Friends' presence now.
    pub async fn presence(&self, users: Vec<String>) -> Result<Vec<PresenceStatus>, Error> {
        self.presence_request(users, false, false).await
    }

    /// Friends' presence now, and [`Signal::Presence`] on every change
    /// while this session lasts (subscribe again after a reconnect).
    pub async fn subscribe_presence(
        &self,
        users: Vec<String>,
    ) -> Result<Vec<PresenceStatus>, Error> {
        self.presence_request(users, true, false).await
    }

    /// Stops presence signals for `users`.
    pub async fn unsubscribe_presence(&self, users: Vec<String>) -> Result<(), Error> {
        self.presence_request(users, false, true).await.map(|_| ())
    }

    /// This user's sessions overlapping `[from_ms, to_ms)`.
    pub async fn online_time(&self, from_ms: i64, to_ms: i64) -> Result<Vec<SessionSpan>, Error> {
        match self
            .rpc(rpc_request::Kind::OnlineTime(v1::OnlineTimeRequest {
                from_ms,
                to_ms,
            }))
            .await?
        {
            rpc_response::Kind::OnlineTime(o) => Ok(o
                .spans
                .into_iter()
                .map(|s| SessionSpan {
                    device: s.device,
                    start_ms: s.start_ms,
                    end_ms: s.end_ms,
                })
                .collect()),
            _ => Err(Error::Network("unexpected rpc response".into())),
        }
    }
}
