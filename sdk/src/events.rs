//! Events for the app besides received messages: what happened to each
//! send (`sending / sent / failed`) and why connections dropped.
//!
//! Events go through a bounded broadcast channel of [`EVENT_BUFFER`]
//! entries. A listener that falls that far behind misses the oldest events
//! (its next [`Events::next`] skips them and says how many were lost in a
//! log line); the client itself never waits for listeners.

use tokio::sync::broadcast;

use crate::{Error, SendReceipt};

/// Events kept for a slow listener before the oldest are dropped.
pub const EVENT_BUFFER: usize = 1024;

/// Where a send stands.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OutboxStatus {
    /// Queued (and, with a data directory, saved on disk); written to the
    /// server whenever connected, with the same `client_msg_id` each time.
    Sending,
    /// The server stored it.
    Sent(SendReceipt),
    /// The server refused it for good, or the client gave up waiting (a
    /// send without a data directory whose caller timed out or closed).
    Failed(Error),
}

/// Something the app may want to show or log.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A send changed state.
    Outbox {
        /// The send's idempotency key.
        client_msg_id: String,
        /// Its new state.
        status: OutboxStatus,
    },
    /// A connection ended with this error; the client reconnects by itself
    /// when the error is transient (watch the connection state).
    ConnectionLost(Error),
    /// A session started, over this transport (show "QUIC" or "TCP").
    Connected(crate::Transport),
}

/// A subscription to a client's events.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: broadcast::Receiver<ClientEvent>,
}

impl Events {
    /// The next event; `None` once the client is gone.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event listener fell behind; events dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
