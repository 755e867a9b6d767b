//! Presence and typing in the client. Both arrive as [`Signal`](crate::Signal)s through
//! [`Client::next_signal`]: pushed to online sessions only, never stored,
//! never resent (a signal missed while offline is simply gone; ask
//! [`Client::presence`] for the current state).

use qim_proto::v1::{self, rpc_request, rpc_response};

use crate::Error;
use crate::client::Client;
use crate::message::{Peer, PresenceStatus};
use crate::rpc::unexpected;

/// One session of this user, for online-time statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct SessionSpan {
    /// The device.
    pub device: String,
    /// Start, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// End; 0 while on (or when the server stopped without closing it).
    pub end_ms: i64,
}

impl Client {
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
            _ => Err(unexpected()),
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
            _ => Err(unexpected()),
        }
    }
}
